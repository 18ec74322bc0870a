"""`lsdm data aggregate --to cells`: a data set whose entities are cells, summed from a user-level one.

Each cell's traffic of an hour and service is the sum of the users the source recorded in it then (the
same sum a load run's ``observed`` truth takes, engine/load/core.py ``observed_load``); a user whose cell
is unknown in an hour counts nowhere. The cells keep their keys, names, coordinates, POI counts and land
use; each cell entity is linked to its cell and located in it at every hour. Tiles and descriptions are
copied with the cells (the same places), so `lsdm env build --dataset NAME --encoder ENCODER` embeds them
with the source's encoder without rendering or describing again. Stored in one transaction with the
copies. This is the direct cell model's data (docs/model.md#cell-and-area-load): train on it, forecast its
cells, compare with the bottom-up sums.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Cell, Dataset, Description, Tile, table_of
from db.queries import DatasetContent, get_dataset
from engine.data.store import store_new_dataset
from engine.data.windows import load_series
from engine.errors import InputError
from engine.requests import AggregateRequest


def aggregate_to_cells(session: Session, request: AggregateRequest) -> tuple[Dataset, DatasetContent]:
    """The source data set and the cell-level data set summed from it (not stored)."""
    source = get_dataset(session, request.dataset)
    if source.entity_kind == "cell":
        raise InputError(f"the entities of {source.name!r} are cells already", field="dataset")
    series = load_series(session, source, encoder_id="")
    cells = session.scalars(select(Cell).where(Cell.dataset_id == source.id).order_by(Cell.id)).all()
    n_cells, hours, k = len(cells), series.hours, len(series.services)
    located = series.location >= 0
    cell_of = np.where(located, series.location, 0)
    flat = (cell_of * hours + np.arange(hours)[None, :])[located]  # (M,) cell * hours + hour
    load = np.zeros((n_cells * hours, k))
    for s in range(k):
        load[:, s] = np.bincount(flat, weights=series.traffic[:, :, s][located], minlength=n_cells * hours)
    load = np.rint(load.reshape(n_cells, hours, k)).astype(np.int64)
    entity, hour, service = np.nonzero(load > 0)
    name = request.name or f"{source.name}-cells"
    content = DatasetContent(
        name=name,
        kind="aggregate",
        entity_kind="cell",
        services=list(source.services),
        poi_categories=list(source.poi_categories),
        time_origin=source.time_origin,
        timezone=source.timezone,
        hours=hours,
        cell_keys=[c.key for c in cells],
        cell_poi=np.array([c.poi_counts for c in cells], dtype=np.int64).reshape(n_cells, -1),
        entity_keys=[c.key for c in cells],
        traffic_entity=entity,
        traffic_hour=hour,
        traffic_service=service,
        traffic_bytes=load[entity, hour, service],
        location_entity=np.repeat(np.arange(n_cells), hours),
        location_hour=np.tile(np.arange(hours), n_cells),
        location_cell=np.repeat(np.arange(n_cells), hours),
        cell_names=[c.name for c in cells],
        cell_lat=np.array([np.nan if c.lat is None else c.lat for c in cells], dtype=float),
        cell_lon=np.array([np.nan if c.lon is None else c.lon for c in cells], dtype=float),
        # a cell without a known land use stays without one (None is stored as NULL)
        cell_land_use=cast("list[str]", [c.land_use for c in cells]) if any(c.land_use for c in cells) else None,
        cell_attrs=[dict(c.attrs or {}) for c in cells],
        entity_cell=np.arange(n_cells),
        params={
            "aggregated_from": source.name,
            "method": "per cell, hour and service: the sum of the users recorded in the cell that hour",
            "source_entities": len(series.entity_keys),
        },
    )
    return source, content


def store_aggregate(session: Session, request: AggregateRequest) -> Dataset:
    """Sum, store as the active data set and copy the cells' tiles and descriptions (the caller commits)."""
    source, content = aggregate_to_cells(session, request)
    if content.name == source.name:
        raise InputError("the cell data set needs a name other than its source's", field="name")
    dataset = store_new_dataset(session, content, replace=request.replace)
    session.flush()
    old = dict(session.execute(select(Cell.key, Cell.id).where(Cell.dataset_id == source.id)).all())
    new = dict(session.execute(select(Cell.key, Cell.id).where(Cell.dataset_id == dataset.id)).all())
    moved = {old[key]: new[key] for key in old}
    for model in (Tile, Description):
        table = table_of(model)
        columns = [c.name for c in table.columns]
        rows = session.execute(select(table).where(table.c.cell_id.in_(list(moved)))).mappings().all()
        copies = [{**{c: row[c] for c in columns}, "cell_id": moved[row["cell_id"]]} for row in rows]
        for start in range(0, len(copies), 500):
            session.execute(table.insert(), copies[start : start + 500])
    return dataset
