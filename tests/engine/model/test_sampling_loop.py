"""The samplers as specifications: each step against its paper's equation written out by hand, whole loops
on a denoiser whose answer is known, and whole loops of a tiny fixed model pinned to numbers (as diffusers'
scheduler tests pin theirs). A change that moves the pinned numbers changes every forecast: it must be
meant, and the numbers are then re-pinned with the reason in the commit."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from engine.model.config import CONFIGS
from engine.model.denoiser import Denoiser, HistoryCache
from engine.model.diffusion import Schedule, Standardiser, ddim_step, ddim_timesteps, ddpm_step, noise_schedule, sample

# The shipped layout (linear mean feature, environment profile, AdaLN condition), shrunk.
CONFIG = replace(CONFIGS["lsdm"], channels=8, heads=2, blocks=1, history=6, diffusion_steps=20, beta_end=0.8)
K, D, WINDOWS, SAMPLES = 3, 2, 2, 3
STANDARDISER = Standardiser(0.5, 0.05)  # u in [-10, 10] is the data range v in [0, 1]


def _alpha_bars_by_hand(config) -> list[float]:
    """alpha-bar_t = prod_{s <= t} (1 - beta_s), beta from CSDI's quadratic schedule, in plain Python."""
    n, root_start, root_end = config.diffusion_steps, config.beta_start**0.5, config.beta_end**0.5
    betas = [(root_start + (root_end - root_start) * i / (n - 1)) ** 2 for i in range(n)]
    return [math.prod(1 - b for b in betas[: t + 1]) for t in range(n)]


def _tiny_model() -> Denoiser:
    """Every weight and buffer drawn from one seeded generator: the same model on every machine."""
    model = Denoiser(CONFIG, env_dim=D, n_services=K)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.copy_(0.2 * torch.randn(tensor.shape, generator=g))
    return model.eval()


def _tiny_cache(model: Denoiser, keep_env: torch.Tensor | None = None) -> HistoryCache:
    g = torch.Generator().manual_seed(1)
    length = CONFIG.history + CONFIG.horizon
    history = torch.rand(WINDOWS, CONFIG.history, K, generator=g)
    hours = torch.randint(0, 24, (WINDOWS, length), generator=g)
    days = torch.randint(0, 7, (WINDOWS, length), generator=g)
    env = torch.randn(WINDOWS, length, 2 * D, generator=g)  # [z_env, the usual z_env]
    profile = torch.rand(WINDOWS, length, K, generator=g)
    with torch.no_grad():
        return model.encode_history(history, hours, days, env, keep_env, profile)


# --- one step against the equation -------------------------------------------------------------------------


def test_the_schedule_is_csdis_quadratic_one():
    betas = noise_schedule(CONFIG)
    assert betas[0] == pytest.approx(CONFIG.beta_start) and betas[-1] == pytest.approx(CONFIG.beta_end)
    roots = betas.sqrt()
    assert torch.allclose(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(len(roots) - 1), atol=1e-12)
    assert torch.allclose(
        Schedule.from_config(CONFIG).alpha_bars.double(),
        torch.tensor(_alpha_bars_by_hand(CONFIG), dtype=torch.float64),
        rtol=1e-6,
    )
    assert CONFIG.final_alpha_bar() == pytest.approx(_alpha_bars_by_hand(CONFIG)[-1], rel=1e-12)


def test_a_ddim_step_is_song_et_al_equation_12_with_eta_zero():
    """x_{t-1} = sqrt(a_{t-1}) (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) + sqrt(1 - a_{t-1}) eps, a = alpha-bar;
    with steps == T the DDIM loop takes every step T - 1 .. 0."""
    schedule, ab = Schedule.from_config(CONFIG), _alpha_bars_by_hand(CONFIG)
    g = torch.Generator().manual_seed(2)
    x_t, eps = torch.randn(4, 1, K, generator=g), torch.randn(4, 1, K, generator=g)
    t = 7
    x0 = (x_t.double() - math.sqrt(1 - ab[t]) * eps.double()) / math.sqrt(ab[t])
    by_hand = math.sqrt(ab[t - 1]) * x0 + math.sqrt(1 - ab[t - 1]) * eps.double()
    step = ddim_step(schedule, x_t, eps, t, t - 1, -100.0, 100.0)  # bounds far away: nothing clipped
    assert torch.allclose(step.double(), by_hand, atol=1e-5)
    assert torch.allclose(ddim_step(schedule, x_t, eps, t, None, -100.0, 100.0).double(), x0, atol=1e-5)  # last
    assert ddim_timesteps(CONFIG.diffusion_steps, CONFIG.diffusion_steps) == list(range(CONFIG.diffusion_steps))[::-1]
    assert ddim_timesteps(CONFIG.diffusion_steps, 5) == [19, 14, 10, 5, 0]
    assert ddim_timesteps(CONFIG.diffusion_steps, 99) == ddim_timesteps(CONFIG.diffusion_steps, CONFIG.diffusion_steps)


def test_a_ddpm_step_is_ho_et_al_algorithm_2():
    """x_{t-1} = (x_t - beta_t / sqrt(1 - a_t) eps) / sqrt(alpha_t) + sigma_t z (Eq. 11, Alg. 2) with
    sigma_t^2 = beta-tilde_t = beta_t (1 - a_{t-1}) / (1 - a_t) (Eq. 7); no noise at the last step. The code
    writes the mean as Eq. 7's posterior mean of the (clipped) x0 estimate: the same where nothing is
    clipped."""
    schedule, ab = Schedule.from_config(CONFIG), _alpha_bars_by_hand(CONFIG)
    g = torch.Generator().manual_seed(3)
    x_t, eps, z = (torch.randn(4, 1, K, generator=g) for _ in range(3))
    for t in (11, 1):
        beta = 1 - ab[t] / ab[t - 1]
        mean = (x_t.double() - beta / math.sqrt(1 - ab[t]) * eps.double()) / math.sqrt(1 - beta)
        by_hand = mean + math.sqrt(beta * (1 - ab[t - 1]) / (1 - ab[t])) * z.double()
        assert torch.allclose(ddpm_step(schedule, x_t, eps, t, -100.0, 100.0, z).double(), by_hand, atol=1e-4), t
    # t = 0: the x0 estimate itself (to the float32 rounding of beta_0 / (1 - alpha-bar_0), which is 1 exactly)
    last = (x_t.double() - math.sqrt(1 - ab[0]) * eps.double()) / math.sqrt(ab[0])
    assert torch.allclose(ddpm_step(schedule, x_t, eps, 0, -100.0, 100.0, None).double(), last, atol=1e-3)


# --- whole loops on a denoiser whose answer is known --------------------------------------------------------


class _PointMassDenoiser:
    """The ideal denoiser of data that is always ``v_star``: it predicts the exact noise,
    eps = (x_t - sqrt(alpha-bar_t) u*) / sqrt(1 - alpha-bar_t), u* = v_star standardised."""

    def __init__(self, v_star: torch.Tensor) -> None:
        self.config = CONFIG
        self.alpha_bars = Schedule.from_config(CONFIG).alpha_bars
        self.u_star = STANDARDISER.forward(v_star)

    def denoise_target(self, cache: HistoryCache, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bars[t].view(-1, 1, 1)
        return (x_t - ab.sqrt() * self.u_star) / (1 - ab).sqrt()


def _empty_cache() -> HistoryCache:
    return HistoryCache([], torch.zeros(WINDOWS, 1, 4), torch.zeros(WINDOWS, K, 1, 4))


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddim", 5), ("ddim", 20)])
def test_both_loops_give_back_the_one_point_the_ideal_denoiser_knows_from_any_noise(sampler, steps):
    v_star = torch.tensor([0.2, 0.55, 0.9])
    for seed in (0, 1):
        draws = sample(
            _PointMassDenoiser(v_star),
            Schedule.from_config(CONFIG),
            STANDARDISER,
            _empty_cache(),
            5,
            sampler=sampler,
            steps=steps,
            generator=torch.Generator().manual_seed(seed),
            antithetic=5,
        )
        assert draws.shape == (WINDOWS * 5, 1, K)
        assert torch.allclose(draws, v_star.expand_as(draws), atol=1e-4), (seed, draws[:, 0])


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddim", 5)])
def test_x0_estimates_are_clipped_to_the_training_datas_range(sampler, steps):
    """Data the ideal denoiser places beyond the range seen in training (v > 1, v < 0) comes out at its bounds:
    a recursive forecast cannot feed back a sample larger than the largest hour of training."""
    v_star = torch.tensor([3.0, -2.0, 0.5])
    draws = sample(
        _PointMassDenoiser(v_star),
        Schedule.from_config(CONFIG),
        STANDARDISER,
        _empty_cache(),
        4,
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(draws, torch.tensor([1.0, 0.0, 0.5]).expand_as(draws), atol=1e-4)


# --- whole loops of a tiny fixed model, pinned ----------------------------------------------------------------


def test_the_full_ddpm_loop_of_a_tiny_fixed_model_gives_the_pinned_samples():
    model = _tiny_model()
    draws = sample(
        model,
        Schedule.from_config(CONFIG),
        STANDARDISER,
        _tiny_cache(model),
        SAMPLES,
        sampler="ddpm",
        generator=torch.Generator().manual_seed(0),
    )
    assert draws.shape == (WINDOWS * SAMPLES, 1, K)
    assert torch.allclose(draws[:, 0], torch.tensor(PINNED["ddpm"]["samples"]), atol=1e-5), draws[:, 0].tolist()
    assert float(draws.mean()) == pytest.approx(PINNED["ddpm"]["mean"], abs=1e-5)
    assert float(draws.std()) == pytest.approx(PINNED["ddpm"]["std"], abs=1e-5)


def test_the_full_ddim_loop_with_guidance_and_antithetic_noise_gives_the_pinned_samples():
    model = _tiny_model()
    cache = _tiny_cache(model)
    null = _tiny_cache(model, keep_env=torch.zeros(WINDOWS, dtype=torch.bool))
    draws = sample(
        model,
        Schedule.from_config(CONFIG),
        STANDARDISER,
        cache,
        SAMPLES,
        sampler="ddim",
        steps=5,
        guidance=2.0,
        null_cache=null,
        generator=torch.Generator().manual_seed(0),
        antithetic=SAMPLES,
    )
    assert draws.shape == (WINDOWS * SAMPLES, 1, K)
    assert torch.allclose(draws[:, 0], torch.tensor(PINNED["ddim"]["samples"]), atol=1e-5), draws[:, 0].tolist()
    assert float(draws.mean()) == pytest.approx(PINNED["ddim"]["mean"], abs=1e-5)
    assert float(draws.std()) == pytest.approx(PINNED["ddim"]["std"], abs=1e-5)


# (WINDOWS * SAMPLES, K) samples on the v scale, their mean and standard deviation. Computed with the samplers
# as they were before they were split into ddpm_step/ddim_step (commit 6da2763); the split changed no bit.
PINNED = {
    "ddpm": {
        "samples": [
            [0.608337, 0.818263, 0.968230],
            [0.974724, 0.000083, 0.018513],
            [0.974260, 0.035119, 0.982905],
            [0.972665, 0.066726, 0.752959],
            [0.994975, 0.019228, 0.820767],
            [0.756830, 0.064574, 0.996297],
        ],
        "mean": 0.601414,
        "std": 0.425960,
    },
    "ddim": {
        "samples": [
            [1.000000, 0.000000, 0.000000],
            [0.994927, 0.000000, 0.000000],
            [0.000000, 0.025129, 1.000000],
            [0.986054, 0.462409, 0.739880],
            [0.619626, 0.000000, 0.481006],
            [0.626126, 0.000000, 0.975193],
        ],
        "mean": 0.439464,
        "std": 0.434273,
    },
}
