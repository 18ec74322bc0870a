"""The LSDM denoiser: a time transformer over L hours, then a service transformer over K services
(2D attention, paper Sec. IV-C, Alg. 1), AdaLN-Zero modulation by the condition (DiT).

Tokens are laid out (B, K, L, C): K services x L = H + F hours, C channels (Alg. 1's (B, C, K, L)
with channels last). The first H hours carry the observed history, the last F the noisy target x_t.

Design decision (the paper leaves it open): the condition is per hour. At every hour l,
c_l = proj(z_env of the cell at hour l) (+ the diffusion-step embedding at target hours only).
History tokens never attend to target tokens and never see the diffusion step, so their
representation does not depend on x_t or t: it is computed once per forecast step (``encode_history``)
and each denoising step runs only the F target hours (``denoise_target``). Both paths give the same
numbers as the full pass (tests/engine/model/test_diffusion.py checks it); training uses the cached path
too when it draws several noises per window (``noise_draws``), else the full pass.

Inputs of a token: its value (observed or noisy), an is-target flag, the entity's hourly profile and,
with ``prior == "feature"`` (the default), at target tokens the linear conditional mean of
engine/model/prior.py (fitted in closed form on the training windows; it sees the environment only when
the model is conditioned on it). Why: the diffusion alone learned the environment's small shift of the
mean poorly within the CPU training budget, a linear fit of the same inputs did not, and the network
follows that fit when given it as an input, as it follows the profile (docs/model.md#the-linear-mean-feature).

The environment input of an hour (``env_profile``, the default) is [z_env of the cell at that hour, the
entity's usual z_env at that hour of day] (engine/data/windows.py HourlyProfile); both enter the
condition's projection and the linear mean (docs/model.md#the-environment-profile).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.prior import MeanPrior


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN (Alg. 1, lines 16-19)."""
    return x * (1 + scale) + shift


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the diffusion step: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention whose keys/values can be extended by cached ones."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, s, c = x.shape  # (N, S, C)
        q, k, v = self.qkv(x).view(n, s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (N, heads, S, C / heads)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, heads, S, C / heads)
        n, h, s, d = y.shape
        return self.out(y.transpose(1, 2).reshape(n, s, h * d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(*self.project(x), mask)


class Modulation(NamedTuple):
    """A block's AdaLN-Zero outputs, (B, 1, L, C) each (broadcast over the K services), in the order of its
    modulation layer's output: shift and scale after each sub-layer's LayerNorm, gate on its residual."""

    shift_time: torch.Tensor
    scale_time: torch.Tensor
    gate_time: torch.Tensor
    shift_service: torch.Tensor
    scale_service: torch.Tensor
    gate_service: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor


class Block(nn.Module):
    """Time attention over L, service attention over K, MLP; each sub-layer AdaLN-Zero modulated."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config.channels
        self.service_attention = config.service_attention
        self.norm_time = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.time_attn = Attention(c, config.heads)
        self.norm_service = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.service_attn = Attention(c, config.heads) if config.service_attention else None
        self.norm_mlp = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        hidden = int(c * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, c))
        # One linear map gives the nine ``Modulation`` outputs ("modulation.1.*" in saved weights).
        modulation = nn.Linear(c, len(Modulation._fields) * c)
        self.modulation = nn.Sequential(nn.SiLU(), modulation)
        nn.init.zeros_(modulation.weight)  # AdaLN-Zero: a fresh block is the identity
        nn.init.zeros_(modulation.bias)

    def _adaln(self, cond: torch.Tensor) -> Modulation:
        """cond (B, L, C) -> the nine (B, 1, L, C) modulation tensors."""
        return Modulation(*(m.unsqueeze(1) for m in self.modulation(cond).chunk(len(Modulation._fields), dim=-1)))

    def _service_and_mlp(self, x: torch.Tensor, mod: Modulation) -> torch.Tensor:
        b, k, seq, c = x.shape
        if self.service_attn is not None:
            h = modulate(self.norm_service(x), mod.shift_service, mod.scale_service)  # (B, K, L, C)
            h = h.permute(0, 2, 1, 3).reshape(b * seq, k, c)  # Alg. 1 line 10: (B*L, C, K)
            h = self.service_attn(h).view(b, seq, k, c).permute(0, 2, 1, 3)
            x = x + mod.gate_service * h
        h = modulate(self.norm_mlp(x), mod.shift_mlp, mod.scale_mlp)
        return x + mod.gate_mlp * self.mlp(h)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, time_mask: torch.Tensor) -> torch.Tensor:
        b, k, seq, c = x.shape  # (B, K, L, C)
        mod = self._adaln(cond)
        h = modulate(self.norm_time(x), mod.shift_time, mod.scale_time)
        h = h.reshape(b * k, seq, c)  # Alg. 1 line 4: (B*K, C, L)
        x = x + mod.gate_time * self.time_attn(h, time_mask).view(b, k, seq, c)
        return self._service_and_mlp(x, mod)

    # --- the cached path -------------------------------------------------------------------------

    def forward_history(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """History tokens only (they attend to history only); returns their output and the time
        attention's keys/values for the target tokens to use."""
        b, k, seq, c = x.shape
        mod = self._adaln(cond)
        h = modulate(self.norm_time(x), mod.shift_time, mod.scale_time).reshape(b * k, seq, c)
        q, key, value = self.time_attn.project(h)
        x = x + mod.gate_time * self.time_attn.attend(q, key, value, None).view(b, k, seq, c)
        return self._service_and_mlp(x, mod), (key, value)

    def forward_target(self, x: torch.Tensor, cond: torch.Tensor, cache: tuple, repeat: int) -> torch.Tensor:
        """Target tokens (B * repeat, K, F, C) attending to cached history keys/values of B windows."""
        b, k, f, c = x.shape
        mod = self._adaln(cond)
        h = modulate(self.norm_time(x), mod.shift_time, mod.scale_time).reshape(b * k, f, c)
        q, key, value = self.time_attn.project(h)  # (B*K, heads, F, d), B = B0 * S paths
        hist_key, hist_value = cache  # (B0*K, heads, H, d)
        heads, d = q.shape[1], q.shape[3]
        b0, n_hist = b // repeat, hist_key.shape[2]

        def by_window(t: torch.Tensor) -> torch.Tensor:  # -> (B0, K, heads, S, F, d)
            return t.view(b0, repeat, k, heads, f, d).permute(0, 2, 3, 1, 4, 5)

        # The S sample paths of a window share its history: they sit in the query axis, so the
        # cached keys/values are used as they are, never copied per path.
        q6, k6, v6 = by_window(q), by_window(key), by_window(value)
        hk = hist_key.view(b0, k, heads, n_hist, d)
        hv = hist_value.view(b0, k, heads, n_hist, d)
        scale = d**-0.5
        to_hist = (q6.reshape(b0, k, heads, repeat * f, d) @ hk.transpose(-1, -2)).view(b0, k, heads, repeat, f, n_hist)
        to_self = q6 @ k6.transpose(-1, -2)  # (B0, K, heads, S, F, F): within each path
        weights = (torch.cat([to_hist, to_self], dim=-1) * scale).softmax(dim=-1)
        attended = (weights[..., :n_hist].reshape(b0, k, heads, repeat * f, n_hist) @ hv).view(
            b0, k, heads, repeat, f, d
        ) + weights[..., n_hist:] @ v6
        attended = attended.permute(0, 3, 1, 4, 2, 5).reshape(b * k, f, heads * d)  # (B*K, F, C)
        x = x + mod.gate_time * self.time_attn.out(attended).view(b, k, f, c)
        return self._service_and_mlp(x, mod)


class FinalLayer(nn.Module):
    """LayerNorm, AdaLN modulation and a zero-initialised linear map to one value (Alg. 1, 15-20)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        modulation = nn.Linear(channels, 2 * channels)
        self.modulation = nn.Sequential(nn.SiLU(), modulation)
        self.linear = nn.Linear(channels, 1)
        for layer in (modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = (m.unsqueeze(1) for m in self.modulation(cond).chunk(2, dim=-1))
        return self.linear(modulate(self.norm(x), shift, scale)).squeeze(-1)  # (B, K, F)


@dataclass
class HistoryCache:
    """What ``encode_history`` computes once per forecast step."""

    caches: list[tuple]
    env_cond: torch.Tensor  # (B, F, C): projected environment of the target hours (condition)
    target_side: torch.Tensor  # (B, K, F, C): side-information embeddings of the target tokens
    _expanded: dict = field(default_factory=dict)

    @property
    def windows(self) -> int:
        return self.env_cond.shape[0]

    def expanded(self, repeat: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Target side information and condition repeated for ``repeat`` paths (computed once)."""
        if repeat == 1:
            return self.target_side, self.env_cond
        if repeat not in self._expanded:
            self._expanded[repeat] = (
                self.target_side.repeat_interleave(repeat, 0),
                self.env_cond.repeat_interleave(repeat, 0),
            )
        return self._expanded[repeat]


class Denoiser(nn.Module):
    """epsilon_theta(x_t, t | history, side information, environment)."""

    def __init__(self, config: ModelConfig, env_dim: int, n_services: int) -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.env_dim = env_dim
        # (value, is-target flag, the entity's hourly profile[, the linear mean feature]) -> channels
        self.value_in = nn.Linear(4 if config.prior_is_input else 3, c)
        self.hour_emb = nn.Embedding(24, c)
        self.day_emb = nn.Embedding(7, c)
        self.service_emb = nn.Embedding(n_services, c)
        self.lag_emb = nn.Embedding(config.history + config.horizon, c)  # position in the window
        self.step_mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        # The environment input: the cell's embedding, and with ``env_profile`` the entity's usual one at that
        # hour of day beside it (engine/data/windows.py HourlyProfile).
        self.env_proj = nn.Sequential(nn.Linear(max(config.env_width(env_dim), 1), c), nn.SiLU(), nn.Linear(c, c))
        self.null_env = nn.Parameter(torch.zeros(c))  # the "no condition" embedding (CFG)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.blocks))
        self.final = FinalLayer(c)
        # The linear conditional mean (engine/model/prior.py): the diffusion works around it (prior
        # "linear"), reads it as an input of the target tokens ("feature"), or both ("residual"); None
        # for "none".
        self.prior = (
            MeanPrior(
                n_services,
                env_dim,
                config.uses_environment,
                config.period_intercepts,
                config.uses_env_profile,
                config.day_of_week,
            )
            if config.prior_is_input or config.prior_is_offset
            else None
        )

    def linear_mean(
        self,
        history: torch.Tensor,
        profile: torch.Tensor | None,
        env: torch.Tensor,
        hours: torch.Tensor,
        days: torch.Tensor,
    ) -> torch.Tensor:
        h = history.shape[1]
        if profile is None:
            raise ValueError("the linear mean needs the hourly profile")
        if self.prior is None:
            raise ValueError("this model has no linear mean (prior 'none')")
        return self.prior(history, profile[:, h:], env[:, h:], hours[:, h:], days[:, h:])

    def prior_mean(
        self,
        history: torch.Tensor,
        profile: torch.Tensor | None,
        env: torch.Tensor,
        hours: torch.Tensor,
        days: torch.Tensor,
    ) -> torch.Tensor | None:
        """The prior mean (B, F, K) of the target hours of windows laid out as in ``forward``, which the
        diffusion samples a residual around (prior "linear" or "residual"); None otherwise."""
        if not self.config.prior_is_offset:
            return None
        return self.linear_mean(history, profile, env, hours, days)

    def prior_feature(
        self,
        history: torch.Tensor,
        profile: torch.Tensor | None,
        env: torch.Tensor,
        hours: torch.Tensor,
        days: torch.Tensor,
    ) -> torch.Tensor | None:
        """The linear mean (B, F, K) as an input of the target tokens (prior "feature" or "residual"); None otherwise,
        and without a profile (a window without the profile has neither input; training and forecasts
        always pass it)."""
        if not self.config.prior_is_input or profile is None:
            return None
        return self.linear_mean(history, profile, env, hours, days)

    # --- pieces ----------------------------------------------------------------------------------

    def _env_embedding(self, env: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D) -> (B, L, C); rows with keep == False get the learned null embedding."""
        b, seq, _ = env.shape
        if not self.config.uses_environment or self.env_dim == 0:
            return self.null_env.expand(b, seq, -1)
        e = self.env_proj(env)
        if keep is not None:
            e = torch.where(keep[:, None, None], e, self.null_env.expand_as(e))
        return e

    def _side(self, hours: torch.Tensor, days: torch.Tensor, k: int) -> torch.Tensor:
        """(B, L) calendar -> (B, K, L, C) side information (hour, weekday unless ``day_of_week`` is off, lag,
        service identity)."""
        s = self.hour_emb(hours) + self.lag_emb.weight[: hours.shape[1]]  # (B, L, C)
        if self.config.day_of_week:
            s = s + self.day_emb(days)
        return s.unsqueeze(1) + self.service_emb.weight[:k].view(1, k, 1, -1)

    def _tokens(
        self,
        values: torch.Tensor,
        is_target: bool,
        profile: torch.Tensor | None = None,
        feature: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, K) values (and profile, and linear mean feature) -> (B, K, L, C)."""
        flag = torch.full_like(values, 1.0 if is_target else 0.0)
        inputs = [values, flag, torch.zeros_like(values) if profile is None else profile]
        if self.config.prior_is_input:
            inputs.append(torch.zeros_like(values) if feature is None else feature)
        return self.value_in(torch.stack(inputs, dim=-1)).permute(0, 2, 1, 3)

    def _input_share(self, values: torch.Tensor, column: int) -> torch.Tensor:
        """One input's share of the input projection alone (2: profile, 3: linear mean feature):
        (B, L, K) -> (B, K, L, C)."""
        return (values.unsqueeze(-1) * self.value_in.weight[:, column]).permute(0, 2, 1, 3)

    def _split_env(self, env_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Environment as condition (AdaLN) and as input addition, per the configuration."""
        zero = torch.zeros_like(env_e)
        if self.config.condition == "input":
            return zero, env_e
        return env_e, zero

    # --- full pass (training) ---------------------------------------------------------------------

    def forward(
        self,
        history: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        hours: torch.Tensor,
        days: torch.Tensor,
        env: torch.Tensor,
        keep_env: torch.Tensor | None = None,
        profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """history (B, H, K), x_t (B, F, K), t (B,), hours/days (B, L), env (B, L, D),
        profile (B, L, K) -> eps (B, F, K)."""
        _b, h, k = history.shape
        f = x_t.shape[1]
        p_hist, p_target = (None, None) if profile is None else (profile[:, :h], profile[:, h:])
        feature = self.prior_feature(history, profile, env, hours, days)
        x = torch.cat(
            [self._tokens(history, False, p_hist), self._tokens(x_t, True, p_target, feature)], dim=2
        )  # (B, K, L, C)
        x = x + self._side(hours, days, k)
        env_cond, env_input = self._split_env(self._env_embedding(env, keep_env))  # (B, L, C)
        x = x + env_input.unsqueeze(1)
        step = self.step_mlp(step_embedding(t, self.config.channels))  # (B, C)
        is_target = torch.zeros(h + f, device=x.device)
        is_target[h:] = 1
        if self.config.step_conditioning == "input":
            x = x + (step[:, None, :] * is_target[None, :, None]).unsqueeze(1)
            cond = env_cond
        else:
            cond = env_cond + step[:, None, :] * is_target[None, :, None]  # (B, L, C)
        # History queries may not look at the (noisy) targets; targets see everything.
        allowed = torch.ones(h + f, h + f, dtype=torch.bool, device=x.device)
        allowed[:h, h:] = False
        for block in self.blocks:
            x = block(x, cond, allowed)
        return self.final(x[:, :, h:], cond[:, h:]).permute(0, 2, 1)  # (B, F, K)

    # --- cached path (inference) ------------------------------------------------------------------

    def encode_history(
        self,
        history: torch.Tensor,
        hours: torch.Tensor,
        days: torch.Tensor,
        env: torch.Tensor,
        keep_env: torch.Tensor | None = None,
        profile: torch.Tensor | None = None,
    ) -> HistoryCache:
        """Everything that does not depend on x_t or t, for B windows."""
        _b, h, k = history.shape
        side = self._side(hours, days, k)
        if profile is not None:  # the target tokens' profile term is fixed too: fold it into their side
            target_terms = self._input_share(profile[:, h:], 2)
            feature = self.prior_feature(history, profile, env, hours, days)
            if feature is not None:  # and so is the linear mean feature
                target_terms = target_terms + self._input_share(feature, 3)
            side = side + torch.cat([torch.zeros_like(side[:, :, :h]), target_terms], dim=2)
        env_cond, env_input = self._split_env(self._env_embedding(env, keep_env))
        p_hist = None if profile is None else profile[:, :h]
        x = self._tokens(history, False, p_hist) + side[:, :, :h] + env_input[:, :h].unsqueeze(1)
        caches = []
        for block in cast("Iterable[Block]", self.blocks):  # a ModuleList types its items as Module
            x, cache = block.forward_history(x, env_cond[:, :h])
            caches.append(cache)
        return HistoryCache(caches, env_cond[:, h:], side[:, :, h:] + env_input[:, h:].unsqueeze(1))

    def denoise_target(self, cache: HistoryCache, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B * S, F, K) for S sample paths per cached window -> eps (B * S, F, K)."""
        repeat = x_t.shape[0] // cache.windows
        side, env_cond = cache.expanded(repeat)
        x = self._tokens(x_t, True) + side  # (B*S, K, F, C)
        step = self.step_mlp(step_embedding(t, self.config.channels))[:, None, :]  # (B*S, 1, C)
        if self.config.step_conditioning == "input":
            x = x + step.unsqueeze(1)
            cond = env_cond
        else:
            cond = env_cond + step
        for block, block_cache in zip(cast("Iterable[Block]", self.blocks), cache.caches, strict=True):
            x = block.forward_target(x, cond, block_cache, repeat)
        return self.final(x, cond).permute(0, 2, 1)
