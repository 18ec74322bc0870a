"""Map (home): the city's cells coloured by traffic or land use in one hour, every user at their cell,
and a chosen user's week as a path. Clicking a cell or a user opens its page; the selectboxes below the
map do the same without a mouse. Deep link: ?hour=H&color=traffic|land_use&user=KEY."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import common, jobs_ui
from app import map_data as m
from db.models import Dataset

PAGES = Path(__file__).resolve().parent


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


info = jobs_ui.require_dataset()
common.page_header(
    "City map",
    f"{info.name}: {info.cells} cells, {info.entities} {info.entity_kind}s over "
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
        + (f", {present} of {len(city.user_keys)} users located" if has_users else "")
        + (f"; {user}'s week: {len(stops)} stops" if user else "")
    )
    if color == "land_use":
        legend = m.land_use_legend(list(city.cells.loc[located, "land_use"]))
        if city.cells["inferred"].any():
            legend += "<br><small>Land use inferred from each cell's POI mix (the data set has none).</small>"
    else:
        legend = m.traffic_legend(city.traffic_cap)
    st.markdown(legend, unsafe_allow_html=True)

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
