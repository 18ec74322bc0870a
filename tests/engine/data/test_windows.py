"""The hourly profiles and the windows' environment input (engine/data/windows.py), on a hand-made series."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from engine.data.windows import HourlyProfile, SeriesData, SplitSpec, Windows, gather

K, D, DAYS = 2, 3, 4
EMBEDDING = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0], [0.0, 0.0, 0.0]], np.float32)  # cell 3: none


def _series() -> SeriesData:
    """Entity 0 lives in cell 0, except at 09:00, where it was in cell 1, then 2, then 3 (no embedding), then 1;
    entity 1's cell is never known."""
    hours = 24 * DAYS
    location = np.zeros((2, hours), np.int64)
    location[0, 9::24] = [1, 2, 3, 1]
    location[1] = -1
    traffic = np.arange(2 * hours * K, dtype=float).reshape(2, hours, K)
    return SeriesData(
        "hand-made",
        ["a", "b"],
        np.array([1, 2]),
        ["u0", "u1"],
        traffic,
        location,
        np.arange(4),
        ["c0", "c1", "c2", "c3"],
        EMBEDDING.copy(),
        datetime(2016, 4, 18),
    )


def test_the_environment_profile_is_the_mean_embedding_of_the_entitys_known_cells_at_that_hour_of_day():
    series = _series()
    values = series.traffic.astype(np.float32)
    before = 24 * 3  # days 0-2: at 09:00 cells 1, 2 and 3 (which has no embedding, so does not count)
    profile = HourlyProfile.build(series, values, before, env=True)
    assert profile.has_env
    nine_on_day_3 = np.array([24 * 3 + 9])
    assert np.allclose(profile.env_at(np.array([0]), nine_on_day_3), (EMBEDDING[1] + EMBEDDING[2]) / 2)
    # Any other hour: always cell 0. The profile reaches beyond the data like the traffic profile does.
    assert np.allclose(profile.env_at(np.array([0, 0]), np.array([24 * 3 + 10, 24 * 9 + 3])), EMBEDDING[0])
    # Inside the profile's hours, a training window leaves its own hour's cell out (as ``at`` leaves out its
    # own traffic): day 1 at 09:00 was in cell 2, so what remains is cell 1.
    assert np.allclose(profile.env_at(np.array([0]), np.array([24 + 9]), leave_out=True), EMBEDDING[1])
    assert np.allclose(profile.env_at(np.array([0]), np.array([24 + 9])), (EMBEDDING[1] + EMBEDDING[2]) / 2)
    # Day 2 at 09:00 was in the cell without embedding: nothing to leave out.
    assert np.allclose(
        profile.env_at(np.array([0]), np.array([48 + 9]), leave_out=True), (EMBEDDING[1] + EMBEDDING[2]) / 2
    )
    # An entity never seen in a known cell gets the average place (the cells' mean embedding).
    assert np.allclose(profile.env_at(np.array([1]), np.array([5])), EMBEDDING[:3].mean(0))
    # Entities x hours, as a forecast asks: (E, 1) and (1, L) broadcast to (E, L, D).
    grid = profile.env_at(np.array([[0], [1]]), np.array([[81, 82, 83]]))
    assert grid.shape == (2, 3, D)
    assert np.allclose(grid[0, 0], (EMBEDDING[1] + EMBEDDING[2]) / 2) and np.allclose(grid[0, 1], EMBEDDING[0])
    assert np.allclose(grid[1], EMBEDDING[:3].mean(0))


def test_the_environment_profile_reads_the_places_as_they_were_when_told():
    series = _series()
    values = series.traffic.astype(np.float32)
    edited = EMBEDDING.copy()
    edited[1] = [9.0, 9.0, 9.0]
    as_they_were = HourlyProfile.build(series, values, 72, env=True, history_env=edited)
    assert np.allclose(as_they_were.env_at(np.array([0]), np.array([81])), (edited[1] + edited[2]) / 2)
    assert np.array_equal(series.env, EMBEDDING)  # the series is not touched


def test_a_window_reads_the_cells_embedding_and_with_the_environment_profile_the_usual_one_beside_it():
    series = _series()
    values = series.traffic.astype(np.float32)
    spec = SplitSpec(history=3, horizon=1)
    windows = Windows(np.array([0, 0]), np.array([24 * 3 + 9, 24 * 3 + 10]))
    plain = gather(series, values, windows, spec, HourlyProfile.build(series, values, 72))
    assert plain.env.shape == (2, 4, D)
    assert np.allclose(plain.env[0, -1], EMBEDDING[1]) and np.allclose(plain.env[1, -1], EMBEDDING[0])
    both = gather(series, values, windows, spec, HourlyProfile.build(series, values, 72, env=True))
    assert both.env.shape == (2, 4, 2 * D)
    assert np.array_equal(both.env[..., :D], plain.env)
    assert np.allclose(both.env[0, -1, D:], (EMBEDDING[1] + EMBEDDING[2]) / 2)  # where it usually is at 09:00
    assert np.allclose(both.env[1, -1, D:], EMBEDDING[0])
    with pytest.raises(ValueError, match="without the environment"):
        HourlyProfile.build(series, values, 72).env_at(np.array([0]), np.array([5]))


def test_a_series_without_embeddings_has_no_environment_profile():
    series = _series()
    series.env = np.zeros((4, 0), np.float32)
    values = series.traffic.astype(np.float32)
    assert not HourlyProfile.build(series, values, 72, env=True).has_env


def test_a_one_week_series_trains_on_four_days_validates_on_the_sixth_and_tests_on_the_last_and_says_so():
    from dataclasses import replace

    from engine.data.windows import make_splits

    week = _series()
    week = replace(
        week,
        traffic=np.ones((2, 168, K)),
        location=np.zeros((2, 168), np.int64),
    )
    splits = make_splits(week, SplitSpec(history=24))
    assert (splits.train.hour.min(), splits.train.hour.max()) == (24, 119)
    assert (splits.val.hour.min(), splits.val.hour.max(), splits.test.hour.min()) == (120, 143, 144)
    assert splits.describe() == (
        "split 'time': training targets at hours 24-119 (4 days after the first 24 h of history), "
        "validation 120-143, test 144-167"
    )
    with pytest.raises(Exception, match="needs at least 96"):
        make_splits(replace(week, traffic=np.ones((2, 95, K)), location=np.zeros((2, 95), np.int64)), SplitSpec())
