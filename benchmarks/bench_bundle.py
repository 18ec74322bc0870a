"""Start-up of the built desktop bundle (dist/lsdm-dashboard, `make bundle`): from launching its
executable to the health endpoint answering, to the ready line (worker up too), and to the first page
(the Map, cold caches) rendered in Chromium; and the time SIGTERM takes to stop everything.

Each run launches the bundle on the same prepared data directory (default city and shipped model
installed once, with ``lsdm-dashboard --prepare-only``: the usual launch, not the first one), in a
fresh browser context. Skips, with the reason, when the bundle has not been built.

Usage: python benchmarks/bench_bundle.py [--bundle DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packaging"))
from _common import report
from bundle_process import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LaunchedBundle,
    build_record_path,
    bundle_env,
    executable,
    folder_size,
    missing_browser_reason,
    wait_page,
)

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "dist" / "lsdm-dashboard")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    if not executable(bundle).is_file():
        reason = f"no bundle at {bundle} (build it with `make bundle`)"
        print(f"bench_bundle: skipped: {reason}", file=sys.stderr)
        print(json.dumps({"benchmark": "bundle_startup", "skipped": reason}))
        return 0
    size, files = folder_size(bundle)
    record = json.loads(build_record_path(bundle).read_text()) if build_record_path(bundle).is_file() else {}
    about = {"bundle_size_mb": round(size / 2**20, 1), "bundle_files": files, "build_s": record.get("build_s")}

    home = Path(tempfile.mkdtemp(prefix="lsdm-bench-bundle-"))
    try:
        started = time.perf_counter()
        prepared = subprocess.run(
            [str(executable(bundle)), "--prepare-only"],
            env=bundle_env(home),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if prepared.returncode != 0:
            sys.exit(f"error: `{executable(bundle).name} --prepare-only` failed:\n{prepared.stdout}{prepared.stderr}")
        report(
            "bundle_first_launch_prepare",
            [time.perf_counter() - started],
            None,
            **about,
            note="`lsdm-dashboard --prepare-only` on an empty data directory: default city + shipped model",
        )

        reason = missing_browser_reason()
        healths, readies, pages, stops = [], [], [], []
        playwright = browser = None
        if reason is None:
            from playwright.sync_api import sync_playwright

            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for _ in range(args.runs):
                launched = LaunchedBundle.start(bundle, home)
                try:
                    launched.wait_ready()
                    healths.append(launched.health_s)
                    readies.append(launched.ready_s)
                    if browser is not None:
                        context = browser.new_context(viewport={"width": 1400, "height": 900})
                        tab = context.new_page()
                        tab.goto(launched.url + "/")
                        wait_page(tab, "City map")
                        pages.append(launched.elapsed())
                        context.close()
                    stops.append(launched.stop()["stop_s"])
                finally:
                    if launched.process.poll() is None:
                        launched.kill()
        finally:
            if browser is not None:
                browser.close()
                playwright.stop()
        report(
            "bundle_startup_to_health",
            healths,
            None,
            **about,
            note="launching the executable to /_stcore/health answering ok (polled every 0.05 s)",
        )
        report(
            "bundle_startup_to_ready",
            readies,
            None,
            **about,
            note="launching the executable to its 'LSDM dashboard: URL' line (server healthy, worker started)",
        )
        if pages:
            report(
                "bundle_startup_to_first_page",
                pages,
                None,
                **about,
                page="map",
                note="launching the executable to the Map rendered in Chromium (cold caches; browser already up)",
            )
        else:
            print(f"bench_bundle: first page not timed: {reason}", file=sys.stderr)
        report("bundle_stop", stops, None, note="SIGTERM to the launcher until it and both children are gone")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
