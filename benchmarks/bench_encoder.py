"""Issue 18, item 2: does the environment encoder learn from a few hundred tiles? Held-out retrieval of each
image tower on a small synthetic city, over several training seeds.

Usage: python benchmarks/bench_encoder.py [--users 100] [--cells 150] [--city-seed 1]
                                          [--archs lsdm-clip-s,lsdm-clip-d] [--seeds 0,1,2] [--epochs 40]
The default is issue 18's city (`lsdm city build --seed 1 --users 100 --cells 150`): 120 training pairs, 30
held out, chance top-5 5/30 = 0.167; the target is top-5 at least twice chance. Each (architecture, seed):
`build_environment` with that CLIP architecture and training seed on a copy of the city (synthetic tiles,
template descriptions), as `lsdm env build --clip-arch ARCH --seed SEED` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--cells", type=int, default=150)
    parser.add_argument("--city-seed", type=int, default=1)
    parser.add_argument("--archs", default="lsdm-clip-s,lsdm-clip-d")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LSDM_HOME"] = tmp  # encoders are written under the data directory
        from db import open_database
        from db.queries import store_dataset
        from engine.data.city import CityConfig, generate_city
        from engine.env.clip import ClipSettings, retrieval_verdict
        from engine.env.pipeline import build_environment

        city = Path(tmp) / "city.sqlite"
        database = open_database(str(city))
        with database.write_session() as session, session.begin():
            store_dataset(session, generate_city(CityConfig(users=args.users, cells=args.cells, seed=args.city_seed)))
        database.dispose()
        for arch in args.archs.split(","):
            seconds, top5, top1, above, pairs = [], [], [], [], 0
            for seed in seeds:
                copy = Path(tmp) / f"{arch}-{seed}.sqlite"
                shutil.copy(city, copy)  # closed above: one file, no write-ahead log
                started = time.perf_counter()
                summary = build_environment(
                    open_database(str(copy)), settings=ClipSettings(arch=arch, seed=seed, epochs=args.epochs)
                )
                seconds.append(time.perf_counter() - started)
                retrieval = summary["retrieval"]
                pairs = retrieval["pairs"]
                top5.append(retrieval["top5"])
                top1.append(retrieval["top1"])
                above.append(retrieval_verdict(retrieval)["above_chance"])
                print(f"{arch} seed {seed}: top-5 {retrieval['top5']:.3f} (pairs {pairs})", file=sys.stderr)
            chance = min(5, pairs) / pairs
            report(
                "env_encoder_few_tiles",
                seconds,
                None,
                arch=arch,
                city=f"lsdm city build --seed {args.city_seed} --users {args.users} --cells {args.cells}",
                clip_epochs=args.epochs,
                seeds=seeds,
                heldout_pairs=pairs,
                chance_top5=round(chance, 4),
                target_top5=round(2 * chance, 4),
                top5=top5,
                top5_median=statistics.median(top5),
                top1=top1,
                clearly_above_chance=above,
                meets_target_in=f"{sum(a is True for a in above)} of {len(above)} seeds",
            )


if __name__ == "__main__":
    main()
