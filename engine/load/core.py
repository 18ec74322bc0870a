"""Cell and area load, built bottom-up from every user's sample paths, with the cells' capacity risk.

A cell's load at an hour is the sum of the traffic of the users who are in it then. The forecast gives
every user S sample paths of traffic, and (``location``: ``sampled``) each path its own cell per hour
(engine/load/location.py); path i of a cell is the sum, over the users whose path i is in that cell at that
hour, of their path i. So the numbers add up on every path: users to cells to areas to the city, and a
cell's spread holds both where its users will be and what they will use.

- Scope: ``cell:ID[,ID...]``, ``box:SOUTH,WEST,NORTH,EAST`` (the cells with coordinates inside) or
  ``area:all``. Only the users who can reach the scope need a forecast: every user's cells of the
  forecast hours are drawn first (cheap, and the same draws the forecast then uses: they come from a
  generator per user, engine/load/location.py ``entity_rng``), and the users with some path in some scope
  cell at some hour are forecast. Nobody else contributes to the scope on any path.
- Data sets whose entities are cells are forecast directly: the scope's cells are the entities, and
  the users present are unknown.
- Users are forecast in chunks of ``CHUNK_USERS`` (memory stays bounded on the whole city; a chunk's
  paths do not depend on the others' draws of locations).
- Capacity: bytes per hour in total (and optionally per service). Without a row set by an operator
  (db.models.CellCapacity), a cell's capacity is the 99th percentile of its observed hourly load
  (the sum of the recorded users in it) over every hour of the data set, at least ``MIN_CAPACITY``
  bytes (1 MB): a level the cell reached in about 3 hours of a fortnight. Risk per hour: P(load >
  capacity) over the paths, the expected excess E[max(load - capacity, 0)], and the hours at risk (P at
  least the request's ``risk_level``).
- A run is stored in one transaction (db.models.LoadRun): the request, the model, the seed, the
  quantiles per cell, hour and service, the total and users-present paths per cell (for paired
  comparisons), the capacity and the risk.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select

from db import Database
from db.models import Cell, CellCapacity, Entity, LoadRun
from db.queries import get_dataset_by_id
from engine.data.windows import SeriesData
from engine.errors import InputError, check_output_file
from engine.requests import parse_scope_text

Progress = Callable[[int, int], None]  # (users forecast so far, of all to forecast)

STATS = ("mean", "q05", "q25", "median", "q75", "q95")
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
CAPACITY_QUANTILE = 0.99
MIN_CAPACITY = 1e6  # bytes per hour
CHUNK_USERS = 16  # 512 windows of 32 paths: the fastest per path-hour on 2 cores (8: 2.82 ms, 32: 4.15 ms)


# --- where the cells are, who reaches them ---------------------------------------------------------------


@dataclass
class CellTable:
    """The data set's cells as the load engine needs them: coordinates, and for cell entities their rows."""

    keys: list[str]
    lat: np.ndarray  # (C,) NaN = unknown
    lon: np.ndarray
    entity_of_cell: np.ndarray  # (C,) entity row of a cell entity, -1 (user data sets: all -1)
    entity_kind: str

    @classmethod
    def read(cls, database: Database, dataset_id: int, series: SeriesData) -> CellTable:
        with database.session() as session:
            dataset = get_dataset_by_id(session, dataset_id)
            cells = session.execute(
                select(Cell.id, Cell.lat, Cell.lon).where(Cell.dataset_id == dataset_id).order_by(Cell.id)
            ).all()
            linked = session.execute(
                select(Entity.id, Entity.cell_id).where(Entity.dataset_id == dataset_id, Entity.cell_id.is_not(None))
            ).all()
            kind = dataset.entity_kind
        row_of_cell = {int(c): i for i, c in enumerate(series.cell_ids)}
        row_of_entity = {int(e): i for i, e in enumerate(series.entity_ids)}
        lat = np.full(len(series.cell_ids), np.nan)
        lon = np.full(len(series.cell_ids), np.nan)
        for cell_id, la, lo in cells:
            if cell_id in row_of_cell:
                lat[row_of_cell[cell_id]] = np.nan if la is None else la
                lon[row_of_cell[cell_id]] = np.nan if lo is None else lo
        entity_of_cell = np.full(len(series.cell_ids), -1, dtype=np.int64)
        for entity_id, linked_cell in linked:
            if linked_cell in row_of_cell and entity_id in row_of_entity:
                entity_of_cell[row_of_cell[linked_cell]] = row_of_entity[entity_id]
        return cls(list(series.cell_keys), lat, lon, entity_of_cell, kind)

    def scope_rows(self, scope: str, dataset_name: str) -> np.ndarray:
        """The cell rows of a scope; an unknown cell or an empty area is an error naming the scope."""
        kind, keys, box = parse_scope_text(scope)
        if kind == "all":
            return np.arange(len(self.keys))
        if kind == "cells":
            index = {key: i for i, key in enumerate(self.keys)}
            unknown = [key for key in keys if key not in index]
            if unknown:
                raise InputError(f"no cell {unknown[0]!r} in data set {dataset_name!r}", field="scope")
            return np.array([index[key] for key in keys])
        south, west, north, east = box
        if np.isnan(self.lat).all():
            raise InputError(
                f"the cells of data set {dataset_name!r} have no coordinates: choose cells (cell:ID,...) or area:all",
                field="scope",
            )
        inside = (self.lat >= south) & (self.lat <= north) & (self.lon >= west) & (self.lon <= east)
        if not inside.any():
            raise InputError(f"no cell of data set {dataset_name!r} lies in {scope}", field="scope")
        return np.flatnonzero(inside)


def scope_lookup(scope_rows: np.ndarray, n_cells: int) -> np.ndarray:
    """Cell row -> position in the scope, -1 outside; index ``n_cells`` (an unknown cell, -1) maps to -1."""
    lookup = np.full(n_cells + 1, -1, dtype=np.int64)
    lookup[scope_rows] = np.arange(len(scope_rows))
    return lookup


def sum_by_cell(
    paths: np.ndarray, cells: np.ndarray, scope_rows: np.ndarray, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Path i of a scope cell = the sum of path i of the users in it at that hour.

    ``paths``: (U, S, N, K) bytes; ``cells``: (U, S, N) cell rows (-1: unknown). Returns the load
    (C, S, N, K) and the users present (C, S, N) of the ``scope_rows`` cells."""
    _, n_s, n_n, n_k = paths.shape
    n_c = len(scope_rows)
    position = scope_lookup(scope_rows, n_cells)[np.where(cells >= 0, cells, n_cells)]  # (U, S, N)
    inside = position >= 0
    s_index = np.broadcast_to(np.arange(n_s)[None, :, None], cells.shape)
    n_index = np.broadcast_to(np.arange(n_n)[None, None, :], cells.shape)
    flat = ((position * n_s + s_index) * n_n + n_index)[inside]
    size = n_c * n_s * n_n
    present = np.bincount(flat, minlength=size).reshape(n_c, n_s, n_n)
    load = np.empty((n_c, n_s, n_n, n_k))
    chosen = paths[inside]  # (M, K)
    for k in range(n_k):
        load[..., k] = np.bincount(flat, weights=chosen[:, k], minlength=size).reshape(n_c, n_s, n_n)
    return load, present


def observed_load(series: SeriesData, scope_rows: np.ndarray, start: int, horizon: int) -> np.ndarray:
    """The recorded load of the scope cells (C, N, K): the sum of the users recorded in each; NaN beyond the
    data."""
    out = np.full((len(scope_rows), horizon, len(series.services)), np.nan)
    known = min(horizon, max(0, series.hours - start))
    if known == 0:
        return out
    traffic = series.traffic[:, start : start + known]  # (E, n, K)
    cells = series.location[:, start : start + known]  # (E, n)
    load, _ = sum_by_cell(traffic[:, None], cells[:, None], scope_rows, len(series.cell_keys))
    out[:, :known] = load[:, 0]
    return out


def cell_history_load(series: SeriesData, table: CellTable) -> np.ndarray:
    """Every cell's recorded total load per hour over the whole data set: (C, T) bytes."""
    if table.entity_kind == "cell":
        out = np.zeros((len(series.cell_keys), series.hours))
        linked = table.entity_of_cell >= 0
        out[linked] = series.traffic[table.entity_of_cell[linked]].sum(axis=-1)
        return out
    totals = series.traffic.sum(axis=-1)  # (E, T)
    hours = np.broadcast_to(np.arange(series.hours), totals.shape)
    ok = series.location >= 0
    flat = series.location[ok] * series.hours + hours[ok]
    return np.bincount(flat, weights=totals[ok], minlength=len(series.cell_keys) * series.hours).reshape(
        len(series.cell_keys), series.hours
    )


def default_capacities(series: SeriesData, table: CellTable) -> np.ndarray:
    """(C,) bytes per hour: the 99th percentile of each cell's recorded hourly load, at least 1 MB."""
    history = cell_history_load(series, table)
    return np.maximum(np.quantile(history, CAPACITY_QUANTILE, axis=1), MIN_CAPACITY)


@dataclass
class Capacities:
    """Each cell's capacity: the operator's where set, else the default from its history."""

    total: np.ndarray  # (C,) bytes per hour
    services: np.ndarray  # (C, K) bytes per hour, NaN where none is set
    set_by_operator: np.ndarray  # (C,) bool

    @classmethod
    def read(cls, database: Database, series: SeriesData, table: CellTable) -> Capacities:
        total = default_capacities(series, table)
        services = np.full((len(series.cell_keys), len(series.services)), np.nan)
        set_by_operator = np.zeros(len(series.cell_keys), dtype=bool)
        row_of_cell = {int(c): i for i, c in enumerate(series.cell_ids)}
        with database.session() as session:
            rows = session.execute(
                select(CellCapacity).where(CellCapacity.cell_id.in_([int(c) for c in series.cell_ids]))
            ).scalars()
            for row in rows:
                i = row_of_cell[row.cell_id]
                total[i], set_by_operator[i] = row.total_bytes, True
                for name, value in (row.services or {}).items():
                    if name in series.services:
                        services[i, series.services.index(name)] = value
        return cls(total, services, set_by_operator)


def cell_capacity(database: Database, dataset_id: int, cell_key: str) -> dict:
    """One cell's capacity: {cell, total_bytes, default_bytes, services (bytes), set_by_operator}."""
    from engine.data.windows import load_series

    with database.session() as session:
        dataset = get_dataset_by_id(session, dataset_id)
        if session.scalar(select(Cell.id).where(Cell.dataset_id == dataset_id, Cell.key == cell_key)) is None:
            raise InputError(f"no cell {cell_key!r} in data set {dataset.name!r}", field="cell")
        series = load_series(session, dataset, encoder_id="")
    table = CellTable.read(database, dataset_id, series)
    capacities = Capacities.read(database, series, table)
    i = series.cell_keys.index(cell_key)
    return {
        "cell": cell_key,
        "total_bytes": float(capacities.total[i]),
        "default_bytes": float(default_capacities(series, table)[i]),
        "services": {
            name: float(v) for name, v in zip(series.services, capacities.services[i], strict=True) if np.isfinite(v)
        },
        "set_by_operator": bool(capacities.set_by_operator[i]),
    }


def set_capacity(
    database: Database, dataset_id: int, cell_key: str, total_mb: float | None, services_mb: dict | None = None
) -> None:
    """Store an operator's capacity of a cell in MB per hour (``total_mb`` None: back to the default)."""
    if total_mb is not None and (not np.isfinite(total_mb) or total_mb <= 0):
        raise InputError(f"expected a capacity above 0 MB per hour, got {total_mb!r}", field="capacity")
    services_mb = dict(services_mb or {})
    with database.write_session() as session, session.begin():
        dataset = get_dataset_by_id(session, dataset_id)
        for name, value in services_mb.items():
            if name not in dataset.services:
                raise InputError(
                    f"no service {name!r} in data set {dataset.name!r}; expected one of {', '.join(dataset.services)}",
                    field="capacity_services",
                )
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise InputError(f"expected a capacity above 0 MB per hour for {name}, got {value!r}", field=name)
        cell = session.scalar(select(Cell).where(Cell.dataset_id == dataset_id, Cell.key == cell_key))
        if cell is None:
            raise InputError(f"no cell {cell_key!r} in data set {dataset.name!r}", field="cell")
        row = session.get(CellCapacity, cell.id)
        if total_mb is None:
            if row is not None:
                session.delete(row)
            return
        if row is None:
            row = CellCapacity(cell_id=cell.id, total_bytes=0.0)
            session.add(row)
        row.total_bytes = float(total_mb) * 1e6
        row.services = {name: float(value) * 1e6 for name, value in services_mb.items()}


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """A load run's arrays: per scope cell, path, hour (and service)."""

    cell_rows: np.ndarray  # (C,) rows in SeriesData.cell_keys
    start: int
    horizon: int
    quantiles: np.ndarray  # (C, N, K, 6) bytes: STATS per service
    totals: np.ndarray  # (C, S, N) bytes, all services
    present: np.ndarray  # (C, S, N) users present (-1 where unknown: cell entities)
    truth: np.ndarray  # (C, N, K) recorded load, NaN beyond the data
    capacity: np.ndarray  # (C,) bytes per hour
    capacity_services: np.ndarray  # (C, K) NaN where none
    users: np.ndarray  # (U,) entity rows forecast
    seconds: float
    risk_level: float = 0.1
    extra: dict = field(default_factory=dict)

    @property
    def p_exceed(self) -> np.ndarray:
        """(C, N) P(total load > capacity) over the paths."""
        return (self.totals > self.capacity[:, None, None]).mean(axis=1)

    @property
    def excess(self) -> np.ndarray:
        """(C, N) expected bytes above capacity."""
        return np.maximum(self.totals - self.capacity[:, None, None], 0).mean(axis=1)

    @property
    def hours_at_risk(self) -> np.ndarray:
        """(C,) hours with P(load > capacity) at least the run's risk level."""
        return (self.p_exceed >= self.risk_level).sum(axis=1) if self.risk_level > 0 else np.full(len(self.totals), 0)

    def total_stats(self) -> np.ndarray:
        """(C, N, 6) STATS of the total load."""
        return _stats(self.totals)

    def present_stats(self) -> np.ndarray:
        return _stats(self.present.astype(float))

    def service_exceed(self) -> np.ndarray:
        """(C, N, K) P(service load > its capacity); NaN where the cell has none. Needs the service paths,
        which are not kept: computed at run time into ``extra``."""
        return self.extra.get("service_exceed", np.full(self.quantiles.shape[:3], np.nan))

    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            cell_rows=self.cell_rows,
            start=self.start,
            horizon=self.horizon,
            quantiles=self.quantiles.astype(np.float32),
            totals=self.totals.astype(np.float32),
            present=self.present.astype(np.int32),
            truth=self.truth.astype(np.float32),
            capacity=self.capacity,
            capacity_services=self.capacity_services,
            users=self.users,
            service_exceed=self.service_exceed().astype(np.float32),
            risk_level=self.risk_level,
            seconds=self.seconds,
        )
        return buffer.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> LoadResult:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            a = {k: npz[k] for k in npz.files}
        return cls(
            cell_rows=a["cell_rows"],
            start=int(a["start"]),
            horizon=int(a["horizon"]),
            quantiles=a["quantiles"].astype(float),
            totals=a["totals"].astype(float),
            present=a["present"],
            truth=a["truth"].astype(float),
            capacity=a["capacity"],
            capacity_services=a["capacity_services"],
            users=a["users"],
            seconds=float(a["seconds"]),
            risk_level=float(a["risk_level"]),
            extra={"service_exceed": a["service_exceed"].astype(float)},
        )


def _stats(paths: np.ndarray) -> np.ndarray:
    """(..., S, N[, K]) paths along axis 1 -> (..., N[, K], 6) mean and quantiles."""
    mean = paths.mean(axis=1)
    q = np.quantile(paths, _QUANTILES, axis=1)  # (5, ...)
    return np.stack([mean, q[0], q[1], q[2], q[3], q[4]], axis=-1)


def _stat_dict(values: np.ndarray) -> dict:
    return {name: float(v) for name, v in zip(STATS, values, strict=True)}


def _maybe(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


# --- stored runs -------------------------------------------------------------------------------------------


@dataclass
class StoredLoad:
    """A stored load run read back: its row's fields, its arrays and the data set's names."""

    run_id: int
    kind: str
    name: str | None
    scope: str
    params: dict
    summary: dict
    baseline_id: int | None
    result: LoadResult
    services: list[str]
    cell_keys: list[str]  # of the run's cells, in its order
    hour_labels: list[str]
    seconds: float | None


def read_load_run(database: Database, run_id: int) -> StoredLoad:
    """A stored run (an unknown id is an error naming it)."""
    with database.session() as session:
        row = session.get(LoadRun, run_id)
        if row is None or row.result is None:
            raise InputError(f"no load run {run_id}", field="run")
        dataset = get_dataset_by_id(session, row.dataset_id)
        result = LoadResult.from_npz_bytes(row.result)
        keys = dict(session.execute(select(Cell.id, Cell.key).where(Cell.dataset_id == row.dataset_id)).all())
        ordered = [keys[c] for c in sorted(keys)]
        labels = [
            (dataset.time_origin + timedelta(hours=result.start + n)).strftime("%a %H:%M")
            for n in range(result.horizon)
        ]
        return StoredLoad(
            run_id=row.id,
            kind=row.kind,
            name=row.name,
            scope=row.scope,
            params=dict(row.params or {}),
            summary=dict(row.summary or {}),
            baseline_id=row.baseline_id,
            result=result,
            services=list(dataset.services),
            cell_keys=[ordered[int(c)] for c in result.cell_rows],
            hour_labels=labels,
            seconds=row.seconds,
        )


def load_runs(database: Database, dataset_id: int, limit: int = 50, scope: str | None = None) -> list[dict]:
    """The data set's load runs (of this ``scope`` only, when given), newest first: id, kind, name, scope,
    start, horizon, cells, users, cells at risk, peak risk."""
    statement = select(LoadRun.id, LoadRun.kind, LoadRun.name, LoadRun.scope, LoadRun.summary, LoadRun.params).where(
        LoadRun.dataset_id == dataset_id
    )
    if scope is not None:
        statement = statement.where(LoadRun.scope == scope)
    with database.session() as session:
        rows = session.execute(statement.order_by(LoadRun.id.desc()).limit(limit)).all()
    return [
        {
            "run_id": r.id,
            "kind": r.kind,
            "name": r.name,
            "scope": r.scope,
            "start": (r.params or {}).get("start"),
            "horizon": (r.params or {}).get("horizon"),
            "cells": (r.summary or {}).get("cells"),
            "users": (r.summary or {}).get("users"),
            "cells_at_risk": (r.summary or {}).get("cells_at_risk"),
            "peak_risk": (r.summary or {}).get("peak_risk"),
        }
        for r in rows
    ]


EXPORT_COLUMNS = (
    "cell",
    "hour",
    "label",
    "service",
    *STATS,
    "truth",
    "users_present_median",
    "capacity",
    "p_exceed",
    "expected_excess",
)


def load_table(stored: StoredLoad) -> list[dict]:
    """The run in long form: one row per cell, hour and service (and ``total``), for CSV and Parquet."""
    r = stored.result
    totals, present, p, excess = r.total_stats(), r.present_stats(), r.p_exceed, r.excess
    service_exceed = r.service_exceed()
    rows = []
    for i, key in enumerate(stored.cell_keys):
        for n in range(r.horizon):
            users = None if r.present[i, 0, n] < 0 else float(present[i, n, 3])
            base = {"cell": key, "hour": r.start + n, "label": stored.hour_labels[n]}
            rows.append(
                base
                | {"service": "total"}
                | _stat_dict(totals[i, n])
                | {
                    "truth": _maybe(r.truth[i, n].sum()),
                    "users_present_median": users,
                    "capacity": float(r.capacity[i]),
                    "p_exceed": float(p[i, n]),
                    "expected_excess": float(excess[i, n]),
                }
            )
            for k, name in enumerate(stored.services):
                cap = r.capacity_services[i, k]
                rows.append(
                    base
                    | {"service": name}
                    | _stat_dict(r.quantiles[i, n, k])
                    | {
                        "truth": _maybe(r.truth[i, n, k]),
                        "users_present_median": users,
                        "capacity": _maybe(cap),
                        "p_exceed": _maybe(service_exceed[i, n, k]),
                        "expected_excess": None,
                    }
                )
    return rows


def export_load(database: Database, run_id: int, path: str | Path, *, replace: bool = False) -> int:
    """Write a stored run to .csv or .parquet (by the suffix); the rows written. The file appears whole or
    not at all (written beside it, then renamed); an existing file is replaced only when asked."""
    import pandas as pd

    path = check_output_file(path, (".csv", ".parquet"), replace=replace)
    frame = pd.DataFrame(load_table(read_load_run(database, run_id)), columns=list(EXPORT_COLUMNS))
    partial = path.with_name(path.name + ".partial")
    if path.suffix.lower() == ".csv":
        frame.to_csv(partial, index=False)
    else:
        frame.to_parquet(partial, index=False)
    partial.replace(path)
    return len(frame)
