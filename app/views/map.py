"""Map (home): the city's cells coloured by traffic or land use in one hour, every user at their cell,
and a chosen user's week as a path. Clicking a cell or a user opens its page; the selectboxes below the
map do the same without a mouse. Below: forecast the load of several cells, a box or the whole data set
(a ``load`` job), and the risk view: a stored load run's cells coloured by P(load > capacity) at a forecast
hour, with a slider and a playback that redraw the risk map alone (a fragment), never the page.
Deep link: ?hour=H&color=traffic|land_use&user=KEY (&risk=RUN)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import common, jobs_ui
from app import load_common as ld
from app import map_data as m
from app.forecast_data import cached_active_model, default_start
from db.models import Dataset
from engine.errors import plural
from engine.jobs import JobView
from engine.load.core import load_runs, read_load_run
from engine.requests import LoadRequest

PAGES = Path(__file__).resolve().parent
PLAY_SECONDS = 1.0  # the risk map's playback: one forecast hour a second


@st.cache_data(show_spinner="Loading the city ...", max_entries=4)
def city_data(url: str, dataset_id: int, revision: int) -> m.CityData:
    with common.database().session() as session:
        return m.load_city(session, session.get(Dataset, dataset_id))


@st.cache_data(show_spinner="Drawing the basemap ...", max_entries=4)
def basemap(url: str, dataset_id: int, revision: int) -> tuple[str, list[float]] | None:
    with common.database().session() as session:
        return m.load_basemap(session, session.get(Dataset, dataset_id))


def read_link(info: common.DatasetInfo, city: m.CityData) -> tuple[int, str, str | None]:
    """hour, colour and trajectory user from the URL; bad values warn and fall back to the defaults."""
    hour = common.query_int("hour", m.busiest_hour(city), 0, info.hours - 1)
    color = common.query_str("color", "traffic")
    if color not in m.COLOR_MODES:
        st.warning(f"Link parameter `color={color}` is not one of {', '.join(m.COLOR_MODES)}; using traffic.")
        color = "traffic"
    user = common.query_str("user")
    if user is not None and user not in set(city.user_keys):
        st.warning(f"Link parameter `user={user}`: no such user in {info.name}; no trajectory shown.")
        user = None
    return hour, color, user


def label(info: common.DatasetInfo, hour: int) -> str:
    long = info.hours > m.HOURS_PER_WEEK  # the weekday alone is ambiguous beyond one week
    return (common.hour_label_long if long else common.hour_label)(info.time_origin, hour)


def open_page(kind: str, key: str) -> None:
    if kind == "cell":
        st.switch_page(PAGES / "cell.py", query_params={"cell": key})
    st.switch_page(PAGES / "user.py", query_params={"user": key})


@st.cache_data(show_spinner="Reading the load run ...", max_entries=8)
def risk_frames(url: str, dataset_id: int, revision: int, run_id: int) -> ld.RiskFrames:
    """Every forecast hour's map rows of a run, built once per run (the slider then selects one)."""
    return ld.risk_frames(read_load_run(common.database(), run_id), city_data(url, dataset_id, revision))


def area_form(info: common.DatasetInfo, city: m.CityData) -> None:
    """Forecast the load of several cells, a box or the whole data set: a ``load`` job, followed here."""
    model = cached_active_model(common.database().url, info.id, common.revision())
    if model is None:
        st.info("No trained model for this data set yet: train one on **Models** to forecast load.")
        return
    state = st.session_state
    state.setdefault("ml_start", default_start(info.hours, model.history))
    for widget, name in (("ml_horizon", "horizon"), ("ml_samples", "samples"), ("ml_location", "location")):
        state.setdefault(widget, LoadRequest.default(name))
    kinds = {"cells": "Cells I choose", "box": "A box (degrees)", "all": "The whole data set"}
    kind = st.radio("Area", list(kinds), format_func=kinds.get, horizontal=True, key="ml_kind")
    scope = "area:all"
    if kind == "cells":
        chosen = st.multiselect("Cells", list(city.cells["key"]), key="ml_cells", placeholder="Choose cells")
        scope = "cell:" + ",".join(chosen)
    elif kind == "box":
        located = city.cells[city.located]
        if located.empty:
            st.info("The cells of this data set have no coordinates: choose cells instead.")
            return
        west, south, east, north = m.cell_bounds(city)
        cols = st.columns(4)
        box = [
            cols[i].number_input(name, value=round(float(v), 5), format="%.5f", key=f"ml_{name.lower()}")
            for i, (name, v) in enumerate((("South", south), ("West", west), ("North", north), ("East", east)))
        ]
        scope = "box:" + ",".join(f"{v:.6f}" for v in box)
    cols = st.columns([3, 1, 1, 2])
    start = cols[0].select_slider(
        "Start",
        options=list(range(model.history, info.hours + 1)),
        key="ml_start",
        format_func=lambda h: label(info, h),
    )
    horizon = cols[1].number_input("Horizon (h)", *LoadRequest.bounds("horizon"), key="ml_horizon")
    samples = cols[2].number_input("Sample paths", *LoadRequest.bounds("samples"), key="ml_samples")
    location = cols[3].selectbox("Where users will be", LoadRequest.choices("location"), key="ml_location")
    request = LoadRequest(
        scope=scope, start=int(start), horizon=int(horizon), samples=int(samples), location=location, model_id=model.id
    )
    job_id = jobs_ui.followed("map_load", ("load.area",))
    if st.button("Forecast this area", type="primary", icon=":material/query_stats:", key="ml_run"):
        problems = request.validate()
        if kind == "cells" and scope == "cell:":
            problems = {"scope": "choose at least one cell"}
        if problems:
            st.error("Not run: " + "; ".join(f"{name}: {text}" for name, text in problems.items()))
        else:
            job_id = jobs_ui.submit("load.area", request.to_params()) or job_id
    st.caption(
        "Every user who can be in the area on some path is forecast; each cell's path i sums their path i. "
        "The whole default city takes minutes on two CPU cores (docs/results.md)."
    )
    if job_id is not None:
        jobs_ui.follow(job_id, key="map_load", on_done=show_new_risk)


def show_new_risk(job: JobView) -> None:
    run_id = job.ref_id("load_run")
    st.session_state["map_risk_run"] = run_id
    common.set_query(risk=run_id)
    st.toast(f"Load run {run_id} stored.", icon=":material/check:")


def risk_map(frames: ld.RiskFrames, base: tuple[str, list[float]] | None) -> None:
    """The risk map and its hour slider. Run as a fragment (``risk_section``): a new hour redraws only this;
    while playing, the fragment reruns on its own every ``PLAY_SECONDS`` and moves one hour on."""
    hours = len(frames.hours)
    state = st.session_state
    if state.get("map_risk_hour", 0) >= hours:
        state["map_risk_hour"] = 0
    if state.get("map_risk_play") and state.pop("_map_risk_ticked", False):
        state["map_risk_hour"] = (state.get("map_risk_hour", 0) + 1) % hours
    state["_map_risk_ticked"] = True  # the next run of a playing fragment is a tick
    state.setdefault("map_risk_hour", 0)
    hour = st.select_slider(
        "Forecast hour", options=list(range(hours)), key="map_risk_hour", format_func=frames.hours.__getitem__
    )
    frame = frames.frames[hour]
    view = m.initial_view(base[1] if base else frames.bounds)
    st.pydeck_chart(ld.risk_deck(frame, view, base), key="map_risk_deck", height=480)
    level = frames.risk_level
    st.markdown(ld.risk_legend(level), unsafe_allow_html=True)
    at_risk = int((frame["p"] >= level).sum()) if level > 0 else 0
    st.caption(
        f"**{frames.hours[hour]}**: {at_risk} of {plural(len(frame), 'cell')} with P(load > capacity) "
        f"at least {level:.0%}"
        + (f"; {plural(frames.unplaced, 'cell')} without coordinates not drawn" if frames.unplaced else "")
    )


@st.cache_data(show_spinner=False, max_entries=4)
def light(base: tuple[str, list[float]] | None) -> tuple[str, list[float]] | None:
    return ld.light_basemap(base)


def risk_section(info: common.DatasetInfo, base: tuple[str, list[float]] | None) -> None:
    runs = [r for r in load_runs(common.database(), info.id, limit=50) if r["kind"] == "load"]
    if not runs:
        st.caption("No load run yet: forecast an area above, or a cell on its page.")
        return
    ids = [r["run_id"] for r in runs]
    linked = common.query_int("risk", None, 1, 2**31)
    shown = linked if linked in ids else st.session_state.get("map_risk_run")
    if shown not in ids:
        shown = ids[0]
    names = {
        r[
            "run_id"
        ]: f"run {r['run_id']} · {r['name']} · {plural(r['cells'], 'cell')} · {r['horizon']} h from {r['start']}"
        for r in runs
    }
    run_id = st.selectbox("Load run", ids, index=ids.index(shown), format_func=names.get, key="map_risk_pick")
    if run_id != st.session_state.get("map_risk_run"):
        st.session_state["map_risk_hour"] = 0
    st.session_state["map_risk_run"] = run_id
    common.set_query(risk=run_id)
    playing = st.toggle("Play", key="map_risk_play", help="Step through the forecast hours, one a second.")
    st.session_state["_map_risk_ticked"] = False  # a full run of the page is not a tick
    fragment = st.fragment(run_every=PLAY_SECONDS if playing else None)(risk_map)
    fragment(risk_frames(common.database().url, info.id, common.revision(), run_id), light(base))


info = jobs_ui.require_dataset()
common.page_header(
    "City map",
    f"{info.name}: {plural(info.cells, 'cell')}, {plural(info.entities, info.entity_kind)} over "
    f"{info.hours} hours. Click a cell or a user to open it.",
)
city = city_data(common.database().url, info.id, common.revision())
hour, color, user = read_link(info, city)
for key, value in (("map_hour", hour), ("map_color", color), ("map_user", user)):
    st.session_state.setdefault(key, value)

left, middle, right = st.columns([1.2, 3, 1.4])
color = left.radio(
    "Colour cells by",
    m.COLOR_MODES,
    key="map_color",
    horizontal=True,
    format_func=lambda c: {"traffic": "Traffic", "land_use": "Land use"}[c],
)
hour = middle.select_slider("Hour", options=range(info.hours), key="map_hour", format_func=lambda h: label(info, h))
has_users = len(city.user_keys) > 0
user = right.selectbox(
    "Trajectory of",
    list(city.user_keys),
    key="map_user",
    index=None,
    placeholder="no user",
    disabled=not has_users,
    help="The user's cells over the week of the chosen hour.",
)
common.set_query(hour=hour, color=color, user=user)

located = city.located
if not located.any():
    st.info(
        "No cell of this data set has a latitude and longitude, so there is nothing to place on a map. "
        "Open a cell or a user below.",
        icon=":material/location_off:",
    )
else:
    try:
        base = basemap(common.database().url, info.id, common.revision())
    except Exception as exc:  # noqa: BLE001 - the engine's reason, but the cells can still be drawn
        st.error(f"The basemap could not be drawn: {exc}")
        base = None
    cells = m.cell_layer_frame(city, hour, color)
    users = m.user_layer_frame(city, hour, user)
    stops, path = m.trajectory(city, user, hour) if user else ([], [])
    deck = m.build_deck(
        basemap=base,
        cells=cells,
        users=users,
        path=path,
        path_user=user,
        view=m.initial_view(base[1] if base else m.cell_bounds(city)),
    )
    event = st.pydeck_chart(deck, on_select="rerun", selection_mode="single-object", key="map_deck", height=620)
    picked = m.picked_object(event.selection if event is not None else None)
    if picked:
        open_page(*picked)

    present = int(m.users_per_cell(city, hour).sum())
    st.caption(
        f"**{label(info, hour)}**: {common.format_bytes(city.cell_hour_bytes[:, hour].sum())} in all cells"
        + (f", {present} of {plural(len(city.user_keys), 'user')} located" if has_users else "")
        + (f"; {user}'s week: {len(stops)} stops" if user else "")
    )
    if color == "land_use":
        legend = m.land_use_legend(list(city.cells.loc[located, "land_use"]))
        if city.cells["inferred"].any():
            legend += "<br><small>Land use inferred from each cell's POI mix (the data set has none).</small>"
    else:
        legend = m.traffic_legend(city.traffic_cap)
    st.markdown(legend, unsafe_allow_html=True)

st.subheader("Load and risk")
with st.expander("Forecast an area", icon=":material/query_stats:", expanded=False):
    area_form(info, city)
risk_base = None
if city.located.any():
    try:
        risk_base = basemap(common.database().url, info.id, common.revision())
    except Exception:  # noqa: BLE001 - the map shows its own error above; the risk map draws without it
        risk_base = None
risk_section(info, risk_base)

st.subheader("Open")
cell_col, user_col = st.columns(2)
cell_key = cell_col.selectbox(
    "A cell", list(city.cells["key"]), index=None, placeholder="Choose a cell", key="map_open_cell"
)
user_key = user_col.selectbox(
    "A user", list(city.user_keys), index=None, placeholder="Choose a user", key="map_open_user", disabled=not has_users
)
if cell_key:
    open_page("cell", cell_key)
if user_key:
    open_page("user", user_key)
