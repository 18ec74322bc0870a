"""Learned baselines for Table III: a global LightGBM, PatchTST and the pretrained fracast model.

Unlike the local rules of ``engine.evaluation.baselines`` (one statistic per entity and service), these
are *fitted once* on the training windows of every entity and then forecast any windows:

    fitted = LEARNED["lightgbm"](series, values, splits, seed=0)
    forecast = fitted.forecast(windows, steps=1)  # BaselineForecast, samples (S, N, steps, K)

- ``series``, ``values``, ``splits``, ``windows``: as in ``engine.evaluation.baselines`` (normalised values
  (E, T, K); parameters learned only from target hours before ``splits.train_hours_end`` and only from the
  training entities (``splits.train.entity``); a window reads only the hours before its first target hour);
- ``steps``: hours forecast from each window's first target hour. Multi-step forecasts are the recursive
  paths of paper Sec. VI-C: what each method gives when its own forecasts are fed back (LightGBM, fracast)
  or its direct multi-horizon head (PatchTST, a direct model by design); each class says which.

Every method predicts quantiles at a few levels; ``quantile_samples`` turns them into the S deterministic
quantile samples at the levels (i + 0.5) / S that the scoring code reads (the same convention as the local
baselines), interpolating linearly between the predicted levels and extrapolating the outer segments'
slopes into the tails, clipped at 0 (v = log1p(bytes) / scale is never negative).

The packages are an optional extra (``pip install -e '.[baselines]'``, installed by ``make``): where one is
missing, ``unavailable(name)`` says why and the evaluation leaves the row out with that note.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.data.windows import SeriesData, Splits, Windows
from engine.errors import InputError
from engine.evaluation.baselines import DEFAULT_SAMPLES, BaselineForecast, check_windows
from engine.evaluation.patchtst import fit_patchtst
from engine.evaluation.quantile_fit import (
    LEVELS,
    Fitted,
    elapsed,
    learned_note,
    quantile_samples,
)

__all__ = ["LEARNED", "LEVELS", "REQUIRES", "Fitted", "learned_note", "quantile_samples", "register", "unavailable"]

# name -> (fit function, the import it needs or None)
LEARNED: dict[str, Callable[..., Fitted]] = {}
REQUIRES: dict[str, str | None] = {}


def register(name: str, requires: str | None) -> Callable[[Callable[..., Fitted]], Callable[..., Fitted]]:
    def wrap(fit: Callable[..., Fitted]) -> Callable[..., Fitted]:
        LEARNED[name] = fit
        REQUIRES[name] = requires
        return fit

    return wrap


def unavailable(name: str) -> str | None:
    """Why the baseline ``name`` cannot run here (its package is missing), or None."""
    if name not in LEARNED:
        raise InputError(f"expected one of {', '.join(LEARNED)}, got {name!r}", field="baseline")
    package = REQUIRES[name]
    if package and importlib.util.find_spec(package) is None:
        return f"{name}: the package {package!r} is not installed (pip install -e '.[baselines]'); row left out."
    return None


# --- LightGBM -----------------------------------------------------------------------------------------

LGBM_LAGS = (1, 2, 3, 24, 48, 168)
LGBM_MAX_ROWS = 150_000  # training rows (entity, hour, service) sampled from the training targets
LGBM_ENV_DIMS = 8  # principal components of the cells' environment vectors used as features


@dataclass
class _Features:
    """What the LightGBM features read besides the values: the calendar, the training profile and the
    environment of every (entity, hour)."""

    hour_of_day: np.ndarray  # (T,)
    day_of_week: np.ndarray  # (T,)
    profile_sum: np.ndarray  # (E, 24, K) sums of the training hours' values by hour of day
    profile_count: np.ndarray  # (E, 24) training hours counted
    env: np.ndarray | None  # (E, T, P) principal components of the cell's vector at each hour, NaN unknown
    n_services: int

    def names(self) -> list[str]:
        k = self.n_services
        env = [f"env{i}" for i in range(self.env.shape[2])] if self.env is not None else []
        return (
            [f"lag{lag}" for lag in LGBM_LAGS]
            + [f"last_s{j}" for j in range(k)]
            + ["mean24", "profile", "hour", "weekday", "service"]
            + env
        )

    def rows(
        self, history: np.ndarray, row: np.ndarray, entity: np.ndarray, hour: np.ndarray, exclude_own: bool = False
    ) -> np.ndarray:
        """(N * K, F) features of the targets (entity[i], hour[i], every service), read from ``history[row[i]]``
        at hours before ``hour[i]`` only; ``exclude_own``: the profile without the target's own value (training)."""
        n, k = len(row), self.n_services
        lag_hours = hour[:, None] - np.array(LGBM_LAGS)[None, :]  # (N, L)
        safe = np.clip(lag_hours, 0, None)
        lags = history[row[:, None], safe]  # (N, L, K)
        lags = np.where((lag_hours >= 0)[:, :, None], lags, np.nan)
        last = history[row, hour - 1]  # (N, K)
        window = np.clip(hour[:, None] - np.arange(1, 25)[None, :], 0, None)
        mean24 = history[row[:, None], window].mean(axis=1)  # (N, K)
        hod = self.hour_of_day[hour]
        sums = self.profile_sum[entity, hod]  # (N, K)
        counts = np.broadcast_to(self.profile_count[entity, hod][:, None], sums.shape).astype(np.float64)
        if exclude_own:
            sums = sums - history[row, hour]
            counts = counts - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            profile = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        columns = [
            np.moveaxis(lags, 1, 2).reshape(n * k, -1),  # (N*K, L): service-major inside each row
            np.repeat(last, k, axis=0),
            mean24.reshape(-1, 1),
            profile.reshape(-1, 1),
            np.repeat(hod, k)[:, None].astype(np.float64),
            np.repeat(self.day_of_week[hour], k)[:, None].astype(np.float64),
            np.tile(np.arange(k), n)[:, None].astype(np.float64),
        ]
        if self.env is not None:
            columns.append(np.repeat(self.env[entity, hour], k, axis=0))
        return np.concatenate(columns, axis=1)


def _lgbm_features(series: SeriesData, values: np.ndarray, splits: Splits) -> _Features:
    end = splits.train_hours_end
    hod = series.hour_of_day
    e, _, k = values.shape
    sums = np.zeros((e, 24, k))
    counts = np.zeros((e, 24))
    for h in range(24):
        hours = np.flatnonzero(hod[:end] == h)
        sums[:, h] = values[:, hours].sum(axis=1)
        counts[:, h] = len(hours)
    env = None
    if series.env.size and series.env.shape[1]:
        vectors = series.env.astype(np.float64)
        centred = vectors - vectors.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        components = centred @ vt[: min(LGBM_ENV_DIMS, vt.shape[0])].T  # (C, P)
        known = series.location >= 0
        env = np.full((*series.location.shape, components.shape[1]), np.nan, dtype=np.float32)
        env[known] = components[series.location[known]]
    return _Features(hod, series.day_of_week, sums, counts, env, k)


@dataclass
class LightGBMFit(Fitted):
    """One global LightGBM model per quantile level (``LEVELS``) over every entity and service: lags 1, 2, 3,
    24, 48 and 168 h of the service, the last hour of every service, the last 24 h mean, the entity's mean at
    that hour of day over the training hours (leave-one-out for training targets), hour of day, weekday, the
    service (categorical) and, where the data has environment vectors, the first 8 principal components of
    the vector of the cell the entity is in at the target hour (the recorded cell, as the LSDM rows use).
    Multi-step: recursive, the median fed back as the next hours' lags (the quantiles of later steps are
    therefore those of one step given the median path; their spread does not accumulate the earlier
    steps' uncertainty)."""

    series: SeriesData | None = None
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    features: _Features | None = None
    boosters: list = field(default_factory=list)

    def describe(self) -> str:
        info = self.info
        env = ", the cell's environment (8 principal components)" if info["environment"] else ""
        return (
            f"lightgbm: one global LightGBM per quantile level ({len(info['levels'])} levels, "
            f"{min(info['trees'])}-{max(info['trees'])} trees, early stopping on the validation day) on lags, "
            f"the last hour of every service, the hour-of-day profile, calendar{env}; "
            f"{info['training_rows']:,} training rows, fitted in {info['fit_seconds']:.0f} s; "
            "multi-step paths recursive with the median fed back."
        )

    def forecast(
        self, windows: Windows, steps: int = 1, n_samples: int = DEFAULT_SAMPLES, values: np.ndarray | None = None
    ) -> BaselineForecast:
        assert self.features is not None
        assert self.series is not None
        check_windows(self.series, windows, steps, n_samples)
        v = self.values if values is None else np.asarray(values, dtype=np.float64)
        started = time.perf_counter()
        entity = np.asarray(windows.entity, dtype=np.int64)
        start = np.asarray(windows.hour, dtype=np.int64)
        n, k = len(entity), v.shape[2]
        quantiles = np.zeros((n, steps, k, len(LEVELS)))
        if steps == 1:
            history, row = v, entity
        else:
            history, row = v[entity].copy(), np.arange(n)
        median = int(np.argmin(np.abs(LEVELS - 0.5)))
        for h in range(steps):
            for first in range(0, n, 20_000):
                part = slice(first, first + 20_000)
                x = self.features.rows(history, row[part], entity[part], start[part] + h)
                q = np.stack([b.predict(x, num_threads=2) for b in self.boosters], axis=-1)  # (n*K, Q)
                quantiles[part, h] = q.reshape(-1, k, len(LEVELS))
            if steps > 1 and h + 1 < steps:
                history[row, start + h] = np.clip(np.sort(quantiles[:, h], axis=-1)[..., median], 0, None)
        samples = quantile_samples(LEVELS, quantiles, n_samples)
        info = dict(self.info, windows=n, steps=steps, forecast_seconds=elapsed(started))
        return BaselineForecast(self.name, samples.astype(np.float32), info)


@register("lightgbm", "lightgbm")
def fit_lightgbm(
    series: SeriesData,
    values: np.ndarray,
    splits: Splits,
    *,
    seed: int = 0,
    max_rows: int = LGBM_MAX_ROWS,
    rounds: int = 300,
    progress: Callable[[str], None] | None = None,
) -> LightGBMFit:
    """Fit ``LightGBMFit`` on (up to ``max_rows``) training targets; the validation hours stop the boosting
    (at most ``rounds`` trees, early stopping after 30 without a better validation pinball loss)."""
    import lightgbm as lgb

    started = time.perf_counter()
    v = np.asarray(values, dtype=np.float64)
    if v.shape != series.traffic.shape:
        raise InputError(f"values have shape {v.shape}, the series {series.traffic.shape}", field="values")
    features = _lgbm_features(series, v, splits)
    rng = np.random.default_rng(seed)
    train = splits.train
    pick = np.arange(len(train))
    per_row = v.shape[2]
    if len(train) * per_row > max_rows:
        pick = np.sort(rng.choice(len(train), max_rows // per_row, replace=False))
    t_entity, t_hour = train.entity[pick], train.hour[pick]
    x = features.rows(v, t_entity, t_entity, t_hour, exclude_own=True)
    y = v[t_entity, t_hour].reshape(-1)
    val = splits.val
    vpick = np.arange(len(val))
    if len(val) * per_row > max_rows // 4:
        vpick = np.sort(rng.choice(len(val), max(1, max_rows // 4 // per_row), replace=False))
    xv = features.rows(v, val.entity[vpick], val.entity[vpick], val.hour[vpick])
    yv = v[val.entity[vpick], val.hour[vpick]].reshape(-1)
    names = features.names()
    boosters, trees = [], []
    for level in LEVELS:
        if progress:
            progress(f"lightgbm: quantile {level:g} ...")
        params = {
            "objective": "quantile",
            "alpha": float(level),
            "learning_rate": 0.08,
            "num_leaves": 31,
            "min_data_in_leaf": 100,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": 2,
            "verbosity": -1,
        }
        data = lgb.Dataset(x, y, feature_name=names, categorical_feature=["service"], free_raw_data=False)
        valid = lgb.Dataset(xv, yv, reference=data)
        booster = lgb.train(
            params,
            data,
            num_boost_round=rounds,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(30, verbose=False)],
        )
        boosters.append(booster)
        trees.append(int(booster.best_iteration or rounds))
    info = {
        "method": "lightgbm",
        "levels": LEVELS.tolist(),
        "training_rows": len(y),
        "validation_rows": len(yv),
        "trees": trees,
        "features": names,
        "environment": features.env is not None,
        "fit_seconds": elapsed(started),
    }
    return LightGBMFit("lightgbm", info, series, v, features, boosters)


# --- fracast (pretrained, zero-shot) ---------------------------------------------------------------------

FRACAST_CONTEXT = 2048  # the model's fixed context: shorter histories are padded (and cost the same)


@dataclass
class FracastFit(Fitted):
    """fracast 0.1.0, the Apache-2.0 pretrained model whose weights ship inside its wheel (85,001 parameters,
    int8 weights), zero-shot: each (entity, service) series is forecast alone from the hours before the
    window (up to 2,048), nothing fitted on our data; its 9 quantiles (0.1 to 0.9) are the distribution, the
    tails beyond 0.1 and 0.9 extrapolated (``quantile_samples``). Multi-step: its own direct 48-hour head.
    The cost is fixed by the context: about 0.1 s per series and window on 2 CPU cores, whatever the history's
    length, which is why the evaluation scores it on a subset of the test windows (``evaluate``'s
    ``fracast_entities``)."""

    series: SeriesData | None = None
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    model: object = None

    def forecast(
        self, windows: Windows, steps: int = 1, n_samples: int = DEFAULT_SAMPLES, values: np.ndarray | None = None
    ) -> BaselineForecast:
        assert self.series is not None
        check_windows(self.series, windows, steps, n_samples)
        v = self.values if values is None else np.asarray(values, dtype=np.float64)
        started = time.perf_counter()
        entity = np.asarray(windows.entity, dtype=np.int64)
        hour = np.asarray(windows.hour, dtype=np.int64)
        k = v.shape[2]
        levels = np.asarray(self.model.quantiles)  # type: ignore[attr-defined]
        quantiles = np.zeros((len(entity), steps, k, len(levels)))
        # One batch per distinct window hour: the rows share their length (histories from hour 0).
        for t in np.unique(hour):
            rows = np.flatnonzero(hour == t)
            context = v[entity[rows], max(0, t - FRACAST_CONTEXT) : t]  # (n, t', K)
            flat = np.moveaxis(context, 2, 1).reshape(-1, context.shape[1]).astype(np.float32)  # (n*K, t')
            q = self.model.forecast_batch(flat, horizon=steps)  # type: ignore[attr-defined]  # (n*K, steps, Q)
            quantiles[rows] = np.moveaxis(q.reshape(len(rows), k, steps, -1), 1, 2)
        samples = quantile_samples(levels, quantiles, n_samples)
        info = dict(self.info, windows=len(entity), steps=steps, forecast_seconds=elapsed(started))
        return BaselineForecast(self.name, samples.astype(np.float32), info)

    def describe(self) -> str:
        return (
            "fracast: the pretrained fracast 0.1.0 model (weights inside its wheel, Apache-2.0), zero-shot, each "
            "series alone, its 9 quantiles 0.1-0.9 as the distribution (tails extrapolated)."
        )


@register("fracast", "fracast")
def fit_fracast(
    series: SeriesData,
    values: np.ndarray,
    splits: Splits,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> FracastFit:
    """Load the bundled weights (nothing is fitted: ``splits`` and ``seed`` are unused, zero-shot)."""
    from fracast import FracastModel

    started = time.perf_counter()
    v = np.asarray(values, dtype=np.float64)
    if v.shape != series.traffic.shape:
        raise InputError(f"values have shape {v.shape}, the series {series.traffic.shape}", field="values")
    model = FracastModel.from_pretrained(device="cpu")
    info = {"method": "fracast", "levels": list(model.quantiles), "zero_shot": True, "fit_seconds": elapsed(started)}
    return FracastFit("fracast", info, series, v, model)


register("patchtst", "torch")(fit_patchtst)
