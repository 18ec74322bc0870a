"""Shared by the benchmark scripts: machine description, median of repeated runs, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    return info


def timed_runs(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def report(name: str, runs_s: list[float], target_s: float | None, **extra: object) -> dict:
    result = {
        "benchmark": name,
        "median_s": round(statistics.median(runs_s), 4),
        "runs": len(runs_s),
        "runs_s": [round(t, 4) for t in runs_s] if len(runs_s) <= 20 else "omitted (more than 20)",
        "target_s": target_s,
        "meets_target": None if target_s is None else statistics.median(runs_s) <= target_s,
        "device": "cpu",  # a benchmark that ran elsewhere says so in ``extra``
        **extra,
        "machine": machine(),
    }
    print(json.dumps(result))
    return result
