"""The GPU check of the forecasting engine (issue 4: "CUDA when present, else CPU; results agree within
tolerance"), for a machine with a CUDA GPU; elsewhere it prints one JSON line saying it was skipped.

1. Agreement: the shipped model on the default city, loaded on the CPU and on CUDA, one-step forecasts of
   every user at the test day's first hour (32 samples, DDIM 10 and DDPM) and a 30-step recursive forecast
   of 8 users: the largest difference of the sample means and the share of samples within 1e-3 (v scale).
   The noise is drawn on the CPU from the seeded generator on both devices (engine/model/diffusion.py),
   so only floating point differs.
2. Speed on the GPU: benchmarks/bench_engine.py --device cuda (training the default model, one-step
   forecasts of all users, a 30-step forecast of one user), medians of several runs.

Usage: python benchmarks/bench_gpu.py [--runs N] [--skip-train]
Prints one JSON line per measurement. About 3 min on one H200 plus the default model's training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

ROOT = Path(__file__).resolve().parent.parent
MEAN_TOLERANCE = 2e-3  # v scale (log1p(bytes) / scale, 0..1): well below a byte-level difference that matters
SAMPLE_TOLERANCE = 1e-3


def agreement(db: str) -> list[dict]:
    import numpy as np

    from db import open_database
    from db.queries import get_dataset
    from engine.data.windows import load_series
    from engine.forecast import recursive_forecast
    from engine.train import load_model

    database = open_database(db)
    record, on_cpu = load_model(database, device="cpu")
    _, on_gpu = load_model(database, record.id, device="cuda")
    with database.session() as session:
        series = load_series(session, get_dataset(session), env_kind=on_cpu.config.env_kind)
    start = series.hours - 24
    everyone = list(range(len(series.entity_ids)))
    out = []
    for label, entities, horizon, sampler in (
        ("one_step_all_users_ddim10", everyone, 1, "ddim"),
        ("one_step_64_users_ddpm", everyone[:64], 1, "ddpm"),
        ("recursive_30_steps_8_users_ddim10", everyone[:8], 30, "ddim"),
    ):
        runs = {}
        for name, forecaster in (("cpu", on_cpu), ("cuda", on_gpu)):
            t0 = time.perf_counter()
            runs[name] = recursive_forecast(
                forecaster,
                series,
                entities,
                start=start - (horizon - 1),
                horizon=horizon,
                samples=32,
                sampler=sampler,
                seed=0,
            )
            runs[name + "_s"] = time.perf_counter() - t0
        a, b = runs["cpu"].paths_v, runs["cuda"].paths_v
        mean_diff = float(np.abs(a.mean(1) - b.mean(1)).max())
        within = float(np.mean(np.abs(a - b) < SAMPLE_TOLERANCE))
        out.append(
            {
                "benchmark": f"gpu_agreement_{label}",
                "model_id": record.id,
                "entities": len(entities),
                "steps": horizon,
                "samples": 32,
                "max_abs_mean_diff_v": mean_diff,
                "share_samples_within_1e-3": within,
                "mean_tolerance_v": MEAN_TOLERANCE,
                "agrees": mean_diff < MEAN_TOLERANCE and within > 0.99,
                "cpu_s": round(runs["cpu_s"], 3),
                "cuda_s": round(runs["cuda_s"], 3),
                "machine": machine(),
                "device": "cpu+cuda",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-train", action="store_true", help="no training on the GPU (forecasts only)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu", "skipped": "torch sees no CUDA device here", "machine": machine()}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LSDM_HOME": tmp}
        db = str(Path(tmp) / "gpu.sqlite")
        for command in (["city", "build"], ["assets", "install"]):
            subprocess.run(
                [sys.executable, "-m", "cli.main", *command, "--db", db],
                check=True,
                cwd=ROOT,
                env=env,
                capture_output=True,
            )
        os.environ["LSDM_HOME"] = tmp
        for line in agreement(db):
            print(json.dumps(line), flush=True)
        extra = ["--skip-train"] if args.skip_train else []
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks/bench_engine.py"),
                "--db",
                db,
                "--device",
                "cuda",
                "--runs",
                str(args.runs),
                *extra,
            ],
            check=True,
            cwd=ROOT,
            env=env,
        )


if __name__ == "__main__":
    main()
