"""CLIP environment encoder (paper Sec. IV-A, Eq. 7-9) on open_clip.

- Default: a small open_clip CLIP (``lsdm-clip-s``: 64-px ViT, 4 layers, width 128, patch 8; 4-layer
  width-128 text tower; 128-d joint space; 8 M parameters) trained from scratch, contrastively, on
  the data set's (tile, description) pairs: bidirectional InfoNCE with a learnable temperature
  (Eq. 8), random crops, flips, quarter turns and colour jitter as image augmentation.
- ``init=PATH`` starts from a local pretrained open_clip checkpoint the user has (``arch`` names its
  architecture, e.g. ViT-B-32) and fine-tunes it; ``frozen=True`` uses it as is (Table V's
  "pretrained CLIP" row). Nothing is ever downloaded (HF_HUB_OFFLINE is set by engine.env.compat).
- z_env = a * z_image + b * z_text (Eq. 9) on L2-normalised embeddings; ``mode`` ``image``, ``text``
  and ``none`` give the ablations. A cell without a tile uses its text embedding in place of the
  image one (the model then relies on the text), so z_env keeps its scale.
- Saved as ``model.safetensors`` + ``config.json`` (architecture, preprocessing, a/b, the weights'
  SHA-256, metrics). Loading checks the hash and the architecture; no pickle is ever loaded.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.artifacts import read_verified, save_weights
from engine.env.compat import import_open_clip
from engine.errors import InputError

if TYPE_CHECKING:
    import torch

# Registry of our own small architectures (open_clip.CLIP keyword arguments).
ARCHITECTURES: dict[str, dict] = {
    "lsdm-clip-s": dict(
        embed_dim=128,
        vision_cfg=dict(image_size=64, layers=4, width=128, patch_size=8, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=4, layers=4),
    ),
}
# The same text tower with a hand-made image descriptor (colour and texture statistics, frozen) and a small
# trainable head in place of the ViT: for data sets of a few hundred tiles (``DescriptorTower``).
ARCHITECTURES["lsdm-clip-d"] = dict(
    embed_dim=128,
    vision_cfg=dict(image_size=64, layers=1, width=32, patch_size=32, head_width=32),  # replaced at build
    text_cfg=ARCHITECTURES["lsdm-clip-s"]["text_cfg"],
    image_tower="descriptor",
)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ENV_MODES = ("both", "image", "text", "none")
AUTO_ARCH = "auto"  # lsdm-clip-d under DESCRIPTOR_BELOW training tiles, else lsdm-clip-s (resolve_arch)
DESCRIPTOR_BELOW = 500  # measured: better at 150 tiles, as good at 400 (docs/results.md)
AUTO_MODE = "auto"  # "both", or "text" when the held-out retrieval is not clearly above chance (resolve_mode)


@dataclass
class ClipSettings:
    """How to obtain the encoder and how to combine its two embeddings."""

    arch: str = "lsdm-clip-s"  # or "auto": by the number of training tiles (``resolve_arch``)
    init: str | None = None  # local pretrained open_clip checkpoint (file or local-dir:DIR)
    frozen: bool = False  # use ``init`` as is
    epochs: int = 40
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    seed: int = 0
    holdout: float = 0.2  # share of cells kept out of training for retrieval evaluation
    a: float = 0.5  # Eq. 9 weight of the image embedding
    b: float = 0.5  # Eq. 9 weight of the text embedding
    mode: str = AUTO_MODE

    def validate(self) -> None:
        if self.mode not in (AUTO_MODE, *ENV_MODES):
            raise InputError(
                f"expected one of {', '.join((AUTO_MODE, *ENV_MODES))}, got {self.mode!r}", field="--env-mode"
            )
        if self.frozen and not self.init:
            raise InputError("--frozen needs --clip-init PATH (a pretrained checkpoint to use as is)", field="--frozen")
        if self.arch not in (*ARCHITECTURES, AUTO_ARCH) and not self.init:
            raise InputError(
                f"unknown architecture {self.arch!r}; ours: {', '.join(ARCHITECTURES)} "
                "(stock open_clip architectures need --clip-init PATH)",
                field="--clip-arch",
            )
        if self.init and not (self.init.startswith("local-dir:") or Path(self.init).is_file()):
            raise InputError(f"no such checkpoint file: {self.init}", field="--clip-init")
        if self.epochs < 0 or not 0 < self.holdout < 0.9:
            raise InputError("expected --epochs >= 0 and 0 < holdout < 0.9", field="--epochs")


@dataclass
class ClipEncoder:
    """A loaded encoder: the open_clip model, its tokenizer and preprocessing facts."""

    model: Any  # an open_clip model (CLIP or CustomTextCLIP); open_clip ships no type information
    tokenizer: Callable
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict = field(default_factory=dict)

    @property
    def encoder_id(self) -> str:
        return self.meta["encoder_id"]


# --- building and loading -------------------------------------------------------------------------


def _open_clip() -> ModuleType:
    return import_open_clip()


def _register_architectures(open_clip: ModuleType) -> None:
    """Make our architectures known to open_clip by name, so ``--clip-init`` works with them too."""
    import os

    known = set(open_clip.list_models())
    for name, cfg in ARCHITECTURES.items():
        if name in known or "image_tower" in cfg:  # open_clip cannot build a descriptor tower by name
            continue
        folder = Path(tempfile.mkdtemp(prefix="lsdm-clip-cfg-"))
        (folder / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(str(folder / f"{name}.json"))
        os.remove(folder / f"{name}.json")
        folder.rmdir()


def resolve_arch(settings: ClipSettings, tiles: int) -> str:
    """The architecture ``--clip-arch auto`` trains for ``tiles`` (tile, description) pairs: the descriptor
    tower (lsdm-clip-d) under ``DESCRIPTOR_BELOW`` pairs, where the ViT has too few images to learn from, else
    the ViT (lsdm-clip-s); with a checkpoint (``--clip-init``) our ViT's name. Measured: docs/results.md."""
    if settings.arch != AUTO_ARCH:
        return settings.arch
    if settings.init:
        return "lsdm-clip-s"
    return "lsdm-clip-d" if tiles < DESCRIPTOR_BELOW else "lsdm-clip-s"


def build_encoder(settings: ClipSettings) -> ClipEncoder:
    """A fresh (or pretrained-initialised) encoder, before any training."""
    import torch

    open_clip = _open_clip()
    _register_architectures(open_clip)
    torch.manual_seed(settings.seed)
    model_cfg: dict[str, Any]
    if settings.init:
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(settings.arch, pretrained=settings.init)
        except RuntimeError as error:  # state-dict mismatch
            raise InputError(
                f"checkpoint does not match the architecture {settings.arch!r}: {str(error).splitlines()[0]}",
                file=settings.init,
                hint="pass the matching --clip-arch",
            ) from None
        except Exception as error:  # noqa: BLE001 - unreadable file, unknown architecture name
            raise InputError(
                f"cannot load as open_clip architecture {settings.arch!r}: {error}",
                file=settings.init,
                hint="check the file and pass the matching --clip-arch",
            ) from None
        image_size = model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
        mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
        std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
        model_cfg = {"open_clip_arch": settings.arch}
        del preprocess
    else:
        model_cfg = ARCHITECTURES[settings.arch]
        model = _clip_of(open_clip, model_cfg)
        image_size, mean, std = model_cfg["vision_cfg"]["image_size"], OPENAI_MEAN, OPENAI_STD
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the bundled BPE tokenizer: offline
    meta = {"arch": settings.arch, "model_cfg": model_cfg, "init": settings.init, "frozen": settings.frozen}
    return ClipEncoder(model=model, tokenizer=tokenizer, image_size=int(image_size), mean=mean, std=std, meta=meta)


def _clip_of(open_clip: ModuleType, cfg: dict) -> Any:
    """An open_clip CLIP of one of our architectures; ``image_tower: descriptor`` swaps its ViT for a
    ``DescriptorTower`` (the text tower, the temperature and Eq. 8 are open_clip's own)."""
    kwargs = {k: v for k, v in cfg.items() if k != "image_tower"}
    model = open_clip.CLIP(**kwargs)
    if cfg.get("image_tower") == "descriptor":
        from engine.env.descriptor import DescriptorTower

        model.visual = DescriptorTower(int(cfg["embed_dim"]), mean=OPENAI_MEAN, std=OPENAI_STD)
    return model


def save_encoder(encoder: ClipEncoder, directory: Path) -> str:
    """Write model.safetensors + config.json; returns the encoder id (hash prefix of the weights)."""
    digest = save_weights(encoder.model.state_dict(), directory)
    encoder.meta.update(
        encoder_id=f"clip-{digest[:12]}",
        sha256=digest,
        image_size=encoder.image_size,
        mean=list(encoder.mean),
        std=list(encoder.std),
    )
    (directory / "config.json").write_text(json.dumps(encoder.meta, indent=2, default=str))
    return encoder.meta["encoder_id"]


def load_encoder(directory: Path) -> ClipEncoder:
    """Load a saved encoder; refuses files whose hash or architecture does not match the config."""
    meta, state = read_verified(Path(directory), "config.json", hint="rebuild with `lsdm env build`")
    weights = Path(directory) / "model.safetensors"
    open_clip = _open_clip()
    _register_architectures(open_clip)
    cfg = meta["model_cfg"]
    model = open_clip.create_model(cfg["open_clip_arch"]) if "open_clip_arch" in cfg else _clip_of(open_clip, cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(f"weights do not match the architecture: {str(error).splitlines()[0]}", file=weights) from None
    model.eval()
    return ClipEncoder(
        model=model,
        tokenizer=open_clip.get_tokenizer("ViT-B-32"),
        image_size=meta["image_size"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        meta=meta,
    )


# --- data -----------------------------------------------------------------------------------------


def images_to_tensor(images: list[bytes | None], size: int) -> torch.Tensor:
    """Decode tile bytes into a uint8 tensor (N, 3, size, size); missing tiles become zeros."""
    import torch
    from PIL import Image

    out = torch.zeros((len(images), 3, size, size), dtype=torch.uint8)
    for i, data in enumerate(images):
        if data is None:
            continue
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        out[i] = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return out


def _normalise(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    import torch

    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean_t) / std_t


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop, flips, quarter turns and brightness/contrast jitter (aerial views have
    no canonical orientation)."""
    import torch
    import torch.nn.functional as F

    n, _, size, _ = batch.shape
    x = batch.float()
    scale = torch.empty(n).uniform_(0.6, 1.0, generator=generator)
    crop = (scale * size).long().clamp(min=8)
    out = torch.empty_like(x)
    for i in range(n):
        c = int(crop[i])
        top = int(torch.randint(0, size - c + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - c + 1, (1,), generator=generator))
        patch = x[i : i + 1, :, top : top + c, left : left + c]
        out[i] = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)[0]
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    out = torch.rot90(out, turns, dims=(2, 3))
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    brightness = torch.empty(n, 1, 1, 1).uniform_(0.85, 1.15, generator=generator)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.85, 1.15, generator=generator)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean) * brightness
    return out.clamp(0, 255)


# --- training and evaluation ----------------------------------------------------------------------


def split_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) index split."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(n * holdout)) if n > 1 else 0
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def train_clip(
    encoder: ClipEncoder,
    images: torch.Tensor,  # (N, 3, S, S) uint8
    texts: list[str],
    settings: ClipSettings,
    *,
    progress: Callable[[str, float], None] | None = None,
) -> dict:
    """Contrastive fine-tuning (Eq. 8) on the training pairs; returns history and held-out metrics."""
    import torch
    import torch.nn.functional as F

    train_idx, held_idx = split_holdout(len(texts), settings.holdout, settings.seed)
    tokens = encoder.tokenizer(texts)
    model = encoder.model
    if hasattr(model.visual, "fit_standardiser") and not settings.frozen and len(train_idx) >= 2:
        model.visual.fit_standardiser(_normalise(images[train_idx], encoder.mean, encoder.std))
    history: list[float] = []
    started = time.perf_counter()
    if not settings.frozen and settings.epochs > 0 and len(train_idx) >= 2:
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        steps_per_epoch = math.ceil(len(train_idx) / settings.batch_size)
        total = settings.epochs * steps_per_epoch
        warmup = max(1, total // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
        model.train()
        for epoch in range(settings.epochs):
            order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
            losses = []
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                if len(batch) < 2:
                    continue
                pixels = _normalise(_augment(images[batch], generator), encoder.mean, encoder.std)
                image_features, text_features, logit_scale = model(pixels, tokens[batch])[:3]
                logits = logit_scale * image_features @ text_features.T
                target = torch.arange(len(batch))
                # Eq. 8: symmetric InfoNCE, image->text and text->image.
                loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                with torch.no_grad():  # open_clip's recipe: temperature at most 100
                    model.logit_scale.clamp_(0, math.log(100))
                losses.append(float(loss.detach()))
            history.append(float(np.mean(losses)) if losses else float("nan"))
            if progress:
                progress(
                    f"CLIP epoch {epoch + 1}/{settings.epochs}: loss {history[-1]:.3f}", (epoch + 1) / settings.epochs
                )
    model.eval()
    metrics = {
        "train_pairs": len(train_idx),
        "heldout_pairs": len(held_idx),
        "train_seconds": round(time.perf_counter() - started, 2),
        "loss_history": [round(v, 4) for v in history],
    }
    if len(held_idx) >= 2:
        image_z, text_z = encode(encoder, images[held_idx], [texts[i] for i in held_idx])
        metrics["retrieval"] = retrieval_metrics(image_z, text_z)
    return metrics


def encode(
    encoder: ClipEncoder, images: torch.Tensor, texts: list[str], *, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised image and text embeddings, (N, D) float32 each."""
    import torch

    model = encoder.model
    model.eval()
    if len(texts) == 0:
        dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else 0
        return np.zeros((0, dim), dtype=np.float32), np.zeros((0, dim), dtype=np.float32)
    image_out, text_out = [], []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            pixels = images[start : start + batch_size]
            if pixels.shape[-1] != encoder.image_size:
                pixels = torch.nn.functional.interpolate(
                    pixels.float(), size=(encoder.image_size,) * 2, mode="bilinear"
                )
            image_out.append(model.encode_image(_normalise(pixels, encoder.mean, encoder.std), normalize=True))
            text_out.append(model.encode_text(encoder.tokenizer(texts[start : start + batch_size]), normalize=True))
    return torch.cat(image_out).numpy().astype(np.float32), torch.cat(text_out).numpy().astype(np.float32)


def retrieval_metrics(image_z: np.ndarray, text_z: np.ndarray) -> dict:
    """Top-1 / top-5 accuracy of image->text and text->image retrieval among the given pairs."""
    similarity = image_z @ text_z.T
    truth = np.arange(len(image_z))

    def top_k(sim: np.ndarray, k: int) -> float:
        ranks = np.argsort(-sim, axis=1)[:, : min(k, sim.shape[1])]
        return float((ranks == truth[:, None]).any(axis=1).mean())

    image_to_text = {"top1": top_k(similarity, 1), "top5": top_k(similarity, 5)}
    text_to_image = {"top1": top_k(similarity.T, 1), "top5": top_k(similarity.T, 5)}
    return {
        "image_to_text": image_to_text,
        "text_to_image": text_to_image,
        "pairs": len(image_z),
        "chance_top1": round(1 / len(image_z), 4),
        "top1": round((image_to_text["top1"] + text_to_image["top1"]) / 2, 4),
        "top5": round((image_to_text["top5"] + text_to_image["top5"]) / 2, 4),
    }


def retrieval_verdict(retrieval: dict) -> dict:
    """Whether an encoder's held-out retrieval is clearly above chance, in words: ``above_chance`` (True,
    False, or None when it cannot tell), ``chance_top5`` and ``verdict``. "Clearly" is top-5 at least twice
    chance (issue 18's bar: with a few hundred real tiles the from-scratch encoder was at chance, and the
    environment condition is then noise)."""
    pairs, top5 = retrieval.get("pairs"), retrieval.get("top5")
    if not pairs or top5 is None:
        return {"above_chance": None, "chance_top5": None, "verdict": "no held-out retrieval measured"}
    chance = min(5, int(pairs)) / int(pairs)
    if 2 * chance > 1:
        return {
            "above_chance": None,
            "chance_top5": round(chance, 4),
            "verdict": f"too few held-out pairs ({pairs}) to tell the encoder from chance",
        }
    above = round(float(top5), 4) >= round(2 * chance, 4)  # top-5 is stored to 4 decimals: 10/30 is twice 5/30
    verdict = (
        f"clearly above chance (top-5 {float(top5):.3f}, at least twice chance {chance:.3f})"
        if above
        else f"NOT clearly above chance (top-5 {float(top5):.3f} against chance {chance:.3f}): the images tell "
        "the cells apart little better than guessing, so the images add mostly noise; better to condition on "
        "the environment by the text (POI) embedding alone (what `lsdm env build --env-mode auto`, the default, "
        "then does)"
    )
    return {"above_chance": above, "chance_top5": round(chance, 4), "verdict": verdict}


def resolve_mode(mode: str, retrieval: dict) -> tuple[str, str | None]:
    """The embeddings that form z_env for ``--env-mode`` ``mode``, and why when "auto" chose: "auto" is
    "both" unless the encoder's held-out retrieval is NOT clearly above chance (``retrieval_verdict``), where
    the images add noise and z_env is the text (POI) embedding alone; with too few pairs to tell, "both"."""
    if mode != AUTO_MODE:
        return mode, None
    verdict = retrieval_verdict(retrieval)
    if verdict["above_chance"] is False:
        return "text", "auto: the images' held-out retrieval is not clearly above chance"
    if verdict["above_chance"] is None:
        return "both", f"auto: {verdict['verdict']}"
    return "both", "auto: the images' held-out retrieval is clearly above chance"


def combine_env(
    image_z: np.ndarray, text_z: np.ndarray, has_image: np.ndarray, a: float, b: float, mode: str = "both"
) -> np.ndarray:
    """Eq. 9: z_env = a * z_image + b * z_text; a missing image is replaced by the text embedding."""
    if mode not in ENV_MODES:
        raise InputError(f"expected one of {', '.join(ENV_MODES)}, got {mode!r}", field="mode")
    image_z = np.where(has_image[:, None], image_z, text_z)
    if mode == "none":
        return np.zeros_like(text_z)
    if mode == "image":
        return image_z.copy()
    if mode == "text":
        return text_z.copy()
    return (a * image_z + b * text_z).astype(np.float32)


def neighbour_agreement(z: np.ndarray, labels: list[str], k: int = 1) -> float:
    """Share of cells whose k nearest neighbours (cosine, excluding itself) share its label."""
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    similarity = z @ z.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    labels_arr = np.asarray(labels)
    return float((labels_arr[nearest] == labels_arr[:, None]).mean())


def settings_dict(settings: ClipSettings) -> dict:
    return asdict(settings)
