"""What the Data page shows and does, as plain functions: what is loaded (data sets, counts, the
environment's coverage), switching the active data set, and the parameters of the jobs its forms queue:
ingesting uploaded files (the long table and the Tsinghua format), building a synthetic city and
(re)building the environment with the saved settings (app/settings.py). `lsdm worker` runs them
(engine/jobs/kinds.py): reading and checking files is the engine's (engine/data/ingest_*.py). Uploads
are saved under ``<data dir>/uploads`` with their names, which the engine's error messages then use.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app.common import database, format_bytes
from app.settings import AppSettings
from db import Database
from db.queries import NoDatasetError, activate_dataset, all_datasets, dataset_sizes, dataset_summary, get_dataset
from engine.env.pipeline import environment_info
from engine.errors import plural
from engine.jobs import JobView, new_uploads_dir
from engine.requests import EnvRequest, IngestMatrixRequest, IngestTableRequest, IngestTsinghuaRequest
from engine.shipped import assets_dir

Upload = tuple[str, bytes]  # (file name as uploaded, content): what the page hands over
TSINGHUA_ROLES = ("trace", "app2category", "categories", "poi", "coords")
TABLE_SUFFIXES = ("csv", "parquet")


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
        summary["datasets"] = len(all_datasets(session))
        summary["dataset_id"] = dataset.id
        return summary


def environment_coverage(db: Database) -> dict | None:
    """Tiles, descriptions and embeddings of the active data set (engine.env.pipeline.environment_info)."""
    try:
        return environment_info(db)
    except NoDatasetError:
        return None


def dataset_table(db: Database) -> pd.DataFrame:
    """Every data set with its size (db.queries.dataset_sizes: two GROUP BY queries, not per-row loops)."""
    with db.session() as session:
        sizes = dataset_sizes(session)
        rows = [
            {
                "active": d.is_active,
                "name": d.name,
                "kind": d.kind,
                "entities": sizes.get(d.id, (0, 0))[0],
                "entity kind": d.entity_kind,
                "cells": sizes.get(d.id, (0, 0))[1],
                "hours": d.hours,
                "services": len(d.services),
                "starts": d.time_origin.strftime("%a %d %b %Y %H:%M"),
                "time zone": d.timezone,
                "created": d.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            }
            for d in all_datasets(session)
        ]
    return pd.DataFrame(
        rows,
        columns=[
            "active",
            "name",
            "kind",
            "entities",
            "entity kind",
            "cells",
            "hours",
            "services",
            "starts",
            "time zone",
            "created",
        ],
    )


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


# --- jobs: what the forms queue --------------------------------------------------------------------


def save_uploads(uploads: dict[str, Upload | None]) -> tuple[Path, dict[str, str], dict[str, str]]:
    """Write the uploads into a fresh folder under ``<data dir>/uploads`` (engine.jobs.new_uploads_dir),
    each in a subfolder named after its role (two uploads may share a file name) with its name kept:
    the engine picks the format by extension. Returns the folder, role -> path, and path -> the name
    as uploaded (the job's ``uploads_dir``, file parameters and ``names``; the job removes the folder
    when it ends)."""
    folder = new_uploads_dir().resolve()
    paths, names = {}, {}
    for role, upload in uploads.items():
        if upload is None:
            continue
        name, content = upload
        target = folder / role / Path(name).name
        target.parent.mkdir()
        target.write_bytes(content)
        paths[role] = str(target)
        names[str(target)] = Path(name).name
    return folder, paths, names


def table_job(
    records: Upload,
    cells: Upload,
    mapping: Upload | Path | None = None,
    *,
    entity_kind: str | None = None,
    timezone: str | None = None,
    name: str | None = None,
    replace: bool = False,
) -> dict:
    """The parameters of an ``ingest.table`` job (`lsdm ingest table` for uploaded files), the uploads
    saved. ``mapping``: an uploaded JSON mapping or a shipped one (assets/mappings), by its path."""
    uploaded_mapping = mapping if isinstance(mapping, tuple) else None
    folder, paths, names = save_uploads({"records": records, "cells": cells, "mapping": uploaded_mapping})
    shipped = str(mapping) if isinstance(mapping, Path) else None
    return IngestTableRequest(
        records=paths["records"],
        cells=paths["cells"],
        mapping=paths.get("mapping") or shipped,
        entity_kind=entity_kind,
        timezone=timezone,
        name=name,
        replace=replace,
        uploads_dir=str(folder),
        names=names,
    ).to_params()


def tsinghua_job(
    uploads: dict[str, Upload | None], *, all_services: bool = False, name: str = "tsinghua", replace: bool = False
) -> dict:
    """The parameters of an ``ingest.tsinghua`` job (trace, app2category, categories, poi and optional
    coords uploaded), the uploads saved."""
    folder, paths, names = save_uploads(uploads)
    return IngestTsinghuaRequest(
        **{role: paths.get(role) for role in TSINGHUA_ROLES},
        all_services=all_services,
        name=name or IngestTsinghuaRequest.default("name"),
        replace=replace,
        uploads_dir=str(folder),
        names=names,
    ).to_params()


def matrix_job(
    matrices: list[Upload],
    *,
    start: str,
    keys: str = "",
    embeddings: Upload | None = None,
    embeddings_key: str = "",
    step: str = IngestMatrixRequest.default("step"),
    unit_bytes: float = IngestMatrixRequest.default("unit_bytes"),
    timezone: str = IngestMatrixRequest.default("timezone"),
    name: str | None = None,
    replace: bool = False,
) -> dict:
    """The parameters of an ``ingest.matrix`` job, the uploads saved. ``keys``: the arrays to read from the
    uploaded .npz files, comma-separated, in order (one .npz file and several keys: one service per key)."""
    folder, paths, names = save_uploads(
        {f"values{i}": upload for i, upload in enumerate(matrices)} | {"embeddings": embeddings}
    )
    files = [paths[f"values{i}"] for i in range(len(matrices))]
    wanted = [k.strip() for k in keys.split(",") if k.strip()]
    archives = [f for f in files if f.lower().endswith(".npz")]
    sources = []
    if len(archives) == 1 and len(wanted) > 1:  # one archive, several arrays: a service each
        sources = [f for f in files if f not in archives] + [f"{archives[0]}:{k}" for k in wanted]
    else:
        keys_left = iter(wanted)
        for f in files:
            key = next(keys_left, "") if f in archives else ""
            sources.append(f"{f}:{key}" if key else f)
    vectors = paths.get("embeddings")
    if vectors and embeddings_key.strip():
        vectors = f"{vectors}:{embeddings_key.strip()}"
    return IngestMatrixRequest(
        values=tuple(sources),
        start=start,
        step=step,
        embeddings=vectors,
        unit_bytes=unit_bytes,
        timezone=timezone,
        name=name,
        replace=replace,
        uploads_dir=str(folder),
        names=names,
    ).to_params()


def environment_job(
    settings: AppSettings,
    *,
    regenerate: bool = False,
    train_encoder: bool = False,
    clip_epochs: int = EnvRequest.default("clip_epochs"),
) -> dict:
    """The parameters of an ``env.build`` job with the saved settings (tile source, describer and its
    options). As on the command line, the default city is embedded with the shipped encoder unless a
    new encoder is asked for."""
    options = settings.describer_options()
    return EnvRequest(
        tiles=settings.tile_source,
        describer=settings.describer,
        llm_url=options.get("base_url") or EnvRequest.default("llm_url"),
        llm_model=options.get("model") or EnvRequest.default("llm_model"),
        regenerate=regenerate,
        train_encoder=train_encoder,
        clip_epochs=clip_epochs,
    ).to_params()


def job_notice(job: JobView) -> str:
    """What a done job of the Data page made, in a sentence (from its result summary)."""
    r = job.result or {}
    if job.kind in ("ingest.table", "ingest.tsinghua", "city.build") and "dataset" in r:
        made = "Built" if job.kind == "city.build" else "Ingested"
        text = (
            f"{made} {r['dataset']!r}: {plural(r['entities'], r['entity_kind'])}, {plural(r['cells'], 'cell')}, "
            f"{r['hours']} "
            f"hours, {format_bytes(r['total_bytes'])}. It is the active data set now"
        )
        return text + ("; build its environment next (tab *Environment*)." if job.kind == "city.build" else ".")
    if job.kind == "env.build" and "dataset" in r:
        return (
            f"Environment of {r['dataset']!r}: {r['tiles']} tiles, {r['descriptions']} descriptions, "
            f"{r['embeddings']} embeddings (encoder `{r['encoder']}`)."
        )
    return f"{job.title}: {job.message or 'done'}"


def shipped_mappings() -> dict[str, Path]:
    """The column mappings that ship with the program (assets/mappings/*.json), by file name."""
    folder = assets_dir() / "mappings"
    return {path.name: path for path in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
