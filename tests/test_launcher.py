from __future__ import annotations

import json
import os
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
from engine.shipped import read_manifest

REPO = Path(__file__).resolve().parents[1]


def test_first_launch_builds_the_default_city_and_installs_the_shipped_model(db_path, capsys):
    assert launcher.run(["--db", str(db_path), "--prepare-only"]) == 0
    first = capsys.readouterr().out
    assert "First launch" in first and "500 users, 400 cells" in first
    if read_manifest() is not None:
        assert "shipped" in first
        with open_database(str(db_path)).session() as session:
            active = session.scalars(select(ModelRecord).where(ModelRecord.is_active.is_(True))).all()
        assert sorted(m.kind for m in active) == ["clip", "lsdm"]
    assert launcher.run(["--db", str(db_path), "--prepare-only"]) == 0
    second = capsys.readouterr().out
    assert "First launch" not in second and "shipped" not in second and "500 users, 400 cells" in second


def test_launcher_serves_the_dashboard_on_localhost_and_stops_on_sigterm(db_path, tmp_path):
    """The README's run command, end to end: prepare, serve, answer the health check, stop cleanly."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(REPO / "launcher.py"), "--db", str(db_path), "--no-browser"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    try:
        deadline = time.monotonic() + 240
        for line in process.stdout:
            if line.startswith("LSDM dashboard: "):
                url = line.split()[2]
                break
            assert time.monotonic() < deadline, "the dashboard did not come up"
        assert url and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:
            assert response.read().decode().strip() == "ok"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("the launcher did not stop within 30 s of SIGTERM")
    assert url is not None
