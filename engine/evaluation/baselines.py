"""Reference forecasters to compare LSDM with: seasonal naive, hour-of-week mean and ARIMA.

Every forecaster has the signature ``f(series, values, splits, windows, *, steps=None, ...)`` and
returns a :class:`BaselineForecast` whose ``samples`` are (S, N, steps, K) on the normalised scale:

- ``series``: the :class:`~engine.data.windows.SeriesData` (its calendar is used);
- ``values``: (E, T, K) normalised traffic, ``Normaliser.forward(series.traffic)``;
- ``splits``: the :class:`~engine.data.windows.Splits`; ``splits.train_hours_end`` (the first
  validation hour) is the end of the data any parameter, mean or residual is estimated from;
- ``windows``: (entity row, first target hour) pairs, e.g. ``splits.test``;
- ``steps``: hours forecast from each window's first target hour (default ``splits.spec.horizon``).

Recursive multi-step evaluation (paper Sec. VI-C) is the same call with ``steps=n_steps`` and windows
whose hours are the path starts: every forecaster conditions only on values *before* a window's first
target hour, so each step's forecast is what feeding the previous steps' forecasts back would give:
for seasonal naive and the hour-of-week mean that is exact by construction (they never read a value
at or after the origin); for ARIMA it is the state-space model's multi-step forecast (the recursion of
one-step forecasts with predictions fed back, with the forecast variance growing accordingly).

Samples: the methods give a predictive distribution as S deterministic quantile samples at the levels
(i + 0.5) / S, i = 0..S-1 (``n_samples``, default 100; ``n_samples=1`` gives the bare point forecast),
clipped at 0 because v = log1p(bytes) / scale is never negative. The sample mean is the method's point
forecast in ``engine.evaluation.metrics.score`` (the clip can raise it slightly above the rule's raw value):

- seasonal naive: the rule's value plus the quantiles of the same rule's residuals on the training
  target hours, pooled per service and per lag (the pool of the nearest lag with residuals when a lag
  has none, e.g. 168 h on a 7-day data set);
- hour-of-week mean: the mean plus the spread of the entity's own training values at that hour of the
  day (their quantiles minus their mean);
- ARIMA: Gaussian quantiles of the forecast mean and variance.

All three are local (per entity, per service) models: each entity's statistics come from its own hours
before the first validation hour, held-out users of a "users" split included (there is no
cross-entity training to hold them out of); for training windows the forecasts are in-sample.
"""

from __future__ import annotations

import math
import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.data.windows import SeriesData, Splits, Windows
from engine.errors import InputError

if TYPE_CHECKING:
    from statsmodels.tsa.statespace.mlemodel import MLEResults

DEFAULT_SAMPLES = 100


@contextmanager
def _workers_skip_main() -> Iterator[None]:
    """Spawned workers re-run the parent's ``__main__`` file; in the dashboard (and under AppTest)
    that is a page script, which must not run in a worker. The workers need nothing from it."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


@dataclass
class BaselineForecast:
    """Samples (S, N, steps, K) on the normalised scale, a JSON-able ``info`` and (ARIMA) per-series
    fitted parameters ``params[name]`` (E, K), NaN where a series was not fitted."""

    method: str
    samples: np.ndarray
    info: dict
    params: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def point(self) -> np.ndarray:
        """(N, steps, K): the sample mean."""
        return self.samples.mean(axis=0)


def quantile_levels(n_samples: int) -> np.ndarray:
    """The S probability levels (i + 0.5) / S at which quantile samples are taken."""
    return (np.arange(n_samples) + 0.5) / n_samples


def check_windows(series: SeriesData, windows: Windows, steps: int, n_samples: int) -> None:
    """Counts >= 1 and every window inside the data (its first target hour >= 1, its last one before the
    end); the local baselines and the learned ones (engine/evaluation/quantile_fit.py) share it."""
    if steps < 1:
        raise InputError(f"expected at least 1 step, got {steps}", field="steps")
    if n_samples < 1:
        raise InputError(f"expected at least 1 sample, got {n_samples}", field="n_samples")
    hours = np.asarray(windows.hour, dtype=np.int64)
    if len(hours) and (hours.min() < 1 or hours.max() + steps > series.hours):
        raise InputError(
            f"windows must start at hour >= 1 and end by hour {series.hours} "
            f"(got starts {hours.min()}..{hours.max()} with {steps} steps)",
            field="windows",
        )


def _prepare(
    series: SeriesData, values: np.ndarray, splits: Splits, windows: Windows, steps: int | None, n_samples: int
) -> tuple[np.ndarray, int, np.ndarray]:
    """Validated (values float64, steps, target hours (N, steps))."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != series.traffic.shape:
        raise InputError(f"values have shape {v.shape}, the series {series.traffic.shape}", field="values")
    steps = int(splits.spec.horizon if steps is None else steps)
    check_windows(series, windows, steps, n_samples)
    hours = np.asarray(windows.hour, dtype=np.int64)
    if splits.train_hours_end < 1:
        raise InputError("the split leaves no training hours", field="split")
    return v, steps, hours[:, None] + np.arange(steps)[None, :]


def _entities(windows: Windows) -> np.ndarray:
    return np.asarray(windows.entity, dtype=np.int64)


# --- Seasonal naive ---------------------------------------------------------------------------------


def seasonal_naive(
    series: SeriesData,
    values: np.ndarray,
    splits: Splits,
    windows: Windows,
    *,
    steps: int | None = None,
    lag: int = 24,
    n_samples: int = DEFAULT_SAMPLES,
) -> BaselineForecast:
    """v[t - L]: the value one season before, L = ``lag`` (24 h, or 168 h for the weekly variant).

    For step h (0-based) from origin t0 the season is repeated until it reaches observed data,
    L = lag * ceil((h + 1) / lag), so no value at or after t0 is read. Where t - L < 0 (the weekly
    lag on a one-week data set) the daily rule L = 24 * ceil((h + 1) / 24) is used instead, and where
    that is also before hour 0 the last observed value (L = h + 1); ``info`` counts these fallbacks.
    """
    started = time.perf_counter()
    if lag < 1:
        raise InputError(f"expected a lag >= 1 hour, got {lag}", field="lag")
    v, steps, targets = _prepare(series, values, splits, windows, steps, n_samples)
    entity = _entities(windows)
    h = np.arange(steps)[None, :]
    lags = np.broadcast_to(lag * ((h + lag) // lag), targets.shape).copy()  # lag * ceil((h+1)/lag)
    primary = targets - lags >= 0
    daily = 24 * ((h + 24) // 24)
    lags = np.where(primary, lags, daily)
    last = targets - lags < 0
    lags = np.where(last, h + 1, lags)
    point = v[entity[:, None], targets - lags]  # (N, steps, K)

    info = {
        "method": "seasonal-naive",
        "lag": lag,
        "windows": len(entity),
        "steps": steps,
        "samples": n_samples,
        "fallback_windows": int(np.count_nonzero((~primary).any(axis=1))) if lag != 24 else 0,
        "fallback_points": int(np.count_nonzero(~primary)) if lag != 24 else 0,
        "last_value_points": int(np.count_nonzero(last)),
    }
    if n_samples == 1:
        samples = np.clip(point, 0, None)[None]
    else:
        samples, info["residual_pools"] = _add_residual_quantiles(v, splits, point, lags, n_samples)
    info["seconds"] = round(time.perf_counter() - started, 3)
    return BaselineForecast("seasonal-naive", samples.astype(np.float32), info)


def _train_target_hours(splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    """Entities and target hours of the training windows (every hour of their horizon)."""
    train = splits.train
    entities = np.unique(train.entity) if len(train) else np.zeros(0, dtype=np.int64)
    hours = (
        np.unique(train.hour[:, None] + np.arange(splits.spec.horizon)[None, :])
        if len(train)
        else np.zeros(0, dtype=np.int64)
    )
    return entities, hours[hours < splits.train_hours_end]


def _add_residual_quantiles(
    v: np.ndarray, splits: Splits, point: np.ndarray, lags: np.ndarray, n_samples: int
) -> tuple[np.ndarray, dict]:
    entities, hours = _train_target_hours(splits)
    levels = quantile_levels(n_samples)
    pools: dict[int, np.ndarray] = {}
    sizes: dict[int, int] = {}
    for lag in np.unique(lags):
        usable = hours[hours - lag >= 0]
        if len(entities) and len(usable):
            residual = v[entities[:, None], usable[None, :]] - v[entities[:, None], usable[None, :] - lag]
            pools[int(lag)] = np.quantile(residual.reshape(-1, v.shape[2]), levels, axis=0)  # (S, K)
            sizes[int(lag)] = int(residual.shape[0] * residual.shape[1])
    report = {}
    samples = np.empty((n_samples, *point.shape), dtype=np.float32)
    for lag in np.unique(lags):
        lag = int(lag)
        source: int | None = lag
        if lag not in pools:
            source = min(pools, key=lambda other: (abs(other - lag), other)) if pools else None
        offsets = pools[source] if source is not None else np.zeros((n_samples, v.shape[2]))
        where = lags == lag  # (N, steps)
        samples[:, where] = point[where][None] + offsets[:, None, :]
        report[str(lag)] = {"residuals": sizes.get(lag, 0), "pool_from_lag": source if source != lag else None}
    np.clip(samples, 0, None, out=samples)
    return samples, report


# --- Hour-of-week mean ------------------------------------------------------------------------------


def hour_of_week_mean(
    series: SeriesData,
    values: np.ndarray,
    splits: Splits,
    windows: Windows,
    *,
    steps: int | None = None,
    n_samples: int = DEFAULT_SAMPLES,
) -> BaselineForecast:
    """The entity's mean of v at the same hour of the week over the hours before the first validation
    hour; where that hour of the week never occurs there (a one-week data set's validation and test
    days), its mean at the same hour of the day, else its overall mean. Only hours before
    ``splits.train_hours_end`` are read, whatever the windows."""
    started = time.perf_counter()
    v, steps, targets = _prepare(series, values, splits, windows, steps, n_samples)
    entity = _entities(windows)
    cutoff = splits.train_hours_end
    past = v[:, :cutoff]  # (E, C, K): the only values this method reads
    how = (series.day_of_week * 24 + series.hour_of_day).astype(np.int64)
    hod = series.hour_of_day.astype(np.int64)

    def means(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
        onehot = np.zeros((cutoff, n_keys))
        onehot[np.arange(cutoff), keys[:cutoff]] = 1.0
        counts = onehot.sum(axis=0)
        sums = np.einsum("eck,cn->enk", past, onehot)
        return counts, sums / np.maximum(counts, 1.0)[None, :, None]

    how_counts, how_means = means(how, 168)
    hod_counts, hod_means = means(hod, 24)
    overall = past.mean(axis=1)  # (E, K)
    use_how = how_counts[how[targets]] > 0  # (N, steps)
    use_hod = ~use_how & (hod_counts[hod[targets]] > 0)
    point = np.where(
        use_how[..., None],
        how_means[entity[:, None], how[targets]],
        np.where(use_hod[..., None], hod_means[entity[:, None], hod[targets]], overall[entity][:, None, :]),
    )
    info = {
        "method": "hour-of-week-mean",
        "cutoff_hour": int(cutoff),
        "windows": len(entity),
        "steps": steps,
        "samples": n_samples,
        "hour_of_week_points": int(np.count_nonzero(use_how)),
        "hour_of_day_points": int(np.count_nonzero(use_hod)),
        "entity_mean_points": int(np.count_nonzero(~use_how & ~use_hod)),
    }
    if n_samples == 1:
        samples = np.clip(point, 0, None)[None]
    else:
        # Spread: the entity's own values at the target's hour of the day (all its values where that
        # hour never occurs: key 24), as quantile deviations from their mean, one key at a time.
        levels = quantile_levels(n_samples)
        key = np.where(hod_counts[hod[targets]] > 0, hod[targets], 24)  # (N, steps)
        samples = np.empty((n_samples, *point.shape), dtype=np.float32)
        for k in np.unique(key):
            sel = (hod[:cutoff] == k) if k < 24 else np.ones(cutoff, bool)
            where = key == k  # (N, steps)
            rows = np.broadcast_to(entity[:, None], key.shape)[where]
            users, inverse = np.unique(rows, return_inverse=True)
            q = np.quantile(past[users][:, sel], levels, axis=1)  # (S, users, K)
            samples[:, where] = point[where][None] + (q - q.mean(axis=0, keepdims=True))[:, inverse]
        np.clip(samples, 0, None, out=samples)
    info["seconds"] = round(time.perf_counter() - started, 3)
    return BaselineForecast("hour-of-week-mean", samples.astype(np.float32), info)


# --- ARIMA ------------------------------------------------------------------------------------------

ARIMA_ORDER = (1, 0, 0)


def _daily_profile(y_train: np.ndarray, hod_train: np.ndarray, hod: np.ndarray) -> np.ndarray:
    """The series' training mean at each hour of the day, at every hour (overall mean where unseen)."""
    counts = np.bincount(hod_train, minlength=24)
    sums = np.bincount(hod_train, weights=y_train, minlength=24)
    profile = np.where(counts > 0, sums / np.maximum(counts, 1), y_train.mean())
    return profile[hod]


def _state_forecasts(res: MLEResults, origins: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-step forecast means and variances (n_origins, steps) of a filtered state-space result,
    from the predicted state at each origin (which conditions on observations before it only)."""
    ssm = res.model.ssm
    design = np.asarray(ssm["design"], dtype=np.float64)
    transition = np.asarray(ssm["transition"], dtype=np.float64)
    if design.ndim != 2 or transition.ndim != 2:
        raise ValueError("time-varying system matrices are not supported")
    obs_intercept = np.asarray(ssm["obs_intercept"], dtype=np.float64).reshape(1, -1)
    state_intercept = np.asarray(ssm["state_intercept"], dtype=np.float64)
    state_intercept = state_intercept.reshape(transition.shape[0], -1)
    obs_cov = float(np.asarray(ssm["obs_cov"]).reshape(-1)[0])
    selection = np.asarray(ssm["selection"], dtype=np.float64)
    rqr = selection @ np.asarray(ssm["state_cov"], dtype=np.float64) @ selection.T
    fr = res.filter_results
    scale = float(getattr(fr, "scale", 1.0) or 1.0)
    a = fr.predicted_state[:, origins].astype(np.float64)  # (k, n)
    p = fr.predicted_state_cov[:, :, origins].astype(np.float64)  # (k, k, n)
    mean = np.empty((len(origins), steps))
    var = np.empty((len(origins), steps))
    for h in range(steps):
        t = origins + h
        d = obs_intercept[0, t] if obs_intercept.shape[1] > 1 else obs_intercept[0, 0]
        c = state_intercept[:, t] if state_intercept.shape[1] > 1 else state_intercept[:, :1]
        mean[:, h] = design[0] @ a + d
        var[:, h] = (np.einsum("i,ijn,j->n", design[0], p, design[0]) + obs_cov) * scale
        a = transition @ a + c
        p = np.einsum("ij,jkn,lk->iln", transition, p, transition) + rqr[:, :, None]
    return mean, np.maximum(var, 0.0)


def _arima_series(
    y: np.ndarray,
    hod: np.ndarray,
    cutoff: int,
    origins: np.ndarray,
    steps: int,
    order: tuple[int, int, int],
    daily: bool,
    known: np.ndarray | None = None,
) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """Fit one series on its first ``cutoff`` hours (or take the ``known`` parameters), filter the
    whole series with those parameters (no refitting) and forecast ``steps`` hours from every origin."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y_train = y[:cutoff]
    targets = origins[:, None] + np.arange(steps)[None, :]
    if np.ptp(y_train) <= 1e-12:  # all-zero (or constant) history: nothing to fit
        return "constant", np.full(targets.shape, y_train[0]), np.zeros(targets.shape), {}
    exog = _daily_profile(y_train, hod[:cutoff], hod)[:, None] if daily else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if known is None:
                model = SARIMAX(y_train, exog=None if exog is None else exog[:cutoff], order=order, trend="c")
                res = model.fit(disp=False, cov_type="none")
                params, status = np.asarray(res.params, dtype=np.float64), "fitted"
                if not np.all(np.isfinite(params)):
                    raise ValueError("non-finite parameters")
                full = res.apply(y, exog=exog)  # same parameters, observations up to each origin
            else:
                model = SARIMAX(y, exog=exog, order=order, trend="c")
                params, status = known, "reused"
                full = model.filter(params)
            mean, var = _state_forecasts(full, origins, steps)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
            raise ValueError("non-finite forecast")
        return status, mean, var, dict(zip(model.param_names, map(float, params), strict=True))
    except Exception:  # noqa: BLE001 - any fitting failure falls back to the daily profile
        base = exog[:, 0] if exog is not None else np.full(len(y), y_train.mean())
        resid_var = float(np.var(y_train - base[:cutoff]))
        return "failed", base[targets], np.full(targets.shape, resid_var), {}


def _arima_param_names(order: tuple[int, int, int], daily: bool) -> list[str]:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y = np.arange(8.0)
    return list(SARIMAX(y, exog=y[:, None] ** 2 if daily else None, order=order, trend="c").param_names)


def _arima_chunk(
    tasks: list[tuple], hod: np.ndarray, cutoff: int, steps: int, order: tuple[int, int, int], daily: bool
) -> list[tuple]:
    with _single_threaded_blas():
        return [
            (e, k, *_arima_series(y, hod, cutoff, origins, steps, order, daily, known))
            for e, k, y, origins, known in tasks
        ]


def _openblas_thread_setters() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process (numpy and scipy
    each bundle one), found through /proc/self/maps; empty where that is not possible."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "")):
            getter = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            setter = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if getter is not None and setter is not None:
                setter.argtypes = [ctypes.c_int]
                found.append((getter, setter))
                break
    return found


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """One OpenBLAS thread while fitting: the Kalman filter's and L-BFGS's tiny matrix products run
    about 3x slower with OpenBLAS's thread pool than without (measured on the 2-core machine)."""
    setters = _openblas_thread_setters()
    saved = [getter() for getter, _ in setters]
    for _, setter in setters:
        setter(1)
    try:
        yield
    finally:
        for (_, setter), n in zip(setters, saved, strict=True):
            setter(n)


def default_jobs() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def arima(
    series: SeriesData,
    values: np.ndarray,
    splits: Splits,
    windows: Windows,
    *,
    steps: int | None = None,
    order: tuple[int, int, int] = ARIMA_ORDER,
    daily_regressor: bool = True,
    n_samples: int = DEFAULT_SAMPLES,
    n_jobs: int | None = None,
    params: dict[str, np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BaselineForecast:
    """statsmodels SARIMAX per (entity, service) series of the windows' entities, on the normalised
    scale: ARIMA ``order`` (default AR(1)) with a constant and, by default, the series' own training
    mean at each hour of the day as a regressor (a regression on the daily profile with AR errors).

    Parameters are estimated by maximum likelihood on the hours before ``splits.train_hours_end``
    only; the whole series is then filtered with those fixed parameters (``res.apply``) and each
    window is forecast from the Kalman predicted state at its first target hour, which conditions on
    observations before that hour only. Series constant over the training hours (all zero, mostly)
    are not fitted and predicted constant with no spread; a series whose fit fails falls back to its
    daily profile with the profile's residual variance (``info["failed_series"]``). Fits run in
    ``n_jobs`` processes ("spawn"; callers' scripts need the usual ``if __name__ == "__main__"``
    guard) with one BLAS thread each (default: the usable CPUs, at most 8; in this process when
    ``n_jobs`` is 1 or there are fewer than 32 series).

    ``params``: the ``.params`` of an earlier ARIMA forecast with the same split, order and regressor
    (e.g. the test windows' forecast, reused for the recursive paths): series with finite parameters
    there are filtered with them instead of being fitted again (``info["reused_series"]``).
    """
    started = time.perf_counter()
    if len(order) != 3 or min(order) < 0:
        raise InputError(f"expected an order (p, d, q) of whole numbers >= 0, got {order!r}", field="order")
    p, d, q = order  # a list from JSON too: passed on as a tuple
    v, steps, _targets = _prepare(series, values, splits, windows, steps, n_samples)
    entity = _entities(windows)
    cutoff = splits.train_hours_end
    hod = series.hour_of_day.astype(np.int64)
    n_entities, _, n_services = v.shape
    origins_of = {int(e): np.unique(windows.hour[entity == e]) for e in np.unique(entity)}
    names = _arima_param_names(order, daily_regressor) if params else []
    if params:
        if sorted(params) != sorted(names):
            raise InputError(
                f"expected the parameters {names} of this ARIMA specification, got {sorted(params)}", field="params"
            )
        for name, array in params.items():
            if np.shape(array) != (n_entities, n_services):
                raise InputError(
                    f"parameter {name!r} has shape {np.shape(array)}, expected {(n_entities, n_services)}",
                    field="params",
                )

    given = params or {}

    def known(e: int, k: int) -> np.ndarray | None:
        if not names:
            return None
        vector = np.array([given[name][e, k] for name in names], dtype=np.float64)
        return vector if np.all(np.isfinite(vector)) else None

    tasks = [
        (e, k, v[e, :, k].copy(), origins, known(e, k)) for e, origins in origins_of.items() for k in range(n_services)
    ]
    jobs = default_jobs() if n_jobs is None else max(1, int(n_jobs))
    results: list[tuple] = []
    if jobs == 1 or len(tasks) < 32:  # in this process
        for i in range(0, len(tasks), 100):
            results.extend(_arima_chunk(tasks[i : i + 100], hod, cutoff, steps, (p, d, q), daily_regressor))
            if progress:
                progress(f"arima: {min(i + 100, len(tasks))}/{len(tasks)} series")
    else:
        size = max(1, math.ceil(len(tasks) / (jobs * 8)))
        chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        with _workers_skip_main(), ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(_arima_chunk, chunk, hod, cutoff, steps, (p, d, q), daily_regressor) for chunk in chunks
            ]
            done = 0
            for future, chunk in zip(futures, chunks, strict=True):
                results.extend(future.result())
                done += len(chunk)
                if progress:
                    progress(f"arima: {done}/{len(tasks)} series")

    mean = np.empty((len(entity), steps, n_services))
    var = np.empty_like(mean)
    row_of = {e: np.flatnonzero(entity == e) for e in origins_of}
    counts = {"fitted": 0, "reused": 0, "constant": 0, "failed": 0}
    fitted_params: dict[str, np.ndarray] = {}
    for e, k, status, m, s2, fitted in results:
        counts[status] += 1
        rows = row_of[e]
        at = np.searchsorted(origins_of[e], windows.hour[rows])
        mean[rows, :, k] = m[at]
        var[rows, :, k] = s2[at]
        for name, value in fitted.items():
            fitted_params.setdefault(name, np.full((n_entities, n_services), np.nan))[e, k] = value
    if n_samples == 1:
        z = np.zeros(1)
    else:
        from scipy.stats import norm

        z = norm.ppf(quantile_levels(n_samples))
    samples = np.empty((n_samples, *mean.shape), dtype=np.float32)
    sd = np.sqrt(var)
    for i, zi in enumerate(z):
        samples[i] = np.clip(mean + zi * sd, 0, None)
    info = {
        "method": "arima",
        "order": list(order),
        "trend": "c",
        "daily_regressor": daily_regressor,
        "cutoff_hour": int(cutoff),
        "windows": len(entity),
        "steps": steps,
        "samples": n_samples,
        "series": len(tasks),
        "fitted_series": counts["fitted"],
        "reused_series": counts["reused"],
        "constant_series": counts["constant"],
        "failed_series": counts["failed"],
        "n_jobs": jobs,
        "median_params": {name: round(float(np.nanmedian(a)), 4) for name, a in fitted_params.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    return BaselineForecast("arima", samples, info, fitted_params)


BASELINES: dict[str, Callable[..., BaselineForecast]] = {
    "seasonal-naive": seasonal_naive,
    "hour-of-week-mean": hour_of_week_mean,
    "arima": arima,
}


def forecast_paths(
    method: str,
    series: SeriesData,
    values: np.ndarray,
    splits: Splits,
    entities: np.ndarray,
    start_hours: np.ndarray,
    n_steps: int,
    **options: Any,
) -> BaselineForecast:
    """Recursive multi-step paths (S, N, n_steps, K) from (entity, start hour) pairs (paper Sec. VI-C)."""
    if method not in BASELINES:
        raise InputError(f"expected one of {', '.join(BASELINES)}, got {method!r}", field="method")
    windows = Windows(np.asarray(entities, dtype=np.int64), np.asarray(start_hours, dtype=np.int64))
    return BASELINES[method](series, values, splits, windows, steps=n_steps, **options)
