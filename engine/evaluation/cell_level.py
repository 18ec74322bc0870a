"""`lsdm evaluate --level cell`: the bottom-up cell load against the cells' own forecasts on the test day.

The question an operator asks is a cell's load, and the product answers it bottom-up (engine/load/: every
user's sample paths summed over the cells they are drawn into). This scores that answer where it is used,
per cell, against what an operator could use instead:

- ``bottom-up``: the users who can reach the scored cells, forecast by the evaluated (user-level) model with
  sampled locations (docs/model.md#where-users-will-be); path i of a cell is the sum of path i of the users
  in it then. Exactly what `lsdm load` computes.
- ``direct``: a model of the evaluated model's own configuration (architecture, size, training budget and
  seed) trained on the cells' summed traffic, a data set derived with `lsdm data aggregate --to cells` (the
  newest such data set of the source is reused, and so is a matching model on it; missing ones are made
  when ``train_missing``, else the row is left out with a note). It reads each cell's own history.
- ``users-point-sum``: each user's mean path placed at their habitual cell, summed (a point forecast: the
  product before issue 17, summed by hand).
- ``seasonal-naive`` (the cell's load 24 h earlier) and ``hour-of-week-mean`` (its mean load at the same hour
  of the week before the start; of the day, on data shorter than a week and a day), from each cell's own
  recorded load.

The test day: the data set's last 24 hours (the time split's test day), the ``cells`` busiest cells by
recorded load before it. Scores on each cell's total load per hour, in MB: RMSE of the mean, CRPS (fair
estimator; a point forecast's is its absolute error), 90 % interval coverage (probabilistic methods) and the
Brier score of P(load > threshold) for two thresholds: the cell's capacity (the operator's where set, else
the 99th percentile of its recorded hourly load) and a busy hour (the 90th percentile of its recorded load
before the start), the latter being exceeded often enough to tell methods apart. Pooled over cells and
hours, and per cell. Kept with the model (``metrics["cell_evaluation"]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import select

from db import Database
from db.models import Dataset, ModelRecord, utcnow
from db.queries import activate_dataset, active_model, get_dataset
from engine.errors import InputError
from engine.evaluation.metrics import crps_per_point, interval_coverage
from engine.forecast import ForecastContext, LocationPlan, load_context, recursive_forecast
from engine.load.core import Capacities, CellTable, cell_history_load, scope_lookup, sum_by_cell
from engine.load.forecast import reachable_users, user_chunks
from engine.model import Forecaster
from engine.requests import AggregateRequest, EnvRequest, EvaluateRequest
from engine.train import load_model, train

Progress = Callable[[str], None]

CELL_METHODS = ("bottom-up", "direct", "users-point-sum", "seasonal-naive", "hour-of-week-mean")
METHOD_TEXT = {
    "bottom-up": "the users' sample paths summed per cell (lsdm load)",
    "direct": "a model of the same configuration trained on the cells' summed traffic",
    "users-point-sum": "the users' mean paths at their habitual cells, summed",
    "seasonal-naive": "the cell's load 24 h earlier",
    "hour-of-week-mean": "the cell's mean load at that hour of the week",
}
TEST_HOURS = 24
PROGRESS_STEPS = 6  # the most messages an evaluation sends (loading ... forecasting the cells directly)
BUSY_QUANTILE = 0.9
# The settings that make a registered cell model the direct comparison: everything but the bookkeeping.
_NOT_MATCHED = ("seed",)


def scores(truth: np.ndarray, samples: np.ndarray, capacity: np.ndarray, busy: np.ndarray) -> dict:
    """truth (C, N), samples (S, C, N) (S = 1: a point forecast), thresholds (C,) -> pooled scores and the
    per-cell ones (lists in the cells' order)."""
    mean = samples.mean(axis=0)
    probabilistic = samples.shape[0] > 1
    crps = crps_per_point(truth, samples) if probabilistic else np.abs(mean - truth)

    def brier(threshold: np.ndarray) -> np.ndarray:
        p = (samples > threshold[None, :, None]).mean(axis=0)
        return (p - (truth > threshold[:, None])) ** 2  # (C, N)

    brier_capacity, brier_busy = brier(capacity), brier(busy)
    out: dict = {
        "rmse_mb": float(np.sqrt(np.mean((mean - truth) ** 2))),
        "crps_mb": float(np.mean(crps)),
        "cov90": interval_coverage(truth, samples, 0.9) if probabilistic else None,
        "brier_capacity": float(np.mean(brier_capacity)),
        "brier_busy": float(np.mean(brier_busy)),
        "crps_mb_median_over_cells": float(np.median(crps.mean(axis=1))),
    }
    per_cell = {
        "rmse_mb": np.sqrt(np.mean((mean - truth) ** 2, axis=1)).tolist(),
        "crps_mb": crps.mean(axis=1).tolist(),
        "cov90": [interval_coverage(truth[c], samples[:, c], 0.9) for c in range(len(truth))]
        if probabilistic
        else [None] * len(truth),
        "brier_busy": brier_busy.mean(axis=1).tolist(),
    }
    return {**out, "per_cell": per_cell}


def _cell_dataset(database: Database, source_name: str, *, create: bool, say: Progress) -> str | None:
    """The newest cell data set aggregated from ``source_name``, or a new one (``create``); the active data set
    stays the active one either way."""
    with database.session() as session:
        derived = [
            d
            for d in session.scalars(select(Dataset).where(Dataset.entity_kind == "cell").order_by(Dataset.id.desc()))
            if (d.params or {}).get("aggregated_from") == source_name
        ]
        if derived:
            return derived[0].name
        taken = set(session.scalars(select(Dataset.name)))
    if not create:
        return None
    from engine.data.aggregate import store_aggregate

    name, n = f"{source_name}-cells", 2
    while name in taken:  # a data set the user made keeps its name
        name, n = f"{source_name}-cells-{n}", n + 1
    say(f"summing the users of every cell into data set {name!r} ...")
    with database.write_session() as session, session.begin():
        active = get_dataset(session)
        store_aggregate(session, AggregateRequest(dataset=source_name, name=name))
        session.flush()
        activate_dataset(session, active)  # the evaluation does not change which data set is open
    return name


def _cell_environment(database: Database, cells_name: str, encoder: str | None, say: Progress) -> None:
    """The cells' embeddings by the evaluated model's encoder (their tiles and descriptions were copied)."""
    if encoder is None:
        return
    from engine.env.build import build_environment_for
    from engine.env.pipeline import environment_info

    info = environment_info(database, cells_name)
    if info.get("encoder") == encoder and info.get("embeddings", 0) >= info.get("cells", 0):
        return
    say(f"embedding the cells of {cells_name!r} with encoder {encoder} ...")
    build_environment_for(database, EnvRequest(dataset=cells_name, encoder=encoder))


def _direct_model(
    database: Database, cells_name: str, base: ModelRecord, forecaster: Forecaster, *, create: bool, say: Progress
) -> tuple[ModelRecord, Forecaster] | None:
    """The newest model on the cell data set with the evaluated model's configuration, or a new one."""
    config = forecaster.config
    with database.session() as session:
        dataset = get_dataset(session, cells_name)
        ids = session.scalars(
            select(ModelRecord.id)
            .where(ModelRecord.kind == "lsdm", ModelRecord.dataset_id == dataset.id)
            .order_by(ModelRecord.id.desc())
        ).all()
        has_active = active_model(session, dataset.id) is not None
    wanted = {k: v for k, v in vars(config).items() if k not in _NOT_MATCHED}
    for record_id in ids:
        found = load_model(database, record_id)
        if (
            found[1].meta.get("split", "time") == "time"
            and {k: v for k, v in vars(found[1].config).items() if k not in _NOT_MATCHED} == wanted
        ):
            return found
    if not create:
        return None
    say(f"training the direct cell model ({base.name}'s configuration) on {cells_name!r} ...")
    name = base.name.removesuffix(" (shipped)")  # the configuration's name; this model is not the shipped one
    result = train(database, name, config, dataset_name=cells_name, split="time", activate=not has_active)
    return load_model(database, result.record_id)


def _bottom_up(
    context: ForecastContext, scored: np.ndarray, start: int, samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(C, S, N) bottom-up totals, (C, N) the users' point forecasts summed, and the users forecast (bytes)."""
    series = context.series
    n_cells = len(series.cell_keys)
    users, cells = reachable_users(
        series, LocationPlan("sampled"), scored, start=start, horizon=TEST_HOURS, samples=samples, seed=seed
    )
    habitual = np.array(
        [[series.habitual_cell(int(u), start + n, before=start) for n in range(TEST_HOURS)] for u in users]
    ).reshape(len(users), TEST_HOURS)
    lookup = scope_lookup(scored, n_cells)
    bottom_up = np.zeros((len(scored), samples, TEST_HOURS))
    point_sum = np.zeros((len(scored), TEST_HOURS))
    for positions, _hours in user_chunks(cells, scored, n_cells):
        paths = recursive_forecast(
            context.forecaster,
            series,
            users[positions].tolist(),
            start=start,
            horizon=TEST_HOURS,  # every hour: the point forecasts need them all
            samples=samples,
            plan=LocationPlan.drawn(cells[positions]),
            seed=seed,
        ).paths  # (U, S, N, K)
        bottom_up += sum_by_cell(paths, cells[positions], scored, n_cells)[0].sum(axis=-1)
        mean_total = paths.sum(axis=-1).mean(axis=1)  # (U, N)
        where = lookup[np.where(habitual[positions] >= 0, habitual[positions], n_cells)]  # (U, N)
        u, n = np.nonzero(where >= 0)
        np.add.at(point_sum, (where[u, n], n), mean_total[u, n])
    return bottom_up, point_sum, len(users)


def evaluate_cells(database: Database, request: EvaluateRequest, *, progress: Progress | None = None) -> dict:
    """Score the bottom-up cell load of the request's model against the cells' own forecasts (module
    docstring); keep the result with the model unless it was scored on another data set."""
    request = request.checked()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    record, forecaster = load_model(database, request.model_id)
    with database.session() as session:
        home = session.get_one(Dataset, record.dataset_id) if record.dataset_id else get_dataset(session)
        source = get_dataset(session, request.dataset) if request.dataset else home
        source_name, own_data, source_kind = source.name, source.id == home.id, source.entity_kind
    if source_kind == "cell":
        raise InputError(
            f"the entities of {source_name!r} are cells: the cell level compares users summed to cells with the "
            "cells' own forecasts, so it needs a user-level data set",
            field="level",
        )
    say("loading the model and the data ...")
    users_ctx = load_context(database, model_id=record.id, dataset_name=source_name)
    series = users_ctx.series
    start = series.hours - TEST_HOURS
    if start < forecaster.config.history + 24:
        raise InputError(
            f"{source_name!r} has {series.hours} hours: the cell level needs the model's history "
            f"({forecaster.config.history} h), a day before the test day and the test day",
            field="dataset",
        )
    table = CellTable.read(database, users_ctx.dataset_id, series)
    history = cell_history_load(series, table)  # (C, T) bytes
    scored = np.argsort(-history[:, :start].sum(axis=1), kind="stable")[: request.cells]
    scored = scored[history[scored, :start].sum(axis=1) > 0]  # a cell nobody was ever in is not a test
    if len(scored) == 0:
        raise InputError(f"no cell of {source_name!r} has recorded traffic before its test day", field="dataset")
    truth = history[scored, start : start + TEST_HOURS] / 1e6  # (C, N) MB
    capacity = Capacities.read(database, series, table).total[scored] / 1e6
    busy = np.quantile(history[scored, :start], BUSY_QUANTILE, axis=1) / 1e6
    notes: list[str] = []

    say(f"forecasting the users who can reach the {len(scored)} busiest cells ...")
    bottom_up, point_sum, n_users = _bottom_up(users_ctx, scored, start, request.path_samples, seed=0)
    forecasts: dict[str, np.ndarray] = {"bottom-up": bottom_up.transpose(1, 0, 2) / 1e6}

    cells_name = _cell_dataset(database, source_name, create=request.train_missing, say=say)
    direct_id = None
    if cells_name is None:
        notes.append("direct: no cell data set derived from this one (`lsdm data aggregate --to cells`); left out")
    else:
        _cell_environment(database, cells_name, forecaster.meta.get("data", {}).get("encoder_id"), say)
        found = _direct_model(database, cells_name, record, forecaster, create=request.train_missing, say=say)
        if found is None:
            notes.append(f"direct: no model of this configuration on {cells_name!r} (train one, or allow training)")
        else:
            direct_id = found[0].id
            say(f"forecasting the cells with the direct model #{direct_id} ...")
            cells_ctx = load_context(database, model_id=direct_id, dataset_name=cells_name)
            rows = [cells_ctx.series.entity_keys.index(series.cell_keys[int(c)]) for c in scored]
            direct = recursive_forecast(
                cells_ctx.forecaster,
                cells_ctx.series,
                rows,
                start=start,
                horizon=TEST_HOURS,
                samples=request.path_samples,
                seed=0,
            ).paths.sum(axis=-1)  # (C, S, N)
            forecasts["direct"] = direct.transpose(1, 0, 2) / 1e6
    forecasts["users-point-sum"] = point_sum[None] / 1e6
    forecasts["seasonal-naive"] = history[None, scored, start - 24 : start - 24 + TEST_HOURS] / 1e6
    past = history[scored, :start]
    # The same hour of the week before the start (the same hour of the day where the data is shorter than that).
    same_hour = [
        mask if mask.any() else (np.arange(start) % 24) == ((start + n) % 24)
        for n in range(TEST_HOURS)
        for mask in [(np.arange(start) % 168) == ((start + n) % 168)]
    ]
    forecasts["hour-of-week-mean"] = np.stack([past[:, m].mean(axis=1) for m in same_hour], axis=1)[None] / 1e6

    rows_out, per_cell = [], []
    for method in CELL_METHODS:
        if method not in forecasts:
            continue
        result = scores(truth, forecasts[method], capacity, busy)
        cells_scores = result.pop("per_cell")
        rows_out.append({"method": method, **result})
        for i, c in enumerate(scored):
            per_cell.append(
                {"cell": series.cell_keys[int(c)], "method": method, **{k: v[i] for k, v in cells_scores.items()}}
            )
    result_doc = {
        "level": "cell",
        "model_id": record.id,
        "dataset": source_name,
        "cells_dataset": cells_name,
        "direct_model_id": direct_id,
        "start": start,
        "horizon": TEST_HOURS,
        "cells": len(scored),
        "users_forecast": n_users,
        "samples": request.path_samples,
        "truth_mean_mb": float(truth.mean()),
        "hours_over_capacity": int((truth > capacity[:, None]).sum()),
        "hours_over_busy": int((truth > busy[:, None]).sum()),
        "rows": rows_out,
        "per_cell": per_cell,
        "notes": notes,
        "stored": own_data,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if own_data:
        store_cell_evaluation(database, record.id, result_doc, settings=request.to_params())
    return result_doc


def store_cell_evaluation(database: Database, model_id: int, result: dict, *, settings: dict) -> None:
    """Keep the cell-level evaluation with its model (``metrics["cell_evaluation"]``), replacing an earlier one."""
    stored = {**result, "settings": settings, "evaluated_at": utcnow().isoformat(timespec="seconds")}
    with database.write_session() as session, session.begin():
        record = session.get_one(ModelRecord, model_id)
        record.metrics = {**(record.metrics or {}), "cell_evaluation": stored}


def write_cell_report(result: dict, directory: str | Path) -> list[Path]:
    """``cell_level.csv`` (pooled, one row per method) and ``cell_level_per_cell.csv`` in ``directory``."""
    import csv

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in (("cell_level.csv", result["rows"]), ("cell_level_per_cell.csv", result["per_cell"])):
        path = out / name
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        written.append(path)
    return written
