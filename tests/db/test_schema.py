from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, select

from db import open_database, resolve_db_url
from db.models import Dataset, SchemaVersion
from db.schema import LATEST_VERSION, SchemaTooNewError, current_version, upgrade
from db.session import _configure_sqlite


def _schema(engine) -> dict:
    inspector = inspect(engine)
    return {
        table: sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table))
        for table in inspector.get_table_names()
    }


def test_new_database_is_at_latest_version_with_wal_and_foreign_keys(db_path):
    database = open_database(str(db_path))
    with database.engine.connect() as connection:
        assert current_version(connection) == LATEST_VERSION
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_upgrade_from_version_1_keeps_data_and_equals_a_fresh_schema(tmp_path):
    old = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    _configure_sqlite(old)
    assert upgrade(old, target=1) == (0, 1)
    assert "tiles" not in inspect(old).get_table_names()
    from datetime import datetime

    with old.begin() as connection:
        connection.execute(
            Dataset.__table__.insert().values(
                name="kept",
                kind="synthetic",
                entity_kind="user",
                services=["a"],
                poi_categories=["b"],
                time_origin=datetime(2016, 4, 18),
                timezone="UTC",
                hours=24,
                params={},
                is_active=True,
                created_at=datetime(2020, 1, 1),
            )
        )
    assert upgrade(old) == (1, LATEST_VERSION)
    with old.connect() as connection:
        assert connection.scalar(select(Dataset.name)) == "kept"
        assert connection.scalar(select(SchemaVersion.version)) == LATEST_VERSION
    fresh = open_database(str(tmp_path / "fresh.sqlite")).engine
    assert _schema(old) == _schema(fresh)


def test_upgrade_is_idempotent(db_path):
    database = open_database(str(db_path))
    assert upgrade(database.engine) == (LATEST_VERSION, LATEST_VERSION)


def test_database_newer_than_the_program_is_refused_with_advice(db_path):
    database = open_database(str(db_path))
    with database.engine.begin() as connection:
        connection.execute(SchemaVersion.__table__.update().values(version=LATEST_VERSION + 1))
    with pytest.raises(SchemaTooNewError, match="newer than this program"):
        open_database(str(db_path))


def test_db_location_prefers_option_then_environment_then_data_dir(tmp_path, monkeypatch):
    assert resolve_db_url(str(tmp_path / "a.sqlite")) == f"sqlite:///{tmp_path / 'a.sqlite'}"
    assert resolve_db_url("postgresql+psycopg://u:p@localhost/lsdm") == "postgresql+psycopg://u:p@localhost/lsdm"
    monkeypatch.setenv("LSDM_DB", str(tmp_path / "env.sqlite"))
    assert resolve_db_url(None) == f"sqlite:///{tmp_path / 'env.sqlite'}"
    monkeypatch.delenv("LSDM_DB")
    monkeypatch.setenv("LSDM_HOME", str(tmp_path / "home"))
    assert resolve_db_url(None) == f"sqlite:///{tmp_path / 'home' / 'lsdm.sqlite'}"
    assert (tmp_path / "home").is_dir()


def test_upgrade_from_version_2_adds_the_description_error_column_and_keeps_rows(tmp_path):
    from datetime import datetime

    from db.models import Cell, Description

    old = create_engine(f"sqlite:///{tmp_path / 'v2.sqlite'}")
    _configure_sqlite(old)
    upgrade(old, target=2)
    with old.begin() as connection:  # the exact version-2 shape: no descriptions.error yet
        connection.exec_driver_sql("ALTER TABLE descriptions DROP COLUMN error")
        connection.execute(
            Dataset.__table__.insert().values(
                id=1,
                name="d",
                kind="synthetic",
                entity_kind="user",
                services=["a"],
                poi_categories=["b"],
                time_origin=datetime(2016, 4, 18),
                timezone="UTC",
                hours=24,
                params={},
                is_active=True,
                created_at=datetime(2020, 1, 1),
            )
        )
        connection.execute(
            Cell.__table__.insert().values(id=1, dataset_id=1, key="c", name="c", poi_counts=[1], attrs={})
        )
        connection.exec_driver_sql(
            "INSERT INTO descriptions (cell_id, text, generator, created_at) "
            "VALUES (1, 'old text', 'template', '2020-01-01')"
        )
    assert upgrade(old) == (2, LATEST_VERSION)
    with old.connect() as connection:
        assert connection.execute(select(Description.text, Description.error)).one() == ("old text", None)
    assert _schema(old) == _schema(open_database(str(tmp_path / "fresh.sqlite")).engine)
