"""The desktop application: one worker and one Streamlit server, supervised (launcher.py, `lsdm app`).

- **Children.** ``lsdm worker`` (engine/jobs/) and the Streamlit server (desktop/appserver.py), both
  started through ``launcher.py`` (``launcher.py lsdm ...`` / ``launcher.py streamlit ...``) so that the
  same commands work from a checkout and from the PyInstaller bundle, whose executable is the launcher.
- **Ready.** The URL is printed (and the browser opened) once the health endpoint answers and the
  worker has written its first heartbeat.
- **Stopping.** Ctrl+C or SIGTERM stops both children (SIGTERM, then SIGKILL after ``STOP_GRACE_S``);
  when either child exits on its own, the other is stopped too and the launcher exits with the
  child's status.
- **One instance per database.** A lock file next to the database (``lsdm.sqlite.lock``: in the data
  directory for the default database) is held with an OS lock for the launcher's lifetime; it holds
  the running instance's URL and PID, so a second launch points to the running dashboard (and opens
  it) instead of starting another. The OS drops the lock when the process dies, so a crash never
  leaves a stale lock.
- **Logs.** ``<data dir>/logs/launcher.log``, ``worker.log`` and ``dashboard.log`` (each rolled over to
  ``.1`` at start when over 5 MB) when logging to files; `lsdm app` logs to the terminal instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url

from db import Database, open_database
from db.models import Worker
from db.session import data_dir, shown_url
from desktop.appserver import ROOT, free_port, port_is_free, streamlit_flags, wait_healthy
from engine.errors import InputError

log = logging.getLogger("lsdm.launcher")

STOP_GRACE_S = 10.0
LOG_ROLL_BYTES = 5 * 1024 * 1024
EXIT_ALREADY_RUNNING = 3
READY_PREFIX = "LSDM dashboard: "


# --- how children are started ---------------------------------------------------------------------


def child_command(*args: str) -> list[str]:
    """A command that runs ``launcher.py ARGS``: the bundle's executable when frozen, else this Python
    with the checkout's launcher.py."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, str(ROOT / "launcher.py"), *args]


def worker_command(log_file: Path | None = None) -> list[str]:
    """The worker's command line: the database comes by the environment (``LSDM_DB``), so a password in its
    URL is not on a command line anyone can read with ``ps``."""
    command = child_command("lsdm", "worker")
    return command + (["--log-file", str(log_file)] if log_file else [])


def streamlit_command(port: int) -> list[str]:
    return child_command("streamlit", "run", str(ROOT / "app" / "main.py"), *streamlit_flags(port))


# --- logs -------------------------------------------------------------------------------------------


def logs_dir() -> Path:
    path = data_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _private(path: Path, mode: str):  # noqa: ANN202 - a binary or text file object
    """Open a log for appending, owner-only (0600): logs may name the database and what was done to it."""
    handle = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), mode)
    os.chmod(path, 0o600)
    return handle


def rolled(path: Path) -> Path:
    """``path``, after moving a file over LOG_ROLL_BYTES to ``path.1``."""
    if path.exists() and path.stat().st_size > LOG_ROLL_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    return path


# --- the single-instance lock -------------------------------------------------------------------------


class AlreadyRunning(RuntimeError):
    def __init__(self, lock_path: Path, info: dict) -> None:
        self.lock_path, self.info = lock_path, info
        where = info.get("url") or "(starting up)"
        super().__init__(
            f"LSDM is already running on this database: {where} (pid {info.get('pid', '?')}; lock {lock_path})"
        )


def lock_path_for(db_url: str) -> Path:
    """Next to the database file (the data directory for the default one); the data directory for
    server databases."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
        return path.with_name(path.name + ".lock")
    return data_dir() / "launcher.lock"


class InstanceLock:
    """An exclusive OS lock on a small file that also says who holds it (JSON: pid, url, db)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def acquire(self, info: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only (0600): the lock says which database it guards, and a URL may hold a password.
        handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "a+")
        os.chmod(self.path, 0o600)
        try:
            if sys.platform == "win32":
                import msvcrt

                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise AlreadyRunning(self.path, self.read()) from None
        self._handle = handle
        self.update(info)

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def update(self, info: dict) -> None:
        handle = self._handle
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), **info}))
        handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            try:
                self._handle.seek(0)
                self._handle.truncate()
            finally:
                self._handle.close()  # closing drops the lock
                self._handle = None


# --- supervising ------------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen


def _start(name: str, command: list[str], env: dict[str, str], log_file: Path | None) -> Child:
    output = _private(rolled(log_file), "ab") if log_file else None
    kwargs = {"start_new_session": True} if sys.platform != "win32" else {}  # our Ctrl+C is forwarded by us
    process = subprocess.Popen(
        command, cwd=str(ROOT), env=env, stdout=output, stderr=subprocess.STDOUT if output else None, **kwargs
    )
    if output:
        output.close()
    log.info("started %s (pid %s): %s", name, process.pid, " ".join(command))
    return Child(name, process)


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (pid %s) did not stop within %.0f s; killing it", child.name, child.process.pid, STOP_GRACE_S
            )
            child.process.kill()
            child.process.wait()
        log.info("%s (pid %s) exited with %s", child.name, child.process.pid, child.process.returncode)


def _wait_worker(database: Database, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with status {process.returncode} before it was ready")
        with database.session() as session:
            if session.scalar(select(Worker.id).where(Worker.pid == process.pid, Worker.stopped_at.is_(None))):
                return
        time.sleep(0.2)
    raise RuntimeError(f"the worker did not start within {timeout:.0f} s")


def serve(
    db_url: str,
    *,
    port: int | None = None,
    open_browser: bool = True,
    with_worker: bool = True,
    log_to_files: bool = False,
    before_ready: Callable[[], None] | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Lock, start the worker and the dashboard, wait until both are ready, then supervise them until
    Ctrl+C/SIGTERM or until one exits. Returns the exit status."""
    if port is not None and not port_is_free(port):
        raise InputError(
            f"port {port} on 127.0.0.1 is already in use",
            field="--port",
            hint="pick another port or leave --port out to take a free one",
        )
    database = open_database(db_url)  # creates/migrates before the children read it
    lock = InstanceLock(lock_path_for(database.url))
    try:
        lock.acquire({"db": shown_url(database.url), "url": None})
    except AlreadyRunning as running:
        say(f"{running}")
        if running.info.get("url"):
            say(f"{READY_PREFIX}{running.info['url']}  (already running)")
            if open_browser:
                webbrowser.open(running.info["url"])
        return EXIT_ALREADY_RUNNING

    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    children: list[Child] = []
    status = 0
    try:
        if before_ready:
            before_ready()
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, LSDM_DB=database.url, PYTHONUNBUFFERED="1")
        folder = logs_dir() if log_to_files else None
        if with_worker:
            children.append(_start("worker", worker_command(), env, folder / "worker.log" if folder else None))
        children.append(_start("dashboard", streamlit_command(port), env, folder / "dashboard.log" if folder else None))
        try:
            wait_healthy(url, process=children[-1].process, timeout=120)
            if with_worker:
                _wait_worker(database, children[0].process)
        except RuntimeError as error:
            say(f"error: {error}" + (f"; see {folder}" if folder else ""))
            return 1
        lock.update({"db": shown_url(database.url), "url": url, "port": port})
        say(f"{READY_PREFIX}{url}  (Ctrl+C stops it)")
        log.info("ready at %s", url)
        if open_browser:
            webbrowser.open(url)
        while not stop.is_set():
            ended = next((c for c in children if c.process.poll() is not None), None)
            if ended is not None:
                status = ended.process.returncode or 0
                say(f"the {ended.name} exited with status {status}; stopping")
                log.warning("%s exited with %s; stopping the rest", ended.name, status)
                status = status or 1
                break
            stop.wait(0.5)
        return status
    finally:
        _stop(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        lock.release()
        log.info("stopped")
