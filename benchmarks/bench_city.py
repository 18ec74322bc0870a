"""Build and store the synthetic city: the issue's size (500 users x 168 h x 10 services, 400 cells)
and the default (the same over 14 days).

Target (issue 2): < 60 s on the 2-core development machine, generation and SQLite storage together.
Also measures reading one entity's hour x service matrix (target < 20 ms).
Usage: python benchmarks/bench_city.py [--runs N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, timed_runs
from sqlalchemy import select

from db import open_database
from db.models import Entity
from db.queries import entity_matrix, get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_file = Path(tmp) / "bench.sqlite"
        generate_times, store_times = [], []

        def build(days: int) -> None:
            started = time.perf_counter()
            content = generate_city(CityConfig(days=days))
            generate_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            database = open_database(str(db_file))
            with database.write_session() as session, session.begin():
                store_dataset(session, content)
            database.dispose()
            store_times.append(time.perf_counter() - started)

        for days, name in ((7, "city_build_500_users_168_hours"), (14, "city_build_default_14_days")):
            generate_times.clear()
            store_times.clear()
            runs = timed_runs(lambda d=days: build(d), args.runs)
            report(
                name,
                runs,
                60.0,
                generate_s=[round(t, 3) for t in generate_times],
                store_s=[round(t, 3) for t in store_times],
                users=500,
                cells=400,
                hours=24 * days,
                db_bytes=db_file.stat().st_size,
            )

        database = open_database(str(db_file))
        with database.session() as session:
            dataset = get_dataset(session)
            ids = session.scalars(select(Entity.id).where(Entity.dataset_id == dataset.id)).all()
        rng = random.Random(0)
        picks = [rng.choice(ids) for _ in range(200)]

        def read_one(entity_id: int) -> None:
            with database.session() as session:
                entity_matrix(session, entity_id, dataset.hours, len(dataset.services))

        per_read = [timed_runs(lambda e=e: read_one(e), 1)[0] for e in picks]
        report(
            "read_entity_matrix",
            per_read,
            0.020,
            reads=len(picks),
            p95_s=round(sorted(per_read)[int(0.95 * len(per_read))], 5),
            note="fresh session per read",
        )


if __name__ == "__main__":
    main()
