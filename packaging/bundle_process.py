"""Running a built bundle from outside, shared by packaging/smoke.py and benchmarks/bench_bundle.py:
start its executable in a private data directory, time it to the health endpoint and to the ready
line, drive its own command line, open its first page in Chromium, stop it with SIGTERM and check that
its children are gone. Standard library only, plus Playwright for the page (optional)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

NAME = "lsdm-dashboard"
READY_PREFIX = "LSDM dashboard: "  # desktop/serve.py READY_PREFIX
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu"]
PAGE_TITLES = ("Map", "Cell", "User", "Forecast", "What-if", "Models & evaluation", "Data")  # app/main.py


class BundleError(RuntimeError):
    """A failed check; the message says what was expected and what happened."""


def executable(bundle: Path) -> Path:
    return bundle / NAME


def build_record_path(bundle: Path) -> Path:
    return bundle.parent / f"{bundle.name}-build.json"


def folder_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) of everything under ``folder`` (links not followed)."""
    total = files = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            files += 1
    return total, files


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def health(url: str) -> str | None:
    """The body of ``url``/_stcore/health, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().decode("utf-8", "replace").strip()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def bundle_env(home: Path) -> dict[str, str]:
    """The environment for the bundle and its command line: ``home`` as LSDM_HOME (the database is
    ``home/lsdm.sqlite``), nothing from a developer's LSDM_DB."""
    env = {**os.environ, "LSDM_HOME": str(home)}
    env.pop("LSDM_DB", None)
    return env


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc; empty elsewhere)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z":
            parent_of[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parent_of.items() if parent == current]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def log_tails(home: Path, lines: int = 40) -> dict[str, str]:
    """The last lines of every log in ``home/logs``."""
    tails = {}
    for path in sorted((home / "logs").glob("*.log*")):
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        tails[path.name] = "\n".join(text[-lines:])
    return tails


@dataclass
class LaunchedBundle:
    """The bundle's executable serving the dashboard: its process, URL and output, and when (seconds
    after the launch) the health endpoint answered and the ready line came."""

    process: subprocess.Popen
    url: str
    home: Path
    started: float
    output: list[str] = field(default_factory=list)
    health_s: float | None = None
    ready_s: float | None = None
    ready_line: str | None = None

    @classmethod
    def start(cls, bundle: Path, home: Path, *extra: str) -> LaunchedBundle:
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(executable(bundle)), "--no-browser", "--port", str(port), *extra],
            env=bundle_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        launched = cls(process=process, url=f"http://127.0.0.1:{port}", home=home, started=started)
        threading.Thread(target=launched._pump, daemon=True).start()
        return launched

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if self.ready_s is None and line.startswith(READY_PREFIX):
                self.ready_s = time.perf_counter() - self.started
                self.ready_line = line.strip()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll the health endpoint (every 0.05 s) until it answers, then wait for the ready line."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.health_s is None:
                body = health(self.url)
                if body is not None:
                    self.health_s = self.elapsed()
                    if body != "ok":
                        raise BundleError(f"{self.url}/_stcore/health answered {body!r}, expected 'ok'")
            if self.health_s is not None and self.ready_s is not None:
                return
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader take the last lines
                raise BundleError(f"the bundle exited with status {self.process.returncode} before it was ready")
            time.sleep(0.05)
        raise BundleError(
            f"not ready within {timeout:.0f} s (health answered: {self.health_s is not None}, "
            f"ready line printed: {self.ready_s is not None})"
        )

    def stop(self, timeout: float = 30.0) -> dict:
        """SIGTERM to the launcher; returns the seconds until it and every child it started were gone,
        and raises BundleError when something is still running after ``timeout`` (it is killed then)."""
        children = descendants(self.process.pid)
        began = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        deadline = began + timeout
        while time.perf_counter() < deadline:
            left = [pid for pid in children if alive(pid)]
            if self.process.poll() is not None and not left:
                return {
                    "stop_s": round(time.perf_counter() - began, 3),
                    "exit_status": self.process.returncode,
                    "children": len(children),
                }
            time.sleep(0.1)
        left = [pid for pid in children if alive(pid)]
        self.kill()
        raise BundleError(
            f"after SIGTERM, still running after {timeout:.0f} s: "
            + ", ".join(
                [f"launcher {self.process.pid}"] * (self.process.poll() is None) + [f"child {pid}" for pid in left]
            )
        )

    def kill(self) -> None:
        """Last resort: SIGKILL the launcher and whatever it started (each by its own pid)."""
        for pid in [*descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def output_tail(self, lines: int = 40) -> str:
        return "".join(self.output[-lines:])


def run_cli(bundle: Path, home: Path, *args: str, timeout: float = 900.0) -> tuple[subprocess.CompletedProcess, float]:
    """``lsdm-dashboard lsdm ARGS`` (the bundle's own command line) against the same data directory."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(executable(bundle)), "lsdm", *args], env=bundle_env(home), capture_output=True, text=True, timeout=timeout
    )
    return done, time.perf_counter() - started


# --- the page in Chromium ------------------------------------------------------------------------------


def missing_browser_reason() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    return None


# What a rendered page is (as tests/e2e/conftest.py): the app is there, the script is not running,
# nothing stale or still a skeleton, no exception box, the sidebar lists the pages, the main area has
# content; with ``title``, its heading says so and its charts are drawn.
_PAGE_STATE_JS = """(title) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const main = document.querySelector('[data-testid="stMain"]');
  if (!app || !main) return {state: 'no app'};
  const error = main.querySelector('[data-testid="stException"]');
  if (error) return {state: 'exception', text: error.innerText};
  if (app.dataset.testScriptState !== 'notRunning') return {state: 'script ' + app.dataset.testScriptState};
  if (document.querySelector('[data-stale="true"]')) return {state: 'stale elements'};
  if (main.querySelector('[data-testid="stSkeleton"]')) return {state: 'loading skeleton'};
  const nav = document.querySelector('[data-testid="stSidebarNav"]');
  const links = nav ? Array.from(nav.querySelectorAll('a')).map(a => a.innerText.trim()) : [];
  const text = main.innerText.trim();
  if (!text) return {state: 'empty main', links};
  const heading = main.querySelector('h1');
  if (title) {
    if (!heading || !heading.innerText.includes(title)) return {state: 'title', links, text: text.slice(0, 200)};
    for (const chart of main.querySelectorAll('[data-testid="stVegaLiteChart"]'))
      if (!chart.querySelector('canvas, svg')) return {state: 'vega chart not drawn', links};
    for (const chart of main.querySelectorAll('[data-testid="stDeckGlJsonChart"]'))
      if (!chart.querySelector('canvas')) return {state: 'deck chart not drawn', links};
  }
  return {state: 'ready', links, text: text.slice(0, 300),
          charts: main.querySelectorAll('[data-testid="stVegaLiteChart"], [data-testid="stDeckGlJsonChart"]').length};
}"""


def wait_page(tab: Page, title: str | None = None, *, timeout: float = 120.0) -> dict:
    """Wait until the open page has rendered (see _PAGE_STATE_JS) and lists every page in its sidebar;
    raises BundleError on an exception box (a ModuleNotFoundError in the bundle, typically) or timeout."""
    deadline = time.perf_counter() + timeout
    last: dict = {"state": "not checked"}
    while time.perf_counter() < deadline:
        last = tab.evaluate(_PAGE_STATE_JS, title)
        if last["state"] == "exception":
            raise BundleError(f"{tab.url} shows an exception: {last.get('text', '')[:1500]}")
        if last["state"] == "ready":
            links = last.get("links", [])  # a link's text may hold its icon's ligature too
            missing = [t for t in PAGE_TITLES if not any(t in link for link in links)]
            if not missing:
                return last
            last = {**last, "state": f"sidebar lacks {missing}"}
        tab.wait_for_timeout(50)
    raise BundleError(f"{tab.url} did not render within {timeout:.0f} s (last state: {last})")
