"""Test-day scores and run times of the three baselines on the default city (500 users x 168 h x 10).

Builds the default city (``generate_city(CityConfig())``) into a temporary SQLite file, splits it by
time (train targets before day 6, validation = day 6, test = day 7; history 24 h, horizon 1 h),
normalises with ``Normaliser.fit`` on the training hours and scores every baseline on the test
windows on the normalised scale (``engine.evaluation.metrics.score``: point metrics of the sample mean, CRPS,
50 %/90 % coverage). Also: MSE at recursive steps 1, 10, 20 and 30 of 30-step paths starting 30 h
before the end of the data (every user; ARIMA reuses the parameters fitted for the test windows),
and the scores of the bare point forecast (S = 1) for comparison.
Target: the three baselines' test-day forecasts (ARIMA fits 5,000 series) within 180 s on 2 cores.
The timed runs are the test-day forecasts; the path and S = 1 runs are reported apart.
Usage: python benchmarks/bench_baselines.py [--users N] [--jobs N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import report

from db import open_database
from db.queries import get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.data.windows import Normaliser, SplitSpec, gather, load_series, make_splits
from engine.evaluation.baselines import BASELINES, default_jobs, forecast_paths
from engine.evaluation.metrics import METRIC_KEYS, mse_by_step, per_service_r2, score

PATH_STEPS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=None, help="ARIMA worker processes (default: CPUs, <= 8)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        database = open_database(str(Path(tmp) / "bench.sqlite"))
        config = CityConfig() if args.users == 500 else CityConfig(users=args.users)
        with database.write_session() as session, session.begin():
            store_dataset(session, generate_city(config))
        with database.session() as session:
            series = load_series(session, get_dataset(session))
        database.dispose()
    build_s = time.perf_counter() - started

    spec = SplitSpec()
    splits = make_splits(series, spec)
    normaliser = Normaliser.fit(series.traffic[:, : splits.train_hours_end])
    values = normaliser.forward(series.traffic)
    truth = gather(series, values, splits.test, spec).target  # (N, 1, K)
    entities = np.arange(len(series.entity_ids))
    starts = np.full(len(entities), series.hours - PATH_STEPS)
    path_truth = np.stack([values[entities, starts + h] for h in range(PATH_STEPS)], axis=1)  # (N, 30, K)

    methods, times = {}, []
    for name, forecaster in BASELINES.items():
        options = {"n_jobs": args.jobs} if name == "arima" else {}
        t0 = time.perf_counter()
        forecast = forecaster(series, values, splits, splits.test, **options)
        seconds = time.perf_counter() - t0
        times.append(seconds)
        if name == "arima":  # the point forecast and the paths reuse the fitted parameters
            options["params"] = forecast.params
        point = score(truth, forecaster(series, values, splits, splits.test, n_samples=1, **options).samples)
        t0 = time.perf_counter()
        paths = forecast_paths(name, series, values, splits, entities, starts, PATH_STEPS, **options)
        path_seconds = time.perf_counter() - t0
        by_step = mse_by_step(path_truth, paths.samples)
        methods[name] = {
            **{key: round(value, 4) for key, value in score(truth, forecast.samples).items()},
            "seconds": round(seconds, 2),
            "point_forecast_s1": {key: round(point[key], 4) for key in METRIC_KEYS},
            "per_service_r2": {
                k: round(v, 3) for k, v in per_service_r2(truth, forecast.samples, series.services).items()
            },
            "paths_mse_at_step": {str(s): round(by_step[s - 1], 4) for s in (1, 10, 20, 30)},
            "paths_seconds": round(path_seconds, 2),
            "info": {k: v for k, v in forecast.info.items() if k not in ("method",)},
        }
    report(
        "baselines_default_city",
        [sum(times)],
        180.0,
        users=len(series.entity_ids),
        hours=series.hours,
        services=len(series.services),
        test_windows=len(splits.test),
        scale=round(normaliser.scale, 4),
        build_s=round(build_s, 1),
        arima_jobs=args.jobs or default_jobs(),
        arima_target_s=180.0,
        arima_meets_target=methods["arima"]["seconds"] <= 180.0,
        methods=methods,
    )


if __name__ == "__main__":
    main()
