from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluation.metrics import (
    METRIC_KEYS,
    crps_per_point,
    interval_coverage,
    mse_by_step,
    mse_by_step_and_service,
    per_service_r2,
    point_metrics,
    probabilistic_metrics,
    r2_score,
    score,
)


def _brute_force_fair_crps(y: float, xs: np.ndarray) -> float:
    s = len(xs)
    term1 = np.mean(np.abs(xs - y))
    pairs = sum(abs(a - b) for a in xs for b in xs)  # i == j terms are 0
    return float(term1 - 0.5 * pairs / (s * (s - 1)))


def test_point_metrics_match_hand_computed_equations_10_to_14():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.0, 3.0, 2.0, 4.0])
    m = point_metrics(y, p)
    assert m["mse"] == pytest.approx(0.5)  # (0 + 1 + 1 + 0) / 4
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["mae"] == pytest.approx(0.5)
    assert m["cs"] == pytest.approx(29.0 / 30.0)  # 1 + 6 + 6 + 16 over |y| |p| = sqrt(30) sqrt(30)
    assert m["r2"] == pytest.approx(1 - 2.0 / 5.0)  # mean 2.5: SS_tot = 2.25 + .25 + .25 + 2.25


def test_point_metrics_flatten_any_shape():
    rng = np.random.default_rng(0)
    y, p = rng.random((3, 4, 5)), rng.random((3, 4, 5))
    assert point_metrics(y, p) == pytest.approx(point_metrics(y.ravel(), p.ravel()))


def test_perfect_prediction_gives_r2_one_and_cosine_one():
    y = np.random.default_rng(1).random((10, 3))
    m = point_metrics(y, y.copy())
    assert m["mse"] == 0 and m["mae"] == 0
    assert m["r2"] == pytest.approx(1.0) and m["cs"] == pytest.approx(1.0)


def test_constant_prediction_of_the_true_mean_gives_r2_zero():
    y = np.array([0.0, 1.0, 5.0, 2.0])
    assert point_metrics(y, np.full(4, y.mean()))["r2"] == pytest.approx(0.0, abs=1e-12)


def test_degenerate_denominators_give_finite_cosine_and_r2():
    zeros = np.zeros(5)
    assert point_metrics(zeros, zeros)["cs"] == 1.0 and point_metrics(zeros, zeros)["r2"] == 1.0
    assert point_metrics(zeros, np.ones(5))["cs"] == 0.0
    assert point_metrics(np.ones(5), np.full(5, 2.0))["r2"] == 0.0  # constant truth, imperfect prediction
    assert point_metrics(np.ones(5), np.zeros(5))["cs"] == 0.0


def test_point_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        point_metrics(np.zeros(3), np.zeros(4))


def test_crps_equals_the_brute_force_pairwise_formula():
    rng = np.random.default_rng(2)
    samples = rng.normal(size=(7, 6))  # S = 7 samples of 6 points
    truth = rng.normal(size=6)
    expected = [_brute_force_fair_crps(truth[i], samples[:, i]) for i in range(6)]
    assert crps_per_point(truth, samples) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_crps_of_a_known_small_sample_set():
    # samples {0, 1, 3}, y = 1: E|X-y| = (1 + 0 + 2)/3 = 1; pairs |0-1|+|0-3|+|1-3| = 6, both orders 12;
    # fair pair term 0.5 * 12 / (3*2) = 1 -> CRPS 0
    assert crps_per_point(np.array([1.0]), np.array([[0.0], [1.0], [3.0]]))[0] == pytest.approx(0.0)
    # y = 4: E|X-y| = (4 + 3 + 1)/3 = 8/3 -> 8/3 - 1
    assert crps_per_point(np.array([4.0]), np.array([[0.0], [1.0], [3.0]]))[0] == pytest.approx(5 / 3)


def test_crps_of_a_point_forecast_is_the_mae():
    rng = np.random.default_rng(3)
    y, p = rng.random((4, 5)), rng.random((4, 5))
    assert probabilistic_metrics(y, p[None])["crps"] == pytest.approx(point_metrics(y, p)["mae"])
    assert probabilistic_metrics(y, p)["crps"] == pytest.approx(point_metrics(y, p)["mae"])  # no sample axis


def test_crps_is_chunked_without_changing_the_result(monkeypatch):
    rng = np.random.default_rng(4)
    samples, truth = rng.normal(size=(50, 300)), rng.normal(size=300)
    whole = crps_per_point(truth, samples)
    monkeypatch.setattr("engine.evaluation.metrics._CHUNK_ELEMENTS", 120)
    assert crps_per_point(truth, samples) == pytest.approx(whole)


def test_coverage_of_hand_built_intervals():
    samples = np.tile(np.arange(101.0)[:, None], (1, 4))  # quantiles are the percent values themselves
    truth = np.array([50.0, 24.0, 75.0, 96.0])
    assert interval_coverage(truth, samples, 0.5) == pytest.approx(2 / 4)  # 50 and 75 (closed interval)
    assert interval_coverage(truth, samples, 0.9) == pytest.approx(3 / 4)  # 96 > 95


def test_calibrated_gaussian_samples_cover_their_nominal_share():
    rng = np.random.default_rng(5)
    truth = rng.normal(size=4000)
    samples = rng.normal(size=(200, 4000))
    m = probabilistic_metrics(truth, samples)
    assert m["cov50"] == pytest.approx(0.5, abs=0.03) and m["cov90"] == pytest.approx(0.9, abs=0.02)
    assert m["crps"] == pytest.approx(1 / np.sqrt(np.pi), rel=0.05)  # E|N(0,2)| - E|N(0,2)| / 2


def test_point_forecast_coverage_counts_exact_hits():
    truth = np.array([0.0, 0.0, 1.0, 2.0])
    assert probabilistic_metrics(truth, np.array([0.0, 1.0, 1.0, 0.0]))["cov90"] == pytest.approx(0.5)


def test_score_has_eight_keys_and_uses_the_sample_mean_for_point_metrics():
    rng = np.random.default_rng(6)
    y = rng.random((8, 2, 3))
    samples = y[None] + rng.normal(scale=0.1, size=(20, 8, 2, 3))
    result = score(y, samples)
    assert tuple(result) == METRIC_KEYS
    assert result["mse"] == pytest.approx(point_metrics(y, samples.mean(axis=0))["mse"])
    with pytest.raises(ValueError, match="do not match"):
        score(y, samples[:, :4])


def test_per_service_r2_uses_the_last_axis():
    rng = np.random.default_rng(7)
    y = rng.random((30, 2, 3))
    p = y.copy()
    p[..., 1] = y[..., 1].mean()
    r2 = per_service_r2(y, p, ["a", "b", "c"])
    assert r2["a"] == pytest.approx(1.0) and r2["c"] == pytest.approx(1.0)
    assert r2["b"] == pytest.approx(0.0, abs=1e-12)
    assert per_service_r2(y, np.stack([p, p]), ["a", "b", "c"]) == pytest.approx(r2)  # sample axis averaged
    with pytest.raises(ValueError, match="service names"):
        per_service_r2(y, p, ["a", "b"])


def test_mse_by_step_averages_everything_but_the_step_axis():
    y = np.zeros((2, 3, 2))
    p = np.zeros((2, 3, 2))
    p[:, 1] = 1.0
    p[0, 2, 0] = 2.0  # 4 / 4 values at step 3
    assert mse_by_step(y, p) == pytest.approx([0.0, 1.0, 1.0])
    assert mse_by_step(y, np.stack([p, p])) == pytest.approx([0.0, 1.0, 1.0])
    assert np.allclose(mse_by_step_and_service(y, p), [[0, 0], [1, 1], [2, 0]])


def test_r2_gain_interval_is_a_paired_bootstrap_over_entities():
    from engine.evaluation.metrics import r2_gain_interval

    rng = np.random.default_rng(3)
    entities = np.repeat(np.arange(60), 24)  # 60 users x 24 hours
    y = rng.normal(size=(len(entities), 1, 4)) + entities[:, None, None] % 5
    worse = y + rng.normal(scale=1.0, size=y.shape)
    better = y + rng.normal(scale=0.7, size=y.shape)
    gain = r2_gain_interval(y, better, worse, entities, resamples=400)
    expected = 100 * (r2_score(y, better) - r2_score(y, worse)) / abs(r2_score(y, worse))
    assert gain["gain"] == pytest.approx(expected, abs=1e-3)  # the same R² as the tables'
    assert 0 < gain["low"] < gain["gain"] < gain["high"] and gain["p_not_better"] == 0.0
    # Two forecasts of the same quality: the interval straddles 0.
    twin = y + rng.normal(scale=1.0, size=y.shape)
    tie = r2_gain_interval(y, twin, worse, entities, resamples=400)
    assert tie["low"] < 0 < tie["high"] and 0.05 < tie["p_not_better"] < 0.95
    # Identical forecasts: exactly no gain; samples (a leading axis) are reduced to their mean.
    same = r2_gain_interval(y, np.stack([worse, worse]), worse, entities, resamples=50)
    assert same["gain"] == same["low"] == same["high"] == 0.0
    with pytest.raises(ValueError, match="groups"):
        r2_gain_interval(y, better, worse, entities[:-1])
