"""PatchTST (Nie et al. 2023, "A Time Series is Worth 64 Words") as a learned Table III baseline.

A small own implementation of the paper's supervised model, with a quantile head:

- channel independence: every (entity, service) pair is one univariate series; one set of weights is
  shared by all of them (the services never see each other);
- instance normalisation (RevIN without the affine part): each input window is centred on its own mean
  and divided by its own standard deviation, floored (``sqrt(var + SCALE_FLOOR**2)``) so that the many
  all-zero windows of real traffic do not blow a tiny deviation up; the outputs are scaled back;
- the look-back window (``context`` hours) is padded at its end with ``stride`` copies of its last value
  (as in the paper) and cut into patches of ``patch_len`` hours every ``stride`` hours, each patch linearly
  embedded plus a learned positional embedding; a Transformer encoder (post-norm, layer norm, GELU);
- a flatten + linear head outputs, directly, ``horizon x Q`` values: the quantiles at ``LEVELS`` of each of
  the next ``horizon`` hours (a direct multi-horizon model: a path of ``steps <= horizon`` hours is the
  first ``steps`` outputs of one forward pass, nothing is fed back), trained with the pinball loss.

Data (the conventions of ``engine.evaluation.learned``):

- training samples are (channel, origin) pairs of the training entities (``np.unique(splits.train.entity)``)
  whose whole target block [origin, origin + horizon) lies before ``splits.train_hours_end`` and whose
  context [origin - context, origin) starts at hour >= 0; batches are drawn uniformly with replacement;
- the validation hours [train_hours_end, first test hour) only pick the weights (the lowest validation
  pinball loss, checked every epoch-equivalent, with patience): up to ``VAL_SAMPLES`` (channel, origin)
  pairs of the validation entities with origins in those hours, scored on their targets before the first
  test hour. Without validation hours the last weights are kept;
- a forecast for the window (entity e, hour t) reads only ``values[e, t - context : t]``; where t < context
  the hours before 0 are filled with the series' first value ``values[e, 0]`` (edge padding; no mask).

Sizes: ``context`` defaults to ``min(96, train_hours_end - horizon - 24)`` rounded down to a multiple of the
stride, at least 24 (so that at least 25 origins per channel train); the horizon is then cut to
``min(horizon, train_hours_end - context - 1)`` where the training hours are too few for both (both are in
``info``). On a one-week data set (train_hours_end = 120) that is context 66, horizon 30; on the default
city (336 h, train_hours_end = 288) context 96. Asking ``forecast`` for more steps than the fitted horizon
is an error.

Budget: at most ``iterations`` Adam steps (and at most ``MAX_PASSES`` = 20 draws of each training pair on average,
which only binds on small data sets) (lr 1e-3, gradients clipped at norm 1) of ``batch`` samples,
defaults 800 x 256: 3.6 minutes measured for a synthetic default-size city (5000 channels, 815,000
training pairs, a quarter of them drawn; 0.21 s a step; forecasting its 12,000 test windows then took
35 s). Validated every ``min(ceil(samples / batch), EVAL_EVERY)`` steps (an "epoch"), stopped after
``patience`` epochs without a better validation loss. Torch runs on ``threads`` threads (1 or 2; default
1; the previous count is restored afterwards): on two cores a second thread did not speed these small
matrices up (0.21 s a step either way) and made the steps ten times slower whenever another process kept
one core busy.

Deterministic for a seed: the weights' initialisation and dropout draw from ``torch.manual_seed(seed)``
inside a forked RNG (the global torch RNG is left as it was), the validation subset and the batches from
``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from engine.data.windows import SeriesData, Splits, Windows
from engine.errors import InputError
from engine.evaluation.baselines import DEFAULT_SAMPLES, BaselineForecast, check_windows
from engine.evaluation.quantile_fit import LEVELS, Fitted, elapsed, quantile_samples

PATCH_LEN = 12
STRIDE = 6
D_MODEL = 64
HEADS = 4
LAYERS = 2
D_FF = 128
DROPOUT = 0.1
MAX_CONTEXT = 96
MIN_CONTEXT = 24
SCALE_FLOOR = 0.03  # RevIN's deviation floor on the normalised scale (values ~0..1)
EVAL_EVERY = 100  # at most this many steps between validations (one "epoch")
VAL_SAMPLES = 4096
INFER_BATCH = 8192  # channels per forward pass in forecast()


MAX_PASSES = 20


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, 2)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class PatchTSTNet(nn.Module):
    """Univariate inputs (B, context) -> quantiles (B, horizon, Q) on the inputs' scale."""

    def __init__(
        self,
        context: int,
        horizon: int,
        n_quantiles: int,
        *,
        patch_len: int = PATCH_LEN,
        stride: int = STRIDE,
        d_model: int = D_MODEL,
        heads: int = HEADS,
        layers: int = LAYERS,
        d_ff: int = D_FF,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        self.context, self.horizon, self.n_quantiles = context, horizon, n_quantiles
        self.patch_len, self.stride = patch_len, stride
        self.n_patches = (context + stride - patch_len) // stride + 1  # after the end padding
        self.embed = nn.Linear(patch_len, d_model)
        self.position = nn.Parameter(torch.empty(1, self.n_patches, d_model).uniform_(-0.02, 0.02))
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, d_ff, dropout, activation="gelu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(self.n_patches * d_model, horizon * n_quantiles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        scale = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + SCALE_FLOOR**2)
        z = (x - mean) / scale
        z = torch.cat([z, z[:, -1:].expand(-1, self.stride)], dim=1)
        patches = z.unfold(1, self.patch_len, self.stride)  # (B, n_patches, patch_len)
        h = self.encoder(self.dropout(self.embed(patches) + self.position))
        out = self.head(h.flatten(1)).view(-1, self.horizon, self.n_quantiles)
        return out * scale[:, :, None] + mean[:, :, None]


def pinball_loss(
    quantiles: torch.Tensor, target: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean pinball loss of quantiles (B, H, Q) at ``levels`` (Q,) for targets (B, H), over the points
    where ``mask`` (B, H) is true (all when None)."""
    diff = target[..., None] - quantiles
    loss = torch.maximum(levels * diff, (levels - 1) * diff).mean(dim=-1)
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def _gather(values: np.ndarray, entity: np.ndarray, service: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """values[entity, hours, service] for (B,) entities/services and (B, L) hours, hours < 0 -> hour 0."""
    return values[entity[:, None], np.maximum(hours, 0), service[:, None]]


def default_sizes(train_hours_end: int, horizon: int, context: int | None, stride: int = STRIDE) -> tuple[int, int]:
    """(context, horizon) for these training hours (see the module docstring)."""
    if context is None:
        context = min(MAX_CONTEXT, train_hours_end - horizon - MIN_CONTEXT) // stride * stride
        context = max(MIN_CONTEXT, context)
    horizon = min(horizon, train_hours_end - context - 1)
    if horizon < 1:
        raise InputError(
            f"the split leaves {train_hours_end} training hours: too few for a {context}-hour context "
            "and a target hour",
            field="split",
        )
    return context, horizon


def _validation_loss(
    model: PatchTSTNet, val: tuple[torch.Tensor, torch.Tensor, torch.Tensor], levels: torch.Tensor
) -> float:
    """The pinball loss over all unmasked validation points (inputs, targets, mask), in batches."""
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(val[0]), 1024):
            x, y, mask = (part[i : i + 1024] for part in val)
            total += float(pinball_loss(model(x), y, levels, mask)) * float(mask.sum())
    return total / max(float(val[2].sum()), 1.0)


@dataclass(kw_only=True)
class PatchTSTFitted(Fitted):
    """A fitted PatchTST; ``forecast`` reads the windows' context from ``values`` (the array it was fitted
    on unless another one, e.g. a what-if, is passed)."""

    series: SeriesData = field(repr=False)
    values: np.ndarray = field(repr=False)
    model: PatchTSTNet = field(repr=False)
    context: int
    horizon: int
    threads: int = 1

    def describe(self) -> str:
        info = self.info
        return (
            f"patchtst: own PatchTST (patches of {info['patch_len']} h every {info['stride']} h over a "
            f"{info['context']} h context, {info['layers']} Transformer layers, d_model {info['d_model']}, "
            f"{info['parameters']:,} parameters), "
            f"direct {info['horizon']}-hour quantile head, {info['iterations']} Adam steps of {info['batch']} "
            f"(best validation step {info['best_iteration']}), {info['training_samples']:,} training pairs, fitted in "
            f"{info['seconds']:.0f} s; channel-independent (each entity and service alone)."
        )

    def forecast(
        self,
        windows: Windows,
        steps: int = 1,
        n_samples: int = DEFAULT_SAMPLES,
        *,
        values: np.ndarray | None = None,
    ) -> BaselineForecast:
        """Samples (S, N, steps, K): the direct head's first ``steps`` hours from each window's hour, read
        from the ``context`` hours before it (hours before 0: the series' first value). ``values``: (E, T, K)
        normalised traffic to read the contexts from instead of the fitted ones (same shape)."""
        started = time.perf_counter()
        check_windows(self.series, windows, steps, n_samples)
        if steps > self.horizon:
            raise InputError(
                f"PatchTST was fitted for at most {self.horizon} steps, got {steps}",
                field="steps",
            )
        v = self.values if values is None else np.asarray(values, dtype=np.float32)
        if v.shape != self.values.shape:
            raise InputError(f"values have shape {v.shape}, the fitted ones {self.values.shape}", field="values")
        entity = np.asarray(windows.entity, dtype=np.int64)
        hour = np.asarray(windows.hour, dtype=np.int64)
        n, k = len(entity), v.shape[2]
        samples = np.empty((n_samples, n, steps, k), dtype=np.float32)
        chunk = max(1, INFER_BATCH // k)
        offsets = np.arange(-self.context, 0)
        self.model.eval()
        with _torch_threads(self.threads), torch.inference_mode():
            for start in range(0, n, chunk):
                e = np.repeat(entity[start : start + chunk], k)
                s = np.tile(np.arange(k), len(e) // k)
                hours = np.repeat(hour[start : start + chunk], k)[:, None] + offsets[None, :]
                x = torch.from_numpy(np.ascontiguousarray(_gather(v, e, s, hours), dtype=np.float32))
                q = self.model(x)[:, :steps].numpy().reshape(-1, k, steps, len(LEVELS)).transpose(0, 2, 1, 3)
                samples[:, start : start + chunk] = quantile_samples(LEVELS, q, n_samples)
        info = {
            "method": "patchtst",
            "windows": n,
            "steps": steps,
            "samples": n_samples,
            "context": self.context,
            "horizon": self.horizon,
            "fit": self.info,
            "seconds": elapsed(started),
        }
        return BaselineForecast("patchtst", samples, info)


def fit_patchtst(
    series: SeriesData,
    values: np.ndarray,
    splits: Splits,
    *,
    seed: int = 0,
    horizon: int = 30,
    context: int | None = None,
    iterations: int = 800,
    batch: int = 256,
    patience: int = 4,
    lr: float = 1e-3,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
) -> PatchTSTFitted:
    """Train PatchTST on the training hours of the training entities (see the module docstring)."""
    started = time.perf_counter()
    v = np.asarray(values, dtype=np.float32)
    if v.shape != series.traffic.shape:
        raise InputError(f"values have shape {v.shape}, the series {series.traffic.shape}", field="values")
    if horizon < 1 or iterations < 1 or batch < 1:
        raise InputError("horizon, iterations and batch must be >= 1", field="horizon")
    train_end = splits.train_hours_end
    context, horizon = default_sizes(train_end, horizon, context)
    if context < PATCH_LEN:
        raise InputError(f"the context must be at least {PATCH_LEN} hours, got {context}", field="context")
    k = v.shape[2]

    # Training pairs: origins with the context inside the data and the targets before train_end.
    train_entities = np.unique(splits.train.entity)
    origins = np.arange(context, train_end - horizon + 1)
    if len(train_entities) == 0 or len(origins) == 0:
        raise InputError("the split leaves no training windows for PatchTST", field="split")
    channels = len(train_entities) * k
    n_train = channels * len(origins)
    rng = np.random.default_rng(seed)

    # Validation pairs: origins in [train_end, first test hour), scored on targets before the first test hour.
    first_test = int(splits.test.hour.min()) if len(splits.test) else series.hours
    val_entities = np.unique(splits.val.entity)
    val_origins = np.arange(train_end, min(first_test, series.hours))
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    if len(val_entities) and len(val_origins):
        total = len(val_entities) * k * len(val_origins)
        pick = np.sort(rng.choice(total, size=min(VAL_SAMPLES, total), replace=False))
        ve = val_entities[pick // (k * len(val_origins))]
        vs = (pick // len(val_origins)) % k
        vo = val_origins[pick % len(val_origins)]
        target_hours = vo[:, None] + np.arange(horizon)[None, :]
        val = (
            torch.from_numpy(_gather(v, ve, vs, vo[:, None] + np.arange(-context, 0)[None, :])),
            torch.from_numpy(_gather(v, ve, vs, np.minimum(target_hours, first_test - 1))),
            torch.from_numpy((target_hours < first_test).astype(np.float32)),
        )

    levels = torch.tensor(LEVELS, dtype=torch.float32)
    eval_every = max(1, min(math.ceil(n_train / batch), EVAL_EVERY))
    # Small data sets: at most MAX_PASSES draws of every training pair (the budget is for the default city's size).
    iterations = min(iterations, max(eval_every, math.ceil(MAX_PASSES * n_train / batch)))
    context_offsets = np.arange(-context, 0)
    target_offsets = np.arange(horizon)
    best_loss, best_state, best_iteration, stale, done, evaluations = math.inf, None, 0, 0, 0, 0
    history: list[float] = []
    with _torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PatchTSTNet(context, horizon, len(LEVELS))
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        while done < iterations:
            model.train()
            for _ in range(min(eval_every, iterations - done)):
                idx = rng.integers(0, n_train, size=batch)
                e = train_entities[idx // (k * len(origins))]
                s = (idx // len(origins)) % k
                o = origins[idx % len(origins)]
                x = torch.from_numpy(_gather(v, e, s, o[:, None] + context_offsets[None, :]))
                y = torch.from_numpy(_gather(v, e, s, o[:, None] + target_offsets[None, :]))
                loss = pinball_loss(model(x), y, levels)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimiser.step()
                done += 1
            evaluations += 1
            if val is None:
                if progress:
                    progress(f"patchtst: step {done}/{iterations}")
                continue
            val_loss = _validation_loss(model, val, levels)
            history.append(round(val_loss, 5))
            if progress:
                progress(f"patchtst: step {done}/{iterations}, validation pinball loss {val_loss:.4f}")
            if val_loss < best_loss:
                best_loss, best_iteration, stale = val_loss, done, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
    info = {
        "method": "patchtst",
        "context": context,
        "horizon": horizon,
        "patch_len": PATCH_LEN,
        "stride": STRIDE,
        "d_model": D_MODEL,
        "layers": LAYERS,
        "heads": HEADS,
        "levels": LEVELS.tolist(),
        "channels": channels,
        "training_samples": n_train,
        "validation_samples": 0 if val is None else len(val[0]),
        "iterations": done,
        "max_iterations": iterations,
        "batch": batch,
        "epochs": evaluations,
        "passes": round(done * batch / n_train, 3),  # training pairs drawn / training pairs
        "steps_per_epoch": eval_every,
        "best_iteration": best_iteration if val is not None else done,
        "best_val_loss": round(best_loss, 6) if val is not None else None,
        "val_losses": history,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": max(1, min(threads, 2)),
        "seed": seed,
        "seconds": elapsed(started),
    }
    return PatchTSTFitted(
        "patchtst", info, series=series, values=v, model=model, context=context, horizon=horizon, threads=threads
    )
