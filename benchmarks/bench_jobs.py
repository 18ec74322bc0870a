"""The job system on the default city, CPU: what running work through the worker costs.

- forecast job latency, enqueue -> done as the app sees it (polling every 0.1 s), with a running
  `lsdm worker` whose model is already loaded (warm) and for the first job after it started (cold);
  compared with the same forecast run in-process (``run_forecast`` with a loaded context);
- claim rate: queued jobs claimed per second by one worker (the queue's own overhead);
- launcher start-up: `python launcher.py --no-browser` to its ready line (health + worker heartbeat)
  on a prepared database.

Usage: python benchmarks/bench_jobs.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report

if TYPE_CHECKING:
    from db import Database

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REQUEST = {"entity": "user:U0007", "start": 310, "horizon": 12, "samples": 32}


def _prepare(home: Path) -> Path:
    db = home / "lsdm.sqlite"
    subprocess.run(
        [sys.executable, str(ROOT / "launcher.py"), "--db", str(db), "--prepare-only"],
        check=True,
        cwd=ROOT,
        env=dict(os.environ, LSDM_HOME=str(home)),
        capture_output=True,
    )
    return db


def _job_seconds(database: Database, request: dict) -> float:
    from engine.jobs import enqueue, wait_for

    started = time.perf_counter()
    job = wait_for(database, enqueue(database, "forecast", request), poll=0.1, timeout=300)
    assert job.status == "done", job
    return time.perf_counter() - started


def bench_forecast_jobs(db: Path, runs: int) -> None:
    from db import open_database
    from engine.forecast import load_context, run_forecast

    database = open_database(str(db))
    cold = []
    for _ in range(max(1, runs // 2)):
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--db", str(db)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            from engine.jobs import live_workers

            deadline = time.monotonic() + 60
            while not any(w["pid"] == worker.pid for w in live_workers(database)):
                assert time.monotonic() < deadline, "worker did not start"
                time.sleep(0.1)
            cold.append(_job_seconds(database, REQUEST))
            warm = [_job_seconds(database, {**REQUEST, "seed": i}) for i in range(runs)]
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    report("forecast job, warm worker (enqueue -> done, 12 h x 32 paths)", warm, None)
    report("forecast job, first after worker start (model load included)", cold, None)
    context = load_context(database)
    inproc = []
    for i in range(runs):
        started = time.perf_counter()
        run_forecast(database, **{**REQUEST, "seed": i}, context=context)
        inproc.append(time.perf_counter() - started)
    report("same forecast in-process (no job), for comparison", inproc, None)


def bench_claims(db: Path, runs: int, jobs: int = 200) -> None:
    from sqlalchemy import update

    from db import open_database
    from db.models import Job
    from engine.jobs import JobWorker, enqueue

    database = open_database(str(db))
    rates = []
    for _ in range(runs):
        for _ in range(jobs):
            enqueue(database, "forecast", REQUEST)
        worker = JobWorker(database)
        started = time.perf_counter()
        claimed = 0
        while worker.claim() is not None:
            claimed += 1
        rates.append((time.perf_counter() - started) / claimed)
        with database.write_session() as session, session.begin():  # leave nothing running behind
            session.execute(update(Job).where(Job.status == "running").values(status="cancelled"))
    report(f"claim one job (per claim, {jobs} queued)", rates, None)


def bench_launcher(db: Path, runs: int) -> None:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "launcher.py"), "--db", str(db), "--no-browser"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        for line in process.stdout:
            if line.startswith("LSDM dashboard: "):
                times.append(time.perf_counter() - started)
                break
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    report("launcher start-up to ready (server healthy + worker beating)", times, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lsdm-bench-jobs-") as tmp:
        home = Path(tmp)
        os.environ["LSDM_HOME"] = str(home)
        db = _prepare(home)
        bench_forecast_jobs(db, args.runs)
        bench_claims(db, args.runs)
        bench_launcher(db, args.runs)


if __name__ == "__main__":
    main()
