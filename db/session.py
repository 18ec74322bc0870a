"""The one place that opens the database.

Where the database is, first match wins:
1. an explicit ``--db`` value (a file path or any SQLAlchemy URL, e.g. ``postgresql+psycopg://...``);
2. the environment variable ``LSDM_DB`` (same forms);
3. ``<data dir>/lsdm.sqlite``, the data dir being ``$LSDM_HOME`` or the platform's per-user data
   directory (``~/.local/share/lsdm`` on Linux, ``~/Library/Application Support/lsdm`` on macOS,
   ``%LOCALAPPDATA%\\lsdm`` on Windows).

SQLite runs in WAL mode (readers never block the writer) with a busy timeout, foreign keys on, and
real transactions around DDL too (pysqlite's legacy mode would autocommit DDL, which would let a failed
migration or ingest leave half a schema behind).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from db.schema import upgrade

SQLITE_BUSY_TIMEOUT_MS = 15_000


class DatabaseOpenError(ValueError):
    """The database named cannot be used: a folder, not an SQLite file, damaged, an unknown URL scheme, a
    missing driver, a server that refuses or does not answer. ``str()`` is the sentence for the user (the
    URL without its password); nothing was written."""


def shown_url(url: str) -> str:
    """The URL as messages and logs show it: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: shown as given (it holds no password then)
        return url


def _check_sqlite_file(path: Path) -> None:
    """Before SQLite opens (and would write into) a file: a folder or a file that is not an SQLite database
    is refused; a damaged one is refused after ``PRAGMA quick_check`` (below, once the engine exists).

    The header is read by SQLite itself, on a read-only connection, never with ``open()``: closing any file
    handle on the database drops every POSIX lock this process holds on it (SQLite's own connections
    included), and another process's connection could then take the file for its last, checkpoint it and
    delete its write-ahead log under this process's open connections ("disk I/O error", or worse)."""
    if path.is_dir():
        raise DatabaseOpenError(f"{path} is a folder, not a database file")
    if path.is_file() and path.stat().st_size > 0:
        from urllib.request import pathname2url

        try:
            probe = sqlite3.connect(f"file:{pathname2url(str(path.resolve()))}?mode=ro", uri=True)
            try:
                probe.execute("PRAGMA schema_version").fetchone()
            finally:
                probe.close()
        except sqlite3.DatabaseError as error:
            if "not a database" in str(error):
                raise DatabaseOpenError(
                    f"{path} is not an SQLite database (its first bytes are not SQLite's); nothing was written to it"
                ) from None
            # Anything else (locked, damaged) is for the quick check and the opening below to report.


def data_dir() -> Path:
    """The per-user directory for the database, models and logs (created on demand)."""
    if os.environ.get("LSDM_HOME"):
        root = Path(os.environ["LSDM_HOME"]).expanduser()
    elif sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "lsdm"
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support" / "lsdm"
    else:
        root = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "lsdm"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Where trained encoders and forecasters are saved (``<data dir>/models``)."""
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_folder(recorded: str) -> Path:
    """A model's folder: where the database says it was saved, else the folder of the same name under this
    machine's models directory. Folders are named by their content's hash and never change, so machines that
    share one database (PostgreSQL, docs/deployment.md) can mount the models folder anywhere, or copy it; the
    checksum recorded with the model is checked when it is loaded."""
    path = Path(recorded)
    if path.exists() or not path.name:
        return path
    local = models_dir() / path.name
    return local if local.exists() else path


def resolve_db_url(value: str | None = None) -> str:
    """Turn a ``--db`` value, ``LSDM_DB`` or the default location into a SQLAlchemy URL."""
    value = value or os.environ.get("LSDM_DB") or str(data_dir() / "lsdm.sqlite")
    if "://" in value:
        make_url(value)  # raises ArgumentError with the offending URL
        return value
    path = Path(value).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _configure_sqlite(engine: Engine) -> None:
    in_memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two writers wait (busy timeout) instead of
        # failing half-way with "database is locked" on lock upgrade.
        write = connection.get_execution_options().get("lsdm_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# --- claims: a job's writes count only while its worker still holds it -------------------------------

_CLAIM = threading.local()


class ClaimLost(RuntimeError):
    """The job this thread is running is no longer its worker's: another worker declared that worker dead
    (it was paused past the dead-worker timeout: a laptop lid, a debugger, a long GC) and requeued or failed
    the job. The transaction that found out was rolled back, so the job's result exists once at most."""


# A job's result rows, by table: a transaction of a claimed job that inserts one records it on the job's row
# (``result_ref``) in the same transaction, so a result exists exactly when its job names it, even when the
# worker dies between storing the result and marking the job done.
RESULT_TABLES = {
    "datasets": "dataset",
    "models": "model",
    "forecast_runs": "forecast_run",
    "load_runs": "load_run",
    "scenarios": "scenario",
}


@dataclass
class _Claim:
    job_id: int
    worker_id: str
    attempt: int
    result_ref: str | None = None  # a result row inserted by the transaction now open


@contextmanager
def job_claim(job_id: int, worker_id: str, attempt: int) -> Iterator[None]:
    """While this is open, every commit on this thread first checks, inside the transaction it commits, that
    job ``job_id`` is still running under ``worker_id`` at attempt ``attempt`` (the fencing token: a requeue
    clears the worker and the next claim counts a new attempt), and raises ``ClaimLost`` otherwise. In a
    write transaction the check holds until the commit: SQLite's write lock is taken at BEGIN, and PostgreSQL
    locks the job row (``FOR UPDATE``), so a worker that recovers the job waits for this commit or wins.
    A transaction that inserts a result row (``RESULT_TABLES``) also writes it to the job's ``result_ref``."""
    previous = getattr(_CLAIM, "value", None)
    _CLAIM.value = _Claim(int(job_id), str(worker_id), int(attempt))
    try:
        yield
    finally:
        _CLAIM.value = previous


def _note_results(session: Session, _context: object) -> None:
    claim = getattr(_CLAIM, "value", None)
    if claim is None or claim.result_ref is not None:
        return
    for instance in session.new:
        prefix = RESULT_TABLES.get(getattr(instance, "__tablename__", ""))
        if prefix is not None and getattr(instance, "id", None) is not None:
            claim.result_ref = f"{prefix}:{instance.id}"
            return


def _forget_results(_connection: Connection) -> None:
    claim = getattr(_CLAIM, "value", None)
    if claim is not None:
        claim.result_ref = None


def _check_claim(connection: Connection) -> None:
    claim = getattr(_CLAIM, "value", None)
    if claim is None:
        return
    from sqlalchemy import select, update

    from db.models import Job  # here: db.models is not needed to open a database

    query = select(Job.id).where(
        Job.id == claim.job_id,
        Job.worker_id == claim.worker_id,
        Job.status == "running",
        Job.attempts == claim.attempt,
    )
    if connection.dialect.name != "sqlite":
        query = query.with_for_update()
    if connection.execute(query).first() is None:
        claim.result_ref = None
        raise ClaimLost(
            f"job {claim.job_id} is no longer this worker's (attempt {claim.attempt}): another worker took it over "
            "while this one was not answering; this worker's result was not stored"
        )
    if claim.result_ref is not None:
        connection.execute(update(Job).where(Job.id == claim.job_id).values(result_ref=claim.result_ref))
        claim.result_ref = None


event.listen(Session, "after_flush", _note_results)


@dataclass
class Database:
    """An engine plus its session factory, migrated to the current schema."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    def session(self) -> Session:
        return self.sessions()

    def write_session(self) -> Session:
        """A session whose transaction takes SQLite's write lock at BEGIN (one writer at a time)."""
        return Session(bind=self.engine.execution_options(lsdm_write=True), expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


def open_database(value: str | None = None, *, migrate: bool = True) -> Database:
    """Open (and by default create or upgrade) the database named by ``value``/``LSDM_DB``/default.

    Refused with a ``DatabaseOpenError`` (a sentence, nothing written): a folder or a non-SQLite file, an
    SQLite file that ``PRAGMA quick_check`` finds damaged (checked when opening to upgrade, which is every
    command's and the dashboard's first open), an unknown scheme or driver, a server that cannot be reached
    or refuses the login."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    try:
        url = resolve_db_url(value)
    except ArgumentError as error:
        raise DatabaseOpenError(f"not a database URL or file path: {error}") from None
    shown = shown_url(url)
    try:
        engine = create_engine(url)
    except (NoSuchModuleError, ModuleNotFoundError, ArgumentError) as error:
        raise DatabaseOpenError(f"{shown}: unknown database kind or missing driver ({error})") from None
    file = None
    if engine.dialect.name == "sqlite":
        if engine.url.database not in (None, "", ":memory:"):
            file = Path(str(engine.url.database))
            _check_sqlite_file(file)
        _configure_sqlite(engine)
    event.listen(engine, "commit", _check_claim)
    event.listen(engine, "rollback", _forget_results)
    database = Database(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
    if migrate:
        try:
            if file is not None and file.is_file() and file.stat().st_size > 0:
                _quick_check(engine, file)
            upgrade(engine)
        except DatabaseOpenError:
            engine.dispose()
            raise
        except OperationalError as error:
            engine.dispose()
            if busy_message(error):
                raise
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            raise DatabaseOpenError(f"cannot open the database {shown}: {reason}") from None
    return database


def _quick_check(engine: Engine, file: Path) -> None:
    import sqlalchemy

    try:
        with engine.connect() as connection:
            found = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check").fetchall()]
    except sqlalchemy.exc.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        reason = str(getattr(error, "orig", None) or error).strip()
        raise DatabaseOpenError(f"{file} is damaged ({reason}); nothing was written to it") from None
    if found != ["ok"]:
        raise DatabaseOpenError(
            f"{file} is damaged: SQLite's quick check found {len(found)} problem(s), the first: {found[0]}; "
            "nothing was written to it. Restore it from a copy, or start a new one with --db"
        )


def busy_message(error: BaseException) -> str | None:
    """A sentence for a database another process keeps busy (SQLite's "database is locked" after the busy
    timeout, PostgreSQL's lock timeout), else None: the caller shows it instead of a traceback."""
    text = str(getattr(error, "orig", None) or error).lower()
    if "database is locked" in text or "lock timeout" in text or "could not obtain lock" in text:
        return (
            f"the database is busy: another process (an ingest, a build or a training run) has held its write lock "
            f"for more than {SQLITE_BUSY_TIMEOUT_MS // 1000} s; nothing was written. Try again when it has finished."
        )
    return None
