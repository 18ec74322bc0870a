"""Issue 20: property-based fuzzing (Hypothesis) of every request type's checks and of the three ingests.

The properties, on a real SQLite database:

- **requests**: any parameters (any JSON-like values, near-misses of every field's bounds and choices,
  unknown names) either queue a job or are refused with ``InputError`` naming a field; a refusal writes
  nothing;
- **ingests**: a valid table, Tsinghua trace or CSV matrix with one random defect (a field replaced, a line
  dropped or doubled, the file cut short, bytes of garbage, a column lost, an empty file) either ingests or
  is refused with exit status 2 and a message naming a file or a flag; never an unexpected failure (exit 70,
  the traceback in the log) and never a changed database after a refusal.

Hypothesis runs a bounded, derandomised number of examples (``LSDM_FUZZ_EXAMPLES``, default 100 per
property: reproducible in CI); ``LSDM_FUZZ_EXAMPLES=2000 LSDM_FUZZ_RANDOM=1`` searches wider and anew.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import main
from db import open_database
from db.models import Job
from engine.data.city import CityConfig, generate_city
from engine.errors import InputError
from engine.jobs import enqueue
from engine.requests import REQUEST_TYPES, Request

EXAMPLES = int(os.environ.get("LSDM_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # hangs are caught by the test's timeout, not by one slow example
    derandomize=not os.environ.get("LSDM_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "nan",
    "inf",
    "-1",
    "1e309",
    "9" * 40,
    "../../etc/passwd",
    "/",
    "![x](http://127.0.0.1:9/x.png)",
    "<script>alert(1)</script>",
    "user:U0001",
    "cell:1",
    "ddim:20",
    "9999-12-31T23:00:00",
    "é" * 300,
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(NASTY_TEXT),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def near_misses(spec: dict) -> st.SearchStrategy:
    """Values at and just past a field's bounds, its choices, and its default: where checks slip."""
    edges: list[object] = [spec["default"]]
    for bound in (spec["low"], spec["high"]):
        if bound is not None:
            step = 1 if spec["kind"] is int else 1e-9 * max(1.0, abs(bound))
            edges += [bound, bound - step, bound + step, float(bound), str(bound)]
    edges += list(spec["choices"] or ()) + [c.upper() for c in spec["choices"] or ()]
    if spec["max_length"] is not None:
        edges += ["x" * (spec["max_length"] + 1), ["x"] * (spec["max_length"] + 1)]
    edges += [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1]
    return st.sampled_from(edges)


def valid_bases(folder: Path) -> dict[str, dict]:
    """A valid request of each kind that needs one (files that exist, entities of the fuzz city): the fuzz
    changes some of its fields, so accepted requests are explored too, not only refusals."""
    from engine.data.ingest_tsinghua import CATEGORIES

    def write(name: str, text: str) -> str:
        (folder / name).write_text(text)
        return str(folder / name)

    return {
        "ingest.table": {"records": write("r.csv", TABLE_RECORDS), "cells": write("c.csv", TABLE_CELLS)},
        "ingest.tsinghua": {
            "trace": write("trace.txt", TRACE),
            "app2category": write("apps.txt", "".join(f"{a}\t{(a - 1) % 20}\n" for a in range(1, 41))),
            "categories": write("cats.txt", "".join(f"{i}\t'{n}'\n" for i, n in enumerate(CATEGORIES))),
            "poi": write("poi.txt", POI),
        },
        "ingest.matrix": {"values": [write("m.csv", MATRIX)], "start": "2024-01-01T00:00"},
        "forecast": {"entities": ["user:U0001"], "start": 30},
        "whatif": {"entity": "user:U0001", "start": 30},
        "load": {"scope": "cell:C0001", "start": 30},
        "load.whatif": {"cell": "C0001", "start": 30},
    }


@st.composite
def params_for(draw: st.DrawFn, request_type: type[Request], base: dict) -> dict:
    """``base`` with some of its fields (and maybe an unknown one) replaced by anything or by a near miss."""
    specs = request_type.field_specs()
    names = draw(st.lists(st.sampled_from([*specs, "bogus"]), unique=True, max_size=4))
    changed = {
        name: draw(near_misses(specs[name]) if name in specs and draw(st.booleans()) else VALUES) for name in names
    }
    return {**base, **changed}


def _rows(database, table) -> int:
    from sqlalchemy import func, select

    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)))


@pytest.fixture(scope="module")
def city_database(tmp_path_factory) -> str:
    """A small city, so requests that name entities and data sets meet real ones."""
    from db.queries import store_dataset

    path = tmp_path_factory.mktemp("fuzz") / "city.sqlite"
    database = open_database(str(path))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=6, cells=8, days=3, seed=1)))
    database.dispose()
    return str(path)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("request_type", REQUEST_TYPES, ids=lambda t: t.KIND)
def test_any_parameters_queue_a_job_or_are_refused_naming_a_field_and_writing_nothing(
    request_type, city_database, tmp_path
):
    database = open_database(city_database)
    specs = request_type.field_specs()
    base = valid_bases(tmp_path).get(request_type.KIND, {})
    request_type.parse(base)  # the starting point is a valid request
    outcomes: list[str] = []

    @FUZZ
    @given(params=params_for(request_type, base))
    def check(params: dict) -> None:
        before = _rows(database, Job)
        try:
            enqueue(database, request_type.KIND, params)
        except InputError as error:
            assert error.field in {*specs, "params", "bogus"} or str(error.field).startswith("bogus"), (
                error.field,
                str(error),
            )
            assert str(error) and "Traceback" not in str(error)
            assert _rows(database, Job) == before, "a refused request wrote nothing"
            outcomes.append("refused")
        else:
            outcomes.append("queued")
            assert _rows(database, Job) == before + 1

    check()
    database.dispose()
    assert {"queued", "refused"} <= set(outcomes), f"explored both sides: {outcomes}"


# --- ingests ------------------------------------------------------------------------------------------

TABLE_RECORDS = (
    "entity_id,timestamp,cell_id,service,bytes\n"
    "u1,2016-04-20T08:05:00,1,video,100\n"
    "u1,2016-04-20T08:55:00,2,maps,7\n"
    "u2,2016-04-20T09:10:00,2,video,4000\n"
    "u2,2016-04-21T10:00:00,1,social,12\n"
)
TABLE_CELLS = "cell_id,lat,lon,Shops,Schools\n1,31.2,121.4,3,0\n2,31.3,121.5,0,2\n"
TRACE = (
    "3 20160420080000 10 1 100\n"
    "3 20160420080500 10 2 50\n"
    "3 20160420081000 9 1 25\n"
    "3 20160421120000 4 9 70\n"
    "12 20160420230000 7 1 8\n"
    "12 20160420230100 7 16 9\n"
)
POI = "BaseID\tResidence\tOther\n" + "".join(f"{b}\t{b}\t1\n" for b in range(12))
MATRIX = "station,t0,t1,t2,t3\nA7,1.5,2,0,3\nB2,0,4,1,1\nC1,9,9,9,9\n"

FIELD_VALUES = st.one_of(
    st.sampled_from([*NASTY_TEXT, "2**63", "9223372036854775807", "-5", "1e30", "0", '"', "a,b", "\t", "2100-01-01"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(repr),
    st.text(max_size=12),
)


@st.composite
def damaged(draw: st.DrawFn, text: str, separator: str) -> bytes:
    """``text`` with one defect."""
    lines = text.splitlines()
    how = draw(st.sampled_from(["field", "field", "field", "drop", "double", "cut", "garbage", "column", "empty"]))
    if how == "field":
        row = draw(st.integers(0, len(lines) - 1))
        cells = lines[row].split(separator)
        cells[draw(st.integers(0, len(cells) - 1))] = draw(FIELD_VALUES)
        lines[row] = separator.join(cells)
    elif how == "drop":
        del lines[draw(st.integers(0, len(lines) - 1))]
    elif how == "double":
        row = draw(st.integers(0, len(lines) - 1))
        lines.insert(row, lines[row])
    elif how == "column":
        column = draw(st.integers(0, len(lines[0].split(separator)) - 1))
        lines = [separator.join(c for i, c in enumerate(line.split(separator)) if i != column) for line in lines]
    elif how == "empty":
        return b""
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if how == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "garbage":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=40)) + data[at:]
    return data


def _snapshot(db: Path) -> str:
    """Every row of every table: what a refusal must leave as it was."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()
    finally:
        connection.close()


def _ingest(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    return code, capsys.readouterr().err


def _fuzz_ingest(
    capsys, folder: Path, files: dict[str, tuple[str, str]], argv_of, db: object = None, snapshot=None
) -> None:
    """One property per ingest: each of ``files`` (name -> (valid text, separator)) damaged in turn; into a
    new SQLite file in ``folder``, or into ``db`` (a PostgreSQL URL) read by ``snapshot``."""
    db = db or folder / "fuzz.sqlite"
    snapshot = snapshot or _snapshot
    names = itertools.count()
    # A database that already holds a data set: what a refusal must leave exactly as it was.
    assert _ingest(capsys, argv_of(db, {name: text.encode() for name, (text, _sep) in files.items()}, "kept"))[0] == 0
    targets = sorted(files)

    @FUZZ
    @given(target=st.sampled_from(targets), data=st.data())
    def check(target: str, data: st.DataObject) -> None:
        text, separator = files[target]
        contents = {name: value.encode() for name, (value, _sep) in files.items()}
        contents[target] = data.draw(damaged(text, separator))
        before = snapshot(db)
        code, err = _ingest(capsys, argv_of(db, contents, f"fuzz{next(names)}"))
        assert code in (0, 2), f"exit {code}: {err}"
        assert "Traceback" not in err
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and len(errors[0]) < 1000, err  # one line (progress lines may precede it)
            assert snapshot(db) == before, f"a refused ingest changed the database: {err}"

    check()


def _writer(folder: Path):
    def write(name: str, content: bytes) -> Path:
        path = folder / name
        path.write_bytes(content)
        return path

    return write


@pytest.mark.timeout(900)
def test_a_damaged_table_ingests_or_is_refused_whole(tmp_path, capsys):
    write = _writer(tmp_path)

    def argv_of(db: Path, contents: dict[str, bytes], name: str) -> list:
        records, cells = write("records.csv", contents["records"]), write("cells.csv", contents["cells"])
        return ["ingest", "table", "--db", db, "--records", records, "--cells", cells, "--name", name]

    _fuzz_ingest(capsys, tmp_path, {"records": (TABLE_RECORDS, ","), "cells": (TABLE_CELLS, ",")}, argv_of)


@pytest.mark.timeout(900)
def test_on_postgresql_a_damaged_table_ingests_or_is_refused_whole(tmp_path, capsys, pg_url):
    """The table ingest's fuzzing again, into a database of a real PostgreSQL server: the bounds are the same
    code; what differs is the driver's and the server's reaction to what passes them."""
    from tests.postgres import database_state

    write = _writer(tmp_path)

    def argv_of(db: str, contents: dict[str, bytes], name: str) -> list:
        records, cells = write("records.csv", contents["records"]), write("cells.csv", contents["cells"])
        return ["ingest", "table", "--db", db, "--records", records, "--cells", cells, "--name", name]

    _fuzz_ingest(
        capsys,
        tmp_path,
        {"records": (TABLE_RECORDS, ","), "cells": (TABLE_CELLS, ",")},
        argv_of,
        db=pg_url,
        snapshot=lambda url: repr(sorted(database_state(url).items())),
    )


@pytest.mark.timeout(900)
def test_a_damaged_tsinghua_trace_ingests_or_is_refused_whole(tmp_path, capsys):
    from engine.data.ingest_tsinghua import CATEGORIES

    write = _writer(tmp_path)
    categories = write("Categorys.txt", "\r\n".join(f"{i}\t'{n}'" for i, n in enumerate(CATEGORIES)).encode())
    apps = write("App2Category.txt", "\r\n".join(f"{a}\t{(a - 1) % 20}" for a in range(1, 41)).encode())

    def argv_of(db: Path, contents: dict[str, bytes], name: str) -> list:
        trace, poi = write("trace.txt", contents["trace"]), write("base_poi.txt", contents["poi"])
        return [
            "ingest",
            "tsinghua",
            "--db",
            db,
            "--trace",
            trace,
            "--app2category",
            apps,
            "--categories",
            categories,
            "--poi",
            poi,
            "--name",
            name,
        ]

    _fuzz_ingest(capsys, tmp_path, {"trace": (TRACE, " "), "poi": (POI, "\t")}, argv_of)


@pytest.mark.timeout(900)
def test_a_damaged_matrix_ingests_or_is_refused_whole(tmp_path, capsys):
    write = _writer(tmp_path)

    def argv_of(db: Path, contents: dict[str, bytes], name: str) -> list:
        matrix = write("m.csv", contents["matrix"])
        return ["ingest", "matrix", "--db", db, "--values", matrix, "--start", "2024-01-01T00:00", "--name", name]

    _fuzz_ingest(capsys, tmp_path, {"matrix": (MATRIX, ",")}, argv_of)
