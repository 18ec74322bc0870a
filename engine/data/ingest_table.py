"""Ingest of the documented long format ("table"): a records file and a cells file, CSV or Parquet.

Records, one row per raw event or per already-hourly total (both are handled the same way: timestamps
are floored to the local hour and bytes summed per entity-hour-service):

    entity_id, timestamp, cell_id, service, bytes

- ``entity_id``: who is forecast, a user or (``entity_kind="cell"``) a cell id of the cells file.
- ``timestamp``: ISO 8601 (``2016-04-20T08:13:19``, ``2016-04-20 08:13``, ``...+08:00``, ``...Z``),
  or ``YYYYMMDDhhmmss`` digits, or (mapping ``"timestamp_format": "unix"``) unix seconds. Naive times
  are local wall-clock time of the data set's time zone; times with an offset (and unix seconds) are
  converted to it. Hours are local wall-clock hours (a DST change merges or skips an hour).
- ``cell_id``: the cell the entity was attached to; must be a ``cell_id`` of the cells file. Optional
  when ``entity_kind="cell"`` (then, if present, it must equal ``entity_id``).
- ``service``: a label (any text; numbers are fine) - or a code translated by ``service_labels``.
- ``bytes``: a whole number >= 0.
Other columns are ignored.

Cells: ``cell_id, lat, lon, <POI columns>``. ``lat``/``lon`` may be empty on a row (position unknown)
but then both must be. Every other column is a POI category whose name is the column name (after the
mapping's ``poi_prefix`` stripping and ``poi_names`` renaming) and whose values are whole counts >= 0;
columns that are not POI counts must be listed in the mapping's ``cells_drop``.

Derived: the location of an entity in an hour is its modal cell in that hour by record count (ties go
to the smallest cell id: numeric order when every id is an integer, text order otherwise); hour 0 is
local midnight of the earliest record's day; the data set covers whole days. Entities and cells are
stored in that same id order.

Every problem raises :class:`engine.errors.InputError` naming the file, the 1-based physical line (the
header is line 1; for Parquet the 1-based row) and the column, before anything is returned, so the
caller can store the result in one transaction or not at all.

This module also holds the two helpers the Tsinghua reader shares with it:
:func:`digits_to_seconds` (vectorised ``YYYYMMDDhhmmss`` parsing) and :func:`aggregate_hourly`.
"""

from __future__ import annotations

import csv
import json
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from db.queries import DatasetContent
from engine.errors import InputError

# The largest POI count of one category around one cell that is accepted (ingests, what-if edits): far above
# any real cell (a dense city centre has a few thousand POIs per km2 in all); a larger number is a unit or
# parsing mistake, and it would swamp the description and the environment vector.
MAX_POI_COUNT = 1_000_000

RECORD_FIELDS = ("entity_id", "timestamp", "cell_id", "service", "bytes")
CELL_FIELDS = ("cell_id", "lat", "lon")
TIMESTAMP_FORMATS = ("iso", "digits", "unix")
ENTITY_KINDS = ("user", "cell")
DEFAULT_TIMEZONE = "UTC"

_DIGITS_EXAMPLE = "YYYYMMDDhhmmss such as 20160420081319"
_ISO_EXAMPLE = "ISO 8601 such as 2016-04-20T08:13:19 or 2016-04-20 08:13:19+08:00"
_INT_TEXT = re.compile(r"^[+-]?\d+$")
# An ISO time that carries its own offset: a time part followed by Z or +hh[:mm] / -hh[:mm].
_ISO_WITH_OFFSET = r"[T ]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?\s*(?:Z|z|[+-]\d{2}(?::?\d{2})?)$"


# --- mapping ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableMapping:
    """How a records/cells pair differs from the documented format (a JSON file, all keys optional).

    Keys of the JSON object:

    - ``"records"``: object, documented column -> column in the records file, for any of
      ``entity_id``, ``timestamp``, ``cell_id``, ``service``, ``bytes``; unmapped ones keep their
      documented names. Example: ``{"entity_id": "user_id", "timestamp": "time", "cell_id":
      "location", "service": "app_cate_id", "bytes": "traffic"}``.
    - ``"cells"``: object, documented column -> column in the cells file, for any of ``cell_id``,
      ``lat``, ``lon``. Example: ``{"cell_id": "base_id", "lat": "latitude", "lon": "longitude"}``.
    - ``"cells_drop"``: list of cells-file columns to ignore (text columns such as a station code);
      every column of the cells file that is neither mapped nor dropped is read as a POI count.
    - ``"poi_prefix"``: text removed from the start of POI column names (``"poi_"`` turns
      ``poi_Healthcare`` into the POI category ``Healthcare``).
    - ``"poi_names"``: object, POI column (after prefix stripping) -> POI category name.
    - ``"timestamp_format"``: ``"iso"``, ``"digits"`` (``YYYYMMDDhhmmss``) or ``"unix"`` (seconds
      since 1970-01-01 UTC). Default: ``digits`` when every value is 14 digits, else ``iso``.
    - ``"service_labels"``: object, service code as text -> service label (``{"1": "Utilities"}``);
      when given, every record's service must be one of its codes.
    - ``"services"``: list of service labels (after ``service_labels``) in the order the data set
      keeps them; when given, every record's service must be in it. Default: the labels seen, sorted
      (numerically when all are integers).
    - ``"entity_kind"``: ``"user"`` or ``"cell"``: what ``entity_id`` is (the command line's
      ``--entity-kind`` wins). Default ``user``.
    - ``"timezone"``: IANA time zone of the data (the command line's ``--timezone`` wins). Default UTC.
    - ``"description"``: free text for people; ignored.

    Any other key is an error, as is a key given twice.
    """

    records: dict[str, str] = field(default_factory=lambda: {f: f for f in RECORD_FIELDS})
    cells: dict[str, str] = field(default_factory=lambda: {f: f for f in CELL_FIELDS})
    cells_drop: tuple[str, ...] = ()
    poi_prefix: str = ""
    poi_names: dict[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None
    service_labels: dict[str, str] | None = None
    services: tuple[str, ...] | None = None
    entity_kind: str | None = None
    timezone: str | None = None
    description: str = ""
    path: Path | None = None


MAPPING_KEYS = (
    "records",
    "cells",
    "cells_drop",
    "poi_prefix",
    "poi_names",
    "timestamp_format",
    "service_labels",
    "services",
    "entity_kind",
    "timezone",
    "description",
)


def _line_of_key(text: str, key: str, occurrence: int = 1) -> int | None:
    """The line where ``"key"`` appears (the n-th time) in a JSON text, for error messages."""
    at = -1
    for _ in range(occurrence):
        at = text.find(json.dumps(key), at + 1)
        if at < 0:
            return None
    return text.count("\n", 0, at) + 1


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(Exception):
    pass


def load_mapping(path: Path | str) -> TableMapping:
    """Read and check a mapping JSON file (see :class:`TableMapping` for its keys)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such mapping file", file=path)
    try:
        source = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"not UTF-8 text (byte {error.start})", file=path) from None
    try:
        raw = json.loads(source, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as error:
        raise InputError(
            f"not valid JSON: {error.msg} at column {error.colno}",
            file=path,
            line=error.lineno,
            hint="a mapping is one JSON object; see docs/data-formats.md#the-json-mapping",
        ) from None
    except _DuplicateKey as error:
        key = error.args[0]
        raise InputError("key given twice", file=path, line=_line_of_key(source, key, 2), field=key) from None
    except RecursionError:  # thousands of nested brackets: no mapping looks like that
        raise InputError(
            "nested too deeply to be a mapping (a mapping is one JSON object of a few levels)", file=path
        ) from None
    if not isinstance(raw, dict):
        raise InputError(f"expected a JSON object {{...}}, found {type(raw).__name__}", file=path, line=1)

    def fail(key: str, message: str, line_key: str | None = None) -> InputError:
        return InputError(message, file=path, line=_line_of_key(source, line_key or key.split(".")[-1]), field=key)

    for key in raw:
        if key not in MAPPING_KEYS:
            raise fail(key, f"unknown key; the known keys are {', '.join(MAPPING_KEYS)}")

    def columns(key: str, allowed: tuple[str, ...]) -> dict[str, str]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise fail(key, f'expected an object such as {{"{allowed[0]}": "<column>"}}, found {value!r}')
        result = {f: f for f in allowed}
        for name, column in value.items():
            if name not in allowed:
                raise fail(f"{key}.{name}", f"unknown column role; expected one of {', '.join(allowed)}", name)
            if not isinstance(column, str) or not column.strip():
                raise fail(f"{key}.{name}", f"expected a column name, found {column!r}", name)
            result[name] = column.strip()
        return result

    def text_list(key: str) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise fail(key, f"expected a list of non-empty strings, found {value!r}")
        items = tuple(v.strip() for v in value)
        duplicated = sorted({v for v in items if items.count(v) > 1})
        if duplicated:
            raise fail(key, f"names listed twice: {', '.join(duplicated)}")
        return items

    def text_map(key: str) -> dict[str, str] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, dict) or not all(isinstance(v, str) and v.strip() for v in value.values()):
            raise fail(key, f'expected an object of non-empty strings such as {{"1": "Utilities"}}, found {value!r}')
        return {str(k).strip(): v.strip() for k, v in value.items()}

    def string(key: str, choices: tuple[str, ...] | None = None) -> str | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, str) or (choices and value not in choices):
            expected = f"one of {', '.join(choices)}" if choices else "a string"
            raise fail(key, f"expected {expected}, found {value!r}")
        return value

    timezone = string("timezone")
    if timezone is not None:
        _check_timezone(timezone, file=path, line=_line_of_key(source, "timezone"))
    return TableMapping(
        records=columns("records", RECORD_FIELDS),
        cells=columns("cells", CELL_FIELDS),
        cells_drop=text_list("cells_drop") or (),
        poi_prefix=string("poi_prefix") or "",
        poi_names=text_map("poi_names") or {},
        timestamp_format=string("timestamp_format", TIMESTAMP_FORMATS),
        service_labels=text_map("service_labels"),
        services=text_list("services"),
        entity_kind=string("entity_kind", ENTITY_KINDS),
        timezone=timezone,
        description=string("description") or "",
        path=path,
    )


def _check_timezone(name: str, *, file: Path | None = None, line: int | None = None) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InputError(
            f"unknown time zone {name!r}",
            file=file,
            line=line,
            field="timezone",
            hint="use an IANA name such as Asia/Shanghai, Europe/Berlin or UTC",
        ) from None


# --- shared helpers (also used by the Tsinghua reader) ---------------------------------------------


def digits_to_seconds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``YYYYMMDDhhmmss`` integers -> (seconds since 1970-01-01 00:00 of the same wall clock, bad mask).

    Vectorised integer arithmetic; a value is bad unless it has 14 digits and names a real calendar
    second from 1970 to 2099 (``ERA_TEXT``: month 1-12, a day that exists in that month, hh < 24, mm < 60,
    ss < 60). Bad entries get 0.
    Each distinct date is checked once (a trace has a handful), which keeps time and memory low.
    """
    v = np.asarray(values, dtype=np.int64)
    date, clock = np.divmod(v, 10**6)
    codes, dates = pd.factorize(date)
    year, month, day = dates // 10**4, dates // 100 % 100, dates % 100
    date_bad = (dates < 10**7) | (dates >= 10**8) | (month < 1) | (month > 12) | (day < 1)
    date_bad |= (year < 1970) | (year > 2099)
    months = np.where(date_bad, 0, (year - 1970) * 12 + month - 1)
    first = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    after = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    date_bad |= day > after - first
    day_number = np.where(date_bad, 0, first + day - 1)
    del date
    hh, rest = np.divmod(clock, 10**4)
    mm, ss = np.divmod(rest, 100)
    del rest, clock
    bad = date_bad[codes] | (hh > 23) | (mm > 59) | (ss > 59)
    seconds = day_number[codes] * 86_400 + hh * 3_600 + mm * 60 + ss
    seconds[bad] = 0
    return seconds, bad


@dataclass
class HourlyAggregate:
    """Traffic and location rows in the positional form :class:`DatasetContent` stores."""

    traffic_entity: np.ndarray
    traffic_hour: np.ndarray
    traffic_service: np.ndarray
    traffic_bytes: np.ndarray
    location_entity: np.ndarray
    location_hour: np.ndarray
    location_cell: np.ndarray


def _group_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and the exact int64 sum of ``values`` per key."""
    if keys.size == 0:
        return keys.astype(np.int64), values.astype(np.int64)
    order = np.argsort(keys, kind="stable")  # traces come sorted by user and time: nearly sorted keys
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(values, starts)


def aggregate_hourly(
    entity: np.ndarray,
    hour: np.ndarray,
    service: np.ndarray,
    nbytes: np.ndarray,
    cell: np.ndarray,
    *,
    n_entities: int,
    hours: int,
    n_services: int,
    n_cells: int,
) -> HourlyAggregate:
    """Per-record positions -> bytes per (entity, hour, service) and the modal cell per (entity, hour).

    ``service`` < 0 marks records that count for the location but not for traffic (services that are
    not kept). Zero sums are left out (an absent row means 0 bytes). The modal cell is the one with the
    most records in that entity-hour; ties go to the smallest cell position.
    """
    if n_entities * hours * max(n_services, n_cells, 1) >= 2**62:
        raise InputError(f"too large to aggregate: {n_entities} entities x {hours} hours x {n_cells} cells")
    entity, hour, cell = (np.asarray(a, dtype=np.int64) for a in (entity, hour, cell))
    service, nbytes = np.asarray(service, dtype=np.int64), np.asarray(nbytes, dtype=np.int64)
    slot = entity * hours + hour  # one entity-hour

    kept = service >= 0
    keys, sums = _group_sum(slot[kept] * n_services + service[kept], nbytes[kept])
    nonzero = sums > 0
    keys, sums = keys[nonzero], sums[nonzero]

    pairs, counts = np.unique(slot * n_cells + cell, return_counts=True)
    pair_slot, pair_cell = pairs // n_cells, pairs % n_cells
    order = np.lexsort((pair_cell, -counts, pair_slot))  # by slot, then most records, then smallest cell
    pair_slot, pair_cell = pair_slot[order], pair_cell[order]
    first = np.r_[True, pair_slot[1:] != pair_slot[:-1]] if pair_slot.size else np.zeros(0, dtype=bool)
    modal_slot, modal_cell = pair_slot[first], pair_cell[first]
    return HourlyAggregate(
        traffic_entity=keys // n_services // hours,
        traffic_hour=keys // n_services % hours,
        traffic_service=keys % n_services,
        traffic_bytes=sums.astype(np.int64),
        location_entity=modal_slot // hours,
        location_hour=modal_slot % hours,
        location_cell=modal_cell,
    )


MAX_SPAN_DAYS = 5 * 366  # a data set covers at most five years of hours (a far-off timestamp is a typo)
MAX_TOTAL_BYTES = 2**62  # all the records' bytes together: sums by hour, cell and city stay exact in int64


def check_total_bytes(nbytes: np.ndarray, file: object, field: str) -> None:
    """Refuse bytes whose sum would overflow the 64-bit sums made from them (they were stored wrong)."""
    total = float(np.sum(nbytes, dtype=np.float64))
    if total >= MAX_TOTAL_BYTES:
        raise InputError(
            f"the records' bytes add up to {total:.3g}, more than the {MAX_TOTAL_BYTES:.3g} a data set can hold",
            file=file,  # type: ignore[arg-type]
            field=field,
            hint="check the unit of the bytes column",
        )


def check_span(day: np.ndarray, file: object, line_of: Callable[[int], int | None], field: str) -> None:
    """Refuse records spanning more than ``MAX_SPAN_DAYS`` (one timestamp in year 9999 made a data set of
    70 million hours), naming the record at the far end: the one farther from the median day."""
    first, last = int(day.min()), int(day.max())
    if last - first + 1 <= MAX_SPAN_DAYS:
        return
    middle = float(np.median(day))
    row = int(np.argmax(day)) if last - middle >= middle - first else int(np.argmin(day))
    origin = datetime(1970, 1, 1)
    shown = [(origin + timedelta(days=d)).date().isoformat() for d in (first, last)]
    raise InputError(
        f"the records span {last - first + 1:,} days, {shown[0]} to {shown[1]}; at most {MAX_SPAN_DAYS:,} (five "
        f"years) are accepted, and this record is the far one (its day: {shown[row == int(np.argmax(day))]})",
        file=file,  # type: ignore[arg-type]
        line=line_of(row),
        field=field,
    )


def first_problem(checks: list[tuple[str, np.ndarray, Callable[[int], str]]]) -> tuple[int, str, str] | None:
    """The earliest row any check flags: (row, field, message); on one row the first check wins."""
    best: tuple[int, str, Callable[[int], str]] | None = None
    for name, mask, describe in checks:
        rows = np.flatnonzero(mask)
        if rows.size and (best is None or rows[0] < best[0]):
            best = (int(rows[0]), name, describe)
    if best is None:
        return None
    return best[0], best[1], best[2](best[0])


def id_order(keys: list[str]) -> list[str]:
    """Ids sorted numerically when all are integers, as text otherwise."""
    if keys and all(_INT_TEXT.match(k) for k in keys):
        return sorted(keys, key=lambda k: (int(k), k))
    return sorted(keys)


# --- reading the files -----------------------------------------------------------------------------


@dataclass
class _Table:
    """A records or cells file as a frame, with the map from frame rows to physical lines."""

    path: Path
    frame: pd.DataFrame
    is_csv: bool

    def line(self, row: int) -> int:
        """The 1-based physical line of frame row ``row`` (CSV: header = line 1; Parquet: the row)."""
        if not self.is_csv:
            return row + 1
        # Slow path, only taken to report an error: replay the CSV as pandas reads it (blank lines
        # skipped, quoted fields may span lines).
        with self.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            seen_header, data_row = False, -1
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if not seen_header:
                    seen_header = True
                    continue
                data_row += 1
                if data_row == row:
                    return reader.line_num
        return row + 2


def _read_table_file(path: Path, what: str, rows: int | None = None) -> _Table:
    """The whole file, or its first ``rows`` data rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such {what} file", file=path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig", nrows=rows
            )
        except pd.errors.EmptyDataError:
            raise InputError(
                f"the {what} file is empty; expected a header line of column names", file=path, line=1
            ) from None
        except pd.errors.ParserError as error:
            found = re.search(r"line (\d+)", str(error))
            raise InputError(
                f"malformed CSV: {str(error).split(':')[-1].strip()}",
                file=path,
                line=int(found.group(1)) if found else None,
            ) from None
        except UnicodeDecodeError as error:
            raise InputError(f"not UTF-8 text (byte {error.start})", file=path) from None
        header = _csv_header(path)
        duplicated = sorted({c for c in header if header.count(c) > 1})
        if duplicated:
            raise InputError("column named twice in the header", file=path, line=1, field=duplicated[0])
        frame.columns = header if len(header) == len(frame.columns) else [str(c).strip() for c in frame.columns]
        return _Table(path, frame, is_csv=True)
    if suffix == ".parquet":
        try:
            if rows is None:
                frame = pd.read_parquet(path)
            else:
                import pyarrow.parquet as pq

                with pq.ParquetFile(path) as handle:
                    first = next(handle.iter_batches(batch_size=rows), None)
                    frame = handle.schema_arrow.empty_table().to_pandas() if first is None else first.to_pandas()
        except Exception as error:  # noqa: BLE001 - pyarrow raises several unrelated types for a bad file
            raise InputError(f"not a readable Parquet file: {error}", file=path) from None
        frame.columns = [str(c).strip() for c in frame.columns]
        return _Table(path, frame.reset_index(drop=True), is_csv=False)
    raise InputError(
        f"cannot tell the {what} file's format from its name ({suffix or 'no extension'!s})",
        file=path,
        hint="expected a name ending in .csv or .parquet",
    )


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for record in csv.reader(handle):
            if record and not (len(record) == 1 and not record[0].strip()):
                return [c.strip() for c in record]
    return []


def _require_columns(table: _Table, roles: dict[str, str], needed: tuple[str, ...], what: str, key: str) -> None:
    for role in needed:
        column = roles[role]
        if column not in table.frame.columns:
            found = ", ".join(map(str, table.frame.columns)) or "none"
            mapped = f" (the {what}' {role})" if column != role else ""
            raise InputError(
                f"missing column {column!r}{mapped}; found columns: {found}",
                file=table.path,
                line=1 if table.is_csv else None,
                field=column,
                hint=f'rename the column or map it in a mapping file: "{key}": {{"{role}": "<column>"}}',
            )


def _text(series: pd.Series) -> pd.Series:
    """A column as stripped text (numbers from Parquet become their decimal text; missing -> '')."""
    if series.dtype.kind in "iu":
        return series.astype(str)
    if series.dtype.kind == "f":
        as_int = series.dropna()
        text = series.astype("Int64").astype(str) if (as_int == np.round(as_int)).all() else series.astype(str)
        return text.where(series.notna(), "")
    return series.astype(str).fillna("").str.strip()


def _numbers(series: pd.Series) -> np.ndarray:
    """A column as float64 (bad or empty -> NaN)."""
    if series.dtype.kind in "iuf":
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(_text(series), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _shown(series: pd.Series, row: int) -> str:
    return repr(str(series.iloc[row]).strip()) if series.iloc[row] is not None else "an empty value"


# --- cells -----------------------------------------------------------------------------------------


@dataclass
class _Cells:
    keys: list[str]
    lat: np.ndarray
    lon: np.ndarray
    poi: np.ndarray  # (C, P) int64
    poi_names: list[str]


def _read_cells(path: Path, mapping: TableMapping) -> _Cells:
    table = _read_table_file(path, "cells")
    roles = mapping.cells
    _require_columns(table, roles, CELL_FIELDS, "cells", "cells")
    frame = table.frame
    for column in mapping.cells_drop:
        if column not in frame.columns:
            raise InputError(
                f"cells_drop names column {column!r}, which the cells file {path} does not have",
                file=mapping.path,
                field="cells_drop",
            )
    used = {roles[r] for r in CELL_FIELDS} | set(mapping.cells_drop)
    poi_columns = [c for c in frame.columns if c not in used]
    poi_names = []
    for column in poi_columns:
        name = (
            column[len(mapping.poi_prefix) :]
            if mapping.poi_prefix and column.startswith(mapping.poi_prefix)
            else column
        )
        poi_names.append(mapping.poi_names.get(name, name).strip())
    for i, name in enumerate(poi_names):
        if not name:
            raise InputError(
                "a POI column has an empty name", file=path, line=1 if table.is_csv else None, field=poi_columns[i]
            )
        if poi_names.index(name) != i:
            raise InputError(
                f"two POI columns give the category {name!r}",
                file=path,
                line=1 if table.is_csv else None,
                field=poi_columns[i],
                hint="rename one, or list it in the mapping's cells_drop",
            )
    if frame.empty:
        raise InputError("the cells file has no rows", file=path, line=2 if table.is_csv else None)

    id_col, lat_col, lon_col = (roles[r] for r in CELL_FIELDS)
    keys = _text(frame[id_col])
    lat_text, lon_text = _text(frame[lat_col]), _text(frame[lon_col])
    lat, lon = _numbers(frame[lat_col]), _numbers(frame[lon_col])
    lat_empty, lon_empty = (lat_text == "").to_numpy(), (lon_text == "").to_numpy()
    duplicated = keys.duplicated(keep="first").to_numpy()

    def first_row_of(row: int) -> int:
        return int(np.flatnonzero((keys == keys.iloc[row]).to_numpy())[0])

    checks: list[tuple[str, np.ndarray, Callable[[int], str]]] = [
        (id_col, (keys == "").to_numpy(), lambda r: "expected a cell id, found an empty value"),
        (
            id_col,
            duplicated,
            lambda r: f"duplicate cell id {keys.iloc[r]!r} (first on line {table.line(first_row_of(r))})",
        ),
        (
            lat_col,
            ~lat_empty & ~np.isfinite(lat),
            lambda r: f"expected a latitude in degrees, found {_shown(frame[lat_col], r)}",
        ),
        (
            lat_col,
            np.isfinite(lat) & ((lat < -90) | (lat > 90)),
            lambda r: f"expected a latitude in [-90, 90], found {lat[r]:g}",
        ),
        (
            lon_col,
            ~lon_empty & ~np.isfinite(lon),
            lambda r: f"expected a longitude in degrees, found {_shown(frame[lon_col], r)}",
        ),
        (
            lon_col,
            np.isfinite(lon) & ((lon < -180) | (lon > 180)),
            lambda r: f"expected a longitude in [-180, 180], found {lon[r]:g}",
        ),
        (lat_col, lat_empty != lon_empty, lambda r: "latitude and longitude must be both given or both empty"),
    ]

    def not_a_count(column: str) -> Callable[[int], str]:
        return lambda r: (
            f"expected a POI count (a whole number from 0 to {MAX_POI_COUNT:,}), found {_shown(frame[column], r)}"
        )

    poi = np.zeros((len(frame), len(poi_columns)), dtype=np.int64)
    for j, column in enumerate(poi_columns):
        values = _numbers(frame[column])
        bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values)) | (values > MAX_POI_COUNT)
        checks.append((column, bad, not_a_count(column)))
        poi[:, j] = np.where(bad, 0, values).astype(np.int64)
    problem = first_problem(checks)
    if problem:
        row, name, message = problem
        hint = None
        if name in poi_columns:
            hint = (
                "every cells column other than cell_id, lat and lon is read as a POI category; "
                "list other columns in the mapping's cells_drop"
            )
        raise InputError(message, file=path, line=table.line(row), field=name, hint=hint)

    key_list = keys.tolist()
    ordered = id_order(key_list)
    position = {k: i for i, k in enumerate(key_list)}
    order = np.array([position[k] for k in ordered], dtype=np.int64)
    return _Cells(keys=ordered, lat=lat[order], lon=lon[order], poi=poi[order], poi_names=poi_names)


# --- timestamps ------------------------------------------------------------------------------------


ERA_TEXT = "from 1970 to 2099"
_ERA_END = int((datetime(2100, 1, 1) - datetime(1970, 1, 1)).total_seconds())


def _local_seconds(series: pd.Series, fmt: str | None, timezone: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Timestamps -> (local wall-clock seconds since 1970, bad mask, what was expected); a time outside the
    years 1970 to 2099 is bad (a "-1" read as the year -1 is a typo, not a data set's start)."""
    seconds, bad, expected = _parse_local_seconds(series, fmt, timezone)
    bad = bad | (seconds < 0) | (seconds >= _ERA_END)
    return np.where(bad, 0, seconds), bad, f"{expected}, {ERA_TEXT}"


def _parse_local_seconds(series: pd.Series, fmt: str | None, timezone: str) -> tuple[np.ndarray, np.ndarray, str]:
    if series.dtype.kind == "M":  # a Parquet timestamp column
        values = series
        if getattr(series.dt, "tz", None) is not None:
            values = series.dt.tz_convert(timezone).dt.tz_localize(None)
        bad = values.isna().to_numpy()
        seconds = values.astype("datetime64[s]").fillna(pd.Timestamp(0)).astype("int64").to_numpy()
        return np.where(bad, 0, seconds), bad, "a timestamp"
    text = _text(series)
    if fmt is None:
        fmt = "digits" if bool(text.str.fullmatch(r"\d{14}").all()) else "iso"
    if fmt == "digits":
        shaped = text.str.fullmatch(r"\d{14}").to_numpy(dtype=bool)
        numbers = np.where(shaped, pd.to_numeric(text.where(shaped, "0")).to_numpy(dtype=np.int64), 0)
        seconds, bad = digits_to_seconds(numbers)
        return seconds, bad | ~shaped, f"a time as {_DIGITS_EXAMPLE}"
    if fmt == "unix":
        raw = _numbers(series)
        bad = ~np.isfinite(raw) | (np.abs(raw) > 1e11)
        utc = pd.to_datetime(np.where(bad, 0, np.floor(raw)).astype(np.int64), unit="s", utc=True)
        local = utc.tz_convert(timezone).tz_localize(None)
        seconds = np.asarray(local.astype("datetime64[s]").astype("int64"), dtype=np.int64)
        return np.where(bad, 0, seconds), bad, "unix seconds such as 1461111199"
    # ISO 8601: values with an offset are instants (converted to the zone), the others wall-clock.
    aware = text.str.contains(_ISO_WITH_OFFSET, regex=True).to_numpy(dtype=bool)
    parsed = pd.Series(np.zeros(len(text), dtype=np.int64))
    bad = np.zeros(len(text), dtype=bool)
    if aware.any():
        when = pd.to_datetime(text[aware], format="ISO8601", utc=True, errors="coerce")
        missing = when.isna().to_numpy()
        when = when.dt.tz_convert(timezone).dt.tz_localize(None)
        bad[np.flatnonzero(aware)[missing]] = True
        parsed[aware] = when.astype("datetime64[s]").fillna(pd.Timestamp(0)).astype("int64").to_numpy()
    if (~aware).any():
        when = pd.to_datetime(text[~aware], format="ISO8601", errors="coerce")
        missing = when.isna().to_numpy()
        bad[np.flatnonzero(~aware)[missing]] = True
        parsed[~aware] = when.astype("datetime64[s]").fillna(pd.Timestamp(0)).astype("int64").to_numpy()
    return np.where(bad, 0, parsed.to_numpy()), bad, f"a time as {_ISO_EXAMPLE} (or {_DIGITS_EXAMPLE})"


# --- records ---------------------------------------------------------------------------------------


def read_table(
    records: Path | str,
    cells: Path | str,
    mapping: Path | str | None = None,
    entity_kind: str | None = None,
    timezone: str | None = None,
    name: str | None = None,
) -> DatasetContent:
    """Read and check a records file and a cells file (module docstring) into a data set's content.

    ``entity_kind`` and ``timezone`` override the mapping's; defaults are ``user`` and UTC.
    """
    content = _read_table(records, cells, mapping, entity_kind, timezone, name, peek_rows=None)
    assert content is not None  # only a peek returns nothing
    return content


PEEK_ROWS = 200  # records read by peek_table


def peek_table(
    records: Path | str,
    cells: Path | str,
    mapping: Path | str | None = None,
    entity_kind: str | None = None,
    timezone: str | None = None,
) -> None:
    """The check of an upload when it is submitted, before it is queued (a second at most): the mapping, the
    whole cells file (one row per cell: small) and the records file's format, columns and first ``PEEK_ROWS``
    rows, with the same checks and messages as ``read_table`` (which checks every row when the job runs)."""
    _read_table(records, cells, mapping, entity_kind, timezone, None, peek_rows=PEEK_ROWS)


def _read_table(
    records: Path | str,
    cells: Path | str,
    mapping: Path | str | None,
    entity_kind: str | None,
    timezone: str | None,
    name: str | None,
    *,
    peek_rows: int | None,
) -> DatasetContent | None:
    records, cells = Path(records), Path(cells)
    spec = load_mapping(mapping) if mapping is not None else TableMapping()
    entity_kind = entity_kind or spec.entity_kind or "user"
    if entity_kind not in ENTITY_KINDS:
        raise InputError(f"expected entity kind user or cell, found {entity_kind!r}", field="entity_kind")
    if timezone is not None:
        _check_timezone(timezone)
    timezone = timezone or spec.timezone or DEFAULT_TIMEZONE

    cell_table = _read_cells(cells, spec)
    table = _read_table_file(records, "records", rows=peek_rows)
    roles = spec.records
    cell_optional = entity_kind == "cell" and roles["cell_id"] not in table.frame.columns
    needed = tuple(f for f in RECORD_FIELDS if not (f == "cell_id" and cell_optional))
    _require_columns(table, roles, needed, "records", "records")
    frame = table.frame
    if frame.empty:
        raise InputError(
            f"the records file has no data rows; expected columns {', '.join(roles[f] for f in needed)}",
            file=records,
            line=2 if table.is_csv else 1,
        )

    entity_col, time_col, cell_col, service_col, bytes_col = (roles[f] for f in RECORD_FIELDS)
    entity_text = _text(frame[entity_col])
    seconds, time_bad, time_expected = _local_seconds(frame[time_col], spec.timestamp_format, timezone)
    cell_index = pd.Index(cell_table.keys)
    cell_text = entity_text if cell_optional else _text(frame[cell_col])
    cell_pos = cell_index.get_indexer(cell_text)
    service_text = _text(frame[service_col])
    if spec.service_labels is not None:
        labels = service_text.map(spec.service_labels)
        unlabelled = (labels.isna() & (service_text != "")).to_numpy()
        labels = labels.fillna("")
    else:
        labels, unlabelled = service_text, np.zeros(len(frame), dtype=bool)
    services = list(spec.services) if spec.services is not None else id_order(sorted(set(labels.unique()) - {""}))
    service_pos = pd.Index(services).get_indexer(labels)
    raw_bytes = _numbers(frame[bytes_col])
    bytes_finite = np.isfinite(raw_bytes)

    checks: list[tuple[str, np.ndarray, Callable[[int], str]]] = [
        (entity_col, (entity_text == "").to_numpy(), lambda r: "expected an entity id, found an empty value"),
    ]
    if entity_kind == "cell":
        entity_pos_as_cell = cell_index.get_indexer(entity_text)
        checks.append(
            (
                entity_col,
                (entity_pos_as_cell < 0) & (entity_text != "").to_numpy(),
                lambda r: (
                    f"entity {entity_text.iloc[r]!r} is not a cell_id of the cells file {cells.name} "
                    "(with entity kind 'cell' every entity is a cell)"
                ),
            )
        )
    checks += [
        (time_col, time_bad, lambda r: f"expected {time_expected}, found {_shown(frame[time_col], r)}"),
    ]
    if not cell_optional:
        checks += [
            (cell_col, (cell_text == "").to_numpy(), lambda r: "expected a cell id, found an empty value"),
            (
                cell_col,
                (cell_pos < 0) & (cell_text != "").to_numpy(),
                lambda r: f"unknown cell {cell_text.iloc[r]!r}: not a cell_id of the cells file {cells.name}",
            ),
        ]
        if entity_kind == "cell":
            checks.append(
                (
                    cell_col,
                    (cell_text != entity_text).to_numpy(),
                    lambda r: (
                        f"with entity kind 'cell' the record's cell must be the entity itself: "
                        f"found {cell_text.iloc[r]!r} for entity {entity_text.iloc[r]!r}"
                    ),
                )
            )
    checks += [
        (service_col, (service_text == "").to_numpy(), lambda r: "expected a service, found an empty value"),
        (
            service_col,
            unlabelled,
            lambda r: f"service code {service_text.iloc[r]!r} has no label in the mapping's service_labels",
        ),
        (
            service_col,
            (service_pos < 0) & ~unlabelled & (labels != "").to_numpy(),
            lambda r: f"service {labels.iloc[r]!r} is not in the mapping's services list ({', '.join(services)})",
        ),
        (bytes_col, ~bytes_finite, lambda r: f"expected a whole number of bytes, found {_shown(frame[bytes_col], r)}"),
        (
            bytes_col,
            bytes_finite & (raw_bytes < 0),
            lambda r: f"expected bytes >= 0, found {_shown(frame[bytes_col], r)}",
        ),
        (
            bytes_col,
            bytes_finite & (raw_bytes >= 0) & (raw_bytes != np.round(raw_bytes)),
            lambda r: f"expected a whole number of bytes, found {_shown(frame[bytes_col], r)}",
        ),
        (
            bytes_col,
            bytes_finite & (raw_bytes >= 2**62),
            lambda r: f"expected bytes below 2**62 (4.6e18) per record, found {_shown(frame[bytes_col], r)}",
        ),
    ]
    problem = first_problem(checks)
    if problem:
        row, column, message = problem
        hint = None
        if column == time_col and spec.timestamp_format is None:
            hint = 'set "timestamp_format" ("iso", "digits" or "unix") in a mapping file if the guess is wrong'
        raise InputError(message, file=records, line=table.line(row), field=column, hint=hint)
    if peek_rows is not None:
        return None

    # Positions: entities in id order, hours from local midnight of the earliest day.
    entity_codes, entity_uniques = pd.factorize(entity_text)
    entity_keys = id_order([str(k) for k in entity_uniques])
    rank = pd.Index(entity_keys).get_indexer([str(k) for k in entity_uniques])
    entity_pos = rank[entity_codes]
    day = seconds // 86_400
    check_span(day, records, table.line, time_col)
    first_day, last_day = int(day.min()), int(day.max())
    hour = (seconds // 3_600 - first_day * 24).astype(np.int64)
    hours = (last_day - first_day + 1) * 24
    nbytes = raw_bytes.astype(np.int64)
    check_total_bytes(nbytes, records, bytes_col)
    aggregate = aggregate_hourly(
        entity_pos,
        hour,
        service_pos,
        nbytes,
        cell_pos,
        n_entities=len(entity_keys),
        hours=hours,
        n_services=len(services),
        n_cells=len(cell_table.keys),
    )
    entity_cell = cell_index.get_indexer(entity_keys) if entity_kind == "cell" else None
    params = {
        "source": {"records": records.name, "cells": cells.name, "mapping": Path(mapping).name if mapping else None},
        "records": len(frame),
        "records_format": "csv" if table.is_csv else "parquet",
        "bytes_total": int(nbytes.sum()),
        "entity_kind": entity_kind,
        "timezone": timezone,
        "ignored_record_columns": [c for c in frame.columns if c not in {roles[f] for f in RECORD_FIELDS}],
        "ignored_cell_columns": list(spec.cells_drop),
    }
    return DatasetContent(
        name=name or records.stem,
        kind="table",
        entity_kind=entity_kind,
        services=services,
        poi_categories=cell_table.poi_names,
        time_origin=datetime(1970, 1, 1) + timedelta(days=first_day),
        timezone=timezone,
        hours=hours,
        cell_keys=cell_table.keys,
        cell_poi=cell_table.poi,
        entity_keys=entity_keys,
        traffic_entity=aggregate.traffic_entity,
        traffic_hour=aggregate.traffic_hour,
        traffic_service=aggregate.traffic_service,
        traffic_bytes=aggregate.traffic_bytes,
        location_entity=aggregate.location_entity,
        location_hour=aggregate.location_hour,
        location_cell=aggregate.location_cell,
        cell_names=[f"Cell {k}" for k in cell_table.keys],
        cell_lat=cell_table.lat,
        cell_lon=cell_table.lon,
        entity_cell=entity_cell,
        params=params,
    )
