"""What the Data page shows and does, as plain functions: what is loaded (data sets, counts, the
environment's coverage), switching the active data set, ingesting uploaded files (the long table and
the Tsinghua format), building a synthetic city and (re)building the environment with the saved
settings (app/settings.py). Reading and checking files is the engine's (engine/data/ingest_*.py);
this module moves uploads into a temporary folder, stores what the engine read in one transaction,
and turns the engine's errors into messages that name the file as it was uploaded.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
from sqlalchemy import func, select

from app.common import database
from app.settings import AppSettings
from db import Database
from db.models import Cell, Dataset, Entity
from db.queries import DatasetContent, NoDatasetError, activate_dataset, dataset_summary, get_dataset, store_dataset
from engine.errors import InputError

Upload = tuple[str, bytes]  # (file name as uploaded, content): what the page hands over
TSINGHUA_ROLES = ("trace", "app2category", "categories", "poi", "coords")
TABLE_SUFFIXES = ("csv", "parquet")


@dataclass(eq=False)  # exceptions stay hashable
class UploadProblem(Exception):
    """Why an ingest or build was refused: the message, and which input it is about (an upload's role
    such as "records", or a form field such as "name"), so the page shows it next to that input."""

    message: str
    role: str | None = None

    def __str__(self) -> str:
        return self.message


# --- what is loaded -------------------------------------------------------------------------------


def loaded_overview(db: Database) -> dict | None:
    """The active data set's summary (db.queries.dataset_summary) plus how many data sets there are;
    None when the database holds none."""
    with db.session() as session:
        try:
            dataset = get_dataset(session)
        except NoDatasetError:
            return None
        summary = dataset_summary(session, dataset)
        summary["datasets"] = int(session.scalar(select(func.count()).select_from(Dataset)))
        summary["dataset_id"] = dataset.id
        return summary


def environment_coverage(db: Database) -> dict | None:
    """Tiles, descriptions and embeddings of the active data set (engine.env.pipeline.environment_info)."""
    from engine.env.pipeline import environment_info

    try:
        return environment_info(db)
    except NoDatasetError:
        return None


def dataset_table(db: Database) -> pd.DataFrame:
    """Every data set with its size; counts come from two GROUP BY queries, not per-row loops."""
    with db.session() as session:
        entities = dict(session.execute(select(Entity.dataset_id, func.count()).group_by(Entity.dataset_id)).all())
        cells = dict(session.execute(select(Cell.dataset_id, func.count()).group_by(Cell.dataset_id)).all())
        rows = [{"active": d.is_active, "name": d.name, "kind": d.kind, "entities": int(entities.get(d.id, 0)),
                 "entity kind": d.entity_kind, "cells": int(cells.get(d.id, 0)), "hours": d.hours,
                 "services": len(d.services), "starts": d.time_origin.strftime("%a %d %b %Y %H:%M"),
                 "time zone": d.timezone, "created": d.created_at.strftime("%Y-%m-%d %H:%M UTC")}
                for d in session.scalars(select(Dataset).order_by(Dataset.id))]
    return pd.DataFrame(rows, columns=["active", "name", "kind", "entities", "entity kind", "cells", "hours",
                                       "services", "starts", "time zone", "created"])


@st.cache_data(show_spinner=False)
def cached_overview(url: str, revision_: int) -> tuple[dict | None, dict | None, pd.DataFrame]:
    """(overview, environment coverage, data set table) for the page, keyed by database and revision."""
    del revision_  # part of the cache key only (no leading underscore: Streamlit hashes it)
    db = database()
    return loaded_overview(db), environment_coverage(db), dataset_table(db)


def make_active(db: Database, name: str) -> None:
    """Make the named data set the active one (one transaction)."""
    with db.write_session() as session, session.begin():
        activate_dataset(session, get_dataset(session, name))


# --- storing what was read ------------------------------------------------------------------------


def store_new(db: Database, content: DatasetContent, *, replace: bool) -> dict:
    """Store a data set and make it active in one transaction; an existing name is replaced only when
    asked (the engine's store_dataset would replace it silently). Returns its summary."""
    with db.write_session() as session, session.begin():
        taken = session.scalar(select(Dataset.id).where(Dataset.name == content.name))
        if taken is not None and not replace:
            raise UploadProblem(f"A data set named {content.name!r} exists already: choose another name, or tick "
                                "'Replace a data set of the same name'.", role="name")
        dataset = store_dataset(session, content, activate=True)
        session.flush()
        return dataset_summary(session, dataset)


def _save_uploads(folder: Path, uploads: dict[str, Upload | None]) -> dict[str, Path]:
    """Write each upload under its own subfolder (two uploads may share a file name) with its name
    kept: the engine picks the format by extension and names the file in its messages."""
    paths = {}
    for role, upload in uploads.items():
        if upload is None:
            continue
        name, content = upload
        target = folder / role / Path(name).name
        target.parent.mkdir()
        target.write_bytes(content)
        paths[role] = target
    return paths


def _problem(error: InputError, folder: Path, paths: dict[str, Path]) -> UploadProblem:
    """The engine's message with the temporary folder taken out, attached to the upload it is about."""
    message = str(error)
    role = None
    for key, path in paths.items():
        if str(path) in message or (error.file and Path(error.file) == path):
            role = role or key
        message = message.replace(str(path), path.name)
    return UploadProblem(message.replace(str(folder), "…"), role=role or error.field)


def ingest_table_uploads(db: Database, records: Upload, cells: Upload, mapping: Upload | Path | None = None, *,
                         entity_kind: str | None = None, timezone: str | None = None, name: str | None = None,
                         replace: bool = False) -> dict:
    """`lsdm ingest table` for uploaded files: read and check (engine.data.ingest_table), store, activate.
    ``mapping``: an uploaded JSON mapping or a shipped one (assets/mappings). The uploads live in a
    temporary folder that is removed afterwards, whatever happens."""
    from engine.data.ingest_table import read_table

    with tempfile.TemporaryDirectory(prefix="lsdm-upload-") as tmp:
        folder = Path(tmp)
        uploaded_mapping = mapping if isinstance(mapping, tuple) else None
        paths = _save_uploads(folder, {"records": records, "cells": cells, "mapping": uploaded_mapping})
        mapping_path = paths.get("mapping") or (mapping if isinstance(mapping, Path) else None)
        try:
            content = read_table(paths["records"], paths["cells"], mapping_path, entity_kind=entity_kind,
                                 timezone=timezone or None, name=name or None)
        except InputError as error:
            raise _problem(error, folder, paths) from None
        return store_new(db, content, replace=replace)


def ingest_tsinghua_uploads(db: Database, uploads: dict[str, Upload | None], *, all_services: bool = False,
                            name: str = "tsinghua", replace: bool = False,
                            progress: Callable[[str], None] | None = None) -> dict:
    """`lsdm ingest tsinghua` for uploaded files (trace, app2category, categories, poi, optional coords)."""
    from engine.data.ingest_tsinghua import read_tsinghua

    missing = [role for role in TSINGHUA_ROLES[:4] if uploads.get(role) is None]
    if missing:
        raise UploadProblem(f"Upload the {missing[0]} file.", role=missing[0])
    with tempfile.TemporaryDirectory(prefix="lsdm-upload-") as tmp:
        folder = Path(tmp)
        paths = _save_uploads(folder, uploads)
        try:
            content = read_tsinghua(paths["trace"], paths["app2category"], paths["categories"], paths["poi"],
                                    coords=paths.get("coords"), all_services=all_services, name=name or "tsinghua",
                                    progress=progress)
        except InputError as error:
            raise _problem(error, folder, paths) from None
        return store_new(db, content, replace=replace)


def build_city(db: Database, *, users: int, cells: int, seed: int, days: int, env_effect: float,
               name: str | None = None, replace: bool = False) -> dict:
    """`lsdm city build`: generate a synthetic city (engine.data.city), store it and make it active."""
    from engine.data.city import CityConfig, generate_city

    try:
        content = generate_city(CityConfig(users=users, cells=cells, seed=seed, days=days, env_effect=env_effect),
                                name=name or None)
    except InputError as error:
        raise UploadProblem(str(error), role=error.field) from None
    return store_new(db, content, replace=replace)


# --- the environment ------------------------------------------------------------------------------

# Where each stage of engine.env.pipeline.build_environment sits on the progress bar; messages with
# "done/total" advance within their stage.
ENV_STAGES = (("tiles", 0.0, 0.25), ("descriptions", 0.25, 0.45), ("CLIP", 0.45, 0.95))


def environment_progress(message: str) -> float | None:
    """The progress-bar position of a build_environment message (None for messages of no stage)."""
    for prefix, low, high in ENV_STAGES:
        if message.startswith(prefix):
            found = re.search(r"(\d+)/(\d+)", message)
            share = int(found[1]) / max(int(found[2]), 1) if found else 0.0
            return low + (high - low) * min(share, 1.0)
    return None


def build_environment_with(db: Database, settings: AppSettings, *, regenerate: bool = False,
                           train_encoder: bool = False, clip_epochs: int = 40,
                           progress: Callable[[str], None] | None = None) -> dict:
    """`lsdm env build` for the active data set with the saved settings. As on the command line
    (engine/cli.py ``cmd_env_build``), the default city is embedded with the shipped encoder, whose
    embeddings the shipped forecaster was trained on, unless a new encoder is asked for."""
    from engine.env.clip import ClipSettings
    from engine.env.pipeline import build_environment
    from engine.shipped import shipped_encoder_dir

    encoder_dir = None
    if not train_encoder:
        with db.session() as session:
            encoder_dir = shipped_encoder_dir(session, get_dataset(session))
    return build_environment(db, tiles=settings.tile_source, describer=settings.describer,
                             describer_options=settings.describer_options(), regenerate=regenerate,
                             settings=ClipSettings(epochs=clip_epochs), encoder_dir=encoder_dir, progress=progress)


def shipped_mappings() -> dict[str, Path]:
    """The column mappings that ship with the program (assets/mappings/*.json), by file name."""
    from engine.shipped import assets_dir

    folder = assets_dir() / "mappings"
    return {path.name: path for path in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
