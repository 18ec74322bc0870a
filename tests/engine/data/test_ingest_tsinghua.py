"""read_tsinghua: the release's metadata formats, hourly aggregation, and errors that name file, line, field."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.ingest_tsinghua import (
    CATEGORIES,
    PAPER_SERVICES,
    peek_tsinghua,
    read_app2category,
    read_base_poi,
    read_categories,
    read_tsinghua,
    write_synthetic_trace,
)
from engine.errors import InputError

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "tsinghua"
POI_NAMES = ["Residence", "Shopping", "Other"]


def real_fixtures() -> Path:
    if not (SHARED / "base_poi.txt").is_file():
        pytest.skip("the real Tsinghua metadata (../shared/data/tsinghua) is not present")
    return SHARED


def write_crlf(path: Path, lines: list[str]) -> Path:
    """Like the release: CRLF line ends, no newline after the last line."""
    path.write_bytes("\r\n".join(lines).encode())
    return path


def write_metadata(folder: Path, base_ids=range(20)) -> dict[str, Path]:
    """Small metadata files with the release's quirks: quoted names, a typo, stray lines, CRLF."""
    quirky = {
        4: "Social\\_Networking",
        9: "Lifestyle ",
        11: "Health&Fitness ",
        12: "infant&mom",
        14: "Weath1er",
        19: "sports",
    }
    category_lines = [f"{i}\t'{quirky.get(i, name)}'" for i, name in enumerate(CATEGORIES)]
    category_lines.insert(5, "'wechat','linkedin','weibo'")
    category_lines.insert(12, "'meituan',''?")
    app_lines = [f"{app}\t{(app - 1) % 20}" for app in range(1, 41)]  # app a -> category (a-1) % 20
    poi_lines = ["BaseID\t" + "\t".join(POI_NAMES)] + [f"{b}\t{b}\t{b % 3}\t0" for b in base_ids]
    return {
        "categories": write_crlf(folder / "Categorys.txt", category_lines),
        "app2category": write_crlf(folder / "App2Category.txt", app_lines),
        "poi": write_crlf(folder / "base_poi.txt", poi_lines),
    }


def write_trace(path: Path, rows: list[tuple], *, crlf: bool = False) -> Path:
    end = "\r\n" if crlf else "\n"
    path.write_text(end.join(" ".join(str(v) for v in row) for row in rows) + end)
    return path


def read(tmp_path: Path, rows: list[tuple], **options):
    meta = write_metadata(tmp_path)
    trace = write_trace(tmp_path / "trace.txt", rows)
    return read_tsinghua(trace=trace, **meta, **options)


def error_of(tmp_path: Path, rows: list[tuple], **options) -> InputError:
    with pytest.raises(InputError) as caught:
        read(tmp_path, rows, **options)
    return caught.value


# --- the real metadata files -----------------------------------------------------------------------


def test_real_categories_file_gives_the_twenty_canonical_names():
    assert read_categories(real_fixtures() / "Categorys.txt") == dict(enumerate(CATEGORIES))


def test_real_app2category_maps_apps_1_to_2000_onto_categories_0_to_19():
    apps, categories = read_app2category(real_fixtures() / "App2Category.txt")
    assert apps.tolist() == list(range(1, 2001))
    assert set(categories.tolist()) == set(range(20))


def test_real_base_poi_has_9851_stations_in_17_named_categories():
    ids, poi, names = read_base_poi(real_fixtures() / "base_poi.txt")
    assert ids.tolist() == list(range(9851))
    assert names == [
        "Medical care",
        "Hotel",
        "Business affairs",
        "Life service",
        "Transportation hub",
        "Culture",
        "Sports",
        "Residence",
        "Entertainment and leisure",
        "Scenic spot",
        "Government",
        "Factory",
        "Shopping",
        "Restaurant",
        "Education",
        "Landmark",
        "Other",
    ]
    assert poi.shape == (9851, 17)
    assert int((poi.sum(axis=1) == 0).sum()) == 445  # numbers from ../shared/data/README.md
    assert int(poi.sum(axis=1).max()) == 8189 and round(float(poi.sum(axis=1).mean())) == 55


def test_real_metadata_with_a_generated_trace_keeps_the_papers_ten_services_and_every_byte(tmp_path):
    folder = real_fixtures()
    trace = write_synthetic_trace(tmp_path / "trace.txt", users=12, records=3000, seed=3)
    content = read_tsinghua(
        trace=trace,
        app2category=folder / "App2Category.txt",
        categories=folder / "Categorys.txt",
        poi=folder / "base_poi.txt",
    )
    frame = pd.read_csv(trace, sep=" ", header=None, names=["u", "t", "b", "a", "n"])
    assert content.services == list(PAPER_SERVICES)
    assert len(content.cell_keys) == 9851 and content.cell_names[5] == "Base station 5"
    assert np.isnan(content.cell_lat).all()
    assert content.entity_keys == [str(u) for u in sorted(frame.u.unique())]
    assert content.params["records"] == 3000
    kept = int(content.traffic_bytes.sum())
    assert kept + content.params["bytes_dropped"] == int(frame.n.sum())
    assert sum(content.params["records_dropped_by_category"].values()) == content.params["records_dropped"]


# --- what the data set becomes ---------------------------------------------------------------------


def test_hours_count_from_local_midnight_of_the_earliest_day_and_cover_whole_days(tmp_path):
    rows = [(5, 20160421093000, 1, 1, 500), (5, 20160420235959, 1, 1, 100), (5, 20160422000000, 2, 1, 7)]
    content = read(tmp_path, rows)
    assert content.time_origin == datetime(2016, 4, 20)
    assert content.timezone == "Asia/Shanghai"
    assert content.hours == 72
    got = sorted(zip(content.traffic_hour.tolist(), content.traffic_bytes.tolist(), strict=True))
    assert got == [(23, 100), (33, 500), (48, 7)]


def test_bytes_are_summed_per_user_hour_and_service(tmp_path):
    # apps 1 and 21 are both category 0 (Utilities); app 2 is Games
    rows = [
        (1, 20160420080000, 1, 1, 100),
        (1, 20160420083000, 1, 21, 50),
        (1, 20160420085959, 1, 2, 7),
        (1, 20160420090000, 1, 1, 1000),
    ]
    content = read(tmp_path, rows)
    got = sorted(
        zip(
            content.traffic_hour.tolist(), content.traffic_service.tolist(), content.traffic_bytes.tolist(), strict=True
        )
    )
    assert got == [(8, 0, 150), (8, 1, 7), (9, 0, 1000)]


def test_location_is_the_modal_base_station_and_ties_go_to_the_smallest_id(tmp_path):
    rows = [
        # hour 8: stations 10 and 9 twice each, 3 once -> tie between 9 and 10 -> 9 (numerically smallest)
        (1, 20160420080000, 10, 1, 1),
        (1, 20160420080100, 10, 1, 1),
        (1, 20160420080200, 3, 1, 1),
        (1, 20160420080300, 9, 1, 1),
        (1, 20160420080400, 9, 1, 1),
        # hour 9: station 3 three times, 9 once -> 3
        (1, 20160420090000, 9, 1, 1),
        (1, 20160420090100, 3, 1, 1),
        (1, 20160420090200, 3, 1, 1),
        (1, 20160420090300, 3, 1, 1),
        # hour 10: only a Shopping app (category 5, not kept) -> no traffic, but the location is known
        (1, 20160420100000, 4, 6, 99),
    ]
    content = read(tmp_path, rows)
    located = {
        h: content.cell_keys[c]
        for h, c in zip(content.location_hour.tolist(), content.location_cell.tolist(), strict=True)
    }
    assert located == {8: "9", 9: "3", 10: "4"}
    assert 10 not in content.traffic_hour.tolist()
    assert content.params["records_dropped"] == 1
    assert content.params["records_dropped_by_category"] == {"Shopping": 1}


def test_all_services_keeps_the_twenty_categories_in_id_order(tmp_path):
    content = read(tmp_path, [(1, 20160420080000, 1, 6, 99)], all_services=True)
    assert content.services == list(CATEGORIES)
    assert content.traffic_service.tolist() == [5]  # Shopping
    assert content.params["records_dropped"] == 0


def test_users_are_sorted_numerically_and_keyed_as_text(tmp_path):
    rows = [(10, 20160420080000, 1, 1, 1), (2, 20160420080000, 1, 1, 1), (100, 20160420080000, 1, 1, 1)]
    content = read(tmp_path, rows)
    assert content.entity_keys == ["2", "10", "100"]
    assert content.entity_kind == "user" and content.kind == "tsinghua"


def test_crlf_trace_and_blank_lines_are_read(tmp_path):
    meta = write_metadata(tmp_path)
    trace = tmp_path / "trace.txt"
    trace.write_bytes(b"1 20160420080000 1 1 10\r\n\r\n1 20160420080000 1 1 5\r\n")
    content = read_tsinghua(trace=trace, **meta)
    assert content.traffic_bytes.tolist() == [15]


def test_coordinates_file_places_listed_stations_and_leaves_the_others_unknown(tmp_path):
    meta = write_metadata(tmp_path)
    trace = write_trace(tmp_path / "trace.txt", [(1, 20160420080000, 1, 1, 10)])
    coords = tmp_path / "coords.csv"
    coords.write_text("cell_id,lat,lon\n3,31.2,121.4\n10,31.25,121.5\n")
    content = read_tsinghua(trace=trace, coords=coords, **meta)
    assert content.cell_lat[3] == 31.2 and content.cell_lon[10] == 121.5
    assert np.isnan(content.cell_lat[0])
    assert content.params["base_stations_with_coordinates"] == 2


def test_progress_gets_messages_between_stages(tmp_path):
    messages: list[str] = []
    read(tmp_path, [(1, 20160420080000, 1, 1, 10)], progress=messages.append)
    assert len(messages) >= 3 and all(isinstance(m, str) and m for m in messages)


# --- errors: file, line, field ---------------------------------------------------------------------

GOOD = (1, 20160420080000, 1, 1, 10)


@pytest.mark.parametrize(
    ("bad_row", "field", "says"),
    [
        ((1, 20160431080000, 1, 1, 10), "timestamp", "YYYYMMDDhhmmss"),  # 31 April
        ((1, 20160420250000, 1, 1, 10), "timestamp", "20160420250000"),  # hour 25
        ((1, 201604200800, 1, 1, 10), "timestamp", "YYYYMMDDhhmmss"),  # 12 digits
        ((1, 20160420080000, 1, 1, -5), "traffic_bytes", ">= 0"),
        ((1, 20990420080000, 1, 1, 10), "timestamp", "at most 1,830 (five years)"),  # issue 20: a year typo
        ((1, 99990420080000, 1, 1, 10), "timestamp", "from 1970 to 2099, found 99990420080000"),
        ((1, 20160420080000, 1, 1, "12kB"), "traffic_bytes", "'12kB'"),
        ((1, 20160420080000, 1, 1, 1.5), "traffic_bytes", "'1.5'"),
        ((1, 20160420080000, 1, 999, 10), "app_id", "unknown app 999"),
        ((1, 20160420080000, 77, 1, 10), "base_station_id", "unknown base station 77"),
        ((1, "2016-04-20T08:00", 1, 1, 10), "timestamp", "YYYYMMDDhhmmss"),
        ((1, 20160420080000, 1, 1), "traffic_bytes", "expected 5 fields"),
        ((1, 20160420080000, 1, 1, 10, 3), "traffic_bytes", "expected 5 fields"),
        (("u1", 20160420080000, 1, 1, 10), "user_id", "'u1'"),
    ],
)
def test_a_bad_trace_line_is_reported_with_its_line_and_field(tmp_path, bad_row, field, says):
    error = error_of(tmp_path, [GOOD, GOOD, bad_row, GOOD])
    assert (error.file, error.line, error.field) == (str(tmp_path / "trace.txt"), 3, field)
    assert says in str(error)


def test_line_numbers_count_blank_lines_as_physical_lines(tmp_path):
    meta = write_metadata(tmp_path)
    trace = tmp_path / "trace.txt"
    trace.write_text("1 20160420080000 1 1 10\n\n\n1 20160420080000 1 999 10\n")
    with pytest.raises(InputError) as caught:
        read_tsinghua(trace=trace, **meta)
    assert (caught.value.line, caught.value.field) == (4, "app_id")


def test_the_first_bad_line_wins_across_fields(tmp_path):
    error = error_of(tmp_path, [GOOD, (1, 20160420080000, 1, 999, 10), (1, 20160420080000, 1, 1, -1)])
    assert (error.line, error.field) == (2, "app_id")


def test_empty_trace_is_an_error(tmp_path):
    error = error_of(tmp_path, [])
    assert error.line == 1 and "empty" in str(error)


def test_missing_trace_file_is_an_error_naming_it(tmp_path):
    meta = write_metadata(tmp_path)
    with pytest.raises(InputError) as caught:
        read_tsinghua(trace=tmp_path / "nope.txt", **meta)
    assert caught.value.file == str(tmp_path / "nope.txt")


def test_duplicate_base_station_in_the_poi_table_is_an_error(tmp_path):
    meta = write_metadata(tmp_path, base_ids=[0, 1, 2, 1])
    trace = write_trace(tmp_path / "trace.txt", [GOOD])
    with pytest.raises(InputError) as caught:
        read_tsinghua(trace=trace, **meta)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(meta["poi"]), 5, "BaseID")
    assert "first on line 3" in str(caught.value)


def test_a_poi_count_beyond_the_stated_maximum_is_an_error_naming_line_and_category(tmp_path):
    """Issue 19/20: a POI count of 99,999,999 (or 1e30) was accepted without a word."""
    from engine.data.ingest_table import MAX_POI_COUNT

    path = tmp_path / "base_poi.txt"
    path.write_text(f"BaseID\tShops\tParks\n0\t3\t1\n1\t{MAX_POI_COUNT + 1}\t0\n")
    with pytest.raises(InputError) as caught:
        read_base_poi(path)
    assert (caught.value.line, caught.value.field) == (3, "Shops") and "from 0 to 1,000,000" in str(caught.value)
    path.write_text(f"BaseID\tShops\n0\t{MAX_POI_COUNT}\n")
    assert read_base_poi(path)[1].tolist() == [[MAX_POI_COUNT]]  # the maximum itself is fine


@pytest.mark.parametrize(
    ("rows", "line", "field", "says"),
    [
        (["3,31.2,121.4", "3,31.3,121.5"], 3, "cell_id", "duplicate base station 3"),
        (["3,north,121.4"], 2, "lat", "'north'"),
        (["3,95,121.4"], 2, "lat", "[-90, 90]"),
        (["3,31.2,181"], 2, "lon", "[-180, 180]"),
        (["555,31.2,121.4"], 2, "cell_id", "unknown base station"),
    ],
)
def test_bad_coordinates_are_reported_with_line_and_field(tmp_path, rows, line, field, says):
    meta = write_metadata(tmp_path)
    trace = write_trace(tmp_path / "trace.txt", [GOOD])
    coords = tmp_path / "coords.csv"
    coords.write_text("\n".join(["cell_id,lat,lon", *rows]) + "\n")
    with pytest.raises(InputError) as caught:
        read_tsinghua(trace=trace, coords=coords, **meta)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(coords), line, field)
    assert says in str(caught.value)


def test_categories_file_must_hold_ids_0_to_19(tmp_path):
    path = write_crlf(tmp_path / "Categorys.txt", [f"{i}\t'{n}'" for i, n in enumerate(CATEGORIES)] + ["20\t'Extra'"])
    with pytest.raises(InputError) as caught:
        read_categories(path)
    assert (caught.value.line, caught.value.field) == (21, "category_id")
    path = write_crlf(tmp_path / "Categorys.txt", [f"{i}\t'{n}'" for i, n in enumerate(CATEGORIES[:19])])
    with pytest.raises(InputError, match="missing 19"):
        read_categories(path)


def test_categories_file_with_other_names_is_rejected(tmp_path):
    names = list(CATEGORIES)
    names[3] = "Cooking"
    path = write_crlf(tmp_path / "Categorys.txt", [f"{i}\t'{n}'" for i, n in enumerate(names)])
    with pytest.raises(InputError) as caught:
        read_categories(path)
    assert (caught.value.line, caught.value.field) == (4, "name")


def test_app2category_with_an_unknown_category_or_a_repeated_app_is_rejected(tmp_path):
    path = write_crlf(tmp_path / "App2Category.txt", ["1\t0", "2\t20"])
    with pytest.raises(InputError) as caught:
        read_app2category(path)
    assert (caught.value.line, caught.value.field) == (2, "category_id")
    path = write_crlf(tmp_path / "App2Category.txt", ["1\t0", "2\t1", "1\t3"])
    with pytest.raises(InputError, match="first on line 1") as caught:
        read_app2category(path)
    assert (caught.value.line, caught.value.field) == (3, "app_id")


# --- the format generator --------------------------------------------------------------------------


def test_synthetic_trace_has_the_exact_format_and_realistic_skew(tmp_path):
    path = write_synthetic_trace(tmp_path / "t.txt", users=50, records=20_000, seed=1)
    lines = path.read_text().splitlines()
    assert len(lines) == 20_000
    assert all(len(line.split(" ")) == 5 for line in lines[:100])
    frame = pd.read_csv(path, sep=" ", header=None, names=["u", "t", "b", "a", "n"])
    assert frame.u.nunique() == 50
    assert frame.t.between(20160420000000, 20160426235959).all()
    assert frame.b.between(0, 9850).all() and frame.a.between(1, 2000).all()
    assert frame.n.min() >= 112 and 1500 <= frame.n.median() <= 3000
    assert frame.n.mean() > 3 * frame.n.median()  # heavy tail
    assert 0.15 <= frame.u.value_counts().iloc[0] / len(frame) <= 0.35  # one very heavy user
    assert (frame.groupby("u").t.apply(lambda t: t.is_monotonic_increasing)).all()
    again = write_synthetic_trace(tmp_path / "t2.txt", users=50, records=20_000, seed=1)
    assert again.read_bytes() == path.read_bytes()


def test_synthetic_trace_modal_cells_match_a_plain_python_count(tmp_path):
    meta = write_metadata(tmp_path, base_ids=range(30))
    trace = write_synthetic_trace(tmp_path / "t.txt", users=5, records=2000, n_apps=40, n_cells=30, seed=2)
    content = read_tsinghua(trace=trace, **meta)
    counts: dict[tuple[str, int], Counter] = {}
    for line in trace.read_text().splitlines():
        user, stamp, base, _, _ = line.split(" ")
        hour = (int(stamp[6:8]) - 20) * 24 + int(stamp[8:10])
        counts.setdefault((user, hour), Counter())[int(base)] += 1
    expected = {
        key: min(c for c, k in counter.items() if k == max(counter.values())) for key, counter in counts.items()
    }
    got = {
        (content.entity_keys[e], h): int(content.cell_keys[c])
        for e, h, c in zip(content.location_entity, content.location_hour, content.location_cell, strict=True)
    }
    assert got == expected


def test_an_upload_is_peeked_when_submitted_and_refused_with_the_files_own_line_and_role(tmp_path):
    """Issue 19: uploads are checked when submitted (metadata whole, the trace's first 200 lines), so that a
    wrong one is refused on its form instead of failing after the queue; a bad line further down is the job's
    to find, with the same message."""
    from db import open_database
    from engine.jobs import enqueue
    from engine.jobs.queue import list_jobs

    meta = write_metadata(tmp_path)
    bad = write_trace(tmp_path / "trace.txt", [GOOD] * 4 + [(1, 20160420080000, 1, 999, 10)] + [GOOD] * 5)
    with pytest.raises(InputError) as caught:
        peek_tsinghua(bad, **meta)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(bad), 5, "app_id")
    late = write_trace(tmp_path / "late.txt", [GOOD] * 250 + [(1, 20160420080000, 1, 999, 10)])
    peek_tsinghua(late, **meta)  # line 251: beyond the peek, the job finds it
    with pytest.raises(InputError, match=r"late\.txt:251: field .app_id."):
        read_tsinghua(trace=late, **meta)

    database = open_database(f"sqlite:///{tmp_path / 'q.sqlite'}")
    params = {"trace": str(bad), **{k: str(v) for k, v in meta.items()}, "names": {str(bad): "my_trace.txt"}}
    with pytest.raises(InputError) as refused:
        enqueue(database, "ingest.tsinghua", params)
    assert refused.value.field == "trace" and refused.value.line == 5 and refused.value.file == "my_trace.txt"
    assert "unknown app 999" in str(refused.value)
    assert list_jobs(database) == []  # nothing queued
    database.dispose()
