"""Versioned schema: a version table and ordered upgrade steps.

A new database runs every step from 1; an older one runs the steps it lacks. Each step runs in its
own transaction together with the version bump, so a failed step leaves the previous version intact.
To change the schema: edit db/models.py, append a step here that brings an existing database of the
previous version to the new shape (create tables, ``ALTER TABLE ... ADD COLUMN``), and bump nothing
else; ``tests/db/test_schema.py`` checks that an upgraded database equals a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select

from db.models import (
    CORE_TABLES,
    LOAD_TABLES,
    SCENARIO_TABLES,
    STAGE_TABLES,
    WORKER_TABLES,
    Base,
    SchemaVersion,
    table_of,
    utcnow,
)


class SchemaTooNewError(RuntimeError):
    pass


def _create_tables(connection: Connection, names: tuple[str, ...]) -> None:
    tables = [Base.metadata.tables[name] for name in names]
    Base.metadata.create_all(connection, tables=tables, checkfirst=True)


def _v1_core(connection: Connection) -> None:
    """Data sets, cells, entities, hourly traffic and hourly locations."""
    _create_tables(connection, CORE_TABLES)


def _v2_stages(connection: Connection) -> None:
    """Tiles, descriptions, embeddings, models, forecast runs and jobs."""
    _create_tables(connection, STAGE_TABLES)


def _add_column(connection: Connection, table: str, column: str) -> None:
    """ALTER TABLE ... ADD COLUMN, skipped where the column exists (a fresh database that ran the
    create steps with the current models already has it)."""
    if column in {c["name"] for c in inspect(connection).get_columns(table)}:
        return
    col = Base.metadata.tables[table].c[column]
    ddl_type = col.type.compile(dialect=connection.dialect)
    connection.exec_driver_sql(f'ALTER TABLE {table} ADD COLUMN "{column}" {ddl_type}')


def _v3_description_errors(connection: Connection) -> None:
    """descriptions.error: why an LLM description fell back to the template."""
    _add_column(connection, "descriptions", "error")


def _v4_scenarios(connection: Connection) -> None:
    """scenarios: saved what-if scenarios and their baseline/scenario forecast runs."""
    _create_tables(connection, SCENARIO_TABLES)


def _v5_workers(connection: Connection) -> None:
    """workers: the worker processes and their heartbeats; jobs.worker_id, attempts and result."""
    _create_tables(connection, WORKER_TABLES)
    for column in ("worker_id", "attempts", "result"):
        _add_column(connection, "jobs", column)


def _v6_load(connection: Connection) -> None:
    """load_runs and cell_capacities: cell and area load runs, capacities set by operators."""
    _create_tables(connection, LOAD_TABLES)


STEPS: dict[int, Callable[[Connection], None]] = {
    1: _v1_core,
    2: _v2_stages,
    3: _v3_description_errors,
    4: _v4_scenarios,
    5: _v5_workers,
    6: _v6_load,
}
LATEST_VERSION = max(STEPS)


def current_version(connection: Connection) -> int:
    if not inspect(connection).has_table(SchemaVersion.__tablename__):
        return 0
    return connection.scalar(select(SchemaVersion.version).where(SchemaVersion.id == 1)) or 0


UPGRADE_LOCK = 0x15D3_0001  # PostgreSQL advisory lock key: one upgrading process at a time


def _serialise(connection: Connection) -> None:
    """One upgrade step at a time across processes. SQLite's write lock, taken at BEGIN (``lsdm_write``), does it
    there; on PostgreSQL, where DDL takes no such lock, two workers starting on a new database would both create
    the tables: a transaction-scoped advisory lock makes the second wait, then see the new version."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK})")


def upgrade(engine: Engine, target: int = LATEST_VERSION) -> tuple[int, int]:
    """Bring the database to ``target``; returns (version before, version after)."""
    with engine.connect() as connection:
        before = current_version(connection)
    if before > LATEST_VERSION:
        raise SchemaTooNewError(
            f"database {engine.url.render_as_string(hide_password=True)} has schema version {before}, "
            f"newer than this program's {LATEST_VERSION}; install a newer lsdm or use another --db"
        )
    for version in range(before + 1, target + 1):
        with engine.execution_options(lsdm_write=True).begin() as connection:
            _serialise(connection)
            if current_version(connection) >= version:  # another process got there first
                continue
            STEPS[version](connection)
            table = table_of(SchemaVersion)
            if version == 1:
                connection.execute(table.insert().values(id=1, version=1, updated_at=utcnow()))
            else:
                connection.execute(table.update().where(table.c.id == 1).values(version=version, updated_at=utcnow()))
    return before, max(before, target)
