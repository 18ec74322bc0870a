"""Cell-level what-ifs: a cell goes down, or an event brings extra users to it.

Both compare a neighbourhood (the cell and its ``neighbours`` nearest cells) with the baseline: the same
users, the same location draws, the same chunks and the same seed, so the two runs draw the same noise and
their difference, path by path, is the effect of the change alone (paired paths; an unaffected user's
paths are identical in both runs).

- **Outage** (``what="outage"``): from forecast hour ``at`` for ``duration`` hours, every path that puts a
  user in the dead cell puts them in the nearest working cell instead (by distance where the cells have
  coordinates, else by the cosine similarity of their environment embeddings), and the traffic model is
  conditioned on that cell. The dead cell carries nothing then.
- **Event** (``what="event"``): ``visitors`` extra users are in the cell for ``duration`` hours from ``at``.
  They copy one user's history (``profile``; default: the user recorded most often at the cell before the
  start), each with its own noise, and are forecast conditioned on the cell; they count only while
  present. The baseline users' paths are unchanged.

Stored in one transaction: the baseline as a load run and the scenario as a load run of kind ``outage`` or
``event`` whose ``baseline_id`` names it; the payload gives per cell and hour the paired difference of the
total load (mean and 90 % interval of the paths' differences) and both runs' risk.
"""

from __future__ import annotations

import time

import numpy as np

from db import Database
from db.models import LoadRun
from engine.data.windows import SeriesData
from engine.errors import InputError
from engine.forecast import ForecastContext, LocationPlan, hour_label, load_context, recursive_forecast
from engine.load.core import CHUNK_USERS, Capacities, CellTable, LoadResult, Progress, sum_by_cell
from engine.load.forecast import _check_start, forecast_load, load_result, reachable_users, run_summary
from engine.requests import LoadRequest, LoadWhatIfRequest


def _haversine_km(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    p1, p2 = np.radians(lat), np.radians(lat0)
    dphi, dlmb = p2 - p1, np.radians(lon0) - np.radians(lon)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 6371.0 * 2 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def nearest_cells(series: SeriesData, table: CellTable, cell: int, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``count`` cells nearest to ``cell`` (rows), their distance (km, or 1 - cosine) and the measure."""
    others = np.array([c for c in range(len(table.keys)) if c != cell])
    if np.isfinite(table.lat[cell]) and np.isfinite(table.lon[cell]) and np.isfinite(table.lat[others]).any():
        distance = _haversine_km(table.lat[others], table.lon[others], table.lat[cell], table.lon[cell])
        distance = np.where(np.isfinite(distance), distance, np.inf)
        measure = "km"
    elif series.env.shape[1] and np.abs(series.env[cell]).sum() > 0:
        unit = series.env / np.maximum(np.linalg.norm(series.env, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - unit[others] @ unit[cell]
        measure = "1 - cosine of the environment embeddings"
    else:
        raise InputError(
            f"cell {table.keys[cell]!r} has neither coordinates nor an environment embedding: its neighbours are "
            "unknown (build the environment, or ingest coordinates)",
            field="cell",
        )
    order = np.argsort(distance, kind="stable")[:count]
    return others[order], distance[order], measure


def typical_visitor(series: SeriesData, cell: int, before: int) -> int:
    """The user recorded most often at ``cell`` before ``before`` (the lowest row on ties)."""
    hours = (series.location[:, :before] == cell).sum(axis=1)
    if hours.max() == 0:
        raise InputError(
            f"nobody was ever recorded at cell {series.cell_keys[cell]!r} before the start: choose a profile "
            "(a user whose history the visitors copy)",
            field="profile",
        )
    return int(np.argmax(hours))


def _with_extra(
    base: LoadResult,
    series: SeriesData,
    capacities: Capacities,
    request: LoadRequest,
    load: np.ndarray,
    present: np.ndarray,
    seconds: float,
) -> LoadResult:
    return load_result(
        series,
        capacities,
        request,
        base.cell_rows,
        base.extra["load"] + load,
        base.present + present,
        base.users,
        seconds,
    )


def _visitors(
    context: ForecastContext,
    request: LoadWhatIfRequest,
    profile: int,
    cell: int,
    window: slice,
    scope_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The visitors' load and presence in the scope: (C, S, N, K), (C, S, N)."""
    series = context.series
    n_cells = len(series.cell_keys)
    plan = LocationPlan(request.location)
    own = plan.path_cells(series, np.array([profile]), request.start, request.horizon, request.samples, request.seed)[0]
    travel = own.copy()
    travel[:, window] = cell  # at the event for its hours; their own places before and after
    present_cells = np.full_like(travel, -1)
    present_cells[:, window] = cell  # counted only while at the event
    load = np.zeros((len(scope_rows), request.samples, request.horizon, len(series.services)))
    present = np.zeros((len(scope_rows), request.samples, request.horizon), dtype=np.int64)
    for done in range(0, request.visitors, CHUNK_USERS):
        n = min(CHUNK_USERS, request.visitors - done)
        paths = recursive_forecast(
            context.forecaster,
            series,
            [profile] * n,
            start=request.start,
            horizon=request.horizon,
            samples=request.samples,
            sampler=request.sampler,
            steps=request.sampler_steps,
            plan=LocationPlan.drawn(np.repeat(travel[None], n, axis=0)),
            seed=request.seed + 1 + done,  # the visitors' own noise, not the baseline users'
            antithetic=request.antithetic,
        ).paths
        part, count = sum_by_cell(paths, np.repeat(present_cells[None], n, axis=0), scope_rows, n_cells)
        load += part
        present += count
    return load, present


def _comparison(base: LoadResult, scen: LoadResult, series: SeriesData, labels: list[str]) -> list[dict]:
    diff = scen.totals - base.totals  # (C, S, N): paired paths
    mean, low, high = diff.mean(axis=1), np.quantile(diff, 0.05, axis=1), np.quantile(diff, 0.95, axis=1)
    p_base, p_scen = base.p_exceed, scen.p_exceed
    base_median, scen_median = np.median(base.totals, axis=1), np.median(scen.totals, axis=1)
    out = []
    for i, c in enumerate(base.cell_rows):
        out.append(
            {
                "cell": series.cell_keys[int(c)],
                "capacity": float(base.capacity[i]),
                "hours_at_risk": {"baseline": int(base.hours_at_risk[i]), "scenario": int(scen.hours_at_risk[i])},
                "hours": [
                    {
                        "hour": base.start + n,
                        "label": labels[n],
                        "baseline_median": float(base_median[i, n]),
                        "scenario_median": float(scen_median[i, n]),
                        "difference": {"mean": float(mean[i, n]), "q05": float(low[i, n]), "q95": float(high[i, n])},
                        "p_exceed": {"baseline": float(p_base[i, n]), "scenario": float(p_scen[i, n])},
                        "users_present": {
                            "baseline": float(np.median(base.present[i, :, n])),
                            "scenario": float(np.median(scen.present[i, :, n])),
                        },
                    }
                    for n in range(base.horizon)
                ],
            }
        )
    return out


def run_load_whatif(
    database: Database,
    request: LoadWhatIfRequest,
    *,
    progress: Progress | None = None,
    context: ForecastContext | None = None,
) -> dict:
    """`lsdm load-whatif` and the ``load.whatif`` job: the baseline and the scenario, stored in one transaction."""
    request = request.checked()
    if context is None:
        context = load_context(database, model_id=request.model_id, dataset_name=request.dataset, device=request.device)
    series = context.series
    started = time.perf_counter()
    table = CellTable.read(database, context.dataset_id, series)
    if table.entity_kind == "cell":
        raise InputError(
            f"the entities of {series.dataset_name!r} are cells: an outage or an event moves users, and it has none",
            field="cell",
        )
    if request.cell not in series.cell_keys:
        raise InputError(f"no cell {request.cell!r} in data set {series.dataset_name!r}", field="cell")
    cell = series.cell_keys.index(request.cell)
    profile = None
    if request.what == "event":
        if request.profile is not None:
            if request.profile not in series.entity_keys:
                raise InputError(f"no user {request.profile!r} in data set {series.dataset_name!r}", field="profile")
            profile = series.entity_keys.index(request.profile)
        else:
            profile = typical_visitor(series, cell, request.start)
    capacities = Capacities.read(database, series, table)
    neighbours, distance, measure = nearest_cells(series, table, cell, request.neighbours)
    scope_rows = np.concatenate([[cell], neighbours])
    base_request = LoadRequest(
        scope="cell:" + ",".join(series.cell_keys[int(c)] for c in scope_rows),
        start=request.start,
        horizon=request.horizon,
        samples=request.samples,
        location=request.location,
        sampler=request.sampler,
        sampler_steps=request.sampler_steps,
        seed=request.seed,
        noise=request.noise,
        risk_level=request.risk_level,
        name=f"{request.name or request.cell} (baseline)",
    )
    _check_start(context, base_request)
    users, cells = reachable_users(
        series,
        LocationPlan(request.location),
        scope_rows,
        start=request.start,
        horizon=request.horizon,
        samples=request.samples,
        seed=request.seed,
    )
    window = slice(request.at, request.at + request.duration)
    half = None if progress is None else (lambda done, total: progress(done, 2 * max(total, 1)))
    baseline = forecast_load(context, table, capacities, base_request, users=users, user_cells=cells, progress=half)
    labels = [hour_label(series, request.start + n) for n in range(request.horizon)]
    moved = 0
    if request.what == "outage":
        target = int(neighbours[0])
        new_cells = cells.copy()
        dead = np.zeros_like(new_cells, dtype=bool)
        dead[:, :, window] = new_cells[:, :, window] == cell
        new_cells[dead] = target
        moved_users = dead.any(axis=(1, 2))
        moved = int(moved_users.sum())
        second = None if progress is None else (lambda done, total: progress(total + done, 2 * max(total, 1)))
        scenario = forecast_load(
            context, table, capacities, base_request, users=users, user_cells=new_cells, progress=second
        )
        rehomed = {"to": series.cell_keys[target], "users": moved, "paths_hours": int(dead.sum())}
    else:
        assert profile is not None
        load, present = _visitors(context, request, profile, cell, window, scope_rows)
        scenario = _with_extra(baseline, series, capacities, base_request, load, present, time.perf_counter() - started)
        rehomed = {"profile": series.entity_keys[profile], "visitors": request.visitors}
        if progress:
            progress(1, 1)
    seconds = time.perf_counter() - started
    params = {
        **request.to_params(),
        "model_id_used": context.record_id,
        "model_sha256": context.record_sha256,
        "dataset_used": series.dataset_name,
        "rehomed_to": rehomed.get("to"),
    }
    name = request.name or (
        f"{request.cell} down {labels[request.at]} +{request.duration} h"
        if request.what == "outage"
        else f"{request.visitors} visitors at {request.cell} {labels[request.at]} +{request.duration} h"
    )
    with database.write_session() as session, session.begin():
        base_row = LoadRun(
            dataset_id=context.dataset_id,
            model_id=context.record_id,
            kind="load",
            name=base_request.name,
            scope=base_request.scope,
            params={
                **base_request.to_params(),
                "model_id_used": context.record_id,
                "model_sha256": context.record_sha256,
                "dataset_used": series.dataset_name,
            },
            summary=run_summary(baseline, series),
            result=baseline.to_npz_bytes(),
            seconds=baseline.seconds,
        )
        session.add(base_row)
        session.flush()
        scen_row = LoadRun(
            dataset_id=context.dataset_id,
            model_id=context.record_id,
            kind=request.what,
            name=name,
            scope=base_request.scope,
            params=params,
            summary={**run_summary(scenario, series), "change": rehomed},
            result=scenario.to_npz_bytes(),
            baseline_id=base_row.id,
            seconds=seconds,
        )
        session.add(scen_row)
        session.flush()
        ids = (int(base_row.id), int(scen_row.id))
    return {
        "baseline_run_id": ids[0],
        "scenario_run_id": ids[1],
        "name": name,
        "what": request.what,
        "cell": request.cell,
        "window": {"from": labels[request.at], "hours": request.duration},
        "change": rehomed,
        "neighbours": [
            {"cell": series.cell_keys[int(c)], "distance": float(d), "measure": measure}
            for c, d in zip(neighbours, distance, strict=True)
        ],
        "users_forecast": len(users),
        "seconds": round(seconds, 4),
        "cells": _comparison(baseline, scenario, series, labels),
    }
