"""A real PostgreSQL server for the tests (issue 21): Debian's ``postgresql`` package, started once per test
session in a private folder on a free loopback port, each test given a database of its own.

Where the server's programs are missing, ``make test`` installs the package when apt-get is usable (see the
Makefile's ``postgres`` target); otherwise, and where the Python driver (psycopg, the ``postgres`` extra) is
missing, the tests that need it skip and say why. PostgreSQL refuses to run as root: as root the server runs
as the ``postgres`` account the package creates (or ``nobody``). Durability is switched off (``fsync``,
``full_page_writes``, ``synchronous_commit``): these are tests, and it makes them fast; locking, isolation and
transactions are PostgreSQL's own."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; ``str()`` says why (the skip reason)."""


def _bin_dir() -> Path:
    """The newest installed server's programs (Debian keeps each major version under /usr/lib/postgresql)."""
    versions = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if versions:
        newest = max(versions, key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0)
        return newest
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise Unavailable(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: `make test` installs Debian's postgresql "
        "package where apt-get is usable"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    folder: Path
    port: int
    bin_dir: Path
    run_as: str | None

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://lsdm@127.0.0.1:{self.port}/{database}"

    def new_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of the database ``template`` (a URL of this server's, with no
        connection open to it: PostgreSQL copies its files); its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=lsdm dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Server:
    """Start a private server; raises ``Unavailable`` with the reason where it cannot."""
    try:
        import psycopg  # noqa: F401 - the driver the URLs name
    except ImportError:
        raise Unavailable("the PostgreSQL driver psycopg is not installed (pip install -e '.[postgres]')") from None
    bin_dir = _bin_dir()
    run_as = None
    if os.geteuid() == 0:
        for account in ("postgres", "nobody"):
            try:
                pwd.getpwnam(account)
            except KeyError:
                continue
            run_as = account
            break
        else:
            raise Unavailable("running as root and no unprivileged account (postgres, nobody) to run PostgreSQL as")
    folder = Path(tempfile.mkdtemp(prefix="lsdm-pg-"))  # directly under /tmp: reachable by the server's account
    if run_as:
        shutil.chown(folder, user=run_as)
    server = Server(folder=folder, port=_free_port(), bin_dir=bin_dir, run_as=run_as)
    made = server._run("initdb", "-D", str(folder / "data"), "-U", "lsdm", "--auth=trust", "-E", "UTF8", "-N")
    if made.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise Unavailable(f"initdb failed: {(made.stderr or made.stdout).strip()[-400:]}")
    options = (
        f"-k {folder} -h 127.0.0.1 -p {server.port} -c fsync=off -c full_page_writes=off "
        "-c synchronous_commit=off -c max_connections=200"
    )
    log_file = folder / "server.log"
    started = server._run("pg_ctl", "-D", str(folder / "data"), "-l", str(log_file), "-w", "-o", options, "start")
    if started.returncode != 0:
        log = log_file.read_text(errors="replace")[-400:] if log_file.exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise Unavailable(f"PostgreSQL did not start: {started.stderr.strip()[-200:]} {log}")
    return server


def database_state(url: str) -> dict[str, str]:
    """Every table's row count and a digest of all its rows, computed by the server: what a refused command
    must leave as it was."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            out = {}
            for table in inspect(connection).get_table_names():
                digest = "coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')"
                query = f"SELECT count(*) || ':' || {digest} FROM \"{table}\" t"
                out[table] = connection.execute(text(query)).scalar_one()
            return out
    finally:
        engine.dispose()
