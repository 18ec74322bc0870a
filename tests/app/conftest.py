"""App fixtures: each test gets its own copy of the session's default-city database (tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = str(REPO / "app" / "main.py")


def page(name: str) -> str:
    """The file of a dashboard page, for AppTest.from_file / switch_page."""
    return str(REPO / "app" / "views" / f"{name}.py")


@pytest.fixture
def app_db(city_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the city database, which the app opens (LSDM_DB)."""
    copy = tmp_path / "app.sqlite"
    shutil.copy(city_db, copy)
    monkeypatch.setenv("LSDM_DB", str(copy))
    return copy


@pytest.fixture
def empty_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty database (no data set yet), for the empty states."""
    path = tmp_path / "empty.sqlite"
    monkeypatch.setenv("LSDM_DB", str(path))
    return path
