"""read_table: the documented long format, the JSON mapping, and errors that name file, line, field."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.ingest_table import PEEK_ROWS, load_mapping, peek_table, read_table
from engine.errors import InputError

REPO = Path(__file__).resolve().parents[3]
LLMAPP = REPO / ".." / "shared" / "data" / "llmapp_sample"
LLMAPP_MAPPING = REPO / "assets" / "mappings" / "llmapp.json"

CELLS = "cell_id,lat,lon,Shops,Schools\n9,31.2,121.4,3,0\n10,31.3,121.5,0,2\n3,,,1,1\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def records_csv(tmp_path: Path, rows: list[str], header: str = "entity_id,timestamp,cell_id,service,bytes") -> Path:
    return write(tmp_path / "records.csv", "\n".join([header, *rows]) + "\n")


def read(tmp_path: Path, rows: list[str], cells: str = CELLS, mapping: dict | None = None, **options):
    records = records_csv(tmp_path, rows)
    cells_path = write(tmp_path / "cells.csv", cells)
    mapping_path = write(tmp_path / "mapping.json", json.dumps(mapping)) if mapping is not None else None
    return read_table(records=records, cells=cells_path, mapping=mapping_path, **options)


def error_of(tmp_path: Path, rows: list[str], **kwargs) -> InputError:
    with pytest.raises(InputError) as caught:
        read(tmp_path, rows, **kwargs)
    return caught.value


def traffic(content) -> list[tuple]:
    return sorted(
        (content.entity_keys[e], int(h), content.services[s], int(b))
        for e, h, s, b in zip(
            content.traffic_entity, content.traffic_hour, content.traffic_service, content.traffic_bytes, strict=True
        )
    )


def locations(content) -> dict[tuple[str, int], str]:
    return {
        (content.entity_keys[e], int(h)): content.cell_keys[c]
        for e, h, c in zip(content.location_entity, content.location_hour, content.location_cell, strict=True)
    }


# --- the real llmapp sample with the shipped mapping -----------------------------------------------


def test_llmapp_sample_ingests_with_the_shipped_mapping():
    if not (LLMAPP / "data_sample.csv").is_file():
        pytest.skip("the llmapp sample (../shared/data/llmapp_sample) is not present")
    content = read_table(records=LLMAPP / "data_sample.csv", cells=LLMAPP / "location.csv", mapping=LLMAPP_MAPPING)
    raw = pd.read_csv(LLMAPP / "data_sample.csv")
    categories = pd.read_csv(LLMAPP / "category.csv")
    assert content.entity_keys == ["4", "5", "6", "7", "8", "9"]
    assert (
        len(content.cell_keys) == 12_576 and np.isfinite(content.cell_lat).all() and np.isfinite(content.cell_lon).all()
    )
    assert len(content.poi_categories) == 14 and content.poi_categories[0] == "Transportation Facilities"
    assert content.services == categories.sort_values("app_type_id").en.tolist()
    assert content.timezone == "Asia/Shanghai" and content.time_origin == datetime(2016, 4, 20) and content.hours == 24
    assert int(content.traffic_bytes.sum()) == int(raw.traffic.sum())
    # one spot check of the hourly sum, by hand from the raw rows
    user4_8h = raw[(raw.user_id == 4) & (raw.time // 10_000 == 2016042008)]
    for category, total in user4_8h.groupby("app_cate_id").traffic.sum().items():
        assert ("4", 8, content.services[category - 1], int(total)) in traffic(content)
    assert content.name == "data_sample" and content.kind == "table"


def test_shipped_mapping_documents_only_known_keys():
    mapping = load_mapping(LLMAPP_MAPPING)
    assert mapping.timestamp_format == "digits" and mapping.poi_prefix == "poi_"
    assert mapping.service_labels["1"] == "Utilities" and mapping.service_labels["20"] == "Sports"


# --- aggregation -----------------------------------------------------------------------------------


def test_raw_events_and_hourly_totals_are_summed_per_entity_hour_service(tmp_path):
    content = read(
        tmp_path,
        [
            "u1,2016-04-20T08:05:00,9,video,100",
            "u1,2016-04-20T08:59:59,9,video,50",
            "u1,2016-04-20T08:00:00,9,video,1000",  # an already-hourly total, same hour
            "u1,2016-04-20T09:00:00,9,maps,7",
            "u2,2016-04-20T08:30:00,10,video,0",  # zero bytes: no traffic row
        ],
    )
    assert traffic(content) == [("u1", 8, "video", 1150), ("u1", 9, "maps", 7)]
    assert content.entity_keys == ["u1", "u2"]
    assert content.services == ["maps", "video"]
    assert locations(content)[("u2", 8)] == "10"


def test_modal_cell_ties_go_to_the_numerically_smallest_id(tmp_path):
    content = read(
        tmp_path,
        [
            "1,2016-04-20 08:00,10,s,1",
            "1,2016-04-20 08:01,10,s,1",
            "1,2016-04-20 08:02,9,s,1",
            "1,2016-04-20 08:03,9,s,1",
            "1,2016-04-20 08:04,3,s,1",
            "1,2016-04-20 09:00,10,s,1",
            "1,2016-04-20 09:01,10,s,1",
            "1,2016-04-20 09:02,9,s,1",
        ],
    )
    assert locations(content) == {("1", 8): "9", ("1", 9): "10"}
    assert content.cell_keys == ["3", "9", "10"]


def test_time_origin_is_local_midnight_of_the_earliest_day_and_hours_are_whole_days(tmp_path):
    content = read(tmp_path, ["1,2016-04-21T10:00:00,9,s,1", "1,2016-04-20T23:10:00,9,s,1"], timezone="Asia/Shanghai")
    assert content.time_origin == datetime(2016, 4, 20) and content.hours == 48
    assert [h for _, h, _, _ in traffic(content)] == [23, 34]


def test_aware_timestamps_are_converted_to_the_data_sets_time_zone(tmp_path):
    content = read(
        tmp_path,
        [
            "1,2016-04-20T00:30:00Z,9,s,1",  # 08:30 in Shanghai
            "1,2016-04-20T10:15:00+08:00,9,s,2",
            "1,2016-04-20 11:00,9,s,4",  # naive: already local
        ],
        timezone="Asia/Shanghai",
    )
    assert [(h, b) for _, h, _, b in traffic(content)] == [(8, 1), (10, 2), (11, 4)]
    assert content.timezone == "Asia/Shanghai"


def test_digit_timestamps_are_recognised_without_a_mapping(tmp_path):
    content = read(tmp_path, ["1,20160420081319,9,s,5"])
    assert content.time_origin == datetime(2016, 4, 20) and traffic(content) == [("1", 8, "s", 5)]
    assert content.timezone == "UTC"


def test_unix_seconds_with_the_mapping_option(tmp_path):
    content = read(tmp_path, ["1,1461111199,9,s,5"], mapping={"timestamp_format": "unix", "timezone": "Asia/Shanghai"})
    # 1461111199 = 2016-04-20 00:13:19 UTC = 08:13:19 in Shanghai
    assert content.time_origin == datetime(2016, 4, 20) and traffic(content) == [("1", 8, "s", 5)]


def test_mapping_renames_columns_labels_services_and_orders_them(tmp_path):
    records = records_csv(
        tmp_path, ["7,20160420081319,b1,2,100", "7,20160420081320,b1,1,5"], header="uid,time,loc,cat,traffic,extra"
    )
    cells = write(tmp_path / "cells.csv", "base,latitude,longitude,code,poi_Food,poi_Parks\nb1,31,121,X1,4,5\n")
    mapping = write(
        tmp_path / "m.json",
        json.dumps(
            {
                "records": {
                    "entity_id": "uid",
                    "timestamp": "time",
                    "cell_id": "loc",
                    "service": "cat",
                    "bytes": "traffic",
                },
                "cells": {"cell_id": "base", "lat": "latitude", "lon": "longitude"},
                "cells_drop": ["code"],
                "poi_prefix": "poi_",
                "poi_names": {"Parks": "Green space"},
                "service_labels": {"1": "Maps", "2": "Games"},
                "services": ["Games", "Maps", "Music"],
            }
        ),
    )
    content = read_table(records=records, cells=cells, mapping=mapping, name="renamed")
    assert content.services == ["Games", "Maps", "Music"]
    assert content.poi_categories == ["Food", "Green space"] and content.cell_poi.tolist() == [[4, 5]]
    assert traffic(content) == [("7", 8, "Games", 100), ("7", 8, "Maps", 5)]
    assert content.name == "renamed"


def test_numeric_service_labels_sort_numerically_without_a_services_list(tmp_path):
    content = read(tmp_path, ["1,20160420081319,9,10,1", "1,20160420081319,9,9,1", "1,20160420081319,9,2,1"])
    assert content.services == ["2", "9", "10"]


def test_entity_kind_cell_makes_each_entity_its_own_location(tmp_path):
    content = read(tmp_path, ["10,2016-04-20 08:00,10,s,5", "3,2016-04-20 09:00,3,s,6"], entity_kind="cell")
    assert content.entity_kind == "cell" and content.entity_keys == ["3", "10"]
    assert [content.cell_keys[c] for c in content.entity_cell] == ["3", "10"]
    assert locations(content) == {("3", 9): "3", ("10", 8): "10"}


def test_entity_kind_cell_needs_no_cell_column(tmp_path):
    records = records_csv(tmp_path, ["10,2016-04-20 08:00,s,5"], header="entity_id,timestamp,service,bytes")
    content = read_table(records=records, cells=write(tmp_path / "cells.csv", CELLS), entity_kind="cell")
    assert locations(content) == {("10", 8): "10"}


def test_cells_with_empty_coordinates_are_kept_without_a_position(tmp_path):
    content = read(tmp_path, ["1,20160420081319,9,s,5"])
    assert content.cell_keys == ["3", "9", "10"]
    assert np.isnan(content.cell_lat[0]) and content.cell_lat[1] == 31.2
    assert content.poi_categories == ["Shops", "Schools"] and content.cell_poi.tolist() == [[1, 1], [3, 0], [0, 2]]


def test_parquet_files_give_the_same_content_as_csv(tmp_path):
    rows = ["1,2016-04-20T08:05:00,9,video,100", "2,2016-04-20T09:05:00,10,maps,7"]
    from_csv = read(tmp_path, rows)
    pd.read_csv(tmp_path / "records.csv").to_parquet(tmp_path / "records.parquet")
    pd.read_csv(tmp_path / "cells.csv").to_parquet(tmp_path / "cells.parquet")
    from_parquet = read_table(records=tmp_path / "records.parquet", cells=tmp_path / "cells.parquet")
    assert traffic(from_parquet) == traffic(from_csv) and locations(from_parquet) == locations(from_csv)
    assert from_parquet.cell_keys == from_csv.cell_keys


# --- errors: file, line, field ---------------------------------------------------------------------

GOOD = "1,2016-04-20T08:05:00,9,s,100"


@pytest.mark.parametrize(
    ("bad_row", "field", "says"),
    [
        ("1,2016-04-31T08:05:00,9,s,100", "timestamp", "'2016-04-31T08:05:00'"),
        ("1,yesterday,9,s,100", "timestamp", "ISO 8601"),
        ("1,2016-04-20T08:05:00,9,s,-3", "bytes", ">= 0"),
        ("1,2016-04-20T08:05:00,9,s,lots", "bytes", "'lots'"),
        ("1,2016-04-20T08:05:00,9,s,2.5", "bytes", "whole number"),
        ("1,2016-04-20T08:05:00,77,s,100", "cell_id", "unknown cell '77'"),
        ("1,2016-04-20T08:05:00,,s,100", "cell_id", "empty"),
        (",2016-04-20T08:05:00,9,s,100", "entity_id", "empty"),
        ("1,2016-04-20T08:05:00,9,,100", "service", "empty"),
        # issue 20: one typo in the year made a data set of 70 million hours
        ("1,2099-04-20T08:05:00,9,s,100", "timestamp", "at most 1,830 (five years)"),
        ("1,9999-04-20T08:05:00,9,s,100", "timestamp", "from 1970 to 2099, found '9999-04-20T08:05:00'"),
        ("1,-1,9,s,100", "timestamp", "from 1970 to 2099, found '-1'"),
    ],
)
def test_a_bad_record_is_reported_with_its_line_and_column(tmp_path, bad_row, field, says):
    error = error_of(tmp_path, [GOOD, GOOD, bad_row, GOOD])
    assert (error.file, error.line, error.field) == (str(tmp_path / "records.csv"), 4, field)
    assert says in str(error)


def test_a_mapping_nested_thousands_deep_is_an_error_not_a_recursion_traceback(tmp_path):
    """Issue 20: a deeply nested mapping JSON gave a RecursionError traceback."""
    from engine.data.ingest_table import load_mapping

    path = write(tmp_path / "deep.json", '{"records": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError, match="nested too deeply") as caught:
        load_mapping(path)
    assert caught.value.file == str(path)


def test_bytes_that_would_overflow_their_sums_are_refused(tmp_path):
    """Issue 20: byte values whose sums overflow 64 bits were accepted and stored wrong."""
    big = 2**61  # each below the per-record limit (2**62), together beyond what the sums can hold
    error = error_of(tmp_path, [GOOD, f"1,2016-04-20T08:05:00,9,s,{big}", f"2,2016-04-20T09:05:00,9,s,{big}"])
    assert error.field == "bytes" and "add up to" in str(error)


def test_line_numbers_count_blank_lines_and_multi_line_quoted_fields(tmp_path):
    records = write(
        tmp_path / "records.csv",
        (
            "entity_id,timestamp,cell_id,service,bytes\n"
            f"{GOOD}\n\n"
            '1,2016-04-20T08:05:00,9,"two\nlines",1\n'
            "1,2016-04-20T08:05:00,9,s,-1\n"
        ),
    )
    with pytest.raises(InputError) as caught:
        read_table(records=records, cells=write(tmp_path / "cells.csv", CELLS))
    assert (caught.value.line, caught.value.field) == (6, "bytes")


def test_missing_column_is_named_with_the_mapping_hint(tmp_path):
    records = records_csv(tmp_path, ["1,2016-04-20T08:05:00,9,s"], header="entity_id,timestamp,cell_id,service")
    with pytest.raises(InputError) as caught:
        read_table(records=records, cells=write(tmp_path / "cells.csv", CELLS))
    assert (caught.value.line, caught.value.field) == (1, "bytes")
    assert '"records": {"bytes": "<column>"}' in str(caught.value)


def test_service_outside_the_mapping_services_is_an_error(tmp_path):
    error = error_of(tmp_path, [GOOD, "1,2016-04-20T08:05:00,9,radio,1"], mapping={"services": ["s"]})
    assert (error.line, error.field) == (3, "service") and "'radio'" in str(error)


def test_service_code_without_a_label_is_an_error(tmp_path):
    error = error_of(tmp_path, [GOOD], mapping={"service_labels": {"1": "Utilities"}})
    assert (error.line, error.field) == (2, "service") and "no label" in str(error)


def test_entity_kind_cell_rejects_entities_that_are_not_cells(tmp_path):
    error = error_of(tmp_path, ["9,2016-04-20 08:00,9,s,1", "u7,2016-04-20 08:00,9,s,1"], entity_kind="cell")
    assert (error.line, error.field) == (3, "entity_id")


def test_empty_records_file_and_header_only_file_are_errors(tmp_path):
    cells = write(tmp_path / "cells.csv", CELLS)
    with pytest.raises(InputError) as caught:
        read_table(records=write(tmp_path / "r.csv", ""), cells=cells)
    assert caught.value.line == 1 and "empty" in str(caught.value)
    with pytest.raises(InputError, match="no data rows"):
        read_table(records=write(tmp_path / "r.csv", "entity_id,timestamp,cell_id,service,bytes\n"), cells=cells)


def test_unknown_extension_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"\.csv or \.parquet"):
        read_table(records=write(tmp_path / "r.txt", "x"), cells=write(tmp_path / "cells.csv", CELLS))


@pytest.mark.parametrize(
    ("cells", "line", "field", "says"),
    [
        (
            "cell_id,lat,lon,Shops\n9,31,121,1\n10,31,121,2\n9,31,121,3\n",
            4,
            "cell_id",
            "duplicate cell id '9' (first on line 2)",
        ),
        ("cell_id,lat,lon,Shops\n9,31,121,-1\n", 2, "Shops", "from 0 to 1,000,000"),
        ("cell_id,lat,lon,Shops\n9,31,121,1\n10,31,121,99999999\n", 3, "Shops", "from 0 to 1,000,000"),
        ("cell_id,lat,lon,Shops\n9,31,121,1e30\n", 2, "Shops", "found '1e30'"),
        ("cell_id,lat,lon,Shops\n9,31,121,\n", 2, "Shops", "POI count"),
        ("cell_id,lat,lon,Code\n9,31,121,A7\n", 2, "Code", "cells_drop"),
        ("cell_id,lat,lon,Shops\n9,91,121,1\n", 2, "lat", "[-90, 90]"),
        ("cell_id,lat,lon,Shops\n9,31,east,1\n", 2, "lon", "'east'"),
        ("cell_id,lat,lon,Shops\n9,31,,1\n", 2, "lat", "both"),
        ("cell_id,latitude,lon,Shops\n9,31,121,1\n", 1, "lat", "missing column 'lat'"),
        ("cell_id,lat,lon,Shops,Shops\n9,31,121,1,1\n", 1, "Shops", "twice"),
    ],
)
def test_bad_cells_are_reported_with_line_and_column(tmp_path, cells, line, field, says):
    error = error_of(tmp_path, [GOOD], cells=cells)
    assert (error.file, error.line, error.field) == (str(tmp_path / "cells.csv"), line, field)
    assert says in str(error)


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        (
            '{\n  "records": {"bytes": "traffic"},\n  "poi_prefix": "poi_"\n  "timezone": "UTC"\n}',
            4,
            None,
            "not valid JSON",
        ),
        ('{\n  "records": {},\n  "colour": "red"\n}', 3, "colour", "unknown key"),
        ('{"records": {"byte": "traffic"}}', 1, "records.byte", "unknown column role"),
        ('{"timestamp_format": "excel"}', 1, "timestamp_format", "iso, digits, unix"),
        ('{"timezone": "Mars/Olympus"}', 1, "timezone", "unknown time zone"),
        ('{"services": ["a", "a"]}', 1, "services", "listed twice"),
        ('{"poi_prefix": "a",\n "poi_prefix": "b"}', 2, "poi_prefix", "twice"),
        ("[1, 2]", 1, None, "JSON object"),
    ],
)
def test_bad_mapping_is_reported_with_its_file_line_and_key(tmp_path, text, line, field, says):
    path = write(tmp_path / "mapping.json", text)
    with pytest.raises(InputError) as caught:
        load_mapping(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), line, field)
    assert says in str(caught.value)


def test_unknown_timezone_option_is_an_error(tmp_path):
    error = error_of(tmp_path, [GOOD], timezone="Nowhere/Special")
    assert error.field == "timezone"


# --- the peek at submission (issue 19) -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_the_peek_finds_a_bad_first_row_with_the_full_reads_message_but_not_one_beyond_its_rows(tmp_path, suffix):
    good = [f"u1,2016-04-20T{h:02d}:00:00,9,video,{h}" for h in range(24)] * (PEEK_ROWS // 24 + 1)
    cells = write(tmp_path / "cells.csv", CELLS)

    def files(rows: list[str]) -> Path:
        path = records_csv(tmp_path, rows)
        if suffix == "parquet":
            pd.read_csv(path, dtype=str).to_parquet(tmp_path / "records.parquet")
            return tmp_path / "records.parquet"
        return path

    early = files(["u1,2016-04-20T00:00:00,9,video,7", "u1,yesterday,9,video,7", *good])
    with pytest.raises(InputError) as peeked:
        peek_table(early, cells)
    with pytest.raises(InputError) as full:
        read_table(early, cells)
    assert str(peeked.value) == str(full.value) and peeked.value.field == "timestamp"
    assert peeked.value.line == (3 if suffix == "csv" else 2)

    late = files([*good, "u1,2016-04-21T00:00:00,12345,video,7"])  # an unknown cell past the peeked rows
    assert peek_table(late, cells) is None
    with pytest.raises(InputError, match="unknown cell '12345'"):
        read_table(late, cells)
    with pytest.raises(InputError, match="missing column 'bytes'"):
        peek_table(write(tmp_path / "other.csv", "entity_id,timestamp,cell_id,service\nu1,2016-04-20,9,x\n"), cells)
    with pytest.raises(InputError, match="no such records file"):
        peek_table(tmp_path / "absent.csv", cells)
