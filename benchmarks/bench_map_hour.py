"""The Map page's hour step in Chromium: the time from one key press on its "Hour" slider to the map's
caption showing the next hour, on the default city (400 cells, 500 users, the full-size basemap), with a
user's day drawn (legs, arrows, arrival times: the heaviest state).

Target: <= 300 ms (issue 19). The slider, the map and its caption are a fragment (app/views/map.py,
``city_map``): a new hour reruns them alone from the city arrays cached once per data set, never the page.
Playback ("Play") is the same fragment rerunning itself once a second, so this is also its cost per step.

Usage: python benchmarks/bench_map_hour.py [--db PATH] [--runs N]
  --db PATH  a database with the default city and the shipped model (copied first); without it the
             default city is built and the shipped model installed into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import report
from bench_app import prepare_database

from tests.e2e.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    missing_browser_reason,
    start_dashboard,
    stop_dashboard,
    wait_rendered,
)

TARGET_S = 0.3
START_HOUR = 30
USER = "U0001"
# True once the map's caption (the first caption that mentions "in all cells") no longer starts with arg, the
# script (the fragment) has finished and no element is stale: the new hour's map has been sent and laid out.
CHANGED = """prev => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.dataset.testScriptState !== 'notRunning') return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  return [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
    .some(e => e.innerText.includes('in all cells') && !e.innerText.startsWith(prev));
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    reason = missing_browser_reason()
    if reason:
        print(f'{{"benchmark": "map_hour_step", "skipped": "{reason}"}}')
        return
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["LSDM_HOME"] = str(folder / "home")
        db = prepare_database(args.db, folder)
        served = start_dashboard(db, folder / "home")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                tab = browser.new_page(viewport=VIEWPORT)
                tab.goto(f"{served.url}/?hour={START_HOUR}&user={USER}")
                wait_rendered(tab, "City map", timeout=120)
                slider = tab.get_by_role("slider", name="Hour").first  # the city map's (the risk map's comes later)
                caption = tab.get_by_text("in all cells").first
                times = []
                for run in range(args.runs + 1):  # the first step fills the caches; not counted
                    before = caption.inner_text().split(":")[0]
                    slider.focus()
                    started = time.perf_counter()
                    tab.keyboard.press("ArrowRight")
                    tab.wait_for_function(CHANGED, arg=before, timeout=10_000)
                    if run:
                        times.append(time.perf_counter() - started)
                    tab.wait_for_timeout(300)
                browser.close()
        finally:
            stop_dashboard(served.process)
    report("map_hour_step", times, TARGET_S, cells=400, users=500, trajectory=USER, browser="chromium")


if __name__ == "__main__":
    main()
