from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import func, select

from db import open_database
from db.models import Cell, Dataset, Entity, LocationHour, ModelRecord, TrafficHour
from db.queries import (
    DatasetContent,
    NoDatasetError,
    activate_model,
    active_model,
    dataset_sizes,
    dataset_summary,
    encoder_names,
    entity_locations,
    entity_matrix,
    find_encoder,
    get_dataset,
    location_rows,
    store_dataset,
    traffic_rows,
)


def _content(name: str = "tiny", scale: int = 1) -> DatasetContent:
    return DatasetContent(
        name=name,
        kind="table",
        entity_kind="user",
        services=["A", "B", "C"],
        poi_categories=["x", "y"],
        time_origin=datetime(2016, 4, 18),
        timezone="UTC",
        hours=4,
        cell_keys=["c1", "c2"],
        cell_poi=np.array([[1, 2], [0, 0]]),
        cell_lat=np.array([31.2, np.nan]),
        cell_lon=np.array([121.4, np.nan]),
        entity_keys=["u1", "u2"],
        traffic_entity=np.array([0, 0, 1]),
        traffic_hour=np.array([0, 3, 2]),
        traffic_service=np.array([1, 2, 0]),
        traffic_bytes=np.array([100, 200, 300]) * scale,
        location_entity=np.array([0, 0, 1]),
        location_hour=np.array([0, 3, 2]),
        location_cell=np.array([1, 0, 0]),
    )


def _count(session, model) -> int:
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
    with pytest.raises(IndexError), database.write_session() as session, session.begin():
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


def test_dataset_rows_of_some_entities_read_as_arrays(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        store_dataset(session, _content("a"))
        store_dataset(session, _content("b"))
    with database.session() as session:
        dataset = get_dataset(session, "a")
        users = {e.key: e.id for e in session.scalars(select(Entity).where(Entity.dataset_id == dataset.id))}
        c1 = session.scalar(select(Cell.id).where(Cell.dataset_id == dataset.id, Cell.key == "c1"))
        assert sorted(traffic_rows(session, dataset.id).tolist()) == [
            [users["u1"], 0, 1, 100],
            [users["u1"], 3, 2, 200],
            [users["u2"], 2, 0, 300],
        ]
        assert location_rows(session, dataset.id, [users["u2"]]).tolist() == [[users["u2"], 2, c1]]
        assert traffic_rows(session, dataset.id, []).shape == (0, 4)
        assert dataset_sizes(session) == {dataset.id: (2, 2), get_dataset(session, "b").id: (2, 2)}


def _model(name: str, kind: str, dataset_id: int | None, active: bool = False) -> ModelRecord:
    return ModelRecord(
        name=name, kind=kind, path=f"/models/{name}", sha256="0" * 64, dataset_id=dataset_id, is_active=active
    )


def test_activating_a_model_deactivates_only_the_others_of_its_kind_and_data_set(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        a, b = store_dataset(session, _content("a")).id, store_dataset(session, _content("b")).id
        session.add_all(
            [
                _model("old", "lsdm", a, active=True),
                _model("enc", "clip", a, active=True),
                _model("other", "lsdm", b, active=True),
            ]
        )
    with database.write_session() as session, session.begin():
        activate_model(session, _model("new", "lsdm", a))
    with database.session() as session:
        assert active_model(session, a).name == "new"
        assert active_model(session, a, kind="clip").name == "enc"
        assert active_model(session, b).name == "other"
        assert session.scalar(select(func.count()).select_from(ModelRecord).where(ModelRecord.is_active)) == 3
    with database.write_session() as session, session.begin():
        activate_model(session, session.scalar(select(ModelRecord).where(ModelRecord.name == "old")))
    with database.session() as session:
        assert active_model(session, a).name == "old" and active_model(session, 10**6) is None


def test_an_encoder_is_found_by_its_id_newest_first_in_a_data_set_or_any(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        a, b = store_dataset(session, _content("a")).id, store_dataset(session, _content("b")).id
        session.add_all([_model("clip-1", "clip", a), _model("clip-1", "clip", b), _model("lsdm-1", "lsdm", a)])
    with database.session() as session:
        assert find_encoder(session, "clip-1", a).dataset_id == a
        assert find_encoder(session, "clip-1").dataset_id == b  # the newest registration
        assert find_encoder(session, "lsdm-1") is None and find_encoder(session, "clip-1", 10**6) is None
        assert encoder_names(session) == ["clip-1"]
