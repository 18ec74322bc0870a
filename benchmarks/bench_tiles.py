"""Render synthetic satellite tiles (400 cells of the default city) and the city mosaic.

Target: >= 50 tiles/s on one CPU core (rendering plus JPEG encoding), so that the default city's
tiles take under 10 s. The mosaic (2048 px wide) is measured once per run too.
Usage: python benchmarks/bench_tiles.py [--runs N] [--tiles N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import report, timed_runs

from engine.data.city import POI_CATEGORIES, CityConfig, generate_city
from engine.env.tiles import CellInfo, render_city_mosaic, render_tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=400)
    args = parser.parse_args()
    content = generate_city(CityConfig(users=10, days=1))
    cells = [
        CellInfo(
            id=i,
            key=content.cell_keys[i],
            lat=float(content.cell_lat[i]),
            lon=float(content.cell_lon[i]),
            land_use=content.cell_land_use[i],
            poi_counts=[int(v) for v in content.cell_poi[i]],
            poi_categories=list(POI_CATEGORIES),
            x_km=content.cell_attrs[i]["x_km"],
            y_km=content.cell_attrs[i]["y_km"],
        )
        for i in range(len(content.cell_keys))
    ]
    batch = [cells[i % len(cells)] for i in range(args.tiles)]
    sizes: list[int] = []

    def render_all() -> None:
        sizes.clear()
        sizes.extend(len(render_tile(c)) for c in batch)

    runs = timed_runs(render_all, args.runs)
    mosaic_runs, mosaic_bytes = [], 0
    for _ in range(args.runs):
        started = time.perf_counter()
        png, _bounds = render_city_mosaic(cells)
        mosaic_runs.append(time.perf_counter() - started)
        mosaic_bytes = len(png)
    tiles_per_s = args.tiles / statistics.median(runs)
    report(
        "synthetic_tiles",
        runs,
        None,
        tiles=args.tiles,
        tiles_per_s=round(tiles_per_s, 1),
        target_tiles_per_s=50,
        meets_tiles_target=tiles_per_s >= 50,
        mean_tile_bytes=round(statistics.mean(sizes)),
        mosaic_s=round(statistics.median(mosaic_runs), 3),
        mosaic_bytes=mosaic_bytes,
        mosaic_width=2048,
    )


if __name__ == "__main__":
    main()
