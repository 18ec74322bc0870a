from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from engine.data.windows import SeriesData, SplitSpec, Windows, make_splits
from engine.errors import InputError
from engine.evaluation.baselines import quantile_levels
from engine.evaluation.learned import LEARNED, LEVELS, REQUIRES, quantile_samples, register, unavailable
from engine.evaluation.metrics import probabilistic_metrics


def _series(values: np.ndarray, env: np.ndarray | None = None, location: np.ndarray | None = None) -> SeriesData:
    e, t, k = values.shape
    return SeriesData(
        dataset_name="synthetic",
        services=[f"s{i}" for i in range(k)],
        entity_ids=np.arange(e),
        entity_keys=[f"u{i}" for i in range(e)],
        traffic=np.zeros((e, t, k)),
        location=np.full((e, t), -1) if location is None else location,
        cell_ids=np.zeros(0 if env is None else len(env), dtype=np.int64),
        cell_keys=[] if env is None else [f"c{i}" for i in range(len(env))],
        env=np.zeros((0, 0), dtype=np.float32) if env is None else env,
        time_origin=datetime(2016, 4, 18),
    )


def _noisy_daily(entities: int, hours: int, services: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    day = 0.2 + rng.random((entities, 24, services))
    noisy = np.tile(day, (1, hours // 24, 1)) + rng.normal(scale=noise, size=(entities, hours, services))
    return np.clip(noisy, 0, None)


def test_quantile_samples_interpolate_between_levels_and_extend_the_outer_slopes():
    levels = np.array([0.1, 0.5, 0.9])
    q = np.array([[1.0, 2.0, 4.0]])  # one forecast
    samples = quantile_samples(levels, q, 10)  # levels 0.05, 0.15, ..., 0.95
    assert samples.shape == (10, 1)
    expected_mid = 1.0 + (0.15 - 0.1) / 0.4 * 1.0  # on the first segment
    assert samples[1, 0] == pytest.approx(expected_mid)
    assert samples[0, 0] == pytest.approx(1.0 - 0.05 / 0.4)  # extrapolated below 0.1
    assert samples[-1, 0] == pytest.approx(4.0 + 0.05 / 0.4 * 2.0)  # extrapolated above 0.9
    assert np.all(np.diff(samples[:, 0]) >= 0)
    assert quantile_samples(levels, q, 1)[0, 0] == pytest.approx(2.0)  # one sample: the median


def test_quantile_samples_sort_crossed_quantiles_and_clip_at_zero():
    samples = quantile_samples(np.array([0.1, 0.5, 0.9]), np.array([0.3, 0.1, 0.2]), 5)
    assert np.all(samples >= 0) and np.all(np.diff(samples) >= 0)
    with pytest.raises(InputError, match="expected 3 quantiles"):
        quantile_samples(np.array([0.1, 0.5, 0.9]), np.zeros((2, 4)), 5)


def test_quantile_samples_of_a_normal_reproduce_its_quantiles_inside_the_predicted_levels():
    from scipy.stats import norm

    q = norm.ppf(LEVELS) + 5.0
    samples = quantile_samples(LEVELS, q, 100)
    levels = quantile_levels(100)
    inside = (levels >= 0.05) & (levels <= 0.95)
    assert np.allclose(samples[inside], norm.ppf(levels[inside]) + 5.0, atol=0.06)


def test_a_baseline_whose_package_is_missing_says_so_and_unknown_names_are_rejected():
    register("needs-nothing-here", "no_such_package_for_lsdm_tests")(lambda *a, **k: None)  # type: ignore[arg-type,return-value]
    try:
        reason = unavailable("needs-nothing-here")
        assert reason is not None and "no_such_package_for_lsdm_tests" in reason and "row left out" in reason
    finally:
        del LEARNED["needs-nothing-here"], REQUIRES["needs-nothing-here"]
    with pytest.raises(InputError, match="expected one of"):
        unavailable("prophet")


lightgbm = pytest.importorskip("lightgbm")


def _fit(values: np.ndarray, series: SeriesData | None = None, **options):
    series = series or _series(values)
    splits = make_splits(series, SplitSpec())
    return series, splits, LEARNED["lightgbm"](series, values, splits, seed=0, rounds=150, **options)


def test_lightgbm_learns_a_noisy_daily_pattern_with_calibrated_intervals():
    values = _noisy_daily(12, 336, 2, noise=0.05)
    _, splits, fit = _fit(values)
    forecast = fit.forecast(splits.test)
    assert forecast.samples.shape == (100, len(splits.test), 1, 2) and forecast.samples.dtype == np.float32
    truth = values[splits.test.entity, splits.test.hour][:, None]
    error = np.abs(forecast.point - truth).mean()
    assert error < 0.06  # the noise's mean absolute deviation is 0.04; the pattern's spread is about 0.3
    metrics = probabilistic_metrics(truth, forecast.samples)
    assert 0.8 <= metrics["cov90"] <= 0.97
    assert fit.info["training_rows"] == len(splits.train) * 2 and not fit.info["environment"]


def test_lightgbm_never_reads_the_window_hour_or_later_and_recursive_paths_follow_the_pattern():
    values = _noisy_daily(20, 336, 2, noise=0.02, seed=1)
    _, _, fit = _fit(values)
    windows = Windows(np.arange(20), np.full(20, 300))
    changed = values.copy()
    changed[:, 300:] = 5.0  # the future, at and after the windows' hour
    a = fit.forecast(windows, steps=1)
    b = fit.forecast(windows, steps=1, values=changed)
    assert np.array_equal(a.samples, b.samples)
    paths = fit.forecast(windows, steps=30, n_samples=16)
    assert paths.samples.shape == (16, 20, 30, 2)
    truth = values[:, 300:330]
    assert np.abs(paths.point - truth).mean() < 0.06
    with pytest.raises(InputError, match="end by hour 336"):
        fit.forecast(Windows(np.array([0]), np.array([320])), steps=30)


def test_lightgbm_reads_the_environment_of_the_cell_at_the_target_hour():
    rng = np.random.default_rng(2)
    entities, hours = 20, 336
    location = rng.integers(0, 2, size=(entities, hours))
    env = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # Traffic is high exactly when the entity is in cell 1: only the environment can tell the hours apart.
    values = 0.2 + 0.8 * location[:, :, None] + rng.normal(scale=0.02, size=(entities, hours, 1))
    with_env = _series(values, env=env, location=location)
    _, splits, fit = _fit(values, with_env)
    _, _, blind = _fit(values)
    truth = values[splits.test.entity, splits.test.hour][:, None]
    assert fit.info["environment"] and "env0" in fit.info["features"]
    seen = np.abs(fit.forecast(splits.test).point - truth).mean()
    unseen = np.abs(blind.forecast(splits.test).point - truth).mean()
    assert seen < 0.05 < unseen


def test_fracast_zero_shot_follows_a_daily_pattern_and_never_reads_the_future():
    pytest.importorskip("fracast")
    values = _noisy_daily(3, 168, 2, noise=0.01, seed=3)
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    fit = LEARNED["fracast"](series, values, splits)
    windows = Windows(np.array([0, 1, 2, 0]), np.array([150, 150, 150, 160]))
    forecast = fit.forecast(windows, steps=1, n_samples=20)
    assert forecast.samples.shape == (20, 4, 1, 2)
    truth = values[windows.entity, windows.hour][:, None]
    off_phase = values[windows.entity, windows.hour - 12][:, None]  # the pattern half a day away
    error = np.abs(forecast.point - truth).mean()
    assert error < 0.5 * values.std() and error < np.abs(forecast.point - off_phase).mean()
    changed = values.copy()
    changed[:, 150:] = 9.0
    first_three = Windows(windows.entity[:3], windows.hour[:3])  # at hour 150: the change starts there
    same = fit.forecast(first_three, steps=1, n_samples=20, values=changed)
    assert np.allclose(same.samples, forecast.samples[:, :3])
    paths = fit.forecast(Windows(np.array([0]), np.array([120])), steps=30, n_samples=10)
    assert paths.samples.shape == (10, 1, 30, 2)
    assert np.abs(paths.point[0] - values[0, 120:150]).mean() < np.abs(paths.point[0] - values[0, 108:138]).mean()


def test_the_quick_evaluation_scores_the_same_fifty_entities_every_time():
    from engine.evaluation.evaluate import QUICK_ENTITIES, _quick

    values = _noisy_daily(200, 168, 1, noise=0.0)
    splits = make_splits(_series(values), SplitSpec(seed=5))
    quick = _quick(splits)
    chosen = np.unique(quick.test.entity)
    assert len(chosen) == QUICK_ENTITIES == 50 and len(quick.test) == 50 * 24
    assert np.array_equal(np.unique(_quick(make_splits(_series(values), SplitSpec(seed=9))).test.entity), chosen)
    assert quick.train is splits.train and quick.val is splits.val  # only the scored windows change
    assert not np.array_equal(chosen, np.arange(50))  # drawn, not the first fifty
