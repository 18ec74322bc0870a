"""`lsdm load`, `lsdm load-whatif`, `lsdm loads`, `lsdm capacity` and `lsdm export load`: cell and area load
runs built up from every user's forecast (engine/load/core.py), outages and events at a cell
(engine/load/whatif.py), their listing and export, and the cells' capacities.

engine.load.forecast imports torch: the commands import it when they run (the start-up cost is measured in
cli/main.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import Commands, Compound, add_request_flags, emit, positive_int, request_of
from db import open_database
from db.queries import get_dataset
from engine.requests import LoadRequest, LoadWhatIfRequest, parse_sampler_text, sampler_text

LOAD_COMPOUNDS = (
    Compound(
        "--sampler",
        ("sampler", "sampler_steps"),
        lambda text: dict(zip(("sampler", "sampler_steps"), parse_sampler_text(text), strict=True)),
        "ddpm|ddim:STEPS",
        "ddpm (faithful, all steps) or ddim:STEPS (default "
        f"{sampler_text(LoadRequest.default('sampler'), LoadRequest.default('sampler_steps'))})",
    ),
)


def add_commands(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """load, load-whatif, loads, capacity."""
    load = commands.add_parser(
        "load",
        parents=[common, reporting],
        help="forecast the load of cells or an area, summed from every user's sample paths",
        description="Forecast a scope's per-service load and users present, hour by hour, as sample paths: path "
        "i of a cell is the sum of path i of the users in it then. Stores the run with its quantiles and "
        "the cells' capacity risk (P(load > capacity), expected excess, hours at risk) in one transaction.",
    )
    add_request_flags(load, LoadRequest, flags={"model_id": "--model"}, compounds=LOAD_COMPOUNDS)
    load.set_defaults(handler=cmd_load)

    whatif = commands.add_parser(
        "load-whatif",
        parents=[common, reporting],
        help="a cell goes down, or an event brings extra users: the neighbours' load and risk against the baseline",
        description="Two load runs of a cell and its nearest cells with the same seed and paired paths: the baseline "
        "and the scenario (outage: the cell's users re-homed to the nearest working cell; event: extra users "
        "copying one user's history present at the cell), stored in one transaction.",
    )
    add_request_flags(whatif, LoadWhatIfRequest, flags={"model_id": "--model"}, compounds=LOAD_COMPOUNDS)
    whatif.set_defaults(handler=cmd_load_whatif)

    loads = commands.add_parser("loads", parents=[common, reporting], help="the stored load runs of a data set")
    loads.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    loads.set_defaults(handler=cmd_loads)

    capacity = commands.add_parser(
        "capacity",
        parents=[common, reporting],
        help="show or set a cell's capacity (MB per hour)",
        description="Without --mb: the cell's capacity (set by an operator, or derived from its history: the "
        "99th percentile of its observed hourly load, at least 1 MB). --mb sets it, --default removes it.",
    )
    capacity.add_argument("cell", help="the cell's key")
    capacity.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    group = capacity.add_mutually_exclusive_group()
    group.add_argument("--mb", type=float, default=None, help="capacity in MB per hour, all services")
    group.add_argument("--default", action="store_true", help="back to the capacity derived from the history")
    capacity.set_defaults(handler=cmd_capacity)


def add_export(export: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`lsdm export load RUN --out FILE`."""
    parser = export.add_parser(
        "load",
        parents=[common],
        help="a stored load run as CSV or Parquet",
        description="One row per cell, hour and service (and 'total'): mean, 5/25/50/75/95 %% quantiles, the "
        "recorded load where known, users present, capacity, P(load > capacity), expected excess.",
    )
    parser.add_argument("run", type=positive_int, help="the load run's id (lsdm loads)")
    parser.add_argument("--out", type=Path, required=True, help="output file: .csv or .parquet")
    parser.add_argument("--replace", action="store_true", help="replace the output file if it exists")
    parser.set_defaults(handler=cmd_export_load)


def cmd_load(args: argparse.Namespace) -> int:
    from engine.load.forecast import run_load  # torch: see cli/main.py

    run = run_load(open_database(args.db), request_of(args))
    lines = [
        f"Load run {run['run_id']} with model {run['model_id']}: {len(run['cells'])} cells, "
        f"{run['users_forecast']} users forecast in {run['seconds']:.2f} s",
    ]
    for cell in run["cells"][:20]:
        lines.append(
            f"  {cell['cell']}: capacity {cell['capacity'] / 1e6:.2f} MB/h, {cell['hours_at_risk']} hours at risk; "
            "total MB per hour, median [5%, 95%], users, P(> capacity)"
        )
        for hour in cell["hours"][:48]:
            users = "-" if hour["users_present"] is None else f"{hour['users_present']['median']:.0f}"
            lines.append(
                f"    {hour['label']}: {hour['total']['median'] / 1e6:8.2f} "
                f"[{hour['total']['q05'] / 1e6:.2f}, {hour['total']['q95'] / 1e6:.2f}]"
                f"  users {users}  P {hour['p_exceed']:.2f}"
            )
    if len(run["cells"]) > 20:
        lines.append(f"  ... and {len(run['cells']) - 20} more cells (--json for all, or lsdm export load)")
    emit(args, run, lines)
    return 0


def cmd_load_whatif(args: argparse.Namespace) -> int:
    from engine.load.whatif import run_load_whatif  # torch: see cli/main.py

    result = run_load_whatif(open_database(args.db), request_of(args))
    lines = [
        f"{result['name']}: runs {result['baseline_run_id']} (baseline) and {result['scenario_run_id']} (scenario), "
        f"{result['users_forecast']} users forecast in {result['seconds']:.2f} s",
        f"  change: {result['change']}",
        "  total MB per hour, median: baseline -> scenario (paired difference, mean [5%, 95%]); P(> capacity)",
    ]
    for cell in result["cells"]:
        lines.append(f"  {cell['cell']} (capacity {cell['capacity'] / 1e6:.2f} MB/h)")
        for hour in cell["hours"]:
            d = hour["difference"]
            lines.append(
                f"    {hour['label']}: {hour['baseline_median'] / 1e6:8.2f} -> {hour['scenario_median'] / 1e6:8.2f} "
                f"({d['mean'] / 1e6:+.2f} [{d['q05'] / 1e6:+.2f}, {d['q95'] / 1e6:+.2f}])  "
                f"P {hour['p_exceed']['baseline']:.2f} -> {hour['p_exceed']['scenario']:.2f}"
            )
    emit(args, result, lines)
    return 0


def cmd_loads(args: argparse.Namespace) -> int:
    from engine.load.core import load_runs

    database = open_database(args.db)
    with database.session() as session:
        dataset = get_dataset(session, args.dataset)
        dataset_id, name = dataset.id, dataset.name
    runs = load_runs(database, dataset_id)
    lines = [f"Load runs of {name}:"] + [
        f"  {r['run_id']:>4}  {r['kind']:<7} {r['scope'][:40]:<40} start {r['start']} +{r['horizon']} h  "
        f"{r['cells']} cells, {r['users']} users, {r['cells_at_risk']} cells at risk"
        for r in runs
    ]
    emit(args, {"dataset": name, "runs": runs}, lines if runs else [f"No load runs of {name} yet."])
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from engine.load.core import cell_capacity, set_capacity

    database = open_database(args.db)
    with database.session() as session:
        dataset_id = get_dataset(session, args.dataset).id
    if args.mb is not None or args.default:
        set_capacity(database, dataset_id, args.cell, None if args.default else args.mb)
    found = cell_capacity(database, dataset_id, args.cell)
    source = "set by an operator" if found["set_by_operator"] else "derived from its history"
    emit(args, found, [f"{args.cell}: {found['total_bytes'] / 1e6:.2f} MB per hour ({source})"])
    return 0


def cmd_export_load(args: argparse.Namespace) -> int:
    from engine.errors import check_output_file
    from engine.load.core import export_load

    check_output_file(args.out, (".csv", ".parquet"), replace=args.replace, field="--out")  # named as typed
    rows = export_load(open_database(args.db), args.run, args.out, replace=args.replace)
    print(f"wrote {rows} rows to {args.out}")
    return 0
