"""What the User page shows, as plain functions: one user's traffic history, service mix, places and
past forecast runs, read with aggregate queries and shaped into DataFrames and Altair charts.

Units: the database holds bytes; everything returned for display is in MB (``app.common.megabytes``)
and hours carry "Tue 14:00" labels. The cached wrappers at the bottom key on the database URL, the
data set's id and ``app.common.revision()`` so a new forecast run shows up at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session

from app.charts import radar, service_heatmap, service_lines
from app.common import database, hour_label, hour_label_long, megabytes
from db.queries import entity_keys, entity_matrix, entity_places, find_entity, forecast_runs
from engine.requests import ForecastRequest

WEEK = 168
WEEKEND = (5, 6)  # Saturday, Sunday (datetime.weekday)
# Roles the synthetic city records in Entity.attrs; real data sets have none.
PLACE_ROLES = (("home", "home"), ("work", "work"), ("commute_hub", "commute hub"), ("leisure", "leisure"))


@dataclass(frozen=True)
class UserRecord:
    """One entity of the active data set, as the page needs it."""

    id: int
    key: str
    attrs: dict = field(default_factory=dict, hash=False, compare=False)


# --- reading ----------------------------------------------------------------------------------------


def find_user(session: Session, dataset_id: int, key: str) -> UserRecord | None:
    """The entity with this key in the data set, or None."""
    entity = find_entity(session, dataset_id, key)
    return UserRecord(entity.id, entity.key, dict(entity.attrs or {})) if entity else None


def user_traffic(session: Session, user: UserRecord, hours: int, n_services: int) -> np.ndarray:
    """The user's (hours, services) matrix in bytes (db.queries.entity_matrix: absent rows are 0)."""
    return entity_matrix(session, user.id, hours, n_services)


def place_roles(attrs: dict) -> dict[str, str]:
    """Cell key -> role ("home", "work", ...) from the entity's attributes (synthetic city only)."""
    roles: dict[str, list[str]] = {}
    for attr, role in PLACE_ROLES:
        value = attrs.get(attr)
        for key in value if isinstance(value, list) else [value]:
            if isinstance(key, str):
                roles.setdefault(key, []).append(role)
    return {key: ", ".join(names) for key, names in roles.items()}


def user_places(session: Session, user: UserRecord) -> pd.DataFrame:
    """The cells the user was seen in, most visited first: hours there, share of located hours, land
    use, role, and a link to the Cell page. One GROUP BY, no per-row loop."""
    frame = pd.DataFrame(entity_places(session, user.id), columns=["cell", "name", "land_use", "hours"])
    total = int(frame["hours"].sum()) if len(frame) else 0
    frame["share"] = frame["hours"] / total if total else 0.0
    roles = place_roles(user.attrs)
    frame["role"] = [roles.get(key, "") for key in frame["cell"]]
    frame["land_use"] = frame["land_use"].fillna("unknown")
    frame["link"] = [cell_link(key) for key in frame["cell"]]
    return frame[["cell", "name", "land_use", "role", "hours", "share", "link"]]


def cell_link(key: str) -> str:
    """Relative URL of the Cell page for a cell (works under any server base path)."""
    return f"cell?cell={key}"


def page_file(name: str) -> str:
    """The file of a dashboard page, for st.switch_page (the entry registers pages by this path)."""
    return str(Path(__file__).resolve().parent / "views" / f"{name}.py")


def forecast_link(run_id: int) -> str:
    """Relative URL that reopens a stored forecast run on the Forecast page."""
    return f"forecast?run={run_id}"


def user_runs(session: Session, dataset_id: int, entity_kind: str, key: str, origin: datetime) -> pd.DataFrame:
    """Forecast runs of the data set that include this user, newest first, with a link to reopen each."""
    records = []
    for run_id, created, params, seconds in forecast_runs(session, dataset_id):
        request = ForecastRequest.from_params(params)  # runs stored before requests read too
        if request.entity_kind != entity_kind or key not in request.entities:
            continue
        records.append(
            {
                "run": int(run_id),
                "created": created,
                "start": hour_label_long(origin, request.start),
                "horizon_h": request.horizon,
                "users": len(request.entities),
                "samples": request.samples,
                "sampler": request.sampler_label,
                "location": f"cell {', '.join(request.cells)}" if request.cells else request.location,
                "guidance": request.guidance,
                "seed": request.seed,
                "model": request.model_id,
                "seconds": seconds,
                "open": forecast_link(int(run_id)),
            }
        )
    columns = [
        "run",
        "created",
        "start",
        "horizon_h",
        "users",
        "samples",
        "sampler",
        "location",
        "guidance",
        "seed",
        "model",
        "seconds",
        "open",
    ]
    return pd.DataFrame(records, columns=columns)


# --- shaping for charts ------------------------------------------------------------------------------


def week_starts(hours: int) -> list[int]:
    """First hour of every full week in the data set (empty when it is shorter than a week)."""
    return list(range(0, hours - WEEK + 1, WEEK))


def week_label(origin: datetime, start: int) -> str:
    """'Mon 18 Apr - Sun 24 Apr' for the week beginning at hour ``start``."""
    first = origin + timedelta(hours=start)
    last = origin + timedelta(hours=start + WEEK - 1)
    return f"{first:%a %d %b} - {last:%a %d %b}"


def hour_labels(origin: datetime, hours: range | list[int]) -> list[str]:
    return [hour_label(origin, h) for h in hours]


def day_axis(origin: datetime, hours: int, offset: int = 0) -> alt.Axis:
    """An hour axis with one tick per day labelled 'Mon 18 Apr', instead of bare hour indices.
    ``offset``: the data set hour of the axis' value 0 (a week picked out of a longer history)."""
    first_midnight = (24 - (origin.hour + offset) % 24) % 24
    # Vega's datetime() takes a 0-based month and rolls hours over into days, as JavaScript's Date does.
    label = (
        f"timeFormat(datetime({origin.year}, {origin.month - 1}, {origin.day}, "
        f"{origin.hour + offset} + datum.value), '%a %d %b')"
    )
    return alt.Axis(values=list(range(first_midnight, hours, 24)), labelExpr=label, labelAngle=0, grid=True)


def heatmap_chart(
    matrix: np.ndarray, services: tuple[str, ...], origin: datetime, start: int, length: int
) -> alt.Chart:
    """168 x services heatmap (MB) of the hours ``start .. start + length - 1``, days on the axis."""
    window = range(start, min(start + length, matrix.shape[0]))
    chart = service_heatmap(megabytes(matrix[window.start : window.stop]), services, hour_labels(origin, window))
    return chart.encode(x=alt.X("hour:O", title=None, axis=day_axis(origin, len(window), offset=start)))


def series_frame(matrix: np.ndarray, services: tuple[str, ...], origin: datetime) -> pd.DataFrame:
    """Long frame (hour, label, service, value in MB) of the whole history, for service_lines."""
    hours, k = matrix.shape
    return pd.DataFrame(
        {
            "hour": np.repeat(np.arange(hours), k),
            "label": np.repeat(hour_labels(origin, range(hours)), k),
            "service": np.tile(list(services), hours),
            "value": megabytes(matrix).reshape(-1),
        }
    )


def series_chart(matrix: np.ndarray, services: tuple[str, ...], origin: datetime) -> alt.Chart:
    """One line per service over the whole history (MB), days on the axis."""
    chart = service_lines(series_frame(matrix, services, origin), services)
    return chart.encode(
        x=alt.X(
            "hour:Q",
            title=None,
            axis=day_axis(origin, matrix.shape[0]),
            scale=alt.Scale(domain=[0, matrix.shape[0] - 1], nice=False),
        )
    )


def is_weekend(origin: datetime, hours: int) -> np.ndarray:
    """(hours,) True for Saturday and Sunday hours of the data set's local calendar."""
    weekday = (origin.weekday() + (origin.hour + np.arange(hours)) // 24) % 7
    return np.isin(weekday, WEEKEND)


def service_mix(matrix: np.ndarray, services: tuple[str, ...], origin: datetime) -> pd.DataFrame:
    """Each service's share of the user's total traffic, for weekdays and for weekends (radar input).
    A part of the week without any traffic is left out rather than drawn as all zeros."""
    weekend = is_weekend(origin, matrix.shape[0])
    rows = []
    for name, mask in (("weekdays", ~weekend), ("weekends", weekend)):
        per_service = matrix[mask].sum(axis=0)
        total = float(per_service.sum())
        if total <= 0:
            continue
        rows += [
            {"series": name, "service": s, "share": float(v) / total}
            for s, v in zip(services, per_service, strict=True)
        ]
    return pd.DataFrame(rows, columns=["series", "service", "share"])


def mix_chart(mix: pd.DataFrame, services: tuple[str, ...]) -> alt.LayerChart:
    return radar(mix, services, value="share", series="series", colors={"weekdays": "#4e79a7", "weekends": "#e4572e"})


def usage_summary(matrix: np.ndarray, places: pd.DataFrame) -> dict[str, float]:
    """Headline numbers: total and mean hourly traffic (bytes, for format_bytes), share of hours with
    any traffic, distinct cells visited."""
    per_hour = matrix.sum(axis=1)
    hours = max(len(per_hour), 1)
    return {
        "total_bytes": float(per_hour.sum()),
        "mean_bytes_per_hour": float(per_hour.sum()) / hours,
        "active_share": float((per_hour > 0).sum()) / hours,
        "cells": len(places),
    }


# --- cached wrappers (the page calls these) -----------------------------------------------------------


@st.cache_data(show_spinner=False)
def cached_entity_keys(url: str, dataset_id: int, revision: int) -> list[str]:
    with database().session() as session:
        return entity_keys(session, dataset_id)


@st.cache_data(show_spinner=False)
def cached_user(
    url: str, dataset_id: int, revision: int, key: str, hours: int, n_services: int
) -> tuple[UserRecord, np.ndarray, pd.DataFrame] | None:
    """The user, their traffic matrix (bytes) and places, or None for an unknown key."""
    with database().session() as session:
        user = find_user(session, dataset_id, key)
        if user is None:
            return None
        return user, user_traffic(session, user, hours, n_services), user_places(session, user)


@st.cache_data(show_spinner=False)
def cached_user_runs(
    url: str, dataset_id: int, revision: int, entity_kind: str, key: str, origin: datetime
) -> pd.DataFrame:
    with database().session() as session:
        return user_runs(session, dataset_id, entity_kind, key, origin)
