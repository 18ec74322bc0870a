"""What every page shares: the cached database, the active data set, units, colours, deep links and
empty states. Pages stay thin; functions here (and in the page's own ``*_data.py`` module) are plain
Python that tests call directly.

Caching: ``st.cache_resource`` for the database engine and loaded models (one per process),
``st.cache_data`` for query results, keyed by the data set's id and a ``revision`` number that pages
bump after writing (a new forecast run, a new model) so that nothing stale is shown.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from db import Database, open_database
from db.queries import NoDatasetError, dataset_sizes, get_dataset

if TYPE_CHECKING:
    import altair as alt
    from PIL import Image
    from streamlit.delta_generator import DeltaGenerator

    from engine.requests import Request

# One colour per service, used the same way on every chart (Tableau 10, then Tableau 20's lighter
# shades for data sets with more than ten services).
SERVICE_PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#a0cbe8",
    "#ffbe7d",
    "#ff9d9a",
    "#86bcb6",
    "#8cd17d",
    "#f1ce63",
    "#d4a6c8",
    "#fabfd2",
    "#d7b5a6",
    "#79706e",
]
LAND_USE_COLORS = {  # RGB, for the map and legends
    "cbd": (31, 119, 180),
    "residential": (255, 187, 120),
    "industrial": (127, 127, 127),
    "university": (148, 103, 189),
    "park": (44, 160, 44),
    "transport": (214, 39, 40),
    "commercial": (255, 127, 14),
    "mixed": (188, 189, 34),
    None: (160, 160, 160),
}
ACCENT = "#e4572e"  # the theme's primary colour (.streamlit/config.toml)


@dataclass(frozen=True)
class DatasetInfo:
    """The active data set, as pages need it (a plain, hashable value)."""

    id: int
    name: str
    kind: str
    entity_kind: str
    services: tuple[str, ...]
    poi_categories: tuple[str, ...]
    hours: int
    time_origin: datetime
    entities: int
    cells: int

    @property
    def label(self) -> str:
        """The name as markdown shows it: escaped, so a name with markdown in it (an image link made the
        browser fetch a URL on every page) is shown as written."""
        return md_escape(self.name)


# --- resources ------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _database(url: str | None) -> Database:
    return open_database(url)


def database() -> Database:
    """The app's database: ``LSDM_DB`` (set by `lsdm app --db`) or the per-user default. One that cannot be
    used (a folder, not SQLite, damaged, unreachable) stops the page with the reason, not a traceback."""
    from db.session import DatabaseOpenError

    try:
        return _database(os.environ.get("LSDM_DB") or None)
    except DatabaseOpenError as error:
        st.error(f"The database cannot be used: {error}.", icon=":material/database:")
        st.stop()
        raise  # st.stop() raises; this line is for the type checker


def revision() -> int:
    """Bumped by pages after they write, and changed when the database was changed from outside (another
    session, the command line: ``_outside_version``); part of every cached query's key (pass it as an
    argument whose name does not start with an underscore: Streamlit does not hash those)."""
    return hash((int(st.session_state.get("_revision", 0)), _outside_version(os.environ.get("LSDM_DB") or None)))


@st.cache_data(show_spinner=False, ttl=2.0)
def _outside_version(url: str | None) -> tuple:
    """What says the data sets or models changed, read at most every 2 s (one small query): an ingest or a
    training run from the command line made the dashboard show the old data set until it was restarted."""
    from db.queries import content_version

    with _database(url).session() as session:
        return content_version(session)


def bump_revision() -> None:
    st.session_state["_revision"] = int(st.session_state.get("_revision", 0)) + 1
    st.cache_data.clear()


@st.cache_data(show_spinner=False)
def _dataset_info(url: str | None, revision_: int) -> DatasetInfo | None:
    db = _database(url)
    with db.session() as session:
        try:
            d = get_dataset(session)
        except NoDatasetError:
            return None
        entities, cells = dataset_sizes(session).get(d.id, (0, 0))
        return DatasetInfo(
            id=d.id,
            name=d.name,
            kind=d.kind,
            entity_kind=d.entity_kind,
            services=tuple(d.services),
            poi_categories=tuple(d.poi_categories),
            hours=int(d.hours),
            time_origin=d.time_origin,
            entities=int(entities),
            cells=int(cells),
        )


def dataset_info() -> DatasetInfo | None:
    return _dataset_info(os.environ.get("LSDM_DB") or None, revision())


@st.cache_resource(show_spinner=False)
def app_icon() -> Image.Image:
    """The favicon, drawn locally: a Material icon name as page_icon would make the browser fetch the
    icon font from the internet."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((2, 2, 62, 62), radius=14, fill=ACCENT)
    draw.polygon([(32, 14), (22, 54), (42, 54)], outline="white", width=4)  # the mast
    for r in (10, 18):  # radio waves
        draw.arc((32 - r, 14 - r, 32 + r, 14 + r), 200, 340, fill="white", width=3)
    return image


# --- units ----------------------------------------------------------------------------------------


def hour_label(origin: datetime, hour: int) -> str:
    """'Tue 14:00' for an hour index of the data set."""
    return (origin + timedelta(hours=int(hour))).strftime("%a %H:%M")


def hour_label_long(origin: datetime, hour: int) -> str:
    """'Tue 19 Apr 14:00' when the day matters (data sets longer than a week)."""
    return (origin + timedelta(hours=int(hour))).strftime("%a %d %b %H:%M")


def hour_label_for(info: DatasetInfo, hour: int) -> str:
    """The label pages use: 'Tue 14:00' within one week, with the date beyond (the same weekday
    occurs twice in a 14-day data set)."""
    return hour_label(info.time_origin, hour) if info.hours <= 168 else hour_label_long(info.time_origin, hour)


def megabytes(values: np.ndarray | float) -> np.ndarray | float:
    return np.asarray(values, dtype=float) / 1e6 if not np.isscalar(values) else float(values) / 1e6


def format_bytes(value: float) -> str:
    value = float(value)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def service_colors(services: tuple[str, ...] | list[str]) -> list[str]:
    return [SERVICE_PALETTE[i % len(SERVICE_PALETTE)] for i in range(len(services))]


def service_scale(services: tuple[str, ...] | list[str]) -> alt.Scale:
    """The Altair colour scale that gives each service its one colour."""
    import altair as alt

    return alt.Scale(domain=list(services), range=service_colors(services))


# --- deep links -----------------------------------------------------------------------------------


def query_int(name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer query parameter within [lo, hi]; a bad value shows a warning and gives the default."""
    raw = st.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        st.warning(f"Link parameter {name}={md_escape(raw)} is not a whole number; using the default.")
        return default
    if not lo <= value <= hi:
        st.warning(f"Link parameter {name}={value} is outside {lo}..{hi}; using the default.")
        return default
    return value


def query_str(name: str, default: str | None = None) -> str | None:
    raw = st.query_params.get(name)
    return default if raw in (None, "") else str(raw)


def set_query(**params: object) -> None:
    """Mirror the page's state into its URL (None removes a parameter), so the view can be linked."""
    for key, value in params.items():
        if value is None:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != str(value):
            st.query_params[key] = str(value)


MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>!~$|])")  # what makes links, images, html, emphasis, math, tables


def md_escape(text: str) -> str:
    """``text`` shown literally in Streamlit markdown (data: names, keys): every markdown character escaped."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


def page_header(title: str, caption: str | None = None) -> None:
    st.title(title)
    if caption:
        st.caption(caption)


# --- number fields the page checks ------------------------------------------------------------------


def checked_number(
    container: DeltaGenerator,
    label: str,
    request_type: type[Request],
    name: str,
    key: str,
    help: str = "",
    disabled: bool = False,
) -> float | int:
    """A number field without browser bounds: its message goes under the form's row (``field_error``).
    Bounds in the browser kept an out-of-range entry red and sent the old value, so the run went with a
    number nobody typed; here the request's own check names the problem and the page disables the button."""
    low, high = request_type.bounds(name)
    return container.number_input(label, step=1, key=key, help=f"{low} to {high}. {help}".strip(), disabled=disabled)


def field_error(slot: DeltaGenerator, problems: dict[str, str], labels: dict[str, str]) -> None:
    """Under a row of fields: the request check's message for each field, named by its label (``labels``:
    request field -> the label on the page), one line each; nothing when they are fine."""
    found = [f"{label}: {problems[name]}" for name, label in labels.items() if name in problems]
    if found:
        slot.error("  \n".join(found), icon=":material/error:")
