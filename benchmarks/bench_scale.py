"""How cost grows with the city (issue 21, docs/scale.md#how-cost-grows), on the CPU.

For synthetic cities of 500, 5,000 and 50,000 users (`lsdm city build --users N`, 400 cells, 14 days):
- the build's time (target: 50,000 users in at most 5 minutes, linear in users within 20 % per user) and the
  database's size;
- forecast throughput (users per second) for one step and for 24 hours ahead, 32 paths, DDIM 10 steps, on
  64 users of the city for one step, 32 for 24 hours (the users' chunks of a load run: engine/load/forecast.py
  LoadChunks), with the local executor on one core and on Ray with 2 local actors (one core each), with each
  process's peak resident memory (target: throughput per Ray worker within 20 % of the local executor's);
- loading the model (what every worker does once; each chunk's users are then read from the database: a
  worker's memory is the model's and its chunk's, whatever the city's size), its time and memory.

The model: the shipped forecaster's size (64 channels, 4 heads, 2 blocks, 50 diffusion steps, the linear
prior), trained one short epoch without the environment condition (a city of another size has no
environment built; the condition adds a look-up per window, not the denoiser's cost).

Usage: python benchmarks/bench_scale.py [--sizes 500,5000,50000] [--day-sizes 5000] [--forecast-users 64]
[--day-users 32] [--runs 2]
(a forecast's cost per user does not depend on the city's size: one chunk is one chunk; the 24-hour figures,
slow on 2 cores, are taken on one size by default, the one-step figures on every size).
Each phase runs in its own process (its peak memory is its own). Prints one JSON object per size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine

REPO = Path(__file__).resolve().parents[1]
MODEL = {
    "condition": "none",
    "channels": 64,
    "heads": 4,
    "blocks": 2,
    "diffusion_steps": 50,
    "prior": "feature",
    "epochs": 1,
    "windows_per_epoch": 256,
    "batch_size": 64,
}
START = 312  # the test day's first hour


def _peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _lsdm(*argv: str, env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv, "--json"], cwd=REPO, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"lsdm {' '.join(argv)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


class MeasuredChunks:
    """LoadChunks that also report the peak memory of the process that ran them (a Ray actor, or this one)."""

    def __init__(self, spec: dict, context: object = None) -> None:
        from engine.load.forecast import LoadChunks

        self.inner = LoadChunks(spec, context)  # type: ignore[arg-type]

    def __call__(self, chunk: dict) -> dict:
        import numpy as np

        began = time.perf_counter()
        out = self.inner(chunk)
        busy = time.perf_counter() - began
        measured = {"peak_mib": _peak_mib(), "pid": os.getpid(), "busy_s": busy, "users": len(chunk["users"])}
        return {**out, **{key: np.float64(value) for key, value in measured.items()}}


def phase_forecast(db: str, users: int, horizon: int, executor_text: str, runs: int) -> dict:
    """In its own process: load the model and the series, then forecast ``users`` users' chunks ``runs``
    times with the executor."""
    import numpy as np
    import torch

    from db import open_database
    from engine.executors import Executor, map_chunks
    from engine.forecast import LocationPlan, chunk_spec, load_context
    from engine.load.core import CHUNK_USERS
    from engine.requests import LoadRequest

    torch.set_num_threads(1)  # one core: the local executor's figure is one worker's
    database = open_database(db, migrate=False)
    started = time.perf_counter()
    context = load_context(database, entities=False)  # the model; the users are read chunk by chunk
    load_s = time.perf_counter() - started
    load_peak = _peak_mib()
    request = LoadRequest(scope="area:all", start=START, horizon=horizon, samples=32, executor=executor_text, workers=2)
    n_cells = len(context.series.cell_keys)
    spec = {
        **chunk_spec(database.url, context, request),
        "scope_rows": list(range(n_cells)),
        "n_cells": n_cells,
        "per_path": True,
        "location": "sampled",
    }
    local_task = MeasuredChunks(spec)  # as an actor does: the model from spec, each chunk's users read
    rows = np.arange(min(users, len(local_task.inner.reader.entity_keys)))
    cells = LocationPlan("sampled").path_cells(local_task.inner.reader.rows(rows), np.arange(len(rows)), START,
                                               horizon, 32, 0)  # fmt: skip
    chunks = [
        {"users": rows[i : i + CHUNK_USERS], "cells": cells[i : i + CHUNK_USERS]}
        for i in range(0, len(rows), CHUNK_USERS)
    ]
    executor = Executor.parse(executor_text, 2)
    times, peaks, busy, done, per_run = [], {}, {}, {}, []
    ray = None
    if executor.kind == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 1024**2)
    try:
        for _ in range(runs):
            pids: set[int] = set()
            began = time.perf_counter()
            for out in map_chunks(executor, lambda: local_task, (MeasuredChunks, {"spec": spec}), chunks):
                pid = int(out["pid"])
                pids.add(pid)
                peaks[pid] = max(peaks.get(pid, 0.0), float(out["peak_mib"]))
                busy[pid] = busy.get(pid, 0.0) + float(out["busy_s"])
                done[pid] = done.get(pid, 0) + int(out["users"])
            times.append(time.perf_counter() - began)
            per_run.append(len(pids))
    finally:
        if ray is not None:
            ray.shutdown()
    median = statistics.median(times)
    workers = max(per_run)  # the processes that forecast in one run (Ray starts new actors for each run)
    return {
        "executor": str(executor),
        "workers": workers,
        "users": len(rows),
        "horizon_h": horizon,
        "runs_s": [round(t, 3) for t in times],
        "median_s": round(median, 3),
        "users_per_s": round(len(rows) / median, 2),
        "users_per_s_per_worker": round(len(rows) / median / workers, 2),
        # Forecasting alone (each chunk's time inside its worker): a worker's rate once started, what a long
        # run over a city approaches.
        "busy_users_per_s_per_worker": round(statistics.mean(done[p] / busy[p] for p in busy), 2),
        "peak_mib_per_worker": sorted(round(v, 1) for v in peaks.values()),
        "model_load_s": round(load_s, 2),
        "model_load_peak_mib": load_peak,
        "note": "Ray's runs include each run's start of the actors (each loads torch and the model); every worker "
        "reads only its chunks' users from the database",
    }


def run_size(users: int, forecast_users: int, day_users: int, runs: int, folder: Path, day: bool) -> dict:
    home = folder / f"city-{users}"
    home.mkdir()
    db = home / "lsdm.sqlite"
    env = {**os.environ, "LSDM_HOME": str(home), "LSDM_DB": str(db)}
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "build", "--users", str(users)], cwd=REPO, env=env, capture_output=True, text=True
    )
    build_s = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"the build failed: {done.stderr[-2000:]}")
    built = json.loads(done.stdout)
    config = home / "model.json"
    config.write_text(json.dumps(MODEL))
    _lsdm("train", "--config", str(config), env=env)
    result = {
        "benchmark": "scale",
        "users": users,
        "cells": built["cells"],
        "build_s": round(build_s, 2),
        "build_s_per_1000_users": round(build_s / users * 1000, 3),
        "build_peak_mib": built["peak_mib"],
        "database_mib": round(sum(p.stat().st_size for p in home.glob("lsdm.sqlite*")) / 2**20, 1),
        "forecast": [],
    }
    for horizon in (1, 24) if day else (1,):
        for executor in ("local", "ray"):
            users_now = forecast_users if horizon == 1 else day_users
            argv = [sys.executable, __file__, "phase", "--db", str(db), "--users", str(users_now)]
            argv += ["--horizon", str(horizon), "--executor", executor, "--runs", str(runs)]
            done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"phase failed: {done.stderr[-3000:]}")
            result["forecast"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    result["machine"] = machine()
    result["device"] = "cpu"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    phase = sub.add_parser("phase")
    phase.add_argument("--db", required=True)
    phase.add_argument("--users", type=int, required=True)
    phase.add_argument("--horizon", type=int, required=True)
    phase.add_argument("--executor", required=True)
    phase.add_argument("--runs", type=int, default=3)
    build = sub.add_parser("build")
    build.add_argument("--users", type=int, required=True)
    parser.add_argument("--sizes", default="500,5000,50000")
    parser.add_argument("--forecast-users", type=int, default=64, help="users of the one-step forecasts")
    parser.add_argument("--day-users", type=int, default=32, help="users of the 24-hour forecasts")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--day-sizes", default="5000", help="the sizes whose 24-hour forecast is timed too")
    args = parser.parse_args()
    if args.command == "build":  # `lsdm city build` in this process, for its peak memory
        import contextlib
        import io

        from cli.main import main as lsdm

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = lsdm(["city", "build", "--users", str(args.users), "--json"])
        if code != 0:
            raise SystemExit(code)
        print(json.dumps({**json.loads(out.getvalue()), "peak_mib": _peak_mib()}))
        return
    if args.command == "phase":
        print(json.dumps(phase_forecast(args.db, args.users, args.horizon, args.executor, args.runs)))
        return
    with tempfile.TemporaryDirectory(prefix="lsdm-scale-") as tmp:
        for users in (int(v) for v in args.sizes.split(",")):
            day = users in {int(v) for v in args.day_sizes.split(",")}
            result = run_size(users, args.forecast_users, args.day_users, args.runs, Path(tmp), day)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
