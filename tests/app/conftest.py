"""App fixtures: each test gets its own copy of the session's default-city database (tests/conftest.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import copy_database

REPO = Path(__file__).resolve().parents[2]
ENTRY = str(REPO / "app" / "main.py")


def page(name: str) -> str:
    """The file of a dashboard page, for AppTest.from_file / switch_page."""
    return str(REPO / "app" / "views" / f"{name}.py")


def sql(db: Path, query: str, *args: object) -> list[tuple]:
    """Rows of an independent SQL query on a database file (the expected values of a test)."""
    with sqlite3.connect(db) as con:
        return con.execute(query, args).fetchall()


def run_page(name: str, **params: object) -> AppTest:
    """Run a page with query parameters; fails on any exception."""
    at = AppTest.from_file(page(name), default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = str(value)
    at.run()
    assert not at.exception, at.exception
    return at


def query(at: AppTest, name: str) -> str | None:
    """A query parameter as the page left it (AppTest gives a list for values set through it)."""
    value = at.query_params.get(name)
    return value[0] if isinstance(value, list) else value


@pytest.fixture
def app_db(city_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the city database, which the app opens (LSDM_DB)."""
    copy = tmp_path / "app.sqlite"
    copy_database(city_db, copy)
    monkeypatch.setenv("LSDM_DB", str(copy))
    return copy


@pytest.fixture
def empty_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty database (no data set yet), for the empty states."""
    path = tmp_path / "empty.sqlite"
    monkeypatch.setenv("LSDM_DB", str(path))
    return path
