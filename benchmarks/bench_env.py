"""Environment stage on the default city, CPU: CLIP training time to the reported retrieval, and
embedding throughput (cells per second).

Usage: python benchmarks/bench_env.py [--runs N] [--epochs E]
Each run: fresh default city in a temporary database, `build_environment` with default settings
(synthetic tiles, template descriptions, lsdm-clip-s trained for E epochs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LSDM_HOME"] = tmp  # encoders are written under the data directory
        from db import open_database
        from db.queries import store_dataset
        from engine.data.city import CityConfig, generate_city
        from engine.env.clip import ClipSettings, encode, images_to_tensor
        from engine.env.pipeline import build_environment, reload_active_encoder

        totals, trains, retrieval, agreement = [], [], [], []
        for run in range(args.runs):
            database = open_database(str(Path(tmp) / f"run{run}.sqlite"))
            with database.write_session() as session, session.begin():
                store_dataset(session, generate_city(CityConfig()))
            started = time.perf_counter()
            summary = build_environment(database, settings=ClipSettings(epochs=args.epochs))
            totals.append(time.perf_counter() - started)
            trains.append(summary["timings"]["clip_train_s"])
            retrieval.append(summary["retrieval"])
            agreement.append(summary["land_use_agreement"])
        report(
            "env_build_default_city",
            totals,
            None,
            clip_epochs=args.epochs,
            clip_train_s=trains,
            clip_train_median_s=statistics.median(trains),
            retrieval_top1=[r["top1"] for r in retrieval],
            retrieval_top5=[r["top5"] for r in retrieval],
            heldout_pairs=retrieval[0]["pairs"],
            chance_top1=retrieval[0]["chance_top1"],
            land_use_agreement=agreement[-1],
        )

        # Embedding throughput: encode all 400 cells (image + text) with the last trained encoder.
        from sqlalchemy import select

        from db.models import Cell, Description, Tile
        from db.queries import get_dataset

        with database.session() as session:
            dataset = get_dataset(session)
            encoder = reload_active_encoder(session, dataset)
            rows = session.execute(
                select(Tile.image, Description.text)
                .join(Cell, Cell.id == Tile.cell_id)
                .join(Description, Description.cell_id == Cell.id)
                .where(Cell.dataset_id == dataset.id)
            ).all()
        images = [r[0] for r in rows]
        texts = [r[1] for r in rows]
        runs = []
        for _ in range(max(3, args.runs)):
            started = time.perf_counter()
            encode(encoder, images_to_tensor(images, encoder.image_size), texts)
            runs.append(time.perf_counter() - started)
        median = statistics.median(runs)
        report(
            "env_embedding_throughput",
            runs,
            None,
            cells=len(rows),
            cells_per_s=round(len(rows) / median, 1),
            includes="tile decode + image and text encoders",
        )


if __name__ == "__main__":
    main()
