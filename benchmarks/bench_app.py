"""Dashboard page render times in Chromium on the default city, the time to the first page after the
server starts, and (``--screenshots DIR``) one 1400x900 PNG per page for docs/screenshots/.

Target: every page renders in < 1.5 s warm (caches filled by one visit first). Two ways in are timed:
- ``load``: opening the page's link in the tab (a fresh Streamlit session: connect, run the page,
  draw every chart), the cost of a deep link or a reload;
- ``switch``: clicking the page in the sidebar from the previous page (the same session), the usual
  way around the dashboard.
"Rendered" means what the e2e tests wait for (tests/e2e/conftest.py, ``wait_rendered``): the script
finished, no stale element or loading skeleton left, the title shown, every Vega and deck chart drawn.
The Forecast page is timed showing a stored run (total fan, mix and ten service fans: its heaviest
state); the run is made once with the engine before the server starts.

Usage: python benchmarks/bench_app.py [--db PATH] [--runs N] [--screenshots DIR]
  --db PATH  reuse a database that already holds the default city and the shipped model (it is
             copied first: the benchmark never writes to it); without it the default city is built
             and `lsdm assets install`-ed into a temporary LSDM_HOME (about 15 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import report

from tests.e2e.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    copy_database,
    missing_browser_reason,
    start_dashboard,
    stop_dashboard,
    wait_rendered,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

TARGET_S = 1.5
FORECAST_USER = "U0001"
# Page -> (its URL path, its title in the sidebar, its h1); links get their query added in page_links.
# The Map is the default page, served at the root URL.
PAGES = {
    "map": ("", "Map", "City map"),
    "cell": ("cell", "Cell", "Cell"),
    "user": ("user", "User", "User"),
    "forecast": ("forecast", "Forecast", "Forecast"),
    "whatif": ("whatif", "What-if", "What-if"),
    "models": ("models", "Models & evaluation", "Models & evaluation"),
    "data": ("data", "Data", "Data"),
    "jobs": ("jobs", "Jobs", "Jobs"),
    "glossary": ("glossary", "Glossary", "Glossary"),
}


def prepare_database(source: Path | None, folder: Path) -> Path:
    """A private database with the default city and the shipped model, in ``folder``."""
    from cli.main import main as lsdm

    db = folder / "bench.sqlite"
    if source is not None:
        if not source.is_file():
            sys.exit(f"error: --db {source}: no such file")
        copy_database(source, db)  # models are referenced by absolute path: the database is enough
        return db
    for command in (["city", "build"], ["assets", "install"]):
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only this benchmark's JSON
            status = lsdm([*command, "--db", str(db), "--json"])
        if status != 0:
            sys.exit(f"error: `lsdm {' '.join(command)}` failed (is assets/default built? `lsdm assets build`)")
    return db


def store_example_forecast(db: Path) -> tuple[int, int]:
    """One stored run with the Forecast page's default settings (24 h, 32 paths, from the last day);
    returns its id and start hour."""
    from db import open_database
    from db.queries import get_dataset
    from engine.forecast import run_forecast
    from engine.requests import ForecastRequest

    database = open_database(str(db))
    with database.session() as session:
        start = int(get_dataset(session).hours) - 24
    result = run_forecast(database, ForecastRequest(entities=(FORECAST_USER,), start=start, horizon=24, samples=32))
    return int(result["run_id"]), start


def page_links(run_id: int, start: int) -> dict[str, str]:
    """The link each page is opened with: a cell, a user, the stored forecast run (with the form set
    to the run's request, as after running it)."""
    query = {
        "cell": "?cell=C0001",
        "user": f"?user={FORECAST_USER}",
        "forecast": f"?user={FORECAST_USER}&hour={start}&horizon=24&run={run_id}",
    }
    return {name: f"/{path}{query.get(name, '')}" for name, (path, _nav, _title) in PAGES.items()}


def time_load(tab: Page, base: str, links: dict[str, str], name: str) -> float:
    """Seconds from opening page ``name``'s link to the page being rendered."""
    started = time.perf_counter()
    tab.goto(base + links[name])
    return _rendered_after(tab, PAGES[name][2], started)


def _rendered_after(tab: Page, title: str, started: float) -> float:
    """Seconds from ``started`` until the page with ``title`` was rendered (and stayed so)."""
    waited_from = time.perf_counter()
    ready_after = wait_rendered(tab, title)
    return waited_from - started + ready_after


def time_switch(tab: Page, name: str) -> float:
    """Seconds from clicking ``name`` in the sidebar to that page being rendered."""
    _path, nav, title = PAGES[name]
    label = tab.locator('[data-testid="stMarkdownContainer"]', has_text=re.compile(f"^{re.escape(nav)}$"))
    link = tab.locator('[data-testid="stSidebarNavLink"]').filter(has=label)
    started = time.perf_counter()
    link.click()
    return _rendered_after(tab, title, started)


def measure(tab: Page, base: str, links: dict[str, str], runs: int) -> dict[str, dict[str, list[float]]]:
    """load and switch times per page: one warm-up round (fills the caches), then ``runs`` rounds."""
    times = {name: {"load": [], "switch": []} for name in PAGES}
    for round_ in range(runs + 1):
        for name in PAGES:
            load = time_load(tab, base, links, name)
            if round_:
                times[name]["load"].append(load)
        tab.goto(base + links["data"])  # switches start from the last page of the cycle
        wait_rendered(tab, PAGES["data"][2])
        for name in PAGES:
            switch = time_switch(tab, name)
            if round_:
                times[name]["switch"].append(switch)
    return times


# What a page's screenshot is scrolled to (selector, text pattern or None, where it lands in the
# window): the whole map with its controls above it; the forecast run's fans rather than the form.
SCREENSHOT_ANCHORS = {
    "map": ('[data-testid="stDeckGlJsonChart"]', None, "end"),
    "forecast": ('[data-testid="stMain"] h3', re.compile(r"^Run \d+"), "start"),
}


def take_screenshots(tab: Page, base: str, links: dict[str, str], folder: Path) -> list[str]:
    """One PNG per page at the tab's size (1400x900), as a visitor sees it (see SCREENSHOT_ANCHORS)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (_path, _nav, title) in PAGES.items():
        tab.goto(base + links[name])
        wait_rendered(tab, title)
        if name in SCREENSHOT_ANCHORS:
            selector, text, block = SCREENSHOT_ANCHORS[name]
            anchor = tab.locator(selector, has_text=text).first if text else tab.locator(selector).first
            anchor.evaluate("(element, block) => element.scrollIntoView({block})", block)
        tab.mouse.move(0, 0)  # no hover tooltip or highlight in the shot
        tab.wait_for_timeout(500)  # deck.gl draws its layers on the following frames
        path = folder / f"{name}.png"
        tab.screenshot(path=str(path))
        written.append(str(path))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=None, help="reuse this default-city database (copied first)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds after one warm-up (default 5)")
    parser.add_argument(
        "--screenshots",
        type=Path,
        default=None,
        metavar="DIR",
        help="write one PNG per page into DIR instead of timing",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if missing_browser_reason():
        sys.exit(f"error: {missing_browser_reason()}")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        folder = Path(tmp)
        os.environ["LSDM_HOME"] = str(folder / "home")  # the city's models are written under it
        os.environ.pop("LSDM_DB", None)
        db = prepare_database(args.db, folder)
        links = page_links(*store_example_forecast(db))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            tab = browser.new_context(viewport=VIEWPORT).new_page()
            tab.set_default_timeout(60_000)
            started = time.perf_counter()
            dashboard = start_dashboard(db, folder / "home")
            try:
                server_ready_s = time.perf_counter() - started
                first_page_s = time_load(tab, dashboard.url, links, "map") + server_ready_s
                if args.screenshots:
                    print(json.dumps({"screenshots": take_screenshots(tab, dashboard.url, links, args.screenshots)}))
                    return
                times = measure(tab, dashboard.url, links, args.runs)
            finally:
                stop_dashboard(dashboard.process)
                browser.close()
    report(
        "app_first_page_after_server_start",
        [first_page_s],
        None,
        server_ready_s=round(server_ready_s, 3),
        page="map",
        note="from spawning `lsdm app` to the map rendered in Chromium (cold caches)",
    )
    for name, runs in times.items():
        load, switch = runs["load"], runs["switch"]
        report(
            f"app_page_{name}_warm",
            load,
            TARGET_S,
            link=links[name],
            measure="load (open the link)",
            max_s=round(max(load), 4),
            switch_median_s=round(statistics.median(switch), 4),
            switch_max_s=round(max(switch), 4),
            switch_runs_s=[round(t, 4) for t in switch],
            switch_meets_target=statistics.median(switch) <= TARGET_S,
        )


if __name__ == "__main__":
    main()
