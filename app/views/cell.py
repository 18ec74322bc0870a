"""Cell: one base station's surroundings (tile, POIs, description), the cells whose environment is most
alike, who is there hour by hour and what they use there. Deep link: ?cell=KEY."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from app import cell_data as c
from app import common, jobs_ui
from db.models import Dataset

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
        st.warning(f"Link parameter `cell={linked}`: no such cell in this data set.")
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
            st.info(f"No tile for this cell yet: {c.ENV_HINT}.", icon=":material/satellite_alt:")
    with right:
        st.markdown("**Description**")
        if detail.description:
            st.markdown(f"> {detail.description}")
            made_by = detail.generator + (f" ({detail.describer_model})" if detail.describer_model else "")
            st.caption(f"Generator: {made_by}")
            if detail.description_error:
                st.caption(f"The language model failed, so the template wrote it: {detail.description_error}")
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
            st.caption(f"similarity {row.similarity:.3f} · {row.land_use}")


info = jobs_ui.require_dataset()
common.page_header("Cell", "A base station's surroundings, the places most like it, and the traffic used there.")
key = choose_cell(keys(common.database().url, info.id, common.revision()))
if key is None:
    st.info("Choose a cell above, or click one on the **Map**.", icon=":material/cell_tower:")
    st.stop()
view = cell_view(common.database().url, info.id, common.revision(), key)
if view is None:  # the data set changed under the picker
    st.warning(f"Cell {key} is not in {info.name}.")
    st.stop()
detail, presence, traffic = view

use = detail.land_use + (" (inferred from POIs)" if detail.land_use_inferred else "")
place = f"{detail.lat:.5f}, {detail.lon:.5f}" if detail.lat is not None and detail.lon is not None else "no coordinates"
st.markdown(f"### {detail.key} · {detail.name}")
st.caption(f"Land use: {use} · {place} · {int(detail.poi['count'].sum())} points of interest")
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
