"""Cell and area load runs (engine/load/forecast.py) on the default city with the shipped model, on the CPU:

- one cell (C0001, the busiest), 24 h, 32 paths, from request to stored run, the model and the data
  already loaded as the worker keeps them (target <= 10 s); and cold, loading them first;
- the whole city (area:all: 400 cells, 500 users), 32 paths, HORIZON hours (default 24; target for 24 h:
  <= 60 s, peak memory <= 3 GiB); its peak resident memory is its own process's;
- the forecast's cost per path-hour, which decides both.

Usage: python benchmarks/bench_load.py [--db PATH] [--runs N] [--city-horizon H] [--city-runs N]
Without --db it builds the default city and installs the shipped model in a temporary data directory.
Each phase runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import report


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(db: str, scope: str, horizon: int, runs: int) -> dict:
    from db import open_database
    from engine.forecast import load_context
    from engine.load.forecast import run_load
    from engine.requests import LoadRequest

    database = open_database(db)
    started = time.perf_counter()
    context = load_context(database)
    load_s = time.perf_counter() - started
    start = context.series.hours - 24
    times, users = [], 0
    for run in range(runs):
        request = LoadRequest(scope=scope, start=start, horizon=horizon, samples=32, seed=run)
        started = time.perf_counter()
        payload = run_load(database, request, context=context, detail=False)
        times.append(time.perf_counter() - started)
        users = payload["users_forecast"]
    return {"times": times, "users": users, "load_s": load_s, "peak_mib": _peak_mib(), "start": start}


def _child(db: str, scope: str, horizon: int, runs: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", scope, "--db", db, "--horizon", str(horizon), "--runs", str(runs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--city-horizon", type=int, default=24)
    parser.add_argument("--city-runs", type=int, default=1)
    parser.add_argument("--skip-city", action="store_true")
    parser.add_argument("--phase", default=None)
    parser.add_argument("--horizon", type=int, default=24)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.db, args.phase, args.horizon, args.runs)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db
        if db is None:
            os.environ["LSDM_HOME"] = tmp
            db = str(Path(tmp) / "bench.sqlite")
            for command in (["city", "build"], ["assets", "install"]):
                subprocess.run(
                    [sys.executable, "-m", "cli.main", *command, "--db", db], check=True, capture_output=True
                )
        cell = _child(db, "cell:C0001", 24, args.runs)
        per_path_hour = [t / (cell["users"] * 32 * 24) * 1000 for t in cell["times"]]
        report(
            "load_one_cell_24h_32_paths",
            cell["times"],
            10.0,
            users_forecast=cell["users"],
            cold_model_and_data_load_s=round(cell["load_s"], 3),
            ms_per_requested_path_hour=round(sorted(per_path_hour)[len(per_path_hour) // 2], 3),
            start=cell["start"],
        )
        if args.skip_city:
            return
        city = _child(db, "area:all", args.city_horizon, args.city_runs)
        report(
            f"load_whole_city_{args.city_horizon}h_32_paths",
            city["times"],
            60.0 * args.city_horizon / 24,
            users_forecast=city["users"],
            peak_mib=round(city["peak_mib"]),
            peak_target_mib=3072,
            horizon=args.city_horizon,
            runs_note="the target scales with the horizon (60 s for 24 h)",
        )


if __name__ == "__main__":
    main()
