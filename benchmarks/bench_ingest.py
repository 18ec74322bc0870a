"""Ingest speed: `lsdm ingest tsinghua` on a real-size trace, and the llmapp table sample.

Generates a 4,171,950-line trace in the exact Tsinghua format once (in a temporary folder; a format
generator, not data), then times read + store into a fresh SQLite file three times, along the same path
the CLI takes (``open_database`` + ``write_session()`` + ``store_dataset`` in one transaction). Uses the
real metadata from ``../shared/data/tsinghua`` when present, stand-ins of the same shape otherwise.
Prints one JSON object.

    .venv/bin/python benchmarks/bench_ingest.py [--lines 4171950] [--users 871] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from db import open_database
from db.queries import DatasetContent, store_dataset
from engine.data.ingest_table import read_table
from engine.data.ingest_tsinghua import CATEGORIES, read_tsinghua, write_synthetic_trace

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO / ".." / "shared" / "data"
TARGET_S = 120


def metadata(folder: Path) -> tuple[dict[str, Path], str]:
    real = SHARED / "tsinghua"
    if (real / "base_poi.txt").is_file():
        return {
            "app2category": real / "App2Category.txt",
            "categories": real / "Categorys.txt",
            "poi": real / "base_poi.txt",
        }, "real (../shared/data/tsinghua)"
    rng = np.random.default_rng(0)
    (folder / "Categorys.txt").write_text("".join(f"{i}\t'{n}'\n" for i, n in enumerate(CATEGORIES)))
    (folder / "App2Category.txt").write_text("".join(f"{a}\t{rng.integers(20)}\n" for a in range(1, 2001)))
    names = [f"POI {j}" for j in range(17)]
    rows = ["\t".join(["BaseID", *names])] + ["\t".join(map(str, [b, *rng.poisson(3, 17)])) for b in range(9851)]
    (folder / "base_poi.txt").write_text("\n".join(rows) + "\n")
    return {
        "app2category": folder / "App2Category.txt",
        "categories": folder / "Categorys.txt",
        "poi": folder / "base_poi.txt",
    }, "generated stand-ins"


def store(db_path: Path, content: DatasetContent) -> None:
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        store_dataset(session, content)
    database.dispose()


def timed_runs(runs: int, folder: Path, tag: str, read: Callable[[], DatasetContent]) -> dict:
    totals, reads, stores = [], [], []
    content = None
    for run in range(runs):
        db_path = folder / f"{tag}-{run}.sqlite"
        started = time.perf_counter()
        content = read()
        read_done = time.perf_counter()
        store(db_path, content)
        finished = time.perf_counter()
        totals.append(round(finished - started, 3))
        reads.append(round(read_done - started, 3))
        stores.append(round(finished - read_done, 3))
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_path) + suffix).unlink(missing_ok=True)
    return {
        "median_s": round(statistics.median(totals), 3),
        "runs_s": totals,
        "read_s": reads,
        "store_s": stores,
        "traffic_rows": len(content.traffic_bytes),
        "location_rows": len(content.location_cell),
        "entities": len(content.entity_keys),
        "cells": len(content.cell_keys),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=4_171_950, help="trace lines (the real trace's count)")
    parser.add_argument("--users", type=int, default=871)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lsdm-bench-ingest-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        trace = write_synthetic_trace(folder / "App_usage_trace.txt", users=args.users, records=args.lines, seed=0)
        generate_s = time.perf_counter() - started
        meta, meta_source = metadata(folder)
        tsinghua = timed_runs(args.runs, folder, "tsinghua", lambda: read_tsinghua(trace=trace, **meta, name="bench"))

        llmapp = None
        sample = SHARED / "llmapp_sample"
        if (sample / "data_sample.csv").is_file():
            mapping = REPO / "assets" / "mappings" / "llmapp.json"
            llmapp = timed_runs(
                args.runs,
                folder,
                "llmapp",
                lambda: read_table(records=sample / "data_sample.csv", cells=sample / "location.csv", mapping=mapping),
            )
            llmapp["records"] = 3293

        result = {
            "benchmark": "ingest_tsinghua",
            "lines": args.lines,
            "median_s": tsinghua.pop("median_s"),
            "runs_s": tsinghua.pop("runs_s"),
            "target_s": TARGET_S,
            "breakdown": tsinghua,
            "trace_bytes": trace.stat().st_size,
            "generate_trace_s": round(generate_s, 3),
            "metadata": meta_source,
            "llmapp_table": llmapp,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            },
            "device": "cpu",
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
