"""Browser end-to-end fixtures: the dashboard served by `lsdm app` on a copy of the default city, driven
by Playwright in Debian's Chromium (no browser download).

The whole directory is skipped, with the reason, where ``/usr/bin/chromium`` or the ``playwright``
package is missing (a user's fresh clone without the test extras).

Screenshots (one per page, and one per failed test, ``FAILED-<test>.png``) are written to the
artifacts directory: ``$LSDM_TEST_ARTIFACTS`` when set (CI uploads it), else ``tests/e2e/artifacts/``
(git-ignored). The served app's log is kept there too (``server.log``) when a test fails.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import copy_database

if TYPE_CHECKING:  # playwright is optional (test extras); imported lazily below
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu"]  # deck.gl still renders: software GL
VIEWPORT = {"width": 1400, "height": 900}
SERVER_READY = "LSDM dashboard:"
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 15.0


def missing_browser_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    return None


def artifacts_dir() -> Path:
    """Where screenshots go: $LSDM_TEST_ARTIFACTS, else tests/e2e/artifacts/ (git-ignored)."""
    path = Path(os.environ.get("LSDM_TEST_ARTIFACTS") or REPO / "tests" / "e2e" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def _requires_browser() -> None:
    """Skip every test of this directory cleanly where Chromium or Playwright is absent (autouse and
    session-scoped, so it runs before the expensive session fixtures such as ``city_db``)."""
    reason = missing_browser_reason()
    if reason:
        pytest.skip(reason)


# --- the served dashboard ---------------------------------------------------------------------------


@dataclass
class Dashboard:
    """A running `lsdm app`: its base URL, the database file it serves, and its output so far."""

    url: str
    db_path: Path
    process: subprocess.Popen
    log: list[str] = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        return "".join(self.log[-lines:])


def _pump_output(process: subprocess.Popen, sink: list[str], lines: queue.Queue) -> None:
    """Keep reading the server's output (so its pipe never fills) and hand each line over."""
    assert process.stdout is not None
    for line in process.stdout:
        sink.append(line)
        lines.put(line)
    lines.put(None)  # end of output: the server exited


def start_dashboard(db_path: Path, home: Path, *, timeout: float = SERVER_START_TIMEOUT_S) -> Dashboard:
    """Run ``python -m cli.main app --db DB --port FREE --no-browser`` and wait for its URL line.

    ``home`` becomes the server's LSDM_HOME so that nothing it writes lands in the developer's real
    data directory. Raises RuntimeError (with the server's output) when it does not come up in time.
    """
    from desktop.appserver import free_port

    port = free_port()
    env = {**os.environ, "LSDM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("LSDM_DB", None)  # --db decides
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "app", "--db", str(db_path), "--port", str(port), "--no-browser"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump_output, args=(process, log, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        if line.startswith(SERVER_READY):
            url = line[len(SERVER_READY) :].split()[0]
            return Dashboard(url=url.rstrip("/"), db_path=db_path, process=process, log=log)
    stop_dashboard(process)
    raise RuntimeError(
        f"`lsdm app` printed no {SERVER_READY!r} line within {timeout:.0f} s; its output:\n" + "".join(log[-40:])
    )


def stop_dashboard(process: subprocess.Popen) -> None:
    """SIGTERM (the CLI forwards it to Streamlit), then a kill if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)


@contextmanager
def serving_copy(city_db: Path, folder: Path, log_name: str) -> Iterator[Dashboard]:
    """`lsdm app` on a private copy of ``city_db`` in ``folder``; on exit the server is stopped and its
    output kept as ``log_name`` in the artifacts directory."""
    db_path = folder / "dashboard.sqlite"
    copy_database(city_db, db_path)  # models are referenced by absolute path: the database is enough
    served = start_dashboard(db_path, folder / "home")
    try:
        yield served
    finally:
        stop_dashboard(served.process)
        (artifacts_dir() / log_name).write_text("".join(served.log))


@pytest.fixture(scope="session")
def dashboard(city_db: Path, browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """The dashboard as `lsdm app` hands it over: served on a private copy of the default city (tests
    may write to it) and opened once at its root URL, as the browser that `lsdm app` launches does.
    (What a deep link does as the very first visit is tested on ``fresh_dashboard``.)"""
    with serving_copy(city_db, tmp_path_factory.mktemp("e2e"), "server.log") as served:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            tab = context.new_page()
            tab.goto(served.url + "/")
            wait_rendered(tab, timeout=SERVER_START_TIMEOUT_S)
        finally:
            context.close()
        yield served


@pytest.fixture
def fresh_dashboard(city_db: Path, tmp_path: Path) -> Iterator[Dashboard]:
    """A dashboard that has just started and that no browser has visited yet."""
    with serving_copy(city_db, tmp_path, "server-fresh.log") as served:
        yield served


# --- the browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Remember each phase's outcome on the test item, so that the page fixture can screenshot failures."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh 1400x900 tab (own cookies and session); a failed test leaves FAILED-<test>.png behind."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    try:
        yield tab
    finally:
        call = getattr(request.node, "report_call", None)
        if call is not None and call.failed:
            try:
                tab.screenshot(path=str(artifacts_dir() / f"FAILED-{request.node.name}.png"), full_page=True)
            except Exception as error:  # noqa: BLE001 - a dead page must not hide the real failure
                print(f"could not save the failure screenshot: {error}", file=sys.stderr)
        context.close()


# --- driving Streamlit pages (shared with benchmarks/bench_app.py) ---------------------------------

# What "the page has rendered" means: the script finished, nothing is stale or still a loading
# skeleton, the title is there, and every chart has drawn (Vega: a canvas/svg; deck.gl: a canvas).
_RENDER_STATE_JS = """(title) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const main = document.querySelector('[data-testid="stMain"]');
  if (!app || !main) return 'no app';
  const state = app.dataset.testScriptState;
  if (state !== 'notRunning') return 'script ' + state;
  if (document.querySelector('[data-stale="true"]')) return 'stale elements';
  const error = main.querySelector('[data-testid="stException"]');
  if (error) return 'exception: ' + error.innerText;
  if (main.querySelector('[data-testid="stSkeleton"]')) return 'loading skeleton';
  const heading = main.querySelector('h1');
  if (!heading) return 'no title';
  if (title && !heading.innerText.includes(title)) return 'title ' + heading.innerText;
  for (const chart of main.querySelectorAll('[data-testid="stVegaLiteChart"]'))
    if (!chart.querySelector('canvas, svg')) return 'vega chart not drawn';
  for (const chart of main.querySelectorAll('[data-testid="stDeckGlJsonChart"]'))
    if (!chart.querySelector('canvas')) return 'deck chart not drawn';
  return 'ready';
}"""


def wait_rendered(tab: Page, title: str | None = None, *, timeout: float = 60.0, settle: float = 0.4) -> float:
    """Wait until the page has rendered (see _RENDER_STATE_JS) and stayed so for ``settle`` seconds.

    Returns the seconds from the call to the moment it became (and stayed) ready, so that callers can
    time a navigation. Raises RuntimeError at once when the page shows an exception (with its text),
    TimeoutError with the last state seen when it does not get there in time.
    """
    started = time.perf_counter()
    ready_since: float | None = None
    state = "not checked"
    while time.perf_counter() - started < timeout:
        state = tab.evaluate(_RENDER_STATE_JS, title)
        if state.startswith("exception"):
            raise RuntimeError(f"{tab.url} shows a Streamlit {state}")
        now = time.perf_counter()
        if state != "ready":
            ready_since = None
        elif ready_since is None:
            ready_since = now
        elif now - ready_since >= settle:
            return ready_since - started
        tab.wait_for_timeout(25)
    raise TimeoutError(f"{tab.url} did not finish rendering within {timeout:.0f} s (last state: {state})")


def exception_texts(tab: Page) -> list[str]:
    """The text of every Streamlit exception box on the page (an uncaught error in a page script)."""
    return [box.inner_text() for box in tab.locator('[data-testid="stException"]').all()]


def full_screenshot(tab: Page, path: Path, *, max_height: int = 8000) -> Path:
    """A screenshot of the whole page. Streamlit scrolls inside its main block, not the window, so the
    window is made as tall as that block's content for the shot, then restored."""
    size = tab.viewport_size or VIEWPORT
    height = tab.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    tab.set_viewport_size({"width": size["width"], "height": min(max(int(height), size["height"]), max_height)})
    try:
        tab.wait_for_timeout(300)  # let charts re-layout to the new size
        tab.screenshot(path=str(path))
    finally:
        tab.set_viewport_size(size)
    return path
