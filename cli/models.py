"""`lsdm train`, `lsdm forecast`, `lsdm whatif`, `lsdm models`, `lsdm evaluate`, `lsdm export windows` and
`lsdm score`: the forecasters, their forecasts and their evaluation.

The engine modules that import torch, and cli/report_figures.py (Matplotlib), are imported by the
commands that use them (the start-up cost is measured in cli/main.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.common import (
    Commands,
    Compound,
    add_request_flags,
    bounded_int,
    emit,
    existing_file,
    positive_int,
    request_of,
    stderr_progress,
)
from cli.load import add_export as add_export_load
from db import open_database
from db.queries import all_models, get_dataset
from engine.data.windows import Normaliser, SplitSpec, load_series, make_splits
from engine.errors import InputError, check_output_file
from engine.evaluation.scoring import export_windows, score_predictions
from engine.requests import (
    EvaluateRequest,
    ForecastRequest,
    TrainRequest,
    WhatIfRequest,
    parse_entities_text,
    parse_location_text,
    parse_sampler_text,
    sampler_text,
)

# --entity, --sampler and --location keep their text forms: each stands for two fields of ForecastRequest.
FORECAST_COMPOUNDS = (
    Compound(
        "--entity",
        ("entity_kind", "entities", "every"),
        lambda text: (
            {"entities": (), "every": True}
            if text.strip() == "all"
            else {**dict(zip(("entity_kind", "entities"), parse_entities_text(text), strict=True)), "every": False}
        ),
        "user:ID[,user:ID...]|all",
        "who to forecast: users (user:ID) or cells (cell:ID), comma-separated; all: every entity of the data set, "
        "written as Parquet parts (--out, --executor)",
    ),
    Compound(
        "--sampler",
        ("sampler", "sampler_steps"),
        lambda text: dict(zip(("sampler", "sampler_steps"), parse_sampler_text(text), strict=True)),
        "ddpm|ddim:STEPS",
        "ddpm (faithful, all steps) or ddim:STEPS (default "
        f"{sampler_text(ForecastRequest.default('sampler'), ForecastRequest.default('sampler_steps'))})",
    ),
    Compound(
        "--location",
        ("location", "cells"),
        lambda text: dict(zip(("location", "cells"), parse_location_text(text), strict=True)),
        "habitual|stay|observed|cell:ID,...",
        "where the entity is during the forecast (default: its habitual cell for that hour; stay: where it "
        "was last; observed: the cells the data recorded, for backtests; cell:ID,...: these cells, one per "
        "hour, the last one kept)",
    ),
)

WHATIF_COMPOUNDS = (
    Compound(
        "--entity",
        ("entity_kind", "entity"),
        lambda text: _one_entity(text),
        "user:ID",
        "the entity to forecast: a user (user:ID) or a cell (cell:ID)",
    ),
    FORECAST_COMPOUNDS[1],
)


def _one_entity(text: str) -> dict:
    kind, keys = parse_entities_text(text)
    if len(keys) != 1:
        raise InputError(f"a what-if compares forecasts of one entity, got {len(keys)}", field="entity")
    return {"entity_kind": kind, "entity": keys[0]}


def add_commands(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """train, forecast, whatif, models, evaluate, export windows, score."""
    _add_train(commands, common, reporting)
    _add_forecast(commands, common, reporting)
    _add_whatif(commands, common, reporting)
    _add_models(commands, common, reporting)
    _add_evaluate(commands, common, reporting)
    _add_export_and_score(commands, common, reporting)


def _add_train(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm train`."""
    train_p = commands.add_parser(
        "train",
        parents=[common, reporting],
        help="train an LSDM forecaster",
        description="Train an LSDM forecaster on a data set (AdamW, EMA, gradient clipping, early stopping on "
        "validation), save it (safetensors + JSON) and register it as the active model.",
    )
    add_request_flags(
        train_p, TrainRequest, flags={"activate": ("--no-activate", "register without making it the active model")}
    )
    train_p.add_argument(
        "--nproc",
        type=bounded_int("--nproc", 1, MAX_PROCESSES),
        default=1,
        help="training processes on this machine (torchrun, DistributedDataParallel: gloo on the CPU, one GPU "
        "each with nccl); each takes its share of every batch (default 1)",
    )
    train_p.set_defaults(handler=cmd_train)


def _add_forecast(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm forecast`."""
    forecast = commands.add_parser(
        "forecast",
        parents=[common, reporting],
        help="probabilistic recursive forecast for users or cells",
        description="Forecast the coming hours per service: every sample path feeds its own samples back. "
        "The run is stored with every parameter and can be reproduced exactly.",
    )
    add_request_flags(forecast, ForecastRequest, flags={"model_id": "--model"}, compounds=FORECAST_COMPOUNDS)
    forecast.set_defaults(handler=cmd_forecast)


def _add_whatif(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm whatif`."""
    whatif = commands.add_parser(
        "whatif",
        parents=[common, reporting],
        help="forecast one entity as things are and under a scenario",
        description="Two forecasts of one entity with the same seed: the baseline and the scenario (another "
        "location, edited cells: POIs, description, tile; other Eq. 9 weights; guidance). Both runs and the "
        "scenario are stored in one transaction, as the What-if page does.",
    )
    add_request_flags(whatif, WhatIfRequest, compounds=WHATIF_COMPOUNDS)
    whatif.set_defaults(handler=cmd_whatif)


def _add_models(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm models`."""
    models = commands.add_parser("models", parents=[common, reporting], help="registered models; * marks active ones")
    models.set_defaults(handler=cmd_models)


def _add_evaluate(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm evaluate`."""
    evaluate_p = commands.add_parser(
        "evaluate",
        parents=[common, reporting],
        help="reproduce the paper's tables on this data",
        description="Score the model, its comparison models (trained if missing) and the baselines on the test day; "
        "write report.md, CSV tables and PNG plots.",
    )
    add_request_flags(
        evaluate_p,
        EvaluateRequest,
        flags={
            "model_id": "--model",
            "train_missing": ("--no-train", "do not train missing comparison models"),
            "include_arima": ("--no-arima", "leave ARIMA out (it takes about 2 minutes)"),
            "include_learned": ("--no-learned", "leave the learned baselines (LightGBM, PatchTST) out"),
        },
    )
    evaluate_p.add_argument("--report", default=None, metavar="DIR", help="write the report into DIR")
    evaluate_p.set_defaults(handler=cmd_evaluate)


def _add_export_and_score(
    commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser
) -> None:
    """`lsdm export windows` and `lsdm score`."""
    export = commands.add_parser("export", help="export data for outside models").add_subparsers(
        dest="action", required=True, metavar="WHAT"
    )
    export_windows_p = export.add_parser(
        "windows",
        parents=[common, reporting],
        help="the exact evaluation windows and splits as .npz",
        description="Write every train/validation/test window (history, target, calendar, environment) with "
        "the documented keys of engine/evaluation/scoring.py, for `lsdm score`.",
    )
    export_windows_p.add_argument("--out", type=Path, required=True, help="output .npz file")
    export_windows_p.add_argument("--replace", action="store_true", help="replace the output file if it exists")
    export_windows_p.add_argument(
        "--model",
        type=int,
        default=None,
        help="use this model's history length and normalisation (default: the active one)",
    )
    export_windows_p.add_argument(
        "--history", type=positive_int, default=None, help="history hours (default: the model's)"
    )
    export_windows_p.add_argument(
        "--split", choices=["time", "users"], default="time", help="split kind (default time)"
    )
    export_windows_p.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    export_windows_p.set_defaults(handler=cmd_export_windows)
    add_export_load(export, common)

    score_p = commands.add_parser(
        "score",
        parents=[reporting],
        help="score outside predictions on the exported windows",
        description="Score predictions (.npz with `prediction` or `samples`) with the same metrics as the report.",
    )
    score_p.add_argument("--predictions", type=existing_file, required=True, help="predictions .npz")
    score_p.add_argument("--windows", type=existing_file, required=True, help="the windows .npz it was made from")
    score_p.set_defaults(handler=cmd_score)


# --- handlers -------------------------------------------------------------------------------------


MAX_PROCESSES = 64


def _relaunch_with_torchrun(args: argparse.Namespace) -> int:
    """`lsdm train --nproc N`: the same command in N processes under torchrun (one process group on this
    machine); rank 0 prints and registers the model. Returns torchrun's exit status."""
    import subprocess

    argv, skip = [], False
    for part in args.argv:
        if skip:
            skip = False
        elif part == "--nproc":
            skip = True
        elif not part.startswith("--nproc="):
            argv.append(part)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
    threads = str(max(1, (os.cpu_count() or 1) // args.nproc))  # the cores shared (torchrun would say it sets 1)
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    return subprocess.call([*command, "-m", "cli.main", *argv], env=environment)


def cmd_train(args: argparse.Namespace) -> int:
    from engine.train import train_request  # torch: see cli/main.py

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        open_database(args.db).dispose()  # a bad --db is said once, here, not by every process
        request_of(args).checked().model_config()  # and so is a bad request or configuration
        return _relaunch_with_torchrun(args)

    def report(entry: dict) -> None:
        if not args.json:
            print(
                f"  epoch {entry['epoch']:>3}: train loss {entry['train_loss']:.4f}  "
                f"validation loss {entry['val_loss']:.4f}  ({entry['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    name, result = train_request(open_database(args.db), request_of(args), progress=report)
    if int(os.environ.get("RANK", "0")) != 0:  # a helper process of `--nproc`: rank 0 reports
        return 0
    payload = {"model_id": result.record_id, "config": name, "path": str(result.path), **result.metrics}
    curve = " ".join(f"{e['val_loss']:.3f}" for e in result.metrics["history"])
    emit(
        args,
        payload,
        [
            f"Trained model {result.record_id} ({name}) in {result.metrics['train_seconds']:.0f} s "
            f"on {result.metrics['device']}; stopped by {result.metrics['stopped_by']}",
            f"  validation loss by epoch: {curve}",
            f"  {result.metrics['split']}",
            *(f"  adapted to the data: {change}" for change in result.metrics.get("adapted", [])),
            f"  saved to {result.path}",
        ],
    )
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    from engine.forecast import run_forecast  # torch: see cli/main.py

    run = run_forecast(open_database(args.db), request_of(args))
    lines = [f"Forecast run {run['run_id']} with model {run['model_id']} in {run['seconds']:.2f} s"]
    if "every" in run:  # --entity all: the parts' folder and the data set's total
        every = run["every"]
        lines.append(
            f"  every entity ({every['entities']:,}) on {every['executor']}: {every['rows']:,} rows of quantiles "
            f"in {every['parts']}"
        )
        lines.append("  the data set's total, MB per hour: median [5%, 95%]")
        for step in every["total"][:48]:
            median, low, high = (step["total"][key] / 1e6 for key in ("median", "q05", "q95"))
            lines.append(f"    {step['label']}: {median:10.1f} [{low:.1f}, {high:.1f}]")
    for entity in run["entities"]:
        lines.append(f"  {entity['entity']}: total MB per hour, median [5%, 95%]")
        for step in entity["steps"][:48]:
            lines.append(
                f"    {step['label']}: {step['total']['median'] / 1e6:8.2f} "
                f"[{step['total']['q05'] / 1e6:.2f}, {step['total']['q95'] / 1e6:.2f}]"
                + (f"  truth {step['total']['truth'] / 1e6:.2f}" if step["total"].get("truth") is not None else "")
            )
    emit(args, run, lines)
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    from engine.whatif import run_whatif  # torch: see cli/main.py

    try:
        result = run_whatif(open_database(args.db), request_of(args))
    except InputError as error:  # a scenario's own fields ("a", "cell_edits.C0001.poi_counts") are --scenario's
        if error.field and error.field not in WhatIfRequest.field_specs():
            raise error.with_field(f"--scenario.{error.field}") from None
        raise
    base, scen = result["baseline"]["total"]["median"], result["scenario"]["total"]["median"]
    lines = [
        f"What-if {result['scenario_id']} '{result['name']}': runs {result['baseline_run_id']} (baseline) and "
        f"{result['scenario_run_id']} (scenario) in {result['seconds']:.2f} s",
        "  total MB per hour, median: baseline -> scenario (difference)",
    ]
    for step, b, s in zip(result["steps"], base, scen, strict=True):
        lines.append(
            f"    {step['label']}: {b / 1e6:8.2f} -> {s / 1e6:8.2f} ({(s - b) / 1e6:+.2f})"
            f"  cell {step['baseline_cell']} -> {step['scenario_cell']}"
        )
    emit(args, result, lines)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    with database.session() as session:
        models = [
            {
                "id": m.id,
                "name": m.name,
                "kind": m.kind,
                "dataset": d,
                "active": m.is_active,
                "created_at": m.created_at.isoformat(timespec="seconds"),
                "path": m.path,
                "best_val_loss": (m.metrics or {}).get("best_val_loss"),
            }
            for m, d in all_models(session)
        ]
    lines = [
        f"{'*' if m['active'] else ' '} {m['id']:>4} {m['kind']:6s} {m['name']:24s} {m['dataset'] or '-':20s} "
        f"{m['created_at']}"
        for m in models
    ]
    emit(args, {"models": models}, lines or ["no models yet; run `lsdm train`"])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cli.report_figures import draw  # Matplotlib and torch: see cli/main.py
    from engine.evaluation.evaluate import evaluate_request

    request = request_of(args)
    if request.level == "cell":
        return _evaluate_cells(args, request)
    result = evaluate_request(
        open_database(args.db),
        request,
        report_dir=args.report,
        draw=draw,
        progress=stderr_progress(not args.json),
    )
    lines = [
        f"Evaluation of model {result['model_id']} on {result['dataset']} ({result['seconds']:.0f} s)",
        f"  {'method':20s} {'MSE':>8s} {'RMSE':>8s} {'MAE':>8s} {'CS':>8s} {'R2':>8s} {'CRPS':>8s} "
        f"{'cov50':>6s} {'cov90':>6s}",
    ]
    for row in result["rows"] + [r for r in result["table4"] if r not in result["rows"]]:
        lines.append(
            f"  {row['method']:20s} {row['mse']:8.4f} {row['rmse']:8.4f} {row['mae']:8.4f} {row['cs']:8.4f} "
            f"{row['r2']:8.4f} {row['crps']:8.4f} {row['cov50']:6.3f} {row['cov90']:6.3f}"
        )
    lines += [f"  {note}" for note in result["notes"]]
    if result.get("report"):
        lines.append(f"  report: {Path(result['report'][0]).parent}")
    emit(args, result, lines)
    return 0


def _evaluate_cells(args: argparse.Namespace, request: EvaluateRequest) -> int:
    """`lsdm evaluate --level cell`: the table of engine/evaluation/cell_level.py (and its CSVs with --report)."""
    from engine.evaluation.cell_level import evaluate_cells, write_cell_report  # torch: see cli/main.py

    result = evaluate_cells(open_database(args.db), request, progress=stderr_progress(not args.json))
    lines = [
        f"Cell-level evaluation of model {result['model_id']} on {result['dataset']}: the {result['cells']} busiest "
        f"cells, test day from hour {result['start']}, {result['samples']} paths, {result['users_forecast']} users "
        f"forecast ({result['seconds']:.0f} s)",
        f"  mean load {result['truth_mean_mb']:.2f} MB per cell-hour; hours over capacity "
        f"{result['hours_over_capacity']}, over the busy-hour level {result['hours_over_busy']}",
        f"  {'method':18s} {'RMSE MB':>9s} {'CRPS MB':>9s} {'cov90':>6s} {'Brier cap':>9s} {'Brier busy':>10s}",
    ]
    for row in result["rows"]:
        cov = "" if row["cov90"] is None else f"{row['cov90']:.3f}"
        lines.append(
            f"  {row['method']:18s} {row['rmse_mb']:9.3f} {row['crps_mb']:9.3f} {cov:>6s} "
            f"{row['brier_capacity']:9.4f} {row['brier_busy']:10.4f}"
        )
    lines += [f"  {note}" for note in result["notes"]]
    if args.report:
        written = write_cell_report(result, args.report)
        lines.append(f"  report: {written[0].parent}")
    emit(args, result, lines)
    return 0


def cmd_export_windows(args: argparse.Namespace) -> int:
    from engine.train import load_model  # torch: see cli/main.py

    database = open_database(args.db)
    with database.session() as session:
        dataset = get_dataset(session, args.dataset)
        series = load_series(session, dataset)
    check_output_file(args.out, (".npz",), replace=args.replace, field="--out")  # before the work, not after it
    history = args.history
    normaliser = None
    if args.model is not None or history is None:
        try:
            _, forecaster = load_model(database, args.model, dataset=dataset)
            history, normaliser = history or forecaster.config.history, forecaster.normaliser
        except InputError:
            if args.model is not None:
                raise
    spec = SplitSpec(kind=args.split, history=history or 24)
    splits = make_splits(series, spec)
    normaliser = normaliser or Normaliser.fit(series.traffic[:, : splits.train_hours_end])
    summary = export_windows(series, normaliser, splits, args.out, replace=args.replace)
    emit(args, {"out": str(args.out), **summary}, [f"Wrote {args.out}: {summary}"])
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    result = score_predictions(args.predictions, args.windows)
    emit(args, result, [f"{k}: {v}" for k, v in result.items()])
    return 0
