"""The desktop launcher (launcher.py, desktop/serve.py), run as the README's run command runs it: real
processes (worker + Streamlit server), real HTTP on 127.0.0.1, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

import launcher
from db import open_database
from db.models import ModelRecord
from engine.jobs import get_job, live_workers, wait_for
from engine.shipped import read_manifest

REPO = Path(__file__).resolve().parents[1]


def test_prepare_only_does_the_first_launch_work_in_the_foreground(db_path, capsys):
    assert launcher.run(["--db", str(db_path), "--prepare-only"]) == 0
    first = capsys.readouterr().out
    assert "First launch" in first and "500 users, 400 cells" in first
    if read_manifest() is not None:
        with open_database(str(db_path)).session() as session:
            active = session.scalars(select(ModelRecord).where(ModelRecord.is_active.is_(True))).all()
        assert sorted(m.kind for m in active) == ["clip", "lsdm"]
    assert launcher.run(["--db", str(db_path), "--prepare-only"]) == 0
    second = capsys.readouterr().out
    assert "First launch" not in second and "500 users, 400 cells" in second
    assert get_job(open_database(str(db_path)), 1).kind == "setup.default"  # one job, not two


def _launch(db_path: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(REPO / "launcher.py"), "--db", str(db_path), "--no-browser", *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _ready_url(process: subprocess.Popen, timeout: float = 240) -> tuple[str, list[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if line.startswith("LSDM dashboard: "):
            return line.split()[2], lines
        assert time.monotonic() < deadline, "the dashboard did not come up:\n" + "".join(lines)
    pytest.fail("the launcher exited before it was ready:\n" + "".join(lines))


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _children(home: Path) -> dict[str, int]:
    text = (home / "logs" / "launcher.log").read_text()
    return {name: int(pid) for name, pid in re.findall(r"started (worker|dashboard) \(pid (\d+)\)", text)}


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("the launcher did not stop within 30 s of SIGTERM")


def test_launcher_serves_builds_the_first_city_refuses_a_second_instance_and_stops_cleanly(db_path, tmp_path):
    """The README's run command on an empty database: worker and server come up, the first-launch job
    builds the default city in the background, a second launch points to the first, SIGTERM stops all."""
    home = Path(os.environ["LSDM_HOME"])
    process = _launch(db_path, tmp_path)
    try:
        url, lines = _ready_url(process)
        assert url.startswith("http://127.0.0.1:")
        assert any("First launch" in line for line in lines)
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:
            assert response.read().decode().strip() == "ok"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        database = open_database(str(db_path))
        assert live_workers(database), "the worker is running and beating"
        setup = wait_for(database, 1, timeout=300)
        assert setup.kind == "setup.default" and setup.status == "done", setup

        lock = json.loads((db_path.parent / (db_path.name + ".lock")).read_text())
        assert lock["url"] == url and lock["pid"] == process.pid
        second = _launch(db_path, tmp_path)
        out = second.communicate(timeout=120)[0]
        assert second.returncode == 3, out
        assert "already running" in out and url in out

        children = _children(home)
        assert set(children) == {"worker", "dashboard"}
        # Issue 20: the database URL (which may hold a password) is not on the worker's command line, and
        # the lock and logs are owner-only.
        worker_argv = Path(f"/proc/{children['worker']}/cmdline").read_bytes().split(b"\0")
        assert b"worker" in worker_argv and b"--db" not in worker_argv
        private = [db_path.parent / (db_path.name + ".lock"), *(home / "logs").glob("*.log")]
        assert len(private) == 4 and all(p.stat().st_mode & 0o777 == 0o600 for p in private), private
    finally:
        _stop(process)
    assert process.returncode == 0
    assert all(_gone(pid) for pid in children.values()), "both children stopped"
    assert live_workers(open_database(str(db_path))) == []
    for name in ("launcher.log", "worker.log", "dashboard.log"):
        assert (home / "logs" / name).stat().st_size > 0, name
    assert "(setup.default) done" in (home / "logs" / "worker.log").read_text()
    # the lock went with the launcher: a new launch would start
    assert (db_path.parent / (db_path.name + ".lock")).read_text() == ""


def test_when_a_child_dies_the_launcher_stops_the_other_and_exits(db_path, tmp_path):
    home = Path(os.environ["LSDM_HOME"])
    process = _launch(db_path, tmp_path)
    try:
        _ready_url(process)
        children = _children(home)
        os.kill(children["worker"], signal.SIGKILL)
        out = process.communicate(timeout=60)[0]
    finally:
        _stop(process)
    assert process.returncode not in (0, None)
    assert "the worker exited" in out
    assert _gone(children["dashboard"]), "the dashboard was stopped with it"


def test_a_port_in_use_is_refused_with_the_flag_named(db_path, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(REPO / "launcher.py"), "--db", str(db_path), "--no-browser", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert "--port" in result.stderr and str(port) in result.stderr


def test_a_port_the_last_run_left_in_time_wait_is_free_and_a_listening_one_is_not() -> None:
    """Issue 20: relaunching on the same --port was refused for about 60 s after a stop: the port check bound
    without address reuse, while the server (Tornado) binds with it."""
    import socket

    from desktop.appserver import port_is_free

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_is_free(port)  # someone listens there
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its port goes to TIME_WAIT, as after a stop
    client.close()
    server.close()
    assert port_is_free(port)
