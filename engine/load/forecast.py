"""Load runs: forecast a scope's load from every user's sample paths and store it (engine/load/core.py has
the model: the scope, the sums, the capacities and the stored arrays). This module imports torch (through
engine.forecast); engine/load/core.py does not, so that pages and listings read runs without it."""

from __future__ import annotations

import time

import numpy as np

from db import Database
from db.models import LoadRun
from engine.data.windows import SeriesData, SeriesReader
from engine.errors import InputError
from engine.executors import Executor, map_chunks
from engine.forecast import (
    ForecastContext,
    LocationPlan,
    _check_forecast,
    check_sampler,
    chunk_spec,
    hour_label,
    load_context,
    reader_of,
    recursive_forecast,
)
from engine.load.core import (
    CHUNK_USERS,
    Capacities,
    CellTable,
    LoadResult,
    Progress,
    _maybe,
    _stat_dict,
    _stats,
    observed_load,
    scope_lookup,
    sum_by_cell,
)
from engine.requests import LoadRequest


def reachable_users(
    series: SeriesData, plan: LocationPlan, scope_rows: np.ndarray, *, start: int, horizon: int, samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The users with some path in some scope cell at some forecast hour, and their cells (U, S, N)."""
    everyone = np.arange(len(series.entity_keys))
    cells = plan.path_cells(series, everyone, start, horizon, samples, seed)  # (E, S, N)
    lookup = scope_lookup(scope_rows, len(series.cell_keys))
    inside = lookup[np.where(cells >= 0, cells, len(series.cell_keys))] >= 0
    reach = inside.any(axis=(1, 2))
    return everyone[reach], cells[reach]


def user_chunks(user_cells: np.ndarray, scope_rows: np.ndarray, n_cells: int) -> list[tuple[np.ndarray, int]]:
    """The order the users are forecast in: chunks of ``CHUNK_USERS`` positions into ``user_cells`` (U, S, N),
    each with the hours it needs. A user's hours after the last one where some path of theirs is in the
    scope add nothing to it, so users are taken latest-last-hour first and each chunk stops at its first
    user's last such hour (32 % fewer forecast hours for the busiest cell of the default city over 24 h)."""
    lookup = scope_lookup(scope_rows, n_cells)
    inside = np.asarray(lookup[np.where(user_cells >= 0, user_cells, n_cells)] >= 0)  # (U, S, N)
    hours_inside = np.asarray(inside.any(axis=1))  # (U, N)
    n = hours_inside.shape[1]
    last = np.where(hours_inside.any(axis=1), n - np.argmax(hours_inside[:, ::-1], axis=1), 0)
    order = np.argsort(-last, kind="stable")
    return [(order[i : i + CHUNK_USERS], int(last[order[i]])) for i in range(0, len(order), CHUNK_USERS)]


class LoadChunks:
    """A chunk of users -> their part of the scope's load: the task that engine/executors.py runs here or on
    Ray's actors. ``spec`` is plain data (the database URL, model, data set, request, scope); ``context``: the
    model and data already loaded in this process (local), else they are loaded from ``spec`` (an actor)."""

    def __init__(self, spec: dict, context: ForecastContext | None = None) -> None:
        self.series: SeriesData | None = None
        self.reader: SeriesReader | None = None
        if context is None:  # an actor: the model from spec; each chunk's users read from the database
            self.forecaster, self.reader = reader_of(spec)
        else:
            self.forecaster, self.series = context.forecaster, context.series
        self.request = LoadRequest.from_params(spec["params"])
        self.scope_rows = np.asarray(spec["scope_rows"], dtype=np.int64)
        self.n_cells = int(spec["n_cells"])
        self.plan = None if spec["per_path"] else LocationPlan(spec["location"])

    def __call__(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``users`` (U,) entity rows, ``cells`` (U, S, hours) their cells: load (C, S, hours, K), present."""
        cells = np.asarray(chunk["cells"])
        request = self.request
        users = np.asarray(chunk["users"])
        if self.reader is not None:
            series, rows = self.reader.rows(users), list(range(len(users)))
        else:
            assert self.series is not None
            series, rows = self.series, users.tolist()
        paths = recursive_forecast(
            self.forecaster,
            series,
            rows,
            start=request.start,
            horizon=cells.shape[2],
            samples=request.samples,
            sampler=request.sampler,
            steps=request.sampler_steps,
            plan=self.plan or LocationPlan.drawn(cells),
            seed=request.seed,
            antithetic=request.antithetic,
        ).paths
        load, present = sum_by_cell(paths, cells, self.scope_rows, self.n_cells)
        return {"load": load, "present": present}


def forecast_load(
    context: ForecastContext,
    table: CellTable,
    capacities: Capacities,
    request: LoadRequest,
    *,
    progress: Progress | None = None,
    plan: LocationPlan | None = None,
    users: np.ndarray | None = None,
    user_cells: np.ndarray | None = None,
    extra_paths: tuple[np.ndarray, np.ndarray] | None = None,
    database_url: str | None = None,
) -> LoadResult:
    """Forecast the scope's load (engine side of ``run_load``).

    ``plan``/``users``/``user_cells``: a what-if's own locations (``run_load_whatif``); default: the
    request's location scenario and the users who can reach the scope. ``extra_paths``: (paths (X, S, N, K),
    cells (X, S, N)) of users added by a scenario (an event's visitors)."""
    forecaster, series = context.forecaster, context.series
    check_sampler(forecaster, request.sampler, request.sampler_steps)
    started = time.perf_counter()
    scope_rows = table.scope_rows(request.scope, series.dataset_name)
    n_cells, n_k = len(series.cell_keys), len(series.services)
    plan = plan or LocationPlan(request.location)
    if users is not None and user_cells is not None:  # given cells: every chunk forecast in them
        plan = LocationPlan.drawn(user_cells)

    def forecast(rows: np.ndarray, chunk_plan: LocationPlan, hours: int | None = None) -> np.ndarray:
        """(U, S, hours, K) bytes of these entity rows (hours: default the request's horizon)."""
        return recursive_forecast(
            forecaster,
            series,
            rows.tolist(),
            start=request.start,
            horizon=hours or request.horizon,
            samples=request.samples,
            sampler=request.sampler,
            steps=request.sampler_steps,
            plan=chunk_plan,
            seed=request.seed,
            antithetic=request.antithetic,
        ).paths

    load = np.zeros((len(scope_rows), request.samples, request.horizon, n_k))
    present = np.zeros((len(scope_rows), request.samples, request.horizon), dtype=np.int64)
    if table.entity_kind == "cell":  # the scope's cells are the entities: forecast them directly
        entities = table.entity_of_cell[scope_rows]
        missing = [table.keys[r] for r, e in zip(scope_rows, entities, strict=True) if e < 0]
        if missing:
            raise InputError(f"cell {missing[0]!r} has no traffic series in {series.dataset_name!r}", field="scope")
        users = entities
        for done in range(0, len(entities), CHUNK_USERS):
            chunk = entities[done : done + CHUNK_USERS]
            load[done : done + len(chunk)] = forecast(chunk, LocationPlan("habitual"))  # a cell is where it is
            if progress:
                progress(done + len(chunk), len(entities))
        present[:] = -1
    else:
        if users is None or user_cells is None:
            users, user_cells = reachable_users(
                series,
                plan,
                scope_rows,
                start=request.start,
                horizon=request.horizon,
                samples=request.samples,
                seed=request.seed,
            )
        if progress:
            progress(0, len(users))
        chunks = [
            {"users": users[positions], "cells": user_cells[positions, :, :hours]}
            for positions, hours in user_chunks(user_cells, scope_rows, n_cells)
            if hours > 0  # nobody of this chunk is in the scope on any path (and no later chunk's either)
        ]
        executor = Executor.parse(request.executor, request.workers)
        if executor.kind != "local" and database_url is None:
            raise InputError("a run on Ray needs the database's URL, for its workers", field="executor")
        spec = {
            **chunk_spec(database_url or "", context, request),
            "scope_rows": scope_rows.tolist(),
            "n_cells": n_cells,
            "per_path": plan.per_path,
            "location": plan.mode,
        }
        parts = map_chunks(executor, lambda: LoadChunks(spec, context), (LoadChunks, {"spec": spec}), chunks)
        done = 0
        for chunk, out in zip(chunks, parts, strict=True):
            hours = chunk["cells"].shape[2]
            load[:, :, :hours] += out["load"]
            present[:, :, :hours] += out["present"]
            done += len(chunk["users"])
            if progress:
                progress(done, len(users))
        if extra_paths is not None:
            part, count = sum_by_cell(extra_paths[0], extra_paths[1], scope_rows, n_cells)
            load += part
            present += count
    return load_result(
        series, capacities, request, scope_rows, load, present, np.asarray(users), time.perf_counter() - started
    )


def load_result(
    series: SeriesData,
    capacities: Capacities,
    request: LoadRequest,
    scope_rows: np.ndarray,
    load: np.ndarray,
    present: np.ndarray,
    users: np.ndarray,
    seconds: float,
) -> LoadResult:
    """The result of a scope's summed paths: load (C, S, N, K) and users present (C, S, N)."""
    capacity = capacities.total[scope_rows]
    capacity_services = capacities.services[scope_rows]
    with np.errstate(invalid="ignore"):
        service_exceed = np.where(
            np.isnan(capacity_services)[:, None, :],
            np.nan,
            (load > np.nan_to_num(capacity_services, nan=np.inf)[:, None, None, :]).mean(axis=1),
        )
    return LoadResult(
        cell_rows=scope_rows,
        start=request.start,
        horizon=request.horizon,
        quantiles=_stats(load),
        totals=load.sum(axis=-1),
        present=present,
        truth=observed_load(series, scope_rows, request.start, request.horizon),
        capacity=capacity,
        capacity_services=capacity_services,
        users=users,
        seconds=seconds,
        risk_level=request.risk_level,
        extra={"service_exceed": service_exceed, "load": load},
    )


def _check_start(context: ForecastContext, request: LoadRequest) -> None:
    """The forecast's own checks of the start hour (the request bounded the rest)."""
    _check_forecast(
        context.forecaster,
        context.series,
        start=request.start,
        horizon=request.horizon,
        samples=request.samples,
        guidance=1.0,
    )


def run_summary(result: LoadResult, series: SeriesData) -> dict:
    """What a listing and the map read without opening the arrays: per cell its key, capacity, peak risk,
    hours at risk and peak median load."""
    p = result.p_exceed
    total = result.total_stats()
    return {
        "cells": len(result.cell_rows),
        "users": len(result.users),
        "hours_at_risk": int(result.hours_at_risk.sum()),
        "cells_at_risk": int((result.hours_at_risk > 0).sum()),
        "peak_risk": float(p.max()) if p.size else 0.0,
        "per_cell": {
            series.cell_keys[int(c)]: {
                "capacity": float(result.capacity[i]),
                "peak_risk": float(p[i].max()),
                "hours_at_risk": int(result.hours_at_risk[i]),
                "peak_median": float(total[i, :, 3].max()),
            }
            for i, c in enumerate(result.cell_rows)
        },
    }


def load_payload(result: LoadResult, series: SeriesData, *, detail: bool = True) -> dict:
    """The run as JSON: per cell, hour (and service) the mean, median and 5/25/75/95 % quantiles, the users
    present, the capacity and P(load > capacity)."""
    totals, present, p, excess = result.total_stats(), result.present_stats(), result.p_exceed, result.excess
    service_exceed = result.service_exceed()
    cells = []
    for i, c in enumerate(result.cell_rows):
        hours = []
        for n in range(result.horizon):
            hour = result.start + n
            entry: dict = {
                "hour": hour,
                "label": hour_label(series, hour),
                "total": _stat_dict(totals[i, n]) | {"truth": _maybe(result.truth[i, n].sum())},
                "users_present": None if result.present[i, 0, n] < 0 else _stat_dict(present[i, n]),
                "p_exceed": float(p[i, n]),
                "expected_excess": float(excess[i, n]),
                "at_risk": bool(result.risk_level > 0 and p[i, n] >= result.risk_level),
            }
            if detail:
                entry["services"] = {
                    name: _stat_dict(result.quantiles[i, n, k])
                    | {"truth": _maybe(result.truth[i, n, k]), "p_exceed": _maybe(service_exceed[i, n, k])}
                    for k, name in enumerate(series.services)
                }
            hours.append(entry)
        cells.append(
            {
                "cell": series.cell_keys[int(c)],
                "capacity": float(result.capacity[i]),
                "capacity_services": {
                    name: float(v)
                    for name, v in zip(series.services, result.capacity_services[i], strict=True)
                    if np.isfinite(v)
                },
                "hours_at_risk": int(result.hours_at_risk[i]),
                "hours": hours,
            }
        )
    return {"services": series.services, "cells": cells}


def run_load(
    database: Database,
    request: LoadRequest,
    *,
    store: bool = True,
    progress: Progress | None = None,
    context: ForecastContext | None = None,
    detail: bool = True,
) -> dict:
    """`lsdm load` and the ``load`` job: forecast the scope's load and store the run (one transaction)."""
    request = request.checked()
    if context is None:
        context = load_context(database, model_id=request.model_id, dataset_name=request.dataset, device=request.device)
    _check_start(context, request)
    series = context.series
    table = CellTable.read(database, context.dataset_id, series)
    capacities = Capacities.read(database, series, table)
    result = forecast_load(context, table, capacities, request, progress=progress, database_url=database.url)
    params = {
        **request.to_params(),
        "model_id_used": context.record_id,
        "model_sha256": context.record_sha256,
        "dataset_used": series.dataset_name,
    }
    payload = {
        "run_id": None,
        "model_id": context.record_id,
        "dataset": series.dataset_name,
        "scope": request.scope,
        "seconds": round(result.seconds, 4),
        "users_forecast": len(result.users),
        "params": params,
        **load_payload(result, series, detail=detail),
    }
    if store:
        payload["run_id"] = store_load_run(database, context, request, result, params)
    return payload


def store_load_run(
    database: Database,
    context: ForecastContext,
    request: LoadRequest,
    result: LoadResult,
    params: dict,
    *,
    kind: str = "load",
    baseline_id: int | None = None,
) -> int:
    """Write one load run (one transaction); its id."""
    row = LoadRun(
        dataset_id=context.dataset_id,
        model_id=context.record_id,
        kind=kind,
        name=request.name or request.scope[:200],
        scope=request.scope,
        params=params,
        summary=run_summary(result, context.series),
        result=result.to_npz_bytes(),
        baseline_id=baseline_id,
        seconds=result.seconds,
    )
    with database.write_session() as s, s.begin():
        s.add(row)
        s.flush()
        return int(row.id)
