"""Cell-level accuracy on the test day (issue 17, part 6, a first measurement): the bottom-up cell load
(every user's sample paths summed per cell, engine/load/) against a model trained directly on the cells'
summed traffic, the seasonal naive and hour-of-week mean of each cell's own recorded load, and the sum of
the users' point forecasts.

Steps (on a copy of --db, the default city with the shipped model):
1. `lsdm data aggregate --name cells` (each cell's users summed per hour and service), `lsdm env build
   --dataset cells --encoder <the city's encoder>` (the copied tiles and descriptions embedded), `lsdm train
   --dataset cells --max-minutes M` (the default lsdm configuration, stopped after M minutes).
2. The test day: start = the data's last 24 hours, horizon 24, the N busiest cells (by recorded load
   before the start), S paths each.
   - bottom-up: the users who can reach those cells (sampled locations), forecast by the shipped user
     model; cell path i = the sum of path i of the users there;
   - direct: the cell model's own paths of those cells (it reads each cell's own history);
   - users' point forecasts: each of those users' mean path, placed at their habitual cell, summed;
   - seasonal naive: the cell's recorded load 24 h earlier; hour-of-week mean: the mean of its recorded
     load at the same hour of the week before the start.
3. Scores on the total load per cell and hour (MB): RMSE of the mean, CRPS (fair estimator; a point
   forecast's CRPS is its absolute error), 90 % coverage, and the Brier score of P(load > capacity) (the
   default capacity: the 99th percentile of the cell's recorded hourly load), pooled over cells and hours
   and as the median over cells.

Usage: python benchmarks/bench_cell_level.py --db PATH [--cells 20] [--samples 16] [--train-minutes 5] [--config lsdm]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine

from cli.main import main as lsdm
from db import open_database
from db.queries import active_model, get_dataset
from engine.evaluation.metrics import crps_per_point, interval_coverage
from engine.forecast import LocationPlan, load_context, recursive_forecast
from engine.load.core import CellTable, cell_history_load, default_capacities, scope_lookup, sum_by_cell
from engine.load.forecast import reachable_users, user_chunks


def quiet(argv: list[str]) -> None:
    with contextlib.redirect_stdout(sys.stderr):
        if lsdm(argv) != 0:
            sys.exit(f"error: lsdm {' '.join(argv)} failed")


def scores(truth: np.ndarray, samples: np.ndarray, capacity: np.ndarray) -> dict:
    """truth (C, N), samples (S, C, N) (S = 1: a point forecast), capacity (C,): pooled and median per cell."""
    mean = samples.mean(axis=0)
    crps = crps_per_point(truth, samples) if samples.shape[0] > 1 else np.abs(mean - truth)
    p = (samples > capacity[None, :, None]).mean(axis=0)
    outcome = (truth > capacity[:, None]).astype(float)
    out = {
        "rmse_mb": float(np.sqrt(np.mean((mean - truth) ** 2))),
        "crps_mb": float(np.mean(crps)),
        "brier": float(np.mean((p - outcome) ** 2)),
        "crps_mb_median_over_cells": float(np.median(crps.mean(axis=1))),
        "rmse_mb_median_over_cells": float(np.median(np.sqrt(np.mean((mean - truth) ** 2, axis=1)))),
    }
    if samples.shape[0] > 1:
        out["cov90"] = interval_coverage(truth, samples, 0.9)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--config", default="lsdm", help="the direct model's configuration (tiny: a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LSDM_HOME"] = tmp  # the direct model's files go here, not into the user's data folder
        db = Path(tmp) / "eval.sqlite"
        shutil.copy(args.db, db)
        database = open_database(str(db))
        with database.session() as session:
            source = get_dataset(session)
            source_name = source.name
            encoder = active_model(session, source.id, kind="clip")
            encoder_name = encoder.name if encoder else None
        quiet(["data", "aggregate", "--db", str(db), "--name", "cells"])
        if encoder_name:
            quiet(["env", "build", "--db", str(db), "--dataset", "cells", "--encoder", encoder_name])
        trained_at = time.perf_counter()
        quiet(
            [
                "train",
                "--db",
                str(db),
                "--dataset",
                "cells",
                "--config",
                args.config,
                "--max-minutes",
                str(args.train_minutes),
            ]
        )
        train_s = time.perf_counter() - trained_at
        quiet(["data", "use", "--db", str(db), source_name])

        users_ctx = load_context(database, dataset_name=source_name)
        cells_ctx = load_context(database, dataset_name="cells")
        series = users_ctx.series
        table = CellTable.read(database, users_ctx.dataset_id, series)
        history = cell_history_load(series, table)  # (C, T) recorded total load
        start, horizon, n_s = series.hours - 24, 24, args.samples
        busiest = np.argsort(-history[:, :start].sum(axis=1), kind="stable")[: args.cells]
        truth = history[busiest, start : start + horizon] / 1e6  # (C, N) MB
        capacity = default_capacities(series, table)[busiest] / 1e6

        # bottom-up and the users' point forecasts, from the same user paths
        plan = LocationPlan("sampled")
        users, cells = reachable_users(series, plan, busiest, start=start, horizon=horizon, samples=n_s, seed=args.seed)
        habitual = np.array(
            [[series.habitual_cell(int(u), start + n, before=start) for n in range(horizon)] for u in users]
        )
        n_cells = len(series.cell_keys)
        bottom_up = np.zeros((len(busiest), n_s, horizon))
        point_sum = np.zeros((len(busiest), horizon))
        lookup = scope_lookup(busiest, n_cells)
        for positions, _hours in user_chunks(cells, busiest, n_cells):
            paths = recursive_forecast(
                users_ctx.forecaster,
                series,
                users[positions].tolist(),
                start=start,
                horizon=horizon,
                samples=n_s,
                plan=LocationPlan.drawn(cells[positions]),
                seed=args.seed,
            ).paths  # full horizon: the point forecasts need every hour
            load, _ = sum_by_cell(paths, cells[positions], busiest, n_cells)
            bottom_up += load.sum(axis=-1)
            mean_total = paths.sum(axis=-1).mean(axis=1)  # (U, N)
            where = lookup[np.where(habitual[positions] >= 0, habitual[positions], n_cells)]  # (U, N)
            for u in range(len(positions)):
                for n in range(horizon):
                    if where[u, n] >= 0:
                        point_sum[where[u, n], n] += mean_total[u, n]
        bottom_up /= 1e6
        point_sum /= 1e6

        # the direct cell model
        rows = [cells_ctx.series.entity_keys.index(series.cell_keys[int(c)]) for c in busiest]
        direct = (
            recursive_forecast(
                cells_ctx.forecaster, cells_ctx.series, rows, start=start, horizon=horizon, samples=n_s, seed=args.seed
            ).paths.sum(axis=-1)
            / 1e6
        )  # (C, S, N)

        seasonal = history[busiest, start - 24 : start - 24 + horizon] / 1e6
        same = [(np.arange(start) % 168) == ((start + n) % 168) for n in range(horizon)]
        past = history[busiest, :start]
        how_mean = np.stack([past[:, mask].mean(axis=1) for mask in same], axis=1) / 1e6

        results = {
            "bottom-up (users' paths summed)": scores(truth, bottom_up.transpose(1, 0, 2), capacity),
            "direct cell model": scores(truth, direct.transpose(1, 0, 2), capacity),
            "sum of users' point forecasts": scores(truth, point_sum[None], capacity),
            "seasonal naive (24 h)": scores(truth, seasonal[None], capacity),
            "hour-of-week mean": scores(truth, how_mean[None], capacity),
        }
        print(
            json.dumps(
                {
                    "benchmark": "cell_level_test_day",
                    "dataset": source_name,
                    "cells": len(busiest),
                    "users_forecast": len(users),
                    "samples": n_s,
                    "start": start,
                    "horizon": horizon,
                    "direct_model_train_s": round(train_s, 1),
                    "direct_model_train_minutes_cap": args.train_minutes,
                    "direct_model_config": args.config,
                    "truth_mean_mb": float(truth.mean()),
                    "hours_over_capacity": int((truth > capacity[:, None]).sum()),
                    "results": results,
                    "seconds": round(time.perf_counter() - started, 1),
                    "machine": machine(),
                }
            )
        )
        database.dispose()


if __name__ == "__main__":
    main()
