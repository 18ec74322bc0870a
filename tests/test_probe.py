"""Issue 20's probe, kept as tests: the bad inputs that once crashed, hung, overflowed or quietly replaced data,
each run through the command line on a real database. Every one must now be refused with exit status 2 and
one line naming the flag, field or file and what was expected; no traceback; the database as it was.

(The worker faults of the probe are in tests/engine/jobs/: test_jobs.py and test_faults.py; the fuzzing that
generalises these cases is tests/test_fuzz.py.)"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import torch

from cli.main import main
from db import open_database
from db.queries import store_dataset
from engine.data.city import CityConfig, generate_city
from tests.conftest import copy_database, data_home
from tests.postgres import database_state

SMALL_TABLE = 5000  # tables up to this many rows are compared row by row; larger ones by count and last row id

CELLS = "cell_id,lat,lon,Shops,Schools\n1,31.2,121.4,3,0\n2,31.3,121.5,0,2\n"
RECORDS = "entity_id,timestamp,cell_id,service,bytes\nu1,2016-04-20T08:05:00,1,video,100\n"


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> Path:
    """A small city with a tiny trained model: what the probe's commands meet."""
    home = tmp_path_factory.mktemp("probe-home")
    with data_home(home):
        db = home / "probe.sqlite"
        database = open_database(str(db))
        with database.write_session() as session, session.begin():
            store_dataset(session, generate_city(CityConfig(users=12, cells=16, days=14, seed=4)))
        database.dispose()
        config = home / "tiny.json"
        config.write_text(json.dumps({"condition": "none", "channels": 16, "heads": 2, "blocks": 1, "epochs": 1}))
        assert main(["train", "--config", str(config), "--db", str(db)]) == 0
    return db


def _state(db: Path) -> dict[str, str]:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = {}
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            count, last = connection.execute(f'SELECT count(*), max(rowid) FROM "{table}"').fetchone()
            out[table] = f"{count}:{last}"
            if count <= SMALL_TABLE:
                rows = connection.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()
                out[table] += ":" + hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
        return out
    finally:
        connection.close()


def _config(folder: Path, document: object) -> str:
    path = folder / "config.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def _table(folder: Path, records: str = RECORDS, cells: str = CELLS, mapping: str | None = None) -> list[str]:
    (folder / "records.csv").write_text(records)
    (folder / "cells.csv").write_text(cells)
    argv = ["ingest", "table", "--records", str(folder / "records.csv"), "--cells", str(folder / "cells.csv")]
    if mapping is not None:
        (folder / "mapping.json").write_text(mapping)
        argv += ["--mapping", str(folder / "mapping.json")]
    return argv


def _tsinghua(folder: Path, name: str) -> list[str]:
    from engine.data.ingest_tsinghua import CATEGORIES

    files = {
        "trace": "3 20160420080000 1 1 100\n",
        "app2category": "1\t0\n",
        "categories": "".join(f"{i}\t'{n}'\n" for i, n in enumerate(CATEGORIES)),
        "poi": "BaseID\tResidence\n1\t2\n",
    }
    argv = ["ingest", "tsinghua", "--name", name]
    for option, text in files.items():
        (folder / f"{option}.txt").write_text(text)
        argv += [f"--{option}", str(folder / f"{option}.txt")]
    return argv


FORECAST = ["forecast", "--entity", "user:U0001", "--start", "300"]
NESTED = "[" * 5000 + "]" * 5000

# id, the command (a function of a scratch folder), what the error must say
CASES = [
    ("city-users-1e9", lambda d: ["city", "build", "--users", "1000000000"], "--users"),
    ("city-days-1e6", lambda d: ["city", "build", "--days", "1000000"], "--days"),
    ("city-cells-1e9", lambda d: ["city", "build", "--cells", "1e9"], "--cells"),
    ("city-env-effect-inf", lambda d: ["city", "build", "--env-effect", "inf"], "--env-effect"),
    ("city-seed-negative", lambda d: ["city", "build", "--seed", "-1"], "--seed"),
    ("city-existing-name", lambda d: ["city", "build", "--seed", "4"], "--replace"),
    ("forecast-horizon-1e6", lambda d: [*FORECAST, "--horizon", "1000000"], "--horizon"),
    ("forecast-samples-1e7", lambda d: [*FORECAST, "--samples", "10000000"], "--samples"),
    ("forecast-seed-2**70", lambda d: [*FORECAST, "--seed", str(2**70)], "--seed"),
    ("forecast-guidance-nan", lambda d: [*FORECAST, "--guidance", "nan"], "--guidance"),
    ("forecast-guidance-inf", lambda d: [*FORECAST, "--guidance", "inf"], "--guidance"),
    ("forecast-device-bogus", lambda d: [*FORECAST, "--device", "bogus"], "--device"),
    ("train-heads-0", lambda d: ["train", "--config", _config(d, {"heads": 0})], "heads"),
    ("train-channels-text", lambda d: ["train", "--config", _config(d, {"channels": "x"})], "channels"),
    ("train-config-list", lambda d: ["train", "--config", _config(d, [1, 2])], "config"),
    ("train-batch-0", lambda d: ["train", "--config", _config(d, {"batch_size": 0})], "batch_size"),
    ("train-epochs-infinity", lambda d: ["train", "--config", _config(d, '{"epochs": Infinity}')], "epochs"),
    ("train-channels-1e6", lambda d: ["train", "--config", _config(d, {"channels": 10**6})], "channels"),
    ("train-blocks-negative", lambda d: ["train", "--config", _config(d, {"blocks": -1})], "blocks"),
    ("train-max-minutes-0", lambda d: ["train", "--config", "tiny", "--max-minutes", "0"], "--max-minutes"),
    ("export-windows-root", lambda d: ["export", "windows", "--out", "/"], "--out"),
    (
        "jobs-horizon-nan",
        lambda d: ["jobs", "submit", "forecast", "entity=user:U0001", "start=300", "horizon=nan"],
        "horizon",
    ),
    ("env-clip-init-not-a-checkpoint", lambda d: ["env", "build", "--clip-init", "/etc/passwd"], "clip"),
    ("env-a-nan", lambda d: ["env", "build", "--a", "nan"], "--a"),
    ("ingest-table-existing-name", lambda d: [*_table(d), "--name", "synthetic-seed4"], "exists already"),
    ("ingest-tsinghua-existing-name", lambda d: _tsinghua(d, "synthetic-seed4"), "exists already"),
    (
        "ingest-year-9999",
        lambda d: _table(d, RECORDS.replace("2016-04-20", "9999-04-20")),
        "from 1970 to 2099",
    ),
    ("ingest-poi-1e30", lambda d: _table(d, cells=CELLS.replace(",3,0", ",1e30,0")), "Shops"),
    ("ingest-bytes-2**63", lambda d: _table(d, RECORDS.replace(",100\n", f",{2**63 - 1}\n")), "bytes"),
    (
        "ingest-bytes-sum-overflow",
        lambda d: _table(d, RECORDS + "".join(f"u{i},2016-04-20T09:00:00,1,video,{2**61}\n" for i in range(4))),
        "add up",
    ),
    ("ingest-mapping-nested", lambda d: _table(d, mapping=NESTED), "mapping"),
    ("ingest-entity-id-nul", lambda d: _table(d, RECORDS.replace("u1,", "u\x001,")), "NUL"),
    ("ingest-entity-id-101", lambda d: _table(d, RECORDS.replace("u1,", "u" * 101 + ",")), "at most 100"),
    ("ingest-name-201", lambda d: [*_table(d), "--name", "n" * 201], "at most 200"),
]


def _refused_and_unchanged(argv: list[str], db: str, state, expected: str, capsys) -> None:
    before = state(db)
    try:
        code = main([*map(str, argv), "--db", db])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "lsdm "))]
    assert lines and expected in err, err
    assert state(db) == before, "a refused command changed the database"


@pytest.mark.parametrize(("make", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_the_probes_bad_input_is_refused_naming_what_was_wrong_and_changes_nothing(
    make, expected, probed, tmp_path, capsys
):
    _refused_and_unchanged(make(tmp_path), str(probed), _state, expected, capsys)


@pytest.fixture(scope="module")
def probed_pg(pg_server, tmp_path_factory) -> str:
    """The probe's city and tiny model in a database of a real PostgreSQL server (tests/postgres.py)."""
    home = tmp_path_factory.mktemp("probe-pg-home")
    url = pg_server.new_database()
    with data_home(home):
        database = open_database(url)
        with database.write_session() as session, session.begin():
            store_dataset(session, generate_city(CityConfig(users=12, cells=16, days=14, seed=4)))
        database.dispose()
        config = home / "tiny.json"
        config.write_text(json.dumps({"condition": "none", "channels": 16, "heads": 2, "blocks": 1, "epochs": 1}))
        assert main(["train", "--config", str(config), "--db", url]) == 0
    return url


@pytest.mark.parametrize(("make", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_on_postgresql_too_the_probes_bad_input_is_refused_and_changes_nothing(
    make, expected, probed_pg, tmp_path, capsys
):
    """The same cases against a PostgreSQL database: the bounds, the refusals and the untouched database do not
    depend on the database kind (issue 20's PostgreSQL findings: NUL bytes, over-long ids and names)."""
    _refused_and_unchanged(make(tmp_path), probed_pg, database_state, expected, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_device_cuda_without_cuda_is_refused(probed, capsys):
    before = _state(probed)
    assert main([*FORECAST, "--device", "cuda", "--db", str(probed)]) == 2
    assert "--device" in capsys.readouterr().err and _state(probed) == before


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d, "folder"),
        (lambda d: (d / "x.sqlite").write_bytes(b"not a database at all" * 100) and d / "x.sqlite", "not an SQLite"),
        (lambda d: "bogus://somewhere/db", "unknown database kind"),
    ],
    ids=["a-folder", "not-sqlite", "unknown-scheme"],
)
def test_a_database_that_is_not_one_is_refused_and_left_alone(make, expected, tmp_path, capsys):
    target = make(tmp_path)
    content = target.read_bytes() if isinstance(target, Path) and target.is_file() else None
    assert main(["data", "list", "--db", str(target)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    if content is not None:
        assert target.read_bytes() == content


def test_a_database_damaged_in_the_middle_is_refused_and_left_alone(probed, tmp_path, capsys):
    copy = tmp_path / "damaged.sqlite"
    copy_database(probed, copy)
    data = bytearray(copy.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = bytes(range(256)) * 32
    copy.write_bytes(bytes(data))
    assert main(["data", "list", "--db", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "Traceback" not in err, err
    assert copy.read_bytes() == bytes(data)


def test_a_forecast_too_big_for_the_memory_is_refused_before_allocating_with_what_fits(city_db, capsys):
    """Issue 20: `--samples 10000000` was an 8.9 GiB allocation traceback. The request's bounds allow 500 users x
    1,024 paths, about 475 GiB with the default model: refused by the estimate, saying how many samples fit."""
    entities = ",".join(f"user:U{i:04d}" for i in range(500))
    before = _state(city_db)
    code = main(["forecast", "--entity", entities, "--start", "300", "--samples", "1024", "--db", str(city_db)])
    err = capsys.readouterr().err
    assert code == 2 and "field '--samples': this forecast needs about" in err and "GiB free: at most" in err, err
    assert "samples fit for 500 entities" in err and _state(city_db) == before
