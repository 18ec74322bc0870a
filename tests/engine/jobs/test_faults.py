"""Issue 20: a fault test per long job kind. A worker process is killed with SIGKILL at a random point of an
evaluation, a load run, an environment build and an ingest (training: tests/engine/jobs/test_jobs.py); the
database must hold nothing of the unfinished job and pass SQLite's integrity check; two restarted workers
then run the job again exactly once, to the end.

The kill point is drawn from a generator seeded by the kind (reproducible): a progress fraction between 5 % and
50 % of the job, or, for the ingest, 0 to 0.3 s after its storing transaction has written 4 MB to SQLite's
write-ahead log (its progress cannot be seen there: the heartbeat's write waits for that transaction)."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from db import open_database
from engine.jobs import enqueue, get_job
from tests.conftest import city_with_tiny_model, copy_database

REPO = Path(__file__).resolve().parents[3]
BOOKKEEPING = ("jobs", "workers")  # the tables a worker writes as it claims, beats and is recovered
# An environment build keeps the tiles and descriptions it has finished, cell by cell (each complete in its own
# transaction): they are a cache that its next run reuses ("kept") instead of fetching and writing them again.
RESUMABLE = {"env.build": ("tiles", "descriptions")}


@pytest.fixture(scope="module")
def city_with_model(tmp_path_factory) -> tuple[Path, Path]:
    """A 40-user city with a tiny trained model (no environment condition); (database, data directory)."""
    home = tmp_path_factory.mktemp("faults-home")
    db = city_with_tiny_model(home, epochs=2, users=40, cells=30, seed=3)
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db, home


def _tsinghua_files(folder: Path) -> dict[str, str]:
    """A generated trace of 1.5 million lines (NOT data) with metadata in the release's formats."""
    from engine.data.ingest_tsinghua import CATEGORIES, write_synthetic_trace

    trace = write_synthetic_trace(folder / "App_usage_trace.txt", users=600, records=2_000_000, seed=5)
    rng = np.random.default_rng(5)
    (folder / "Categorys.txt").write_text("".join(f"{i}\t'{name}'\n" for i, name in enumerate(CATEGORIES)))
    (folder / "App2Category.txt").write_text("".join(f"{a}\t{rng.integers(0, 20)}\n" for a in range(1, 2001)))
    (folder / "base_poi.txt").write_text(
        "BaseID\tResidence\tShopping\n" + "".join(f"{b}\t{b % 7}\t{b % 3}\n" for b in range(9851))
    )
    return {
        "trace": str(trace),
        "app2category": str(folder / "App2Category.txt"),
        "categories": str(folder / "Categorys.txt"),
        "poi": str(folder / "base_poi.txt"),
        "name": "generated-trace",
    }


# kind, parameters (a function of a scratch folder), the table its result adds a row to (None: updated in place)
CASES = [
    (
        "evaluate",
        lambda _folder: {
            "quick": True,
            "samples": 4,
            "path_samples": 4,
            "path_users": 8,
            "steps": 8,
            "include_arima": False,
            "include_learned": False,
            "train_missing": False,
        },
        None,
    ),
    ("load", lambda _folder: {"scope": "area:all", "start": 250, "horizon": 12, "samples": 8}, "load_runs"),
    ("env.build", lambda _folder: {"train_encoder": True, "clip_epochs": 12}, "models"),
    ("ingest.tsinghua", _tsinghua_files, "datasets"),
]


def _worker(db: Path, home: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--db", str(db), *extra],
        cwd=REPO,
        env={**os.environ, "LSDM_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _snapshot(db: Path, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    """A checksum of every table's rows, the worker's bookkeeping (and ``leave_out``) left out."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {}
        for table in tables:
            if table in BOOKKEEPING or table in leave_out:
                continue
            rows = connection.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()
            out[table] = f"{len(rows)}:{hashlib.sha256(repr(rows).encode()).hexdigest()[:16]}"
        return out
    finally:
        connection.close()


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return int(connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("kind", "make_params", "result_table"), CASES, ids=[case[0] for case in CASES])
def test_a_worker_killed_mid_job_leaves_nothing_and_two_workers_rerun_it_once(
    kind, make_params, result_table, city_with_model, tmp_path
):
    source, home = city_with_model
    db = tmp_path / "city.sqlite"
    copy_database(source, db)
    database = open_database(str(db))
    job_id = enqueue(database, kind, make_params(tmp_path))
    caches = RESUMABLE.get(kind, ())
    before = _snapshot(db, caches)
    rng = random.Random(kind)
    kill_at = rng.uniform(0.05, 0.5)
    if kind.startswith("ingest"):
        kill_at = 0.0  # by the message below instead: the storing transaction, where progress stands still

    worker = _worker(db, home)
    try:
        deadline = time.monotonic() + 600
        while (job := get_job(database, job_id)).status == "queued" or job.progress < kill_at:
            assert job.status in ("queued", "running"), f"the job ended before the kill point: {job}"
            assert time.monotonic() < deadline, f"no progress to {kill_at:.0%}: {job}"
            time.sleep(0.05)
        if kind.startswith("ingest"):
            # In its storing transaction: SQLite spills the transaction's pages to the write-ahead log before the
            # commit, so the log grows while the job's row still says it is running.
            wal = db.with_name(db.name + "-wal")
            grown = (wal.stat().st_size if wal.exists() else 0) + 4 * 2**20
            while not wal.exists() or wal.stat().st_size < grown:
                job = get_job(database, job_id)
                assert job.status == "running", f"the job ended before its storing transaction was seen: {job}"
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
    finally:
        worker.kill()  # SIGKILL: no chance to clean up
        worker.wait(timeout=30)
    killed = get_job(database, job_id)
    assert killed.status == "running" and killed.attempts == 1, killed
    if killed.result_ref is None:
        assert _snapshot(db, caches) == before, f"the job killed at {killed.progress:.0%} left something behind"
    else:  # killed right after its result's transaction: the result is whole, and its job names it
        assert result_table is not None and _count(db, result_table) == _rows(before, result_table) + 1
    assert _integrity(db) == "ok"

    # Two workers start: one of them finds the dead worker's job and queues it again (or, where its result was
    # stored, marks it done), and one runs it.
    workers = [_worker(db, home, "--drain") for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    done = get_job(database, job_id)
    assert done.status == "done" and done.result_ref, (done, outputs)
    if killed.result_ref is None:
        assert done.attempts == 2 and sum("ran 1 job(s)" in out for out in outputs) == 1, (done, outputs)
    else:
        assert done.attempts == 1 and done.result_ref == killed.result_ref and "kept" in done.message, done
        assert all("ran 0 job(s)" in out for out in outputs), outputs
    if result_table is not None:
        assert _count(db, result_table) == _rows(before, result_table) + 1, "one result, not two"
    assert _integrity(db) == "ok"


def _rows(snapshot: dict[str, str], table: str) -> int:
    return int(snapshot[table].split(":")[0])
