"""What the Cell page shows, as plain functions: a cell's tile, POIs and description, the cells whose
environment is most alike (cosine of the active encoder's ``env`` embeddings), who is there hour by
hour, and the traffic used there by service; and the Altair charts of them.

"Traffic at a cell" is the bytes of the entities attached to the cell in that hour (a user's traffic of
an hour counts at the cell they were in), per service; "users present" is the number of distinct users
attached to the cell in that hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import altair as alt
import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from app.charts import bars
from app.common import hour_label, hour_label_long, service_scale
from db.models import Cell, Dataset, Description, Tile
from db.queries import (
    active_model,
    cells_by_id,
    dataset_cells,
    find_cell,
    load_env_embeddings,
    tile_images,
    traffic_at_cell,
    users_at_cell,
)
from engine.env.tiles import CellInfo, infer_land_use
from engine.load.core import StoredLoad

NEIGHBOURS = 5
ENV_HINT = "run `lsdm env build` (or **Data** → build the environment) to render tiles, describe cells and embed them"


@dataclass(frozen=True)
class CellDetail:
    """One cell as the page shows it; ``tile``/``description`` are None when not built yet."""

    id: int
    key: str
    name: str
    lat: float | None
    lon: float | None
    land_use: str  # known, else inferred from POIs (then ``land_use_inferred``)
    land_use_inferred: bool
    poi: pd.DataFrame  # category, count (the data set's category names, in its order)
    tile: bytes | None
    tile_source: str | None
    description: str | None
    generator: str | None  # template | openai | template-fallback
    describer_model: str | None
    description_error: str | None  # why the LLM failed, for template fallbacks


def tile_hint(detail: CellDetail) -> str:
    """What to say where a cell has no tile: before any environment build, how to build it; after a build
    that had no tile source (the cell is described, so the build ran), that it conditions on the description
    alone and how to give it tiles, instead of asking for the build that already ran."""
    if detail.description is None:
        return f"No tile for this cell yet: {ENV_HINT}."
    return (
        "No tile: the environment was built without a tile source (synthetic tiles are drawn for synthetic "
        "cities only), so this cell is conditioned on its description alone. To add real tiles: "
        "`lsdm env build --tiles dir:PATH` (or `mbtiles:PATH`, `xyz:URL_TEMPLATE`), or **Data** → Environment."
    )


def cell_keys(session: Session, dataset: Dataset) -> list[str]:
    """Every cell key of the data set, in id order (the picker's options)."""
    return [cell.key for cell in dataset_cells(session, dataset.id)]


def land_use_of(cell: Cell, categories: list[str]) -> tuple[str, bool]:
    """(land use, inferred?): the data set's own where known, else the engine's guess from the POI mix."""
    if cell.land_use:
        return cell.land_use, False
    info = CellInfo(id=cell.id, key=cell.key, poi_counts=list(cell.poi_counts or []), poi_categories=categories)
    return infer_land_use(info), True


def poi_frame(categories: list[str] | tuple[str, ...], counts: list[int]) -> pd.DataFrame:
    """POI counts by category name (aligned with the data set's category list)."""
    return pd.DataFrame({"category": list(categories), "count": [int(c) for c in counts]})


def load_cell(session: Session, dataset: Dataset, key: str) -> CellDetail | None:
    """The cell with ``key`` and its environment, or None when the data set has no such cell."""
    cell = find_cell(session, dataset.id, key)
    if cell is None:
        return None
    tile = session.get(Tile, cell.id)
    text = session.get(Description, cell.id)
    categories = list(dataset.poi_categories)
    land_use, inferred = land_use_of(cell, categories)
    return CellDetail(
        id=cell.id,
        key=cell.key,
        name=cell.name,
        lat=cell.lat,
        lon=cell.lon,
        land_use=land_use,
        land_use_inferred=inferred,
        poi=poi_frame(categories, cell.poi_counts or [0] * len(categories)),
        tile=tile.image if tile else None,
        tile_source=tile.source if tile else None,
        description=text.text if text else None,
        generator=text.generator if text else None,
        describer_model=text.model if text else None,
        description_error=text.error if text else None,
    )


# --- environment neighbours -----------------------------------------------------------------------


def load_unit_embeddings(session: Session, dataset: Dataset) -> tuple[str, np.ndarray, np.ndarray]:
    """(encoder id, cell ids, (N, D) unit-length env embeddings) of the active encoder; LookupError with
    what to do when there is no encoder or it embedded nothing."""
    record = active_model(session, dataset.id, kind="clip")
    if record is None:
        raise LookupError(f"No environment encoder for {dataset.name} yet: {ENV_HINT}.")
    ids, vectors = load_env_embeddings(session, dataset, "env", record.name)
    if not len(ids):
        raise LookupError(f"The encoder {record.name} has no environment embeddings for {dataset.name}: {ENV_HINT}.")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return record.name, ids, (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def nearest_by_cosine(ids: np.ndarray, unit: np.ndarray, cell_id: int, k: int = NEIGHBOURS) -> list[tuple[int, float]]:
    """The ``k`` cells most similar to ``cell_id`` (cosine of unit vectors), best first, itself excluded;
    ties broken by cell id so the order is stable. LookupError when the cell has no embedding."""
    where = np.flatnonzero(ids == cell_id)
    if not where.size:
        raise LookupError(f"This cell has no environment embedding: {ENV_HINT}.")
    similarity = unit @ unit[where[0]]
    others = np.flatnonzero(ids != cell_id)
    order = others[np.lexsort((ids[others], -similarity[others]))][:k]
    return [(int(ids[i]), float(similarity[i])) for i in order]


def neighbour_frame(session: Session, dataset: Dataset, pairs: list[tuple[int, float]]) -> pd.DataFrame:
    """key, similarity, land use and tile (bytes or None) of each (cell id, similarity), in that order."""
    if not pairs:
        return pd.DataFrame(columns=["cell_id", "key", "similarity", "land_use", "tile"])
    wanted = [cell_id for cell_id, _ in pairs]
    cells = cells_by_id(session, wanted)
    tiles = tile_images(session, dataset.id, wanted)
    categories = list(dataset.poi_categories)
    rows = []
    for cell_id, similarity in pairs:
        use, inferred = land_use_of(cells[cell_id], categories)
        rows.append(
            {
                "cell_id": cell_id,
                "key": cells[cell_id].key,
                "similarity": round(similarity, 4),
                "land_use": f"{use} (inferred)" if inferred else use,
                "tile": tiles.get(cell_id),
            }
        )
    return pd.DataFrame(rows)


# --- who is there, and what they use ----------------------------------------------------------------


def hour_axis(origin: datetime, hours: int) -> pd.DataFrame:
    """hour, its start and end time, and its label ("Tue 14:00", with the date beyond one week)."""
    label = hour_label_long if hours > 168 else hour_label
    start = [origin + timedelta(hours=h) for h in range(hours)]
    return pd.DataFrame(
        {
            "hour": np.arange(hours),
            "time": pd.to_datetime(start),
            "time_end": pd.to_datetime(start) + pd.Timedelta(hours=1),
            "label": [label(origin, h) for h in range(hours)],
        }
    )


def users_by_hour(session: Session, dataset: Dataset, cell_id: int) -> pd.DataFrame:
    """Distinct users attached to the cell in each hour of the data set (0 where none)."""
    counts = np.zeros(int(dataset.hours), dtype=np.int64)
    for hour, users in users_at_cell(session, cell_id):
        counts[int(hour)] = int(users)
    frame = hour_axis(dataset.time_origin, int(dataset.hours))
    frame["users"] = counts
    return frame


def traffic_by_service(session: Session, dataset: Dataset, cell_id: int) -> pd.DataFrame:
    """Traffic at the cell per hour and service, in MB: every (hour, service) of the data set, 0 where
    nobody attached to the cell used the service (so stacked areas do not jump over gaps)."""
    services = list(dataset.services)
    grid = np.zeros((int(dataset.hours), len(services)), dtype=np.float64)
    for hour, service, total in traffic_at_cell(session, cell_id):
        grid[int(hour), int(service)] = float(total)
    axis = hour_axis(dataset.time_origin, int(dataset.hours))
    frame = axis.loc[axis.index.repeat(len(services))].reset_index(drop=True)
    frame["service"] = services * int(dataset.hours)
    frame["order"] = list(range(len(services))) * int(dataset.hours)
    frame["mb"] = grid.reshape(-1) / 1e6
    return frame


# --- charts ---------------------------------------------------------------------------------------


def poi_chart(poi: pd.DataFrame) -> alt.Chart:
    return bars(poi, category="category", value="count", value_title="points of interest")


def presence_chart(frame: pd.DataFrame, height: int = 180) -> alt.Chart:
    """One bar per hour spanning exactly that hour, with day/weekday ticks."""
    return (
        alt.Chart(frame)
        .mark_bar(color="#4e79a7")
        .encode(
            x=alt.X("time:T", title=None, axis=alt.Axis(format="%a %d %b", labelAngle=0, tickCount="day")),
            x2="time_end:T",
            y=alt.Y("users:Q", title="users present"),
            y2=alt.datum(0),  # a bar from 0 (with x2 set, Vega-Lite would otherwise draw a thin range mark)
            tooltip=[alt.Tooltip("label:N", title="hour"), alt.Tooltip("users:Q", title="users")],
        )
        .properties(height=height)
    )


def traffic_chart(frame: pd.DataFrame, services: list[str] | tuple[str, ...], height: int = 280) -> alt.Chart:
    """Stacked areas of MB per service over the data set's hours (one colour per service)."""
    return (
        alt.Chart(frame)
        .mark_area(interpolate="step-after")
        .encode(
            x=alt.X("time:T", title=None, axis=alt.Axis(format="%a %d %b", labelAngle=0, tickCount="day")),
            y=alt.Y("mb:Q", stack="zero", title="MB"),
            color=alt.Color("service:N", scale=service_scale(services), sort=list(services), title="service"),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("label:N", title="hour"),
                alt.Tooltip("service:N"),
                alt.Tooltip("mb:Q", title="MB", format=".2f"),
            ],
        )
        .properties(height=height)
    )


# --- the load forecast of a cell (engine/load/core.py) ----------------------------------------------------------


def load_frames(stored: StoredLoad, cell: str) -> dict[str, pd.DataFrame]:
    """One cell of a stored load run as chart frames, in MB: ``total`` and ``users`` (the fan chart's
    columns: label, step, q05 q25 median q75 q95, truth), ``risk`` (label, step, p_exceed,
    expected_excess_mb, at_risk), and ``services`` (the fan columns plus service)."""
    r = stored.result
    i = stored.cell_keys.index(cell)
    labels, steps = stored.hour_labels, np.arange(r.horizon)

    def fan(stats: np.ndarray, scale: float, truth: np.ndarray | None) -> pd.DataFrame:
        frame = pd.DataFrame(
            {name: stats[:, j] / scale for j, name in enumerate(("mean", "q05", "q25", "median", "q75", "q95"))}
        )
        frame.insert(0, "step", steps)
        frame.insert(0, "label", labels)
        frame["truth"] = np.nan if truth is None else truth / scale
        return frame

    total = fan(r.total_stats()[i], 1e6, r.truth[i].sum(axis=-1))
    total["capacity"] = r.capacity[i] / 1e6
    users = fan(r.present_stats()[i], 1.0, None) if (r.present[i] >= 0).all() else None
    risk = pd.DataFrame(
        {
            "label": labels,
            "step": steps,
            "p_exceed": r.p_exceed[i],
            "expected_excess_mb": r.excess[i] / 1e6,
            "at_risk": r.p_exceed[i] >= r.risk_level if r.risk_level > 0 else np.zeros(r.horizon, bool),
        }
    )
    services = pd.concat(
        [
            fan(r.quantiles[i, :, k], 1e6, r.truth[i, :, k]).assign(service=name)
            for k, name in enumerate(stored.services)
        ],
        ignore_index=True,
    )
    return {"total": total, "users": users, "risk": risk, "services": services}


def capacity_rule(frame: pd.DataFrame, color: str = "#c0392b") -> alt.Chart:
    """A dashed horizontal line at the cell's capacity (MB per hour), for layering on the total's fan."""
    return (
        alt.Chart(frame.head(1))
        .mark_rule(color=color, strokeDash=[6, 4], strokeWidth=2)
        .encode(y="capacity:Q", tooltip=[alt.Tooltip("capacity:Q", format=".2f", title="capacity MB/h")])
    )


def risk_chart(frame: pd.DataFrame, level: float, height: int = 160) -> alt.Chart:
    """P(load > capacity) per forecast hour; hours at risk (P >= the run's level) in red."""
    x = alt.X("label:N", sort=list(frame.sort_values("step")["label"]), title=None, axis=alt.Axis(labelAngle=-45))
    bars_ = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("p_exceed:Q", title="P(load > capacity)", scale=alt.Scale(domain=[0, 1])),
            color=alt.condition("datum.at_risk", alt.value("#c0392b"), alt.value("#8da0cb")),
            tooltip=[
                alt.Tooltip("label:N", title="hour"),
                alt.Tooltip("p_exceed:Q", format=".0%", title="P(> capacity)"),
                alt.Tooltip("expected_excess_mb:Q", format=".2f", title="expected excess MB"),
            ],
        )
    )
    rule = alt.Chart(pd.DataFrame({"level": [level]})).mark_rule(strokeDash=[4, 3], color="#555").encode(y="level:Q")
    return alt.layer(bars_, rule).properties(height=height)
