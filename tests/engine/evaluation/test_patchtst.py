from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from engine.data.windows import SeriesData, SplitSpec, Windows, make_splits
from engine.errors import InputError
from engine.evaluation.learned import LEARNED
from engine.evaluation.metrics import probabilistic_metrics
from engine.evaluation.patchtst import default_sizes, fit_patchtst

# Tiny budgets: a two-day context and a few hundred small Adam steps on a dozen channels (seconds on two cores).
FIT = {"context": 48, "iterations": 120, "batch": 64, "patience": 100}


def _series(values: np.ndarray) -> SeriesData:
    e, t, k = values.shape
    return SeriesData(
        dataset_name="synthetic",
        services=[f"s{i}" for i in range(k)],
        entity_ids=np.arange(e),
        entity_keys=[f"u{i}" for i in range(e)],
        traffic=np.zeros((e, t, k)),
        location=np.full((e, t), -1),
        cell_ids=np.zeros(0, dtype=np.int64),
        cell_keys=[],
        env=np.zeros((0, 0), dtype=np.float32),
        time_origin=datetime(2016, 4, 18),
    )


def _daily_pattern(entities: int, hours: int, services: int, seed: int = 0) -> np.ndarray:
    day = np.random.default_rng(seed).random((entities, 24, services))
    return np.tile(day, (1, hours // 24, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def periodic():
    values = _daily_pattern(6, 336, 2)
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    return values, series, splits, fit_patchtst(series, values, splits, seed=0, **FIT)


def test_registered_under_its_name():
    assert LEARNED["patchtst"] is fit_patchtst


def test_default_sizes_shrink_the_context_then_the_horizon_on_short_data():
    assert default_sizes(288, 30, None) == (96, 30)  # the default city: 14 days, the last two held out
    assert default_sizes(120, 30, None) == (66, 30)  # one week
    assert default_sizes(60, 30, None) == (24, 30)  # the context's floor
    assert default_sizes(40, 30, None) == (24, 15)  # then the horizon gives way
    assert default_sizes(120, 30, 48) == (48, 30)
    with pytest.raises(InputError):
        default_sizes(25, 30, None)


def test_learns_a_noiseless_daily_pattern_one_step_and_along_30_step_paths(periodic):
    values, _, splits, fitted = periodic
    info = fitted.info
    assert (info["context"], info["horizon"]) == (48, 30)
    assert info["iterations"] == 120 and info["epochs"] >= 1 and info["parameters"] > 10_000
    assert np.isfinite(info["best_val_loss"])
    std = float(values.std())
    one = fitted.forecast(splits.test, steps=1)
    truth = values[splits.test.entity, splits.test.hour][:, None]
    mae = float(np.abs(np.median(one.samples, axis=0) - truth).mean())
    assert mae < 0.2 * std, (mae, std)
    starts = Windows(np.arange(6), np.full(6, 300))
    paths = fitted.forecast(starts, steps=30)
    path_mae = float(np.abs(np.median(paths.samples, axis=0) - values[:, 300:330]).mean())
    assert path_mae < 0.25 * std, (path_mae, std)


def test_shapes_non_negative_float32_and_deterministic_for_a_seed(periodic):
    values, series, splits, fitted = periodic
    windows = splits.test.subset(splits.test.hour % 5 == 0)
    windows = windows.subset(windows.hour + 3 <= 336)
    forecast = fitted.forecast(windows, steps=3, n_samples=20)
    assert forecast.method == "patchtst"
    assert forecast.samples.shape == (20, len(windows), 3, 2)
    assert forecast.samples.dtype == np.float32
    assert (forecast.samples >= 0).all()
    assert np.all(np.diff(forecast.samples, axis=0) >= 0)  # quantile samples, increasing levels
    assert fitted.forecast(windows, steps=1, n_samples=1).samples.shape == (1, len(windows), 1, 2)
    short = {**FIT, "iterations": 30}
    first, again, other = (fit_patchtst(series, values, splits, seed=seed, **short) for seed in (0, 0, 1))
    samples = first.forecast(windows, steps=3, n_samples=20).samples
    assert np.array_equal(again.forecast(windows, steps=3, n_samples=20).samples, samples)
    assert not np.array_equal(other.forecast(windows, steps=3, n_samples=20).samples, samples)


def test_a_window_never_reads_its_own_hour_or_later(periodic):
    values, series, splits, fitted = periodic
    for hour in (5, 150, 310):  # 5: the context reaches before hour 0 (edge padding)
        windows = Windows(np.arange(6), np.full(6, hour))
        base = fitted.forecast(windows, steps=24).samples
        poisoned = values.copy()
        poisoned[:, hour:] = 7.0
        assert np.array_equal(fitted.forecast(windows, steps=24, values=poisoned).samples, base)
        poisoned[:, hour - 1] = 7.0  # the hour before is read
        assert not np.array_equal(fitted.forecast(windows, steps=24, values=poisoned).samples, base)
    # Values at the test hours never enter the fit (neither as training targets nor for early stopping).
    first_test = int(splits.test.hour.min())
    changed = values.copy()
    changed[:, first_test:] = np.random.default_rng(3).random(changed[:, first_test:].shape)
    refit = fit_patchtst(series, changed, splits, seed=0, **FIT)
    assert refit.info["val_losses"] == fitted.info["val_losses"]
    windows = Windows(np.arange(6), np.full(6, first_test))
    assert np.array_equal(refit.forecast(windows, values=values).samples, fitted.forecast(windows).samples)


def test_the_90_percent_interval_covers_noisy_targets():
    rng = np.random.default_rng(4)
    values = np.clip(0.2 + 0.6 * _daily_pattern(6, 336, 2, seed=5) + rng.normal(0, 0.05, (6, 336, 2)), 0, None)
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    fitted = fit_patchtst(series, values, splits, seed=0, **FIT)
    forecast = fitted.forecast(splits.test, steps=1)
    truth = values[splits.test.entity, splits.test.hour][:, None]
    metrics = probabilistic_metrics(truth, forecast.samples)
    assert 0.75 <= metrics["cov90"] <= 0.99, metrics
    assert 0.3 <= metrics["cov50"] <= 0.7, metrics


def test_one_week_trains_with_a_shorter_context_and_forecasts_the_test_day():
    values = _daily_pattern(4, 168, 2, seed=6)
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    assert splits.train_hours_end == 120
    fitted = fit_patchtst(series, values, splits, seed=0, iterations=60, batch=64)
    assert (fitted.info["context"], fitted.info["horizon"]) == (66, 30)
    assert fitted.info["training_samples"] == 4 * 2 * (120 - 30 - 66 + 1)
    forecast = fitted.forecast(splits.test, steps=1)
    assert forecast.samples.shape == (100, 4 * 24, 1, 2)
    assert forecast.info["context"] == 66 and np.isfinite(forecast.samples).all()
    long = fit_patchtst(series, values, splits, seed=0, horizon=100, iterations=20, batch=64)
    assert (long.info["context"], long.info["horizon"]) == (24, 95)  # 24 + 95 + 1 origin fit in 120 hours
    assert long.forecast(Windows(np.arange(4), np.full(4, 40)), steps=95).samples.shape == (100, 4, 95, 2)


def test_more_steps_than_the_fitted_horizon_is_an_input_error(periodic):
    _, _, _, fitted = periodic
    windows = Windows(np.arange(2), np.full(2, 200))
    assert fitted.forecast(windows, steps=30).samples.shape[2] == 30
    with pytest.raises(InputError) as caught:
        fitted.forecast(windows, steps=31)
    assert caught.value.field == "steps"
    with pytest.raises(InputError):
        fitted.forecast(Windows(np.arange(2), np.zeros(2, dtype=np.int64)))  # hour 0 has no history
