"""The job queue and the worker (engine/jobs/) with real SQLite files, real
worker processes and real engine work: forecasts on the default city, training on a small one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import open_database
from db.models import Dataset, ForecastRun, Job, ModelRecord
from db.queries import store_dataset
from engine.data.city import CityConfig, generate_city
from engine.errors import InputError
from engine.jobs import JobWorker, cancel, enqueue, get_job, list_jobs, live_workers, new_uploads_dir, wait_for
from tests.conftest import TINY_MODEL, copy_database

REPO = Path(__file__).resolve().parents[3]


_copy = copy_database


@pytest.fixture
def city(city_db: Path, tmp_path: Path) -> Path:
    """A private copy of the default city with the shipped model."""
    return _copy(city_db, tmp_path / "city.sqlite")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A 16-user city without environment: enough to train a no-condition model for a few seconds."""
    path = tmp_path / "small.sqlite"
    database = open_database(str(path))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=16, cells=24, seed=2)))
    database.dispose()
    return path


def _slow_config(tmp_path: Path, epochs: int = 400) -> str:
    """A tiny no-condition model trained for many epochs: a job that runs long enough to be killed."""
    path = tmp_path / "slow.json"
    path.write_text(json.dumps({**TINY_MODEL, "epochs": epochs, "patience": 10_000}))
    return str(path)


def _count(database, model) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def _worker_process(db: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--db", str(db), *extra],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_until(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- requests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("nonsense", {}, "kind"),
        ("forecast", {"start": 10}, "entities"),
        ("forecast", {"entity": "user:U0001", "start": -1}, "start"),
        ("forecast", {"entity": "user:U0001", "start": 10, "horizon": "twelve"}, "horizon"),
        ("forecast", {"entity": "user:U0001", "start": 10, "sampler": "euler"}, "sampler"),
        ("forecast", {"entity": "user:U0001", "start": 10, "colour": "red"}, "colour"),
        ("forecast", {"entity": "user:U0001", "start": 10, "noise": "pink"}, "noise"),
        ("train", {"config": "no-such-config"}, "config"),
        ("ingest.table", {"records": "/nope.csv", "cells": "/nope.csv"}, "records"),
        ("city.build", {"users": 0}, "users"),
        ("env.build", {"encoder": 7}, "encoder"),
        ("evaluate", {"dataset": ["city-b"]}, "dataset"),
        ("evaluate", {"location": "stay"}, "location"),
    ],
)
def test_bad_requests_name_the_field_and_queue_nothing(db_path, kind, params, field):
    database = open_database(str(db_path))
    with pytest.raises(InputError) as caught:
        enqueue(database, kind, params)
    assert caught.value.field == field
    assert _count(database, Job) == 0


def test_a_forecast_job_stores_its_run_and_reports_it(city):
    database = open_database(str(city))
    job_id = enqueue(database, "forecast", {"entity": "user:U0003", "start": 310, "horizon": 6, "samples": 8})
    queued = get_job(database, job_id)
    assert queued.status == "queued" and queued.active and queued.attempts == 0
    assert JobWorker(database).drain() == 1
    job = get_job(database, job_id)
    assert job.status == "done" and job.progress == 1.0 and job.attempts == 1 and job.error is None
    run_id = job.ref_id("forecast_run")
    with database.session() as session:
        run = session.get(ForecastRun, run_id)
        assert run is not None and run.params["entities"] == ["U0003"] and run.params["horizon"] == 6
    assert job.result["run_id"] == run_id and job.seconds > 0
    assert job.worker_id and job.started_at <= job.finished_at


def test_a_forecast_job_runs_on_the_data_set_and_model_active_when_it_was_queued(city):
    """Issue 20: two forecasts queued for the city before an ingest ran on the newly active data set, and
    failed. The job carries the data set and the model it was asked for."""
    from cli.main import main as lsdm
    from db.queries import get_dataset

    database = open_database(str(city))
    with database.session() as session:
        asked = get_dataset(session)
        asked_name, asked_id = asked.name, asked.id
    job_id = enqueue(database, "forecast", {"entity": "user:U0003", "start": 310, "horizon": 2, "samples": 2})
    params = get_job(database, job_id).params
    assert params["dataset"] == asked_name and params["model_id"] is not None
    # Another data set becomes the active one before the worker gets to the job.
    assert (
        lsdm(["city", "build", "--users", "6", "--cells", "8", "--days", "3", "--name", "other", "--db", str(city)])
        == 0
    )
    with database.session() as session:
        assert get_dataset(session).name == "other"
    assert JobWorker(database).drain() == 1
    job = get_job(database, job_id)
    assert job.status == "done", job.error
    with database.session() as session:
        assert session.get(ForecastRun, job.ref_id("forecast_run")).dataset_id == asked_id


def test_a_whatif_job_runs_on_the_data_set_and_model_active_when_it_was_queued(city):
    """Issue 20: what-if jobs are pinned like forecasts; a what-if queued before an ingest that made another
    data set active runs on the one it was asked for."""
    from cli.main import main as lsdm
    from db.models import Scenario as ScenarioRow
    from db.queries import get_dataset
    from engine.whatif import Scenario

    database = open_database(str(city))
    with database.session() as session:
        asked = get_dataset(session)
        asked_name, asked_id = asked.name, asked.id
    scenario = Scenario(location="cell:C0005").to_dict()
    job_id = enqueue(
        database, "whatif", {"entity": "user:U0003", "start": 310, "horizon": 2, "samples": 2, "scenario": scenario}
    )
    params = get_job(database, job_id).params
    assert params["dataset"] == asked_name and params["model_id"] is not None
    assert (
        lsdm(["city", "build", "--users", "6", "--cells", "8", "--days", "3", "--name", "other", "--db", str(city)])
        == 0
    )
    assert JobWorker(database).drain() == 1
    job = get_job(database, job_id)
    assert job.status == "done", job.error
    with database.session() as session:
        assert session.get(ScenarioRow, job.ref_id("scenario")).dataset_id == asked_id


def test_a_failing_job_records_its_reason_and_writes_nothing(city):
    database = open_database(str(city))
    job_id = enqueue(database, "forecast", {"entity": "user:NOBODY", "start": 310})
    JobWorker(database).drain()
    job = get_job(database, job_id)
    assert job.status == "failed" and "NOBODY" in job.error and job.result["field"] == "entities"
    assert _count(database, ForecastRun) == 0


def test_cancelling_a_queued_job_is_immediate_and_removes_its_uploads(city):
    database = open_database(str(city))
    folder = new_uploads_dir()
    (folder / "records.csv").write_text("entity_id,timestamp,cell_id,service,bytes\nu1,2016-04-20T08:00,c1,video,1\n")
    (folder / "cells.csv").write_text("cell_id,lat,lon\nc1,31.2,121.4\n")
    job_id = enqueue(database, "forecast", {"entity": "user:U0003", "start": 310})
    assert cancel(database, job_id) == "cancelled"
    assert get_job(database, job_id).status == "cancelled"
    assert JobWorker(database).drain() == 0  # nothing left to run
    # a job that carries uploads: the folder goes when the job ends, whatever the ending
    upload_job = enqueue(
        database,
        "ingest.table",
        {"records": str(folder / "records.csv"), "cells": str(folder / "cells.csv"), "uploads_dir": str(folder)},
    )
    assert cancel(database, upload_job) == "cancelled" and not folder.exists()
    assert cancel(database, job_id) == "cancelled"  # finished jobs stay as they are


@pytest.mark.parametrize("bad_row", [1, 300])
def test_a_failed_ingest_names_the_uploaded_file_and_removes_the_folder(city, bad_row):
    """A bad first row is refused when queued (the peek, engine/data/ingest_table.py peek_table); one further
    down fails the job. Either way the message names the file as uploaded and the upload folder goes."""
    from engine.data.ingest_table import PEEK_ROWS

    database = open_database(str(city))
    folder = new_uploads_dir()
    (folder / "records").mkdir()
    (folder / "cells").mkdir()
    records, cells = folder / "records" / "traffic.csv", folder / "cells" / "towers.csv"
    rows = [f"u1,2016-04-20T{h % 24:02d}:00:00,video,10,c1" for h in range(400)]
    rows[bad_row - 1] = "u1,not-a-time,video,10,c1"
    records.write_text("entity_id,timestamp,service,bytes,cell_id\n" + "\n".join(rows) + "\n")
    cells.write_text("cell_id,lat,lon\nc1,31.2,121.4\n")
    datasets = _count(database, Dataset)
    params = {
        "records": str(records),
        "cells": str(cells),
        "uploads_dir": str(folder),
        "names": {str(records): "my traffic.csv", str(cells): "towers.csv"},
    }
    if bad_row <= PEEK_ROWS:
        with pytest.raises(InputError) as refused:
            enqueue(database, "ingest.table", params)
        error, field = str(refused.value), refused.value.field
        assert field == "records" and list_jobs(database) == []
    else:
        job_id = enqueue(database, "ingest.table", params)
        JobWorker(database).drain()
        job = get_job(database, job_id)
        assert job.status == "failed", job
        error = job.error
    assert str(folder) not in error and error.startswith(f"my traffic.csv:{bad_row + 1}: field 'timestamp'"), error
    assert not folder.exists() and _count(database, Dataset) == datasets


def test_a_running_job_is_cancelled_at_its_next_progress_report_and_stores_nothing(small, tmp_path):
    database = open_database(str(small))
    job_id = enqueue(database, "train", {"config": _slow_config(tmp_path)})
    worker = JobWorker(database, heartbeat=0.2)
    thread = threading.Thread(target=worker.drain)
    thread.start()
    try:
        _wait_until(
            lambda: len((get_job(database, job_id).result or {}).get("history", [])) >= 2, what="the loss curve so far"
        )
        curve = get_job(database, job_id).result["history"]
        assert [entry["epoch"] for entry in curve[:2]] == [1, 2] and curve[0]["val_loss"] > 0
        assert cancel(database, job_id) == "running"
        _wait_until(lambda: not get_job(database, job_id).active, timeout=60, what="the cancellation")
    finally:
        worker.stop()
        thread.join(timeout=60)
    job = get_job(database, job_id)
    assert job.status == "cancelled" and job.result_ref is None and job.result is None
    assert _count(database, ModelRecord) == 0


def test_a_stopping_worker_queues_its_job_again_without_counting_the_attempt(small, tmp_path):
    database = open_database(str(small))
    job_id = enqueue(database, "train", {"config": _slow_config(tmp_path)})
    worker = JobWorker(database, heartbeat=0.2)
    thread = threading.Thread(target=worker.drain)
    thread.start()
    _wait_until(lambda: get_job(database, job_id).progress > 0.005, what="training progress")
    worker.stop()
    thread.join(timeout=60)
    job = get_job(database, job_id)
    assert job.status == "queued" and job.attempts == 0 and "stopped" in job.message
    assert _count(database, ModelRecord) == 0


CLAIM_ALL = """
import json, sys
from db import open_database
from engine.jobs import JobWorker
claimer = JobWorker(open_database(sys.argv[1]))
taken = []
while (job := claimer.claim()) is not None:
    taken.append(job.id)
print(json.dumps(taken))
"""

SUBMIT = """
import json, sys
from db import open_database
from engine.jobs import enqueue
from tests.conftest import copy_database
database, first, count = open_database(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(json.dumps([enqueue(database, "forecast", {"entity": f"user:U{i:04d}", "start": 300 + i % 20, "horizon": 3,
                                                 "samples": 4}) for i in range(first, first + count)]))
"""


def _clients(code: str, *argument_lists: list[str]) -> list[list[int]]:
    """Run ``code`` in one fresh Python process per argument list, all at once; their JSON outputs."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in argument_lists
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        outputs.append(json.loads(out))
    return outputs


def test_concurrent_workers_claim_every_job_exactly_once(city):
    database = open_database(str(city))
    ids = {enqueue(database, "forecast", {"entity": f"user:U{i:04d}", "start": 310}) for i in range(40)}
    claimed = _clients(CLAIM_ALL, *([str(city)] for _ in range(4)))
    flat = [job_id for part in claimed for job_id in part]
    assert sorted(flat) == sorted(ids), "every job claimed once, none twice"
    assert {job.status for job in list_jobs(database)} == {"running"}


def test_many_clients_and_a_worker_at_once_corrupt_nothing(city):
    """Five client processes queue forecasts while a worker process runs them: every job ends done
    exactly once with its own run, and the database passes SQLite's integrity check."""
    worker = _worker_process(city)
    try:
        ids = [
            job_id for part in _clients(SUBMIT, *([str(city), str(6 * c), "6"] for c in range(5))) for job_id in part
        ]
        database = open_database(str(city))
        for job_id in ids:
            job = wait_for(database, job_id, timeout=300)
            assert job.status == "done" and job.attempts == 1, job
        with database.session() as session:
            runs = {job.ref_id("forecast_run") for job in (get_job(database, i) for i in ids)}
            assert len(runs) == len(ids) == 30
            assert session.scalar(select(func.count()).select_from(ForecastRun)) == 30
        assert live_workers(database)
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0, output
    with sqlite3.connect(city) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert live_workers(open_database(str(city))) == []  # it said it stopped


def test_a_killed_worker_leaves_no_partial_result_and_its_job_is_retried_once(small, tmp_path):
    database = open_database(str(small))
    job_id = enqueue(database, "train", {"config": _slow_config(tmp_path, epochs=40)})
    worker = _worker_process(small)
    try:
        _wait_until(lambda: get_job(database, job_id).progress > 0.02, what="training progress")
    finally:
        worker.kill()  # SIGKILL: no chance to clean up
        worker.wait(timeout=30)
    job = get_job(database, job_id)
    assert job.status == "running" and job.attempts == 1
    assert _count(database, ModelRecord) == 0, "nothing of the unfinished job is visible"

    # The next start finds the dead worker's job, queues it again and runs it to the end.
    restarted = _worker_process(small, "--drain")
    output = restarted.communicate(timeout=600)[0]
    assert restarted.returncode == 0, output
    job = get_job(database, job_id)
    assert job.status == "done" and job.attempts == 2, job
    with database.session() as session:
        assert session.scalars(select(ModelRecord.id)).all() == [job.ref_id("model")]


def test_a_job_whose_worker_dies_too_often_fails_with_the_reason(small, tmp_path):
    database = open_database(str(small))
    job_id = enqueue(database, "train", {"config": _slow_config(tmp_path)})
    worker = _worker_process(small, "--max-attempts", "1")
    try:
        _wait_until(lambda: get_job(database, job_id).progress > 0.005, what="training progress")
    finally:
        worker.kill()
        worker.wait(timeout=30)
    restarted = _worker_process(small, "--drain", "--max-attempts", "1")
    output = restarted.communicate(timeout=120)[0]
    assert restarted.returncode == 0, output
    job = get_job(database, job_id)
    assert job.status == "failed" and f"pid {worker.pid}" in job.error and "no partial result" in job.error
    assert _count(database, ModelRecord) == 0


def test_jobs_command_line(city, capsys):
    from cli.main import main as lsdm

    assert (
        lsdm(
            [
                "jobs",
                "submit",
                "forecast",
                "entity=user:U0004",
                "start=310",
                "horizon=2",
                "samples=4",
                "--db",
                str(city),
                "--json",
            ]
        )
        == 0
    )
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "queued" and job["params"]["start"] == 310
    assert lsdm(["worker", "--drain", "--db", str(city)]) == 0
    assert lsdm(["jobs", "wait", str(job["id"]), "--db", str(city), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result_ref"].startswith("forecast_run:")
    assert lsdm(["jobs", "list", "--db", str(city), "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)["jobs"]] == [job["id"]]
    assert lsdm(["jobs", "submit", "forecast", "start=310", "--db", str(city)]) == 2
    assert "field 'entities': expected at least one entity (user:ID or cell:ID), or all" in capsys.readouterr().err
    assert lsdm(["jobs", "list", "--status", "finished", "--db", str(city)]) == 2
    assert lsdm(["jobs", "cancel", "999", "--db", str(city)]) == 2


def test_the_worker_keeps_the_model_loaded_between_forecasts_until_data_changes(city):
    database = open_database(str(city))
    worker = JobWorker(database)
    request = {"entity": "user:U0005", "start": 310, "horizon": 2, "samples": 4}
    enqueue(database, "forecast", request)
    assert worker.drain() == 1
    loaded = worker._cache["forecast"][1]
    enqueue(database, "forecast", request)
    assert worker.drain() == 1
    assert worker._cache["forecast"][1] is loaded  # the second forecast reused it
    worker.data_epoch += 1  # what a finished data-changing job does
    enqueue(database, "forecast", request)
    assert worker.drain() == 1
    assert worker._cache["forecast"][1] is not loaded  # reloaded
    assert [job.status for job in list_jobs(database)] == ["done"] * 3


def test_a_version_4_database_keeps_its_jobs_when_upgraded(tmp_path):
    """Schema v5 adds the workers table and jobs.worker_id/attempts/result; a queued job from before
    the upgrade is claimed and run like any other."""
    from sqlalchemy import create_engine, inspect, text

    from db.schema import upgrade
    from db.session import _configure_sqlite

    path = tmp_path / "v4.sqlite"
    old = create_engine(f"sqlite:///{path}")
    _configure_sqlite(old)
    assert upgrade(old, target=4) == (0, 4)
    with old.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (kind, params, status, progress, cancel_requested, created_at) "
                "VALUES ('city.build', '{\"users\": 4, \"cells\": 8, \"days\": 8}', 'queued', 0, 0, "
                "'2026-01-01 00:00:00')"
            )
        )
    assert "workers" not in inspect(old).get_table_names()
    old.dispose()
    database = open_database(str(path))  # upgrades to the latest version
    assert {"worker_id", "attempts", "result"} <= {c["name"] for c in inspect(database.engine).get_columns("jobs")}
    assert JobWorker(database).drain() == 1
    job = get_job(database, 1)
    assert job.status == "done" and job.attempts == 1 and job.ref_id("dataset"), job.error


def test_a_tsinghua_ingest_job_stores_the_data_set_with_progress_messages(db_path, tmp_path, shared_data):
    """The real Tsinghua metadata (../shared/data) with a generated trace, through a job: the data set is
    stored and active, the result names it, and a second job with the same name is refused (no replace)."""
    from engine.data.ingest_tsinghua import write_synthetic_trace

    folder = shared_data / "tsinghua"
    if not (folder / "base_poi.txt").is_file():
        pytest.skip("the real Tsinghua metadata is not present")
    trace = write_synthetic_trace(tmp_path / "App_usage_trace.txt", users=6, records=800, seed=3)
    params = {
        "trace": str(trace),
        "app2category": str(folder / "App2Category.txt"),
        "categories": str(folder / "Categorys.txt"),
        "poi": str(folder / "base_poi.txt"),
        "name": "th",
    }
    database = open_database(str(db_path))
    first, second = enqueue(database, "ingest.tsinghua", params), enqueue(database, "ingest.tsinghua", params)
    assert JobWorker(database).drain() == 2
    done, refused = get_job(database, first), get_job(database, second)
    assert done.status == "done" and done.result["dataset"] == "th" and done.result["entities"] == 6
    with database.session() as session:
        stored = session.get(Dataset, done.ref_id("dataset"))
        assert stored.name == "th" and stored.is_active and stored.kind == "tsinghua"
    assert refused.status == "failed" and "exists already" in refused.error and refused.result["field"] == "name"


def test_a_queued_job_knows_its_place_and_when_it_should_start_and_end(small):
    """Issue 19: a garbage upload waited 24 minutes behind an evaluation with no queue position or estimate.
    Estimates: each kind's median past run time; a running job's time left from its own progress rate."""
    from datetime import timedelta

    from app.jobs_ui import queue_text
    from db.models import utcnow
    from engine.jobs import queue_outlook

    database = open_database(str(small))
    now = utcnow()
    with database.write_session() as session, session.begin():
        for minutes in (10, 20, 30):  # three past evaluations: median 20 min
            session.add(
                Job(kind="evaluate", params={}, status="done", progress=1.0, attempts=1,
                    created_at=now - timedelta(hours=2), started_at=now - timedelta(hours=2),
                    finished_at=now - timedelta(hours=2) + timedelta(minutes=minutes))
            )  # fmt: skip
        session.add(  # one past table ingest: 30 s
            Job(kind="ingest.table", params={}, status="done", progress=1.0, attempts=1, created_at=now,
                started_at=now - timedelta(hours=1), finished_at=now - timedelta(hours=1) + timedelta(seconds=30))
        )  # fmt: skip
        running = Job(kind="evaluate", params={}, status="running", progress=0.5, attempts=1, created_at=now,
                      started_at=now - timedelta(minutes=5), heartbeat_at=now)  # fmt: skip
        session.add(running)
        session.flush()
        running_id = running.id
    forecast = enqueue(database, "forecast", {"entity": "user:U0001", "start": 30, "horizon": 2, "samples": 2})
    train = enqueue(database, "train", {"config": "tiny"})
    ingest = enqueue(database, "city.build", {"users": 10, "cells": 12, "days": 2, "seed": 3, "name": "q"})

    ahead_of_train = queue_outlook(database, train)
    assert ahead_of_train.lane == "batch" and ahead_of_train.position == 1
    assert [j.kind for j in ahead_of_train.ahead] == ["evaluate"]
    assert ahead_of_train.start_in == pytest.approx(5 * 60, abs=30)  # 5 min for half: 5 min left
    assert ahead_of_train.run_for is None and ahead_of_train.unknown == ["train"]
    behind = queue_outlook(database, ingest)
    assert behind.position == 2 and [j.kind for j in behind.ahead] == ["evaluate", "train"]
    assert behind.start_in is None and behind.unknown == ["city.build", "train"]  # no finished run to go by
    text = queue_text(behind)
    assert "behind **Evaluate" in text and "(running, 50%)" in text and "1 job queued before it" in text
    assert "No estimate for city.build, train" in text
    # The interactive lane is another queue: the forecast starts next, whatever the batch lane holds.
    first = queue_outlook(database, forecast)
    assert (first.lane, first.position, first.ahead) == ("interactive", 1, [])
    assert queue_text(first).startswith("Waiting in the interactive queue: next.")
    cancel(database, train)
    with database.write_session() as session, session.begin():
        session.add(Job(kind="city.build", params={}, status="done", progress=1.0, attempts=1, created_at=now,
                        started_at=now - timedelta(minutes=3), finished_at=now - timedelta(minutes=1)))  # fmt: skip
    estimated = queue_outlook(database, ingest)
    assert estimated.position == 1 and estimated.start_in == pytest.approx(5 * 60, abs=30)
    assert estimated.run_for == pytest.approx(120)
    assert "Starts in about 5 min, done about 7 min from now." in queue_text(estimated)
    assert queue_outlook(database, running_id) is None  # running: not queued


def test_a_jobs_estimate_scales_past_runs_to_its_size_and_falls_back_on_a_measured_figure(small):
    """Issue 19: a job expected to take more than a minute says its estimate before it is queued. The estimate
    is the median of past runs of the kind per unit of size (forecast: entities x hours x paths), times the
    request's size; before any run here, the kind's measured figure (evaluate at its defaults: 27 min on 2
    cores; another setting has no figure to go by)."""
    from datetime import timedelta

    from db.models import utcnow
    from engine.jobs import estimate

    database = open_database(str(small))
    full, quick = estimate(database, "evaluate", {"samples": 32}), estimate(database, "evaluate", {"quick": True})
    assert full.seconds == pytest.approx(27 * 60) and full.long and "none has run here yet" in full.basis
    assert quick.seconds is None and not quick.long  # measured at the default settings only
    unknown = estimate(database, "forecast", {"entities": ["U0001"], "horizon": 24, "samples": 32})
    assert unknown.seconds is None and not unknown.long
    now = utcnow()
    with database.write_session() as session, session.begin():
        for seconds, users in ((4.0, 1), (30.0, 10), (9.0, 2)):  # 4, 3 and 4.5 s per user: median 4 s per user
            session.add(
                Job(kind="forecast", params={"entities": [f"U{i:04d}" for i in range(users)], "horizon": 24,
                    "samples": 32}, status="done", progress=1.0, attempts=1, created_at=now, started_at=now,
                    finished_at=now + timedelta(seconds=seconds))
            )  # fmt: skip
    small_run = estimate(database, "forecast", {"entities": ["U0001"], "horizon": 24, "samples": 32})
    assert small_run.seconds == pytest.approx(4.0) and not small_run.long
    big_run = estimate(database, "forecast", {"entities": [f"U{i}" for i in range(50)], "horizon": 48, "samples": 32})
    assert big_run.seconds == pytest.approx(4.0 * 50 * 2) and big_run.long
    assert "3 such jobs" in big_run.basis and "scaled to this request's size" in big_run.basis


def test_a_database_kept_locked_by_another_process_is_a_sentence_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Issue 20: an ingest holding the write lock made `jobs submit` fail after the busy timeout with a raw
    "database is locked" traceback. Another connection holds the lock here; the busy timeout is shortened."""
    import sqlite3

    import db.session
    from cli.main import main as lsdm

    path = tmp_path / "busy.sqlite"
    open_database(str(path)).dispose()
    monkeypatch.setattr(db.session, "SQLITE_BUSY_TIMEOUT_MS", 300)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long ingest holds it
    try:
        status = lsdm(["jobs", "submit", "city.build", "users=10", "--db", str(path)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err
    assert status == 75 and "the database is busy" in err and "nothing was written" in err
    assert "Traceback" not in err and list_jobs(open_database(str(path))) == []


# --- claims that expire safely (issue 20) ------------------------------------------------------------


def _model_folders() -> list[str]:
    from db.session import models_dir

    return sorted(path.name for path in models_dir().glob("lsdm-*"))


def test_a_worker_declared_dead_stores_nothing_and_claims_under_a_new_id(city):
    """The fencing token is the claim (worker id, attempt): a worker that another worker declared dead while
    it held a job finds its result refused in the transaction that would store it, and never claims again
    under the old id."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Worker, utcnow

    database = open_database(str(city))
    first = enqueue(database, "forecast", {"entity": "user:U0003", "start": 310, "horizon": 2, "samples": 4})
    paused = JobWorker(database)
    paused.register()
    held = paused.claim()
    assert held is not None and held.id == first and held.worker_id == paused.id and held.attempts == 1
    old_id = paused.id
    # Paused past the timeout (no heartbeat for two minutes): another worker declares it dead and runs the job.
    with database.write_session() as session, session.begin():
        session.execute(update(Worker).where(Worker.id == old_id).values(heartbeat_at=utcnow() - timedelta(minutes=2)))
    rescuer = JobWorker(database, stale_after=5)
    assert rescuer.drain() == 1
    done = get_job(database, first)
    assert done.status == "done" and done.worker_id == rescuer.id and done.attempts == 2
    # The paused worker resumes and finishes its copy: the store is refused and the job's row is not touched.
    assert paused.run(held) == "lost"
    assert _count(database, ForecastRun) == 1
    assert get_job(database, first) == done
    # It claims nothing more as the dead worker: it rejoins under a new id first.
    second = enqueue(database, "forecast", {"entity": "user:U0004", "start": 310, "horizon": 2, "samples": 4})
    again = paused.claim()
    assert again is not None and again.id == second
    assert again.worker_id == paused.id != old_id and paused.former_ids == [old_id]
    assert paused.run(again) == "done" and _count(database, ForecastRun) == 2
    assert {job.worker_id for job in list_jobs(database)} == {rescuer.id, paused.id}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP/SIGCONT are POSIX signals")
def test_a_paused_worker_resumed_after_its_job_was_taken_over_duplicates_nothing(small, tmp_path):
    """Issue 20's fault: a worker stopped (SIGSTOP) past the dead-worker timeout had its job requeued and run by
    another worker, and on resuming stored its own result too and went on claiming as the dead worker. Now the
    job has one result, the resumed process drops its copy and claims again only under a new id."""
    from db.models import Worker

    database = open_database(str(small))
    job_id = enqueue(database, "train", {"config": _slow_config(tmp_path, epochs=40)})
    paused = _worker_process(small)
    try:
        _wait_until(lambda: get_job(database, job_id).progress > 0.02, what="training progress")
        old_id = get_job(database, job_id).worker_id
        paused.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # no heartbeat for longer than the rescuer's timeout
        rescuer = _worker_process(small, "--drain", "--stale-after", "2")
        output = rescuer.communicate(timeout=600)[0]
        assert rescuer.returncode == 0, output
        job = get_job(database, job_id)
        assert job.status == "done" and job.attempts == 2 and job.worker_id != old_id, job
        folders = _model_folders()
        paused.send_signal(signal.SIGCONT)

        def rejoined() -> bool:
            with database.session() as session:
                rows = session.scalars(select(Worker).where(Worker.pid == paused.pid)).all()
            return any(row.id != old_id and row.stopped_at is None for row in rows)

        _wait_until(rejoined, timeout=60, what="the resumed worker to rejoin under a new id")
        time.sleep(3.0)  # its training thread reaches its next progress report and drops the job
        assert get_job(database, job_id) == job, "the job's row is the rescuer's, untouched"
        with database.session() as session:
            assert session.scalars(select(ModelRecord.id)).all() == [job.ref_id("model")], "one result"
        assert _model_folders() == folders, "no weights of the dropped copy left behind"
        # The resumed worker still serves, under its new id only.
        second = enqueue(database, "train", {"config": _slow_config(tmp_path, epochs=1)})
        assert wait_for(database, second, timeout=300).status == "done"
        assert get_job(database, second).worker_id not in (old_id, job.worker_id)
    finally:
        paused.send_signal(signal.SIGCONT)
        paused.send_signal(signal.SIGTERM)
        log = paused.communicate(timeout=60)[0]
    assert paused.returncode == 0, log
    assert "was declared dead by another worker" in log and f"job {job_id} (train) dropped" in log, log
    with sqlite3.connect(small) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_result_stored_just_before_its_worker_died_is_kept_and_named_by_its_job(city):
    """The transaction that stores a claimed job's result also names it on the job's row, so a worker that dies
    between storing the result and marking the job done leaves a job that the next worker marks done with that
    result, instead of running it again (two results for one job)."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Worker, utcnow
    from db.session import job_claim
    from engine.forecast import run_forecast
    from engine.requests import ForecastRequest

    database = open_database(str(city))
    params = {"entity": "user:U0003", "start": 310, "horizon": 2, "samples": 4}
    job_id = enqueue(database, "forecast", params)
    dying = JobWorker(database)
    held = dying.claim()
    assert held is not None and held.id == job_id
    with job_claim(held.id, held.worker_id, held.attempts):  # as JobWorker.run runs the job's kind
        run = run_forecast(database, ForecastRequest.parse(get_job(database, job_id).params))
    stored = get_job(database, job_id)
    assert stored.status == "running" and stored.result_ref == f"forecast_run:{run['run_id']}"
    # ... and the worker dies before it marks the job done.
    with database.write_session() as session, session.begin():
        session.execute(update(Worker).where(Worker.id == dying.id).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert JobWorker(database).drain() == 0, "nothing to run again"
    job = get_job(database, job_id)
    assert job.status == "done" and job.result_ref == stored.result_ref and job.attempts == 1
    assert "stopped right after storing the result, which is kept" in job.message
    assert _count(database, ForecastRun) == 1
