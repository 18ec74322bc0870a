"""Desktop entry point: `make run` (or `python launcher.py`, or the bundle's executable) opens the LSDM
dashboard on the embedded default.

It starts the job worker and the Streamlit server on 127.0.0.1 (a free port), waits until both are
ready, opens the browser (``--no-browser`` prints the URL instead), logs to ``<data dir>/logs/``, and
stops both on Ctrl+C/SIGTERM or when either exits. A second launch on the same database points to the
running dashboard instead of starting another (desktop/serve.py).

First launch on an empty database: a ``setup.default`` job builds the default synthetic city and
installs the shipped CLIP encoder and forecaster (assets/default); the dashboard shows its progress
and forecasts as soon as it is done, without training.

The same executable runs the children: ``launcher.py lsdm ARGS`` is the `lsdm` command line and
``launcher.py streamlit ARGS`` is Streamlit's (what the PyInstaller bundle needs: it has no Python).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cli.main import main as lsdm
from db import Database, open_database
from db.queries import NoDatasetError, get_dataset
from db.session import resolve_db_url
from desktop.appserver import ROOT
from desktop.serve import logs_dir, rolled, serve
from engine.errors import InputError
from engine.jobs import ACTIVE, JobWorker, enqueue, get_job, list_jobs


def first_launch_job(database: Database) -> int | None:
    """Queue ``setup.default`` when the database holds no data set (and no such job is under way);
    returns the job id, or None when there is nothing to do."""
    try:
        with database.session() as session:
            get_dataset(session)
        return None
    except NoDatasetError:
        pass
    under_way = list_jobs(database, statuses=ACTIVE, kinds_=["setup.default", "city.build"], limit=1)
    if under_way:
        return under_way[0].id
    return enqueue(database, "setup.default", {})


def prepare(db_url: str) -> int:
    """``--prepare-only``: do the first-launch work here and now (no worker, no server)."""
    database = open_database(db_url)
    job_id = first_launch_job(database)
    if job_id is not None:
        print(
            "First launch: building the embedded default city (500 users, 400 cells, two weeks) and "
            "installing the shipped model ...",
            flush=True,
        )
        JobWorker(database, lanes=["batch"]).drain()
        job = get_job(database, job_id)
        if job.status != "done":
            print(f"error: first-launch setup {job.status}: {job.error or job.message}", file=sys.stderr)
            return 1
        print(f"  {job.message} in {job.seconds:.1f} s", flush=True)
    return lsdm(["data", "info", "--db", database.url])


def run_streamlit(argv: list[str]) -> int:
    """``launcher.py streamlit run ...``: Streamlit's own command line in this process (STACK.md). Here,
    not in engine/: the engine never imports Streamlit; imported in the Streamlit child only."""
    from streamlit.web import cli as streamlit_cli

    os.chdir(ROOT)  # .streamlit/config.toml (the theme) is read from the working directory
    sys.argv = ["streamlit", *argv]
    try:
        streamlit_cli.main()
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def _setup_logging() -> None:
    path = rolled(logs_dir() / "launcher.log")
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)  # owner-only: the log names the database and what was done to it
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("lsdm")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lsdm"]:  # a child, or the command line inside the bundle
        return lsdm(argv[1:])
    if argv[:1] == ["streamlit"]:
        return run_streamlit(argv[1:])

    parser = argparse.ArgumentParser(
        prog="launcher.py",
        description=__doc__.splitlines()[0],
        epilog="`launcher.py lsdm --help` shows the command line.",
    )
    parser.add_argument("--db", default=None, help="database file or SQLAlchemy URL (default: per-user data dir)")
    parser.add_argument("--port", type=int, default=None, help="dashboard port (default: a free one)")
    parser.add_argument("--no-browser", action="store_true", help="print the dashboard URL instead of opening it")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="do the first-launch work in the foreground, do not serve the dashboard",
    )
    args = parser.parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"argument --port: expected a port number in 1..65535, got {args.port}")
    db_url = resolve_db_url(args.db)
    if args.prepare_only:
        return prepare(db_url)
    _setup_logging()
    logging.getLogger("lsdm.launcher").info("launch: db %s", db_url)

    def queue_first_launch() -> None:
        job_id = first_launch_job(open_database(db_url))
        if job_id is not None:
            print(
                f"First launch: building the default city and installing the shipped model (job {job_id}); "
                "the dashboard shows its progress.",
                flush=True,
            )

    try:
        status = serve(
            db_url, port=args.port, open_browser=not args.no_browser, log_to_files=True, before_ready=queue_first_launch
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if status not in (0, 3):
        print(f"Logs: {logs_dir()}", file=sys.stderr)
    return status


if __name__ == "__main__":
    import multiprocessing

    multiprocessing.freeze_support()  # in the bundle, ARIMA's "spawn" workers re-run this executable
    sys.exit(run())
