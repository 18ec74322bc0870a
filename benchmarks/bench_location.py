"""Where users will be: the three ways of drawing a user's future cells (engine/load/location.py) against the
recorded cells of the default city's test day (its last 24 hours), every user, 32 paths, seed 0; and the
deterministic ``habitual`` cell for comparison.

Scores (engine/load/location.py ``match_rate``): ``path_match``, the share of (user, hour, path) whose drawn cell
is the recorded one (for a deterministic scenario: of (user, hour)); ``any_path_match``, the share of
(user, hour) where some path drew the recorded cell; ``brier``, the Brier score of the paths' distribution of
cells (proper: lower is better; a sure wrong guess scores 2). ``sampled`` uses the best Brier score.

Usage: python benchmarks/bench_location.py [--db PATH] [--runs N]
Without --db it builds the default city in a temporary file (no model or environment needed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import report

from db import open_database
from db.queries import get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.data.windows import load_series
from engine.load.location import LOCATION_DRAWS, draw_locations, match_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db
        if db is None:
            db = str(Path(tmp) / "city.sqlite")
            database = open_database(db)
            with database.write_session() as session, session.begin():
                store_dataset(session, generate_city(CityConfig()))
        database = open_database(db)
        with database.session() as session:
            series = load_series(session, get_dataset(session, None), encoder_id="")
    users = np.arange(len(series.entity_keys))
    start = series.hours - 24
    habitual = np.array([[series.habitual_cell(int(e), start + n, before=start) for n in range(24)] for e in users])
    scores = {"habitual": match_rate(series, habitual[:, None, :], users, start)}
    times = {}
    for method in LOCATION_DRAWS:
        runs = []
        for _ in range(args.runs):
            started = time.perf_counter()
            drawn = draw_locations(series, users, start=start, steps=24, samples=args.samples, seed=0, method=method)
            runs.append(time.perf_counter() - started)
        scores[method] = match_rate(series, drawn, users, start)
        times[method] = runs
    report(
        "location_draws_default_city_test_day",
        times["day-type"],
        None,
        dataset=series.dataset_name,
        users=len(users),
        samples=args.samples,
        test_hours=f"{start}..{start + 23}",
        scores={
            name: {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()} for name, s in scores.items()
        },
        draw_seconds_median={name: round(float(np.median(t)), 4) for name, t in times.items()},
    )


if __name__ == "__main__":
    main()
