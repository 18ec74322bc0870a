"""Desktop entry point: `make run` (or `python launcher.py`) opens the LSDM dashboard on the embedded default.

First launch on an empty database: builds the default synthetic city, embeds its cells with the
shipped CLIP encoder and registers the shipped forecaster (assets/default), so the dashboard forecasts
at once without training. Then it serves the dashboard on 127.0.0.1 (a free port) and opens the browser
(`--no-browser` prints the URL instead). The background worker and the single-instance lock come with
the jobs release (see README, "Status").
"""

from __future__ import annotations

import argparse
import sys

from db import open_database
from db.queries import NoDatasetError, get_dataset
from engine.cli import main as lsdm


def prepare(db_url: str) -> int:
    """Make sure the database holds a data set and, on the default city, a usable model."""
    from sqlalchemy import select

    from db.models import ModelRecord

    database = open_database(db_url)
    db_args = ["--db", database.url]
    try:
        with database.session() as session:
            get_dataset(session)
    except NoDatasetError:
        print("First launch: building the embedded default city (500 users, 400 cells, two weeks)...", flush=True)
        status = lsdm(["city", "build", *db_args])
        if status:
            return status
    with database.session() as session:
        dataset = get_dataset(session)
        has_model = session.scalar(select(ModelRecord.id).where(ModelRecord.kind == "lsdm",
                                                                ModelRecord.dataset_id == dataset.id).limit(1))
        from engine.shipped import matches, read_manifest

        shipped_fits = has_model is None and read_manifest() is not None and matches(session, dataset)
    if shipped_fits:
        print("Installing the shipped CLIP encoder and forecasting model...", flush=True)
        status = lsdm(["assets", "install", *db_args])
        if status:
            return status
    return lsdm(["data", "info", *db_args])


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher.py", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database file or SQLAlchemy URL (default: per-user data dir)")
    parser.add_argument("--port", default=None, help="dashboard port (default: a free one)")
    parser.add_argument("--no-browser", action="store_true", help="print the dashboard URL instead of opening it")
    parser.add_argument("--prepare-only", action="store_true", help="prepare the data, do not serve the dashboard")
    args = parser.parse_args(argv)
    database = open_database(args.db)
    status = prepare(database.url)
    if status or args.prepare_only:
        return status
    serve = ["app", "--db", database.url]
    if args.port:
        serve += ["--port", str(args.port)]
    if args.no_browser:
        serve.append("--no-browser")
    return lsdm(serve)


if __name__ == "__main__":
    sys.exit(run())
