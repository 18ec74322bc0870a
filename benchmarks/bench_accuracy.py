"""Accuracy targets of the forecasting engine (issue 4), through the command line, CPU (about 90 min on 2 cores):

1. default city, shipped model: `lsdm evaluate` with every baseline (ARIMA too) and the comparison models
   (trained when missing), the test hours at the cells the data recorded (`--location observed`, the
   default: as in training and in the paper's task); target: lsdm beats every baseline on RMSE and R²; the
   condition gains >= 2.8 % R² over no condition (the paper's figure);
2. new city (seed 1), embedded with the shipped encoder, scored by the default city's models as they are;
3. control city built with `--env-effect 0` (own encoder, lsdm and no condition trained): no gain beyond noise;
   both gains are printed: over the no-condition model (two training runs) and over the same model given
   other users' cells (``environment_gain_r2_percent``, a permutation test; ``environment_gain_within_noise``
   when its interval over users holds 0);
4. held-out users: lsdm and no condition trained with `--split users`, scored on the held-out users.

Usage: python benchmarks/bench_accuracy.py [--home DIR] [--only default,new-city,env0,users]
``--home`` keeps the databases and models (a re-run reuses the registered models); default: a temporary folder.
Prints one JSON line per scenario.
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
BASELINES = ("seasonal-naive", "hour-of-week-mean", "arima")
PAPER_GAIN = 2.8


def lsdm(*args: str, home: Path, json_out: bool = True) -> dict:
    """Run `lsdm ... [--json]` in a child process with LSDM_HOME=home; its JSON output."""
    env = {**os.environ, "LSDM_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args, *(["--json"] if json_out else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"lsdm {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout) if json_out else {}


def registered(db: str, home: Path, name: str, dataset: str, split: str = "time") -> int | None:
    """The newest registered forecaster of that name (a prefix: the shipped one is "lsdm (shipped)"),
    data set and split; None when there is none (or no database yet)."""
    if not Path(db).exists():
        return None
    models = lsdm("models", "--db", db, home=home)["models"]
    for model in sorted(models, key=lambda m: -m["id"]):
        if (
            model["kind"] == "lsdm"
            and model["dataset"] == dataset
            and (model["name"] == name or model["name"].startswith(name + " ("))
        ):
            document = json.loads((Path(model["path"]) / "model.json").read_text())
            if document.get("split", "time") == split:
                return int(model["id"])
    return None


def summary(scenario: str, result: dict, seconds: float, **extra: object) -> dict:
    rows = {row["method"]: row for row in result["rows"] + result.get("table4", [])}
    out = {
        "benchmark": f"accuracy_{scenario}",
        "dataset": result["dataset"],
        "trained_on": result.get("trained_on"),
        "split": result.get("split"),
        "seconds": round(seconds),
        "rows": [
            {k: row.get(k) for k in ("method", "mse", "rmse", "mae", "cs", "r2", "crps", "cov50", "cov90")}
            for row in rows.values()
        ],
        "condition_gain_r2_percent": result.get("condition_gain_r2_percent"),
        "condition_gain_interval": result.get("condition_gain_interval"),
        "environment_gain_r2_percent": result.get("environment_gain_r2_percent"),
        "environment_gain_interval": result.get("environment_gain_interval"),
        **extra,
    }
    if "lsdm" in rows:
        ours = rows["lsdm"]
        present = [rows[b] for b in BASELINES if b in rows]
        out["lsdm_beats_baselines_rmse_r2"] = all(ours["rmse"] < b["rmse"] and ours["r2"] > b["r2"] for b in present)
    out["machine"], out["device"] = machine(), "cpu"
    print(json.dumps(out), flush=True)
    return out


def default_city(home: Path) -> str:
    """The default city with the shipped model installed (kept in ``home``)."""
    db = str(home / "default.sqlite")
    if registered(db, home, "lsdm", "synthetic-seed0") is None:
        lsdm("city", "build", "--db", db, home=home)
        lsdm("assets", "install", "--db", db, home=home)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--only", default="default,new-city,env0,users")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        home = (args.home or Path(tmp)).resolve()
        home.mkdir(parents=True, exist_ok=True)
        db = default_city(home)
        shipped = registered(db, home, "lsdm", "synthetic-seed0")
        if "default" in wanted:
            t0 = time.perf_counter()
            result = lsdm(
                "evaluate", "--db", db, "--model", str(shipped), "--report", str(home / "report-default"), home=home
            )
            out = summary("default_city", result, time.perf_counter() - t0, target_gain_r2_percent=PAPER_GAIN)
            out_gain = out["condition_gain_r2_percent"]
            print(
                json.dumps(
                    {
                        "benchmark": "accuracy_condition_gain",
                        "gain_r2_percent": out_gain,
                        "target_percent": PAPER_GAIN,
                        "meets_target": out_gain is not None and out_gain >= PAPER_GAIN,
                    }
                ),
                flush=True,
            )
        if "new-city" in wanted:
            t0 = time.perf_counter()
            lsdm("city", "build", "--db", db, "--seed", "1", "--name", "city-seed1", "--replace", home=home)
            encoder = json.loads((ROOT / "assets/default/manifest.json").read_text())["encoder_id"]
            lsdm("env", "build", "--db", db, "--dataset", "city-seed1", "--encoder", encoder, home=home)
            lsdm("data", "use", "synthetic-seed0", "--db", db, home=home, json_out=False)
            result = lsdm(
                "evaluate",
                "--db",
                db,
                "--model",
                str(shipped),
                "--dataset",
                "city-seed1",
                "--no-train",
                "--report",
                str(home / "report-city-seed1"),
                home=home,
            )
            summary("new_city", result, time.perf_counter() - t0)
        if "env0" in wanted:
            t0 = time.perf_counter()
            db0 = str(home / "env0.sqlite")
            if registered(db0, home, "lsdm", "city-env0") is None:
                lsdm("city", "build", "--db", db0, "--env-effect", "0", "--name", "city-env0", home=home)
                lsdm("env", "build", "--db", db0, "--dataset", "city-env0", home=home)
                lsdm("train", "--db", db0, "--dataset", "city-env0", home=home)
            if registered(db0, home, "lsdm-no-condition", "city-env0") is None:
                lsdm(
                    "train",
                    "--db",
                    db0,
                    "--dataset",
                    "city-env0",
                    "--config",
                    "lsdm-no-condition",
                    "--no-activate",
                    home=home,
                )
            result = lsdm(
                "evaluate", "--db", db0, "--no-train", "--no-arima", "--report", str(home / "report-env0"), home=home
            )
            interval = result.get("environment_gain_interval")
            summary(
                "env_effect_0",
                result,
                time.perf_counter() - t0,
                expected="no gain beyond noise (compare the default city's gain)",
                # The permutation test's interval over users holds 0: the model takes nothing from where
                # the users are. (The gain over lsdm-no-condition also holds a second training run.)
                environment_gain_within_noise=None if interval is None else interval["low"] <= 0 <= interval["high"],
            )
        if "users" in wanted:
            t0 = time.perf_counter()
            model = registered(db, home, "lsdm", "synthetic-seed0", split="users")
            if model is None:
                model = lsdm(
                    "train", "--db", db, "--dataset", "synthetic-seed0", "--split", "users", "--no-activate", home=home
                )["model_id"]
            if registered(db, home, "lsdm-no-condition", "synthetic-seed0", split="users") is None:
                lsdm(
                    "train",
                    "--db",
                    db,
                    "--dataset",
                    "synthetic-seed0",
                    "--split",
                    "users",
                    "--config",
                    "lsdm-no-condition",
                    "--no-activate",
                    home=home,
                )
            result = lsdm(
                "evaluate",
                "--db",
                db,
                "--model",
                str(model),
                "--no-train",
                "--no-arima",
                "--report",
                str(home / "report-users"),
                home=home,
            )
            summary("held_out_users", result, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
