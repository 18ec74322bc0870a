"""Ingest of the Tsinghua App Usage dataset (Shanghai, 20-26 April 2016; Yu et al., IMWUT 2018).

Files (the release's own formats, CRLF or LF line endings, a missing final newline is fine):

- trace (``App_usage_trace.txt``): ``user_id timestamp base_station_id app_id traffic_bytes``, one
  record per line, single spaces, no header; timestamp ``YYYYMMDDhhmmss`` in China local time.
- ``App2Category.txt``: ``app_id<TAB>category_id``, no header.
- ``Categorys.txt``: ``category_id<TAB>'name'``; lines that do not start with a digit are skipped.
- ``base_poi.txt``: TAB-separated, header ``BaseID`` + one column per POI category, integer counts.
- optional coordinates: CSV ``cell_id,lat,lon`` (the public release has no base station positions).

What the data set becomes (the paper's per-user hourly matrix): app -> category -> service; hour =
floor((t - origin) / 1 h) with origin = local midnight of the earliest record's day; bytes summed per
(user, hour, service); the location of a user-hour is its modal base station by record count over all
of that hour's records (also those of services that are not kept: where a user was does not depend on
the app), ties to the smallest BaseID. By default the paper's 10 services are kept and records of apps
in the other 10 categories are dropped (counted in ``params``); ``all_services`` keeps all 20.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from db.queries import DatasetContent
from engine.data.ingest_table import (
    ERA_TEXT,
    MAX_POI_COUNT,
    aggregate_hourly,
    check_span,
    check_total_bytes,
    digits_to_seconds,
    first_problem,
)
from engine.errors import InputError

TIMEZONE = "Asia/Shanghai"

# Canonical names of the 20 Tsinghua categories, by id. Categorys.txt spells them with quotes, a
# `\_` escape ('Social\_Networking'), trailing spaces ('Lifestyle '), no spaces around '&'
# ('Health&Fitness'), lower case ('infant&mom', 'sports') and a typo ('Weath1er'). The file is only
# checked against this list - a name matches when its letters, lower-cased, equal the canonical
# name's letters (so 'Weath1er' matches 'Weather') - and the data set uses these spellings.
CATEGORIES = (
    "Utilities",
    "Games",
    "Entertainment",
    "News",
    "Social Networking",
    "Shopping",
    "Finance",
    "Business",
    "Travel",
    "Lifestyle",
    "Education",
    "Health & Fitness",
    "Infant & Mom",
    "Navigation",
    "Weather",
    "Music",
    "References",
    "Books",
    "Photo & Video",
    "Sports",
)
# The 10 services the LSDM paper forecasts, in the paper's order.
PAPER_SERVICES = (
    "Utilities",
    "Games",
    "Entertainment",
    "News",
    "Social Networking",
    "Travel",
    "Lifestyle",
    "Navigation",
    "Music",
    "Photo & Video",
)
TRACE_FIELDS = ("user_id", "timestamp", "base_station_id", "app_id", "traffic_bytes")
_TRACE_LAYOUT = "user_id timestamp base_station_id app_id traffic_bytes, separated by single spaces"

Progress = Callable[[str], None]


# App and base-station ids index lookup tables (one entry per id up to the largest): the release's are below
# 10,000; a larger one is refused instead of asking for a table of that many entries.
MAX_ID = 10_000_000


def _check_category_id(category: int, path: Path, number: int) -> None:
    """Tsinghua category ids are 0..19 (both App2Category.txt and Categorys.txt use them)."""
    if category >= len(CATEGORIES):
        raise InputError(
            f"expected a category id in 0..{len(CATEGORIES) - 1}, found {category}",
            file=path,
            line=number,
            field="category_id",
        )


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise InputError(f"no such file (the {what})", file=path)


def _text_lines(path: Path, what: str) -> list[str]:
    """A small text file's physical lines without their line ends (CRLF or LF)."""
    _require_file(path, what)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(
            f"not UTF-8 text (byte {error.start})", file=path, line=data.count(b"\n", 0, error.start) + 1
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


# --- metadata --------------------------------------------------------------------------------------


def read_categories(path: Path) -> dict[int, str]:
    """Categorys.txt -> {id: canonical name}; the ids must be exactly 0..19 (see ``CATEGORIES``)."""
    path = Path(path)
    found: dict[int, int] = {}  # id -> line
    for number, line in enumerate(_text_lines(path, "category names"), start=1):
        text = line.strip()
        if not text or not text[0].isdigit():
            continue  # the release has stray lines such as 'wechat','linkedin','weibo'
        parts = text.split("\t", 1)
        if len(parts) != 2 or not parts[0].strip().isdigit():
            raise InputError(
                f"expected <category id><TAB>'<name>', found {line!r}", file=path, line=number, field="category_id"
            )
        category, name = int(parts[0]), parts[1].strip()
        _check_category_id(category, path, number)
        if category in found:
            raise InputError(
                f"category {category} listed twice (first on line {found[category]})",
                file=path,
                line=number,
                field="category_id",
            )
        if _letters(name) != _letters(CATEGORIES[category]):
            raise InputError(
                f"category {category} is named {name} here, but the Tsinghua release calls it {CATEGORIES[category]!r}",
                file=path,
                line=number,
                field="name",
                hint="is this the release's Categorys.txt?",
            )
        found[category] = number
    missing = [i for i in range(len(CATEGORIES)) if i not in found]
    if missing:
        raise InputError(
            f"expected the category ids 0..{len(CATEGORIES) - 1}; missing {', '.join(map(str, missing))}",
            file=path,
            field="category_id",
        )
    return {i: CATEGORIES[i] for i in range(len(CATEGORIES))}


def read_app2category(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """App2Category.txt -> (app ids, category ids), checked: whole numbers, categories 0..19, no repeats."""
    path = Path(path)
    apps: list[int] = []
    categories: list[int] = []
    first_line: dict[int, int] = {}
    for number, line in enumerate(_text_lines(path, "app to category table"), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise InputError(
                f"expected <app id><TAB><category id>, found {line!r}", file=path, line=number, field="app_id"
            )
        for value, name in zip(parts, ("app_id", "category_id"), strict=True):
            if not value.isdigit():
                raise InputError(f"expected a whole number >= 0, found {value!r}", file=path, line=number, field=name)
        app, category = int(parts[0]), int(parts[1])
        if app > MAX_ID:
            raise InputError(
                f"expected an app id from 0 to {MAX_ID:,}, found {parts[0][:30]}",
                file=path,
                line=number,
                field="app_id",
            )
        _check_category_id(category, path, number)
        if app in first_line:
            raise InputError(
                f"app {app} listed twice (first on line {first_line[app]})", file=path, line=number, field="app_id"
            )
        first_line[app] = number
        apps.append(app)
        categories.append(category)
    if not apps:
        raise InputError("the file is empty; expected lines <app id><TAB><category id>", file=path, line=1)
    return np.array(apps, dtype=np.int64), np.array(categories, dtype=np.int64)


def read_base_poi(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """base_poi.txt -> (BaseIDs sorted, (C, P) POI counts, the P category names from the header)."""
    path = Path(path)
    lines = _text_lines(path, "base station POI table")
    if not lines or not lines[0].strip():
        raise InputError("the file is empty; expected a header BaseID<TAB><POI category>...", file=path, line=1)
    header = [name.strip() for name in lines[0].split("\t")]
    if header[0] != "BaseID":
        raise InputError(
            f"expected the header to start with BaseID, found {header[0]!r}", file=path, line=1, field="BaseID"
        )
    names = header[1:]
    for name in names:
        if not name or names.count(name) > 1:
            raise InputError(
                f"POI category names must be non-empty and distinct, found {name!r}", file=path, line=1, field=name
            )
    ids: list[int] = []
    rows: list[list[int]] = []
    first_line: dict[int, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(header):
            raise InputError(
                f"expected {len(header)} TAB-separated fields (BaseID and {len(names)} POI counts), found {len(parts)}",
                file=path,
                line=number,
                field=header[min(len(parts), len(header) - 1)],
            )
        values = [p.strip() for p in parts]
        for value, name in zip(values, header, strict=True):
            if not value.isdigit():
                raise InputError(f"expected a whole number >= 0, found {value!r}", file=path, line=number, field=name)
            if name == "BaseID" and int(value) > MAX_ID:
                raise InputError(
                    f"expected a base station id from 0 to {MAX_ID:,}, found {value[:30]}",
                    file=path,
                    line=number,
                    field=name,
                )
            if name != "BaseID" and int(value) > MAX_POI_COUNT:
                raise InputError(
                    f"expected a POI count from 0 to {MAX_POI_COUNT:,}, found {value}",
                    file=path,
                    line=number,
                    field=name,
                )
        base = int(values[0])
        if base in first_line:
            raise InputError(
                f"duplicate base station {base} (first on line {first_line[base]})",
                file=path,
                line=number,
                field="BaseID",
            )
        first_line[base] = number
        ids.append(base)
        rows.append([int(v) for v in values[1:]])
    if not ids:
        raise InputError("no base stations: the file has a header but no rows", file=path, line=2)
    base_ids = np.array(ids, dtype=np.int64)
    order = np.argsort(base_ids, kind="stable")
    return base_ids[order], np.array(rows, dtype=np.int64).reshape(len(ids), len(names))[order], names


def read_coords(path: Path, base_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSV ``cell_id,lat,lon`` -> (lat, lon) aligned with ``base_ids`` (NaN where a station is not listed)."""
    path = Path(path)
    _require_file(path, "base station coordinates")
    position = {int(b): i for i, b in enumerate(base_ids)}
    lat = np.full(len(base_ids), np.nan)
    lon = np.full(len(base_ids), np.nan)
    first_line: dict[int, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise InputError("the file is empty; expected a header cell_id,lat,lon", file=path, line=1)
        if [h.strip().lower() for h in header] != ["cell_id", "lat", "lon"]:
            raise InputError(
                f"expected the header cell_id,lat,lon, found {','.join(header)!r}",
                file=path,
                line=1,
                field=(header[0].strip() if header else "cell_id"),
            )
        for record in reader:
            number = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if len(record) != 3:
                raise InputError(
                    f"expected 3 fields cell_id,lat,lon, found {len(record)}", file=path, line=number, field="cell_id"
                )
            cell_text, lat_text, lon_text = (v.strip() for v in record)
            if not cell_text.isdigit() or int(cell_text) not in position:
                raise InputError(
                    f"unknown base station {cell_text!r}: not a BaseID of the POI table",
                    file=path,
                    line=number,
                    field="cell_id",
                )
            cell = int(cell_text)
            if cell in first_line:
                raise InputError(
                    f"duplicate base station {cell} (first on line {first_line[cell]})",
                    file=path,
                    line=number,
                    field="cell_id",
                )
            first_line[cell] = number
            for text, name, limit in ((lat_text, "lat", 90), (lon_text, "lon", 180)):
                try:
                    value = float(text)
                except ValueError:
                    value = float("nan")
                if not np.isfinite(value) or abs(value) > limit:
                    raise InputError(
                        f"expected a number in [-{limit}, {limit}], found {text!r}", file=path, line=number, field=name
                    )
            lat[position[cell]], lon[position[cell]] = float(lat_text), float(lon_text)
    return lat, lon


# --- the trace -------------------------------------------------------------------------------------


def _trace_line_of_row(path: Path, row: int) -> int:
    """The physical line of data row ``row`` (pandas skips blank lines); only used to report errors."""
    seen = -1
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                seen += 1
                if seen == row:
                    return number
    return row + 1


def _locate_trace_error(path: Path, reason: Exception) -> InputError:
    """After the fast typed read failed: find the first malformed line and field (slow, error path only)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b" ")
            shown = line.decode("utf-8", "replace")
            if len(fields) != len(TRACE_FIELDS):
                return InputError(
                    f"expected 5 fields ({_TRACE_LAYOUT}), found {len(fields)}: {shown!r}",
                    file=path,
                    line=number,
                    field=TRACE_FIELDS[min(len(fields), len(TRACE_FIELDS) - 1)],  # the first missing or extra one
                )
            for value, name in zip(fields, TRACE_FIELDS, strict=True):
                text = value.decode("utf-8", "replace")
                if name == "traffic_bytes" and re.fullmatch(r"-\d+", text):
                    return InputError(f"expected bytes >= 0, found {text!r}", file=path, line=number, field=name)
                if not value.isdigit() or len(value) > 18:
                    expected = "a time as YYYYMMDDhhmmss" if name == "timestamp" else "a whole number >= 0"
                    return InputError(f"expected {expected}, found {text!r}", file=path, line=number, field=name)
    return InputError(f"could not read the trace ({_TRACE_LAYOUT}): {reason}", file=path)


def read_trace(path: Path, nrows: int | None = None) -> pd.DataFrame:
    """The trace (its first ``nrows`` lines when given) as five int64 columns; any malformed line ->
    InputError naming its line and field."""
    path = Path(path)
    _require_file(path, "trace")
    try:
        frame = pd.read_csv(
            path,
            sep=" ",
            header=None,
            names=list(TRACE_FIELDS),
            dtype=dict.fromkeys(TRACE_FIELDS, "int64"),
            engine="c",
            index_col=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=True,
            nrows=nrows,
        )
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame({f: np.zeros(0, dtype=np.int64) for f in TRACE_FIELDS})
    except (ValueError, OverflowError, pd.errors.ParserError) as error:  # ParserError is a ValueError
        raise _locate_trace_error(path, error) from None
    if frame.empty:
        raise InputError(f"the trace is empty; expected lines {_TRACE_LAYOUT}", file=path, line=1)
    return frame


def _showing(values: np.ndarray, message: Callable[[Any], str]) -> Callable[[int], str]:
    """A check's message for row r, from values[r]. The message holds the array, not the caller's name for
    it, which the caller deletes after the checks to keep the peak memory low."""
    return lambda r: message(values[r])


def _checked_records(
    frame: pd.DataFrame,
    trace: Path,
    app2category: Path,
    poi: Path,
    app_ids: np.ndarray,
    app_categories: np.ndarray,
    base_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check every record of the trace (user, time, base station, app, bytes) against the metadata; the
    first bad one -> InputError naming its line and field. Returns user, seconds, category, cell position,
    bytes and app id per record."""
    user = frame["user_id"].to_numpy()
    stamp = frame["timestamp"].to_numpy()
    base = frame["base_station_id"].to_numpy()
    app = frame["app_id"].to_numpy()
    nbytes = frame["traffic_bytes"].to_numpy()

    # Lookups by id: position of each app's category and each base station (-1 = unknown id).
    app_table = np.full(int(app_ids.max()) + 1, -1, dtype=np.int64)
    app_table[app_ids] = app_categories
    app_known = (app >= 0) & (app < len(app_table))
    category = np.where(app_known, app_table[np.where(app_known, app, 0)], -1)
    cell_table = np.full(int(base_ids.max()) + 1, -1, dtype=np.int64)
    cell_table[base_ids] = np.arange(len(base_ids))
    base_known = (base >= 0) & (base < len(cell_table))
    cell = np.where(base_known, cell_table[np.where(base_known, base, 0)], -1)
    seconds, stamp_bad = digits_to_seconds(stamp)

    problem = first_problem(
        [
            ("user_id", user < 0, _showing(user, lambda v: f"expected a whole number >= 0, found {v}")),
            (
                "timestamp",
                stamp_bad,
                _showing(
                    stamp, lambda v: f"expected a time as YYYYMMDDhhmmss (e.g. 20160420081319), {ERA_TEXT}, found {v}"
                ),
            ),
            (
                "base_station_id",
                cell < 0,
                _showing(base, lambda v: f"unknown base station {v}: not a BaseID of {poi.name}"),
            ),
            ("app_id", category < 0, _showing(app, lambda v: f"unknown app {v}: not listed in {app2category.name}")),
            ("traffic_bytes", nbytes < 0, _showing(nbytes, lambda v: f"expected bytes >= 0, found {v}")),
        ]
    )
    if problem:
        row, field, message = problem
        raise InputError(message, file=trace, line=_trace_line_of_row(trace, row), field=field)
    return user, seconds, category, cell, nbytes, app


def peek_tsinghua(
    trace: Path | str,
    app2category: Path | str,
    categories: Path | str,
    poi: Path | str,
    coords: Path | str | None = None,
    rows: int = 200,
) -> None:
    """The checks an upload gets when it is submitted (well under a second): the metadata files whole (they
    are small) and the first ``rows`` lines of the trace, with the same messages as the full read; a bad line
    further down still fails the ingest job, the same way."""
    trace, app2category, poi = Path(trace), Path(app2category), Path(poi)
    read_categories(Path(categories))
    app_ids, app_categories = read_app2category(app2category)
    base_ids, _, _ = read_base_poi(poi)
    if coords is not None:
        read_coords(Path(coords), base_ids)
    frame = read_trace(trace, nrows=rows)
    _checked_records(frame, trace, app2category, poi, app_ids, app_categories, base_ids)


def read_tsinghua(
    trace: Path | str,
    app2category: Path | str,
    categories: Path | str,
    poi: Path | str,
    coords: Path | str | None = None,
    all_services: bool = False,
    name: str = "tsinghua",
    progress: Progress | None = None,
) -> DatasetContent:
    """Read and check the Tsinghua files (module docstring) into a data set's content; nothing is stored."""
    report = progress or (lambda message: None)
    trace, app2category, categories, poi = Path(trace), Path(app2category), Path(categories), Path(poi)
    started = time.perf_counter()

    report("reading categories, apps and base stations")
    names = read_categories(categories)
    app_ids, app_categories = read_app2category(app2category)
    base_ids, base_poi, poi_names = read_base_poi(poi)
    if coords is not None:
        lat, lon = read_coords(Path(coords), base_ids)
    else:
        lat, lon = np.full(len(base_ids), np.nan), np.full(len(base_ids), np.nan)
    services = [names[i] for i in range(len(names))] if all_services else list(PAPER_SERVICES)
    service_of_category = np.array([services.index(n) if n in services else -1 for n in CATEGORIES], dtype=np.int64)

    report(f"reading the trace {trace.name}")
    frame = read_trace(trace)
    n = len(frame)
    report(f"read {n:,} records in {time.perf_counter() - started:.1f} s; checking them")
    user, seconds, category, cell, nbytes, app = _checked_records(
        frame, trace, app2category, poi, app_ids, app_categories, base_ids
    )
    del frame
    apps_seen = int(np.unique(app).size)
    del app  # 33 MB at full size: keep the peak low

    report("aggregating bytes per user-hour-service and the modal base station per user-hour")
    users, entity = np.unique(user, return_inverse=True)
    del user
    day = seconds // 86_400
    check_span(day, trace, lambda row: _trace_line_of_row(trace, row), "timestamp")
    check_total_bytes(nbytes, trace, "traffic_bytes")
    first_day, last_day = int(day.min()), int(day.max())
    hour = seconds // 3_600 - first_day * 24
    hours = (last_day - first_day + 1) * 24
    service = service_of_category[category]
    aggregate = aggregate_hourly(
        entity,
        hour,
        service,
        nbytes,
        cell,
        n_entities=len(users),
        hours=hours,
        n_services=len(services),
        n_cells=len(base_ids),
    )

    dropped = service < 0
    dropped_by_category = np.bincount(category[dropped], minlength=len(CATEGORIES))
    params = {
        "source": {
            "trace": trace.name,
            "app2category": app2category.name,
            "categories": categories.name,
            "poi": poi.name,
            "coords": Path(coords).name if coords is not None else None,
        },
        "services": "all 20 categories" if all_services else "the paper's 10",
        "records": int(n),
        "records_kept": int(n - dropped.sum()),
        "records_dropped": int(dropped.sum()),
        "bytes_total": int(nbytes.sum()),
        "bytes_dropped": int(nbytes[dropped].sum()),
        "records_dropped_by_category": {CATEGORIES[i]: int(c) for i, c in enumerate(dropped_by_category) if c},
        "users": len(users),
        "base_stations": len(base_ids),
        "base_stations_seen": int(np.unique(cell).size),
        "base_stations_with_coordinates": int(np.isfinite(lat).sum()),
        "apps_seen": apps_seen,
    }
    report(
        f"{len(users):,} users, {hours} hours, {len(aggregate.traffic_bytes):,} traffic rows "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return DatasetContent(
        name=name,
        kind="tsinghua",
        entity_kind="user",
        services=services,
        poi_categories=poi_names,
        time_origin=datetime(1970, 1, 1) + timedelta(days=first_day),
        timezone=TIMEZONE,
        hours=hours,
        cell_keys=[str(b) for b in base_ids],
        cell_poi=base_poi,
        entity_keys=[str(u) for u in users],
        traffic_entity=aggregate.traffic_entity,
        traffic_hour=aggregate.traffic_hour,
        traffic_service=aggregate.traffic_service,
        traffic_bytes=aggregate.traffic_bytes,
        location_entity=aggregate.location_entity,
        location_hour=aggregate.location_hour,
        location_cell=aggregate.location_cell,
        cell_names=[f"Base station {b}" for b in base_ids],
        cell_lat=lat,
        cell_lon=lon,
        params=params,
    )


# --- a format generator for tests and benchmarks ---------------------------------------------------

# Share of records per hour of the day (relative), low at night and peaking in the evening.
_DIURNAL = np.array(
    [
        2.0,
        1.0,
        0.6,
        0.4,
        0.4,
        0.6,
        1.5,
        3.0,
        4.5,
        5.0,
        5.0,
        5.0,
        5.5,
        5.0,
        4.5,
        4.5,
        4.5,
        5.0,
        5.5,
        6.0,
        6.5,
        6.0,
        5.0,
        3.5,
    ]
)


def write_synthetic_trace(
    path: Path | str,
    *,
    users: int,
    records: int,
    days: int = 7,
    seed: int = 0,
    n_apps: int = 2000,
    n_cells: int = 9851,
    crlf: bool = False,
) -> Path:
    """Write a file in the exact Tsinghua trace format, for tests and benchmarks: it is NOT data.

    Shapes are loosely like the public statistics (``../shared/data/README.md``): very uneven users
    (one holds about a quarter of all records), Zipf-popular apps ``1..n_apps``, each user moving
    among a few favourite base stations ``0..n_cells-1``, a daily rhythm, records sorted by user and
    time, bytes heavy-tailed with minimum 112 and median about 2 KB, days from 2016-04-20 00:00.
    App and base station ids match the real App2Category.txt and base_poi.txt at the defaults.
    """
    if users < 1 or records < users:
        raise ValueError(f"need 1 <= users <= records, got users={users}, records={records}")
    rng = np.random.default_rng(seed)
    id_space = max(1000, int(users * 1.15) + 1)
    user_ids = np.sort(rng.choice(id_space, size=users, replace=False))
    weight = rng.lognormal(0.0, 1.4, users)
    if users >= 10:
        heaviest = int(np.argmax(weight))
        weight[heaviest] = (weight.sum() - weight[heaviest]) / 3  # -> about 25 % of the records
    counts = 1 + rng.multinomial(records - users, weight / weight.sum())
    entity = np.repeat(np.arange(users), counts)

    hour_of_day = rng.choice(24, size=records, p=_DIURNAL / _DIURNAL.sum())
    second = rng.integers(0, days, records) * 86_400 + hour_of_day * 3_600 + rng.integers(0, 3_600, records)
    order = np.argsort(entity.astype(np.int64) * (days * 86_400) + second, kind="stable")
    second = second[order]

    favourites = rng.integers(0, n_cells, (users, 8))
    slot = rng.choice(8, size=records, p=[0.4, 0.25, 0.1, 0.08, 0.07, 0.05, 0.03, 0.02])
    base = favourites[entity, slot]
    popularity = 1.0 / np.arange(1, n_apps + 1) ** 1.1
    app = rng.permutation(np.arange(1, n_apps + 1))[rng.choice(n_apps, size=records, p=popularity / popularity.sum())]
    nbytes = np.minimum(112 + np.floor(rng.lognormal(np.log(1940.0), 2.0, records)), 24_575_790).astype(np.int64)

    start = np.datetime64("2016-04-20", "D")
    dates = np.array([int(str(start + d).replace("-", "")) for d in range(days)], dtype=np.int64)
    day, rest = second // 86_400, second % 86_400
    stamp = dates[day] * 1_000_000 + rest // 3_600 * 10_000 + rest % 3_600 // 60 * 100 + rest % 60

    path = Path(path)
    frame = pd.DataFrame({"u": user_ids[entity], "t": stamp, "b": base, "a": app, "n": nbytes})
    frame.to_csv(path, sep=" ", header=False, index=False, lineterminator="\r\n" if crlf else "\n")
    return path
