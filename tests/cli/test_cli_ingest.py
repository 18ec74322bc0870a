"""`lsdm ingest tsinghua|table` end to end: real files in, a real SQLite database out.

Every bad input exits with status 2, names the file, line and field, and leaves the database exactly as
it was - under the name of an existing data set as well as under a new one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from engine.data.ingest_tsinghua import CATEGORIES, PAPER_SERVICES, write_synthetic_trace

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"
LLMAPP_MAPPING = REPO / "assets" / "mappings" / "llmapp.json"
CORE_TABLES = ("datasets", "cells", "entities", "traffic", "locations")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; argparse's own errors (SystemExit) count as exit codes too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(db: Path, sql: str) -> list[tuple]:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def table_snapshot(db: Path) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of every row of each core table."""
    snapshot = {}
    for table in CORE_TABLES:
        rows = sorted(rows_of(db, f"SELECT * FROM {table}"), key=repr)
        snapshot[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return snapshot


def file_snapshot(db: Path) -> dict[str, str]:
    """Checksums of the database file and its write-ahead log (the bytes on disk)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (db, db.with_name(db.name + "-wal")) if p.exists()
    }


# --- small input files -----------------------------------------------------------------------------


def write_crlf(path: Path, lines: list[str]) -> Path:
    path.write_bytes("\r\n".join(lines).encode())  # like the release: CRLF, no final newline
    return path


def write_tsinghua_metadata(folder: Path) -> dict[str, Path]:
    names = {4: "Social\\_Networking", 14: "Weath1er", 9: "Lifestyle "}
    categories = [f"{i}\t'{names.get(i, n)}'" for i, n in enumerate(CATEGORIES)]
    categories.insert(5, "'wechat','linkedin','weibo'")
    return {
        "categories": write_crlf(folder / "Categorys.txt", categories),
        "app2category": write_crlf(folder / "App2Category.txt", [f"{a}\t{(a - 1) % 20}" for a in range(1, 41)]),
        "poi": write_crlf(folder / "base_poi.txt", ["BaseID\tResidence\tOther"] + [f"{b}\t{b}\t1" for b in range(20)]),
    }


# user, timestamp, base station, app (app a is category (a-1) % 20), bytes
TRACE = [
    (3, 20160420080000, 10, 1, 100),
    (3, 20160420080500, 10, 2, 50),
    (3, 20160420081000, 9, 1, 25),
    (3, 20160420081500, 9, 1, 5),
    (3, 20160420083000, 4, 6, 999),  # 10 and 9 tie at 2 -> 9; app 6 is Shopping
    (3, 20160421120000, 4, 9, 70),
    (12, 20160420230000, 7, 1, 8),
    (12, 20160420230100, 7, 16, 9),
]


def write_trace(path: Path, rows: list[tuple]) -> Path:
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in rows))
    return path


CELLS = "cell_id,lat,lon,Shops,Schools\n1,31.2,121.4,3,0\n2,31.3,121.5,0,2\n"
RECORDS = (
    "entity_id,timestamp,cell_id,service,bytes\nu1,2016-04-20T08:05:00,1,video,100\nu1,2016-04-20T08:55:00,2,maps,7\n"
)


@dataclass
class Workspace:
    folder: Path
    db: Path
    meta: dict[str, Path]
    trace: Path
    records: Path
    cells: Path

    def tsinghua(self, **override: Path) -> list[str]:
        files = {"trace": self.trace, **self.meta, **override}
        argv = ["ingest", "tsinghua", "--db", self.db]
        for option in ("trace", "app2category", "categories", "poi", "coords"):
            if option in files:
                argv += [f"--{option}", files[option]]
        return argv

    def table(self, **override: Path) -> list[str]:
        files = {"records": self.records, "cells": self.cells, **override}
        argv = ["ingest", "table", "--db", self.db, "--records", files["records"], "--cells", files["cells"]]
        return argv + (["--mapping", files["mapping"]] if "mapping" in files else [])


@pytest.fixture
def workspace(tmp_path, capsys) -> Workspace:
    """A database holding one good Tsinghua data set ('tsinghua') and one good table ('table')."""
    space = Workspace(
        folder=tmp_path,
        db=tmp_path / "x.sqlite",
        meta=write_tsinghua_metadata(tmp_path),
        trace=write_trace(tmp_path / "trace.txt", TRACE),
        records=(tmp_path / "records.csv"),
        cells=(tmp_path / "cells.csv"),
    )
    space.records.write_text(RECORDS)
    space.cells.write_text(CELLS)
    assert run(capsys, *space.tsinghua(), "--name", "tsinghua")[0] == 0
    assert run(capsys, *space.table(), "--name", "table")[0] == 0
    gc.collect()  # let the CLI's pooled connections go, so nothing touches the files from here on
    return space


# --- good input ------------------------------------------------------------------------------------


def test_tsinghua_ingest_stores_hourly_bytes_and_modal_cells(workspace, capsys):
    db = workspace.db
    assert rows_of(db, "SELECT name, kind, entity_kind, timezone, hours FROM datasets WHERE name='tsinghua'") == [
        ("tsinghua", "tsinghua", "user", "Asia/Shanghai", 48)
    ]
    traffic = rows_of(
        db,
        """SELECT e.key, t.hour, t.service, t.bytes FROM traffic t JOIN entities e ON e.id = t.entity_id
                             JOIN datasets d ON d.id = e.dataset_id WHERE d.name = 'tsinghua' ORDER BY 1, 2, 3""",
    )
    services = list(PAPER_SERVICES)
    assert traffic == [
        ("12", 23, services.index("Utilities"), 8),  # app 16 is Music
        ("12", 23, services.index("Music"), 9),
        ("3", 8, services.index("Utilities"), 130),
        ("3", 8, services.index("Games"), 50),
        ("3", 36, services.index("Travel"), 70),
    ]
    located = rows_of(
        db,
        """SELECT e.key, l.hour, c.key FROM locations l JOIN entities e ON e.id = l.entity_id
                             JOIN cells c ON c.id = l.cell_id JOIN datasets d ON d.id = e.dataset_id
                             WHERE d.name = 'tsinghua' ORDER BY 1, 2""",
    )
    assert located == [("12", 23, "7"), ("3", 8, "9"), ("3", 36, "4")]
    assert rows_of(
        db, "SELECT COUNT(*) FROM cells c JOIN datasets d ON d.id = c.dataset_id WHERE d.name = 'tsinghua'"
    ) == [(20,)]
    params = json.loads(rows_of(db, "SELECT params FROM datasets WHERE name = 'tsinghua'")[0][0])
    assert params["records"] == 8 and params["records_dropped"] == 1 and params["bytes_dropped"] == 999


def test_tsinghua_real_metadata_and_a_generated_trace_end_to_end(tmp_path, capsys):
    folder = SHARED / "tsinghua"
    if not (folder / "base_poi.txt").is_file():
        pytest.skip("the real Tsinghua metadata (../shared/data/tsinghua) is not present")
    trace = write_synthetic_trace(tmp_path / "App_usage_trace.txt", users=15, records=6000, seed=5, crlf=True)
    db = tmp_path / "x.sqlite"
    code, out, err = run(
        capsys,
        "ingest",
        "tsinghua",
        "--db",
        db,
        "--trace",
        trace,
        "--app2category",
        folder / "App2Category.txt",
        "--categories",
        folder / "Categorys.txt",
        "--poi",
        folder / "base_poi.txt",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["entities"], summary["cells"], summary["hours"]) == (15, 9851, 168)
    assert summary["services"] == list(PAPER_SERVICES) and len(summary["poi_categories"]) == 17

    # The same hourly matrix, computed independently from the raw files with pandas.
    frame = pd.read_csv(trace, sep=" ", header=None, names=["user", "t", "base", "app", "bytes"])
    apps = pd.read_csv(folder / "App2Category.txt", sep="\t", header=None, names=["app", "category"])
    frame = frame.merge(apps, on="app")
    frame["hour"] = (frame.t // 10**6 % 100 - 20) * 24 + frame.t // 10**4 % 100
    frame["service"] = frame.category.map({CATEGORIES.index(s): i for i, s in enumerate(PAPER_SERVICES)})
    kept = frame.dropna(subset=["service"])
    expected = kept.groupby(["user", "hour", "service"]).bytes.sum()
    expected = sorted((str(u), int(h), int(s), int(b)) for (u, h, s), b in expected.items())
    stored = rows_of(
        db, "SELECT e.key, t.hour, t.service, t.bytes FROM traffic t JOIN entities e ON e.id = t.entity_id"
    )
    assert sorted(stored) == expected
    assert summary["total_bytes"] == int(kept.bytes.sum())
    modal = (
        frame.groupby(["user", "hour", "base"])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["user", "hour", "n", "base"], ascending=[True, True, False, True])
        .drop_duplicates(["user", "hour"])
    )
    stored = rows_of(
        db,
        """SELECT e.key, l.hour, c.key FROM locations l JOIN entities e ON e.id = l.entity_id
                            JOIN cells c ON c.id = l.cell_id""",
    )
    assert sorted(stored) == sorted(
        (str(u), int(h), str(b)) for u, h, b in zip(modal.user, modal.hour, modal.base, strict=False)
    )

    code, out, _ = run(
        capsys,
        "ingest",
        "tsinghua",
        "--db",
        db,
        "--trace",
        trace,
        "--app2category",
        folder / "App2Category.txt",
        "--categories",
        folder / "Categorys.txt",
        "--poi",
        folder / "base_poi.txt",
        "--all-services",
        "--name",
        "all",
        "--json",
    )
    assert code == 0 and json.loads(out)["total_bytes"] == int(frame.bytes.sum())


def test_llmapp_sample_ingests_end_to_end_with_the_shipped_mapping(tmp_path, capsys):
    folder = SHARED / "llmapp_sample"
    if not (folder / "data_sample.csv").is_file():
        pytest.skip("the llmapp sample (../shared/data/llmapp_sample) is not present")
    db = tmp_path / "x.sqlite"
    code, out, err = run(
        capsys,
        "ingest",
        "table",
        "--db",
        db,
        "--records",
        folder / "data_sample.csv",
        "--cells",
        folder / "location.csv",
        "--mapping",
        LLMAPP_MAPPING,
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["users"] == 6
    assert summary["cells"] == summary["cells_with_coordinates"] == 12_576
    assert len(summary["poi_categories"]) == 14 and len(summary["services"]) == 20
    assert summary["timezone"] == "Asia/Shanghai" and summary["hours"] == 24
    assert summary["total_bytes"] == int(pd.read_csv(folder / "data_sample.csv").traffic.sum())
    assert summary["dataset"] == "data_sample"


def test_reingesting_under_the_same_name_asks_before_replacing_the_data_set(workspace, capsys):
    before = rows_of(workspace.db, "SELECT id, name FROM datasets ORDER BY id")
    code, _, err = run(capsys, *workspace.table(), "--name", "table")
    assert code == 2 and "field '--name': a data set named 'table' exists already" in err
    assert rows_of(workspace.db, "SELECT id, name FROM datasets ORDER BY id") == before
    assert run(capsys, *workspace.table(), "--name", "table", "--replace")[0] == 0
    assert rows_of(workspace.db, "SELECT COUNT(*) FROM datasets WHERE name = 'table'") == [(1,)]
    assert rows_of(
        workspace.db,
        "SELECT SUM(bytes) FROM traffic t JOIN entities e ON e.id = t.entity_id "
        "JOIN datasets d ON d.id = e.dataset_id WHERE d.name = 'table'",
    ) == [(107,)]


# --- bad input: exit 2, file + line + field, database unchanged -------------------------------------


@dataclass
class BadCase:
    make: Callable[[Workspace], tuple[list[str], Path]]  # -> argv, the file the message must name
    line: int | None
    field: str | None
    says: str


def bad_trace(rows: list[str]) -> Callable[[Workspace], tuple[list[str], Path]]:
    def make(space: Workspace) -> tuple[list[str], Path]:
        path = space.folder / "bad_trace.txt"
        path.write_text("".join(row + "\n" for row in rows))
        return space.tsinghua(trace=path), path

    return make


def bad_file(kind: str, option: str, name: str, text: str) -> Callable[[Workspace], tuple[list[str], Path]]:
    def make(space: Workspace) -> tuple[list[str], Path]:
        path = space.folder / name
        path.write_text(text)
        argv = space.tsinghua(**{option: path}) if kind == "tsinghua" else space.table(**{option: path})
        return argv, path

    return make


def missing(kind: str, option: str) -> Callable[[Workspace], tuple[list[str], Path]]:
    def make(space: Workspace) -> tuple[list[str], Path]:
        path = space.folder / "does_not_exist.txt"
        argv = space.tsinghua(**{option: path}) if kind == "tsinghua" else space.table(**{option: path})
        return argv, path

    return make


def service_outside_mapping(space: Workspace) -> tuple[list[str], Path]:
    mapping = space.folder / "m.json"
    mapping.write_text('{"services": ["video"]}')
    return space.table(mapping=mapping), space.records  # line 3 of the records has service 'maps'


GOOD_LINE = "3 20160420080000 10 1 100"
HEADER = "entity_id,timestamp,cell_id,service,bytes"
GOOD_ROW = "u1,2016-04-20T08:05:00,1,video,100"
BAD_CASES = {
    "trace_missing_file": BadCase(missing("tsinghua", "trace"), None, None, "no such file"),
    "trace_wrong_column_count": BadCase(
        bad_trace([GOOD_LINE, "3 20160420080000 10 1"]), 2, "traffic_bytes", "expected 5 fields"
    ),
    "trace_unparsable_timestamp": BadCase(
        bad_trace([GOOD_LINE, GOOD_LINE, "3 20160231080000 10 1 5"]), 3, "timestamp", "20160231080000"
    ),
    "trace_negative_bytes": BadCase(bad_trace([GOOD_LINE, "3 20160420080000 10 1 -7"]), 2, "traffic_bytes", ">= 0"),
    "trace_non_numeric_bytes": BadCase(bad_trace([GOOD_LINE, "3 20160420080000 10 1 7k"]), 2, "traffic_bytes", "'7k'"),
    "trace_unknown_app": BadCase(bad_trace([GOOD_LINE, "3 20160420080000 10 41 7"]), 2, "app_id", "unknown app 41"),
    "trace_unknown_base_station": BadCase(
        bad_trace(["3 20160420080000 20 1 7"]), 1, "base_station_id", "unknown base station 20"
    ),
    "trace_empty_file": BadCase(bad_trace([]), 1, None, "empty"),
    "poi_duplicate_base_station": BadCase(
        bad_file("tsinghua", "poi", "poi.txt", "BaseID\tOther\n10\t1\n9\t1\n10\t2\n"),
        4,
        "BaseID",
        "duplicate base station 10",
    ),
    "coords_duplicate_cell": BadCase(
        bad_file("tsinghua", "coords", "coords.csv", "cell_id,lat,lon\n9,31,121\n9,31.1,121\n"),
        3,
        "cell_id",
        "duplicate",
    ),
    "categories_unknown_id": BadCase(
        bad_file(
            "tsinghua",
            "categories",
            "cats.txt",
            "".join(f"{i}\t'{n}'\n" for i, n in enumerate(CATEGORIES)) + "20\t'X'\n",
        ),
        21,
        "category_id",
        "0..19",
    ),
    "records_missing_file": BadCase(missing("table", "records"), None, None, "no such file"),
    "records_missing_column": BadCase(
        bad_file("table", "records", "r.csv", "entity_id,timestamp,cell_id,service\nu1,2016-04-20T08:05:00,1,video\n"),
        1,
        "bytes",
        "missing column",
    ),
    "records_unparsable_timestamp": BadCase(
        bad_file("table", "records", "r.csv", f"{HEADER}\n{GOOD_ROW}\nu1,2016-13-01T00:00:00,1,video,5\n"),
        3,
        "timestamp",
        "ISO 8601",
    ),
    "records_negative_bytes": BadCase(
        bad_file("table", "records", "r.csv", f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW}\nu1,2016-04-20T08:05:00,1,video,-1\n"),
        4,
        "bytes",
        ">= 0",
    ),
    "records_non_numeric_bytes": BadCase(
        bad_file("table", "records", "r.csv", f"{HEADER}\nu1,2016-04-20T08:05:00,1,video,ten\n"), 2, "bytes", "'ten'"
    ),
    "records_unknown_cell": BadCase(
        bad_file("table", "records", "r.csv", f"{HEADER}\n{GOOD_ROW}\nu1,2016-04-20T08:05:00,5,video,1\n"),
        3,
        "cell_id",
        "unknown cell '5'",
    ),
    "records_empty_file": BadCase(bad_file("table", "records", "r.csv", ""), 1, None, "empty"),
    "records_unsupported_extension": BadCase(
        bad_file("table", "records", "r.xlsx", "x"), None, None, ".csv or .parquet"
    ),
    "cells_duplicate_id": BadCase(
        bad_file("table", "cells", "c.csv", "cell_id,lat,lon,Shops\n1,31,121,1\n2,31,121,1\n1,31,121,1\n"),
        4,
        "cell_id",
        "duplicate cell id '1'",
    ),
    "cells_negative_poi_count": BadCase(
        bad_file("table", "cells", "c.csv", "cell_id,lat,lon,Shops\n1,31,121,1\n2,31,121,-4\n"),
        3,
        "Shops",
        "from 0 to 1,000,000",
    ),
    "mapping_bad_json": BadCase(
        bad_file("table", "mapping", "m.json", '{\n  "timezone": "UTC",\n  "services": ["video" "maps"]\n}\n'),
        3,
        None,
        "not valid JSON",
    ),
    "mapping_unknown_key": BadCase(
        bad_file("table", "mapping", "m.json", '{\n  "timezone": "UTC",\n  "time_zone": "UTC"\n}\n'),
        3,
        "time_zone",
        "unknown key",
    ),
    "records_service_outside_mapping_list": BadCase(
        service_outside_mapping, 3, "service", "'maps' is not in the mapping's services"
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
@pytest.mark.parametrize("name", ["same", "new"])
def test_bad_input_exits_2_names_file_line_field_and_writes_nothing(workspace, capsys, case, name):
    bad = BAD_CASES[case]
    argv, path = bad.make(workspace)
    existing = "tsinghua" if argv[1] == "tsinghua" else "table"
    tables, files = table_snapshot(workspace.db), file_snapshot(workspace.db)

    code, _out, err = run(capsys, *argv, "--name", existing if name == "same" else "brand-new")

    assert code == 2
    where = f"{path}:{bad.line}" if bad.line is not None else str(path)
    assert where in err, err
    if bad.field is not None:
        assert f"field '{bad.field}'" in err, err
    assert bad.says in err, err
    assert file_snapshot(workspace.db) == files
    assert table_snapshot(workspace.db) == tables
