"""Model configurations: one dataclass, one registry of named configurations (the ablations of the
paper's Tables III-V are configurations of the same code)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from engine.errors import InputError

MAX_FINAL_ALPHA_BAR = 1e-3


def noise_schedule(config: ModelConfig) -> torch.Tensor:
    """beta_t for t = 0 .. T - 1, in float64: "quad" (CSDI's: sqrt(beta) evenly spaced from sqrt(beta_start) to
    sqrt(beta_end)) or "linear" (beta evenly spaced). The one place the formula is written."""
    if config.schedule == "quad":
        return (
            torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.diffusion_steps, dtype=torch.float64)
            ** 2
        )
    return torch.linspace(config.beta_start, config.beta_end, config.diffusion_steps, dtype=torch.float64)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, diffusion and training settings of an LSDM forecaster."""

    # Windows
    history: int = 24  # H hours of history (docs/model.md#data-and-splits)
    horizon: int = 1  # F hours predicted jointly
    # Denoiser (Alg. 1 layout: tokens (B, C, K services, L = H + F hours))
    channels: int = 64
    heads: int = 4
    blocks: int = 2
    mlp_ratio: float = 2.0
    service_attention: bool = True  # False: "Non 2D-Attention" ablation (time transformer only)
    condition: str = "adaln"  # adaln | input (env added to the input tokens) | none
    step_conditioning: str = "adaln"  # adaln (ours) | input (CSDI: step embedding added to the input)
    env_kind: str = "env"  # env (z_env, Eq. 9) | image | text: which embedding conditions the model
    # A linear conditional mean fitted in closed form when training starts (engine/model/prior.py):
    # feature: an input of the target tokens beside the profile (the default,
    # docs/model.md#the-linear-mean-feature); linear: the diffusion models the residual around it (CARD;
    # experimental); residual: both (experimental); none: no such mean. "none" in checkpoints that predate
    # the field.
    prior: str = "feature"
    # The no-condition linear mean gets a mean per period of day x weekend too, as the conditioned one has
    # (engine/model/prior.py); False in checkpoints that predate the field. No effect with the environment.
    period_intercepts: bool = True
    # Beside the embedding of the cell at each hour, the model reads the entity's usual embedding at that
    # hour of day (the mean over its history's hours, engine/data/windows.py HourlyProfile): the traffic
    # profile already holds the usual place's effect, so what the condition adds is where the entity is
    # now against where it usually is (docs/model.md#the-environment-profile). False in checkpoints that
    # predate the field. No effect without the environment.
    env_profile: bool = True
    # The day of the week as an input (the denoiser's day embedding, the linear mean's weekend split). `fit`
    # turns it off when the training days do not cover every weekday (a week of data trains on 4 days and
    # validates and tests on the other two: their embedding would never have been trained;
    # docs/model.md#short-data). True in checkpoints that predate the field.
    day_of_week: bool = True
    # Diffusion
    diffusion_steps: int = 50
    beta_start: float = 1e-4
    beta_end: float = 0.5
    schedule: str = "quad"  # quad (CSDI's) | linear
    cond_dropout: float = 0.1  # condition dropout for classifier-free guidance
    # Loss (Sec. IV-B): l1 * MSE + l2 * (1 - cosine)
    l1: float = 1.0
    l2: float = 0.1
    # Training
    epochs: int = 5  # within the 10-minute CPU training budget (docs/model.md#training)
    batch_size: int = 256
    windows_per_epoch: int = 32_768  # training windows drawn afresh each epoch
    # Diffusion steps and noises drawn per training window: the history is encoded once and only the
    # target hour is denoised that many times (engine/model/diffusion.py ``diffusion_loss``). 1: the
    # plain full pass, which checkpoints that predate the field were trained with (``from_dict``).
    noise_draws: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    patience: int = 3
    seed: int = 0

    def validate(self, origin: str | None = None) -> None:
        """Every field of the right type and within its bounds (``FIELD_BOUNDS``), then the relations between
        fields; the first problem -> InputError naming the field (and ``origin``, the file it came from)."""
        for f in fields(self):
            value = getattr(self, f.name)
            default = getattr(ModelConfig, f.name)
            if isinstance(default, bool):
                ok, expected = isinstance(value, bool), "true or false"
            elif isinstance(default, int):
                ok, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                expected = "a finite number"
            else:
                ok, expected = isinstance(value, str), "text"
            if not ok:
                raise InputError(f"expected {expected}, got {value!r}", field=f.name, file=origin)
            if f.name in FIELD_BOUNDS:
                low, high = FIELD_BOUNDS[f.name]
                if not low <= value <= high:
                    raise InputError(
                        f"expected a value from {low:g} to {high:g}, got {value!r}", field=f.name, file=origin
                    )
        checks = [
            ("history", self.history >= 1, "at least 1 hour"),
            ("horizon", self.horizon >= 1, "at least 1 hour"),
            ("channels", self.channels % self.heads == 0, "a multiple of heads"),
            ("condition", self.condition in ("adaln", "input", "none"), "adaln, input or none"),
            ("step_conditioning", self.step_conditioning in ("adaln", "input"), "adaln or input"),
            ("env_kind", self.env_kind in ("env", "image", "text"), "env, image or text"),
            ("prior", self.prior in ("none", "linear", "feature", "residual"), "none, linear, feature or residual"),
            ("schedule", self.schedule in ("quad", "linear"), "quad or linear"),
            ("diffusion_steps", self.diffusion_steps >= 2, "at least 2"),
            ("cond_dropout", 0 <= self.cond_dropout < 1, "in [0, 1)"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("noise_draws", self.noise_draws >= 1, "at least 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"expected {expected}, got {getattr(self, name)!r}", field=name, file=origin)
        if self.final_alpha_bar() > MAX_FINAL_ALPHA_BAR:
            raise InputError(
                f"the noise schedule ends at alpha-bar {self.final_alpha_bar():.4f}; it must end close "
                f"to 0 (<= {MAX_FINAL_ALPHA_BAR}) so that sampling starts from pure noise",
                field="beta_end",
                hint="raise beta_end or diffusion_steps",
            )

    def final_alpha_bar(self) -> float:
        """alpha-bar at the last diffusion step (1 - beta_t multiplied over all steps)."""
        return float((1 - noise_schedule(self)).prod())

    @property
    def prior_is_input(self) -> bool:
        """The linear mean is an input of the target tokens (prior "feature" or "residual")."""
        return self.prior in ("feature", "residual")

    @property
    def prior_is_offset(self) -> bool:
        """The diffusion models the residual around the linear mean (prior "linear" or "residual")."""
        return self.prior in ("linear", "residual")

    @property
    def uses_environment(self) -> bool:
        return self.condition != "none"

    @property
    def uses_env_profile(self) -> bool:
        """The environment input is [z_env at the hour, the entity's usual z_env at that hour of day]."""
        return self.env_profile and self.uses_environment

    def env_width(self, env_dim: int) -> int:
        """Width of the model's environment input for cell embeddings of ``env_dim``."""
        return env_dim * 2 if self.uses_env_profile and env_dim > 0 else env_dim

    @property
    def intercepts_without_environment(self) -> bool:
        """Whether ``period_intercepts`` changes anything: a linear mean without the environment."""
        return self.period_intercepts and not self.uses_environment and self.prior != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, origin: str = "config") -> ModelConfig:
        if not isinstance(data, dict):
            raise InputError(
                f'expected a JSON object of configuration fields (e.g. {{"epochs": 5}}), found a {type(data).__name__}',
                file=origin,
            )
        known = {f.name for f in fields(cls)}
        # Saved before these fields existed: trained with one draw and no linear mean.
        data = {"noise_draws": 1, "prior": "none", "period_intercepts": False, "env_profile": False, **data}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=origin)
        try:
            config = cls(**data)
        except TypeError as error:
            raise InputError(str(error), file=origin) from None
        config.validate(origin)
        return config


# Bounds of the numeric fields: generous (far beyond anything trained here), so that a typo is refused with
# the field's name before it becomes a division by zero, a huge allocation or a run that never ends.
FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    "history": (1, 24 * 28),
    "horizon": (1, 168),
    "channels": (2, 2048),
    "heads": (1, 64),
    "blocks": (1, 64),
    "mlp_ratio": (0.25, 16.0),
    "diffusion_steps": (2, 4000),
    "beta_start": (1e-8, 0.5),
    "beta_end": (1e-6, 0.999),
    "cond_dropout": (0.0, 0.99),
    "l1": (0.0, 1000.0),
    "l2": (0.0, 1000.0),
    "epochs": (1, 10_000),
    "batch_size": (1, 65_536),
    "windows_per_epoch": (1, 100_000_000),
    "noise_draws": (1, 256),
    "lr": (1e-9, 10.0),
    "weight_decay": (0.0, 10.0),
    "ema_decay": (0.0, 1.0),
    "grad_clip": (0.0, 1e6),
    "patience": (1, 10_000),
    "seed": (0, 2**32 - 1),
}


CONFIGS: dict[str, ModelConfig] = {
    "lsdm": ModelConfig(),
    "lsdm-no-condition": ModelConfig(condition="none"),
    # CSDI-like: 2D attention, no environment, the diffusion step added to the input (no AdaLN by
    # the condition), plain MSE loss, and no linear mean feature (CSDI has none).
    "csdi-like": ModelConfig(condition="none", step_conditioning="input", l2=0.0, prior="none"),
    "no-2d-attention": ModelConfig(service_attention=False),
    "env-input": ModelConfig(condition="input"),
    "image-only": ModelConfig(env_kind="image"),
    # Experimental: the diffusion models the residual around a linear conditional mean (engine/model/
    # prior.py); not the default (docs/model.md#the-linear-mean-feature).
    "lsdm-prior": ModelConfig(prior="linear"),
    # The paper's model alone: no linear mean feature (the condition enters by AdaLN only).
    "lsdm-plain": ModelConfig(prior="none"),
    "lsdm-residual": ModelConfig(prior="residual"),  # experimental (docs/model.md#the-linear-mean-feature)
    "lsdm-plain-no-condition": ModelConfig(prior="none", condition="none"),
    "text-only": ModelConfig(env_kind="text"),
    # A few seconds of training, for tests and smoke checks.
    "tiny": ModelConfig(channels=16, heads=2, blocks=1, epochs=2, batch_size=64, diffusion_steps=20, beta_end=0.8),
}


def resolve_config(name_or_file: str | None, **overrides: Any) -> tuple[str, ModelConfig]:
    """A registered configuration by name, or a JSON file of ModelConfig fields; then overrides."""
    name = name_or_file or "lsdm"
    if name in CONFIGS:
        config = CONFIGS[name]
    elif name.endswith(".json") or Path(name).is_file():
        path = Path(name)
        if not path.is_file():
            raise InputError("no such configuration file", file=path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"not valid JSON: {error.msg}", file=path, line=error.lineno) from None
        config = ModelConfig.from_dict(data, origin=str(path))
        name = path.stem
    else:
        raise InputError(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)} or a JSON file", field="config")
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config.validate()
    return name, config
