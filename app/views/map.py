"""Map (home): the city's cells coloured by traffic or land use in one hour, every user at their cell,
and a chosen user's week as a path. Clicking a cell or a user opens its page; the selectboxes below the
map do the same without a mouse. Below: forecast the load of several cells, a box or the whole data set
(a ``load`` job), and the risk view: a stored load run's cells coloured by P(load > capacity) at a forecast
hour, with a slider and a playback that redraw the risk map alone (a fragment), never the page.
Deep link: ?hour=H&color=traffic|land_use&user=KEY (&risk=RUN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import common, jobs_ui
from app import load_common as ld
from app import map_data as m
from app.forecast_data import cached_active_model, default_start
from app.glossary import explain
from engine.errors import plural
from engine.jobs import JobView
from engine.load.core import load_runs, read_load_run
from engine.requests import LoadRequest

PAGES = Path(__file__).resolve().parent
FIX_FIRST = "Correct the fields marked above first."
PLAY_SECONDS = 1.0  # the risk map's playback: one forecast hour a second


def read_link(info: common.DatasetInfo, city: m.CityData) -> tuple[int, str, str | None]:
    """hour, colour and trajectory user from the URL; bad values warn and fall back to the defaults."""
    hour = common.query_int("hour", m.busiest_hour(city), 0, info.hours - 1)
    color = common.query_str("color", "traffic")
    if color not in m.COLOR_MODES:
        st.warning(f"Link parameter `color={color}` is not one of {', '.join(m.COLOR_MODES)}; using traffic.")
        color = "traffic"
    user = common.query_str("user")
    if user is not None and user not in set(city.user_keys):
        st.warning(f"Link parameter user={common.md_escape(user)}: no such user in {info.label}; no trajectory shown.")
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
    return ld.risk_frames(read_load_run(common.database(), run_id), ld.cached_city(url, dataset_id, revision))


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
    horizon = common.checked_number(cols[1], "Horizon (h)", LoadRequest, "horizon", "ml_horizon")
    samples = common.checked_number(
        cols[2], "Sample paths", LoadRequest, "samples", "ml_samples", explain("sample path")
    )
    location = cols[3].selectbox(
        "Where users will be", LoadRequest.choices("location"), key="ml_location", help=explain("location scenario")
    )
    with st.expander("Where it runs"):
        cols = st.columns([3, 1])
        executor = cols[0].text_input(
            "Executor",
            value=LoadRequest.default("executor"),
            key="ml_executor",
            help="local: the worker's own process. ray: a Ray instance started on the worker's machine. "
            "ray:ADDRESS: a Ray cluster (auto, HOST:PORT or ray://HOST:10001), for a whole city (docs/scale.md).",
        )
        workers = cols[1].number_input(
            "Ray actors", min_value=0, max_value=10_000, value=0, step=1, key="ml_workers", help="0: one per CPU"
        )
    row_slot = st.empty()
    request = LoadRequest(
        scope=scope,
        start=int(start),
        horizon=int(horizon),
        samples=int(samples),
        location=location,
        model_id=model.id,
        executor=executor.strip(),
        workers=int(workers) or None,
    )
    problems = request.validate()
    if kind == "cells" and scope == "cell:":
        problems = {"scope": "choose at least one cell", **problems}
    common.field_error(row_slot, problems, {"horizon": "Horizon (h)", "samples": "Sample paths"})
    others = {k: v for k, v in problems.items() if k not in ("horizon", "samples", "scope")}
    if others:
        st.error("; ".join(f"{name}: {text}" for name, text in others.items()), icon=":material/error:")
    job_id = jobs_ui.followed("map_load", ("load.area",))
    if st.button(
        "Forecast this area",
        type="primary",
        icon=":material/query_stats:",
        key="ml_run",
        disabled=bool(problems),
        help=None if not problems else "Choose at least one cell first." if set(problems) == {"scope"} else FIX_FIRST,
    ):
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


def risk_map(frames: ld.RiskFrames, base: m.Basemap | None) -> None:
    """The risk map and its hour slider. Run as a fragment (``risk_section``): a new hour redraws only this;
    while playing, the fragment reruns on its own every ``PLAY_SECONDS`` and moves one hour on."""
    hours = len(frames.hours)
    step_hour("map_risk", hours)
    hour = st.select_slider(
        "Forecast hour",
        options=list(range(hours)),
        key="map_risk_hour",
        format_func=frames.hours.__getitem__,
        on_change=lambda: st.session_state.update(_map_risk_ticked=False),
    )
    frame = frames.frames[hour]
    view = m.initial_view(base.bounds if base else frames.bounds)
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
def light(base: m.Basemap | None) -> m.Basemap | None:
    return base.light() if base is not None else None


def risk_section(info: common.DatasetInfo, base: m.Basemap | None) -> None:
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
    playing = st.toggle("Play forecast", key="map_risk_play", help="Step through the forecast hours, one a second.")
    st.session_state["_map_risk_ticked"] = False  # a full run of the page is not a tick
    fragment = st.fragment(run_every=PLAY_SECONDS if playing else None)(risk_map)
    fragment(risk_frames(common.database().url, info.id, common.revision(), run_id), light(base))


def find_options(city: m.CityData) -> dict[str, str]:
    """ "cell:KEY" / "user:KEY" -> its label in the "Find" box."""
    cells = {f"cell:{k}": f"cell {k} · {u}" for k, u in zip(city.cells["key"], city.cells["land_use"], strict=True)}
    return cells | {f"user:{k}": f"user {k}" for k in city.user_keys}


def found_focus(city: m.CityData, found: str | None, hour: int) -> tuple[str | None, pd.DataFrame | None]:
    """The cell to centre on for a "Find" choice (a user: their cell in ``hour``) and the ring to draw."""
    if not found:
        return None, None
    kind, _, key = found.partition(":")
    if kind == "user":
        at = city.user_cell[np.flatnonzero(city.user_keys == key)[0], hour] if key in set(city.user_keys) else -1
        key = str(city.cells["key"].iat[at]) if at >= 0 else ""
    row = city.cells[(city.cells["key"] == key) & city.located]
    if row.empty:
        return None, None
    return key, row[["key", "lon", "lat"]].reset_index(drop=True)


def step_hour(key: str, hours: int) -> None:
    """Move a playing map one hour on (wrapping) when the fragment reran on its own, not for a slider move
    or a full page run (those set ``_{key}_ticked`` to False first)."""
    state = st.session_state
    if state.get(f"{key}_hour", 0) >= hours:
        state[f"{key}_hour"] = 0
    if state.get(f"{key}_play") and state.pop(f"_{key}_ticked", False):
        state[f"{key}_hour"] = (state.get(f"{key}_hour", 0) + 1) % hours
    state[f"_{key}_ticked"] = True
    state.setdefault(f"{key}_hour", 0)


def city_map(
    info: common.DatasetInfo,
    city: m.CityData,
    color: str,
    user: str | None,
    found: str | None,
    base: m.Basemap | None,
    view: object,
) -> None:
    """The hour slider, the map and its caption: a fragment, so an hour step (a slider move, or a tick of the
    playback) redraws this alone from the cached city arrays, never the page."""
    step_hour("map", info.hours)
    hour = st.select_slider(
        "Hour",
        options=range(info.hours),
        key="map_hour",
        format_func=lambda h: label(info, h),
        on_change=lambda: st.session_state.update(_map_ticked=False),
    )
    common.set_query(hour=hour)
    users = m.user_layer_frame(city, hour, user)
    origin = info.time_origin.hour
    day = m.day_trajectory(city, user, hour, origin) if user else None
    present = int(m.users_per_cell(city, hour).sum())
    has_users = len(city.user_keys) > 0
    moves = f"; {user}'s day: {plural(max(len(day.stops) - 1, 0), 'move')}" if day is not None else ""
    st.caption(
        f"**{label(info, hour)}**: {common.format_bytes(city.cell_hour_bytes[:, hour].sum())} in all cells"
        + (f", {present} of {plural(len(city.user_keys), 'user')} located" if has_users else "")
        + moves
    )
    _, ring = found_focus(city, found, hour)
    deck = m.build_deck(
        basemap=base,
        cells=m.cell_layer_frame(city, hour, color),
        users=users,
        trajectory=day,
        view=view,
        focus=ring,
    )
    event = st.pydeck_chart(deck, on_select="rerun", selection_mode="single-object", key="map_deck", height=600)
    picked = m.picked_object(event.selection if event is not None else None)
    if picked:
        open_page(*picked)


info = jobs_ui.require_dataset()
common.page_header(
    "City map",
    f"{info.label}: {plural(info.cells, 'cell')}, {plural(info.entities, info.entity_kind)} over "
    f"{info.hours} hours. Click a cell or a user to open it.",
)
city = ld.cached_city(common.database().url, info.id, common.revision())
hour, color, user = read_link(info, city)
options = find_options(city)
linked_find = common.query_str("find")
if linked_find is not None and linked_find not in options:
    st.warning(f"Link parameter find={common.md_escape(linked_find)}: no such cell or user in {info.label}.")
    linked_find = None
for key, value in (("map_hour", hour), ("map_color", color), ("map_user", user), ("map_find", linked_find)):
    st.session_state.setdefault(key, value)

has_users = len(city.user_keys) > 0
left, find_col, user_col, play_col = st.columns([1.3, 1.7, 1.5, 0.6], vertical_alignment="bottom")
color = left.radio(
    "Colour cells by",
    m.COLOR_MODES,
    key="map_color",
    horizontal=True,
    format_func=lambda c: {"traffic": "Traffic", "land_use": "Land use"}[c],
)
found = find_col.selectbox(
    "Find",
    list(options),
    key="map_find",
    index=None,
    format_func=options.get,
    placeholder="a cell or user: type its key",
    help="Centres the map on that cell (a user: their cell in the chosen hour) and rings it.",
)
user = user_col.selectbox(
    "Trajectory of",
    list(city.user_keys),
    key="map_user",
    index=None,
    placeholder="no user",
    disabled=not has_users,
    help="The user's moves on the day of the chosen hour: legs light to dark, arrows, arrival times.",
)
playing = play_col.toggle(
    "Play", key="map_play", help="Step through the hours, one a second; only the map redraws (not the page)."
)
common.set_query(color=color, user=user, find=found)

if not city.located.any():
    st.info(
        "No cell of this data set has a latitude and longitude, so there is nothing to place on a map. "
        "Open a cell or a user below.",
        icon=":material/location_off:",
    )
else:
    try:
        base = ld.cached_basemap(common.database().url, info.id, common.revision())
    except Exception as exc:  # noqa: BLE001 - the engine's reason, but the cells can still be drawn
        st.error(f"The basemap could not be drawn: {exc}")
        base = None
    # The legend sits between the controls and the map: in view, and clear of the map's full-screen button.
    if color == "land_use":
        legend = m.land_use_legend(list(city.cells.loc[city.located, "land_use"]))
        if city.cells["inferred"].any():
            legend += "<br><small>Land use inferred from each cell's POI mix (the data set has none).</small>"
    else:
        legend = m.traffic_legend(city.traffic_cap)
    notes = [base.legend()] if base is not None else []
    if user:
        notes.insert(0, m.trajectory_legend(user))
    st.markdown(legend + "".join(f"<div><small>{n}</small></div>" for n in notes), unsafe_allow_html=True)
    focus_key, _ = found_focus(city, found, int(st.session_state.get("map_hour", hour)))
    view = (m.focus_view(city, focus_key) if focus_key else None) or m.initial_view(
        base.bounds if base else m.cell_bounds(city)
    )
    st.session_state["_map_ticked"] = False  # a full run of the page is not a tick
    st.fragment(run_every=PLAY_SECONDS if playing else None)(city_map)(info, city, color, user, found, base, view)

st.subheader("Load and risk")
with st.expander("Forecast an area", icon=":material/query_stats:", expanded=False):
    area_form(info, city)
risk_base = None
if city.located.any():
    try:
        risk_base = ld.cached_basemap(common.database().url, info.id, common.revision())
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
