"""`lsdm data aggregate --to cells` (engine/data/aggregate.py) on a copy of the default city: each cell's
traffic per hour and service is the SQL sum of the users recorded in it; the cells, their tiles and
descriptions come along; refusals name the field and store nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cli.main import main as lsdm
from db import open_database
from engine.data.aggregate import store_aggregate
from engine.errors import InputError
from engine.requests import AggregateRequest
from tests.conftest import copy_database


@pytest.fixture
def city(city_db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "city.sqlite"
    copy_database(city_db, copy)
    return copy


def _sql(db: Path, query: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(query, args).fetchall()


def test_each_cells_traffic_is_the_sum_of_its_users_and_the_places_come_along(city, capsys):
    assert lsdm(["data", "aggregate", "--db", str(city), "--name", "cells", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["entity_kind"] == "cell" and summary["entities"] == summary["cells"] == 400
    ((source, target),) = _sql(
        city,
        "SELECT (SELECT id FROM datasets WHERE name = 'synthetic-seed0'), "
        "(SELECT id FROM datasets WHERE name = 'cells')",
    )
    expected = {
        (key, hour, service): total
        for key, hour, service, total in _sql(
            city,
            "SELECT c.key, t.hour, t.service, SUM(t.bytes) FROM traffic t "
            "JOIN entities e ON e.id = t.entity_id JOIN locations l ON l.entity_id = t.entity_id AND l.hour = t.hour "
            "JOIN cells c ON c.id = l.cell_id WHERE e.dataset_id = ? GROUP BY c.key, t.hour, t.service",
            source,
        )
    }
    got = {
        (key, hour, service): total
        for key, hour, service, total in _sql(
            city,
            "SELECT e.key, t.hour, t.service, t.bytes FROM traffic t JOIN entities e ON e.id = t.entity_id "
            "WHERE e.dataset_id = ?",
            target,
        )
    }
    assert got == expected
    # every entity is its cell, linked and located there at every hour
    assert _sql(
        city,
        "SELECT COUNT(*) FROM entities e JOIN cells c ON c.id = e.cell_id WHERE e.dataset_id = ? AND c.key = e.key "
        "AND e.kind = 'cell'",
        target,
    ) == [(400,)]
    assert _sql(
        city, "SELECT COUNT(*) FROM locations l JOIN entities e ON e.id = l.entity_id WHERE e.dataset_id = ?", target
    ) == [(400 * 336,)]
    for table in ("tiles", "descriptions"):
        counts = _sql(
            city,
            f"SELECT (SELECT COUNT(*) FROM {table} x JOIN cells c ON c.id = x.cell_id WHERE c.dataset_id = ?), "
            f"(SELECT COUNT(*) FROM {table} x JOIN cells c ON c.id = x.cell_id WHERE c.dataset_id = ?)",
            source,
            target,
        )
        assert counts[0][0] == counts[0][1] == 400, table
    assert _sql(city, "SELECT name FROM datasets WHERE is_active = 1") == [("cells",)]


def test_refusals_name_the_field_and_store_nothing(city):
    database = open_database(str(city))
    with database.write_session() as session, session.begin():
        store_aggregate(session, AggregateRequest(name="cells"))
    before = _sql(city, "SELECT COUNT(*) FROM datasets")
    for request, field in (
        (AggregateRequest(dataset="cells", name="again"), "dataset"),  # cells already
        (AggregateRequest(dataset="synthetic-seed0", name="cells"), "name"),  # taken, no replace
        (AggregateRequest(dataset="synthetic-seed0", name="synthetic-seed0", replace=True), "name"),  # its source
        (AggregateRequest(dataset="nowhere"), None),
    ):
        with pytest.raises((InputError, LookupError)) as refused, database.write_session() as session, session.begin():
            store_aggregate(session, request)
        if field:
            assert refused.value.field == field
    assert _sql(city, "SELECT COUNT(*) FROM datasets") == before
    with database.write_session() as session, session.begin():  # asked to replace: replaced
        store_aggregate(session, AggregateRequest(dataset="synthetic-seed0", name="cells", replace=True))
    assert _sql(city, "SELECT COUNT(*) FROM datasets") == before
    database.dispose()


def test_the_aggregate_job_runs_in_the_worker(city):
    from engine.jobs import JobWorker, enqueue, get_job

    database = open_database(str(city))
    job_id = enqueue(database, "data.aggregate", {"name": "by-cell"})
    assert JobWorker(database).drain() == 1
    job = get_job(database, job_id)
    assert job.status == "done" and job.result["entity_kind"] == "cell", job.error
    with pytest.raises(InputError) as refused:
        enqueue(database, "data.aggregate", {"to": "districts"})
    assert refused.value.field == "to"
    database.dispose()
