"""The LSDM forecaster: configuration, denoiser, diffusion, and the saved-model format.

A saved model is a folder with ``model.safetensors`` (EMA weights) and ``model.json`` (configuration,
normalisation, the data fingerprint, the weights' SHA-256, metrics). Loading checks the hash and that
the configuration rebuilds exactly the stored tensors; nothing is unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.artifacts import read_document, read_verified, save_weights
from engine.data.windows import Normaliser
from engine.errors import InputError
from engine.model.config import CONFIGS, ModelConfig, resolve_config
from engine.model.denoiser import Denoiser
from engine.model.diffusion import Schedule, Standardiser, sample

__all__ = ["CONFIGS", "Forecaster", "ModelConfig", "pick_device", "read_model_document", "resolve_config", "sample"]


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU. An unknown name, or CUDA on a machine without it, is an
    InputError naming the ``device`` field (they were torch tracebacks)."""
    if prefer:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", prefer):
            raise InputError(f"expected cpu, cuda or cuda:N, got {prefer!r}", field="device")
        if prefer.startswith("cuda"):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(prefer.partition(":")[2] or 0)
            if index >= count:
                found = f"{count} CUDA device(s)" if count else "no CUDA GPU"
                raise InputError(f"{prefer} was asked for, but this machine has {found}", field="device",
                                 hint="use cpu, or leave the device out to use CUDA when present")  # fmt: skip
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_model_document(directory: Path) -> dict:
    """A saved forecaster's ``model.json`` (configuration, normalisation, data fingerprint, metrics) after
    checking its format and that the weights beside it are the recorded ones; the weights are not
    loaded (what the dashboard reads of a model)."""
    document_file = Path(directory) / "model.json"
    document = read_document(Path(directory), "model.json", hint="train again with `lsdm train`")
    if document.get("format") != "lsdm-forecaster/1":
        raise InputError(f"unknown model format {document.get('format')!r}", file=document_file)
    return document


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
    def create(
        cls,
        config: ModelConfig,
        *,
        normaliser: Normaliser,
        standardiser: Standardiser,
        services: list[str],
        env_dim: int,
        meta: dict | None = None,
    ) -> Forecaster:
        torch.manual_seed(config.seed)
        model = Denoiser(config, env_dim=env_dim, n_services=len(services))
        return cls(config, model, normaliser, standardiser, list(services), env_dim, dict(meta or {}))

    def save(self, directory: Path) -> str:
        """Write the folder; returns the weights' SHA-256."""
        digest = save_weights(self.model.state_dict(), directory)
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
    def load(cls, directory: Path, *, device: str | None = None, expected_sha256: str | None = None) -> Forecaster:
        """A saved forecaster, after checking its weights against its own record and, where given, the
        database's (``expected_sha256``), and its configuration field by field before any tensor is made."""
        directory = Path(directory)
        doc_file, weights = directory / "model.json", directory / "model.safetensors"
        document, state = read_verified(
            directory, "model.json", hint="train again with `lsdm train`", expected_sha256=expected_sha256
        )
        if document.get("format") != "lsdm-forecaster/1":
            raise InputError(f"unknown model format {document.get('format')!r}", file=doc_file)
        config = ModelConfig.from_dict(document["config"], origin=str(doc_file))
        meta = {
            k: v
            for k, v in document.items()
            if k not in ("format", "config", "normaliser", "standardiser", "services", "env_dim")
        }
        forecaster = cls.create(
            config,
            normaliser=Normaliser.from_dict(document["normaliser"]),
            standardiser=Standardiser(**document["standardiser"]),
            services=document["services"],
            env_dim=int(document["env_dim"]),
            meta=meta,
        )
        expected = forecaster.model.state_dict()
        mismatched = sorted(set(state) ^ set(expected)) + sorted(
            k for k in set(state) & set(expected) if state[k].shape != expected[k].shape
        )
        if mismatched:
            raise InputError(
                f"weights do not match the configuration in model.json ({len(mismatched)} tensors "
                f"differ, e.g. {mismatched[0]})",
                file=weights,
            )
        forecaster.model.load_state_dict(state)
        forecaster.model.eval()
        forecaster.model.to(pick_device(device))
        return forecaster
