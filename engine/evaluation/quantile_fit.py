"""The interface every learned baseline of Table III shares (engine.evaluation.learned, .patchtst).

``Fitted`` is a baseline fitted once on the training windows; its ``forecast`` gives samples for any windows.
Every method predicts quantiles at ``LEVELS``; ``quantile_samples`` turns them into the S deterministic
quantile samples at the levels (i + 0.5) / S that the scoring code reads (the convention of the local
baselines of engine.evaluation.baselines). A module of its own so that the registry (learned.py) can import
every method and every method this interface, without a cycle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from engine.data.windows import Windows
from engine.errors import InputError
from engine.evaluation.baselines import DEFAULT_SAMPLES, BaselineForecast, quantile_levels

# The levels every learned baseline predicts (symmetric, the 90 % interval's ends included).
LEVELS = np.array([0.05, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.95])


def quantile_samples(levels: np.ndarray, quantiles: np.ndarray, n_samples: int) -> np.ndarray:
    """(S, ...) samples at the levels (i + 0.5) / S from ``quantiles`` (..., Q) at increasing ``levels`` (Q,).

    Crossed quantiles are sorted first; between predicted levels the quantile function is linear, beyond
    the outermost ones it continues with the outer segment's slope; the samples are clipped at 0."""
    levels = np.asarray(levels, dtype=np.float64)
    q = np.sort(np.asarray(quantiles, dtype=np.float64), axis=-1)
    if q.shape[-1] != len(levels) or len(levels) < 2:
        raise InputError(f"expected {len(levels)} quantiles per forecast, got {q.shape[-1]}", field="quantiles")
    target = np.array([0.5]) if n_samples == 1 else quantile_levels(n_samples)
    # Segment index per target level (outer segments extended), then linear in level.
    seg = np.clip(np.searchsorted(levels, target) - 1, 0, len(levels) - 2)
    lo, hi = levels[seg], levels[seg + 1]
    weight = (target - lo) / (hi - lo)  # < 0 or > 1 in the tails: extrapolation
    out = q[..., seg] + (q[..., seg + 1] - q[..., seg]) * weight
    if n_samples > 1:
        out = np.maximum.accumulate(out, axis=-1)  # monotone even where extrapolation meets a flat segment
    return np.moveaxis(np.clip(out, 0, None), -1, 0)


@dataclass
class Fitted:
    """A baseline fitted on the training windows; ``forecast`` gives samples for any windows."""

    name: str
    info: dict = field(default_factory=dict)

    def forecast(self, windows: Windows, steps: int = 1, n_samples: int = DEFAULT_SAMPLES) -> BaselineForecast:
        raise NotImplementedError

    def describe(self) -> str:
        """A sentence for the evaluation's notes: what was fitted, on how much, in how long."""
        seconds = self.info.get("fit_seconds")
        return f"{self.name}: fitted on the training windows" + (f" in {seconds:.0f} s." if seconds else ".")


def learned_note(fitted: Fitted) -> str:
    return fitted.describe()


def elapsed(started: float) -> float:
    """Seconds since ``started`` (perf_counter), to the millisecond, for the fits' reports."""
    return round(time.perf_counter() - started, 3)
