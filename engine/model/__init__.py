"""The LSDM forecaster: configuration, denoiser, diffusion, and the saved-model format.

A saved model is a folder with ``model.safetensors`` (EMA weights) and ``model.json`` (configuration,
normalisation, the data fingerprint, the weights' SHA-256, metrics). Loading checks the hash and that
the configuration rebuilds exactly the stored tensors; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.data.windows import Normaliser
from engine.errors import InputError
from engine.model.config import CONFIGS, ModelConfig, resolve_config
from engine.model.denoiser import Denoiser
from engine.model.diffusion import Schedule, Standardiser, sample

__all__ = ["CONFIGS", "Forecaster", "ModelConfig", "pick_device", "resolve_config", "sample"]


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Forecaster:
    """Everything needed to forecast: the network and the transforms around it."""

    config: ModelConfig
    model: Denoiser
    normaliser: Normaliser
    standardiser: Standardiser
    services: list[str]
    env_dim: int
    meta: dict = field(default_factory=dict)

    @property
    def schedule(self) -> Schedule:
        return Schedule.from_config(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def create(cls, config: ModelConfig, *, normaliser: Normaliser, standardiser: Standardiser,
               services: list[str], env_dim: int, meta: dict | None = None) -> Forecaster:
        torch.manual_seed(config.seed)
        model = Denoiser(config, env_dim=env_dim, n_services=len(services))
        return cls(config, model, normaliser, standardiser, list(services), env_dim, dict(meta or {}))

    def save(self, directory: Path) -> str:
        """Write the folder; returns the weights' SHA-256."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / "model.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(weights))
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        document = {
            "format": "lsdm-forecaster/1",
            "config": self.config.to_dict(),
            "normaliser": self.normaliser.to_dict(),
            "standardiser": {"mean": self.standardiser.mean, "std": self.standardiser.std},
            "services": self.services,
            "env_dim": self.env_dim,
            "sha256": digest,
            **self.meta,
        }
        (directory / "model.json").write_text(json.dumps(document, indent=2, default=str))
        self.meta["sha256"] = digest
        return digest

    @classmethod
    def load(cls, directory: Path, *, device: str | None = None) -> Forecaster:
        from safetensors.torch import load_file

        directory = Path(directory)
        doc_file, weights = directory / "model.json", directory / "model.safetensors"
        for path in (doc_file, weights):
            if not path.is_file():
                raise InputError("missing model file", file=path, hint="train again with `lsdm train`")
        try:
            document = json.loads(doc_file.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"not valid JSON: {error.msg}", file=doc_file, line=error.lineno) from None
        if document.get("format") != "lsdm-forecaster/1":
            raise InputError(f"unknown model format {document.get('format')!r}", file=doc_file)
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if digest != document.get("sha256"):
            raise InputError("weights do not match the hash recorded in model.json", file=weights,
                             hint="the file was changed or belongs to another model")
        config = ModelConfig.from_dict(document["config"], origin=str(doc_file))
        meta = {k: v for k, v in document.items()
                if k not in ("format", "config", "normaliser", "standardiser", "services", "env_dim")}
        forecaster = cls.create(
            config, normaliser=Normaliser.from_dict(document["normaliser"]),
            standardiser=Standardiser(**document["standardiser"]), services=document["services"],
            env_dim=int(document["env_dim"]), meta=meta,
        )
        state = load_file(str(weights))
        expected = forecaster.model.state_dict()
        mismatched = sorted(set(state) ^ set(expected)) + sorted(
            k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if mismatched:
            raise InputError(f"weights do not match the configuration in model.json ({len(mismatched)} tensors "
                             f"differ, e.g. {mismatched[0]})", file=weights)
        forecaster.model.load_state_dict(state)
        forecaster.model.eval()
        forecaster.model.to(pick_device(device))
        return forecaster
