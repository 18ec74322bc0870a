"""Shared fixtures: real SQLite files in tmp_path, the real-data fixtures beside the repository."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a clean skip where it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data fixtures not present at {SHARED_DATA}")
    return SHARED_DATA


@contextmanager
def data_home(home: Path) -> Iterator[Path]:
    """``LSDM_HOME`` set to ``home`` for a module's or session's fixture (models are stored under it, by
    absolute path), and put back as it was."""
    previous = os.environ.get("LSDM_HOME")
    os.environ["LSDM_HOME"] = str(home)
    try:
        yield home
    finally:
        if previous is None:
            os.environ.pop("LSDM_HOME", None)
        else:
            os.environ["LSDM_HOME"] = previous


# A tiny forecaster without the environment condition: trains in a few seconds on 2 cores, for tests that need
# a model of their own (the shipped one is the default city's: city_db).
TINY_MODEL = {
    "condition": "none",
    "channels": 16,
    "heads": 2,
    "blocks": 1,
    "epochs": 1,
    "batch_size": 16,
    "diffusion_steps": 20,
    "beta_end": 0.8,
    "windows_per_epoch": 64,
}


def copy_database(source: Path, target: Path) -> Path:
    """A consistent copy of a SQLite database file; ``target``. It goes through SQLite's backup API, never the
    file's bytes: the latest writes may still sit in the write-ahead log, and closing a plain file handle on a
    database drops the POSIX locks that this process's SQLite connections hold on it (db/session.py)."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


def stored_city(db: Path, **config: object) -> Path:
    """A generated city (``CityConfig(**config)``) stored in the new database file ``db``; ``db``."""
    from db import open_database
    from db.queries import store_dataset
    from engine.data.city import CityConfig, generate_city

    database = open_database(str(db))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(**config)))
    database.dispose()
    return db


def city_with_tiny_model(home: Path, *, epochs: int = 1, **config: object) -> Path:
    """``home/city.sqlite``: a generated city with a tiny model trained on it (its files under ``home``, which is
    LSDM_HOME while it trains); the database."""
    from cli.main import main as lsdm

    with data_home(home):
        db = stored_city(home / "city.sqlite", **config)
        model = home / "tiny.json"
        model.write_text(json.dumps({**TINY_MODEL, "epochs": epochs}))
        assert lsdm(["train", "--config", str(model), "--db", str(db)]) == 0
    return db


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "lsdm.sqlite"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the developer's real data directory or database."""
    monkeypatch.setenv("LSDM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LSDM_DB", raising=False)


@pytest.fixture(scope="session")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default city with its environment (shipped encoder) and the shipped model: built once per
    test session (about 15 s) in its own data directory. Tests that write use a copy (tests/app)."""
    from cli.main import main as lsdm

    home = tmp_path_factory.mktemp("city-home")
    with data_home(home):
        db = home / "lsdm.sqlite"
        assert lsdm(["city", "build", "--db", str(db), "--json"]) == 0
        assert lsdm(["assets", "install", "--db", str(db), "--json"]) == 0
        with closing(sqlite3.connect(db)) as connection:  # the write-ahead log folded into the file
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """A real PostgreSQL server for this test session (tests/postgres.py), or a skip that says why not."""
    from tests import postgres

    try:
        server = postgres.start()
    except postgres.Unavailable as reason:
        pytest.skip(f"no PostgreSQL server: {reason}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A new empty database on the session's PostgreSQL server: its SQLAlchemy URL."""
    return pg_server.new_database()
