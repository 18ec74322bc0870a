from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import func, select

from db import open_database
from db.models import Cell, Dataset, Entity, LocationHour, TrafficHour
from db.queries import (
    DatasetContent,
    NoDatasetError,
    dataset_summary,
    entity_locations,
    entity_matrix,
    get_dataset,
    store_dataset,
)


def _content(name: str = "tiny", scale: int = 1) -> DatasetContent:
    return DatasetContent(
        name=name, kind="table", entity_kind="user", services=["A", "B", "C"], poi_categories=["x", "y"],
        time_origin=datetime(2016, 4, 18), timezone="UTC", hours=4,
        cell_keys=["c1", "c2"], cell_poi=np.array([[1, 2], [0, 0]]),
        cell_lat=np.array([31.2, np.nan]), cell_lon=np.array([121.4, np.nan]),
        entity_keys=["u1", "u2"],
        traffic_entity=np.array([0, 0, 1]), traffic_hour=np.array([0, 3, 2]),
        traffic_service=np.array([1, 2, 0]), traffic_bytes=np.array([100, 200, 300]) * scale,
        location_entity=np.array([0, 0, 1]), location_hour=np.array([0, 3, 2]), location_cell=np.array([1, 0, 0]),
    )


def _count(session, model) -> int:  # noqa: ANN001
    return session.scalar(select(func.count()).select_from(model))


def test_stored_dataset_reads_back_as_dense_matrix_and_locations(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        store_dataset(session, _content())
    with database.session() as session:
        dataset = get_dataset(session)
        users = {e.key: e.id for e in session.scalars(select(Entity))}
        cells = {c.key: c.id for c in session.scalars(select(Cell))}
        matrix = entity_matrix(session, users["u1"], dataset.hours, len(dataset.services))
        assert matrix.shape == (4, 3)
        assert matrix[0, 1] == 100 and matrix[3, 2] == 200 and matrix.sum() == 300
        assert entity_locations(session, users["u1"], 4).tolist() == [cells["c2"], -1, -1, cells["c1"]]
        c2 = session.scalar(select(Cell).where(Cell.key == "c2"))
        assert c2.lat is None and c2.poi_counts == [0, 0]
        summary = dataset_summary(session, dataset)
        assert summary["users"] == 2 and summary["total_bytes"] == 600 and summary["cells_with_coordinates"] == 1


def test_storing_the_same_name_replaces_it_and_keeps_other_datasets(db_path):
    database = open_database(str(db_path))
    for content in (_content("a"), _content("b"), _content("a", scale=10)):
        with database.write_session() as session, session.begin():
            store_dataset(session, content)
    with database.session() as session:
        assert sorted(session.scalars(select(Dataset.name))) == ["a", "b"]
        assert _count(session, TrafficHour) == 6 and _count(session, LocationHour) == 6
        assert dataset_summary(session, get_dataset(session, "a"))["total_bytes"] == 6000
        assert get_dataset(session).name == "a"  # the latest stored is active


def test_a_failed_store_leaves_the_database_as_before(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        store_dataset(session, _content("a"))
    broken = _content("a", scale=10)
    broken.location_cell = np.array([0, 0, 7])  # no such cell position
    with pytest.raises(IndexError):
        with database.write_session() as session, session.begin():
            store_dataset(session, broken)
    with database.session() as session:
        assert dataset_summary(session, get_dataset(session, "a"))["total_bytes"] == 600
        assert _count(session, Cell) == 2 and _count(session, TrafficHour) == 3


def test_no_dataset_gives_an_actionable_error(db_path):
    database = open_database(str(db_path))
    with database.session() as session, pytest.raises(NoDatasetError, match="lsdm city build"):
        get_dataset(session)
    with database.session() as session, pytest.raises(NoDatasetError, match="no data set named 'x'"):
        get_dataset(session, "x")
