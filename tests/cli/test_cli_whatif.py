"""`lsdm whatif`: the What-if page's operation from the command line (WhatIfRequest's flags)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cli.main import main
from db import open_database
from engine.requests import WhatIfRequest
from engine.whatif import load_scenario
from tests.conftest import copy_database


@pytest.fixture
def city(city_db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "city.sqlite"
    copy_database(city_db, copy)
    return copy


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_whatif_stores_both_runs_and_the_scenario_as_the_page_would(city, tmp_path, capsys):
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"location": "cell:C0005", "guidance": 1.5}))
    argv = [
        "whatif",
        "--db",
        str(city),
        "--entity",
        "user:U0003",
        "--start",
        "300",
        "--horizon",
        "3",
        "--samples",
        "4",
        "--sampler",
        "ddim:5",
        "--scenario",
        f"@{scenario}",
        "--name",
        "to C0005",
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["name"] == "to C0005" and [s["scenario_cell"] for s in result["steps"]] == ["C0005"] * 3
    request = WhatIfRequest.from_params(result["params"])
    assert request == WhatIfRequest(
        entity="U0003",
        start=300,
        horizon=3,
        samples=4,
        sampler_steps=5,
        scenario={"location": "cell:C0005", "cell_edits": {}, "a": 0.5, "b": 0.5, "guidance": 1.5},
        name="to C0005",
    )
    stored = load_scenario(open_database(str(city)), result["scenario_id"])
    assert stored["scenario"]["total"] == result["scenario"]["total"]
    assert _count(city, "scenarios") == 1 and _count(city, "forecast_runs") == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--scenario", '{"a": -1}'], "field '--scenario.a'"),
        (
            ["--scenario", '{"cell_edits": {"C0001": {"poi_counts": [1]}}}'],
            "field '--scenario.cell_edits.C0001.poi_counts'",
        ),
        (["--entity", "user:U0003,user:U0004"], "field '--entity': a what-if compares forecasts of one entity"),
        (["--horizon", "0"], "field '--horizon': expected a value from 1 to 168"),
    ],
)
def test_bad_whatif_flags_exit_2_name_the_flag_and_write_nothing(city, extra, message, capsys):
    argv = ["whatif", "--db", str(city), "--entity", "user:U0003", "--start", "300", "--samples", "2", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert _count(city, "scenarios") == 0 and _count(city, "forecast_runs") == 0


def test_a_scenario_that_is_not_json_is_argparses_error(city, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["whatif", "--db", str(city), "--entity", "user:U0003", "--start", "300", "--scenario", "[1"])
    assert exit_info.value.code == 2 and "argument --scenario: expected a JSON object" in capsys.readouterr().err
