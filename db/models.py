"""SQLAlchemy 2.0 typed ORM: every table the engine and the dashboard share.

Conventions
- Time is an integer ``hour`` offset from the data set's ``time_origin`` (local wall-clock time of the
  data set's ``timezone``); hour 0 is the origin's hour. Converting to dates is the caller's job.
- Services and POI categories are stored once per data set as ordered name lists; traffic rows and POI
  vectors refer to them by position (``service`` index, ``poi_counts[i]``).
- Traffic is stored sparsely: an absent (entity, hour, service) row means 0 bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


def table_of(model: type[Base]) -> Table:
    """The Core table a mapped class is declared on, for Core inserts and updates (``__table__`` is typed
    as any FROM clause)."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to one table")
    return table


class SchemaVersion(Base):
    """One row: the schema version this database has been migrated to (see db/schema.py)."""

    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Dataset(Base):
    """One city or ingested source, with the vocabularies its rows refer to."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))  # synthetic | tsinghua | table
    entity_kind: Mapped[str] = mapped_column(String(10))  # user | cell: what is modelled
    services: Mapped[list[str]] = mapped_column(JSON)
    poi_categories: Mapped[list[str]] = mapped_column(JSON)
    time_origin: Mapped[datetime] = mapped_column(DateTime)  # local wall-clock time of hour 0
    timezone: Mapped[str] = mapped_column(String(64))  # IANA name, e.g. Asia/Shanghai
    hours: Mapped[int] = mapped_column(Integer)  # number of hourly steps covered
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # how it was made (seed, files, ...)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    cells: Mapped[list[Cell]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True
    )
    entities: Mapped[list[Entity]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True
    )


class Cell(Base):
    """A base station (cell) with its surroundings' POI counts."""

    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("dataset_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(100))  # the source's own id
    name: Mapped[str] = mapped_column(String(200))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    poi_counts: Mapped[list[int]] = mapped_column(JSON)  # aligned with Dataset.poi_categories
    land_use: Mapped[str | None] = mapped_column(String(40))  # known for synthetic cities only
    attrs: Mapped[dict] = mapped_column(JSON, default=dict)

    dataset: Mapped[Dataset] = relationship(back_populates="cells")


class Entity(Base):
    """What is forecast: a user, or a cell when cells are modelled (then ``cell_id`` is set)."""

    __tablename__ = "entities"
    __table_args__ = (UniqueConstraint("dataset_id", "kind", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # user | cell
    key: Mapped[str] = mapped_column(String(100))
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"))
    attrs: Mapped[dict] = mapped_column(JSON, default=dict)  # e.g. home/work cells of a synthetic user

    dataset: Mapped[Dataset] = relationship(back_populates="entities")


class TrafficHour(Base):
    """Bytes of one service used by one entity in one hour (absent row = 0)."""

    __tablename__ = "traffic"
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    service: Mapped[int] = mapped_column(Integer, primary_key=True)  # index into Dataset.services
    bytes: Mapped[int] = mapped_column(BigInteger)


class LocationHour(Base):
    """The cell an entity was attached to in one hour (the modal cell for real traces)."""

    __tablename__ = "locations"
    __table_args__ = (Index("ix_locations_cell_hour", "cell_id", "hour"),)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"))


# --- Schema version 2: room for the environment, model, forecast and job stages -----------------


class Tile(Base):
    """A satellite (or rendered) image of a cell's surroundings."""

    __tablename__ = "tiles"
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True)
    image: Mapped[bytes] = mapped_column(LargeBinary)
    media_type: Mapped[str] = mapped_column(String(40))  # image/png, image/jpeg
    source: Mapped[str] = mapped_column(String(500))  # synthetic | dir:... | mbtiles:... | xyz:...
    zoom: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Description(Base):
    """A text description of a cell's surroundings and how it was generated."""

    __tablename__ = "descriptions"
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    generator: Mapped[str] = mapped_column(String(40))  # template | openai | template-fallback
    model: Mapped[str | None] = mapped_column(String(200))
    prompt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)  # why the LLM failed, for template fallbacks (v3)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Embedding(Base):
    """An environment embedding of a cell under one encoder (float32 little-endian vector)."""

    __tablename__ = "embeddings"
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True)
    encoder_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)  # image | text | env
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class ModelRecord(Base):
    """A trained model registered with its files, configuration and metrics."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))  # lsdm | clip
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ForecastRun(Base):
    """One forecast request with every parameter, so that it can be reproduced exactly."""

    __tablename__ = "forecast_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[bytes | None] = mapped_column(LargeBinary)  # compressed arrays
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    """Long work done by the worker (engine/jobs/): city builds, ingests, environment builds, training,
    evaluations, forecasts and what-ifs. ``params`` is the request (JSON); the result itself is written by
    the job in its own transaction and ``result_ref`` names it (``forecast_run:12``, ``model:3``, ...)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued|running|done|failed|cancelled
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    result_ref: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # v5: who ran it, how often it was started, and a small summary of the result for listings
    worker_id: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int | None] = mapped_column(Integer, default=0)
    result: Mapped[dict | None] = mapped_column(JSON)


class Worker(Base):
    """A running (or stopped) `lsdm worker` process: its heartbeat tells the app and other workers that
    it is alive; a worker found dead has its running jobs requeued or failed (engine/jobs/worker.py)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # host:pid:token
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    lanes: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)


# --- Schema version 4: what-if scenarios -----------------------------------------------------------


class Scenario(Base):
    """A what-if: a changed environment (engine/whatif.py) and the pair of forecast runs it compares,
    made with the same seed: the baseline (nothing changed) and the scenario."""

    __tablename__ = "scenarios"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # the request and the Scenario itself
    baseline_run_id: Mapped[int | None] = mapped_column(ForeignKey("forecast_runs.id", ondelete="SET NULL"))
    scenario_run_id: Mapped[int | None] = mapped_column(ForeignKey("forecast_runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --- Schema version 6: cell and area load runs, cell capacities ---------------------------------------------


class LoadRun(Base):
    """A cell or area load run (engine/load/core.py): the per-user sample paths summed per cell, with its
    request, the quantiles per cell, hour and service, and the capacity risk. A what-if at the cell level
    (an outage, an event) is a load run with ``baseline_id`` set: the run it is compared with, made with
    the same seed."""

    __tablename__ = "load_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(20), default="load")  # load | outage | event
    name: Mapped[str | None] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(2000))  # cell:A,B | area:all | box:S,W,N,E
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # the request, its model and data set
    summary: Mapped[dict] = mapped_column(JSON, default=dict)  # per cell: hours at risk, peak risk, ...
    result: Mapped[bytes | None] = mapped_column(LargeBinary)  # compressed arrays (engine/load/core.py LoadResult)
    baseline_id: Mapped[int | None] = mapped_column(ForeignKey("load_runs.id", ondelete="SET NULL"))
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CellCapacity(Base):
    """A capacity set by an operator (without a row, a cell's capacity is derived from its history:
    engine/load/core.py ``default_capacities``)."""

    __tablename__ = "cell_capacities"
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True)
    total_bytes: Mapped[float] = mapped_column(Float)  # per hour, all services
    services: Mapped[dict] = mapped_column(JSON, default=dict)  # optional {service name: bytes per hour}
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


CORE_TABLES = ("schema_version", "datasets", "cells", "entities", "traffic", "locations")
STAGE_TABLES = ("tiles", "descriptions", "embeddings", "models", "forecast_runs", "jobs")
SCENARIO_TABLES = ("scenarios",)
WORKER_TABLES = ("workers",)
LOAD_TABLES = ("load_runs", "cell_capacities")
