"""Queries the engine and the app share: write a whole data set, read matrices and summaries, and the
look-ups every layer needs (the active model of a data set, "activate this one", an encoder by name, the
rows a page shows). The app builds no SQL of its own: it calls these, named for what they return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from numpy.typing import DTypeLike
from sqlalchemy import Select, and_, delete, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.models import (
    Cell,
    Dataset,
    Description,
    Embedding,
    Entity,
    ForecastRun,
    LocationHour,
    ModelRecord,
    Tile,
    TrafficHour,
    table_of,
)

_CHUNK = 50_000


class NoDatasetError(LookupError):
    pass


@dataclass
class DatasetContent:
    """A whole data set in arrays, as the city generator and the ingesters produce it.

    Index arrays refer to positions in ``cell_keys`` / ``entity_keys`` / ``services``; they are turned
    into database ids when stored.
    """

    name: str
    kind: str
    entity_kind: str
    services: list[str]
    poi_categories: list[str]
    time_origin: datetime
    timezone: str
    hours: int
    cell_keys: list[str]
    cell_poi: np.ndarray  # (C, P) int
    entity_keys: list[str]
    traffic_entity: np.ndarray  # (T,) int: entity position
    traffic_hour: np.ndarray  # (T,) int
    traffic_service: np.ndarray  # (T,) int
    traffic_bytes: np.ndarray  # (T,) int64, > 0
    location_entity: np.ndarray  # (Lc,) int
    location_hour: np.ndarray  # (Lc,) int
    location_cell: np.ndarray  # (Lc,) int: cell position
    cell_names: list[str] | None = None
    cell_lat: np.ndarray | None = None  # (C,) float, NaN = unknown
    cell_lon: np.ndarray | None = None
    cell_land_use: list[str] | None = None
    cell_attrs: list[dict] | None = None
    entity_cell: np.ndarray | None = None  # (E,) cell position for cell entities
    entity_attrs: list[dict] | None = None
    params: dict = field(default_factory=dict)
    # Environment vectors supplied with the data, one per cell (C, D): stored as the embeddings of an
    # external encoder (engine/data/ingest_matrix.py), the data set's active one.
    env_vectors: np.ndarray | None = None
    env_source: str | None = None


def _chunks(rows: list[dict]) -> Iterator[list[dict]]:
    for start in range(0, len(rows), _CHUNK):
        yield rows[start : start + _CHUNK]


def insert_columns(session: Session, model: type, columns: dict[str, np.ndarray]) -> int:
    """Insert the rows of these integer columns (equal lengths) into ``model``'s table, in this session's
    transaction, ``_CHUNK`` rows at a time; the number of rows.

    The driver's own ``executemany``, not SQLAlchemy's Core insert: for the millions of traffic and location
    rows of a city, compiling a parameter dictionary per row was two thirds of a city build (5.5 of 8.9 s at
    1,000 users). Only plain integer columns come here (no type processing is skipped); a driver with another
    parameter style goes the Core way."""
    connection = session.connection()
    table = table_of(model)
    names = list(columns)
    values = [np.asarray(columns[name]) for name in names]
    total = len(values[0]) if values else 0
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(connection.dialect.paramstyle)
    quote = connection.dialect.identifier_preparer.quote
    columns_sql = ", ".join(quote(n) for n in names)
    for start in range(0, total, _CHUNK):
        rows = list(zip(*(v[start : start + _CHUNK].tolist() for v in values), strict=True))
        if mark is None:
            session.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])
        else:
            marks = ", ".join([mark] * len(names))
            connection.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({columns_sql}) VALUES ({marks})", rows)
    return total


def _optional_float(values: np.ndarray | None, i: int) -> float | None:
    if values is None or not np.isfinite(values[i]):
        return None
    return float(values[i])


def store_dataset(session: Session, content: DatasetContent, *, activate: bool = True) -> Dataset:
    """Replace any data set of the same name with ``content``; the caller commits (one transaction)."""
    old = session.scalar(select(Dataset.id).where(Dataset.name == content.name))
    if old is not None:
        # Children go by ON DELETE CASCADE, without loading them into the session.
        session.execute(delete(Dataset).where(Dataset.id == old))
    if activate:
        session.execute(update(Dataset).values(is_active=False))
    dataset = Dataset(
        name=content.name,
        kind=content.kind,
        entity_kind=content.entity_kind,
        services=list(content.services),
        poi_categories=list(content.poi_categories),
        time_origin=content.time_origin,
        timezone=content.timezone,
        hours=int(content.hours),
        params=content.params,
        is_active=activate,
    )
    session.add(dataset)
    session.flush()

    n_cells = len(content.cell_keys)
    cell_rows = [
        {
            "dataset_id": dataset.id,
            "key": str(content.cell_keys[i]),
            "name": content.cell_names[i] if content.cell_names else f"Cell {content.cell_keys[i]}",
            "lat": _optional_float(content.cell_lat, i),
            "lon": _optional_float(content.cell_lon, i),
            "poi_counts": [int(v) for v in content.cell_poi[i]],
            "land_use": content.cell_land_use[i] if content.cell_land_use else None,
            "attrs": content.cell_attrs[i] if content.cell_attrs else {},
        }
        for i in range(n_cells)
    ]
    # Core inserts (not ORM bulk inserts): the same SQL without per-row ORM bookkeeping, ~5x faster.
    for chunk in _chunks(cell_rows):
        session.execute(table_of(Cell).insert(), chunk)
    key_to_id = dict(session.execute(select(Cell.key, Cell.id).where(Cell.dataset_id == dataset.id)).all())
    cell_ids = np.array([key_to_id[str(k)] for k in content.cell_keys], dtype=np.int64)

    entity_rows = [
        {
            "dataset_id": dataset.id,
            "kind": content.entity_kind,
            "key": str(key),
            "cell_id": int(cell_ids[content.entity_cell[i]]) if content.entity_cell is not None else None,
            "attrs": content.entity_attrs[i] if content.entity_attrs else {},
        }
        for i, key in enumerate(content.entity_keys)
    ]
    for chunk in _chunks(entity_rows):
        session.execute(table_of(Entity).insert(), chunk)
    key_to_id = dict(session.execute(select(Entity.key, Entity.id).where(Entity.dataset_id == dataset.id)).all())
    entity_ids = np.array([key_to_id[str(k)] for k in content.entity_keys], dtype=np.int64)

    insert_columns(
        session,
        TrafficHour,
        {
            "entity_id": entity_ids[content.traffic_entity],
            "hour": content.traffic_hour,
            "service": content.traffic_service,
            "bytes": np.asarray(content.traffic_bytes, dtype=np.int64),
        },
    )
    insert_columns(
        session,
        LocationHour,
        {
            "entity_id": entity_ids[content.location_entity],
            "hour": content.location_hour,
            "cell_id": cell_ids[content.location_cell],
        },
    )
    if content.env_vectors is not None:
        _store_external_encoder(session, dataset.id, cell_ids, content.env_vectors, content.env_source)
    return dataset


def _store_external_encoder(
    session: Session, dataset_id: int, cell_ids: np.ndarray, vectors: np.ndarray, source: str | None
) -> None:
    """Register vectors supplied with the data as the data set's environment encoder (no files: its
    embeddings are the vectors) and store them as the cells' ``env`` embeddings."""
    digest = hashlib.sha256(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).hexdigest()
    name = f"external-{digest[:12]}"
    activate_model(
        session,
        ModelRecord(
            name=name,
            kind="clip",
            path="",
            sha256=digest,
            config={"external": True, "source": source, "dim": int(vectors.shape[1])},
            metrics={"external": True},
            dataset_id=dataset_id,
        ),
    )
    session.execute(delete(Embedding).where(Embedding.encoder_id == name, Embedding.cell_id.in_(cell_ids.tolist())))
    rows = [
        {
            "cell_id": int(cell_id),
            "encoder_id": name,
            "kind": "env",
            "dim": int(vectors.shape[1]),
            "vector": np.asarray(vectors[i], dtype="<f4").tobytes(),
        }
        for i, cell_id in enumerate(cell_ids)
    ]
    for chunk in _chunks(rows):
        session.execute(table_of(Embedding).insert(), chunk)


def get_dataset(session: Session, name: str | None = None) -> Dataset:
    """The named data set, or the active one; a clear error when there is none."""
    if name is not None:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            names = session.scalars(select(Dataset.name).order_by(Dataset.name)).all()
            raise NoDatasetError(f"no data set named {name!r}; known: {', '.join(names) or 'none'}")
        return dataset
    dataset = session.scalar(select(Dataset).where(Dataset.is_active.is_(True)))
    if dataset is None:
        dataset = session.scalar(select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc()))
    if dataset is None:
        raise NoDatasetError("the database holds no data set yet; run `lsdm city build` or `lsdm ingest ...`")
    return dataset


def get_dataset_by_id(session: Session, dataset_id: int) -> Dataset:
    """The data set with this id; a clear error when it was deleted meanwhile."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NoDatasetError(f"no data set with id {dataset_id} (it was deleted or replaced)")
    return dataset


def activate_dataset(session: Session, dataset: Dataset) -> None:
    session.execute(update(Dataset).values(is_active=False))
    session.execute(update(Dataset).where(Dataset.id == dataset.id).values(is_active=True))


def entity_matrix(session: Session, entity_id: int, hours: int, n_services: int) -> np.ndarray:
    """The entity's (hours, services) traffic matrix in bytes (float64; absent rows are 0)."""
    rows = session.execute(
        select(TrafficHour.hour, TrafficHour.service, TrafficHour.bytes).where(TrafficHour.entity_id == entity_id)
    ).all()
    matrix = np.zeros((hours, n_services), dtype=np.float64)
    if rows:
        # Plain tuples first: numpy converts a list of SQLAlchemy Rows element by element, 10x slower.
        arr = np.asarray([tuple(r) for r in rows], dtype=np.int64)
        matrix[arr[:, 0], arr[:, 1]] = arr[:, 2]
    return matrix


def entity_locations(session: Session, entity_id: int, hours: int) -> np.ndarray:
    """The cell id of each hour (-1 where unknown)."""
    rows = session.execute(
        select(LocationHour.hour, LocationHour.cell_id).where(LocationHour.entity_id == entity_id)
    ).all()
    cells = np.full(hours, -1, dtype=np.int64)
    if rows:
        arr = np.asarray([tuple(r) for r in rows], dtype=np.int64)
        cells[arr[:, 0]] = arr[:, 1]
    return cells


def dataset_summary(session: Session, dataset: Dataset) -> dict:
    """Counts and vocabularies of a data set (what `lsdm data info` prints)."""
    n_entities = session.execute(
        select(func.count()).select_from(Entity).where(Entity.dataset_id == dataset.id)
    ).scalar_one()
    n_cells = session.execute(select(func.count()).select_from(Cell).where(Cell.dataset_id == dataset.id)).scalar_one()
    n_located = session.execute(
        select(func.count()).select_from(Cell).where(Cell.dataset_id == dataset.id, Cell.lat.is_not(None))
    ).scalar_one()
    traffic = (
        select(func.count(), func.coalesce(func.sum(TrafficHour.bytes), 0))
        .join(Entity, Entity.id == TrafficHour.entity_id)
        .where(Entity.dataset_id == dataset.id)
    )
    n_rows, total = session.execute(traffic).one()
    return {
        "dataset": dataset.name,
        "kind": dataset.kind,
        "entity_kind": dataset.entity_kind,
        "users": int(n_entities) if dataset.entity_kind == "user" else 0,
        "entities": int(n_entities),
        "cells": int(n_cells),
        "cells_with_coordinates": int(n_located),
        "hours": int(dataset.hours),
        "time_origin": dataset.time_origin.isoformat(),
        "timezone": dataset.timezone,
        "services": list(dataset.services),
        "poi_categories": list(dataset.poi_categories),
        "traffic_rows": int(n_rows),
        "total_bytes": int(total),
        "params": dataset.params,
    }


# --- data sets -----------------------------------------------------------------------------------------


def all_datasets(session: Session) -> list[Dataset]:
    """Every data set, in the order they were stored."""
    return list(session.scalars(select(Dataset).order_by(Dataset.id)))


def dataset_sizes(session: Session) -> dict[int, tuple[int, int]]:
    """Data set id -> (entities, cells), from two GROUP BY queries (data sets without rows are absent)."""
    entities = dict(session.execute(select(Entity.dataset_id, func.count()).group_by(Entity.dataset_id)).all())
    cells = dict(session.execute(select(Cell.dataset_id, func.count()).group_by(Cell.dataset_id)).all())
    return {int(i): (int(entities.get(i, 0)), int(cells.get(i, 0))) for i in set(entities) | set(cells)}


# --- entities and cells ----------------------------------------------------------------------------


def entity_keys(session: Session, dataset_id: int) -> list[str]:
    """Every entity key of the data set, sorted by key."""
    return list(session.scalars(select(Entity.key).where(Entity.dataset_id == dataset_id).order_by(Entity.key)))


def entities_of(session: Session, dataset_id: int) -> list[tuple[int, str, str]]:
    """(id, kind, key) of every entity of the data set, in id order."""
    rows = session.execute(
        select(Entity.id, Entity.kind, Entity.key).where(Entity.dataset_id == dataset_id).order_by(Entity.id)
    )
    return [(entity_id, kind, key) for entity_id, kind, key in rows]


def find_entity(session: Session, dataset_id: int, key: str) -> Entity | None:
    """The entity with this key in the data set, or None."""
    return session.scalar(select(Entity).where(Entity.dataset_id == dataset_id, Entity.key == key))


def dataset_cells(session: Session, dataset_id: int) -> list[Cell]:
    """Every cell of the data set in id order (the engine's row order, engine.data.windows.load_series)."""
    return list(session.scalars(select(Cell).where(Cell.dataset_id == dataset_id).order_by(Cell.id)))


def find_cell(session: Session, dataset_id: int, key: str) -> Cell | None:
    """The cell with this key in the data set, or None."""
    return session.scalar(select(Cell).where(Cell.dataset_id == dataset_id, Cell.key == key))


def cells_by_id(session: Session, cell_ids: list[int]) -> dict[int, Cell]:
    return {cell.id: cell for cell in session.scalars(select(Cell).where(Cell.id.in_(cell_ids)))}


def entity_places(session: Session, entity_id: int) -> list[tuple[str, str, str | None, int]]:
    """(cell key, name, land use, hours there) of every cell the entity was seen in, most hours first."""
    hours_there = func.count().label("hours")
    rows = session.execute(
        select(Cell.key, Cell.name, Cell.land_use, hours_there)
        .join(LocationHour, LocationHour.cell_id == Cell.id)
        .where(LocationHour.entity_id == entity_id)
        .group_by(Cell.id, Cell.key, Cell.name, Cell.land_use)
        .order_by(hours_there.desc(), Cell.key)
    )
    return [(key, name, land_use, hours) for key, name, land_use, hours in rows]


# --- traffic and locations of a whole data set or one cell --------------------------------------------


def _rows_batches(
    session: Session, statement: Select, dtype: DTypeLike = np.int64, size: int = _CHUNK
) -> Iterator[np.ndarray]:
    """A Core query's rows as (n, columns) arrays of at most ``size`` rows: the driver's rows are never all
    Python objects at once (a 50,000-user city has 40 million traffic rows). Rows become plain tuples first:
    numpy's generic sequence path on SQLAlchemy Rows is ~40x slower (2.5 s for 168k location rows)."""
    width = len(statement.selected_columns)
    result = session.connection().execution_options(stream_results=True).execute(statement)  # PG: server cursor
    for part in result.partitions(size):
        yield np.array(list(map(tuple, part)), dtype=dtype).reshape(len(part), width)


def _rows_array(session: Session, statement: Select, dtype: DTypeLike = np.int64) -> np.ndarray:
    """A Core query's rows as one (N, columns) array (read in batches: ``_rows_batches``)."""
    parts = list(_rows_batches(session, statement, dtype))
    return np.concatenate(parts) if parts else np.zeros((0, len(statement.selected_columns)), dtype=dtype)


def _of_entities(
    statement: Select, column: InstrumentedAttribute[int], dataset_id: int, entity_ids: list[int] | None
) -> Select:
    statement = statement.join(Entity, Entity.id == column).where(Entity.dataset_id == dataset_id)
    return statement if entity_ids is None else statement.where(column.in_([int(e) for e in entity_ids]))


def _traffic_statement(dataset_id: int, entity_ids: list[int] | None) -> Select:
    statement = select(TrafficHour.entity_id, TrafficHour.hour, TrafficHour.service, TrafficHour.bytes)
    return _of_entities(statement, TrafficHour.entity_id, dataset_id, entity_ids)


def _location_statement(dataset_id: int, entity_ids: list[int] | None) -> Select:
    statement = select(LocationHour.entity_id, LocationHour.hour, LocationHour.cell_id)
    return _of_entities(statement, LocationHour.entity_id, dataset_id, entity_ids)


def traffic_rows(session: Session, dataset_id: int, entity_ids: list[int] | None = None) -> np.ndarray:
    """(N, 4) int64: entity id, hour, service, bytes of every stored traffic row of the data set (of the
    given entities only, when given)."""
    return _rows_array(session, _traffic_statement(dataset_id, entity_ids))


def traffic_batches(session: Session, dataset_id: int, entity_ids: list[int] | None = None) -> Iterator[np.ndarray]:
    """``traffic_rows`` in (n, 4) batches (to fill arrays without holding every row)."""
    return _rows_batches(session, _traffic_statement(dataset_id, entity_ids))


def location_rows(session: Session, dataset_id: int, entity_ids: list[int] | None = None) -> np.ndarray:
    """(N, 3) int64: entity id, hour, cell id of every located hour of the data set (of the given
    entities only, when given)."""
    return _rows_array(session, _location_statement(dataset_id, entity_ids))


def location_batches(session: Session, dataset_id: int, entity_ids: list[int] | None = None) -> Iterator[np.ndarray]:
    """``location_rows`` in (n, 3) batches."""
    return _rows_batches(session, _location_statement(dataset_id, entity_ids))


def hourly_entity_bytes(session: Session, dataset_id: int) -> np.ndarray:
    """(N, 3) float64: entity id, hour, bytes of all services (summed in SQL) for every entity-hour with
    traffic."""
    statement = (
        select(TrafficHour.entity_id, TrafficHour.hour, func.sum(TrafficHour.bytes))
        .join(Entity, Entity.id == TrafficHour.entity_id)
        .where(Entity.dataset_id == dataset_id)
        .group_by(TrafficHour.entity_id, TrafficHour.hour)
    )
    return _rows_array(session, statement, dtype=np.float64)


def users_at_cell(session: Session, cell_id: int) -> list[tuple[int, int]]:
    """(hour, distinct users attached to the cell) for every hour with at least one."""
    rows = session.execute(
        select(LocationHour.hour, func.count(func.distinct(LocationHour.entity_id)))
        .join(Entity, Entity.id == LocationHour.entity_id)
        .where(LocationHour.cell_id == cell_id, Entity.kind == "user")
        .group_by(LocationHour.hour)
    )
    return [(int(hour), int(users)) for hour, users in rows]


def traffic_at_cell(session: Session, cell_id: int) -> list[tuple[int, int, float]]:
    """(hour, service, bytes) used by the entities attached to the cell in that hour (an entity's
    traffic of an hour counts at the cell it was in), for every (hour, service) with traffic."""
    located = and_(LocationHour.entity_id == TrafficHour.entity_id, LocationHour.hour == TrafficHour.hour)
    rows = session.execute(
        select(TrafficHour.hour, TrafficHour.service, func.sum(TrafficHour.bytes))
        .join(LocationHour, located)
        .where(LocationHour.cell_id == cell_id)
        .group_by(TrafficHour.hour, TrafficHour.service)
    )
    return [(int(hour), int(service), float(total)) for hour, service, total in rows]


# --- the environment: tiles, descriptions, embeddings ---------------------------------------------------


def tile_images(session: Session, dataset_id: int, cell_ids: list[int] | None = None) -> dict[int, bytes]:
    """Cell id -> stored tile image, for the data set's cells that have one (of ``cell_ids`` only, when
    given)."""
    statement = select(Tile.cell_id, Tile.image).join(Cell).where(Cell.dataset_id == dataset_id)
    if cell_ids is not None:
        statement = statement.where(Tile.cell_id.in_([int(c) for c in cell_ids]))
    return dict(session.execute(statement).all())


def tile_image(session: Session, dataset_id: int, key: str) -> bytes | None:
    """The stored tile image of the data set's cell with this key, or None."""
    return session.scalar(select(Tile.image).join(Cell).where(Cell.dataset_id == dataset_id, Cell.key == key))


def tiled_cell_ids(session: Session, dataset_id: int) -> set[int]:
    """The data set's cells that have a tile."""
    return set(session.scalars(select(Tile.cell_id).join(Cell).where(Cell.dataset_id == dataset_id)))


def cell_descriptions(session: Session, dataset_id: int) -> dict[int, str]:
    """Cell id -> stored description text, for the data set's described cells."""
    return dict(
        session.execute(
            select(Description.cell_id, Description.text).join(Cell).where(Cell.dataset_id == dataset_id)
        ).all()
    )


def embedded_cell_ids(session: Session, dataset_id: int, encoder_id: str, kind: str) -> set[int]:
    """The data set's cells that have an embedding of this kind (image | text | env) by this encoder."""
    return set(
        session.scalars(
            select(Embedding.cell_id)
            .join(Cell)
            .where(Cell.dataset_id == dataset_id, Embedding.encoder_id == encoder_id, Embedding.kind == kind)
        )
    )


def load_env_embeddings(
    session: Session, dataset: Dataset, kind: str = "env", encoder_id: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids, (N, D) float32) of the active (or named) encoder's embeddings of a data set's cells
    (kind image | text | env), in cell id order; empty arrays when that encoder embedded none."""
    if encoder_id is None:
        record = active_model(session, dataset.id, kind="clip")
        if record is None:
            raise LookupError(f"no environment encoder for data set {dataset.name!r}; run `lsdm env build`")
        encoder_id = record.name
    rows = session.execute(
        select(Embedding.cell_id, Embedding.vector)
        .join(Cell, Cell.id == Embedding.cell_id)
        .where(Cell.dataset_id == dataset.id, Embedding.encoder_id == encoder_id, Embedding.kind == kind)
        .order_by(Embedding.cell_id)
    ).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return (np.array([r[0] for r in rows]), np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]))


# --- models: forecasters (kind "lsdm") and environment encoders (kind "clip") -----------------------------


def active_model(session: Session, dataset_id: int, kind: str = "lsdm") -> ModelRecord | None:
    """The data set's active model of this kind (``"clip"``: its environment encoder), or None."""
    return session.scalar(
        select(ModelRecord).where(
            ModelRecord.kind == kind, ModelRecord.dataset_id == dataset_id, ModelRecord.is_active.is_(True)
        )
    )


def activate_model(session: Session, record: ModelRecord) -> None:
    """Make ``record`` the one active model of its kind for its data set (the others of that kind and
    data set become inactive); the caller commits. ``record`` may be new (not yet flushed)."""
    session.add(record)
    session.flush()
    session.execute(
        update(ModelRecord)
        .where(
            ModelRecord.kind == record.kind, ModelRecord.dataset_id == record.dataset_id, ModelRecord.id != record.id
        )
        .values(is_active=False)
    )
    record.is_active = True


def dataset_models(
    session: Session, dataset_id: int, kinds: tuple[str, ...] = ("lsdm", "clip"), name: str | None = None
) -> list[ModelRecord]:
    """The data set's registered models of these kinds (and this name, when given), newest first."""
    statement = select(ModelRecord).where(ModelRecord.dataset_id == dataset_id, ModelRecord.kind.in_(kinds))
    if name is not None:
        statement = statement.where(ModelRecord.name == name)
    return list(session.scalars(statement.order_by(ModelRecord.id.desc())))


def all_models(session: Session) -> list[tuple[ModelRecord, str | None]]:
    """Every registered model with its data set's name (None when it has none), oldest first."""
    statement = (
        select(ModelRecord, Dataset.name)
        .outerjoin(Dataset, Dataset.id == ModelRecord.dataset_id)
        .order_by(ModelRecord.id)
    )
    return [(record, name) for record, name in session.execute(statement).tuples()]


def find_encoder(session: Session, name: str, dataset_id: int | None = None) -> ModelRecord | None:
    """The newest registered CLIP encoder with this id (``name``), of the data set when given, else of
    any data set (an encoder trained on one city can embed another); None when there is none."""
    statement = select(ModelRecord).where(ModelRecord.kind == "clip", ModelRecord.name == name)
    if dataset_id is not None:
        statement = statement.where(ModelRecord.dataset_id == dataset_id)
    return session.scalar(statement.order_by(ModelRecord.id.desc()))


def encoder_names(session: Session) -> list[str]:
    """The ids of every registered CLIP encoder, sorted, each once."""
    return sorted(set(session.scalars(select(ModelRecord.name).where(ModelRecord.kind == "clip"))))


# --- forecast runs -------------------------------------------------------------------------------------


def forecast_runs(session: Session, dataset_id: int, limit: int | None = None) -> list[tuple]:
    """(id, created_at, params, seconds) of the data set's stored forecast runs, newest first (their
    summaries and arrays stay in the database)."""
    statement = (
        select(ForecastRun.id, ForecastRun.created_at, ForecastRun.params, ForecastRun.seconds)
        .where(ForecastRun.dataset_id == dataset_id)
        .order_by(ForecastRun.created_at.desc(), ForecastRun.id.desc())
        .limit(limit)
    )
    return [tuple(row) for row in session.execute(statement)]


def content_version(session: Session) -> tuple[int, ...]:
    """A small fingerprint of what the dashboard caches: the newest data set, the active one, the newest
    model, and which models are active. It changes when another process (the command line, a worker, another
    session) adds or activates a data set or a model."""
    newest_dataset = session.scalar(select(func.coalesce(func.max(Dataset.id), 0)))
    active_dataset = session.scalar(select(func.coalesce(func.max(Dataset.id), 0)).where(Dataset.is_active.is_(True)))
    newest_model = session.scalar(select(func.coalesce(func.max(ModelRecord.id), 0)))
    active = session.execute(
        select(func.count(ModelRecord.id), func.coalesce(func.sum(ModelRecord.id), 0)).where(
            ModelRecord.is_active.is_(True)
        )
    ).one()
    return (int(newest_dataset or 0), int(active_dataset or 0), int(newest_model or 0), int(active[0]), int(active[1]))
