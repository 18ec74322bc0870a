"""Issue 21, part 4: the whole path on a real PostgreSQL server (tests/postgres.py), not only SQLite.

Each test gets a new database on the session's server (``pg_url``); the tests skip, saying why, where no
server can be started. What runs here: the schema (fresh, upgraded from version 1, created by several processes
at once), claiming by several processes at once (``FOR UPDATE SKIP LOCKED``), the command line from city build
and ingest through training to forecasts run by two worker processes, the fencing of a worker declared dead
(issue 20), a worker killed mid-job, and a dashboard page reading the same database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, inspect, select

from db import open_database
from db.models import Dataset, ForecastRun, Job, ModelRecord, SchemaVersion
from db.schema import LATEST_VERSION, upgrade
from engine.jobs import JobWorker, enqueue, get_job, list_jobs, wait_for
from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
TINY = {**TINY_MODEL, "epochs": 2}


def _lsdm(*argv: str, env: dict | None = None) -> dict:
    """``lsdm ARGV --json`` in its own process (as an operator runs it); its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv, "--json"],
        cwd=REPO,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _schema(engine) -> dict:
    """Tables and their columns (name, nullable): the types' spellings differ between the two databases."""
    inspector = inspect(engine)
    return {
        table: sorted((c["name"], c["nullable"]) for c in inspector.get_columns(table))
        for table in inspector.get_table_names()
    }


def _count(database, model) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def _processes(code: str, *argument_lists: list[str]) -> list[object]:
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


# --- the schema ---------------------------------------------------------------------------------------


def test_a_new_postgres_database_gets_the_latest_schema_the_same_as_sqlites(pg_url, tmp_path):
    database = open_database(pg_url)
    with database.engine.connect() as connection:
        assert connection.scalar(select(SchemaVersion.version)) == LATEST_VERSION
    assert database.engine.dialect.name == "postgresql" and not database.is_sqlite
    sqlite = open_database(str(tmp_path / "fresh.sqlite"))
    assert _schema(database.engine) == _schema(sqlite.engine)
    assert upgrade(database.engine) == (LATEST_VERSION, LATEST_VERSION)  # idempotent


def test_a_version_1_postgres_database_is_upgraded_and_keeps_its_rows(pg_url, tmp_path):
    from datetime import datetime

    old = create_engine(pg_url)
    assert upgrade(old, target=1) == (0, 1)
    assert "jobs" not in inspect(old).get_table_names()
    with old.begin() as connection:
        connection.execute(
            Dataset.__table__.insert().values(
                name="kept",
                kind="synthetic",
                entity_kind="user",
                services=["a"],
                poi_categories=["b"],
                time_origin=datetime(2016, 4, 18),
                timezone="UTC",
                hours=24,
                params={},
                is_active=True,
                created_at=datetime(2020, 1, 1),
            )
        )
    old.dispose()
    database = open_database(pg_url)  # upgrades on opening, as every command does
    with database.session() as session:
        assert session.scalar(select(Dataset.name)) == "kept"
        assert session.scalar(select(SchemaVersion.version)) == LATEST_VERSION
    assert _schema(database.engine) == _schema(open_database(str(tmp_path / "fresh.sqlite")).engine)


OPEN = """
import json, sys
from db import open_database
from db.models import SchemaVersion
from sqlalchemy import select
database = open_database(sys.argv[1])
with database.session() as session:
    print(json.dumps(session.scalar(select(SchemaVersion.version))))
"""


def test_several_processes_opening_a_new_database_at_once_create_its_schema_once(pg_url):
    """Workers started together on a new database: one creates the schema (an advisory lock), the others wait
    and find it made; none fails on a table that already exists."""
    assert _processes(OPEN, *([pg_url] for _ in range(6))) == [LATEST_VERSION] * 6


# --- the job queue ------------------------------------------------------------------------------------

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


def test_processes_claiming_at_once_take_every_job_exactly_once(pg_url):
    database = open_database(pg_url)
    ids = {enqueue(database, "city.build", {"users": 4, "cells": 8, "days": 8, "seed": i}) for i in range(60)}
    claimed = _processes(CLAIM_ALL, *([pg_url] for _ in range(4)))
    flat = [job_id for part in claimed for job_id in part]
    assert sorted(flat) == sorted(ids), "every job claimed once, none twice"
    jobs = list_jobs(database)
    assert {job.status for job in jobs} == {"running"} and {job.attempts for job in jobs} == {1}
    assert len({job.worker_id for job in jobs}) == sum(1 for part in claimed if part)


@pytest.fixture(scope="module")
def pg_city_template(pg_server, tmp_path_factory) -> str:
    """A 40-user city with a tiny trained model (no environment condition) on PostgreSQL, made once with the
    command line (its model's files in this module's data folder); the tests get copies (``pg_city``)."""
    url = pg_server.new_database()
    home = tmp_path_factory.mktemp("pg-home")
    environment = {**os.environ, "LSDM_DB": url, "LSDM_HOME": str(home)}
    built = _lsdm("city", "build", "--users", "40", "--cells", "30", "--seed", "3", env=environment)
    assert built["users"] == 40
    config = home / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert _lsdm("train", "--config", str(config), env=environment)["model_id"]
    return url


@pytest.fixture
def pg_city(pg_server, pg_city_template, monkeypatch) -> str:
    """This test's own copy of the city database (``CREATE DATABASE ... TEMPLATE``); its URL, also LSDM_DB."""
    url = pg_server.new_database(template=pg_city_template)
    monkeypatch.setenv("LSDM_DB", url)
    return url


def _worker(url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--db", url, *extra],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_whole_path_on_postgres_ingest_train_and_forecasts_run_by_two_workers(pg_city, tmp_path):
    """City build and training (the fixture), an ingest, then forecasts queued and run by two worker processes
    claiming concurrently: every job done once with its own run."""
    url = pg_city
    (tmp_path / "cells.csv").write_text("cell_id,lat,lon,Shops,Schools\n1,31.2,121.4,3,0\n2,31.3,121.5,0,2\n")
    (tmp_path / "records.csv").write_text(
        "entity_id,timestamp,cell_id,service,bytes\n"
        "u1,2016-04-20T08:05:00,1,video,100\nu1,2016-04-20T08:55:00,2,maps,7\nu2,2016-04-21T09:00:00,2,video,40\n"
    )
    ingested = _lsdm(
        "ingest", "table", "--records", str(tmp_path / "records.csv"), "--cells", str(tmp_path / "cells.csv"),
        "--name", "small-table",
    )  # fmt: skip
    assert ingested["entities"] == 2
    database = open_database(url)
    with database.session() as session:
        names = set(session.scalars(select(Dataset.name)))
        assert {"synthetic-seed3", "small-table"} <= names
    asked = {"dataset": "synthetic-seed3", "horizon": 3, "samples": 4}
    ids = [enqueue(database, "forecast", {**asked, "entity": f"user:U{i:04d}", "start": 300 + i}) for i in range(12)]
    workers = [_worker(url), _worker(url)]
    try:
        for job_id in ids:
            job = wait_for(database, job_id, timeout=300)
            assert job.status == "done" and job.attempts == 1, job
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    runs = [get_job(database, job_id).ref_id("forecast_run") for job_id in ids]
    assert len(set(runs)) == 12 and _count(database, ForecastRun) == 12
    with database.session() as session:
        stored = session.get(ForecastRun, runs[0])
        assert stored is not None and stored.params["horizon"] == 3 and stored.result
        city = session.scalar(select(Dataset.id).where(Dataset.name == "synthetic-seed3"))
        assert {run.dataset_id for run in session.scalars(select(ForecastRun))} == {city}


def test_a_worker_declared_dead_on_postgres_stores_nothing_and_claims_under_a_new_id(pg_city):
    """Issue 20's fencing, on PostgreSQL: the claim check locks the job row (``FOR UPDATE``) in the transaction
    that would store the result."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Worker, utcnow

    database = open_database(pg_city)
    first = enqueue(database, "forecast", {"entity": "user:U0003", "start": 310, "horizon": 2, "samples": 4})
    paused = JobWorker(database)
    paused.register()
    held = paused.claim()
    assert held is not None and held.id == first and held.attempts == 1
    old_id = paused.id
    with database.write_session() as session, session.begin():
        session.execute(update(Worker).where(Worker.id == old_id).values(heartbeat_at=utcnow() - timedelta(minutes=2)))
    rescuer = JobWorker(database, stale_after=5)
    assert rescuer.drain() == 1
    done = get_job(database, first)
    assert done.status == "done" and done.worker_id == rescuer.id and done.attempts == 2
    assert paused.run(held) == "lost"
    assert _count(database, ForecastRun) == 1 and get_job(database, first) == done
    second = enqueue(database, "forecast", {"entity": "user:U0004", "start": 310, "horizon": 2, "samples": 4})
    again = paused.claim()
    assert again is not None and again.id == second and again.worker_id == paused.id != old_id
    assert paused.run(again) == "done" and _count(database, ForecastRun) == 2


def test_a_worker_killed_mid_training_on_postgres_leaves_nothing_and_the_job_runs_again_once(pg_city, tmp_path):
    database = open_database(pg_city)
    models_before = _count(database, ModelRecord)
    config = tmp_path / "slow.json"
    config.write_text(json.dumps({**TINY, "epochs": 400, "patience": 10_000}))
    job_id = enqueue(database, "train", {"config": str(config)})
    victim = _worker(pg_city)
    deadline = time.monotonic() + 120
    while get_job(database, job_id).progress < 0.01:  # it is training
        assert time.monotonic() < deadline and victim.poll() is None, "the training job did not start"
        time.sleep(0.2)
    victim.kill()
    victim.wait(timeout=30)
    assert _count(database, ModelRecord) == models_before
    config.write_text(json.dumps({**TINY, "epochs": 1}))  # the rerun: short (the job reads its config file)
    rescuers = [_worker(pg_city), _worker(pg_city)]
    try:
        job = wait_for(database, job_id, timeout=300)
    finally:
        for worker in rescuers:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
    assert job.status == "done" and job.attempts == 2, job
    assert _count(database, ModelRecord) == models_before + 1
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.status == "running")) == 0


def test_a_dashboard_page_reads_a_postgres_database(pg_city, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LSDM_DB", pg_city)
    at = AppTest.from_file(str(REPO / "app" / "views" / "datasets.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    tables = " ".join(frame.value.to_string() for frame in at.dataframe)
    assert "synthetic-seed3" in tables and "40" in " ".join(str(m.value) for m in at.metric)


def test_a_worker_on_another_machine_finds_the_models_in_its_own_data_folder_and_checks_them(pg_city, tmp_path):
    """Machines sharing the database keep the models folder where they like (a mount, a copy): a worker whose
    data folder is elsewhere loads the model from its own ``models/`` by the folder's name, and refuses a copy
    whose files do not match the checksum in the database."""
    import shutil

    from sqlalchemy import update

    database = open_database(pg_city)
    with database.session() as session:
        record = session.scalars(select(ModelRecord).where(ModelRecord.kind == "lsdm", ModelRecord.is_active)).one()
    saved = Path(record.path)
    other_home = tmp_path / "other-machine"
    (other_home / "models").mkdir(parents=True)
    shutil.copytree(saved, other_home / "models" / saved.name)
    with database.write_session() as session, session.begin():  # saved on a machine whose folders are not here
        session.execute(
            update(ModelRecord).where(ModelRecord.id == record.id).values(path=f"/srv/machine-a/models/{saved.name}")
        )
    environment = {**os.environ, "LSDM_HOME": str(other_home)}

    def forecast_on_the_other_machine(entity: str) -> object:
        job_id = enqueue(database, "forecast", {"entity": entity, "start": 310, "horizon": 2, "samples": 4})
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "worker", "--db", pg_city, "--drain"],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return get_job(database, job_id)

    assert forecast_on_the_other_machine("user:U0001").status == "done"
    weights = max((other_home / "models" / saved.name).iterdir(), key=lambda path: path.stat().st_size)
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    refused = forecast_on_the_other_machine("user:U0002")
    assert refused.status == "failed" and "do not match the hash" in refused.error, refused.error
    assert _count(database, ForecastRun) == 1
