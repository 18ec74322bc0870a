"""`lsdm env build` / `lsdm env info`: tiles -> descriptions -> CLIP -> per-cell embeddings.

Transactions: tiles and descriptions are each written in one transaction (each is a complete,
consistent set on its own); the encoder's files are written to a temporary folder and moved into place
before its registration and all of its embeddings are written together in one final transaction. A
failure at any stage leaves earlier committed stages intact and nothing of the failed stage visible.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db import Database, model_folder, models_dir
from db.models import Base, Cell, Dataset, Description, Embedding, ModelRecord, Tile, table_of
from db.queries import (
    activate_model,
    active_model,
    cell_descriptions,
    dataset_cells,
    encoder_names,
    find_encoder,
    get_dataset,
    tile_images,
)
from engine.env.clip import (
    ClipEncoder,
    ClipSettings,
    build_encoder,
    combine_env,
    encode,
    images_to_tensor,
    load_encoder,
    neighbour_agreement,
    resolve_arch,
    resolve_mode,
    retrieval_verdict,
    save_encoder,
    settings_dict,
    train_clip,
)
from engine.env.describe import describe_cells, make_describer
from engine.env.tiles import open_tile_source, store_tiles
from engine.errors import InputError, plural
from engine.executors import Executor, map_chunks

if TYPE_CHECKING:
    import torch

Progress = Callable[[str], None]


def dominant_labels(cells: list[Cell], categories: list[str]) -> list[str]:
    """Each cell's land use where known (synthetic cities), else its most over-represented POI
    category relative to the data set's mean ("none" for empty cells)."""
    land_uses = [c.land_use for c in cells if c.land_use]
    if len(land_uses) == len(cells):
        return land_uses
    counts = np.array([c.poi_counts for c in cells], dtype=float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    lift = share / np.maximum(share.mean(0, keepdims=True), 1e-9)
    return [
        categories[int(np.argmax(row))] if total > 0 else "none" for row, total in zip(lift, counts.sum(1), strict=True)
    ]


def registered_encoder_dir(session: Session, name: str) -> Path:
    """The folder of a registered CLIP encoder (of any data set) by its id, to embed another data set
    with it: a model trained on one city's embeddings can then forecast, or be evaluated, on another."""
    record = find_encoder(session, name)
    if record is None:
        raise InputError(
            f"no registered CLIP encoder {name!r}; registered: {', '.join(encoder_names(session)) or 'none'}",
            field="--encoder",
            hint="`lsdm models --json` lists the encoders with kind clip",
        )
    path = model_folder(record.path)
    if not (path / "config.json").is_file():
        raise InputError(f"the encoder's files are missing in {path}", field="--encoder")
    return path


def build_environment(
    database: Database,
    *,
    dataset_name: str | None = None,
    tiles: str | None = None,
    describer: str = "template",
    describer_options: dict | None = None,
    regenerate: bool = False,
    settings: ClipSettings | None = None,
    encoder_dir: Path | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> dict:
    """Run the whole environment stage for a data set; returns what `env info` reports plus timings.

    ``encoder_dir``: embed with this saved encoder as is (the shipped one, see engine/shipped.py)
    instead of training one; its retrieval metrics are those recorded when it was trained.
    ``executor``: where the cells are embedded (``embed_cells``; default here)."""
    settings = dataclasses.replace(settings) if settings else ClipSettings()  # resolved below; the caller's kept
    settings.validate()
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}

    with database.session() as session:
        dataset = get_dataset(session, dataset_name)
        dataset_id, kind = dataset.id, dataset.kind
        n_tiles = session.scalar(select(func.count()).select_from(Tile).join(Cell).where(Cell.dataset_id == dataset_id))
    tiles = tiles or ("synthetic" if kind == "synthetic" else None)

    started = time.perf_counter()
    if tiles and (regenerate or n_tiles == 0 or tiles != "synthetic"):
        source = open_tile_source(tiles)
        say(f"tiles from {tiles} ...")
        with database.write_session() as session, session.begin():
            counts = store_tiles(
                session,
                session.get_one(Dataset, dataset_id),
                source,
                progress=lambda done, total: say(f"tiles: {done}/{total}"),
            )
        checked = counts["tiles"] + counts["missing"] + counts["failed"]
        say(
            f"tiles: {checked}/{plural(checked, 'cell')} done, {plural(counts['tiles'], 'tile')} stored, "
            f"{counts['missing']} missing at the source, {counts['failed']} failed"
        )
    timings["tiles_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    # Read here; the rows are written at the end in a write transaction of their own, so that a slow LLM
    # endpoint never holds the write lock.
    with database.session() as session:
        counts = describe_cells(
            session,
            session.get_one(Dataset, dataset_id),
            make_describer(describer, **(describer_options or {})),
            regenerate=regenerate,
            progress=say,
            writer=database.write_session,
        )
    fallbacks = counts.get("fallbacks", 0)
    say(
        f"descriptions: {counts['total']}/{plural(counts['total'], 'cell')} done, {counts['described']} written, "
        f"{counts['kept']} kept" + (f", {plural(fallbacks, 'template fallback')}" if fallbacks else "")
    )
    timings["descriptions_s"] = round(time.perf_counter() - started, 2)

    with database.session() as session:
        dataset = session.get_one(Dataset, dataset_id)
        cells = dataset_cells(session, dataset_id)
        texts_by_cell = cell_descriptions(session, dataset_id)
        tiles_by_cell = tile_images(session, dataset_id)
        labels = dominant_labels(list(cells), list(dataset.poi_categories))
    cell_ids = np.array([c.id for c in cells])
    texts = [texts_by_cell.get(int(c), "") for c in cell_ids]
    has_image = np.array([int(c) in tiles_by_cell for c in cell_ids])

    started = time.perf_counter()
    if encoder_dir is not None:
        encoder = load_encoder(Path(encoder_dir))
        images = images_to_tensor([tiles_by_cell.get(int(c)) for c in cell_ids], encoder.image_size)
        metrics = dict(encoder.meta.get("trained_metrics") or {})
        metrics["shipped"] = True
        settings.arch = str(encoder.meta.get("arch", settings.arch))  # what the stored settings say it is
        say(f"CLIP: the shipped encoder {encoder.encoder_id}")
    else:
        paired = np.flatnonzero(has_image)
        settings.arch = resolve_arch(settings, len(paired))
        encoder = build_encoder(settings)
        images = images_to_tensor([tiles_by_cell.get(int(c)) for c in cell_ids], encoder.image_size)
        training = "frozen" if settings.frozen else f"{settings.epochs} epochs"
        say(f"CLIP {settings.arch}: {len(paired)} (tile, description) pairs; {training}")
        metrics = train_clip(
            encoder,
            images[paired],
            [texts[i] for i in paired],
            settings,
            progress=lambda message, _fraction: say(message),
        )
        # Kept in config.json too, so that a shipped copy of the encoder still reports them.
        encoder.meta["trained_metrics"] = {k: v for k, v in metrics.items() if k == "retrieval"}
    timings["clip_train_s"] = round(time.perf_counter() - started, 2)

    mode, why = resolve_mode(settings.mode, metrics.get("retrieval") or {})
    if why is not None:
        uses = "both embeddings" if mode == "both" else f"the {mode} embedding alone"
        say(f"environment: z_env from {uses} ({why})")
        metrics["env_mode"] = {"asked": settings.mode, "used": mode, "why": why}
    settings.mode = mode  # the stored settings say what z_env is (what-ifs recompute it the same way)
    started = time.perf_counter()
    image_z, text_z = embed_cells(encoder, images, texts, executor or Executor(), encoder_dir)
    env_z = combine_env(image_z, text_z, has_image, settings.a, settings.b, settings.mode)
    timings["embed_s"] = round(time.perf_counter() - started, 3)
    timings["embed_cells_per_s"] = round(len(cell_ids) / max(timings["embed_s"], 1e-9), 1)
    metrics["land_use_agreement"] = {
        "env": round(neighbour_agreement(env_z, labels), 4) if settings.mode != "none" else None,
        "image": round(
            neighbour_agreement(image_z[has_image], [label for label, h in zip(labels, has_image, strict=True) if h]), 4
        )
        if has_image.sum() > 1
        else None,
        "text": round(neighbour_agreement(text_z, labels), 4),
        "chance": round(float(sum((labels.count(label) / len(labels)) ** 2 for label in set(labels))), 4),
    }

    with tempfile.TemporaryDirectory(dir=models_dir()) as tmp:
        if encoder_dir is not None:  # a byte-identical copy: same hash, same id
            shutil.copytree(encoder_dir, Path(tmp) / "encoder")
            encoder_id = encoder.encoder_id
        else:
            encoder_id = save_encoder(encoder, Path(tmp) / "encoder")
        final = models_dir() / encoder_id
        # Named by its content's hash: a folder already there holds these very files (and may be another
        # encoder row's, or another worker's run of the same job): kept as it is, never replaced.
        if not final.exists():
            shutil.move(str(Path(tmp) / "encoder"), final)

    with database.write_session() as session, session.begin():
        activate_model(
            session,
            ModelRecord(
                name=encoder_id,
                kind="clip",
                path=str(final),
                sha256=encoder.meta["sha256"],
                config={"settings": settings_dict(settings), "encoder": encoder.meta},
                metrics=metrics,
                dataset_id=dataset_id,
            ),
        )
        session.execute(
            delete(Embedding).where(Embedding.encoder_id == encoder_id, Embedding.cell_id.in_(cell_ids.tolist()))
        )
        rows = []
        for kind_name, matrix in (("image", image_z), ("text", text_z), ("env", env_z)):
            for i, cell_id in enumerate(cell_ids):
                if kind_name == "image" and not has_image[i]:
                    continue
                rows.append(
                    {
                        "cell_id": int(cell_id),
                        "encoder_id": encoder_id,
                        "kind": kind_name,
                        "dim": int(matrix.shape[1]),
                        "vector": matrix[i].astype("<f4").tobytes(),
                    }
                )
        session.execute(table_of(Embedding).insert(), rows)
    summary = environment_info(database, dataset_name)
    summary["timings"] = timings
    return summary


EMBED_CHUNK = 128  # cells per chunk: encode()'s own batch, so that a chunk's numbers are the local run's


class EmbedChunks:
    """A chunk of cells (``images`` uint8 (n, 3, s, s), ``texts``) -> their image and text embeddings: the task
    that engine/executors.py runs here or on Ray's actors, each loading the encoder from ``encoder_dir`` once."""

    def __init__(self, spec: dict, encoder: ClipEncoder | None = None) -> None:
        self.encoder = encoder or load_encoder(Path(spec["encoder_dir"]))

    def __call__(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        images = torch.from_numpy(np.ascontiguousarray(chunk["images"]))
        image_z, text_z = encode(self.encoder, images, [str(text) for text in chunk["texts"]], batch_size=EMBED_CHUNK)
        return {"image": image_z, "text": text_z}


def embed_cells(
    encoder: ClipEncoder, images: torch.Tensor, texts: list[str], executor: Executor, encoder_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """Every cell's image and text embedding, in chunks of ``EMBED_CHUNK`` cells, here or on Ray (whose actors
    load the encoder from its folder: the given one, or this trained encoder saved to a temporary folder)."""
    chunks = [
        {"images": images[i : i + EMBED_CHUNK].numpy(), "texts": np.asarray(texts[i : i + EMBED_CHUNK], dtype=object)}
        for i in range(0, len(texts), EMBED_CHUNK)
    ]
    if not chunks:
        return encode(encoder, images, texts)
    if executor.kind == "local":
        local = EmbedChunks({}, encoder)
        parts = [local(chunk) for chunk in chunks]
    else:
        with tempfile.TemporaryDirectory(dir=models_dir()) as tmp:
            folder = encoder_dir
            if folder is None:
                folder = Path(tmp) / "encoder"
                save_encoder(encoder, folder)
            spec = {"encoder_dir": str(folder)}
            parts = list(
                map_chunks(executor, lambda: EmbedChunks(spec, encoder), (EmbedChunks, {"spec": spec}), chunks)
            )
    return np.concatenate([p["image"] for p in parts]), np.concatenate([p["text"] for p in parts])


def environment_info(database: Database, dataset_name: str | None = None) -> dict:
    """Coverage of tiles, descriptions and embeddings, and the active encoder's retrieval metrics."""
    with database.session() as session:
        dataset = get_dataset(session, dataset_name)
        in_dataset = Cell.dataset_id == dataset.id

        def count(model: type[Base]) -> int:
            return int(session.scalar(select(func.count()).select_from(model).join(Cell).where(in_dataset)) or 0)

        record = active_model(session, dataset.id, kind="clip")
        n_embeddings = 0
        if record is not None:
            n_embeddings = int(
                session.scalar(
                    select(func.count())
                    .select_from(Embedding)
                    .join(Cell)
                    .where(in_dataset, Embedding.encoder_id == record.name, Embedding.kind == "env")
                )
                or 0
            )
        fallbacks = int(
            session.scalar(
                select(func.count())
                .select_from(Description)
                .join(Cell)
                .where(in_dataset, Description.generator == "template-fallback")
            )
            or 0
        )
        retrieval = (record.metrics.get("retrieval") if record else None) or {}
        return {
            "dataset": dataset.name,
            "cells": int(session.execute(select(func.count()).select_from(Cell).where(in_dataset)).scalar_one()),
            "tiles": count(Tile),
            "descriptions": count(Description),
            "description_fallbacks": fallbacks,
            "embeddings": n_embeddings,
            "encoder": record.name if record else None,
            "retrieval": {
                "top1": retrieval.get("top1"),
                "top5": retrieval.get("top5"),
                **{k: v for k, v in retrieval.items() if k not in ("top1", "top5")},
            },
            "land_use_agreement": (record.metrics.get("land_use_agreement") if record else None),
            "retrieval_verdict": retrieval_verdict(retrieval),
            "env_mode": ((record.config.get("settings") or {}).get("mode") if record else None),
            "env_mode_why": ((record.metrics.get("env_mode") or {}).get("why") if record else None),
        }


def reload_active_encoder(session: Session, dataset: Dataset) -> ClipEncoder:
    record = active_model(session, dataset.id, kind="clip")
    if record is None:
        raise LookupError(f"no environment encoder for data set {dataset.name!r}; run `lsdm env build`")
    return load_encoder(model_folder(record.path))
