"""Desktop entry point: `make run` (or `python launcher.py`) starts LSDM on the embedded default.

Today it prepares the embedded default data set and prints its summary: on first launch (an empty
database) it builds the default synthetic city. The dashboard, the engine worker and the single-
instance lock come with later releases (see README, "Status").
"""

from __future__ import annotations

import argparse
import sys

from db import open_database
from db.queries import NoDatasetError, get_dataset
from engine.cli import main as lsdm


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher.py", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database file or SQLAlchemy URL (default: per-user data dir)")
    args = parser.parse_args(argv)
    database = open_database(args.db)
    db_args = ["--db", database.url]
    try:
        with database.session() as session:
            get_dataset(session)
    except NoDatasetError:
        print("First launch: building the embedded default city (500 users, 400 cells, one week)...")
        status = lsdm(["city", "build", *db_args])
        if status:
            return status
    return lsdm(["data", "info", *db_args])


if __name__ == "__main__":
    sys.exit(run())
