from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from engine.data.windows import SeriesData, SplitSpec, Windows, make_splits
from engine.errors import InputError
from engine.evaluation.baselines import (
    BASELINES,
    arima,
    forecast_paths,
    hour_of_week_mean,
    quantile_levels,
    seasonal_naive,
)
from engine.evaluation.metrics import probabilistic_metrics


def _series(values: np.ndarray, origin: datetime = datetime(2016, 4, 18)) -> SeriesData:
    """A SeriesData around normalised values (E, T, K); the baselines read only its calendar/shape."""
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
        time_origin=origin,
    )


def _daily_pattern(entities: int, hours: int, services: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    day = rng.random((entities, 24, services))
    return np.tile(day, (1, hours // 24, 1))


def _path_truth(values: np.ndarray, entities: np.ndarray, start: int, steps: int) -> np.ndarray:
    return values[entities, start : start + steps]


def test_registry_names_the_three_baselines():
    assert list(BASELINES) == ["seasonal-naive", "hour-of-week-mean", "arima"]


def test_seasonal_naive_is_exact_on_a_24_periodic_series_for_windows_and_30_step_paths():
    values = _daily_pattern(4, 168, 3)
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    forecast = seasonal_naive(series, values, splits, splits.test)
    assert forecast.samples.shape == (100, len(splits.test), 1, 3)
    truth = values[splits.test.entity, splits.test.hour][:, None]
    assert np.allclose(forecast.samples, truth[None])  # training residuals are all 0: no spread
    entities = np.arange(4)
    paths = forecast_paths("seasonal-naive", series, values, splits, entities, np.full(4, 130), 30)
    assert paths.samples.shape == (100, 4, 30, 3)
    assert np.allclose(paths.point, values[:, 130:160])  # steps 25-30 repeat the season (t - 48)


def test_seasonal_naive_never_reads_the_origin_hour_or_later():
    values = np.random.default_rng(1).random((3, 168, 2))
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    entities, start = np.arange(3), 140
    before = forecast_paths("seasonal-naive", series, values, splits, entities, np.full(3, start), 28)
    poisoned = values.copy()
    poisoned[:, start:] = 1e6
    after = forecast_paths("seasonal-naive", series, poisoned, splits, entities, np.full(3, start), 28)
    assert np.array_equal(before.samples, after.samples)


def test_weekly_seasonal_naive_falls_back_to_the_daily_lag_before_a_week_of_history():
    rng = np.random.default_rng(2)
    week = rng.random((2, 168, 2))
    values = np.tile(week, (1, 3, 1))  # 3 weeks, weekly but not daily periodic
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    forecast = seasonal_naive(series, values, splits, splits.test, lag=168, n_samples=1)
    assert forecast.info["fallback_windows"] == 0
    assert np.allclose(forecast.samples[0, :, 0], values[splits.test.entity, splits.test.hour])
    one_week = _series(week)
    splits = make_splits(one_week, SplitSpec())
    forecast = seasonal_naive(one_week, week, splits, splits.test, lag=168, n_samples=1)
    assert forecast.info["fallback_windows"] == len(splits.test)  # t - 168 < 0 everywhere
    assert np.allclose(forecast.samples[0, :, 0], week[splits.test.entity, splits.test.hour - 24])
    assert "168" not in (forecast.info.get("residual_pools") or {})


def test_seasonal_naive_residual_quantiles_give_calibrated_intervals():
    rng = np.random.default_rng(3)
    values = 2.0 + _daily_pattern(40, 168, 2) + rng.normal(scale=0.1, size=(40, 168, 2))
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    forecast = seasonal_naive(series, values, splits, splits.test)
    assert forecast.info["residual_pools"]["24"]["residuals"] == 40 * 96
    truth = values[splits.test.entity, splits.test.hour][:, None]
    metrics = probabilistic_metrics(truth, forecast.samples)
    assert metrics["cov50"] == pytest.approx(0.5, abs=0.06) and metrics["cov90"] == pytest.approx(0.9, abs=0.04)


def test_hour_of_week_mean_never_reads_validation_or_test_hours():
    values = np.random.default_rng(4).random((3, 168, 2))
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    poisoned = values.copy()
    poisoned[:, splits.train_hours_end :] = 1e9
    for windows, steps in ((splits.test, None), (Windows(np.arange(3), np.full(3, 130)), 30)):
        clean = hour_of_week_mean(series, values, splits, windows, steps=steps)
        dirty = hour_of_week_mean(series, poisoned, splits, windows, steps=steps)
        assert np.array_equal(clean.samples, dirty.samples)


def test_hour_of_week_mean_uses_the_same_weekly_hour_else_the_same_daily_hour():
    rng = np.random.default_rng(5)
    values = rng.random((2, 21 * 24, 1))  # three weeks: the test day's hours of the week were seen
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    forecast = hour_of_week_mean(series, values, splits, splits.test, n_samples=1)
    e, t = splits.test.entity[5], splits.test.hour[5]
    same_weekly_hour = [t - 168, t - 336]
    assert forecast.samples[0, 5, 0, 0] == pytest.approx(values[e, same_weekly_hour, 0].mean())
    assert forecast.info["hour_of_week_points"] == len(splits.test)
    one_week = values[:, :168]  # the last day (Sunday) has no earlier Sunday: hour-of-day mean
    series = _series(one_week)
    splits = make_splits(series, SplitSpec())
    forecast = hour_of_week_mean(series, one_week, splits, splits.test, n_samples=1)
    e, t = splits.test.entity[7], splits.test.hour[7]
    assert forecast.samples[0, 7, 0, 0] == pytest.approx(one_week[e, [t - 24 * d for d in range(2, 7)], 0].mean())
    assert forecast.info["hour_of_day_points"] == len(splits.test)


def test_hour_of_week_mean_samples_spread_like_the_entitys_values_at_that_hour():
    values = np.zeros((1, 168, 1))
    values[0, 10::24, 0] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # hour 10 of each day
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    windows = Windows(np.array([0]), np.array([154]))  # the test day's hour 10
    forecast = hour_of_week_mean(series, values, splits, windows, n_samples=50)
    samples = forecast.samples[:, 0, 0, 0]
    assert samples.mean() == pytest.approx(0.3)  # training days 0-4
    assert samples.min() >= 0.1 - 1e-6 and samples.max() <= 0.5 + 1e-6 and samples.std() > 0.1


def _ar1(entities: int, hours: int, phi: float, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((entities, hours, 2))
    x[:, 0] = rng.normal(scale=sigma / np.sqrt(1 - phi**2), size=(entities, 2))
    for t in range(1, hours):
        x[:, t] = phi * x[:, t - 1] + rng.normal(scale=sigma, size=(entities, 2))
    return 0.5 + x


def test_arima_recovers_an_ar1_coefficient_and_its_90_percent_interval_covers_about_90_percent():
    values = _ar1(entities=8, hours=30 * 24, phi=0.7, sigma=0.05, seed=6)
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    forecast = arima(series, values, splits, splits.test, order=(1, 0, 0), daily_regressor=False, n_jobs=1)
    assert forecast.info["fitted_series"] == 16 and forecast.info["failed_series"] == 0
    assert np.nanmean(forecast.params["ar.L1"]) == pytest.approx(0.7, abs=0.05)
    assert np.nanmean(np.sqrt(forecast.params["sigma2"])) == pytest.approx(0.05, rel=0.1)
    truth = values[splits.test.entity, splits.test.hour][:, None]
    metrics = probabilistic_metrics(truth, forecast.samples)
    assert metrics["cov90"] == pytest.approx(0.9, abs=0.06) and metrics["cov50"] == pytest.approx(0.5, abs=0.08)


def test_arima_multi_step_forecasts_match_statsmodels_with_the_fitted_parameters():
    from scipy.stats import norm
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    values = _ar1(entities=1, hours=168, phi=0.6, sigma=0.05, seed=7) + 0.1 * np.sin(np.arange(168) / 3)[None, :, None]
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    start, steps = 150, 12
    forecast = arima(
        series, values, splits, Windows(np.array([0]), np.array([start])), steps=steps, n_samples=1, n_jobs=1
    )
    cutoff = splits.train_hours_end
    y = values[0, :, 1]
    hod = np.arange(168) % 24
    profile = np.array([y[:cutoff][hod[:cutoff] == h].mean() for h in range(24)])[hod][:, None]
    names = ["intercept", "x1", "ar.L1", "sigma2"]
    params = [forecast.params[name][0, 1] for name in names]
    model = SARIMAX(y[:start], exog=profile[:start], order=(1, 0, 0), trend="c")
    expected = model.filter(params).get_forecast(steps, exog=profile[start : start + steps])
    assert np.allclose(forecast.samples[0, 0, :, 1], np.clip(expected.predicted_mean, 0, None))
    # the fitted parameters come from the training hours only: refitting on them gives the same
    refit = SARIMAX(y[:cutoff], exog=profile[:cutoff], order=(1, 0, 0), trend="c").fit(disp=False)
    assert np.allclose(params, refit.params, atol=1e-3)
    # the samples are Gaussian quantiles (levels (i + 0.5) / S) of the forecast mean and variance
    wide = arima(
        series, values, splits, Windows(np.array([0]), np.array([start])), steps=steps, n_jobs=1, params=forecast.params
    )
    z = norm.ppf(quantile_levels(100))[:, None]
    gaussian = expected.predicted_mean[None] + z * np.sqrt(expected.var_pred_mean)[None]
    assert np.allclose(wide.samples[:, 0, :, 1], np.clip(gaussian, 0, None), atol=1e-5)
    assert wide.info["reused_series"] == 2 and wide.info["fitted_series"] == 0


def test_arima_predicts_zeros_for_all_zero_series_without_fitting():
    values = np.zeros((2, 168, 2))
    values[0, :, 0] = _ar1(1, 168, 0.5, 0.05, 8)[0, :, 0]
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    forecast = arima(series, values, splits, splits.test, n_jobs=1)
    assert forecast.info["constant_series"] == 3 and forecast.info["fitted_series"] == 1
    zero_rows = splits.test.entity == 1
    assert np.all(forecast.samples[:, zero_rows] == 0) and np.all(forecast.samples[:, :, :, 1] == 0)
    assert np.isnan(forecast.params["ar.L1"][1, 0]) and np.isfinite(forecast.params["ar.L1"][0, 0])


@pytest.mark.slow
def test_arima_in_worker_processes_gives_the_same_forecasts_as_in_process():
    values = _ar1(entities=16, hours=168, phi=0.5, sigma=0.05, seed=9)  # 32 series: worker processes
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    windows = splits.test.subset(splits.test.hour % 6 == 0)
    serial = arima(series, values, splits, windows, n_jobs=1, n_samples=5)
    parallel = arima(series, values, splits, windows, n_jobs=2, n_samples=5)
    assert parallel.info["n_jobs"] == 2
    assert np.allclose(serial.samples, parallel.samples, atol=1e-6)


def test_arima_rejects_parameters_of_another_specification():
    values = _ar1(1, 168, 0.5, 0.05, 10)
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    with pytest.raises(InputError, match="parameters"):
        arima(
            series,
            values,
            splits,
            splits.test,
            order=(2, 0, 0),
            n_jobs=1,
            params={"intercept": np.zeros((1, 2)), "ar.L1": np.zeros((1, 2)), "sigma2": np.ones((1, 2))},
        )


@pytest.mark.parametrize("method", list(BASELINES))
def test_every_baseline_gives_nonnegative_paths_of_the_requested_shape(method):
    values = np.clip(_ar1(3, 168, 0.5, 0.2, 11) - 0.4, 0, None)  # many zeros, like real traffic
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    options = {"n_jobs": 1} if method == "arima" else {}
    paths = forecast_paths(method, series, values, splits, np.arange(3), np.full(3, 130), 30, n_samples=7, **options)
    assert paths.samples.shape == (7, 3, 30, 2) and paths.samples.dtype == np.float32
    assert np.all(np.isfinite(paths.samples)) and paths.samples.min() >= 0
    assert paths.info["seconds"] >= 0


def test_windows_past_the_end_of_the_data_are_rejected():
    values = np.zeros((1, 168, 1))
    series = _series(values)
    splits = make_splits(series, SplitSpec())
    with pytest.raises(InputError, match="end by hour 168"):
        seasonal_naive(series, values, splits, Windows(np.array([0]), np.array([160])), steps=10)
    with pytest.raises(InputError, match="method"):
        forecast_paths("prophet", series, values, splits, np.array([0]), np.array([100]), 5)
