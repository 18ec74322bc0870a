"""The Models & evaluation page: the registry with the active model and its loss curve, switching the
active model, training and evaluating from the page (jobs that the worker, drained in the test's
process, runs), and the stored evaluation (Tables III/IV, radar, error by step)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from app import models_data as md
from db import open_database
from db.models import ModelRecord
from db.queries import store_dataset
from engine.data.city import CityConfig, generate_city
from engine.env.clip import ClipSettings
from engine.env.pipeline import build_environment
from engine.evaluation.evaluate import evaluate, progress_messages
from engine.jobs import JobWorker, list_jobs
from engine.model.config import CONFIGS, resolve_config
from engine.train import train
from tests.app.conftest import page
from tests.conftest import copy_database

# --- helpers --------------------------------------------------------------------------------------


def chart_datasets(chart) -> list[list[dict]]:
    """The data sets of a rendered Vega-Lite chart: Streamlit sends them beside the spec, as Arrow."""
    inline = list(json.loads(chart.proto.spec).get("datasets", {}).values())
    return inline + [
        convert_arrow_bytes_to_pandas_df(named.data.data).to_dict("records") for named in chart.proto.datasets
    ]


def lsdm_records(db_path: Path) -> list[ModelRecord]:
    database = open_database(str(db_path))
    with database.session() as session:
        records = session.scalars(select(ModelRecord).where(ModelRecord.kind == "lsdm").order_by(ModelRecord.id)).all()
    database.dispose()
    return list(records)


def drain(db_path: Path) -> list[str]:
    """Run every queued job with the real worker code, in this process; returns their final statuses."""
    database = open_database(str(db_path))
    JobWorker(database).drain()
    statuses = [job.status for job in list_jobs(database)]
    database.dispose()
    return statuses


def models_page(**query: object) -> AppTest:
    at = AppTest.from_file(page("models"), default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = str(value)
    return at.run()


# --- a tiny city with a tiny model and a stored evaluation (built once for this module) -----------


@pytest.fixture(scope="module")
def tiny_city(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """8 users, 16 cells, 4 days; an untrained-encoder environment; the tiny forecaster and its
    no-condition twin (1 epoch each); the tiny forecaster evaluated through engine.evaluation.evaluate (stored
    with it), with the progress messages it sent. About 40 s on a busy 2-core machine."""
    home = tmp_path_factory.mktemp("tiny-home")
    previous = os.environ.get("LSDM_HOME")
    os.environ["LSDM_HOME"] = str(home)  # models are saved under it, by absolute path
    try:
        db_path = home / "tiny.sqlite"
        database = open_database(str(db_path))
        with database.write_session() as session, session.begin():
            store_dataset(session, generate_city(CityConfig(users=8, cells=16, days=4, seed=2)))
        build_environment(database, settings=ClipSettings(epochs=0))
        train(database, "lsdm-no-condition", replace(CONFIGS["tiny"], condition="none", epochs=1), activate=False)
        name, config = resolve_config("tiny", epochs=1)
        model_id = train(database, name, config).record_id
        messages: list[str] = []
        result = evaluate(
            database,
            model_id,
            samples=2,
            steps=3,
            path_users=4,
            include_arima=False,
            include_learned=True,
            train_missing=False,
            progress=messages.append,
        )
        database.dispose()
    finally:
        if previous is None:
            os.environ.pop("LSDM_HOME", None)
        else:
            os.environ["LSDM_HOME"] = previous
    return {"db": db_path, "model_id": model_id, "result": result, "messages": messages}


@pytest.fixture
def tiny_db(tiny_city: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the tiny city's database, which the app opens."""
    copy = tmp_path / "tiny.sqlite"
    copy_database(tiny_city["db"], copy)
    monkeypatch.setenv("LSDM_DB", str(copy))
    return copy


# --- the registry ---------------------------------------------------------------------------------


def test_models_page_lists_the_shipped_model_as_active_with_its_loss_curve(app_db):
    shipped = [r for r in lsdm_records(app_db) if r.is_active]
    assert len(shipped) == 1 and shipped[0].metrics["history"]
    at = models_page()
    assert not at.exception
    registry = at.dataframe[0].value
    active = registry[registry["active"]]
    assert set(active["kind"]) == {"lsdm", "clip"}  # one active forecaster and one active encoder
    assert active.loc[active["kind"] == "lsdm", "id"].tolist() == [shipped[0].id]
    assert at.selectbox(key="model_pick").value == shipped[0].id
    curves = [
        data for chart in at.get("vega_lite_chart") for data in chart_datasets(chart) if data and "val_loss" in data[0]
    ]
    assert curves == [shipped[0].metrics["history"]]
    assert any("Active" in s.value for s in at.success)


def test_models_page_without_an_evaluation_shows_the_command_that_makes_one(app_db):
    shipped = next(r for r in lsdm_records(app_db) if r.is_active)
    assert "evaluation" not in shipped.metrics
    at = models_page()
    assert any(f"lsdm evaluate --model {shipped.id}" in info.value for info in at.info)


def test_making_another_model_active_switches_the_active_flag(app_db):
    shipped = next(r for r in lsdm_records(app_db) if r.is_active)
    database = open_database(str(app_db))
    with database.write_session() as session, session.begin():
        second = ModelRecord(
            name="second",
            kind="lsdm",
            path=shipped.path,
            sha256=shipped.sha256,
            config=shipped.config,
            metrics={"best_val_loss": 0.5, "history": []},
            dataset_id=shipped.dataset_id,
            is_active=False,
        )
        session.add(second)
        session.flush()
        second_id = second.id
    database.dispose()
    at = models_page(model=second_id)
    assert at.selectbox(key="model_pick").value == second_id
    at.button(key="activate").click().run()
    assert not at.exception
    assert {r.id: r.is_active for r in lsdm_records(app_db)} == {shipped.id: False, second_id: True}
    registry = at.dataframe[0].value
    assert registry.loc[registry["kind"] == "lsdm"].set_index("id")["active"].to_dict() == {
        second_id: True,
        shipped.id: False,
    }


def test_a_deep_link_to_an_unknown_model_warns_and_shows_the_active_one(app_db):
    shipped = next(r for r in lsdm_records(app_db) if r.is_active)
    at = models_page(model=99_999)
    assert any("model=99999" in w.value for w in at.warning)
    assert at.selectbox(key="model_pick").value == shipped.id


# --- training -------------------------------------------------------------------------------------


def test_training_the_tiny_configuration_from_the_page_registers_a_new_active_model(tiny_db, tiny_city):
    before = {r.id for r in lsdm_records(tiny_db)}
    at = models_page()
    at.selectbox(key="train_config").select("tiny")
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_seed").set_value(3)
    at.button(key="train_submit").click().run()
    assert not at.exception
    assert [r.id for r in lsdm_records(tiny_db)] == sorted(before)  # queued, not trained in the app
    assert any("Train a forecaster" in m.value for m in at.markdown)
    assert drain(tiny_db) == ["done"]
    at.run()
    assert not at.exception
    new = [r for r in lsdm_records(tiny_db) if r.id not in before]
    assert len(new) == 1
    model = new[0]
    assert model.name == "tiny" and model.is_active and model.config["seed"] == 3
    assert model.metrics["epochs_run"] == 1 and len(model.metrics["history"]) == 1
    assert Path(model.path).is_dir()
    assert any(f"Trained model #{model.id}" in s.value for s in at.success)
    assert at.selectbox(key="model_pick").value == model.id
    assert at.query_params["model"] == str(model.id)


def test_a_running_training_shows_its_loss_curve_so_far(tiny_db, tiny_city):
    """While the worker trains (a thread running the real worker), the page following the job draws the
    epochs reported so far; cancelling from the job's button stops it and nothing is registered."""
    import threading
    import time

    from engine.jobs import enqueue, get_job

    database = open_database(str(tiny_db))
    before = {r.id for r in lsdm_records(tiny_db)}
    job_id = enqueue(database, "train", {"config": "tiny", "epochs": 500})
    worker = JobWorker(database, heartbeat=0.2)
    thread = threading.Thread(target=worker.drain)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while len((get_job(database, job_id).result or {}).get("history", [])) < 2:
            assert time.monotonic() < deadline, "no epoch reported"
            time.sleep(0.1)
        at = models_page(job=job_id)
        assert not at.exception
        curves = [
            data
            for chart in at.get("vega_lite_chart")
            for data in chart_datasets(chart)
            if data and "val_loss" in data[0]
        ]
        epochs = [row["epoch"] for row in curves[-1]]  # the last chart on the page: the running job's
        assert len(epochs) >= 2 and epochs[:2] == [1, 2]
        at.button(key=f"follow_cancel_{job_id}").click().run()
        deadline = time.monotonic() + 60
        while get_job(database, job_id).active:
            assert time.monotonic() < deadline, "the cancellation did not take effect"
            time.sleep(0.1)
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert get_job(database, job_id).status == "cancelled"
    assert {r.id for r in lsdm_records(tiny_db)} == before


# --- evaluation -----------------------------------------------------------------------------------


def test_fracast_is_scored_on_a_subset_beside_every_row_on_the_same_windows(tiny_db, tiny_city, monkeypatch):
    """The pretrained fracast row: one entity's test day, every other row scored again on those windows."""
    pytest.importorskip("fracast")
    monkeypatch.setenv("LSDM_HOME", str(tiny_db.parent))
    database = open_database(str(tiny_db))
    try:
        result = evaluate(
            database,
            tiny_city["model_id"],
            samples=2,
            steps=3,
            path_users=2,
            include_arima=False,
            include_learned=False,
            train_missing=False,
            fracast_entities=1,
            store=False,
            report_dir=tiny_db.parent / "report",
        )
    finally:
        database.dispose()
    table = result["fracast_subset"]
    report = (tiny_db.parent / "report" / "report.md").read_text()
    assert "## Table III on the fracast subset (24 test windows of 1 entities)" in report
    assert (tiny_db.parent / "report" / "fracast_subset.csv").read_text().count("\n") == 1 + 6  # header + rows
    assert table["entities"] == 1 and table["windows"] == 24
    rows = {row["method"]: row for row in table["rows"]}
    assert list(rows) == ["seasonal-naive", "hour-of-week-mean", "ridge", "lsdm-no-condition", "lsdm", "fracast"]
    full = {row["method"]: row for row in result["rows"]}
    assert rows["lsdm"]["mse"] != full["lsdm"]["mse"]  # scored on the subset, not copied from the full table
    assert all(0 <= row["cov90"] <= 1 and row["crps"] >= 0 for row in rows.values())
    assert any(note.startswith("fracast: the pretrained") for note in result["notes"])


def test_the_stored_evaluation_is_shown_as_the_papers_tables_and_charts(tiny_db, tiny_city):
    result = tiny_city["result"]
    at = models_page(model=tiny_city["model_id"])
    assert not at.exception
    table3, table4 = at.dataframe[1].value, at.dataframe[2].value
    assert list(table3.columns) == ["method", "MSE", "RMSE", "MAE", "CS", "R²", "CRPS", "cov50", "cov90"]
    assert table3["method"].tolist() == [
        "seasonal-naive",
        "hour-of-week-mean",
        "ridge",
        "lightgbm",
        "patchtst",
        "lsdm-no-condition",
        "lsdm",
    ]
    assert table3["MSE"].tolist() == [row["mse"] for row in result["rows"]]
    assert table3["cov90"].tolist() == [row["cov90"] for row in result["rows"]]
    assert table4["method"].tolist() == ["shuffled-environment", "lsdm-no-condition", "lsdm"]
    assert at.multiselect(key="radar_methods").value == ["lsdm", "lsdm-no-condition", "hour-of-week-mean"]
    data = [d for chart in at.get("vega_lite_chart") for d in chart_datasets(chart)]
    steps = next(d for d in data if d and "mse" in d[0])
    assert {(row["method"], row["step"]): row["mse"] for row in steps} == {
        (method, i + 1): value for method, values in result["mse_by_step"].items() for i, value in enumerate(values)
    }
    radar_points = next(d for d in data if d and {"series", "order", "value"} <= set(d[0]))
    lsdm_r2 = result["per_service_r2"]["lsdm"]
    assert {r["service"]: r["value"] for r in radar_points if r["series"] == "lsdm"} == {
        s: max(0.0, v) for s, v in lsdm_r2.items()
    }
    for label, key in (("environment condition", "condition_gain"), ("own cells", "environment_gain")):
        gain = next(m for m in at.metric if "R² gain" in m.label and label in m.label)
        interval = result[f"{key}_interval"]
        assert gain.value == f"{result[f'{key}_r2_percent']:+.2f} %"
        assert gain.delta == f"95 % interval over users: {interval['low']:+.2f} to {interval['high']:+.2f} %"


def test_a_model_below_the_seasonal_floor_is_flagged(tiny_db, tiny_city):
    database = open_database(str(tiny_db))
    with database.write_session() as session, session.begin():
        record = session.get(ModelRecord, tiny_city["model_id"])
        evaluation = dict(record.metrics["evaluation"])
        evaluation["seasonal_floor"] = {
            "clears": False,
            "rmse": 0.1234,
            "rmse_method": "hour-of-week-mean",
            "crps": 0.0567,
            "crps_method": "seasonal-naive",
        }
        record.metrics = {**record.metrics, "evaluation": evaluation}
    database.dispose()
    at = models_page(model=tiny_city["model_id"])
    assert not at.exception
    [warning] = [w.value for w in at.warning if "seasonal floor" in w.value]
    assert "RMSE 0.1234 by hour-of-week-mean" in warning and "CRPS 0.0567 by seasonal-naive" in warning


def test_run_evaluation_from_the_page_stores_a_new_evaluation(tiny_db, tiny_city):
    at = models_page(model=tiny_city["model_id"])
    stored_before = next(r for r in lsdm_records(tiny_db) if r.id == tiny_city["model_id"]).metrics["evaluation"]
    at.number_input(key="eval_samples").set_value(1)
    at.number_input(key="eval_steps").set_value(2)
    at.number_input(key="eval_users").set_value(2)
    at.radio(key="eval_location").set_value("habitual")
    at.checkbox(key="eval_arima").uncheck()  # the request's defaults are the full tables: minutes
    at.checkbox(key="eval_train").uncheck()
    at.checkbox(key="eval_learned").uncheck()  # fitted and scored by the tiny_city fixture
    at.button(key="eval_submit").click().run()
    assert not at.exception
    assert drain(tiny_db) == ["done"]
    at.run()
    assert not at.exception
    assert any(f"Evaluated model #{tiny_city['model_id']}" in s.value for s in at.success)
    stored = next(r for r in lsdm_records(tiny_db) if r.id == tiny_city["model_id"]).metrics["evaluation"]
    assert stored["settings"]["samples"] == 1 and stored["settings"]["steps"] == 2
    assert stored["settings"]["location"] == stored["location"] == "habitual"
    assert stored["evaluated_at"] >= stored_before["evaluated_at"]
    assert all(len(v) == 2 for v in stored["mse_by_step"].values())
    assert "1 samples per window, 2 recursive steps" in " ".join(c.value for c in at.caption)
    assert "at each user's habitual cells" in " ".join(c.value for c in at.caption)


def test_a_cell_level_evaluation_from_the_page_is_stored_and_shown(tiny_db, tiny_city):
    at = models_page(model=tiny_city["model_id"])
    assert not any("Cell level" in m.value for m in at.markdown)  # none stored yet
    at.radio(key="eval_level").set_value("cell")
    at.number_input(key="eval_cells").set_value(3)
    at.number_input(key="eval_path_samples").set_value(2)
    at.button(key="eval_submit").click().run()
    assert not at.exception
    assert drain(tiny_db) == ["done"]  # it derives the cells' data set, embeds them and trains the direct model
    at.run()
    assert not at.exception
    metrics = next(r for r in lsdm_records(tiny_db) if r.id == tiny_city["model_id"]).metrics
    stored = metrics["cell_evaluation"]
    assert stored["settings"]["level"] == "cell" and stored["cells"] == 3 and stored["samples"] == 2
    assert metrics["evaluation"]["rows"] == tiny_city["result"]["rows"]  # the user-level one stays beside it
    assert any("Cell level" in m.value for m in at.markdown)
    table = next(d.value for d in at.dataframe if "Brier (busy hour)" in d.value.columns)
    assert table["method"].tolist() == [row["method"] for row in stored["rows"]]
    assert table["method"].tolist() == ["bottom-up", "direct", "users-point-sum", "seasonal-naive", "hour-of-week-mean"]
    assert table["CRPS (MB)"].tolist() == pytest.approx([row["crps_mb"] for row in stored["rows"]])
    assert any(f"direct model #{stored['direct_model_id']}" in c.value for c in at.caption)


def test_evaluation_progress_length_matches_the_messages_the_engine_sends(tiny_city):
    """The evaluate job's progress bar (engine/jobs/kinds.py) is as long as the engine's messages."""
    database = open_database(str(tiny_city["db"]))
    dataset_id = next(r for r in lsdm_records(tiny_city["db"])).dataset_id
    registered = {m.name for m in md.list_models(database, dataset_id) if m.kind == "lsdm"}
    database.dispose()
    expected = progress_messages(
        registered, include_arima=False, train_missing=False, shuffled=True, include_learned=True
    )
    # 2 baselines, ridge, lightgbm, patchtst, 2 one-step passes, 2 path passes, the shuffled-environment pass
    assert expected == len(tiny_city["messages"]) == 10


# --- the functions behind the page ----------------------------------------------------------------


def test_loss_curve_draws_exactly_the_recorded_history():
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "seconds": 1.5},
        {"epoch": 2, "train_loss": 0.7, "val_loss": 0.75, "seconds": 3.0},
    ]
    spec = md.loss_curve(history).to_dict()
    assert list(spec["datasets"].values()) == [history]
    assert spec["transform"][0] == {"fold": ["train_loss", "val_loss"], "as": ["series", "loss"]}


def test_metric_table_labels_the_eight_metrics_as_the_paper_does():
    rows = [
        {
            "method": "lsdm",
            "mse": 0.1,
            "rmse": 0.316,
            "mae": 0.2,
            "cs": 0.9,
            "r2": 0.5,
            "crps": 0.15,
            "cov50": 0.48,
            "cov90": 0.88,
            "seconds": 3.0,
            "model_id": 4,
        }
    ]
    table = md.metric_table(rows)
    assert table.to_dict("records") == [
        {
            "method": "lsdm",
            "MSE": 0.1,
            "RMSE": 0.316,
            "MAE": 0.2,
            "CS": 0.9,
            "R²": 0.5,
            "CRPS": 0.15,
            "cov50": 0.48,
            "cov90": 0.88,
        }
    ]


def test_evaluation_progress_counts_training_of_missing_comparison_models():
    # 3 baselines + ridge + 4 trainings + 5 one-step passes + 2 path passes
    assert progress_messages({"lsdm"}, include_arima=True, train_missing=True) == 15
    assert progress_messages({"lsdm"}, include_arima=False, train_missing=False) == 2 + 1 + 1 + 1
    assert progress_messages({"lsdm"}, include_arima=False, train_missing=False, shuffled=True) == 2 + 1 + 1 + 1 + 1


def test_models_page_on_an_empty_database_says_where_data_comes_from(empty_db):
    at = models_page()
    assert not at.exception
    assert any("No data yet" in info.value for info in at.info)
