"""Cell: one base station's surroundings (tile, POIs, description), the cells whose environment is most
alike, who is there hour by hour and what they use there; its capacity, and "Forecast this cell": a load
run (engine/load/forecast.py) queued as a job, followed live, then shown as fan charts of the total and
per-service load and the users present, with the capacity line and the risk per hour. Deep link:
?cell=KEY (&load=RUN)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from app import cell_data as c
from app import common, jobs_ui
from app.charts import fan_chart
from app.forecast_data import cached_active_model, default_start
from app.glossary import explain
from db.models import Dataset
from engine.errors import InputError, plural
from engine.jobs import JobView
from engine.load.core import cell_capacity, load_runs, read_load_run, set_capacity
from engine.requests import LoadRequest

if TYPE_CHECKING:
    import pandas as pd


@st.cache_data(show_spinner=False, max_entries=4)
def keys(url: str, dataset_id: int, revision: int) -> list[str]:
    with common.database().session() as session:
        return c.cell_keys(session, session.get(Dataset, dataset_id))


@st.cache_data(show_spinner=False, max_entries=4)
def embeddings(url: str, dataset_id: int, revision: int) -> tuple[str, object, object] | str:
    """(encoder, ids, unit vectors), or the explanation of why there are none (cached as well)."""
    with common.database().session() as session:
        try:
            return c.load_unit_embeddings(session, session.get(Dataset, dataset_id))
        except LookupError as exc:
            return str(exc)


@st.cache_data(show_spinner=False, max_entries=64)
def cell_view(
    url: str, dataset_id: int, revision: int, key: str
) -> tuple[c.CellDetail, pd.DataFrame, pd.DataFrame] | None:
    """Everything about one cell except its neighbours: detail, presence and traffic frames."""
    with common.database().session() as session:
        dataset = session.get(Dataset, dataset_id)
        detail = c.load_cell(session, dataset, key)
        if detail is None:
            return None
        return detail, c.users_by_hour(session, dataset, detail.id), c.traffic_by_service(session, dataset, detail.id)


@st.cache_data(show_spinner=False, max_entries=64)
def neighbours(url: str, dataset_id: int, revision: int, cell_id: int) -> pd.DataFrame | str:
    found = embeddings(url, dataset_id, revision)
    if isinstance(found, str):
        return found
    _, ids, unit = found
    try:
        pairs = c.nearest_by_cosine(ids, unit, cell_id)
    except LookupError as exc:
        return str(exc)
    with common.database().session() as session:
        return c.neighbour_frame(session, session.get(Dataset, dataset_id), pairs)


def choose_cell(options: list[str]) -> str | None:
    """The cell from the link (?cell=KEY) or the picker; a new link wins over the picker's old value."""
    linked = common.query_str("cell")
    if linked is not None and linked not in options:
        st.warning(f"Link parameter cell={common.md_escape(linked)}: no such cell in this data set.")
        linked = None
    if linked and linked != st.session_state.get("cell_shown"):
        st.session_state["cell_pick"] = linked
    elif "cell_pick" not in st.session_state and st.session_state.get("cell_shown") in options:
        st.session_state["cell_pick"] = st.session_state["cell_shown"]  # back from another page
    key = st.selectbox("Cell", options, index=None, key="cell_pick", placeholder="Choose a cell")
    st.session_state["cell_shown"] = key
    common.set_query(cell=key)
    return key


def open_cell(key: str) -> None:
    """Button callback: show another cell (the picker, and through it the URL, follow)."""
    st.session_state["cell_pick"] = key


def show_environment(detail: c.CellDetail, info: common.DatasetInfo) -> None:
    left, right = st.columns([1, 2])
    with left:
        if detail.tile:
            st.image(detail.tile, caption=f"Tile ({detail.tile_source})", width="stretch")
        else:
            st.info(c.tile_hint(detail), icon=":material/satellite_alt:")
    with right:
        st.markdown("**Description**")
        if detail.description:
            st.markdown(f"> {common.md_escape(detail.description)}")
            made_by = detail.generator + (f" ({detail.describer_model})" if detail.describer_model else "")
            st.caption(f"Generator: {common.md_escape(made_by)}")
            if detail.description_error:
                failed = common.md_escape(detail.description_error)
                st.caption(f"The language model failed, so the template wrote it: {failed}")
        else:
            st.info(f"No description for this cell yet: {c.ENV_HINT}.", icon=":material/description:")
        total = int(detail.poi["count"].sum())
        if total:
            st.altair_chart(c.poi_chart(detail.poi), theme=None, width="stretch")
        else:
            st.caption(f"No points of interest around this cell (none of {len(info.poi_categories)} categories).")


def show_neighbours(found: pd.DataFrame | str) -> None:
    st.subheader("Most similar environments")
    if isinstance(found, str):
        st.info(found, icon=":material/hub:")
        return
    st.caption("Cosine similarity of the active encoder's environment embeddings (image and description).")
    for column, row in zip(st.columns(c.NEIGHBOURS), found.itertuples(), strict=False):
        with column:
            if row.tile:
                st.image(row.tile, width="stretch")
            st.button(
                f"Open {row.key}",
                key=f"cell_open_{row.key}",
                on_click=open_cell,
                args=(row.key,),
                icon=":material/cell_tower:",
            )
            st.caption(f"similarity {row.similarity:.3f} · {common.md_escape(row.land_use)}")


# --- the load forecast -------------------------------------------------------------------------------------

LOCATION_HELP = {
    "sampled": "each path draws every user's cell hour by hour from their own history (same hour, same kind "
    "of day): the spread holds where they may be",
    "habitual": "every user at their most frequent cell for that hour of the week",
    "stay": "every user stays where they were last seen",
    "observed": "a backtest: where the data recorded them",
}


@st.cache_data(show_spinner=False, max_entries=16)
def stored_load(url: str, run_id: int, revision: int) -> object:
    return read_load_run(common.database(), run_id)


def cell_runs(dataset_id: int, key: str) -> list[dict]:
    """This cell's own load runs (scope cell:KEY), newest first: read at every run of the page (one small
    query), so that a run made elsewhere (the command line, another window) shows at once."""
    return load_runs(common.database(), dataset_id, limit=50, scope=f"cell:{key}")


@st.cache_data(show_spinner=False, max_entries=64)
def capacity_of(url: str, dataset_id: int, revision: int, key: str) -> dict:
    return cell_capacity(common.database(), dataset_id, key)


def show_capacity(info: common.DatasetInfo, key: str) -> None:
    found = capacity_of(common.database().url, info.id, common.revision(), key)
    source = "set by an operator" if found["set_by_operator"] else "derived from the cell's history"
    st.caption(
        f"Capacity {found['total_bytes'] / 1e6:.2f} MB per hour ({source}; the default is the 99th percentile "
        f"of its observed hourly load, {found['default_bytes'] / 1e6:.2f} MB). Load runs made after a change use it."
    )
    with st.popover("Edit the capacity", icon=":material/tune:"):
        value = st.number_input(
            "Capacity (MB per hour, all services)",
            min_value=0.01,
            max_value=1e9,
            value=round(found["total_bytes"] / 1e6, 2),
            step=1.0,
            key=f"cl_capacity_{key}",
        )
        left, right = st.columns(2)
        if left.button("Save", key="cl_capacity_save", type="primary"):
            try:
                set_capacity(common.database(), info.id, key, float(value))
            except InputError as error:
                st.error(str(error))
            else:
                common.bump_revision()
                st.rerun()
        if right.button("Back to the default", key="cl_capacity_default", disabled=not found["set_by_operator"]):
            set_capacity(common.database(), info.id, key, None)
            common.bump_revision()
            st.rerun()


def load_form(info: common.DatasetInfo, key: str) -> None:
    """The load run's request and the "Forecast this cell" button (a job, followed live)."""
    model = cached_active_model(common.database().url, info.id, common.revision())
    if model is None:
        st.info(
            "No trained model for this data set yet: train one on **Models** to forecast.",
            icon=":material/model_training:",
        )
        return
    state = st.session_state
    defaults = LoadRequest.field_specs()
    state.setdefault("cl_start", default_start(info.hours, model.history))
    for widget, name in (
        ("cl_horizon", "horizon"),
        ("cl_samples", "samples"),
        ("cl_location", "location"),
        ("cl_seed", "seed"),
    ):
        state.setdefault(widget, defaults[name]["default"])
    columns = st.columns([3, 1, 1, 2, 1])
    start = columns[0].select_slider(
        "Start (first forecast hour)",
        options=list(range(model.history, info.hours + 1)),
        key="cl_start",
        format_func=lambda h: common.hour_label_for(info, h),
    )
    horizon = common.checked_number(columns[1], "Horizon (h)", LoadRequest, "horizon", "cl_horizon")
    samples = common.checked_number(
        columns[2], "Sample paths", LoadRequest, "samples", "cl_samples", explain("sample path")
    )
    location = columns[3].selectbox(
        "Where users will be",
        LoadRequest.choices("location"),
        key="cl_location",
        help="; ".join(f"{k}: {v}" for k, v in LOCATION_HELP.items()),
    )
    seed = common.checked_number(columns[4], "Seed", LoadRequest, "seed", "cl_seed", explain("seed"))
    row_slot = st.empty()
    request = LoadRequest(
        scope=f"cell:{key}",
        start=int(start),
        horizon=int(horizon),
        samples=int(samples),
        location=location,
        seed=int(seed),
        model_id=model.id,
    )
    problems = request.validate()
    common.field_error(row_slot, problems, {"horizon": "Horizon (h)", "samples": "Sample paths", "seed": "Seed"})
    others = {k: v for k, v in problems.items() if k not in ("horizon", "samples", "seed")}
    if others:
        st.error("; ".join(f"{name}: {text}" for name, text in others.items()), icon=":material/error:")
    job_id = jobs_ui.followed("cell_load", ("load",))
    if st.button(
        "Forecast this cell",
        type="primary",
        icon=":material/query_stats:",
        key="cl_run",
        disabled=bool(problems),
        help="Correct the fields marked above first." if problems else None,
    ):
        job_id = jobs_ui.submit("load", request.to_params()) or job_id
    st.caption(
        f"Model {model.id} · {model.name}. Only the users who can be in {key} on some path are forecast; the "
        "cell's path i is the sum of their path i."
    )
    if job_id is not None:
        jobs_ui.follow(job_id, key="cell_load", on_done=open_load)


def open_load(job: JobView) -> None:
    run_id = job.ref_id("load_run")
    st.session_state["cl_shown_run"] = run_id
    common.set_query(load=run_id)
    st.toast(f"Load run {run_id} stored ({(job.result or {}).get('seconds') or 0:.1f} s).", icon=":material/check:")


def show_load(info: common.DatasetInfo, key: str) -> None:
    runs = cell_runs(info.id, key)
    if not runs:
        st.caption("No load run of this cell yet.")
        return
    ids = [r["run_id"] for r in runs]
    linked = common.query_int("load", None, 1, 2**31)
    shown = st.session_state.get("cl_shown_run")
    if linked in ids:
        shown = linked
    if shown not in ids:
        shown = ids[0]
    labels = {
        r["run_id"]: f"run {r['run_id']} · start {r['start']} · {r['horizon']} h · {plural(r['users'], 'user')}"
        for r in runs
    }
    run_id = st.selectbox("Load run", ids, index=ids.index(shown), format_func=labels.get, key=f"cl_pick_{key}")
    st.session_state["cl_shown_run"] = run_id
    stored = stored_load(common.database().url, run_id, common.revision())
    frames = c.load_frames(stored, key)
    r = stored.result
    at_risk = int(frames["risk"]["at_risk"].sum())
    st.markdown(
        f"**Total load** · capacity {r.capacity[0] / 1e6:.2f} MB/h · {at_risk} of {r.horizon} hours at risk "
        f"(P(load > capacity) ≥ {r.risk_level:.0%}) · {plural(len(r.users), 'user')} forecast · "
        f"{stored.params.get('location')} "
        f"locations · {r.totals.shape[1]} paths"
    )
    total = frames["total"]
    y_max = float(
        max(
            total["q95"].max(),
            total["capacity"].iloc[0],
            total["truth"].max(skipna=True) if total["truth"].notna().any() else 0,
        )
    )
    chart = fan_chart(total, service="all services", color="#4e79a7", y_title="MB per hour", y_max=y_max * 1.05)
    st.altair_chart(chart + c.capacity_rule(total), theme=None, width="stretch")
    st.caption(
        "Bands: 50 % and 90 % of the paths; line: median; dots: the recorded load where the data has it; "
        "dashed: capacity."
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Risk per hour**")
        st.altair_chart(c.risk_chart(frames["risk"], r.risk_level), theme=None, width="stretch")
    with right:
        st.markdown("**Users present**")
        if frames["users"] is None:
            st.info("The entities of this data set are cells: who is in them is unknown.")
        else:
            st.altair_chart(
                fan_chart(frames["users"], service="users", color="#59a14f", y_title="users"),
                theme=None,
                width="stretch",
            )
    with st.expander("Per service"):
        services = frames["services"]
        colors = common.service_colors(stored.services)
        for row in range(0, len(stored.services), 2):
            cols = st.columns(2)
            for col, name in zip(cols, stored.services[row : row + 2], strict=False):
                with col:
                    st.altair_chart(
                        fan_chart(
                            services[services["service"] == name],
                            service=name,
                            color=colors[stored.services.index(name)],
                            height=150,
                        ),
                        theme=None,
                        width="stretch",
                    )


info = jobs_ui.require_dataset()
common.page_header("Cell", "A base station's surroundings, the places most like it, and the traffic used there.")
key = choose_cell(keys(common.database().url, info.id, common.revision()))
if key is None:
    st.info("Choose a cell above, or click one on the **Map**.", icon=":material/cell_tower:")
    st.stop()
view = cell_view(common.database().url, info.id, common.revision(), key)
if view is None:  # the data set changed under the picker
    st.warning(f"Cell {common.md_escape(key)} is not in {info.label}.")
    st.stop()
detail, presence, traffic = view

use = detail.land_use + (" (inferred from POIs)" if detail.land_use_inferred else "")
place = f"{detail.lat:.5f}, {detail.lon:.5f}" if detail.lat is not None and detail.lon is not None else "no coordinates"
st.markdown(f"### {common.md_escape(detail.key)} · {common.md_escape(detail.name)}")
st.caption(f"Land use: {common.md_escape(use)} · {place} · {int(detail.poi['count'].sum())} points of interest")
show_environment(detail, info)
show_neighbours(neighbours(common.database().url, info.id, common.revision(), detail.id))

st.subheader("Users present")
if presence["users"].sum():
    st.altair_chart(c.presence_chart(presence), theme=None, width="stretch")
    busiest = presence.loc[presence["users"].idxmax()]
    st.caption(f"Distinct users attached to this cell in each hour; most: {busiest['users']} at {busiest['label']}.")
else:
    st.info("No user is ever attached to this cell in this data set.", icon=":material/group_off:")

st.subheader("Traffic by service")
if traffic["mb"].sum() > 0:
    st.altair_chart(c.traffic_chart(traffic, info.services), theme=None, width="stretch")
    st.caption(
        f"Bytes used by the {info.entity_kind}s attached to this cell in each hour: "
        f"{common.format_bytes(traffic['mb'].sum() * 1e6)} in all."
    )
else:
    st.info("No traffic was used at this cell in this data set.", icon=":material/signal_cellular_nodata:")

st.subheader("Load forecast")
show_capacity(info, key)
load_form(info, key)
show_load(info, key)
