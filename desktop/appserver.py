"""Serving the dashboard: ports, the Streamlit flags and the health check (desktop/serve.py starts it).

This module never imports Streamlit (the server is a child process); the server runs with the flags
that STACK.md found necessary (development mode off, no usage stats, no file watcher, headless: we
open the browser ourselves once the health endpoint answers).
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

ROOT = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parents[1]))
ENTRY = ROOT / "app" / "main.py"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether the dashboard could listen on ``port``. The probe binds as the server does, with address reuse
    (not on Windows, where it means something else): without it a port that the last run left in TIME_WAIT
    was refused for about a minute after a stop, although the server itself would bind it at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if sys.platform != "win32":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def streamlit_flags(port: int) -> list[str]:
    return [
        "--server.address=127.0.0.1",
        f"--server.port={port}",
        "--server.headless=true",
        "--global.developmentMode=false",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
    ]


def wait_healthy(url: str, *, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Wait until ``url``/_stcore/health answers "ok"; raises RuntimeError on timeout or child exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the dashboard server exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the dashboard did not answer at {url} within {timeout:.0f} s")
