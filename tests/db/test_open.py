"""Opening the database (db/session.py ``open_database``): what cannot be used is refused with a sentence and
left as it was (issue 20: a file with 8 KB of garbage in the middle was opened, listed and written into)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cli.main import main as lsdm
from db import open_database
from db.session import DatabaseOpenError, shown_url


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    path = tmp_path / "ok.sqlite"
    assert lsdm(["city", "build", "--users", "6", "--cells", "8", "--days", "3", "--db", str(path)]) == 0
    import sqlite3

    with sqlite3.connect(path) as connection:  # fold the write-ahead log back into the file
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def test_a_damaged_file_is_refused_and_left_as_it_was(healthy: Path, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "damaged.sqlite"
    data = bytearray(healthy.read_bytes())
    middle = max(4096, len(data) // 2 // 4096 * 4096)  # past the header page
    assert len(data) >= middle + 8192
    data[middle : middle + 8192] = b"\xab" * 8192  # 8 KB of garbage in the middle
    damaged.write_bytes(bytes(data))
    before = digest(damaged)
    with pytest.raises(DatabaseOpenError, match="is damaged"):
        open_database(str(damaged))
    assert lsdm(["data", "list", "--db", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "nothing was written" in err and "Traceback" not in err
    assert digest(damaged) == before


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: (d / "folder").mkdir() or d / "folder", "is a folder"),
        (lambda d: (d / "notes.sqlite").write_text("my notes") and d / "notes.sqlite", "is not an SQLite database"),
    ],
)
def test_a_folder_or_another_kind_of_file_is_refused_and_not_written(tmp_path: Path, make, says) -> None:
    target = make(tmp_path)
    before = None if target.is_dir() else digest(target)
    with pytest.raises(DatabaseOpenError, match=says):
        open_database(str(target))
    assert before is None or digest(target) == before


def test_an_unknown_scheme_or_a_missing_driver_is_a_sentence_with_the_password_masked() -> None:
    with pytest.raises(DatabaseOpenError, match="unknown database kind"):
        open_database("nosuch://somewhere/x")
    assert shown_url("postgresql+psycopg://ana:s3cret@db.example:5432/lsdm") == (
        "postgresql+psycopg://ana:***@db.example:5432/lsdm"
    )


def test_a_healthy_database_opens_as_before(healthy: Path) -> None:
    database = open_database(str(healthy))
    with database.session() as session:
        assert session.connection().exec_driver_sql("PRAGMA quick_check").scalar() == "ok"
    database.dispose()


def test_opening_again_keeps_this_processs_locks_so_another_process_never_pulls_the_log_from_under_it(tmp_path):
    """The CI's "disk I/O error" (issue 21's Ray tests): opening a database read its header with ``open()``,
    and closing that handle dropped every POSIX lock this process's SQLite connections held on the file. Another
    process closing its connection then took the file as its last user, checkpointed it and deleted the
    write-ahead log and its index: this process's connections went on reading a deleted copy (stale rows)."""
    import subprocess
    import sys

    path = tmp_path / "shared.sqlite"
    first = open_database(str(path))
    with first.engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE counted (x INTEGER)")
        connection.exec_driver_sql("INSERT INTO counted VALUES (0)")
        connection.commit()
    writer = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('INSERT INTO counted VALUES (1)');"
        " c.commit(); c.close()"
    )
    for written in range(1, 4):
        open_database(str(path))  # a second open in this process, as every page, job and chunk task does
        subprocess.run([sys.executable, "-c", writer, str(path)], check=True)
        assert path.with_name("shared.sqlite-wal").exists(), "the other process deleted the log in use here"
        with first.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT COUNT(*) FROM counted").scalar() == 1 + written
