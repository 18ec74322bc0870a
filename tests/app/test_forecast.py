"""The Forecast page: the form queues a forecast job, which the worker (engine.jobs.JobWorker, drained
in the test's process) runs and stores with its parameters, and the page then draws as fans with truth;
?job=ID follows a job; ?run=ID reopens a stored run without recomputing; invalid input and engine
errors are explained and write nothing; exports, scores and the run history; plus the functions behind
it."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import func, select, update
from streamlit.testing.v1 import AppTest

from app import forecast_data as fd
from db import open_database
from db.models import Entity, ForecastRun, Job, ModelRecord
from db.queries import entity_matrix, get_dataset
from engine.evaluation.metrics import score
from engine.forecast import ForecastContext, load_context, run_forecast
from engine.jobs import JobWorker, enqueue, get_job
from engine.requests import ForecastRequest
from tests.app.conftest import page, query

MONDAY = datetime(2016, 4, 18)


# --- helpers --------------------------------------------------------------------------------------------


def chart_datasets(element) -> list[pd.DataFrame]:
    """The data sets a rendered Vega-Lite chart carries (Streamlit moves them into Arrow tables)."""
    frames = [pa.ipc.open_stream(d.data.data).read_pandas() for d in element.proto.datasets]
    inline = json.loads(element.proto.spec).get("datasets", {})
    return frames + [pd.DataFrame(rows) for rows in inline.values()]


def chart_data(element) -> pd.DataFrame:
    """The main data set of a chart: the one with the most columns (radars also carry rings and spokes)."""
    return max(chart_datasets(element), key=lambda frame: len(frame.columns))


def fans_by_title(at: AppTest) -> dict[str, pd.DataFrame]:
    """Fan charts (median + bands per step) by their title."""
    out = {}
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        data = chart_data(element)
        if {"step", "median", "q05", "q95"} <= set(data.columns):
            title = spec.get("title")
            out[title if isinstance(title, str) else title["text"]] = data.sort_values("step")
    return out


def observed_before(at: AppTest, title: str) -> pd.DataFrame:
    """The observed hours drawn before a fan's forecast (its data set with an ``observed`` column)."""
    for element in at.get("vega_lite_chart"):
        if title in json.dumps(json.loads(element.proto.spec), ensure_ascii=False):
            for data in chart_datasets(element):
                if "observed" in data.columns:
                    return data.sort_values("step")
    raise AssertionError(f"no observed hours in {title!r}")


def test_a_single_far_path_clips_the_90_percent_band_instead_of_flattening_the_median():
    """Issue 19: a 90 % band to 75 MB while the median was near 1 MB made the median a flat line."""
    from app.charts import FAN_HEADROOM, fan_chart, fan_top

    steps = pd.DataFrame(
        {"label": ["a", "b", "c"], "step": [0, 1, 2], "q05": [0.1] * 3, "q25": [0.5] * 3, "median": [1.0, 1.2, 0.9],
         "q75": [1.5, 1.6, 1.4], "q95": [2.0, 75.0, 2.2], "truth": [1.1, np.nan, 1.0]}
    )  # fmt: skip
    top, clipped = fan_top(steps)
    assert clipped and top == pytest.approx(FAN_HEADROOM * 1.6)
    spec = fan_chart(steps, service="video", color="#4e79a7").to_dict()
    assert spec["title"]["subtitle"] == f"90 % band clipped at {top:.3g} MB"
    assert spec["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, top]
    calm = steps.assign(q95=[2.0, 2.3, 2.2])
    assert fan_top(calm) == (pytest.approx(2.3), False)  # within the headroom: the whole band is shown
    assert fan_chart(calm, service="video", color="#4e79a7").to_dict()["title"] == "video"
    history = pd.DataFrame({"label": ["y", "z"], "step": [-2, -1], "observed": [9.0, 0.5]})
    assert fan_top(steps, history) == (pytest.approx(9.0 * FAN_HEADROOM), True)  # the past counts too


def radar_data(at: AppTest) -> pd.DataFrame:
    for element in at.get("vega_lite_chart"):
        for data in chart_datasets(element):
            if {"series", "service", "value", "order"} <= set(data.columns):
                return data
    raise AssertionError("no radar on the page")


def y_domain(spec: dict) -> list | None:
    """The fixed y domain of a (possibly layered) chart spec, if any."""
    for layer in [spec, *spec.get("layer", [])]:
        domain = layer.get("encoding", {}).get("y", {}).get("scale", {}).get("domain")
        if domain is not None:
            return domain
    return None


def run_rows(db_path: Path) -> list[ForecastRun]:
    database = open_database(str(db_path))
    with database.session() as session:
        rows = list(session.scalars(select(ForecastRun).order_by(ForecastRun.id)))
    database.dispose()
    return rows


def services_and_matrix(db_path: Path, key: str) -> tuple[list[str], np.ndarray]:
    database = open_database(str(db_path))
    with database.session() as session:
        dataset = get_dataset(session)
        entity_id = session.scalar(select(Entity.id).where(Entity.dataset_id == dataset.id, Entity.key == key))
        matrix = entity_matrix(session, entity_id, dataset.hours, len(dataset.services))
        services = list(dataset.services)
    database.dispose()
    return services, matrix


@pytest.fixture(scope="module")
def context(city_db: Path) -> ForecastContext:
    """The shipped model and the city, loaded once; valid for every copy of the city database."""
    database = open_database(str(city_db))
    loaded = load_context(database)
    database.dispose()
    return loaded


def stored_run(db_path: Path, context: ForecastContext, **params) -> dict:
    database = open_database(str(db_path))
    result = run_forecast(database, ForecastRequest.from_params(params), context=context)
    database.dispose()
    return result


def forecast_page(**params: str) -> AppTest:
    at = AppTest.from_file(page("forecast"), default_timeout=120)
    for name, value in params.items():
        at.query_params[name] = value
    return at.run()


def drain(db_path: Path) -> int:
    """Run every queued job with the real worker code, in this process; returns how many ran."""
    database = open_database(str(db_path))
    try:
        return JobWorker(database).drain()
    finally:
        database.dispose()


def jobs_of(db_path: Path) -> list[tuple[int, str, str]]:
    """(id, kind, status) of every job."""
    database = open_database(str(db_path))
    with database.session() as session:
        rows = [(job.id, job.kind, job.status) for job in session.scalars(select(Job).order_by(Job.id))]
    database.dispose()
    return rows


def fill_small_request(at: AppTest, start: int) -> None:
    at.multiselect(key="fc_users").set_value(["U0001"])
    at.select_slider(key="fc_start").set_value(start)
    at.number_input(key="fc_horizon").set_value(3)
    at.number_input(key="fc_samples").set_value(4)
    at.number_input(key="fc_steps").set_value(2)


# --- the page -------------------------------------------------------------------------------------------


def test_the_form_queues_a_forecast_job_and_the_page_draws_the_stored_run_with_truth(app_db: Path) -> None:
    at = forecast_page()
    assert not at.exception
    fill_small_request(at, start=300)
    at.button(key="fc_run").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    [(job_id, kind, status)] = jobs_of(app_db)
    assert (kind, status) == ("forecast", "queued") and run_rows(app_db) == []  # nothing ran in the app
    assert query(at, "job") == str(job_id)
    assert [p.proto.text for p in at.get("progress")] == ["waiting for the worker"]

    assert drain(app_db) == 1
    at.run()
    assert not at.exception and not at.error
    rows = run_rows(app_db)
    assert len(rows) == 1
    assert get_job(open_database(str(app_db)), job_id).ref_id("forecast_run") == rows[0].id
    assert query(at, "job") is None and not at.get("progress")
    params = rows[0].params
    keys = (
        "entities",
        "entity_kind",
        "start",
        "horizon",
        "samples",
        "sampler",
        "sampler_steps",
        "location",
        "cells",
        "guidance",
        "seed",
        "noise",
    )
    assert {k: params[k] for k in keys} == {
        "entities": ["U0001"],
        "entity_kind": "user",
        "start": 300,
        "horizon": 3,
        "samples": 4,
        "sampler": "ddim",
        "sampler_steps": 2,
        "location": "habitual",
        "cells": [],
        "guidance": 1.0,
        "seed": 0,
        "noise": "antithetic",
    }
    assert at.query_params["run"] in (str(rows[0].id), [str(rows[0].id)])

    services, matrix = services_and_matrix(app_db, "U0001")
    fans = fans_by_title(at)
    assert set(services) <= set(fans)  # one fan per service ...
    assert "Total traffic · user:U0001" in fans  # ... and one of the total
    for k, name in enumerate(services):
        fan = fans[name]
        assert len(fan) == 3  # one row per forecast hour
        assert list(fan["label"]) == ["Sat 12:00", "Sat 13:00", "Sat 14:00"]  # hour 300 = Sat 30 Apr 12:00
        np.testing.assert_allclose(fan["truth"], matrix[300:303, k] / 1e6)  # truth overlaid, in MB
        assert (fan["q05"] <= fan["median"] + 1e-12).all() and (fan["median"] <= fan["q95"] + 1e-12).all()
    # Each fan follows the user's last 48 observed hours (issue 19), with a legend and readable tooltips.
    history = observed_before(at, "Total traffic · user:U0001")
    assert list(history["step"]) == list(range(-48, 0))
    np.testing.assert_allclose(history["observed"], matrix[252:300].sum(axis=1) / 1e6)
    assert history["label"].iloc[-1] == "Sat 11:00"
    spec = next(json.loads(e.proto.spec) for e in at.get("vega_lite_chart") if "Total traffic" in e.proto.spec)
    assert spec["title"] == "Total traffic · user:U0001"
    colours = [layer["encoding"]["color"] for layer in spec["layer"]]
    assert colours[0]["scale"]["domain"] == ["observed", "truth", "median", "50 % of paths", "90 % of paths"]
    tooltips = [t for layer in spec["layer"] for t in layer["encoding"].get("tooltip", [])]
    assert {t["title"] for t in tooltips} >= {"hour", "median (MB)", "5 % (MB)", "95 % (MB)", "observed (MB)"}
    assert all(t.get("format") == ".3r" for t in tooltips if t["title"] != "hour")
    radar = radar_data(at)
    assert set(radar["series"]) == {"truth", "forecast"}
    metrics = at.dataframe[1].value  # parameters, then scores
    assert list(metrics["entity"]) == ["user:U0001"]
    assert np.isfinite(metrics[["mse", "rmse", "mae", "cs", "r2", "crps", "cov50", "cov90", "mae_mb"]].to_numpy()).all()


def test_reopening_a_stored_run_shows_it_without_writing_a_new_row(app_db: Path, context: ForecastContext) -> None:
    run = stored_run(
        app_db, context, entity="user:U0002,user:U0003", start=320, horizon=4, samples=5, sampler="ddim:3", seed=7
    )
    before = len(run_rows(app_db))
    at = forecast_page(run=str(run["run_id"]))
    assert not at.exception
    assert len(run_rows(app_db)) == before
    assert at.selectbox(key=f"fc_entity_{run['run_id']}").options == ["user:U0002", "user:U0003"]
    fans = fans_by_title(at)
    first = run["entities"][0]["steps"]
    for name in run["services"]:
        assert len(fans[name]) == 4
        np.testing.assert_allclose(fans[name]["median"], [s["services"][name]["median"] / 1e6 for s in first])
    parameters = dict(zip(at.dataframe[0].value["parameter"], at.dataframe[0].value["value"], strict=False))
    assert parameters["sampler"] == "ddim:3" and parameters["seed"] == "7" and parameters["samples"] == "5"

    at.selectbox(key=f"fc_entity_{run['run_id']}").set_value("user:U0003").run()
    assert not at.exception
    second = run["entities"][1]["steps"]
    name = run["services"][0]
    np.testing.assert_allclose(fans_by_title(at)[name]["median"], [s["services"][name]["median"] / 1e6 for s in second])
    assert len(run_rows(app_db)) == before


def test_an_every_entity_run_opens_with_its_parts_folder_and_the_city_total(
    app_db: Path, context: ForecastContext, tmp_path: Path
) -> None:
    """`lsdm forecast --entity all` stores one row naming its Parquet parts: the page shows where they are and the
    data set's total per hour, and the history lists it as one run of every entity."""
    database = open_database(str(app_db))
    request = ForecastRequest(start=300, every=True, horizon=2, samples=2, out=str(tmp_path / "parts"))
    run = run_forecast(database, request, context=context)
    at = forecast_page(run=str(run["run_id"]))
    assert not at.exception, at.exception
    (note,) = [i.value for i in at.info if "every entity" in i.value]
    assert "(500)" in note and str(tmp_path / "parts") in note and "10,000 rows" in note
    total = at.dataframe[1].value
    assert list(total["hour"]) == [step["label"] for step in run["every"]["total"]]
    np.testing.assert_allclose(total["median MB"], [s["total"]["median"] / 1e6 for s in run["every"]["total"]])
    with database.session() as session:
        history = fd.run_history(session, context.dataset_id, MONDAY, 336)
    (row,) = history[history["run"] == run["run_id"]].to_dict("records")
    assert row["entity"] == "every entity" and row["users"] == 500


def test_an_unknown_run_is_reported_and_opens_once_it_exists(app_db: Path, context: ForecastContext) -> None:
    at = forecast_page(run="1")
    assert not at.exception
    assert any("No forecast run 1" in w.value for w in at.warning)
    run = stored_run(app_db, context, entity="user:U0001", start=300, horizon=2, samples=2, sampler="ddim:2")
    assert run["run_id"] == 1
    at.run()  # the earlier miss was not cached
    assert not at.warning
    assert fans_by_title(at)


def test_start_below_the_model_history_shows_the_message_and_writes_nothing(app_db: Path) -> None:
    at = forecast_page(hour="5")
    assert not at.exception
    assert at.select_slider(key="fc_start").value == 5
    assert any("24 hours of history" in e.value for e in at.error)  # shown at once, under the field
    fill_small_request(at, start=5)
    at.run()
    assert not at.exception
    messages = [e.value for e in at.error]
    assert any("24 hours of history" in m for m in messages)
    assert at.button(key="fc_run").disabled  # the Run button waits for a valid start
    assert run_rows(app_db) == [] and jobs_of(app_db) == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fc_horizon", 9999, "Horizon: expected a value from 1 to 168, got 9999"),
        ("fc_samples", 100000, "Samples: expected a value from 1 to "),
        ("fc_horizon", 0, "Horizon: expected a value from 1 to 168, got 0"),
    ],
)
def test_an_out_of_range_number_is_shown_at_its_field_and_disables_the_run(app_db: Path, key, value, message) -> None:
    """Issue 19: 9999 hours showed red in the browser yet the forecast ran as 24 h, silently."""
    at = forecast_page(hour="300")
    at.number_input(key=key).set_value(value).run()
    assert not at.exception
    assert at.number_input(key=key).value == value  # kept as typed, not replaced
    assert any(e.value.startswith(message) for e in at.error), [e.value for e in at.error]
    assert at.button(key="fc_run").disabled  # nothing to click (AppTest refuses, as a browser would)
    assert jobs_of(app_db) == [] and run_rows(app_db) == []


def test_a_failed_forecast_job_shows_the_workers_reason_and_writes_nothing(app_db: Path, tmp_path: Path) -> None:
    gone = tmp_path / "removed-model"  # the active model's folder is gone: the worker cannot load it
    database = open_database(str(app_db))
    with database.write_session() as session, session.begin():
        session.execute(
            update(ModelRecord)
            .where(ModelRecord.is_active.is_(True), ModelRecord.kind == "lsdm")
            .values(path=str(gone))
        )
    database.dispose()
    at = forecast_page()
    fill_small_request(at, start=300)
    at.button(key="fc_run").click().run()
    assert drain(app_db) == 1
    at.run()
    assert not at.exception
    [(job_id, _, status)] = jobs_of(app_db)
    assert status == "failed"
    reason = get_job(open_database(str(app_db)), job_id).error
    assert str(gone) in reason
    assert [e.value for e in at.error] == [f"Forecast failed: {reason}"]
    assert run_rows(app_db) == [] and query(at, "run") is None
    at.run()  # shown once: the page no longer follows the job
    assert not at.error and query(at, "job") is None


def test_a_job_link_follows_the_job_and_opens_its_run_when_the_worker_is_done(app_db: Path) -> None:
    database = open_database(str(app_db))
    job_id = enqueue(
        database, "forecast", {"entity": "user:U0004", "start": 310, "horizon": 2, "samples": 3, "sampler": "ddim:2"}
    )
    database.dispose()
    at = forecast_page(job=str(job_id))
    assert not at.exception
    assert any(f"job {job_id}" in m.value for m in at.markdown)
    assert [p.proto.text for p in at.get("progress")] == ["waiting for the worker"]
    assert any("No worker is running" in w.value for w in at.warning)  # no `lsdm worker` in this test
    assert run_rows(app_db) == []

    assert drain(app_db) == 1
    at.run()
    assert not at.exception and not at.warning
    [run] = run_rows(app_db)
    assert run.params["entities"] == ["U0004"] and run.params["entity_kind"] == "user" and run.params["horizon"] == 2
    assert query(at, "run") == str(run.id) and query(at, "job") is None
    assert at.subheader[0].value.startswith(f"Run {run.id} · user:U0004 ")


def test_a_link_to_an_unknown_job_warns_and_shows_the_form(app_db: Path) -> None:
    at = forecast_page(job="999")
    assert not at.exception
    assert any("`job=999`: there is no such job" in w.value for w in at.warning)
    assert at.button(key="fc_run") is not None and query(at, "job") is None


def test_deep_link_prefills_users_start_and_horizon(app_db: Path) -> None:
    at = forecast_page(user="U0003,U0009", hour="100", horizon="6")
    assert not at.exception
    assert at.multiselect(key="fc_users").value == ["U0003", "U0009"]
    assert at.select_slider(key="fc_start").value == 100
    assert at.number_input(key="fc_horizon").value == 6
    at.number_input(key="fc_horizon").set_value(8).run()  # the user's own change is kept on rerun
    at.run()
    assert at.number_input(key="fc_horizon").value == 8


def test_forecast_page_without_a_model_explains_how_to_get_one(app_db: Path) -> None:
    database = open_database(str(app_db))
    with database.write_session() as session, session.begin():
        session.execute(update(ModelRecord).values(is_active=False))
    database.dispose()
    at = forecast_page()
    assert not at.exception
    assert any("lsdm train" in i.value and "lsdm assets install" in i.value for i in at.info)
    assert not at.button


def test_forecast_page_on_an_empty_database_explains_how_to_get_data(empty_db: Path) -> None:
    at = AppTest.from_file(page("forecast"), default_timeout=60).run()
    assert not at.exception
    assert any("No data yet" in i.value for i in at.info)


def test_run_history_lists_runs_newest_first_and_compares_two(app_db: Path, context: ForecastContext) -> None:
    first = stored_run(app_db, context, entity="user:U0001", start=300, horizon=3, samples=3, sampler="ddim:2")
    second = stored_run(
        app_db,
        context,
        entity="user:U0001",
        start=310,
        horizon=2,
        samples=3,
        sampler="ddpm",
        location="stay",
        guidance=2.0,
        seed=3,
    )
    at = forecast_page()
    history = at.dataframe[0].value
    assert list(history["run"]) == [second["run_id"], first["run_id"]]
    newest = history.iloc[0]
    assert (
        newest["start"],
        newest["horizon"],
        newest["samples"],
        newest["sampler"],
        newest["location"],
        newest["guidance"],
        newest["seed"],
    ) == (310, 2, 3, "ddpm", "stay", 2.0, 3)
    at.multiselect(key="fc_compare").set_value([first["run_id"], second["run_id"]]).run()
    assert not at.exception
    charts = at.get("vega_lite_chart")
    assert sorted(len(chart_data(e)) for e in charts) == [2, 3]  # two total-traffic fans, side by side ...
    domains = [y_domain(json.loads(e.proto.spec)) for e in charts]
    top = max(max(chart_data(e)["q95"]) for e in charts)
    assert domains == [[0, pytest.approx(top)]] * 2  # ... on one y scale, so that they compare
    at.radio(key="fc_compare_view").set_value("Per-service median").run()
    lines = at.get("vega_lite_chart")
    assert sorted(len(chart_data(e)) for e in lines) == [2 * 10, 3 * 10]
    assert y_domain(json.loads(lines[0].proto.spec)) == y_domain(json.loads(lines[1].proto.spec))


def test_history_labels_runs_by_kind_filters_them_and_an_opened_run_fills_the_form(
    app_db: Path, context: ForecastContext
) -> None:
    """Issue 19: what-if baselines and scenarios were listed as ordinary forecasts with identical labels, and
    opening a run left the form showing another user's settings."""
    from engine.requests import WhatIfRequest
    from engine.whatif import Scenario, load_whatif_context, run_whatif

    plain = stored_run(app_db, context, entity="user:U0004", start=320, horizon=5, samples=3, sampler="ddim:3", seed=9)
    database = open_database(str(app_db))
    request = WhatIfRequest.from_params(
        {"entity": "user:U0001", "start": 300, "horizon": 2, "samples": 2, "seed": 1,
         "scenario": Scenario(guidance=2.0).to_dict()}
    )  # fmt: skip
    run_whatif(database, request, context=load_whatif_context(database))
    database.dispose()
    at = forecast_page()
    history = at.dataframe[0].value
    assert sorted(history["kind"]) == ["forecast", "what-if baseline", "what-if scenario"]
    labels = at.multiselect(key="fc_compare").options  # as shown: told apart by kind, seed and time
    assert len(set(labels)) == 3 and sum("what-if scenario" in label for label in labels) == 1
    at.pills(key="fc_history_kinds").set_value(["forecast"]).run()
    assert list(at.dataframe[0].value["run"]) == [plain["run_id"]]

    at = forecast_page(run=str(plain["run_id"]))
    assert not at.exception
    assert at.multiselect(key="fc_users").value == ["U0004"]
    assert (at.select_slider(key="fc_start").value, at.number_input(key="fc_horizon").value) == (320, 5)
    assert (at.number_input(key="fc_seed").value, at.number_input(key="fc_steps").value) == (9, 3)
    at.number_input(key="fc_horizon").set_value(7).run()  # the user's own change is kept on rerun
    assert at.number_input(key="fc_horizon").value == 7 and at.multiselect(key="fc_users").value == ["U0004"]


# --- the functions behind it --------------------------------------------------------------------------


def test_export_has_one_row_per_entity_step_and_service_with_quantiles_and_truth(
    app_db: Path, context: ForecastContext
) -> None:
    result = stored_run(
        app_db, context, entity="user:U0001,user:U0002", start=335, horizon=2, samples=3, sampler="ddim:2"
    )
    database = open_database(str(app_db))
    with database.session() as session:
        dataset = get_dataset(session)
        run = fd.load_run(session, result["run_id"], dataset.id)
        services = tuple(dataset.services)
    database.dispose()
    frame = fd.export_frame(run, services, MONDAY)
    assert list(frame.columns) == fd.EXPORT_COLUMNS
    assert len(frame) == 2 * 2 * 10
    assert list(frame["time"].iloc[[0, 10]]) == ["2016-05-01T23:00", "2016-05-02T00:00"]
    _, matrix = services_and_matrix(app_db, "U0001")
    first_step = frame[(frame["entity"] == "user:U0001") & (frame["step"] == 1)]
    np.testing.assert_allclose(first_step["truth"], matrix[335])  # bytes, exact
    assert frame[frame["step"] == 2]["truth"].isna().all()  # hour 336 is beyond the data
    summary = result["entities"][1]["steps"][0]["services"][services[0]]
    row = frame[(frame["entity"] == "user:U0002") & (frame["step"] == 1) & (frame["service"] == services[0])].iloc[0]
    assert (row["mean"], row["median"], row["q05"], row["q95"]) == (
        summary["mean"],
        summary["median"],
        summary["q05"],
        summary["q95"],
    )

    csv = pd.read_csv(io.BytesIO(fd.export_csv(frame)))
    assert list(csv.columns) == fd.EXPORT_COLUMNS and len(csv) == 40
    np.testing.assert_allclose(csv["median"], frame["median"])
    parquet = pd.read_parquet(io.BytesIO(fd.export_parquet(frame)))
    pd.testing.assert_frame_equal(parquet, frame)


def _run(truth: np.ndarray, paths: np.ndarray, names: list[str]) -> fd.StoredRun:
    """A stored run from arrays (E, N, K) truth and (E, S, N, K) paths, in bytes."""
    normaliser = fd.Normaliser(scale=20.0)
    return fd.StoredRun(
        id=1,
        dataset_id=1,
        model_id=None,
        params={},
        entities=[{"entity": n, "steps": []} for n in names],
        created_at=MONDAY,
        seconds=1.0,
        arrays={"truth": truth, "paths": paths, "paths_v": normaliser.forward(paths)},
    )


def test_run_metrics_score_a_perfect_forecast_as_perfect_and_skip_unknown_hours() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1e6, size=(2, 3, 4))
    paths = np.repeat(truth[:, None], 5, axis=1)  # every sample path equals the truth
    truth[:, 2] = np.nan  # the last hour lies beyond the data
    metrics = fd.run_metrics(_run(truth, paths, ["user:A", "user:B"]), fd.Normaliser(scale=20.0))
    assert list(metrics["entity"]) == ["user:A", "user:B", "all"]
    assert (metrics["hours"] == 2).all()
    np.testing.assert_allclose(metrics[["mse", "rmse", "mae", "crps", "mae_mb"]].to_numpy(dtype=float), 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics[["cs", "r2", "cov50", "cov90"]].to_numpy(dtype=float), 1.0, atol=1e-6)


def test_run_metrics_match_engine_metrics_and_give_mae_in_mb() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 2e6, size=(1, 4, 3))
    paths = rng.uniform(0, 2e6, size=(1, 6, 4, 3))
    normaliser = fd.Normaliser(scale=20.0)
    row = fd.run_metrics(_run(truth, paths, ["user:A"]), normaliser).iloc[0]
    expected = score(normaliser.forward(truth[0]), normaliser.forward(paths[0]))  # paths[0]: (S, N, K)
    for key in ("mse", "rmse", "mae", "cs", "r2", "crps", "cov50", "cov90"):
        assert row[key] == pytest.approx(expected[key], rel=1e-5)
    assert row["mae_mb"] == pytest.approx(np.abs(truth[0] - np.median(paths[0], axis=0)).mean() / 1e6)


def test_run_metrics_are_empty_when_no_truth_is_known() -> None:
    truth = np.full((1, 2, 3), np.nan)
    assert fd.run_metrics(_run(truth, np.ones((1, 4, 2, 3)), ["user:A"]), None).empty


def test_request_problems_explain_each_wrong_field() -> None:
    good = ForecastRequest(entities=("U1",), start=24, horizon=3, samples=4)
    assert fd.request_problems(good, history=24, hours=336, origin=MONDAY) == {}
    errors = fd.request_problems(
        ForecastRequest(
            entities=(),
            start=5,
            horizon=0,
            samples=3000,
            sampler="ddim",
            sampler_steps=60,
            location="cells",
            guidance=16.0,
        ),
        history=24,
        hours=336,
        origin=MONDAY,
        diffusion_steps=50,
    )
    assert set(errors) == {"entities", "start", "horizon", "samples", "sampler_steps", "cells", "guidance"}
    assert "Tue 19 Apr 00:00" in errors["start"]  # the earliest start, as a time
    late = fd.request_problems(ForecastRequest(entities=("U1",), start=337), history=24, hours=336, origin=MONDAY)
    assert "earlier" in late["start"]
    crowd = tuple(f"U{i}" for i in range(fd.MAX_USERS + 1))
    assert (
        "at most"
        in fd.request_problems(ForecastRequest(entities=crowd, start=30), history=24, hours=336, origin=MONDAY)[
            "entities"
        ]
    )


def test_a_stored_request_becomes_the_form_again() -> None:
    request = ForecastRequest(
        entities=("U1", "U2"),
        start=40,
        horizon=5,
        samples=8,
        sampler="ddim",
        sampler_steps=4,
        location="cells",
        cells=("C0003",),
        guidance=1.5,
        seed=9,
    )
    stored = {**request.to_params(), "model_sha256": "abc"}
    assert fd.form_values(stored) == {
        "fc_users": ["U1", "U2"],
        "fc_start": 40,
        "fc_horizon": 5,
        "fc_samples": 8,
        "fc_seed": 9,
        "fc_sampler": "ddim",
        "fc_steps": 4,
        "fc_location": "cells",
        "fc_cell": "C0003",
        "fc_guidance": 1.5,
        "fc_paired": True,
    }
    backtest = ForecastRequest(entities=("U1",), start=30, location="observed", noise="independent").to_params()
    assert fd.form_values(backtest)["fc_location"] == "observed" and fd.form_values(backtest)["fc_paired"] is False
    # A run stored before requests (text forms) and before the noise option drew independent paths:
    # "run again" keeps that.
    old = {
        "entity": "user:U1,user:U2",
        "start": 40,
        "horizon": 5,
        "samples": 8,
        "sampler": "ddim:4",
        "location": "cell:C0003",
        "guidance": 1.5,
        "seed": 9,
        "model_id": 1,
        "model_sha256": "abc",
    }
    assert fd.form_values(old) == {**fd.form_values(stored), "fc_paired": False}


def test_a_link_sets_a_widget_once_and_the_users_change_wins_afterwards() -> None:
    state: dict = {}
    fd.adopt_link_value(state, "w", 5)
    assert state["w"] == 5
    state["w"] = 9  # the user moves the widget; the URL still says 5 until the page mirrors it
    fd.adopt_link_value(state, "w", 5)
    assert state["w"] == 9
    fd.remember_link_value(state, "w", 9)  # mirrored
    fd.adopt_link_value(state, "w", 9)
    assert state["w"] == 9
    fd.adopt_link_value(state, "w", 12)  # a new link
    assert state["w"] == 12
    del state["w"]  # the page was left (Streamlit drops widget state) and reopened with the same link
    fd.adopt_link_value(state, "w", 12)
    assert state["w"] == 12


def test_forecast_mix_compares_like_with_like_over_the_hours_with_truth() -> None:
    def step(truth: float | None, mean: float) -> dict:
        services = {
            "a": {"mean": mean, "truth": truth},
            "b": {"mean": mean, "truth": 0.0 if truth is not None else None},
        }
        return {"services": services, "total": {"truth": truth}}

    entity = {"entity": "user:A", "steps": [step(2.0, 1.0), step(None, 100.0)]}
    mix, hours = fd.forecast_mix(entity, ["a", "b"])
    assert hours == 1
    shares = mix.set_index(["series", "service"])["share"].to_dict()
    assert shares == {("forecast", "a"): 0.5, ("forecast", "b"): 0.5, ("truth", "a"): 1.0, ("truth", "b"): 0.0}


def test_step_frame_is_in_mb_with_nan_where_truth_is_unknown() -> None:
    stats = {"mean": 2e6, "median": 1e6, "q05": 0.0, "q25": 5e5, "q75": 2e6, "q95": 4e6}
    steps = [
        {"label": "Mon 00:00", "hour": 0, "services": {"a": {**stats, "truth": 3e6}}, "total": {**stats, "truth": None}}
    ]
    frame = fd.step_frame(steps, "a")
    assert frame.iloc[0][["median", "q95", "truth"]].tolist() == [1.0, 4.0, 3.0]
    assert np.isnan(fd.step_frame(steps).iloc[0]["truth"])


def test_active_model_reads_the_history_from_the_record(city_db: Path) -> None:
    database = open_database(str(city_db))
    with database.session() as session:
        dataset = get_dataset(session)
        model = fd.active_model(session, dataset.id)
        assert model is not None and model.history == 24
        assert fd.model_normaliser(session, model.id).scale > 0
        assert fd.model_normaliser(session, 10**6) is None
        runs = session.scalar(select(func.count()).select_from(ForecastRun))
        assert fd.run_history(session, dataset.id, dataset.time_origin, dataset.hours).shape[0] == runs
    database.dispose()
