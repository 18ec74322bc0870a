"""The Jobs page and the first launch: whether a worker is alive (and how to start one when none is),
active jobs with their progress and a Cancel button that works, recent jobs with the failure's reason
and a link to what they made, the status filter; and, on a database without data, the pages showing the
progress of the job that makes the first data set until the worker is done. Jobs run through the real
worker code (engine.jobs.JobWorker), in the test's process."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from streamlit.testing.v1 import AppTest

from app import jobs_data as jd
from db import open_database
from engine.jobs import JobView, JobWorker, enqueue, get_job, list_jobs
from tests.app.conftest import page, query, sql

FORECAST = {"entity": "user:U0001", "start": 300, "horizon": 2, "samples": 2, "sampler": "ddim:2"}


def jobs_page(**params: object) -> AppTest:
    at = AppTest.from_file(page("jobs"), default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = str(value)
    return at.run()


def queue(db_path: Path, kind: str, params: dict) -> int:
    database = open_database(str(db_path))
    try:
        return enqueue(database, kind, params)
    finally:
        database.dispose()


def drain(db_path: Path) -> None:
    database = open_database(str(db_path))
    JobWorker(database).drain()
    database.dispose()


def recent(at: AppTest):
    return next(frame.value for frame in at.dataframe if "status" in frame.value.columns)


# --- the page -------------------------------------------------------------------------------------------


def test_without_a_worker_the_page_says_how_to_start_one_and_shows_the_queued_job(app_db):
    job_id = queue(app_db, "forecast", FORECAST)
    at = jobs_page()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "No worker is running" in warnings[0] and "`lsdm worker`" in warnings[0]
    assert any(f"**Forecast** · job {job_id}" in m.value for m in at.markdown)
    assert [p.proto.text for p in at.get("progress")] == ["waiting for the worker"]
    table = recent(at)
    assert table[["id", "kind", "status"]].values.tolist() == [[job_id, "forecast", "queued"]]


def test_a_live_worker_is_listed_with_its_lanes(app_db):
    database = open_database(str(app_db))
    worker = JobWorker(database, lanes=["interactive"])
    worker.register()  # the row and heartbeat a running `lsdm worker --lanes interactive` writes
    try:
        at = jobs_page()
    finally:
        worker.unregister()
        database.dispose()
    assert not at.exception and not at.warning
    workers = at.dataframe[0].value
    assert workers[["worker", "lanes"]].values.tolist() == [[worker.id, "interactive"]]
    assert workers["last heartbeat (s ago)"].iloc[0] < 10


def test_a_queued_job_is_cancelled_from_the_page_and_never_runs(app_db):
    job_id = queue(app_db, "forecast", FORECAST)
    at = jobs_page()
    at.button(key=f"jobs_cancel_{job_id}").click().run()
    assert not at.exception
    assert sql(app_db, "SELECT status FROM jobs WHERE id = ?", job_id) == [("cancelled",)]
    assert "No job is queued or running." in [c.value for c in at.caption]
    assert recent(at)["status"].tolist() == ["cancelled"]
    drain(app_db)
    assert sql(app_db, "SELECT COUNT(*) FROM forecast_runs") == [(0,)]


def test_a_failed_job_shows_its_reason_and_a_done_one_links_to_its_result(app_db):
    failing = queue(app_db, "forecast", {**FORECAST, "entity": "user:NOBODY"})
    working = queue(app_db, "forecast", FORECAST)
    drain(app_db)
    at = jobs_page()
    assert not at.exception
    table = recent(at).set_index("id")
    database = open_database(str(app_db))
    reason = get_job(database, failing).error
    run_id = get_job(database, working).ref_id("forecast_run")
    database.dispose()
    assert "NOBODY" in reason
    assert table.loc[failing, "status"] == "failed" and table.loc[failing, "details"] == reason
    assert table.loc[working, "status"] == "done"
    assert (table.loc[working, "result"], table.loc[working, "link"]) == (
        f"forecast run {run_id}",
        f"/forecast?run={run_id}",
    )

    at.multiselect(key="jobs_status").set_value(["failed"]).run()
    assert recent(at)["id"].tolist() == [failing]


def test_result_links_open_the_page_of_what_a_job_made():
    assert jd.result_link("forecast_run:12") == ("forecast run 12", "/forecast?run=12")
    assert jd.result_link("scenario:3") == ("scenario 3", "/whatif?scenario=3")
    assert jd.result_link("model:4") == ("model 4", "/models?model=4")
    assert jd.result_link("evaluation:4") == ("evaluation of model 4", "/models?model=4")
    assert jd.result_link("dataset:2") == ("data set 2", "/data")
    assert jd.result_link("encoder:clip-ab12") == ("encoder clip-ab12", "/data")
    assert jd.result_link(None) == (None, None)


def test_the_jobs_table_gives_durations_and_links_only_for_done_jobs():
    started = datetime(2024, 5, 1, 12, 0, 0)

    def view(job_id: int, status: str, **fields) -> JobView:
        values = dict(
            id=job_id,
            kind="forecast",
            params={},
            status=status,
            progress=0.0,
            message=None,
            result_ref=None,
            result=None,
            error=None,
            cancel_requested=False,
            created_at=started,
            started_at=None,
            heartbeat_at=None,
            finished_at=None,
            worker_id=None,
            attempts=0,
        )
        return JobView(**{**values, **fields})

    frame = jd.jobs_frame(
        [
            view(
                2,
                "done",
                result_ref="forecast_run:7",
                started_at=started,
                finished_at=started + timedelta(seconds=3),
                message="forecast run 7 in 2.1 s",
            ),
            view(1, "failed", result_ref="forecast_run:6", error="ValueError: broken", message="failed"),
        ]
    )
    assert frame["ran"].tolist() == ["3.0 s", "not started"]
    assert frame["link"].tolist() == ["/forecast?run=7", ""] and frame["result"].tolist() == ["forecast run 7", ""]
    assert not frame.isna().any().any()  # no cell a table would show as None
    assert frame["details"].tolist() == ["forecast run 7 in 2.1 s", "ValueError: broken"]


# --- the first launch ------------------------------------------------------------------------------------


def test_on_a_new_database_the_pages_follow_the_first_launch_job_and_appear_when_it_is_done(empty_db):
    job_id = queue(empty_db, "setup.default", {})
    at = AppTest.from_file(page("user"), default_timeout=180).run()
    assert not at.exception
    assert any("Preparing the first data set" in i.value for i in at.info)
    assert not any("No data yet" in i.value for i in at.info)
    assert any(f"**First launch: the default city and model** · job {job_id}" in m.value for m in at.markdown)
    assert [p.proto.text for p in at.get("progress")] == ["waiting for the worker"]
    assert query(at, "job") == str(job_id)

    drain(empty_db)
    at.run()
    assert not at.exception and not at.get("progress")
    assert at.title[0].value == "User" and at.selectbox(key="user_key").value == "U0000"
    assert query(at, "job") is None
    assert sql(empty_db, "SELECT name FROM datasets") == [("synthetic-seed0",)]
    assert sql(empty_db, "SELECT COUNT(*) FROM models WHERE kind = 'lsdm' AND is_active") == [(1,)]


def test_a_failed_first_launch_says_why_on_the_empty_state(empty_db):
    database = open_database(str(empty_db))
    job_id = enqueue(database, "city.build", {"users": 2, "cells": 8, "days": 8})
    JobWorker(database).claim()  # claimed by a worker that then died without a trace ...
    database.dispose()
    database = open_database(str(empty_db))
    JobWorker(database, stale_after=0.0, max_attempts=1).recover()  # ... and was given up by another one
    assert get_job(database, job_id).status == "failed"
    database.dispose()
    at = AppTest.from_file(page("forecast"), default_timeout=60).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("Build a synthetic city failed: ")
    assert any("No data yet" in i.value for i in at.info)
    assert list_jobs(open_database(str(empty_db)), statuses=["queued", "running"]) == []
