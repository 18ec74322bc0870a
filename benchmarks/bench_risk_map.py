"""The Map page's risk view in Chromium: the time from moving its forecast-hour slider (one key press) to
the risk map's caption showing the new hour, on a stored load run of the whole default city (400 cells).

Target: <= 300 ms (the risk map is a fragment: a new hour reruns it alone, with the run's map rows of every
hour built once and cached). The run is made with the engine before the server starts: area:all, 12 h,
2 paths, habitual locations (the map's cost does not depend on the paths; about 35 s on 2 cores).

Usage: python benchmarks/bench_risk_map.py [--db PATH] [--runs N]
  --db PATH  a database with the default city and the shipped model (copied first); without it the
             default city is built and the shipped model installed into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import re
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
CAPTION = re.compile(r"cells with P\(load > capacity\) at least")


def store_city_run(db: Path) -> tuple[int, list[str]]:
    from db import open_database
    from db.queries import get_dataset
    from engine.load.core import read_load_run
    from engine.load.forecast import run_load
    from engine.requests import LoadRequest

    database = open_database(str(db))
    with database.session() as session:
        start = int(get_dataset(session).hours) - 24
    request = LoadRequest(scope="area:all", start=start, horizon=12, samples=2, location="habitual")
    run_id = int(run_load(database, request, detail=False)["run_id"])
    labels = read_load_run(database, run_id).hour_labels
    database.dispose()
    return run_id, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    reason = missing_browser_reason()
    if reason:
        print(f'{{"benchmark": "risk_map_hour_change", "skipped": "{reason}"}}')
        return
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["LSDM_HOME"] = str(folder / "home")
        db = prepare_database(args.db, folder)
        run_id, labels = store_city_run(db)
        served = start_dashboard(db, folder / "home")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                tab = browser.new_page(viewport=VIEWPORT)
                tab.goto(f"{served.url}/?risk={run_id}")
                wait_rendered(tab, "City map", timeout=120)
                slider = tab.get_by_role("slider", name="Forecast hour")
                slider.scroll_into_view_if_needed()
                caption = tab.get_by_text(CAPTION).first
                times = []
                for run in range(args.runs + 1):  # the first change fills the caches; not counted
                    want = labels[(run + 1) % len(labels)]
                    slider.focus()
                    started = time.perf_counter()
                    tab.keyboard.press("ArrowRight" if (run + 1) % len(labels) else "Home")
                    caption.filter(has_text=f"{want}:").wait_for(timeout=10_000)
                    if run:
                        times.append(time.perf_counter() - started)
                    tab.wait_for_timeout(300)
                browser.close()
        finally:
            stop_dashboard(served.process)
    report("risk_map_hour_change", times, TARGET_S, cells=400, run_hours=len(labels), browser="chromium")


if __name__ == "__main__":
    main()
