"""The shipped default: a CLIP encoder and a forecaster trained on the embedded default city.

``assets/default/`` holds ``clip/`` and ``lsdm/`` (each a saved-model folder, see engine/artifacts.py)
and ``manifest.json``: the digest of the data set they were trained on, their ids, metrics, and the
command that rebuilt them (``lsdm assets build``). They are used only on a data set whose digest equals
the manifest's, i.e. the default city (``lsdm city build`` with default flags is deterministic):

- ``lsdm env build`` embeds the cells with the shipped encoder instead of training one (``--train``
  trains a new encoder anyway);
- ``lsdm assets install`` (run by the launcher on first launch) does that and registers the shipped
  forecaster as the active model, so the dashboard forecasts without training.

The forecaster's modules (engine.model, engine.model.config, engine.train) are imported by the two
functions that load or train it, not at the top: they import torch, and this module is imported by
the job queue (engine/jobs/kinds.py) and the command line (cli/app.py, cli/env.py), which would take
2.4 s instead of 0.9 s to start (median of 5 runs on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import Database, model_folder, models_dir, open_database
from db.models import Dataset, ModelRecord
from db.queries import activate_model, active_model, dataset_cells, get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.data.windows import load_series
from engine.env.clip import ClipSettings
from engine.env.pipeline import build_environment
from engine.errors import InputError

Progress = Callable[[str], None]


def assets_dir() -> Path:
    """``assets/`` beside the packages (also inside a PyInstaller bundle, where it is added as data)."""
    base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parents[1]))
    return base / "assets"


def default_dir() -> Path:
    return assets_dir() / "default"


def read_manifest(directory: Path | None = None) -> dict | None:
    """The shipped manifest, or None when no default model ships (e.g. a stripped checkout)."""
    path = (directory or default_dir()) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def dataset_digest(session: Session, dataset: Dataset) -> str:
    """SHA-256 of what the shipped files depend on: services, the cells (key, position, land use, POI
    counts) and every entity's traffic and locations."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(dataset.services), list(dataset.poi_categories), dataset.hours]).encode())
    for cell in dataset_cells(session, dataset.id):
        digest.update(
            json.dumps(
                [cell.key, round(cell.lat or 0, 7), round(cell.lon or 0, 7), cell.land_use, list(cell.poi_counts)]
            ).encode()
        )
    series = load_series(session, dataset, encoder_id="")  # "" = no embeddings: they are not part of the digest
    digest.update(np.ascontiguousarray(series.traffic, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(series.location, dtype=np.int64).tobytes())
    return digest.hexdigest()


def matches(session: Session, dataset: Dataset, manifest: dict | None = None) -> bool:
    """Whether the shipped files were trained on exactly this data set."""
    manifest = manifest if manifest is not None else read_manifest()
    if not manifest:
        return False
    return dataset_digest(session, dataset) == manifest.get("dataset_digest")


def shipped_encoder_dir(session: Session, dataset: Dataset) -> Path | None:
    """The shipped encoder folder when it fits this data set, else None."""
    manifest = read_manifest()
    if manifest and matches(session, dataset, manifest):
        return default_dir() / "clip"
    return None


def install(database: Database, dataset_name: str | None = None, *, progress: Progress | None = None) -> dict:
    """Embed the cells with the shipped encoder (if not done) and register the shipped forecaster as the
    active model of the data set. Refuses a data set the files were not trained on."""
    from engine.model import Forecaster  # torch: see the module docstring

    say = progress or (lambda message: None)
    manifest = read_manifest()
    if manifest is None:
        raise InputError(
            "no shipped default model", file=default_dir() / "manifest.json", hint="rebuild it with `lsdm assets build`"
        )
    with database.session() as session:
        dataset = get_dataset(session, dataset_name)
        dataset_id, name = dataset.id, dataset.name
        if not matches(session, dataset, manifest):
            raise InputError(
                f"the shipped model was trained on the default city, not on data set {name!r}",
                field="--dataset",
                hint="train a model on it with `lsdm train`",
            )
        encoder = active_model(session, dataset.id, kind="clip")
        encoder_id = encoder.name if encoder else None
    started = time.perf_counter()
    if encoder_id != manifest["encoder_id"]:
        say("embedding the cells with the shipped CLIP encoder ...")
        build_environment(database, dataset_name=name, encoder_dir=default_dir() / "clip", progress=say)
    source = default_dir() / "lsdm"
    forecaster = Forecaster.load(source, device="cpu")  # verifies the hash
    with database.session() as session:
        existing = session.scalar(
            select(ModelRecord).where(
                ModelRecord.kind == "lsdm",
                ModelRecord.dataset_id == dataset_id,
                ModelRecord.sha256 == manifest["model_sha256"],
            )
        )
        existing_id = existing.id if existing else None
    final = models_dir() / manifest["model_id"]
    if not final.exists():
        with tempfile.TemporaryDirectory(dir=models_dir()) as tmp:
            shutil.copytree(source, Path(tmp) / "model")
            shutil.move(str(Path(tmp) / "model"), final)
    with database.write_session() as session, session.begin():
        if existing_id is not None:
            record = session.get_one(ModelRecord, existing_id)
        else:
            record = ModelRecord(
                name="lsdm (shipped)",
                kind="lsdm",
                path=str(final),
                sha256=manifest["model_sha256"],
                config=forecaster.config.to_dict(),
                metrics=forecaster.meta.get("metrics", {}),
                dataset_id=dataset_id,
            )
        activate_model(session, record)
        record_id = record.id
    return {
        "dataset": name,
        "encoder_id": manifest["encoder_id"],
        "model_id": record_id,
        "model_name": manifest["model_id"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def build(
    out: Path,
    *,
    clip_epochs: int = 40,
    epochs: int | None = None,
    keep_encoder: bool = False,
    progress: Progress | None = None,
    overrides: dict | None = None,
) -> dict:
    """`lsdm assets build`: default city -> trained CLIP -> trained default forecaster, into ``out``.

    ``keep_encoder``: embed the city with the shipped encoder (which must match the default city) and
    retrain only the forecaster; the encoder, its id and its metrics are carried over unchanged.
    ``overrides``: other fields of the forecaster's configuration (recorded in the manifest; the shipped
    default is built without any, a test builds a small one).
    Works in a scratch database so the user's own data is untouched; replaces ``out`` only at the end.
    """
    previous = read_manifest() if keep_encoder else None
    if keep_encoder and (previous is None or not (default_dir() / "clip").is_dir()):
        raise InputError(
            "no shipped encoder to keep", file=default_dir() / "manifest.json", hint="build without --keep-encoder"
        )
    say = progress or (lambda message: None)
    started = time.perf_counter()
    out = Path(out)
    previous_home = os.environ.get("LSDM_HOME")
    with tempfile.TemporaryDirectory(prefix="lsdm-assets-") as scratch:
        os.environ["LSDM_HOME"] = scratch  # the scratch models folder; restored below
        try:
            manifest, staging = _build_in(Path(scratch), out, clip_epochs, epochs, say, started, previous, overrides)
        finally:
            if previous_home is None:
                os.environ.pop("LSDM_HOME", None)
            else:
                os.environ["LSDM_HOME"] = previous_home
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest


def _build_in(
    scratch: Path,
    out: Path,
    clip_epochs: int,
    epochs: int | None,
    say: Progress,
    started: float,
    previous: dict | None = None,
    overrides: dict | None = None,
) -> tuple[dict, Path]:
    from engine.model.config import resolve_config  # torch: see the module docstring
    from engine.train import train

    database = open_database(str(scratch / "build.sqlite"))
    say("building the default city ...")
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig()), activate=True)
    if previous is not None:  # --keep-encoder
        with database.session() as session:
            if dataset_digest(session, get_dataset(session)) != previous["dataset_digest"]:
                raise InputError(
                    "the shipped encoder was trained on another version of the default city",
                    file=default_dir() / "manifest.json",
                    hint="build without --keep-encoder",
                )
        say("embedding the cells with the shipped CLIP encoder ...")
        build_environment(database, encoder_dir=default_dir() / "clip", progress=say)
        env = previous["clip_metrics"]
        clip_source = Path(scratch) / "kept-clip"
        shutil.copytree(default_dir() / "clip", clip_source)  # ``out`` may be the shipped folder itself
    else:
        say("training the CLIP encoder ...")
        env = build_environment(database, settings=ClipSettings(epochs=clip_epochs), progress=say)
        clip_source = None
    overrides = {**(overrides or {}), **({"epochs": epochs} if epochs is not None else {})}
    _, config = resolve_config("lsdm", **overrides)
    say("training the default forecaster ...")
    result = train(
        database,
        "lsdm",
        config,
        progress=lambda entry: say(
            f"epoch {entry['epoch']}: train {entry['train_loss']:.4f} "
            f"val {entry['val_loss']:.4f} ({entry['seconds']:.0f} s)"
        ),
    )
    with database.session() as session:
        dataset = get_dataset(session)
        digest = dataset_digest(session, dataset)
        encoder = active_model(session, dataset.id, kind="clip")
        if encoder is None:
            raise LookupError(f"no environment encoder for data set {dataset.name!r}; run `lsdm env build`")
        encoder_path, encoder_id = model_folder(encoder.path), encoder.name
    staging = out.parent / f".{out.name}.new"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    shutil.copytree(clip_source or encoder_path, staging / "clip")
    shutil.copytree(result.path, staging / "lsdm")
    manifest = {
        "built_with": "lsdm assets build"
        + (f" --clip-epochs {clip_epochs}" if clip_epochs != 40 else "")
        + (f" --epochs {epochs}" if epochs is not None else "")
        + (" --keep-encoder" if previous is not None else ""),
        "dataset": "the default city (`lsdm city build` with default flags)",
        "dataset_digest": digest,
        "encoder_id": encoder_id,
        "model_id": result.path.name,
        "model_sha256": _sha256(result.path / "model.safetensors"),
        "clip_metrics": {"retrieval": env.get("retrieval"), "land_use_agreement": env.get("land_use_agreement")},
        "model_metrics": {k: v for k, v in result.metrics.items() if k != "history"},
        **({"config_overrides": overrides} if set(overrides) - {"epochs"} else {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    database.dispose()
    return manifest, staging


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
