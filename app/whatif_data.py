"""What the What-if page needs, as plain functions: the cells to move to or edit, the editor's values
turned into an ``engine.whatif.Scenario`` (and a stored scenario turned back into editor values), and a
stored scenario's comparison shaped into charts: the per-service difference, the per-step difference,
the service-mix radar and the total-traffic fans of baseline and scenario.

The app never does model maths and never loads the model: a scenario is a ``whatif`` job that `lsdm
worker` runs (``engine.whatif.run_whatif``: both forecasts with the same seed, stored in one
transaction); the editor reads what it needs from the database (``EditorContext``, ``user_series``).
Results are always read back with ``engine.whatif.load_scenario`` from the stored runs, so what is shown
after a run and after ``?scenario=ID`` is the same thing.
Display units: MB and "Tue 14:00" hour labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import altair as alt
import numpy as np
import pandas as pd
import pydeck as pdk
import streamlit as st
from sqlalchemy.orm import Session

from app.charts import radar
from app.common import ACCENT, DatasetInfo, database, hour_label_for, megabytes, service_scale
from app.map_data import Basemap, Deck, basemap_layer, initial_view, land_use_colors, load_cells
from db.models import Dataset, ModelRecord
from db.queries import (
    active_model,
    cell_descriptions,
    dataset_cells,
    embedded_cell_ids,
    find_encoder,
    tile_image,
    tiled_cell_ids,
)
from engine.data.windows import SeriesData, load_series
from engine.env.describe import CityStats, TemplateDescriber
from engine.errors import InputError
from engine.forecast import LocationPlan
from engine.model import read_model_document
from engine.model.config import ModelConfig
from engine.requests import ForecastRequest, WhatIfRequest
from engine.whatif import CellEdit, Scenario, list_scenarios, load_scenario

MAX_HORIZON = WhatIfRequest.bounds("horizon")[1]
MAX_SAMPLES = WhatIfRequest.bounds("samples")[1]
MAX_GUIDANCE = ForecastRequest.bounds("guidance")[1]  # a scenario's guidance is a forecast's
LOCATION_MODES = ("habitual", "stay", "cell")
LOCATION_LABELS = {"habitual": "Habitual cells", "stay": "Stay in the last cell", "cell": "Move to a cell"}
TILE_MODES = ("keep", "cell", "upload")
TILE_LABELS = {"keep": "Keep its tile", "cell": "Another cell's tile", "upload": "Upload an image"}
BASELINE_COLOR = "#52606d"
SCENARIO_COLOR = ACCENT
RUN_COLORS = {"baseline": BASELINE_COLOR, "scenario": SCENARIO_COLOR}
CELL_RADIUS_M = 110.0  # as on the Map page: about a quarter of the default city's spacing between cells


# --- cells ----------------------------------------------------------------------------------------


def cell_frame(session: Session, dataset_id: int) -> pd.DataFrame:
    """Every cell in id order (the engine's row order): key, name, lat, lon, land use (inferred from
    POIs where the data set has none, as on the Map page) and whether it has a tile."""
    cells = load_cells(session, session.get(Dataset, dataset_id))
    names = {cell.id: cell.name for cell in dataset_cells(session, dataset_id)}
    tiled = tiled_cell_ids(session, dataset_id)
    cells["name"] = [names[int(i)] for i in cells["id"]]
    cells["has_tile"] = [int(i) in tiled for i in cells["id"]]
    return cells[["key", "name", "lat", "lon", "land_use", "has_tile"]]


def cell_tile(session: Session, dataset_id: int, key: str) -> bytes | None:
    """The stored tile image of a cell, or None."""
    return tile_image(session, dataset_id, key)


def cell_label(cells: pd.DataFrame) -> dict[str, str]:
    """Cell key -> 'C0042 · cbd' for pickers."""
    return {key: f"{key} · {use}" for key, use in zip(cells["key"], cells["land_use"], strict=True)}


@dataclass
class EditorContext:
    """What the editor needs of the data set and the active model, read from the database without
    loading the model (the worker loads it to run the scenario): cells in the engine's row order, their
    POI counts and stored descriptions, which have an image embedding of the model's encoder, and that
    encoder's Eq. 9 weights. It offers what engine.whatif.validate_scenario reads of a WhatIfContext
    (``cell_row``, ``categories``, ``has_image``, ``a``, ``b``, ``series.dataset_name``), so that the page
    checks a scenario with the engine's own rules before queueing it."""

    dataset_name: str
    cell_keys: list[str]  # in cell id order, as engine.data.windows.load_series
    categories: tuple[str, ...]
    poi: np.ndarray  # (C, P) POI counts
    descriptions: list[str]  # the stored description of each cell ("" where none)
    has_image: np.ndarray  # (C,) bool
    a: float  # the encoder's Eq. 9 weights (engine/env/clip.py ClipSettings); 0.5/0.5 without one
    b: float
    uses_environment: bool  # the model is conditioned on an environment the data set has

    @property
    def series(self) -> EditorContext:
        """validate_scenario names the data set through ``context.series.dataset_name``."""
        return self

    @cached_property
    def cell_row(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.cell_keys)}

    @cached_property
    def city_stats(self) -> CityStats:
        """The data set's POI statistics, against which edited counts are described."""
        return CityStats.from_counts(self.poi, self.categories)

    def describe_counts(self, counts: list[int]) -> str:
        """The template description of a cell with these POI counts in this city: what the worker encodes
        for an edit of the counts without an explicit description (engine.whatif.scenario_env)."""
        return TemplateDescriber().text(counts, self.city_stats)


def model_encoder_id(session: Session, model_id: int) -> str | None:
    """The encoder whose embeddings the model was trained on (its model.json's data fingerprint, read
    verified by engine.model.read_model_document); None when the model has none or its folder cannot be
    read (then the data set's active encoder counts)."""
    record = session.get(ModelRecord, model_id)
    if record is None:
        return None
    try:
        document = read_model_document(record.path)
    except (InputError, OSError):
        return None
    return (document.get("data") or {}).get("encoder_id")


def editor_context(session: Session, dataset_id: int, model_id: int) -> EditorContext:
    """The editor's view of the data set for the active model (see EditorContext); a few small queries."""
    dataset = session.get(Dataset, dataset_id)
    cells = [(cell.id, cell.key, cell.poi_counts) for cell in dataset_cells(session, dataset_id)]
    texts = cell_descriptions(session, dataset_id)
    encoder_id = model_encoder_id(session, model_id)
    if encoder_id is None:
        active = active_model(session, dataset_id, kind="clip")
        encoder_id = active.name if active else None
    record = find_encoder(session, encoder_id, dataset_id) if encoder_id else None
    settings = ((record.config or {}).get("settings") or {}) if record else {}
    embedded = {
        kind: embedded_cell_ids(session, dataset_id, encoder_id, kind) if encoder_id else set()
        for kind in ("image", "env")
    }
    forecaster = session.get(ModelRecord, model_id)
    conditioned = ModelConfig.from_dict(forecaster.config or {}).uses_environment if forecaster else False
    categories = tuple(dataset.poi_categories)
    return EditorContext(
        dataset_name=dataset.name,
        cell_keys=[key for _, key, _ in cells],
        categories=categories,
        poi=np.array([counts for _, _, counts in cells], dtype=np.int64).reshape(len(cells), len(categories)),
        descriptions=[texts.get(cell_id, "") for cell_id, _, _ in cells],
        has_image=np.array([cell_id in embedded["image"] for cell_id, _, _ in cells], dtype=bool),
        a=float(settings.get("a", 0.5)),
        b=float(settings.get("b", 0.5)),
        uses_environment=bool(conditioned and embedded["env"]),
    )


def user_series(session: Session, dataset_id: int, key: str) -> SeriesData | None:
    """One entity of the data set as engine.data.windows.SeriesData (engine.data.windows.load_series of
    that entity: its traffic and the cell row of each hour; no environment), so that the engine's own
    LocationPlan says where the user is; None for an unknown key."""
    series = load_series(session, session.get(Dataset, dataset_id), encoder_id="", entity_keys=[key])
    return series if series.entity_keys else None


def start_cell(series: SeriesData, start: int, mode: str) -> str | None:
    """Where the user of ``series`` (user_series) is at the start hour under ``habitual`` or ``stay``
    (the engine's own plan, as the worker applies it), or None where unknown: the cell whose environment
    the editor changes when the user is not moved."""
    cell = int(LocationPlan(mode).cell_rows(series, 0, start, 1)[0])
    return series.cell_keys[cell] if cell >= 0 else None


def target_cell(series: SeriesData, start: int, mode: str, cell: str | None) -> str | None:
    """The cell whose environment the editor changes: where the user is moved, else where the user is
    at the start hour."""
    return cell if mode == "cell" else start_cell(series, start, mode)


def map_deck(
    cells: pd.DataFrame, target: str | None, home: str | None, basemap: Basemap | None = None
) -> pdk.Deck | None:
    """A small offline map of the cells in their land-use colours (as on the Map page) over the data set's
    basemap; the edited (target) cell ringed in the accent colour, the user's own cell in dark grey. None
    when cells have no coordinates."""
    located = cells.dropna(subset=["lat", "lon"]).reset_index(drop=True)
    if located.empty:
        return None
    rgba = land_use_colors(located["land_use"])
    data = pd.DataFrame(
        {
            "key": located["key"],
            "lon": located["lon"],
            "lat": located["lat"],
            "title": located["key"] + " · " + located["land_use"].astype(str),
            "r": rgba[:, 0],
            "g": rgba[:, 1],
            "b": rgba[:, 2],
        }
    )
    position = data.set_index("key")[["lon", "lat"]]
    marked = pd.DataFrame(
        [
            {"key": key, "lon": position.at[key, "lon"], "lat": position.at[key, "lat"], "color": color}
            for key, color in ((home, [31, 41, 51]), (target, [228, 87, 46]))
            if key in position.index
        ],
        columns=["key", "lon", "lat", "color"],
    )
    layers = [basemap_layer(basemap)] if basemap is not None else []
    layers += [
        pdk.Layer(
            "ScatterplotLayer",
            id="cells",
            data=data,
            get_position=["lon", "lat"],
            get_fill_color="[r, g, b, 215]",
            get_radius=CELL_RADIUS_M,
            radius_min_pixels=3,
            pickable=True,
            auto_highlight=True,
        )
    ]
    if len(marked):
        layers.append(
            pdk.Layer(
                "ScatterplotLayer",
                id="marks",
                data=marked,
                get_position=["lon", "lat"],
                get_radius=CELL_RADIUS_M * 2.2,
                radius_min_pixels=7,
                filled=False,
                stroked=True,
                get_line_color="color",
                line_width_min_pixels=3,
            )
        )
    bounds = [float(data["lon"].min()), float(data["lat"].min()), float(data["lon"].max()), float(data["lat"].max())]
    return Deck(
        layers=layers,
        map_provider=None,
        tooltip={"text": "{title}"},
        initial_view_state=initial_view(bounds, width_px=380, height_px=300),
    )


def picked_cell(selection: dict | None) -> str | None:
    """The cell key a click on the map picked (``{"objects": {"cells": [row]}}``), or None."""
    rows = ((selection or {}).get("objects") or {}).get("cells") or []
    return str(rows[0]["key"]) if rows and rows[0].get("key") else None


# --- the editor -----------------------------------------------------------------------------------


def poi_frame(categories: tuple[str, ...] | list[str], current: list[int], counts: list[int]) -> pd.DataFrame:
    """The POI editor's table: category, the cell's stored count, and the (editable) scenario count."""
    return pd.DataFrame(
        {"category": list(categories), "now": [int(v) for v in current], "count": [int(v) for v in counts]}
    )


def edited_counts(frame: pd.DataFrame) -> list:
    """The editor's scenario counts as plain Python numbers (NaN where a cell was cleared): the engine
    says what is wrong with them."""
    return [v.item() if hasattr(v, "item") else v for v in frame["count"].tolist()]


@dataclass
class EditorInput:
    """What the editor's widgets hold, before it becomes a Scenario."""

    location: str  # habitual | stay | cell
    cell: str | None  # where the user moves (location "cell")
    target: str | None  # the cell whose environment is edited
    current_counts: list[int]  # the target's stored POI counts
    counts: list  # the editor's counts
    current_description: str
    description: str
    tile_mode: str  # keep | cell | upload
    tile_from: str | None
    tile_png: bytes | None
    a: float
    b: float
    default_a: float
    default_b: float
    guidance: float
    extra_edits: dict[str, CellEdit] | None = None  # edits of other cells, kept from a loaded scenario


def build_scenario(form: EditorInput) -> Scenario:
    """The Scenario of the editor: only what differs from reality becomes an edit (unchanged counts,
    the stored description and "keep its tile" are no edit; a/b equal to the encoder's stay None)."""
    location = f"cell:{form.cell}" if form.location == "cell" and form.cell else form.location
    edits = dict(form.extra_edits or {})
    if form.target:
        edit = CellEdit()
        if form.counts != form.current_counts:
            edit.poi_counts = form.counts
        if form.description.strip() != form.current_description.strip():
            edit.description = form.description
        if form.tile_mode == "cell" and form.tile_from and form.tile_from != form.target:
            edit.tile_from = form.tile_from
        elif form.tile_mode == "upload" and form.tile_png is not None:
            edit.tile_png = form.tile_png
        if not edit.is_empty():
            edits[form.target] = edit
    same = math.isclose(form.a, form.default_a) and math.isclose(form.b, form.default_b)
    return Scenario(
        location=location,
        cell_edits=edits,
        a=None if same else float(form.a),
        b=None if same else float(form.b),
        guidance=float(form.guidance),
    )


def field_slot(field: str | None) -> str:
    """Which editor field an engine InputError belongs to (its ``field``), to show it right there."""
    field = field or ""
    for suffix in ("poi_counts", "description"):
        if field.endswith("." + suffix):
            return suffix
    if field.endswith((".tile_from", ".tile_png")):
        return "tile"
    if field in ("a", "b"):
        return "weights"
    if field in ("location", "guidance", "name"):
        return field
    if field.startswith("cell_edits"):
        return "poi_counts"
    return "request"  # entity, start, horizon, samples, sampler


def error_text(error: Exception) -> str:
    """An engine error as shown under its field: without the ``field '...': `` prefix, which the
    position on the page already says."""
    text = str(error)
    field = getattr(error, "field", None)
    prefix = f"field {field!r}: "
    return text[len(prefix) :] if field and text.startswith(prefix) else text


def editor_values(params: dict, default_a: float, default_b: float) -> dict[str, object]:
    """A stored scenario's request and scenario as the editor's widget values (``wi_*`` keys), plus
    ``edits`` (its cell edits, as CellEdit) for the page to place in the editor."""
    request = WhatIfRequest.from_params(params)  # scenarios stored before requests read too
    scenario = Scenario.from_dict(request.scenario)
    values: dict[str, object] = {
        "wi_user": request.entity,
        "wi_start": request.start,
        "wi_horizon": request.horizon,
        "wi_samples": request.samples,
        "wi_seed": request.seed,
    }
    moved = scenario.moved_to()
    values["wi_location"] = "cell" if moved else scenario.location
    if moved:
        values["wi_cell"] = moved[0]
    values["wi_a"] = float(default_a if scenario.a is None else scenario.a)
    values["wi_b"] = float(default_b if scenario.b is None else scenario.b)
    values["wi_guidance"] = float(scenario.guidance)
    values["edits"] = scenario.cell_edits
    return values


# --- results --------------------------------------------------------------------------------------


def _array(result: dict, run: str, stat: str) -> np.ndarray:
    return np.asarray(result[run][stat], dtype=float)  # (N, K) bytes


def totals(result: dict) -> dict[str, float]:
    """Total median traffic over the horizon (MB) of baseline and scenario, and the change (MB, %)."""
    base = float(megabytes(_array(result, "baseline", "median").sum()))
    scen = float(megabytes(_array(result, "scenario", "median").sum()))
    return {
        "baseline": base,
        "scenario": scen,
        "change": scen - base,
        "percent": 100.0 * (scen - base) / base if base > 0 else float("nan"),
    }


def difference_frame(result: dict) -> pd.DataFrame:
    """Per service: scenario minus baseline median, summed over the horizon, in MB."""
    diff = np.asarray(result["difference"]["median"], dtype=float).sum(axis=0)
    return pd.DataFrame({"service": result["services"], "difference_mb": megabytes(diff)})


def difference_chart(frame: pd.DataFrame, services: list[str], hours: int) -> alt.LayerChart:
    """Bars of ``difference_frame`` in each service's colour, with the zero line."""
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("service:N", sort=list(services), title=None, axis=alt.Axis(labelAngle=-30)),
            y=alt.Y("difference_mb:Q", title="MB (scenario − baseline)"),
            color=alt.Color("service:N", scale=service_scale(services), legend=None),
            tooltip=[alt.Tooltip("service:N"), alt.Tooltip("difference_mb:Q", format="+.3f", title="MB")],
        )
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#1f2933").encode(y="y:Q")
    title = f"Scenario − baseline, median traffic summed over {hours} h (MB)"
    return alt.layer(bars, zero).properties(title=title, height=260)


def step_difference_frame(result: dict) -> pd.DataFrame:
    """Per step and service: scenario minus baseline median (MB), with the hour label."""
    diff = megabytes(np.asarray(result["difference"]["median"], dtype=float))  # (N, K)
    services = result["services"]
    return pd.DataFrame(
        [
            {
                "step": n,
                "hour": step["hour"],
                "label": step["label"],
                "service": name,
                "difference_mb": float(diff[n, k]),
            }
            for n, step in enumerate(result["steps"])
            for k, name in enumerate(services)
        ],
        columns=["step", "hour", "label", "service", "difference_mb"],
    )


def step_difference_chart(frame: pd.DataFrame, services: list[str]) -> alt.LayerChart:
    labels = list(frame.sort_values("step")["label"].drop_duplicates())
    lines = (
        alt.Chart(frame)
        .mark_line(point=True, strokeWidth=1.5)
        .encode(
            x=alt.X("label:N", sort=labels, title=None, axis=alt.Axis(labelAngle=-45, labelOverlap="greedy")),
            y=alt.Y("difference_mb:Q", title="MB (scenario − baseline)"),
            color=alt.Color("service:N", scale=service_scale(services), title="service"),
            order=alt.Order("step:Q"),
            tooltip=[
                alt.Tooltip("label:N", title="hour"),
                "service:N",
                alt.Tooltip("difference_mb:Q", format="+.3f", title="MB"),
            ],
        )
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#1f2933").encode(y="y:Q")
    return alt.layer(lines, zero).properties(title="Difference of the median per hour (MB)", height=260)


def mix_frame(result: dict) -> pd.DataFrame:
    """Each service's share of the median traffic over the horizon, baseline and scenario. Medians, as
    in the difference chart: a few sample paths can run orders of magnitude above the rest, and their
    mean would then stand for them rather than for the user."""
    rows = []
    for run in ("baseline", "scenario"):
        volume = _array(result, run, "median").sum(axis=0)
        total = float(volume.sum())
        rows += [
            {"series": run, "service": name, "share": float(v) / total if total > 0 else 0.0}
            for name, v in zip(result["services"], volume, strict=True)
        ]
    return pd.DataFrame(rows, columns=["series", "service", "share"])


def mix_chart(frame: pd.DataFrame, services: list[str]) -> alt.LayerChart:
    """app.charts.radar with the scenario dashed, so that it does not hide an identical baseline."""
    chart = radar(
        frame, services, value="share", series="series", colors=RUN_COLORS, title="Service mix: baseline vs scenario"
    )
    dash = alt.StrokeDash("series:N", legend=None, scale=alt.Scale(domain=list(RUN_COLORS), range=[[1, 0], [6, 4]]))
    chart.layer[-1] = chart.layer[-1].encode(strokeDash=dash)  # the series lines (last layer)
    return chart


def total_frame(result: dict) -> pd.DataFrame:
    """Per run and step: total-traffic quantiles over the sample paths (MB)."""
    rows = []
    for run in ("baseline", "scenario"):
        quantiles = {q: megabytes(np.asarray(v, dtype=float)) for q, v in result[run]["total"].items()}
        rows += [
            {"run": run, "step": n, "label": step["label"], **{q: float(v[n]) for q, v in quantiles.items()}}
            for n, step in enumerate(result["steps"])
        ]
    return pd.DataFrame(rows, columns=["run", "step", "label", "q05", "q25", "median", "q75", "q95"])


def total_fan_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Baseline and scenario total-traffic fans on one axis: 90 % band, 50 % band, median line. The
    axis ends at twice the highest 75 % quantile: a few sample paths can run orders of magnitude higher,
    and a scale that held them would flatten the medians; the 90 % band then leaves the top of the
    chart (its values are in the tooltips)."""
    labels = list(frame[frame["run"] == "baseline"].sort_values("step")["label"])
    top = max(2.0 * float(frame["q75"].max()), 1.2 * float(frame["median"].max()), 1e-6) if len(frame) else 1.0
    x = alt.X("label:N", sort=labels, title=None, axis=alt.Axis(labelAngle=-45, labelOverlap="greedy"))
    y_scale = alt.Scale(domain=[0, top], nice=False)
    color = alt.Color(
        "run:N",
        title=None,
        legend=alt.Legend(orient="bottom"),
        scale=alt.Scale(domain=list(RUN_COLORS), range=list(RUN_COLORS.values())),
    )
    tooltip = [
        alt.Tooltip("run:N"),
        alt.Tooltip("label:N", title="hour"),
        alt.Tooltip("median:Q", format=".3f", title="median MB"),
        alt.Tooltip("q05:Q", format=".3f", title="5%"),
        alt.Tooltip("q95:Q", format=".3f", title="95%"),
    ]
    base = alt.Chart(frame)
    band90 = base.mark_area(opacity=0.14, clip=True).encode(
        x=x, y=alt.Y("q05:Q", title="MB per hour", scale=y_scale), y2="q95:Q", color=color
    )
    band50 = base.mark_area(opacity=0.28, clip=True).encode(x=x, y="q25:Q", y2="q75:Q", color=color)
    median = base.mark_line(strokeWidth=2, point=True, clip=True).encode(
        x=x, y="median:Q", color=color, order=alt.Order("step:Q"), tooltip=tooltip
    )
    return alt.layer(band90, band50, median).properties(title="Total traffic: baseline vs scenario", height=260)


def edits_frame(params: dict) -> pd.DataFrame:
    """One row per edited cell of a stored scenario: what changed and the text that was encoded."""
    scenario = params.get("scenario") or {}
    texts = params.get("descriptions") or {}
    rows = []
    for key, edit in (scenario.get("cell_edits") or {}).items():
        changed = []
        if "poi_counts" in edit:
            changed.append(f"POI counts ({sum(edit['poi_counts'])} POIs)")
        if "description" in edit:
            changed.append("description")
        if "tile_from" in edit:
            changed.append(f"tile of {edit['tile_from']}")
        if "tile_png" in edit:
            changed.append("uploaded tile")
        rows.append({"cell": key, "changed": ", ".join(changed), "encoded text": texts.get(key, "(unchanged)")})
    return pd.DataFrame(rows, columns=["cell", "changed", "encoded text"])


def scenario_summary(params: dict, info: DatasetInfo, weights: tuple[float, float] | None = None) -> str:
    """'user:U0001 from Tue 19 Apr 14:00 · 12 h · 32 paths · seed 0 · moved to C0042; C0042: POIs'
    (``weights``: the encoder's own a/b, not mentioned when the scenario keeps them)."""
    request = WhatIfRequest.from_params(params)
    scenario = Scenario.from_dict(request.scenario)
    return (
        f"{request.entity_kind}:{request.entity} from {hour_label_for(info, request.start)} · "
        f"{request.horizon} h · {request.samples} paths · {request.sampler_label} · seed {request.seed} · "
        f"{scenario.describe(weights)}"
    )


def scenario_table(rows: list[dict], info: DatasetInfo) -> pd.DataFrame:
    """The saved scenarios (engine.whatif.list_scenarios) as a table, newest first."""
    return pd.DataFrame(
        [
            {
                "id": r["id"],
                "name": r["name"],
                "entity": r["entity"],
                "start": hour_label_for(info, int(r["start"] or 0)),
                "horizon": r["horizon"],
                "location": r["location"],
                "created": r["created_at"],
            }
            for r in rows
        ],
        columns=["id", "name", "entity", "start", "horizon", "location", "created"],
    )


# --- cached wrappers (the page calls these) -------------------------------------------------------


@st.cache_data(show_spinner=False)
def cached_cells(url: str, dataset_id: int, revision: int) -> pd.DataFrame:
    with database().session() as session:
        return cell_frame(session, dataset_id)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_tile(url: str, dataset_id: int, key: str) -> bytes | None:
    with database().session() as session:
        return cell_tile(session, dataset_id, key)


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_editor_context(url: str, dataset_id: int, model_id: int, revision: int) -> EditorContext:
    """The editor's view of the data set (kept as a resource: its arrays are not copied on every rerun;
    the revision in the key drops it when the data change)."""
    with database().session() as session:
        return editor_context(session, dataset_id, model_id)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_user_series(url: str, dataset_id: int, revision: int, key: str) -> SeriesData | None:
    with database().session() as session:
        return user_series(session, dataset_id, key)


@st.cache_data(show_spinner=False)
def cached_scenarios(url: str, info: DatasetInfo, revision: int) -> pd.DataFrame:
    return scenario_table(list_scenarios(database(), info.id), info)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_scenario(url: str, scenario_id: int, revision: int) -> dict:
    """A stored scenario and its comparison (engine.whatif.load_scenario); raises InputError if unknown."""
    return load_scenario(database(), scenario_id)


@dataclass
class ResultViews:
    """The charts of a stored scenario, as Vega-Lite specs (built once per scenario)."""

    difference: dict
    steps: dict
    mix: dict
    total: dict


@st.cache_data(show_spinner=False, max_entries=32)
def cached_views(url: str, scenario_id: int, revision: int) -> ResultViews:
    result = cached_scenario(url, scenario_id, revision)
    services = result["services"]
    return ResultViews(
        difference=difference_chart(difference_frame(result), services, len(result["steps"])).to_dict(),
        steps=step_difference_chart(step_difference_frame(result), services).to_dict(),
        mix=mix_chart(mix_frame(result), services).to_dict(),
        total=total_fan_chart(total_frame(result)).to_dict(),
    )
