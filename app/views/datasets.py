"""Data: what is loaded (data sets, counts, environment coverage), which data set is active, and where
new data comes from: uploaded files (long table or Tsinghua format), a synthetic city, the environment
build (jobs that `lsdm worker` runs; the page follows them above its tabs, ?job=ID), and the
tile-source / describer settings that build uses."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import common, jobs_ui
from app import datasets_data as da
from app import settings as app_settings
from engine.errors import InputError
from engine.jobs import discard_uploads
from engine.requests import (
    AggregateRequest,
    CityRequest,
    EnvRequest,
    IngestMatrixRequest,
    IngestTableRequest,
    IngestTsinghuaRequest,
)

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator
    from streamlit.runtime.uploaded_file_manager import UploadedFile

    from engine.jobs import JobView

DATA_JOBS = ("ingest.table", "ingest.tsinghua", "ingest.matrix", "city.build", "env.build", "data.aggregate")

common.page_header("Data", "What is loaded, and where new data comes from.")
db = common.database()
overview, coverage, datasets = da.cached_overview(db.url, common.revision())


def finish(notice: str) -> None:
    """After a write in this process: remember what happened, drop cached queries, show the page afresh."""
    st.session_state["data_notice"] = notice
    common.bump_revision()
    st.rerun()


def upload(file: UploadedFile | None) -> da.Upload | None:
    return (file.name, file.getvalue()) if file is not None else None


def queue(kind: str, params: dict, slots: dict | None = None) -> None:
    """Queue a job of this page and follow it (above the tabs); a refused request keeps no uploads."""
    job_id = jobs_ui.submit(kind, params, slots=slots)
    if job_id is None:
        discard_uploads(params)
    else:
        st.session_state["data_job"] = job_id


def show_done(job: JobView) -> None:
    """A done job of this page: what it made (the page was drawn from the fresh data already)."""
    st.success(da.job_notice(job), icon=":material/check_circle:")


def show_overview() -> None:
    if overview is None:
        st.info("No data yet: ingest files or build a synthetic city below.", icon=":material/database:")
        return
    origin = datetime.fromisoformat(overview["time_origin"])
    st.subheader(f"Active data set: {common.md_escape(overview['dataset'])}")
    st.caption(
        f"{overview['kind']} data, {overview['entity_kind']}s modelled, "
        f"{common.hour_label_long(origin, 0)} to {common.hour_label_long(origin, overview['hours'] - 1)} "
        f"({overview['timezone']})."
    )
    columns = st.columns(6)
    columns[0].metric("Data sets", overview["datasets"])
    columns[1].metric("Users" if overview["entity_kind"] == "user" else "Entities", overview["entities"])
    columns[2].metric("Cells", overview["cells"], help=f"{overview['cells_with_coordinates']} with coordinates")
    columns[3].metric("Hours", overview["hours"])
    columns[4].metric("Services", len(overview["services"]), help=", ".join(overview["services"]))
    columns[5].metric(
        "Traffic",
        common.format_bytes(overview["total_bytes"]),
        help=f"{overview['traffic_rows']:,} non-zero (entity, hour, service) rows",
    )


def show_environment() -> None:
    if coverage is None:
        return
    st.markdown("**Environment** (satellite tiles, descriptions, CLIP embeddings of each cell)")
    cells = max(coverage["cells"], 1)
    columns = st.columns(4)
    columns[0].metric(
        "Tiles", f"{coverage['tiles']} / {coverage['cells']}", help=f"{coverage['tiles'] / cells:.0%} of cells"
    )
    columns[1].metric(
        "Descriptions",
        f"{coverage['descriptions']} / {coverage['cells']}",
        help=f"{coverage['description_fallbacks']} template fallbacks after LLM failures",
    )
    columns[2].metric("Embeddings", f"{coverage['embeddings']} / {coverage['cells']}")
    top1 = coverage["retrieval"].get("top1")
    columns[3].metric(
        "Retrieval top-1",
        f"{top1:.3f}" if top1 is not None else "—",
        help="held-out image-to-text retrieval of the encoder",
    )
    if coverage["encoder"]:
        st.caption(f"Encoder: `{coverage['encoder']}`")
        verdict = coverage["retrieval_verdict"]
        if verdict["above_chance"] is False:
            st.warning(f"The environment encoder is {verdict['verdict']}.", icon=":material/warning:")
        if coverage.get("env_mode_why"):
            uses = (
                "both embeddings" if coverage["env_mode"] == "both" else f"the {coverage['env_mode']} embedding alone"
            )
            st.caption(f"z_env uses {uses} ({coverage['env_mode_why']}).")
    else:
        st.caption("No encoder yet: build the environment (tab *Environment* below, or `lsdm env build`).")


def show_datasets() -> None:
    if datasets.empty:
        return
    st.markdown("**Data sets**")
    st.dataframe(
        datasets, hide_index=True, width="stretch", column_config={"active": st.column_config.CheckboxColumn("active")}
    )
    others = datasets.loc[~datasets["active"], "name"].tolist()
    if others:
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        chosen = left.selectbox("Make another data set active", others, key="dataset_pick")
        if right.button("Make active", key="dataset_activate"):
            da.make_active(db, chosen)
            finish(f"Data set {chosen!r} is active now.")


def table_form() -> None:
    st.caption(
        "Records `entity_id, timestamp, cell_id, service, bytes` and cells `cell_id, lat, lon, <POI columns>`, "
        "or any layout described by a JSON column mapping (see docs/data-formats.md). Large files: "
        "`lsdm ingest table` on the command line."
    )
    mappings = da.shipped_mappings()
    with st.form("ingest_table", enter_to_submit=False):
        slots = {}
        records = st.file_uploader("Records (CSV or Parquet)", type=list(da.TABLE_SUFFIXES), key="table_records")
        slots["records"] = st.empty()
        cells = st.file_uploader("Cells (CSV or Parquet)", type=list(da.TABLE_SUFFIXES), key="table_cells")
        slots["cells"] = st.empty()
        left, right = st.columns(2)
        shipped = left.selectbox(
            "Column mapping",
            ["none", *mappings],
            key="table_mapping_choice",
            help="a mapping that ships with the program; an uploaded one wins",
        )
        mapping = right.file_uploader("…or upload a JSON mapping", type=["json"], key="table_mapping")
        slots["mapping"] = st.empty()
        c1, c2, c3 = st.columns(3)
        kind = c1.selectbox("Entities are", ["as the mapping says (else users)", "user", "cell"], key="table_kind")
        timezone = c2.text_input(
            "Time zone",
            placeholder="as the mapping says (else UTC)",
            key="table_timezone",
            max_chars=IngestTableRequest.field_specs()["timezone"]["max_length"],
        )
        name = c3.text_input(
            "Name",
            placeholder="the records file's name",
            key="table_name",
            max_chars=IngestTableRequest.field_specs()["name"]["max_length"],
        )
        slots["name"] = st.empty()
        replace = st.checkbox("Replace a data set of the same name", key="table_replace")
        submitted = st.form_submit_button("Ingest", type="primary", key="table_submit")
    if not submitted:
        return
    for role, file in (("records", records), ("cells", cells)):
        if file is None:
            slots[role].error(f"Choose the {role} file.")
            return
    params = da.table_job(
        upload(records),
        upload(cells),
        upload(mapping) or mappings.get(shipped),
        entity_kind=kind if kind in ("user", "cell") else None,
        timezone=timezone.strip() or None,
        name=name.strip() or None,
        replace=replace,
    )
    queue("ingest.table", params, slots)


def tsinghua_form() -> None:
    st.caption(
        "The Tsinghua App Usage release: the trace, App2Category.txt, Categorys.txt and base_poi.txt, "
        "plus optional base-station coordinates (`cell_id,lat,lon`). The full trace is large: "
        "`lsdm ingest tsinghua` on the command line reads it from disk."
    )
    labels = {
        "trace": "Trace (App_usage_trace.txt)",
        "app2category": "App2Category.txt",
        "categories": "Categorys.txt",
        "poi": "base_poi.txt",
        "coords": "Coordinates CSV (optional)",
    }
    with st.form("ingest_tsinghua", enter_to_submit=False):
        files, slots = {}, {}
        for role in da.TSINGHUA_ROLES:
            files[role] = st.file_uploader(
                labels[role], type=["csv"] if role == "coords" else ["txt", "csv"], key=f"ts_{role}"
            )
            slots[role] = st.empty()
        left, right = st.columns(2)
        name = left.text_input(
            "Name",
            value=IngestTsinghuaRequest.default("name"),
            key="ts_name",
            max_chars=IngestTsinghuaRequest.field_specs()["name"]["max_length"],
        )
        slots["name"] = st.empty()
        all_services = right.checkbox("Keep all 20 services (default: the paper's 10)", key="ts_all")
        replace = st.checkbox("Replace a data set of the same name", key="ts_replace")
        submitted = st.form_submit_button("Ingest", type="primary", key="ts_submit")
    if not submitted:
        return
    missing = [role for role in da.TSINGHUA_ROLES[:4] if files[role] is None]
    if missing:
        slots[missing[0]].error(f"Upload the {missing[0]} file.")
        return
    params = da.tsinghua_job(
        {role: upload(f) for role, f in files.items()}, all_services=all_services, name=name.strip(), replace=replace
    )
    queue("ingest.tsinghua", params, slots)


def matrix_form() -> None:
    st.caption(
        "Wide matrices, one per service: one row per cell (base station), one column per time step, as .npy, "
        ".npz or .csv (header row, the cell's key first). Optional environment vectors, one row per cell, "
        "are used as the cells' environment instead of tiles and descriptions (docs/data-formats.md#matrices). "
        "Large files: `lsdm ingest matrix` on the command line."
    )
    spec = IngestMatrixRequest.field_specs()
    with st.form("ingest_matrix", enter_to_submit=False):
        slots = {}
        matrices = st.file_uploader(
            "Matrices, one per service (.npy, .npz, .csv)",
            type=["npy", "npz", "csv"],
            accept_multiple_files=True,
            key="mx_values",
            help="The services are named after the files (or the .npz arrays); rename them on the command line "
            "with --services",
        )
        keys = st.text_input(
            "Arrays of the .npz files",
            placeholder="KEY, or KEY1,KEY2 (one .npz with a service per array)",
            key="mx_keys",
            help="Needed when an .npz file holds more than one array",
        )
        slots["values"] = st.empty()
        left, right = st.columns(2)
        vectors = left.file_uploader(
            "Environment vectors (optional: .npy, .npz, .csv)", type=["npy", "npz", "csv"], key="mx_embeddings"
        )
        vectors_key = right.text_input("Array of the vectors (.npz)", key="mx_embeddings_key")
        slots["embeddings"] = st.empty()
        c1, c2, c3, c4 = st.columns(4)
        start = c1.text_input(
            "First column's time",
            placeholder="2024-03-04T00:00",
            key="mx_start",
            max_chars=spec["start"]["max_length"],
            help=spec["start"]["help"],
        )
        step = c2.selectbox("Time step", IngestMatrixRequest.choices("step"), key="mx_step", help=spec["step"]["help"])
        unit = c3.number_input(
            "Bytes per unit",
            *IngestMatrixRequest.bounds("unit_bytes"),
            value=spec["unit_bytes"]["default"],
            key="mx_unit",
            format="%g",
            help=spec["unit_bytes"]["help"],
        )
        timezone = c4.text_input(
            "Time zone", value=spec["timezone"]["default"], key="mx_timezone", max_chars=spec["timezone"]["max_length"]
        )
        slots["start"] = st.empty()
        name = st.text_input(
            "Name", placeholder="the first file's name", key="mx_name", max_chars=spec["name"]["max_length"]
        )
        slots["name"] = st.empty()
        replace = st.checkbox("Replace a data set of the same name", key="mx_replace")
        submitted = st.form_submit_button("Ingest", type="primary", key="mx_submit")
    if not submitted:
        return
    if not matrices:
        slots["values"].error("Choose at least one matrix file.")
        return
    if not start.strip():
        slots["start"].error("Give the time of the first column, e.g. 2024-03-04T00:00.")
        return
    params = da.matrix_job(
        [(f.name, f.getvalue()) for f in matrices],
        start=start.strip(),
        keys=keys,
        embeddings=upload(vectors),
        embeddings_key=vectors_key,
        step=step,
        unit_bytes=float(unit),
        timezone=timezone.strip() or spec["timezone"]["default"],
        name=name.strip() or None,
        replace=replace,
    )
    queue("ingest.matrix", params, slots)


def city_form() -> None:
    st.caption(
        "A deterministic synthetic city around central Shanghai (engine/data/city.py). The defaults "
        "are the embedded default city, which the shipped encoder and forecaster were trained on."
    )
    with st.form("city", enter_to_submit=False):
        c1, c2, c3, c4, c5 = st.columns(5)
        spec = CityRequest.field_specs()

        def number(column: DeltaGenerator, label: str, name: str, **options: Any) -> int | float | None:
            """A number field with the request's bounds and default."""
            return column.number_input(
                label, *CityRequest.bounds(name), spec[name]["default"], key=f"city_{name}", **options
            )

        users = number(c1, "Users", "users")
        cells = number(c2, "Cells", "cells")
        seed = number(c3, "Seed", "seed")
        days = number(
            c4,
            "Days",
            "days",
            help="Two weeks by default, so that a weekend is in the training days; "
            "training says when its split needs more.",
        )
        effect = number(
            c5,
            "Environment effect",
            "env_effect",
            step=0.1,
            help="0: nobody's traffic depends on where they are (a control city)",
        )
        c6, c7, c8 = st.columns(3)
        lat = number(c6, "Centre latitude", "center_lat", format="%.4f")
        lon = number(c7, "Centre longitude", "center_lon", format="%.4f")
        radius = number(c8, "Radius (km)", "radius_km", step=0.5)
        name = st.text_input(
            "Name", placeholder="synthetic-seed<seed>", key="city_name", max_chars=spec["name"]["max_length"]
        )
        name_slot = st.empty()
        replace = st.checkbox("Replace a data set of the same name", key="city_replace")
        submitted = st.form_submit_button("Build city", type="primary", key="city_submit")
    if submitted:
        request = CityRequest(
            users=int(users),
            cells=int(cells),
            seed=int(seed),
            days=int(days),
            env_effect=float(effect),
            center_lat=float(lat),
            center_lon=float(lon),
            radius_km=float(radius),
            name=name.strip() or None,
            replace=replace,
        )
        queue("city.build", request.to_params(), {"name": name_slot})


def aggregate_form() -> None:
    st.caption(
        "A data set whose entities are the cells: each cell's users summed per hour and service, with the "
        "cells' tiles and descriptions (then embed them with `lsdm env build --dataset NAME --encoder ENCODER`). "
        "It is the data a direct cell model trains on, to compare with the load summed from every user."
    )
    users = datasets[datasets["entity kind"] != "cell"] if datasets is not None and not datasets.empty else None
    names = [] if users is None else list(users["name"])
    active = [] if users is None else list(users.loc[users["active"], "name"])
    spec = AggregateRequest.field_specs()
    with st.form("aggregate", enter_to_submit=False):
        left, right = st.columns(2)
        source = left.selectbox(
            "Sum the cells of", names, index=names.index(active[0]) if active else None, key="agg_dataset"
        )
        name = right.text_input(
            "Name", placeholder="<source>-cells", key="agg_name", max_chars=spec["name"]["max_length"]
        )
        name_slot = st.empty()
        replace = st.checkbox("Replace a data set of the same name", key="agg_replace")
        submitted = st.form_submit_button("Sum to cells", type="primary", key="agg_submit")
    if submitted:
        request = AggregateRequest(dataset=source, name=name.strip() or None, replace=replace)
        queue("data.aggregate", request.to_params(), {"name": name_slot})


def load_saved_settings() -> app_settings.AppSettings:
    try:
        return app_settings.load_settings()
    except InputError as error:
        st.error(f"The saved settings cannot be read, defaults are used: {error}")
        return app_settings.AppSettings()


def environment_form(saved: app_settings.AppSettings) -> None:
    if overview is None:
        st.info("Ingest data or build a city first.")
        return
    st.caption(
        f"Data set {overview['dataset']!r}. Tiles: `{saved.tile_source or 'automatic'}`, descriptions: "
        f"`{saved.describer}` (tab *Settings*). On the default city the shipped encoder is used, whose "
        "embeddings the shipped forecaster was trained on; elsewhere a new encoder is trained."
    )
    with st.form("environment", enter_to_submit=False):
        c1, c2, c3 = st.columns(3)
        regenerate = c1.checkbox("Redo tiles and descriptions", key="env_regenerate")
        train_encoder = c2.checkbox("Train a new encoder even on the default city", key="env_train")
        epochs = c3.number_input(
            "CLIP epochs (new encoders)",
            *EnvRequest.bounds("clip_epochs"),
            EnvRequest.default("clip_epochs"),
            key="env_epochs",
        )
        submitted = st.form_submit_button("Build environment", type="primary", key="env_submit")
    if submitted:
        queue(
            "env.build",
            da.environment_job(saved, regenerate=regenerate, train_encoder=train_encoder, clip_epochs=int(epochs)),
        )


def settings_form(saved: app_settings.AppSettings) -> None:
    st.caption(f"Saved in `{app_settings.settings_path()}`; used by the environment build.")
    kind, location = app_settings.tile_kind_and_location(saved.tile_source)
    with st.form("settings", enter_to_submit=False):
        left, right = st.columns([1, 3])
        tile_kind = left.selectbox(
            "Tile source",
            app_settings.TILE_KINDS,
            index=app_settings.TILE_KINDS.index(kind),
            key="set_tile_kind",
            help="automatic: synthetic tiles for synthetic cities, none for real data",
        )
        tile_location = right.text_input(
            "Folder, MBTiles file or URL template",
            value=location,
            key="set_tile_location",
            placeholder="dir: a folder · mbtiles: a file · xyz: https://host/{z}/{x}/{y}.png",
        )
        tile_slot = st.empty()
        describer = st.radio(
            "Descriptions",
            app_settings.DESCRIBERS,
            horizontal=True,
            key="set_describer",
            index=app_settings.DESCRIBERS.index(saved.describer),
            help="template: offline and deterministic; openai: any OpenAI-compatible endpoint "
            "(Ollama, llama.cpp, vLLM), with the template as fallback",
        )
        c1, c2 = st.columns(2)
        base_url = c1.text_input(
            "LLM base URL", value=saved.llm_base_url or "", key="set_llm_url", placeholder="http://localhost:11434/v1"
        )
        url_slot = c1.empty()
        model = c2.text_input("LLM model", value=saved.llm_model or "", key="set_llm_model", placeholder="llama3.1:8b")
        model_slot = c2.empty()
        submitted = st.form_submit_button("Save settings", key="set_submit")
        general = st.empty()
    if not submitted:
        return
    candidate = app_settings.AppSettings(
        tile_source=app_settings.tile_spec(tile_kind, tile_location),
        describer=describer,
        llm_base_url=(base_url.strip() or None) if describer == "openai" else None,
        llm_model=(model.strip() or None) if describer == "openai" else None,
    )
    problems = app_settings.validate_settings(candidate)
    slots = {"tile_source": tile_slot, "llm_base_url": url_slot, "llm_model": model_slot}
    for field, message in problems.items():
        slots.get(field, general).error(message)
    if not problems:
        app_settings.save_settings(candidate)
        finish("Settings saved.")


if "data_notice" in st.session_state:
    st.success(st.session_state.pop("data_notice"), icon=":material/check_circle:")
if overview is None:
    jobs_ui.first_launch(stop=False)
else:
    jobs_ui.forget(jobs_ui.FIRST_LAUNCH_KEY)
show_overview()
show_environment()
show_datasets()
st.divider()
job_slot = st.container()  # the followed job, above the tabs whichever tab queued it
saved_settings = load_saved_settings()
tabs = st.tabs(
    [
        "Ingest a table",
        "Ingest Tsinghua files",
        "Ingest matrices",
        "Build a synthetic city",
        "Sum to cells",
        "Environment",
        "Settings",
    ]
)
with tabs[0]:
    table_form()
with tabs[1]:
    tsinghua_form()
with tabs[2]:
    matrix_form()
with tabs[3]:
    city_form()
with tabs[4]:
    aggregate_form()
with tabs[5]:
    environment_form(saved_settings)
with tabs[6]:
    settings_form(saved_settings)

with job_slot:  # above the tabs: the followed job, or the question about a long one (jobs_ui.submit)
    followed_job = st.session_state.pop("data_job", None) or jobs_ui.followed("data", DATA_JOBS)
    if followed_job is not None:
        jobs_ui.follow(followed_job, key="data", on_done=show_done)
