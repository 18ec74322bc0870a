"""Smoke test of a built bundle (`make bundle-smoke`): the executable really runs the product.

In a fresh temporary LSDM_HOME it
1. starts ``lsdm-dashboard --no-browser --port FREE`` and times it to the health endpoint (which must
   answer "ok") and to the ready line ``LSDM dashboard: URL``;
2. opens the first page in Chromium (Playwright, /usr/bin/chromium) and checks that it renders the app:
   no exception box (a module missing from the bundle shows as a ModuleNotFoundError behind HTTP 200),
   the sidebar lists every page, the main area has content; without Chromium or Playwright it says that
   only HTTP was checked;
3. checks that a second launch on the same database exits 3 and points to the running URL;
4. through the bundle's own command line (``lsdm-dashboard lsdm ...``): waits for the first-launch job
   (``jobs wait 1``: default city + shipped model), then runs a forecast job
   (``jobs submit forecast entity=user:U0003 start=310 horizon=12 --wait --json``) and checks that it
   is done and names its forecast run; with Chromium, the Map and that run's Forecast page must then
   render with their charts drawn;
5. sends SIGTERM and checks that the launcher and both children are gone within 30 s.

Prints one JSON object (sizes, build time from the build record, start-up seconds, job seconds); exits
1 on any failure with the reason and the tail of the output and logs on stderr.

Usage: python packaging/smoke.py [BUNDLE_DIR (default dist/lsdm-dashboard)] [--keep-home]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_process import (
    CHROMIUM,
    CHROMIUM_ARGS,
    BundleError,
    LaunchedBundle,
    build_record_path,
    bundle_env,
    executable,
    folder_size,
    log_tails,
    missing_browser_reason,
    run_cli,
    wait_page,
)

ROOT = Path(__file__).resolve().parents[1]
EXIT_ALREADY_RUNNING = 3  # desktop/serve.py
FORECAST = ["forecast", "entity=user:U0003", "start=310", "horizon=12"]
STOP_TIMEOUT_S = 30.0
VIEWPORT = {"width": 1400, "height": 900}


def say(text: str) -> None:
    print(f"[smoke] {text}", file=sys.stderr, flush=True)


def cli_json(bundle: Path, home: Path, *args: str, timeout: float) -> tuple[dict, float]:
    """Run the bundle's `lsdm ARGS --json`; its JSON output and the wall seconds; BundleError unless it
    exits 0."""
    done, seconds = run_cli(bundle, home, *args, "--json", timeout=timeout)
    if done.returncode != 0:
        raise BundleError(
            f"`{executable(bundle).name} lsdm {' '.join(args)} --json` exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    try:
        return json.loads(done.stdout), seconds
    except json.JSONDecodeError:
        raise BundleError(f"`lsdm {' '.join(args)} --json` printed no JSON:\n{done.stdout[-3000:]}") from None


def second_launch(bundle: Path, home: Path, url: str) -> dict:
    """A second launch on the same database must exit 3 and print the running URL."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(executable(bundle)), "--no-browser"], env=bundle_env(home), capture_output=True, text=True, timeout=120
    )
    if done.returncode != EXIT_ALREADY_RUNNING or url not in done.stdout:
        raise BundleError(
            f"a second launch on the same database exited {done.returncode} (expected "
            f"{EXIT_ALREADY_RUNNING}) and printed:\n{done.stdout}{done.stderr}"
            f"\n(expected the running URL {url})"
        )
    return {"second_launch_exit": done.returncode, "second_launch_s": round(time.perf_counter() - started, 3)}


def smoke(bundle: Path, home: Path, result: dict, launched_box: list) -> None:
    exe = executable(bundle)
    if not exe.is_file():
        raise BundleError(f"no bundle executable at {exe}: build it first with `make bundle`")
    size, files = folder_size(bundle)
    result["bundle_size_mb"] = round(size / 2**20, 1)
    result["bundle_files"] = files
    record_path = build_record_path(bundle)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        result["build_s"] = record.get("build_s")
        result["built_at"] = record.get("built_at")
    else:
        result["build_s"] = None
        result["build_note"] = f"no build record at {record_path} (written by `make bundle`)"

    reason = missing_browser_reason()
    with contextlib.ExitStack() as stack:
        browser = None
        if reason is None:
            from playwright.sync_api import sync_playwright

            playwright = stack.enter_context(sync_playwright())
            # started before the bundle, so that its start-up is not counted as the bundle's
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            stack.callback(browser.close)
            result["page_check"] = "chromium"
        else:
            result["page_check"] = f"HTTP only (no browser: {reason}); the page's content was not checked"

        say(f"launching {exe} in LSDM_HOME={home}")
        launched = LaunchedBundle.start(bundle, home)
        launched_box.append(launched)
        launched.wait_ready()
        result["url"] = launched.url
        result["startup_health_s"] = round(launched.health_s, 3)
        result["startup_ready_s"] = round(launched.ready_s, 3)
        say(
            f"health ok after {launched.health_s:.2f} s, ready line after {launched.ready_s:.2f} s: "
            f"{launched.ready_line}"
        )

        if browser is not None:
            tab = browser.new_context(viewport=VIEWPORT).new_page()
            tab.goto(launched.url + "/")
            state = wait_page(tab)
            result["startup_first_page_s"] = round(launched.elapsed(), 3)
            result["first_page_text"] = " ".join(state.get("text", "").split())[:200]
            say(f"first page rendered after {result['startup_first_page_s']:.2f} s: {result['first_page_text']!r}")
        else:
            result["startup_first_page_s"] = None

        result.update(second_launch(bundle, home, launched.url))
        say("second launch exited 3 with the running URL")

        setup, seconds = cli_json(bundle, home, "jobs", "wait", "1", timeout=900)
        if setup.get("status") != "done":
            raise BundleError(f"first-launch job 1 ended {setup.get('status')}: {setup.get('error')}")
        result["first_launch_job"] = {
            "kind": setup.get("kind"),
            "seconds": setup.get("seconds"),
            "result_ref": setup.get("result_ref"),
        }
        say(f"first-launch job done ({setup.get('kind')}, {setup.get('seconds')} s)")

        job, seconds = cli_json(bundle, home, "jobs", "submit", *FORECAST, "--wait", timeout=900)
        ref = job.get("result_ref") or ""
        if job.get("status") != "done" or not ref.startswith("forecast_run:"):
            raise BundleError(f"the forecast job ended {job.get('status')} with result {ref!r}: {job.get('error')}")
        run_id = int(ref.split(":", 1)[1])
        result["forecast_job_s"] = job.get("seconds")
        result["forecast_command_s"] = round(seconds, 3)
        result["forecast_run_id"] = run_id
        say(f"forecast job {job.get('id')} done in {job.get('seconds')} s (command {seconds:.1f} s): run {run_id}")

        if browser is not None:
            tab = browser.new_context(viewport=VIEWPORT).new_page()
            for name, path, title in (
                ("map", "/", "City map"),
                ("forecast_run", f"/forecast?run={run_id}", "Forecast"),
            ):
                began = time.perf_counter()
                tab.goto(launched.url + path)
                state = wait_page(tab, title)
                result[f"page_{name}_s"] = round(time.perf_counter() - began, 3)
                result[f"page_{name}_charts"] = state.get("charts")
                say(f"{path} rendered with {state.get('charts')} chart(s) in {result[f'page_{name}_s']:.2f} s")
            if not result["page_map_charts"] or not result["page_forecast_run_charts"]:
                raise BundleError("the Map or the forecast run's page rendered without charts")

        stopped = launched.stop(STOP_TIMEOUT_S)
        result.update(stopped)
        if stopped["children"] < 2:
            raise BundleError(f"expected the worker and the dashboard under the launcher, found {stopped['children']}")
        say(f"SIGTERM: launcher and {stopped['children']} children gone in {stopped['stop_s']:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "dist" / "lsdm-dashboard")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary LSDM_HOME (kept on failure)")
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    home = Path(tempfile.mkdtemp(prefix="lsdm-smoke-"))
    result: dict = {"ok": False, "bundle": str(bundle), "lsdm_home": str(home)}
    launched_box: list[LaunchedBundle] = []
    started = time.perf_counter()
    try:
        smoke(bundle, home, result, launched_box)
        result["ok"] = True
    except (BundleError, subprocess.TimeoutExpired, OSError) as error:
        result["error"] = str(error)
    except Exception as error:  # noqa: BLE001 - e.g. Playwright's own errors: reported like the rest
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        for launched in launched_box:
            if launched.process.poll() is None:
                with contextlib.suppress(BundleError):
                    launched.stop(STOP_TIMEOUT_S)
        result["smoke_s"] = round(time.perf_counter() - started, 1)
        result["machine"] = {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
    if not result["ok"]:
        if launched_box:
            result["launcher_output_tail"] = launched_box[0].output_tail()
        result["log_tails"] = log_tails(home)
    print(json.dumps(result, indent=2))
    if result["ok"]:
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
        say("PASSED")
        return 0
    print(f"\nbundle smoke test FAILED: {result['error']}", file=sys.stderr)
    if launched_box:
        print(f"--- launcher output (last lines) ---\n{launched_box[0].output_tail()}", file=sys.stderr)
    for name, tail in result["log_tails"].items():
        print(f"--- {home / 'logs' / name} (last lines) ---\n{tail}", file=sys.stderr)
    print(f"(data directory kept: {home})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
