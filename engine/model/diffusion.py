"""Epsilon-prediction DDPM: noise schedule, training loss and samplers (paper Sec. III-B, IV-B).

Values inside the diffusion are standardised: u = (v - mean) / std with v the normalised traffic
(engine/data/windows.py) and mean/std fitted on training windows. Samples are mapped back and
clipped at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import interrupt_check
from engine.model.config import ModelConfig, noise_schedule
from engine.model.denoiser import Denoiser, HistoryCache


@dataclass
class Schedule:
    """beta_t, alpha_t = 1 - beta_t and alpha-bar_t = prod_{s <= t} alpha_s, each (T,) float32."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor

    @classmethod
    def from_config(cls, config: ModelConfig) -> Schedule:
        betas = noise_schedule(config)
        alphas = 1 - betas
        return cls(betas.float(), alphas.float(), torch.cumprod(alphas, 0).float())

    def to(self, device: torch.device | str) -> Schedule:
        """The same schedule on ``device`` (the model's: training and sampling index it per window)."""
        return Schedule(self.betas.to(device), self.alphas.to(device), self.alpha_bars.to(device))


@dataclass
class Standardiser:
    """u = (v - mean) / std; fitted on the training windows' values."""

    mean: float
    std: float

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return (v - self.mean) / self.std

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return (u * self.std + self.mean).clamp(min=0)

    def to_v(self, u: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Back to the v scale; with a prior mean ``offset``, u is a standardised residual around it."""
        if offset is None:
            return self.inverse(u)
        return (u * self.std + self.mean + offset).clamp(min=0)

    def from_v(self, v: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(v if offset is None else v - offset)


def diffusion_loss(
    model: Denoiser,
    schedule: Schedule,
    standardiser: Standardiser,
    batch: dict,
    generator: torch.Generator | None = None,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    keep_env: torch.Tensor | None = None,
    draws: int | None = None,
) -> torch.Tensor:
    """l1 * MSE(eps_hat, eps) + l2 * (1 - cos(x0_hat, x0)) (Sec. IV-B).

    The cosine term compares the target implied by the predicted noise with the true target, per
    window, on the normalised scale v; it is weighted by sqrt(alpha_bar_t) because x0_hat is only
    meaningful where the signal has not drowned in noise, and windows whose true target is all zero
    (no traffic at all) are left out of it (the cosine is undefined there).

    ``draws`` (default: as many as ``t`` has per window, else ``config.noise_draws``): diffusion steps and
    noises drawn per window. With more than one, the history is encoded once per window and only the
    target hours are denoised, D times (the inference path, ``encode_history``/``denoise_target``, which
    equals the full pass): D loss terms for little more than the cost of one, since the target is 1 hour
    and the history 24. ``t`` and ``noise``, when given, are per (window, draw) row: (B * D,) and
    (B * D, F, K), draws of a window consecutive.
    """
    config = model.config
    # Every random draw comes from ``generator`` on the CPU and is then moved to the model's device: a seed
    # gives the same noise on CPU and CUDA, so the two devices agree up to floating point.
    device = batch["target"].device
    schedule = schedule.to(device)
    if draws is None:  # given steps say how many draws there are; else the configuration's
        draws = t.shape[0] // batch["target"].shape[0] if t is not None else config.noise_draws
    draws = max(1, int(draws))
    prior = model.prior_mean(batch["history"], batch.get("profile"), batch["env"], batch["hours"], batch["days"])
    x0 = standardiser.from_v(batch["target"], prior)  # (B, F, K); the residual around the prior if any
    b = x0.shape[0]
    if keep_env is None and config.cond_dropout > 0 and model.training:
        keep_env = torch.rand(b, generator=generator) >= config.cond_dropout
    if keep_env is not None:
        keep_env = keep_env.to(device)
    if draws > 1:
        x0, target = x0.repeat_interleave(draws, 0), batch["target"].repeat_interleave(draws, 0)
        prior = None if prior is None else prior.repeat_interleave(draws, 0)
    else:
        target = batch["target"]
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, config.diffusion_steps, (n,), generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator)
    t, noise = t.to(device), noise.to(device)
    ab = schedule.alpha_bars[t].view(n, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # Eq. 1 in closed form
    if draws > 1:
        cache = model.encode_history(
            batch["history"], batch["hours"], batch["days"], batch["env"], keep_env, batch.get("profile")
        )
        eps = model.denoise_target(cache, x_t, t)
    else:
        eps = model(
            batch["history"], x_t, t, batch["hours"], batch["days"], batch["env"], keep_env, batch.get("profile")
        )
    loss = config.l1 * F.mse_loss(eps, noise)  # Eq. 5
    if config.l2 > 0:
        x0_hat = ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-10, 10)
        v_hat = standardiser.to_v(x0_hat, prior).flatten(1)
        v_true = target.flatten(1)
        # A mask, not a selection: the same sum without a host round trip (a data-dependent shape).
        active = (v_true.norm(dim=1) > 0).to(v_hat.dtype)
        cosine = F.cosine_similarity(v_hat, v_true, dim=1, eps=1e-8)
        weight = ab.view(n).sqrt() * active
        # No active window (all targets zero): the term is 0, as before.
        loss = loss + config.l2 * ((1 - cosine) * weight).sum() / weight.sum().clamp(min=1e-8)
    return loss


def _guided_eps(
    model: Denoiser, cache: HistoryCache, null_cache: HistoryCache | None, x: torch.Tensor, t: int, guidance: float
) -> torch.Tensor:
    steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps = model.denoise_target(cache, x, steps)
    if null_cache is not None and guidance != 1.0:
        # Classifier-free guidance: eps_u + g * (eps_c - eps_u)
        eps_uncond = model.denoise_target(null_cache, x, steps)
        eps = eps_uncond + guidance * (eps - eps_uncond)
    return eps


NoiseSource = torch.Generator | Sequence[torch.Generator] | None


def paired_noise(shape: tuple[int, ...], generator: NoiseSource, block: int = 1) -> torch.Tensor:
    """Standard normal noise of ``shape`` (rows first). With ``block`` >= 2, the rows form consecutive
    blocks of ``block`` (one entity's sample paths) whose second half is the negation of the first
    (antithetic pairs; an odd block's last row is unpaired). Each row is still an exact N(0, I) draw, so
    every sample path is a sample of the model; only the sample *mean* changes: the pairs' errors cancel
    to first order, so the mean of S paired samples is a much better estimate of the model's
    conditional mean than that of S independent ones (docs/model.md#antithetic-pairs).

    ``generator`` a sequence of G generators (one per entity, ``entity_generators``): the rows are G equal
    consecutive groups, group g drawn from generator g alone, so an entity's noise does not depend on the
    other entities in the batch (docs/model.md#per-entity-noise)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        groups = len(generator)
        if groups == 0 or shape[0] % groups:
            raise ValueError(f"{shape[0]} noise rows do not split into {groups} equal groups")
        part = (shape[0] // groups, *shape[1:])
        return torch.cat([paired_noise(part, g, block) for g in generator], dim=0)
    rows = shape[0]
    if block < 2 or rows % block:
        return torch.randn(shape, generator=generator)
    half = torch.randn((rows // block, (block + 1) // 2, *shape[1:]), generator=generator)
    return torch.cat([half, -half[:, : block // 2]], dim=1).reshape(shape)


def entity_generators(seed: int, entities: Sequence[int]) -> list[torch.Generator]:
    """One noise generator per entity row of a forecast with this seed: the entity's sample paths are the same
    alone or in any batch (and so a city-wide run can be split across processes or machines). An entity listed
    n times (an event's visitors, copies of one profile) gets n different generators: its 1st, 2nd, ...
    occurrence in the list."""
    generators, seen = [], dict[int, int]()
    for entity in entities:
        nth = seen[int(entity)] = seen.get(int(entity), -1) + 1
        state = np.random.SeedSequence([seed, int(entity), nth, 0x0D1FF]).generate_state(2, np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1))
    return generators


def predict_x0(
    schedule: Schedule, x_t: torch.Tensor, eps: torch.Tensor, t: int, lo: float | torch.Tensor, hi: float | torch.Tensor
) -> torch.Tensor:
    """The x0 that x_t and the predicted noise imply (Ho et al. 2020, Eq. 15), clipped to [lo, hi]."""
    ab = schedule.alpha_bars
    # clamp takes numbers or tensors as bounds; torch's stubs type the two overloads apart
    return ((x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(cast(torch.Tensor, lo), cast(torch.Tensor, hi))


def ddpm_step(
    schedule: Schedule,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Alg. 2), with the x0 estimate clipped.

    Steps are numbered 0 .. T - 1 here (1 .. T in the paper). ``noise`` ~ N(0, I) of x_t's shape; None at
    t = 0, the last step, which adds none."""
    ab = schedule.alpha_bars
    # 1. predicted x0 (Eq. 15), clipped to the data range
    x0 = predict_x0(schedule, x_t, eps, t, lo, hi)
    # 2. mean of the posterior q(x_{t-1} | x_t, x0) (Eq. 7); with an unclipped x0 it is Eq. 11's mu_theta
    ab_prev = ab[t - 1] if t > 0 else ab.new_tensor(1.0)
    beta = schedule.betas[t]
    mean = (ab_prev.sqrt() * beta / (1 - ab[t])) * x0 + (schedule.alphas[t].sqrt() * (1 - ab_prev) / (1 - ab[t])) * x_t
    if t == 0:
        return mean
    # 3. x_{t-1} = mean + sigma_t z with sigma_t^2 = beta-tilde_t = beta_t (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t)
    #    (Eq. 7; Alg. 2 line 4)
    variance = beta * (1 - ab_prev) / (1 - ab[t])
    assert noise is not None, "every DDPM step but the last adds noise"
    return mean + variance.sqrt() * noise


def ddim_step(
    schedule: Schedule,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int | None,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
) -> torch.Tensor:
    """One deterministic DDIM step x_t -> x_{t_prev} (Song et al. 2021, Eq. 12 with eta = 0, so sigma_t = 0;
    their alpha_t is alpha-bar_t here), with the x0 estimate clipped. ``t_prev`` None: the last step,
    which returns the x0 estimate (alpha-bar_prev = 1)."""
    ab = schedule.alpha_bars
    # 1. "predicted x0" of Eq. 12 (Ho et al. Eq. 15), clipped to the data range
    x0 = predict_x0(schedule, x_t, eps, t, lo, hi)
    if t_prev is None:
        return x0
    # 2. the noise that x_t and the clipped x0 imply (equal to eps where nothing was clipped)
    eps = (x_t - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()
    # 3. x_{t_prev} = sqrt(alpha-bar_prev) x0 + sqrt(1 - alpha-bar_prev - sigma_t^2) eps (+ sigma_t z), sigma_t = 0
    ab_prev = ab[t_prev]
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


def ddim_timesteps(diffusion_steps: int, steps: int) -> list[int]:
    """``steps`` diffusion steps evenly spaced from T - 1 down to 0 (clamped to 1 .. T): DDIM's sub-sequence."""
    steps = max(1, min(steps, diffusion_steps))
    return torch.linspace(diffusion_steps - 1, 0, steps).round().long().tolist()


@torch.no_grad()
def sample(
    model: Denoiser,
    schedule: Schedule,
    standardiser: Standardiser,
    cache: HistoryCache,
    n_samples: int,
    *,
    sampler: str = "ddim",
    steps: int = 10,
    guidance: float = 1.0,
    null_cache: HistoryCache | None = None,
    generator: NoiseSource = None,
    x_T: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    antithetic: int = 0,
) -> torch.Tensor:
    """Targets for every cached window, ``n_samples`` each: (B * n_samples, F, K) on the v scale.

    ``sampler``: "ddpm" (ancestral, all T steps, faithful to the paper: ``ddpm_step``) or "ddim"
    (deterministic DDIM, eta = 0, ``steps`` evenly spaced steps, fast: ``ddim_step``). ``antithetic``: 0 for
    independent noise, else the size of the row blocks that share antithetic noise (``paired_noise``):
    ``n_samples`` when the rows are windows x samples, the path count when each row is one path of a
    recursive forecast. ``offset`` (B * n_samples, F, K): the prior mean of each sample (a model with
    ``prior``): the diffusion then samples the residual around it.
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {sampler!r}: expected 'ddpm' or 'ddim'")
    config = model.config
    b = cache.windows
    k = cache.target_side.shape[1]
    shape = (b * n_samples, config.horizon, k)
    # Noise is drawn on the CPU from ``generator`` and moved to the model's device (as in ``diffusion_loss``).
    device = cache.target_side.device
    schedule = schedule.to(device)
    x = (paired_noise(shape, generator, antithetic) if x_T is None else x_T).to(device)  # x_T  (B * S, F, K)
    # x0 estimates stay inside the range of the training data, v in [0, 1] (v = 1 is the largest hour seen in
    # training; why not looser: docs/model.md#samplers).
    lo: float | torch.Tensor
    hi: float | torch.Tensor
    if offset is None:
        lo, hi = float(standardiser.forward(torch.tensor(0.0))), float(standardiser.forward(torch.tensor(1.0)))
    else:  # the same range for prior + residual
        lo = standardiser.from_v(torch.zeros_like(offset), offset)
        hi = standardiser.from_v(torch.ones_like(offset), offset)
    if sampler == "ddpm":
        for t in reversed(range(config.diffusion_steps)):
            interrupt_check()
            eps = _guided_eps(model, cache, null_cache, x, t, guidance)
            noise = paired_noise(shape, generator, antithetic).to(device) if t > 0 else None
            x = ddpm_step(schedule, x, eps, t, lo, hi, noise)
    else:
        timesteps = ddim_timesteps(config.diffusion_steps, steps)
        for t, t_prev in zip(timesteps, [*timesteps[1:], None], strict=True):
            interrupt_check()
            eps = _guided_eps(model, cache, null_cache, x, t, guidance)
            x = ddim_step(schedule, x, eps, t, t_prev, lo, hi)
    return standardiser.to_v(x, offset)
