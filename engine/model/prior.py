"""A linear conditional mean g of the target hour, fitted in closed form when training starts. Two uses
(``ModelConfig.prior``):

- ``feature`` (the default): g is an input of the target tokens, beside the entity's hourly profile
  (engine/model/denoiser.py); the diffusion still models the traffic itself.
- ``linear`` (experimental): the diffusion works around it ("residual diffusion", as in CARD, Han et
  al. 2022): the denoiser models u = standardise(v - g) and a forecast is g + the sampled residual.

Why: an epsilon-prediction DDPM learns the conditional *mean* only weakly (in the eps loss an error
of the mean at step t weighs SNR_t, which is ~0 at the noisy steps where the mean matters), and on a
CPU training budget it did not learn the environment's shift of the mean that a linear model gets from
the same inputs (docs/model.md#the-linear-mean-feature). g is that linear model, fitted on the training
windows:

    g_k = w_k · [1, profile_k, v_{t-1,k}, v_{t-2,k}, v_{t-3,k}, mean of the history_k, mean_j v_{t-1,j},
                 (z_env(t) projected on R principal axes, 1) ⊗ one-hot(period of day x weekend)]

per service k (ridge, lambda = 1). The environment part is there only when the configuration uses the
environment: a no-condition model's prior sees none of it. It gets the rest of that block, though: the
constant 1 ⊗ one-hot(period) (``period_intercepts``), a mean per period of day x weekend that reads no
place. Without it (checkpoints that predate the field) only the conditioned prior had those 8
intercepts, and even in a city where the place has no effect at all (``--env-effect 0``) it then fitted
better than the no-condition one: part of the "environment's" gain was an intercept
(docs/model.md#the-linear-mean-feature). So the condition's gain is the gain from the environment.

With ``env_profile`` (the default; engine/data/windows.py HourlyProfile) the environment input is
[z_env(t), z̄_env(t)], z̄ the entity's usual embedding at that hour of day, and the features get
(z̄_env(t) projected on the same axes) ⊗ one-hot(period) too. The profile_k feature already holds the
usual place's effect; with z̄ the fit can weigh z(t) against it, i.e. read where the entity is now
against where it usually is (docs/model.md#the-environment-profile). Everything is a buffer of this
module: it is saved with the weights and checked on loading like them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ENV_AXES = 12  # principal axes of the cells' embeddings used by the prior
N_COMMON = 7  # per-service features that do not involve the environment
N_GROUPS = 8  # period of day (night 0-6, morning 7-10, day 11-16, evening 17-23) x weekend
RIDGE = 1.0


def period_group(hours: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
    """(...) hour of day and day of week -> group index 0..7."""
    period = (hours >= 7).long() + (hours >= 11).long() + (hours >= 17).long()
    return period + 4 * (days >= 5).long()


class MeanPrior(nn.Module):
    # Buffers (register_buffer below), saved with the weights.
    weight: torch.Tensor  # (K, n_features)
    env_mean: torch.Tensor  # (D,)
    env_axes: torch.Tensor  # (D, R)

    def __init__(
        self,
        n_services: int,
        env_dim: int,
        uses_env: bool,
        period_intercepts: bool = True,
        env_profile: bool = False,
        day_of_week: bool = True,
    ) -> None:
        super().__init__()
        self.day_of_week = bool(day_of_week)  # False: no weekend split of the periods (all days are weekdays)
        self.uses_env = bool(uses_env and env_dim > 0)
        self.env_dim = env_dim
        self.env_profile = bool(env_profile) and self.uses_env
        # Without the environment: the period intercepts alone (the conditioned prior has them in its
        # environment block, as the constant column's one-hot).
        self.period_intercepts = bool(period_intercepts) and not self.uses_env
        axes = min(ENV_AXES, env_dim) if self.uses_env else 0
        self.n_features = (
            N_COMMON
            + ((axes + 1) * N_GROUPS if self.uses_env else 0)
            + (N_GROUPS if self.period_intercepts else 0)
            + (axes * N_GROUPS if self.env_profile else 0)
        )
        self.register_buffer("weight", torch.zeros(n_services, self.n_features))
        self.register_buffer("env_mean", torch.zeros(max(env_dim, 1) if self.uses_env else 1))
        self.register_buffer("env_axes", torch.zeros(max(env_dim, 1) if self.uses_env else 1, max(axes, 1)))

    def features(
        self, history: torch.Tensor, profile: torch.Tensor, env: torch.Tensor, hours: torch.Tensor, days: torch.Tensor
    ) -> torch.Tensor:
        """history (B, H, K), and at the F target hours: profile (B, F, K), env (B, F, D) (B, F, 2D with the
        environment profile), hours/days (B, F) -> (B, F, K, n_features)."""
        if not self.day_of_week:
            days = torch.zeros_like(days)
        _b, f, k = profile.shape
        last = history[:, -3:].flip(1)  # v_{t-1}, v_{t-2}, v_{t-3}
        if last.shape[1] < 3:
            last = torch.cat([last, last[:, -1:].expand(-1, 3 - last.shape[1], -1)], dim=1)
        per_service = torch.stack(
            [
                torch.ones_like(last[:, 0]),
                last[:, 0],
                last[:, 1],
                last[:, 2],
                history.mean(1),
                last[:, 0].mean(-1, keepdim=True).expand(-1, k),
            ],
            dim=-1,
        )
        common = torch.cat([profile.unsqueeze(-1), per_service.unsqueeze(1).expand(-1, f, -1, -1)], dim=-1)
        common = common[..., [1, 0, 2, 3, 4, 5, 6]]  # 1, profile, lags, history mean, all services' last hour
        if not self.uses_env:
            if not self.period_intercepts:
                return common
            onehot = nn.functional.one_hot(period_group(hours, days), N_GROUPS).to(common.dtype)  # (B, F, 8)
            return torch.cat([common, onehot.unsqueeze(2).expand(-1, -1, k, -1)], dim=-1)
        z = (env[..., : self.env_dim] - self.env_mean) @ self.env_axes  # (B, F, R)
        z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
        if self.env_profile:  # the usual place's axes after the constant: the older layout stays a prefix
            z = torch.cat([z, (env[..., self.env_dim :] - self.env_mean) @ self.env_axes], dim=-1)
        onehot = nn.functional.one_hot(period_group(hours, days), N_GROUPS).to(z.dtype)  # (B, F, 8)
        env_f = (z.unsqueeze(-1) * onehot.unsqueeze(-2)).flatten(-2)  # (B, F, (R+1)*8 [+ R*8])
        return torch.cat([common, env_f.unsqueeze(2).expand(-1, -1, k, -1)], dim=-1)

    def forward(
        self, history: torch.Tensor, profile: torch.Tensor, env: torch.Tensor, hours: torch.Tensor, days: torch.Tensor
    ) -> torch.Tensor:
        """The prior mean (B, F, K) of the target hours, on the v scale."""
        x = self.features(history, profile, env, hours, days)
        return (x * self.weight).sum(-1)

    def set_env_axes(self, cell_env: np.ndarray) -> None:
        """Principal axes of the cells' embeddings (rows that are all zero have no embedding)."""
        if not self.uses_env:
            return
        known = cell_env[np.abs(cell_env).sum(1) > 0].astype(np.float64)
        mean = known.mean(0) if len(known) else np.zeros(cell_env.shape[1])
        axes = self.env_axes.shape[1]
        basis = np.zeros((cell_env.shape[1], axes))
        if len(known) > 1:
            _, _, vt = np.linalg.svd(known - mean, full_matrices=False)
            basis[:, : min(axes, len(vt))] = vt[:axes].T
        self.env_mean.copy_(torch.from_numpy(mean).float())
        self.env_axes.copy_(torch.from_numpy(basis).float())


class PriorFit:
    """Accumulates the normal equations over batches of training windows, then solves them."""

    def __init__(self, prior: MeanPrior) -> None:
        self.prior = prior
        k, p = prior.weight.shape
        self.xtx = np.zeros((k, p, p))
        self.xty = np.zeros((k, p))
        self.n = 0

    def add(
        self,
        history: torch.Tensor,
        profile: torch.Tensor,
        env: torch.Tensor,
        hours: torch.Tensor,
        days: torch.Tensor,
        target: torch.Tensor,
    ) -> None:
        """One batch: the inputs as in ``MeanPrior.features`` and the target hours (B, F, K)."""
        x = self.prior.features(history, profile, env, hours, days).double()  # (B, F, K, P)
        x = x.permute(2, 0, 1, 3).reshape(x.shape[2], -1, x.shape[3])  # (K, B*F, P)
        y = target.double().permute(2, 0, 1).reshape(x.shape[0], -1)  # (K, B*F)
        self.xtx += torch.einsum("knp,knq->kpq", x, x).cpu().numpy()
        self.xty += torch.einsum("knp,kn->kp", x, y).cpu().numpy()
        self.n += y.shape[1]

    def solve(self) -> None:
        p = self.xtx.shape[1]
        penalty = RIDGE * np.eye(p)
        penalty[0, 0] = 0.0  # no penalty on the intercept
        weight = np.stack([np.linalg.solve(self.xtx[k] + penalty, self.xty[k]) for k in range(len(self.xtx))])
        self.prior.weight.copy_(torch.from_numpy(weight).float())
