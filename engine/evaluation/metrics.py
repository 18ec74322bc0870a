"""Forecast metrics: the paper's Eq. 10-14 plus probabilistic scores. The one place metrics are computed.

Every function flattens its arrays (any shape) unless it says otherwise; values are on whatever scale
they are given (the paper's tables are on the normalised scale v, see ``engine.data.windows``).

Point metrics (paper Sec. V-A), over the n flattened points:

- ``mse``  = mean((y - ŷ)²)                                   (Eq. 10)
- ``rmse`` = sqrt(mse)                                        (Eq. 11)
- ``mae``  = mean(|y - ŷ|)                                    (Eq. 12)
- ``cs``   = Σ y ŷ / (sqrt(Σ y²) sqrt(Σ ŷ²))                  (Eq. 13) one cosine over the *whole*
  flattened arrays (not an average of per-window cosines). When a norm is 0: 1.0 if both arrays are
  all zero (identical), else 0.0.
- ``r2``   = 1 - Σ (y - ŷ)² / Σ (y - ȳ)², ȳ = the mean of the true values (Eq. 14). When the true
  values are constant (Σ (y - ȳ)² = 0): 1.0 for a perfect prediction, else 0.0 (scikit-learn's
  convention), so the result is always finite.

Probabilistic metrics, from S samples per point (a leading sample axis):

- ``crps``: the fair (unbiased) sample estimator of the continuous ranked probability score,
  CRPS = E|X - y| - ½ E|X - X'|, with E|X - X'| = Σ_{i≠j} |x_i - x_j| / (S (S - 1)). The pair term is
  computed from the sorted samples, Σ_{i<j} (x_(j) - x_(i)) = Σ_j (2j - S - 1) x_(j) (j = 1..S), i.e.
  O(S log S) time and O(S) memory per point, never the S x S matrix. For S = 1 (a point forecast) the
  pair term is 0 and CRPS = MAE. For S independent draws the estimator is unbiased for the CRPS of the
  sampled distribution; for deterministic quantile grids (what ``engine.evaluation.baselines`` produces) it is
  lower than the grid's own CRPS by ½ E|X - X'| / S (under 1 % of the spread term at S = 100).
- ``cov50`` / ``cov90``: the share of points whose true value lies in the central 50 % / 90 % interval
  of its samples, [q_0.25, q_0.75] / [q_0.05, q_0.95], closed at both ends, quantiles by NumPy's
  default (linear interpolation between order statistics). For S = 1 both intervals collapse to the
  point, so coverage is the share of points predicted exactly (e.g. hours that are zero and predicted
  zero). Well-calibrated forecasts have cov50 ≈ 0.5 and cov90 ≈ 0.9.

``score`` gives all eight numbers for a sample array: the point metrics are computed on the sample
*mean*, the point that minimises the expected squared error under the predictive distribution (so
MSE, RMSE and R² judge the forecast fairly; the median would minimise MAE instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POINT_KEYS = ("mse", "rmse", "mae", "cs", "r2")
PROBABILISTIC_KEYS = ("crps", "cov50", "cov90")
METRIC_KEYS = POINT_KEYS + PROBABILISTIC_KEYS
HIGHER_IS_BETTER = {"mse": False, "rmse": False, "mae": False, "cs": True, "r2": True, "crps": False}
NOMINAL_COVERAGE = {"cov50": 0.5, "cov90": 0.9}

_CHUNK_ELEMENTS = 4_000_000  # samples x points handled at once by the probabilistic metrics


def _as_float(a: np.ndarray | Sequence) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _same_shape(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shapes differ: true {y_true.shape}, predicted {y_pred.shape}")


def cosine_similarity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Eq. 13 over the flattened arrays (1.0 when both are all zero, 0.0 when only one is)."""
    y, p = _as_float(y_true).ravel(), _as_float(y_pred).ravel()
    ny, npred = float(np.sqrt(np.dot(y, y))), float(np.sqrt(np.dot(p, p)))
    if ny == 0.0 or npred == 0.0:
        return 1.0 if ny == 0.0 and npred == 0.0 else 0.0
    return float(np.dot(y, p) / (ny * npred))


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Eq. 14 over the flattened arrays (constant truth: 1.0 if predicted exactly, else 0.0)."""
    y, p = _as_float(y_true).ravel(), _as_float(y_pred).ravel()
    ss_res = float(np.sum((y - p) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) if y.size else 0.0
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE, CS and R² (Eq. 10-14) of a point prediction; arrays of the same shape."""
    y, p = _as_float(y_true), _as_float(y_pred)
    _same_shape(y, p)
    if y.size == 0:
        raise ValueError("no values to score")
    err = (y - p).ravel()
    mse = float(np.mean(err**2))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(err))),
        "cs": cosine_similarity(y, p),
        "r2": r2_score(y, p),
    }


def _split_samples(y_true: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, M) samples and (M,) truth; ``samples`` has the truth's shape (S = 1) or a leading S axis."""
    y = _as_float(y_true)
    s = _as_float(samples)
    if s.shape == y.shape:
        s = s[None]
    if s.shape[1:] != y.shape:
        raise ValueError(f"samples {s.shape} do not match the truth {y.shape} (expected (S, *{y.shape}))")
    if s.shape[0] < 1 or y.size == 0:
        raise ValueError("no samples or no values to score")
    return y.ravel(), s.reshape(s.shape[0], -1)


def crps_per_point(y_true: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Fair-estimator CRPS of every point, in the truth's shape (see module docstring)."""
    shape = np.shape(y_true)
    y, s = _split_samples(y_true, samples)
    n_samples = s.shape[0]
    out = np.empty(y.shape[0])
    step = max(1, _CHUNK_ELEMENTS // n_samples)
    weights = (2.0 * np.arange(1, n_samples + 1) - n_samples - 1)[:, None]
    for start in range(0, y.shape[0], step):
        block, truth = s[:, start : start + step], y[start : start + step]
        term1 = np.mean(np.abs(block - truth[None]), axis=0)
        if n_samples > 1:
            pair = np.sum(weights * np.sort(block, axis=0), axis=0) / (n_samples * (n_samples - 1))
        else:
            pair = 0.0
        out[start : start + step] = term1 - pair
    return out.reshape(shape)


def interval_coverage(y_true: np.ndarray, samples: np.ndarray, level: float) -> float:
    """Share of points inside the central ``level`` interval of their samples (closed interval)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y, s = _split_samples(y_true, samples)
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    step = max(1, _CHUNK_ELEMENTS // s.shape[0])
    inside = 0
    for start in range(0, y.shape[0], step):
        lo, hi = np.quantile(s[:, start : start + step], [lo_q, hi_q], axis=0)
        truth = y[start : start + step]
        inside += int(np.count_nonzero((truth >= lo) & (truth <= hi)))
    return inside / y.shape[0]


def probabilistic_metrics(y_true: np.ndarray, samples: np.ndarray) -> dict[str, float]:
    """CRPS (fair estimator), cov50 and cov90 of samples (S, *y_true.shape) (or y_true's shape: S = 1)."""
    return {
        "crps": float(np.mean(crps_per_point(y_true, samples))),
        "cov50": interval_coverage(y_true, samples, 0.5),
        "cov90": interval_coverage(y_true, samples, 0.9),
    }


def sample_mean(y_true: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The point forecast of a sample array: its mean over the leading sample axis (if there is one)."""
    s = _as_float(samples)
    return s if s.shape == np.shape(y_true) else s.mean(axis=0)


def score(y_true: np.ndarray, samples: np.ndarray) -> dict[str, float]:
    """All eight metrics: point metrics of the sample mean, CRPS and coverage of the samples.

    ``samples`` is (S, *y_true.shape), or y_true's shape for a point forecast (S = 1).
    """
    _split_samples(y_true, samples)  # shape check
    return {**point_metrics(y_true, sample_mean(y_true, samples)), **probabilistic_metrics(y_true, samples)}


def per_service_r2(y_true: np.ndarray, y_pred: np.ndarray, services: Sequence[str]) -> dict[str, float]:
    """R² of each service (the last axis) over all other axes. ``y_pred`` may carry a leading sample
    axis (its mean is used)."""
    y = _as_float(y_true)
    p = sample_mean(y, y_pred)
    _same_shape(y, p)
    if y.shape[-1] != len(services):
        raise ValueError(f"{len(services)} service names for a last axis of {y.shape[-1]}")
    return {str(name): r2_score(y[..., k], p[..., k]) for k, name in enumerate(services)}


def r2_gain_interval(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """How sure is a relative R² gain of forecast a over forecast b? A paired bootstrap over groups.

    ``y_true`` (N, ...), ``pred_a``/``pred_b`` the same shape or with a leading sample axis (their means
    are used), ``groups`` (N,) the entity of each window. Entities are resampled with replacement (the
    windows of one entity stay together, since its hours are correlated) and the gain
    100 (R²_a - R²_b) / |R²_b| is recomputed on each resample with both forecasts scored on the same
    windows. Returns the gain on the data, the interval's ``low`` and ``high`` (percentile method) and
    the share of resamples where a is not better (``p_not_better``)."""
    y = _as_float(y_true)
    a, b = sample_mean(y, pred_a), sample_mean(y, pred_b)
    _same_shape(y, a)
    _same_shape(y, b)
    groups = np.asarray(groups)
    if groups.shape != (y.shape[0],):
        raise ValueError(f"groups must be ({y.shape[0]},), got {groups.shape}")
    _, index = np.unique(groups, return_inverse=True)
    n_groups = int(index.max()) + 1 if len(index) else 0

    def flat(v: np.ndarray) -> np.ndarray:
        return v.reshape(len(v), -1)

    per = np.zeros((n_groups, 5))  # per entity: SSE a, SSE b, Σy, Σy², n
    for col, values in enumerate(
        [
            ((flat(y) - flat(a)) ** 2).sum(1),
            ((flat(y) - flat(b)) ** 2).sum(1),
            flat(y).sum(1),
            (flat(y) ** 2).sum(1),
            np.full(len(y), flat(y).shape[1], float),
        ]
    ):
        np.add.at(per[:, col], index, values)

    def gains(weights: np.ndarray) -> np.ndarray:  # weights (R, G): how often each entity is drawn
        sse_a, sse_b, sy, syy, n = (weights @ per).T
        sst = syy - sy**2 / np.maximum(n, 1)
        r2_a = np.where(sst > 0, 1 - sse_a / np.where(sst > 0, sst, 1), 0.0)
        r2_b = np.where(sst > 0, 1 - sse_b / np.where(sst > 0, sst, 1), 0.0)
        return 100 * (r2_a - r2_b) / np.maximum(np.abs(r2_b), 1e-12)

    point = float(gains(np.ones((1, n_groups)))[0])
    rng = np.random.default_rng(seed)
    draws = gains(rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=resamples).astype(float))
    tail = (1 - level) / 2
    return {
        "gain": round(point, 4),
        "low": round(float(np.quantile(draws, tail)), 4),
        "high": round(float(np.quantile(draws, 1 - tail)), 4),
        "level": level,
        "resamples": resamples,
        "p_not_better": round(float((draws <= 0).mean()), 4),
    }


def mse_by_step(y_true_paths: np.ndarray, y_pred_paths: np.ndarray) -> list[float]:
    """MSE at each recursive step: paths (N, n_steps, ...), axis 1 = step; ``y_pred_paths`` may carry
    a leading sample axis (its mean is used)."""
    y = _as_float(y_true_paths)
    p = sample_mean(y, y_pred_paths)
    _same_shape(y, p)
    if y.ndim < 2:
        raise ValueError(f"expected paths (N, n_steps, ...), got shape {y.shape}")
    err = np.moveaxis((y - p) ** 2, 1, 0).reshape(y.shape[1], -1)
    return [float(v) for v in err.mean(axis=1)]


def mse_by_step_and_service(y_true_paths: np.ndarray, y_pred_paths: np.ndarray) -> np.ndarray:
    """MSE per (step, service) of paths (N, n_steps, K) (paper Fig. 9): an (n_steps, K) array."""
    y = _as_float(y_true_paths)
    p = sample_mean(y, y_pred_paths)
    _same_shape(y, p)
    if y.ndim != 3:
        raise ValueError(f"expected paths (N, n_steps, K), got shape {y.shape}")
    return ((y - p) ** 2).mean(axis=0)
