"""`lsdm evaluate --level cell` (engine/evaluation/cell_level.py) on a small city with its environment and a
tiny trained model: the bottom-up cell load scored against a direct cell model (derived data set and model
made once, then reused), the cells' own baselines recomputed here from SQL sums, stored with the model,
the user's active data set untouched; refusals name the field."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cli.main import main as lsdm
from db import open_database
from db.queries import store_dataset
from engine.data.city import CityConfig, generate_city
from engine.env.clip import ClipSettings
from engine.env.pipeline import build_environment
from engine.errors import InputError
from engine.evaluation.cell_level import CELL_METHODS, TEST_HOURS, evaluate_cells
from engine.model.config import resolve_config
from engine.requests import EvaluateRequest
from engine.train import train


@pytest.fixture(scope="module")
def users_city(tmp_path_factory):
    """A 24-user, 10-cell city with its environment and a tiny trained model (its own data directory)."""
    import os

    home = tmp_path_factory.mktemp("cell-level-home")
    old = os.environ.get("LSDM_HOME")
    os.environ["LSDM_HOME"] = str(home)
    database = open_database(str(home / "lsdm.sqlite"))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=24, cells=10, seed=5)))
    build_environment(database, settings=ClipSettings(epochs=1))
    name, config = resolve_config("tiny", epochs=1, windows_per_epoch=1024)
    result = train(database, name, config)
    yield database, result.record_id, home / "lsdm.sqlite"
    database.dispose()
    if old is None:
        os.environ.pop("LSDM_HOME", None)
    else:
        os.environ["LSDM_HOME"] = old


@pytest.fixture(autouse=True)
def _home(users_city, monkeypatch):
    monkeypatch.setenv("LSDM_HOME", str(users_city[2].parent))


def _sql(db: Path, query: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(query, args).fetchall()


def _recorded_cell_load(db: Path, dataset: str) -> dict[tuple[str, int], float]:
    """(cell key, hour) -> MB: the sum of the users the data recorded in the cell, straight from SQL."""
    return {
        (key, hour): total / 1e6
        for key, hour, total in _sql(
            db,
            "SELECT c.key, t.hour, SUM(t.bytes) FROM traffic t JOIN entities e ON e.id = t.entity_id "
            "JOIN datasets d ON d.id = e.dataset_id JOIN locations l ON l.entity_id = t.entity_id AND l.hour = t.hour "
            "JOIN cells c ON c.id = l.cell_id WHERE d.name = ? GROUP BY c.key, t.hour",
            dataset,
        )
    }


def test_the_bottom_up_load_is_scored_against_a_direct_model_and_the_cells_baselines(users_city):
    database, model_id, db = users_city
    ((source, hours),) = _sql(db, "SELECT name, hours FROM datasets WHERE is_active = 1")
    result = evaluate_cells(database, EvaluateRequest(level="cell", cells=4, path_samples=4))
    assert [r["method"] for r in result["rows"]] == list(CELL_METHODS)
    assert result["cells"] == 4 and result["start"] == hours - TEST_HOURS and result["users_forecast"] > 0
    assert result["cells_dataset"] == f"{source}-cells" and result["direct_model_id"] is not None

    # The truth and the two baselines, recomputed from the SQL sums of the recorded traffic.
    recorded = _recorded_cell_load(db, source)
    start = result["start"]
    cells = list(dict.fromkeys(row["cell"] for row in result["per_cell"]))
    before = {c: sum(v for (k, h), v in recorded.items() if k == c and h < start) for c in cells}
    every = {k for k, _ in recorded}
    busiest = sorted(every, key=lambda c: -sum(v for (k, h), v in recorded.items() if k == c and h < start))
    assert set(cells) == set(busiest[:4]) and all(before[c] > 0 for c in cells)
    truth = np.array([[recorded.get((c, start + n), 0.0) for n in range(TEST_HOURS)] for c in cells])
    seasonal = np.array([[recorded.get((c, start - 24 + n), 0.0) for n in range(TEST_HOURS)] for c in cells])
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["seasonal-naive"]["rmse_mb"] == pytest.approx(np.sqrt(np.mean((seasonal - truth) ** 2)), rel=1e-6)
    assert rows["seasonal-naive"]["crps_mb"] == pytest.approx(np.mean(np.abs(seasonal - truth)), rel=1e-6)
    assert rows["seasonal-naive"]["cov90"] is None and rows["bottom-up"]["cov90"] is not None
    assert result["truth_mean_mb"] == pytest.approx(truth.mean(), rel=1e-6)
    for row in result["rows"]:
        assert row["crps_mb"] >= 0 and 0 <= row["brier_busy"] <= 1 and np.isfinite(row["rmse_mb"])
    per_cell = [r for r in result["per_cell"] if r["method"] == "bottom-up"]
    assert len(per_cell) == 4 and all(0 <= r["cov90"] <= 1 for r in per_cell)

    # Stored with the model; the user's active data set stays the active one; the direct model is on the cells.
    metrics = json.loads(_sql(db, "SELECT metrics FROM models WHERE id = ?", model_id)[0][0])
    assert metrics["cell_evaluation"]["rows"] == json.loads(json.dumps(result["rows"]))
    assert _sql(db, "SELECT name FROM datasets WHERE is_active = 1") == [(source,)]
    assert _sql(
        db,
        "SELECT d.name, d.entity_kind FROM models m JOIN datasets d ON d.id = m.dataset_id WHERE m.id = ?",
        result["direct_model_id"],
    ) == [(f"{source}-cells", "cell")]

    # A second evaluation reuses the derived data set and the direct model (same seed: the same scores).
    counts = _sql(db, "SELECT (SELECT COUNT(*) FROM datasets), (SELECT COUNT(*) FROM models)")
    again = evaluate_cells(database, EvaluateRequest(level="cell", cells=4, path_samples=4))
    assert _sql(db, "SELECT (SELECT COUNT(*) FROM datasets), (SELECT COUNT(*) FROM models)") == counts
    assert again["direct_model_id"] == result["direct_model_id"] and again["rows"] == result["rows"]


def test_the_command_line_prints_the_table_and_writes_the_csvs(users_city, tmp_path, capsys):
    _, _, db = users_city
    argv = ["evaluate", "--db", str(db), "--level", "cell", "--cells", "3", "--path-samples", "4"]
    assert lsdm([*argv, "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "Cell-level evaluation" in out and "bottom-up" in out and "hour-of-week-mean" in out
    pooled = (tmp_path / "report" / "cell_level.csv").read_text().splitlines()
    assert pooled[0].startswith("method,rmse_mb,crps_mb,cov90") and len(pooled) == 1 + len(CELL_METHODS)
    assert len((tmp_path / "report" / "cell_level_per_cell.csv").read_text().splitlines()) == 1 + 3 * len(CELL_METHODS)
    assert lsdm([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cells"] == 3


def test_refusals_name_the_field(users_city):
    database, _, db = users_city
    source = _active(db)
    assert lsdm(["data", "aggregate", "--db", str(db), "--name", "other-cells"]) == 0
    assert lsdm(["data", "use", "--db", str(db), source]) == 0
    with sqlite3.connect(db) as con:  # not derived from the source as far as the evaluation knows
        con.execute(
            "UPDATE datasets SET params = json_set(params, '$.aggregated_from', 'elsewhere') WHERE name = 'other-cells'"
        )
    with pytest.raises(InputError) as err:
        evaluate_cells(database, EvaluateRequest(level="cell", dataset="other-cells"))
    assert err.value.field == "level" and "cells" in str(err.value)
    with pytest.raises(InputError) as err:
        EvaluateRequest(level="area").checked()
    assert err.value.field == "level"
    with pytest.raises(InputError) as err:
        EvaluateRequest(level="cell", cells=0).checked()
    assert err.value.field == "cells"


def test_without_training_a_missing_direct_model_is_left_out_with_a_note(users_city):
    database, _, db = users_city
    with sqlite3.connect(db) as con:  # no cell data set derived from the source any more
        con.execute(
            "UPDATE datasets SET params = json_set(params, '$.aggregated_from', 'elsewhere') WHERE entity_kind = 'cell'"
        )
    counts = _sql(db, "SELECT (SELECT COUNT(*) FROM datasets), (SELECT COUNT(*) FROM models)")
    result = evaluate_cells(database, EvaluateRequest(level="cell", cells=2, path_samples=2, train_missing=False))
    assert [r["method"] for r in result["rows"]] == [m for m in CELL_METHODS if m != "direct"]
    assert result["direct_model_id"] is None and any(note.startswith("direct:") for note in result["notes"])
    assert _sql(db, "SELECT (SELECT COUNT(*) FROM datasets), (SELECT COUNT(*) FROM models)") == counts


def _active(db: Path) -> str:
    return _sql(db, "SELECT name FROM datasets WHERE is_active = 1")[0][0]
