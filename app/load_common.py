"""What the Map and What-if pages show of load runs (engine/load/core.py), as plain functions: a stored run's
cells on the map coloured by their risk at one forecast hour, and a cell scenario's paired comparison with
its baseline. The Cell page's own frames are in app/cell_data.py (``load_frames``)."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import pydeck as pdk
import streamlit as st

from app.common import database
from app.map_data import CELL_RADIUS_M, Basemap, CityData, Deck, basemap_layer, load_basemap, load_city, records
from db.models import Dataset
from engine.errors import plural
from engine.load.core import StoredLoad

# Risk colours: P(load > capacity) from 0 (green) through the risk level (amber) to 1 (red).
RISK_RAMP = np.array([[26, 150, 65], [166, 217, 106], [253, 174, 97], [215, 25, 28]], dtype=float)
NO_LOAD_RGBA = (190, 190, 190, 140)


def risk_colors(p: np.ndarray, load: np.ndarray) -> np.ndarray:
    """(N, 4) uint8: a cell's colour by its P(load > capacity); grey where it carries nothing on any path."""
    t = np.clip(np.asarray(p, dtype=float), 0.0, 1.0) ** 0.5 * (len(RISK_RAMP) - 1)
    low = np.minimum(np.floor(t).astype(int), len(RISK_RAMP) - 2)
    frac = (t - low)[:, None]
    rgb = RISK_RAMP[low] * (1 - frac) + RISK_RAMP[low + 1] * frac
    rgba = np.column_stack([rgb, np.full(len(t), 220.0)])
    rgba[np.asarray(load) <= 0] = NO_LOAD_RGBA
    return np.rint(rgba).astype(np.uint8)


@st.cache_data(show_spinner="Loading the city ...", max_entries=4)
def cached_city(url: str, dataset_id: int, revision: int) -> CityData:
    with database().session() as session:
        return load_city(session, session.get(Dataset, dataset_id))


@st.cache_data(show_spinner="Drawing the basemap ...", max_entries=4)
def cached_basemap(url: str, dataset_id: int, revision: int) -> Basemap | None:
    """The data set's basemap (``map_data.load_basemap``), drawn once per data set and revision."""
    with database().session() as session:
        return load_basemap(session, session.get(Dataset, dataset_id))


@dataclass(frozen=True)
class RiskFrames:
    """A run's map rows for every forecast hour, built once: changing the hour is a row selection."""

    hours: list[str]  # labels
    frames: list[pd.DataFrame]  # per forecast hour: key, lon, lat, r, g, b, a, title, detail, p
    unplaced: int  # the run's cells without coordinates (not on the map)
    bounds: list[float]  # [west, south, east, north] of the placed cells
    risk_level: float  # the run's: an hour is at risk when P(load > capacity) is at least this


def risk_frames(stored: StoredLoad, city: CityData) -> RiskFrames:
    r = stored.result
    position = {key: i for i, key in enumerate(city.cells["key"])}
    rows = [position[k] for k in stored.cell_keys]
    lat = city.cells["lat"].to_numpy(dtype=float)[rows]
    lon = city.cells["lon"].to_numpy(dtype=float)[rows]
    placed = np.isfinite(lat) & np.isfinite(lon)
    keys = np.array(stored.cell_keys)[placed]
    p, median = r.p_exceed[placed], np.median(r.totals, axis=1)[placed]
    capacity = r.capacity[placed]
    present = np.median(r.present, axis=1)[placed] if (r.present >= 0).all() else None
    frames = []
    for n in range(r.horizon):
        rgba = risk_colors(p[:, n], r.totals[placed, :, n].max(axis=1))
        detail = [
            f"P(> capacity) {p[i, n]:.0%} · median {median[i, n] / 1e6:.2f} of {capacity[i] / 1e6:.2f} MB"
            + ("" if present is None else f" · {plural(round(float(present[i, n])), 'user')}")
            for i in range(len(keys))
        ]
        frames.append(
            pd.DataFrame(
                {
                    "key": keys,
                    "lon": lon[placed].round(6),
                    "lat": lat[placed].round(6),
                    "r": rgba[:, 0],
                    "g": rgba[:, 1],
                    "b": rgba[:, 2],
                    "a": rgba[:, 3],
                    "title": keys,
                    "detail": detail,
                    "p": p[:, n],
                }
            )
        )
    bounds = (
        [float(lon[placed].min()), float(lat[placed].min()), float(lon[placed].max()), float(lat[placed].max())]
        if placed.any()
        else [0.0, 0.0, 0.0, 0.0]
    )
    return RiskFrames(stored.hour_labels, frames, int((~placed).sum()), bounds, r.risk_level)


def risk_deck(frame: pd.DataFrame, view: pdk.ViewState, basemap: Basemap | None) -> pdk.Deck:
    layers = [basemap_layer(basemap)] if basemap is not None else []
    layers.append(
        pdk.Layer(
            "ScatterplotLayer",
            id="risk",
            data=records(frame),
            get_position=["lon", "lat"],
            get_fill_color="[r, g, b, a]",
            get_radius=CELL_RADIUS_M * 1.5,
            radius_min_pixels=6,  # a run's few cells stay visible on the city's basemap
            stroked=True,
            get_line_color=[30, 30, 30, 220],
            line_width_min_pixels=1.5,
            pickable=True,
        )
    )
    return Deck(layers=layers, initial_view_state=view, map_provider=None, tooltip={"text": "{title}\n{detail}"})


def risk_legend(level: float) -> str:
    stops = [0.0, level, 0.5, 1.0]
    swatches = "".join(
        f'<span style="display:inline-block;width:14px;height:14px;border-radius:7px;margin:0 4px 0 10px;'
        f'background:rgb({c[0]},{c[1]},{c[2]})"></span>{p:.0%}'
        for p, c in zip(stops, risk_colors(np.array(stops), np.ones(4)), strict=True)
    )
    return f"<small>P(load > capacity):{swatches} · grey: no load on any path</small>"


# --- a cell scenario against its baseline ------------------------------------------------------------------


def comparison_frame(baseline: StoredLoad, scenario: StoredLoad) -> pd.DataFrame:
    """Per cell and forecast hour (MB): both medians, the paired difference's mean and 90 % interval, and
    both runs' P(load > capacity)."""
    b, s = baseline.result, scenario.result
    diff = (s.totals - b.totals) / 1e6
    rows = []
    for i, key in enumerate(baseline.cell_keys):
        for n in range(b.horizon):
            rows.append(
                {
                    "cell": key,
                    "step": n,
                    "label": baseline.hour_labels[n],
                    "baseline_mb": float(np.median(b.totals[i, :, n]) / 1e6),
                    "scenario_mb": float(np.median(s.totals[i, :, n]) / 1e6),
                    "diff_mean": float(diff[i, :, n].mean()),
                    "diff_q05": float(np.quantile(diff[i, :, n], 0.05)),
                    "diff_q95": float(np.quantile(diff[i, :, n], 0.95)),
                    "p_baseline": float(b.p_exceed[i, n]),
                    "p_scenario": float(s.p_exceed[i, n]),
                }
            )
    return pd.DataFrame(rows)


def difference_chart(frame: pd.DataFrame, cells: list[str], height: int = 220) -> alt.LayerChart:
    """The paired difference (scenario - baseline, MB per hour) per cell: the 90 % band and the mean."""
    x = alt.X("label:N", sort=list(frame.drop_duplicates("step").sort_values("step")["label"]), title=None)
    color = alt.Color("cell:N", sort=cells, title="cell")
    band = alt.Chart(frame).mark_area(opacity=0.18).encode(x=x, y="diff_q05:Q", y2="diff_q95:Q", color=color)
    line = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("diff_mean:Q", title="scenario - baseline, MB per hour"),
            color=color,
            tooltip=[
                "cell:N",
                alt.Tooltip("label:N", title="hour"),
                alt.Tooltip("diff_mean:Q", format="+.2f", title="mean difference MB"),
                alt.Tooltip("diff_q05:Q", format="+.2f", title="5 %"),
                alt.Tooltip("diff_q95:Q", format="+.2f", title="95 %"),
                alt.Tooltip("p_baseline:Q", format=".0%", title="P(> capacity) before"),
                alt.Tooltip("p_scenario:Q", format=".0%", title="P(> capacity) after"),
            ],
        )
    )
    zero = alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="#555").encode(y="y:Q")
    return alt.layer(band, line, zero).properties(height=height)
