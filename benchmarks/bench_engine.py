"""Forecasting engine on the default city, on the CPU (``--device cuda``: on the GPU; benchmarks/bench_gpu.py
runs that and the CPU/GPU agreement check where a GPU is present):

- training the default model (target <= 10 min), its peak memory (target <= 4 GiB);
- one-step forecasts for all users, 32 samples each (target <= 30 s);
- a 30-step recursive forecast with 32 sample paths for one user (target <= 2 s);
- peak memory of forecasting.

Usage: python benchmarks/bench_engine.py [--db PATH] [--runs N] [--epochs E] [--skip-train] [--device cpu|cuda]
Without --db it builds the default city and its environment in a temporary data directory first.
``--skip-train`` (with --db): measure the forecasts of the data set's active model only.
Each phase runs in its own process so that its peak resident memory is its own.
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
from _common import report


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def phase_train(db: str, epochs: int | None, device: str = "cpu") -> dict:
    from db import open_database
    from engine.model.config import resolve_config
    from engine.train import train

    name, config = resolve_config("lsdm", epochs=epochs)
    started = time.perf_counter()
    result = train(open_database(db), name, config, device=device)
    return {
        "seconds": time.perf_counter() - started,
        "peak_mib": _peak_mib(),
        **_gpu_peak(device),
        "model_id": result.record_id,
        "epochs_run": result.metrics["epochs_run"],
        "best_val_loss": result.metrics["best_val_loss"],
        "device": result.metrics["device"],
    }


def _gpu_peak(device: str) -> dict:
    """The peak of GPU memory allocated by torch in this process (the resident set is the host's)."""
    if not device.startswith("cuda"):
        return {}
    import torch

    return {"gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20)}


def _gpu(phase: dict) -> dict:
    """A phase's GPU peak, for its report line (none on the CPU)."""
    return {k: v for k, v in phase.items() if k == "gpu_peak_mib"}


def phase_forecast(db: str, runs: int, device: str = "cpu") -> dict:
    import numpy as np

    from db import open_database
    from db.queries import get_dataset
    from engine.data.windows import load_series
    from engine.forecast import recursive_forecast
    from engine.train import load_model

    database = open_database(db)
    _, forecaster = load_model(database, device=device)
    with database.session() as session:
        series = load_series(session, get_dataset(session), env_kind=forecaster.config.env_kind)
    values = forecaster.normaliser.forward(series.traffic)
    start = series.hours - 24
    everyone = list(range(len(series.entity_ids)))
    recursive_forecast(forecaster, series, [0], start=start, horizon=2, samples=4, values=values)  # warm-up
    all_users = []
    for run in range(runs):
        t0 = time.perf_counter()
        recursive_forecast(forecaster, series, everyone, start=start, horizon=1, samples=32, values=values, seed=run)
        all_users.append(time.perf_counter() - t0)
    one_user = []
    for run in range(max(runs, 5)):
        t0 = time.perf_counter()
        recursive_forecast(
            forecaster, series, [run % len(everyone)], start=start - 12, horizon=30, samples=32, values=values, seed=run
        )
        one_user.append(time.perf_counter() - t0)
    ddpm = []
    for run in range(2):
        t0 = time.perf_counter()
        recursive_forecast(
            forecaster, series, [0], start=start, horizon=1, samples=32, sampler="ddpm", values=values, seed=run
        )
        ddpm.append(time.perf_counter() - t0)
    return {
        "all_users_s": all_users,
        "one_user_30_steps_s": one_user,
        "ddpm_one_step_one_user_s": ddpm,
        "users": len(everyone),
        "peak_mib": _peak_mib(),
        **_gpu_peak(device),
        "finite": bool(np.isfinite(values).all()),
    }


def _child(phase: str, db: str, extra: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--db", db, *extra], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--phase", choices=["train", "forecast"], default=None)
    parser.add_argument("--skip-train", action="store_true", help="with --db: forecasts of the active model only")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where training and forecasts run (the targets are the CPU's)",
    )
    args = parser.parse_args()
    if args.skip_train and args.db is None:
        parser.error("--skip-train needs --db (a database with an active model)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
    if args.phase == "train":
        print(json.dumps(phase_train(args.db, args.epochs, args.device)))
        return
    if args.phase == "forecast":
        print(json.dumps(phase_forecast(args.db, args.runs, args.device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db
        if db is None:
            os.environ["LSDM_HOME"] = tmp
            db = str(Path(tmp) / "bench.sqlite")
            subprocess.run(
                [sys.executable, "-m", "cli.main", "city", "build", "--db", db], check=True, capture_output=True
            )
            subprocess.run(
                [sys.executable, "-m", "cli.main", "env", "build", "--db", db], check=True, capture_output=True
            )
        extra = (["--epochs", str(args.epochs)] if args.epochs else []) + ["--device", args.device]
        trained = None if args.skip_train else _child("train", db, extra)
        if trained is not None:
            report(
                "train_default_model",
                [trained["seconds"]],
                600.0,
                peak_mib=round(trained["peak_mib"]),
                peak_target_mib=4096,
                epochs_run=trained["epochs_run"],
                best_val_loss=trained["best_val_loss"],
                runs_note="one training run (a run takes minutes)",
                device=trained["device"],
                **_gpu(trained),
            )
        forecast = _child("forecast", db, ["--runs", str(args.runs), "--device", args.device])
        report(
            "one_step_all_users_32_samples",
            forecast["all_users_s"],
            30.0,
            users=forecast["users"],
            sampler="ddim:10",
            peak_mib=round(forecast["peak_mib"]),
            peak_target_mib=4096,
            device=args.device,
            **_gpu(forecast),
        )
        report(
            "recursive_30_steps_32_paths_one_user",
            forecast["one_user_30_steps_s"],
            2.0,
            sampler="ddim:10",
            device=args.device,
        )
        report(
            "one_step_one_user_32_samples_ddpm",
            forecast["ddpm_one_step_one_user_s"],
            None,
            sampler="ddpm (all 50 steps)",
            median_note=f"{statistics.median(forecast['ddpm_one_step_one_user_s']):.2f} s",
            device=args.device,
        )


if __name__ == "__main__":
    main()
