"""Cell-level what-ifs (engine/load/whatif.py) with the shipped model on the default city: an outage re-homes
every user of the dead cell and nobody else, an event adds its visitors only while they are there, both
paired with their baseline; bad windows, cells and profiles are refused naming the field, storing nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from db import open_database
from engine.errors import InputError
from engine.forecast import load_context
from engine.load.core import read_load_run
from engine.load.whatif import run_load_whatif
from engine.requests import LoadWhatIfRequest
from tests.conftest import copy_database


@pytest.fixture
def city(city_db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "city.sqlite"
    copy_database(city_db, copy)
    return copy


@pytest.fixture(scope="module")
def context(city_db: Path):
    database = open_database(str(city_db))
    yield load_context(database)
    database.dispose()


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_an_outage_rehomes_every_user_of_the_dead_cell_and_nobody_else(city, context):
    database = open_database(str(city))
    request = LoadWhatIfRequest(cell="C0001", start=300, at=1, duration=2, horizon=4, samples=4, neighbours=3, seed=1)
    out = run_load_whatif(database, request, context=context)
    base, scen = read_load_run(database, out["baseline_run_id"]), read_load_run(database, out["scenario_run_id"])
    assert scen.baseline_id == base.run_id and scen.kind == "outage" and base.kind == "load"
    assert base.cell_keys == scen.cell_keys and base.cell_keys[0] == "C0001" and len(base.cell_keys) == 4
    target = out["change"]["to"]
    assert target == out["neighbours"][0]["cell"] and target in base.cell_keys
    b, s = base.result, scen.result
    dead, to = 0, base.cell_keys.index(target)
    window = slice(1, 3)
    assert (s.present[dead, :, window] == 0).all() and (s.totals[dead, :, window] == 0).all()
    np.testing.assert_array_equal(
        s.present[to, :, window], b.present[to, :, window] + b.present[dead, :, window]
    )  # every user of the dead cell is in the nearest working one
    others = [i for i in range(len(base.cell_keys)) if i not in (dead, to)]
    np.testing.assert_array_equal(s.present[others], b.present[others])  # nobody else moved
    outside = [0, 3]
    np.testing.assert_array_equal(s.present[:, :, outside], b.present[:, :, outside])
    np.testing.assert_array_equal(s.totals[:, :, 0], b.totals[:, :, 0])  # before the outage: the same paths
    assert out["change"]["users"] > 0 and b.present[dead, :, window].sum() == out["change"]["paths_hours"]
    hour = out["cells"][to]["hours"][1]
    diff = s.totals[to, :, 1] - b.totals[to, :, 1]
    assert hour["difference"]["mean"] == pytest.approx(diff.mean(), rel=1e-5)
    assert hour["difference"]["q05"] <= hour["difference"]["mean"] <= hour["difference"]["q95"]
    assert set(hour["p_exceed"]) == {"baseline", "scenario"}
    assert _count(city, "load_runs") == 2
    database.dispose()


def test_an_event_adds_its_visitors_only_while_they_are_there(city, context):
    database = open_database(str(city))
    request = LoadWhatIfRequest(
        cell="C0002",
        what="event",
        visitors=20,
        profile="U0003",
        start=300,
        at=2,
        duration=1,
        horizon=4,
        samples=4,
        neighbours=2,
    )
    out = run_load_whatif(database, request, context=context)
    b = read_load_run(database, out["baseline_run_id"]).result
    s = read_load_run(database, out["scenario_run_id"]).result
    assert out["change"] == {"profile": "U0003", "visitors": 20}
    np.testing.assert_array_equal(s.present[0, :, 2], b.present[0, :, 2] + 20)
    for hour in (0, 1, 3):
        np.testing.assert_array_equal(s.totals[:, :, hour], b.totals[:, :, hour])
    np.testing.assert_array_equal(s.totals[1:], b.totals[1:])  # the neighbours see nothing of it
    assert (s.totals[0, :, 2] >= b.totals[0, :, 2] - 1e-3).all() and (s.totals[0, :, 2] > b.totals[0, :, 2]).any()
    default = run_load_whatif(
        database, request.with_changes(profile=None, visitors=1), context=context
    )  # the cell's most frequent user
    assert default["change"]["profile"]
    database.dispose()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"at": 4}, "at"),
        ({"at": 2, "duration": 3}, "duration"),
        ({"cell": "NOPE"}, "cell"),
        ({"what": "event", "profile": "NOBODY"}, "profile"),
        ({"what": "party"}, "what"),
        ({"visitors": 0}, "visitors"),
        ({"start": 5}, "start"),
    ],
)
def test_bad_windows_cells_and_profiles_are_refused_naming_the_field_and_nothing_is_stored(
    city, context, changes, field
):
    database = open_database(str(city))
    request = LoadWhatIfRequest(cell="C0001", start=300, horizon=4, samples=2, neighbours=2).with_changes(**changes)
    with pytest.raises(InputError) as refused:
        run_load_whatif(database, request, context=context)
    assert refused.value.field == field
    assert _count(city, "load_runs") == 0
    database.dispose()


def test_lsdm_load_whatif_prints_the_paired_difference(city, capsys):
    from cli.main import main

    argv = ["load-whatif", "--db", str(city), "--cell", "C0001", "--start", "300", "--horizon", "3", "--samples", "2"]
    assert main([*argv, "--at", "1", "--duration", "1", "--neighbours", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["what"] == "outage" and len(out["cells"]) == 3 and out["scenario_run_id"] == 2
    assert main([*argv, "--at", "3"]) == 2
    assert "--at" in capsys.readouterr().err
    assert _count(city, "load_runs") == 2
