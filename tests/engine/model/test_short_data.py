"""Short data (docs/model.md#short-data): where the training hours do not cover every weekday with a whole day,
`fit` takes the day of the week out of the model (denoiser and linear mean), and says so."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import numpy as np
import torch

from engine.data.windows import SeriesData, SplitSpec, make_splits
from engine.model.config import CONFIGS
from engine.model.denoiser import Denoiser
from engine.model.prior import MeanPrior
from engine.train import adapt_to_data


def _series(days: int) -> SeriesData:
    hours = 24 * days
    return SeriesData(
        "short",
        ["a"],
        np.array([1, 2]),
        ["e0", "e1"],
        np.ones((2, hours, 1)),
        np.zeros((2, hours), np.int64),
        np.arange(1),
        ["c0"],
        np.zeros((1, 0), np.float32),
        datetime(2024, 1, 1),  # a Monday
    )


def test_a_week_turns_the_day_of_the_week_off_and_two_weeks_keep_it():
    week = _series(7)
    config, adapted = adapt_to_data(CONFIGS["tiny"], week, make_splits(week, SplitSpec(history=24)))
    assert config.day_of_week is False  # trains Tuesday-Friday; validates Saturday, tests Sunday
    assert adapted == ["day of the week off: the training hours cover 4 of 7 weekdays with a whole day"]
    fortnight = _series(14)
    config, adapted = adapt_to_data(CONFIGS["tiny"], fortnight, make_splits(fortnight, SplitSpec(history=24)))
    assert config.day_of_week is True and adapted == []


def test_without_the_day_of_the_week_the_model_and_the_linear_mean_do_not_read_it():
    hours = torch.arange(25)[None].repeat(2, 1) % 24
    monday, saturday = torch.zeros_like(hours), torch.full_like(hours, 5)
    history = torch.rand(2, 24, 3)
    profile, env = torch.rand(2, 1, 3), torch.zeros(2, 1, 0)
    for day_of_week in (True, False):
        config = replace(CONFIGS["tiny"], day_of_week=day_of_week, condition="none")
        torch.manual_seed(0)
        model = Denoiser(config, env_dim=0, n_services=3)
        same = torch.equal(model._side(hours, monday, 3), model._side(hours, saturday, 3))
        assert same is (not day_of_week)
        prior = MeanPrior(3, 0, uses_env=False, period_intercepts=True, day_of_week=day_of_week)
        at = (history, profile, env, hours[:, -1:])
        same = torch.equal(prior.features(*at, monday[:, -1:]), prior.features(*at, saturday[:, -1:]))
        assert same is (not day_of_week)
