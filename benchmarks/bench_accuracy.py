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
       python benchmarks/bench_accuracy.py --dataset NAME [--quick] [--home DIR]
``--home`` keeps the databases and models (a re-run reuses the registered models); default: a temporary folder.
Prints one JSON line per scenario.

``--dataset NAME`` reproduces one data set's Table III (docs/results.md), every baseline included:
- ``default``: the default city with the shipped model (scenario 1 without the comparison models' training:
  ``--no-train``, the comparison models registered in ``--home`` are scored);
- ``beijing-5g``: the real week of ``../shared/data/beijing_5g`` (960 stations, one service, the release's
  32-d station vectors as z_env), ingested with `lsdm ingest matrix`, trained with the defaults (`lsdm train`),
  scored with `lsdm evaluate --no-train`. Skipped with a message when ``../shared/data`` is absent.
``--quick`` passes ``--no-arima`` and fewer samples (16 per window, 8 paths): a faster, noisier table.
``--fracast-entities N`` adds the pretrained fracast model, scored on N entities' test day (docs/model.md).
Recorded runs: ``--dataset beijing-5g --fracast-entities 50`` and ``--dataset default --fracast-entities 10``.
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
BASELINES = ("seasonal-naive", "hour-of-week-mean", "arima", "ridge", "lightgbm", "patchtst")
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
        # Issue 18's target: first on CRPS and RMSE against every other Table III row, by >= 3 % on CRPS
        # against the best of them, and the 90 % interval covering 85-95 %.
        others = [row for row in result["rows"] if row["method"] != "lsdm"]
        if others:
            best = min(others, key=lambda row: row["crps"])
            margin = 100 * (best["crps"] - ours["crps"]) / best["crps"]
            out["crps_best_other"] = best["method"]
            out["crps_margin_percent"] = round(margin, 2)
            out["meets_target"] = (
                margin >= 3 and all(ours["rmse"] < row["rmse"] for row in others) and 0.85 <= ours["cov90"] <= 0.95
            )
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


BEIJING = ROOT.parent / "shared" / "data" / "beijing_5g" / "beijing.npz"
DATASETS = ("default", "beijing-5g")


def dataset_table(name: str, home: Path, quick: bool, fracast_entities: int = 0) -> dict | None:
    """One data set's Table III with every baseline (see the module docstring); None when its data is absent."""
    t0 = time.perf_counter()
    options = ["--no-train", "--report", str(home / f"report-{name}")]
    if quick:
        options += ["--no-arima", "--samples", "16", "--path-samples", "8"]
    if fracast_entities:
        options += ["--fracast-entities", str(fracast_entities)]
    if name == "default":
        db = default_city(home)
        model = registered(db, home, "lsdm", "synthetic-seed0")
    else:
        if not BEIJING.exists():
            print(json.dumps({"benchmark": f"accuracy_{name}", "skipped": f"{BEIJING} is absent"}), flush=True)
            return None
        db = str(home / "beijing.sqlite")
        model = registered(db, home, "lsdm", name)
        if model is None:
            lsdm(
                "ingest", "matrix", "--db", db,
                "--values", f"{BEIJING}:bs_record", "--embeddings", f"{BEIJING}:bs_kge",
                "--start", "2024-01-01T00:00", "--services", "5G", "--name", name,
                home=home,
            )  # fmt: skip
            model = lsdm("train", "--db", db, "--dataset", name, home=home)["model_id"]
    result = lsdm("evaluate", "--db", db, "--model", str(model), *options, home=home)
    return summary(f"table3_{name}", result, time.perf_counter() - t0, quick=quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--only", default="default,new-city,env0,users")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="one data set's Table III only")
    parser.add_argument("--quick", action="store_true", help="with --dataset: no ARIMA, fewer samples")
    parser.add_argument(
        "--fracast-entities", type=int, default=0, help="with --dataset: score fracast on this many entities' test day"
    )
    args = parser.parse_args()
    wanted = set() if args.dataset else set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        home = (args.home or Path(tmp)).resolve()
        home.mkdir(parents=True, exist_ok=True)
        if args.dataset:
            dataset_table(args.dataset, home, args.quick, args.fracast_entities)
            return
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
