"""What the Forecast page needs, as plain functions: the active model, the request and its checks,
stored runs (ForecastRun rows) shaped into fan charts, radars, metrics and exports, and the run history.

The app never does model maths: forecasts are ``forecast`` jobs that `lsdm worker` runs
(``engine.forecast.run_forecast``; the page only queues and follows them), scores come from
``engine.evaluation.metrics`` and the normalised scale from the model's own ``Normaliser``. A stored run is shown
from its ``summary`` (quantiles per step, in bytes) and its ``result`` arrays (sample paths), never
recomputed. Display units: MB and "Tue 14:00" hour labels; exports keep exact bytes.
"""

from __future__ import annotations

import io
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session

from app.charts import fan_chart, radar, service_lines
from app.common import database, hour_label, hour_label_long, megabytes, service_colors
from db import queries  # qualified: this module's active_model gives the page's ModelInfo
from db.models import ForecastRun, ModelRecord
from engine.data.windows import Normaliser
from engine.errors import InputError
from engine.evaluation.metrics import point_metrics, score
from engine.forecast import ForecastResult
from engine.model import read_model_document
from engine.requests import ForecastRequest

MAX_USERS = 20
MAX_HORIZON = ForecastRequest.bounds("horizon")[1]
MAX_SAMPLES = ForecastRequest.bounds("samples")[1]
MAX_GUIDANCE = ForecastRequest.bounds("guidance")[1]
SAMPLERS = ForecastRequest.choices("sampler")
LOCATION_MODES = ForecastRequest.choices("location")
LOCATION_LABELS = {
    "habitual": "habitual",
    "sampled": "sampled",
    "stay": "stay",
    "observed": "observed",
    "cells": "cell",
}
LOCATION_HELP = {
    "habitual": "each user's most frequent cell at that hour of the week (from hours before the start)",
    "sampled": "each sample path draws the user's cell hour by hour from their own history (same hour, same "
    "kind of day): the spread holds where they may be",
    "stay": "each user stays in the last cell seen before the start",
    "observed": "a backtest: where the data recorded each user (the habitual cell beyond the data)",
    "cell": "every user is placed in one chosen cell for the whole forecast",
}
QUANTILE_KEYS = ("q05", "q25", "median", "q75", "q95")
EXPORT_COLUMNS = [
    "run",
    "entity",
    "step",
    "hour",
    "time",
    "service",
    "mean",
    "median",
    "q05",
    "q25",
    "q75",
    "q95",
    "truth",
]
METRIC_COLUMNS = ["entity", "hours", "mse", "rmse", "mae", "cs", "r2", "crps", "cov50", "cov90", "mae_mb"]


# --- the model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """The active forecasting model of a data set, read from its ModelRecord (no weights loaded)."""

    id: int
    name: str
    sha256: str
    history: int  # hours of history the model reads: the earliest possible start
    diffusion_steps: int  # the most DDIM steps worth asking for
    created_at: datetime


def active_model(session: Session, dataset_id: int) -> ModelInfo | None:
    """The data set's active LSDM model, or None when there is none yet."""
    record = queries.active_model(session, dataset_id)
    if record is None:
        return None
    config = record.config or {}
    return ModelInfo(
        id=record.id,
        name=record.name,
        sha256=record.sha256,
        history=int(config.get("history", 24)),
        diffusion_steps=int(config.get("diffusion_steps", 50)),
        created_at=record.created_at,
    )


def model_normaliser(session: Session, model_id: int | None) -> Normaliser | None:
    """The normalisation a model was trained with (its model.json, read verified by
    engine.model.read_model_document), to score a run on the paper's normalised scale; None when the
    model or its folder is gone or damaged."""
    record = session.get(ModelRecord, model_id) if model_id is not None else None
    if record is None:
        return None
    try:
        return Normaliser.from_dict(read_model_document(record.path)["normaliser"])
    except (InputError, OSError, KeyError):
        return None


# --- the request --------------------------------------------------------------------------------------
# The form builds the engine's ForecastRequest (engine/requests.py): its fields, defaults and bounds are
# the command line's and the job's. The page adds what only it knows: the model and the data's hours.


def default_value(name: str) -> object:
    return ForecastRequest.default(name)


def request_problems(
    request: ForecastRequest, *, history: int, hours: int, origin: datetime, diffusion_steps: int = 1000
) -> dict[str, str]:
    """Field name -> what is wrong and what to do; empty when the request can run: the request's own
    checks, then what needs the model and the data (phrased for the page's widgets)."""
    errors = request.validate()
    if "entities" in errors and not request.entities:
        errors["entities"] = "Pick at least one user."
    elif len(request.entities) > MAX_USERS:
        errors["entities"] = f"Pick at most {MAX_USERS} users ({len(request.entities)} picked)."
    if "start" not in errors and request.start < history:
        errors["start"] = (
            f"The model reads {history} hours of history: start at "
            f"{hour_label_long(origin, history)} (hour {history}) or later."
        )
    elif "start" not in errors and request.start > hours:
        errors["start"] = (
            f"The data ends at hour {hours}: start at {hour_label_long(origin, hours)} (hour {hours}) or earlier."
        )
    if request.sampler == "ddim" and not 1 <= request.sampler_steps <= diffusion_steps:
        errors["sampler_steps"] = f"DDIM takes 1 to {diffusion_steps} steps (the model's diffusion steps)."
    if "cells" in errors:
        errors["cells"] = "Pick the cell the users should be in."
    return errors


def start_label(origin: datetime, hours: int, hour: int) -> str:
    """'Tue 14:00' for data sets of up to a week; with the date when a weekday name repeats."""
    return hour_label(origin, hour) if hours <= 168 else hour_label_long(origin, hour)


def default_start(hours: int, history: int) -> int:
    """The last day of the data (the held-out test day): the forecast can be checked against truth."""
    return max(history, hours - 24)


# --- stored runs --------------------------------------------------------------------------------------


@dataclass
class StoredRun:
    """A ForecastRun row as the page shows it: parameters, per-step summaries and the sample arrays."""

    id: int
    dataset_id: int
    model_id: int | None
    params: dict
    entities: list[dict]  # [{"entity": "user:U0001", "steps": [...]}] (engine.forecast summary)
    created_at: datetime
    seconds: float | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # paths, paths_v, truth, ... (may be empty)
    every: dict = field(default_factory=dict)  # an every-entity run (--entity all): its parts' folder and total

    @property
    def entity_names(self) -> list[str]:
        return [entity["entity"] for entity in self.entities]

    def entity(self, name: str) -> dict:
        return next(entity for entity in self.entities if entity["entity"] == name)

    def has_truth(self) -> bool:
        return any(step["total"].get("truth") is not None for entity in self.entities for step in entity["steps"])

    @property
    def request(self) -> ForecastRequest:
        """What was asked (runs stored before requests read too: engine/requests.py)."""
        return ForecastRequest.from_params(self.params)


def load_run(session: Session, run_id: int, dataset_id: int) -> StoredRun | None:
    """The stored run of this data set, or None (unknown id, or a run of another data set)."""
    run = session.get(ForecastRun, run_id)
    if run is None or run.dataset_id != dataset_id:
        return None
    arrays = ForecastResult.arrays_from_npz(run.result) if run.result else {}
    return StoredRun(
        id=run.id,
        dataset_id=run.dataset_id,
        model_id=run.model_id,
        params=dict(run.params or {}),
        entities=list((run.summary or {}).get("entities", [])),
        created_at=run.created_at,
        seconds=run.seconds,
        arrays=arrays,
        every=dict((run.summary or {}).get("every") or {}),
    )


# A stored run's kind in the history, from its ``role`` (what-if runs are stored in pairs: engine/whatif.py).
RUN_KINDS = {"baseline": "what-if baseline", "scenario": "what-if scenario"}
HISTORY_KINDS = ("forecast", *RUN_KINDS.values())


def run_history(session: Session, dataset_id: int, origin: datetime, hours: int, limit: int = 500) -> pd.DataFrame:
    """Every run of the data set with every parameter, newest first (the summaries and arrays stay in
    the database)."""
    records = []
    for run_id, created, params, seconds in queries.forecast_runs(session, dataset_id, limit):
        request = ForecastRequest.from_params(params)
        records.append(
            {
                "run": int(run_id),
                "kind": RUN_KINDS.get(str(params.get("role")), "forecast"),
                "created": created,
                "entity": "every entity"
                if request.every
                else ", ".join(f"{request.entity_kind}:{key}" for key in request.entities),
                "users": int(params.get("entities_count") or 0) if request.every else len(request.entities),
                "start": request.start,
                "start_label": start_label(origin, hours, request.start),
                "horizon": request.horizon,
                "samples": request.samples,
                "sampler": request.sampler_label,
                "location": location_label(request),
                "guidance": request.guidance,
                "seed": request.seed,
                "model": request.model_id,
                "seconds": seconds,
            }
        )
    columns = [
        "run",
        "kind",
        "created",
        "entity",
        "users",
        "start",
        "start_label",
        "horizon",
        "samples",
        "sampler",
        "location",
        "guidance",
        "seed",
        "model",
        "seconds",
    ]
    return pd.DataFrame(records, columns=columns)


def run_title(run: StoredRun, origin: datetime, hours: int) -> str:
    """'Run 12 · user:U0001 · from Tue 19 Apr 14:00 · 24 h'."""
    who = run.entity_names[0] if len(run.entities) == 1 else f"{len(run.entities)} users"
    return f"Run {run.id} · {who} · from {start_label(origin, hours, run.request.start)} · {run.request.horizon} h"


def location_label(request: ForecastRequest) -> str:
    """'habitual', or 'cell C0042' for runs placed in given cells."""
    return f"cell {', '.join(request.cells)}" if request.location == "cells" else request.location


def params_frame(run: StoredRun, origin: datetime, hours: int) -> pd.DataFrame:
    """The run's parameters as two columns, for a compact table."""
    request, p = run.request, run.params
    rows = [
        (f"{request.entity_kind}s", ", ".join(request.entities)),
        ("start", f"{start_label(origin, hours, request.start)} (hour {request.start})"),
        ("horizon", f"{request.horizon} h"),
        ("samples", request.samples),
        ("sampler", request.sampler_label),
        ("noise", request.noise),
        ("location", location_label(request)),
        ("guidance", request.guidance),
        ("seed", request.seed),
        ("model", f"{request.model_id} ({str(p.get('model_sha256', ''))[:12]})"),
        ("data set", request.dataset),
        ("computed in", f"{run.seconds:.1f} s" if run.seconds is not None else "unknown"),
    ]
    return pd.DataFrame([(name, str(value)) for name, value in rows], columns=["parameter", "value"])


# --- charts -------------------------------------------------------------------------------------------


def step_frame(steps: list[dict], service: str | None = None) -> pd.DataFrame:
    """One row per forecast step for a service (None: total traffic): label, step, hour, mean, quantiles
    and truth, in MB (truth NaN where unknown)."""
    rows = []
    for n, step in enumerate(steps):
        stats = step["total"] if service is None else step["services"][service]
        truth = stats.get("truth")
        rows.append(
            {
                "label": step["label"],
                "step": n,
                "hour": int(step["hour"]),
                "mean": float(megabytes(stats["mean"])),
                **{q: float(megabytes(stats[q])) for q in QUANTILE_KEYS},
                "truth": float(megabytes(truth)) if truth is not None else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["label", "step", "hour", "mean", *QUANTILE_KEYS, "truth"])


HISTORY_HOURS = 48  # observed hours drawn before a fan's first forecast hour


def history_frame(observed: np.ndarray | None, start: int, origin: datetime, service: int | None) -> pd.DataFrame:
    """The observed hours before a forecast's start (at most ``HISTORY_HOURS``) in MB: ``label``, ``step``
    (< 0) and ``observed``; ``observed`` is the entity's (hours, services) bytes, ``service`` None: all."""
    columns = ["label", "step", "observed"]
    if observed is None:
        return pd.DataFrame(columns=columns)
    first, last = max(0, start - HISTORY_HOURS), min(start, len(observed))
    values = observed[first:last].sum(axis=1) if service is None else observed[first:last, service]
    return pd.DataFrame(
        {
            "label": [hour_label(origin, h) for h in range(first, last)],
            "step": [h - start for h in range(first, last)],
            "observed": megabytes(values),
        },
        columns=columns,
    )


def service_fans(
    entity: dict,
    services: tuple[str, ...] | list[str],
    observed: np.ndarray | None = None,
    origin: datetime | None = None,
) -> list[alt.LayerChart]:
    """One fan chart per service (MB), in the data set's service order and colours, each after the
    entity's observed hours (``observed``: its (hours, services) bytes, with the data set's ``origin``)."""
    start = int(entity["steps"][0]["hour"]) if entity["steps"] else 0
    return [
        fan_chart(
            step_frame(entity["steps"], name),
            service=name,
            color=color,
            history=None if origin is None else history_frame(observed, start, origin, k),
        )
        for k, (name, color) in enumerate(zip(services, service_colors(services), strict=True))
    ]


def total_fan(
    entity: dict,
    title: str = "Total traffic",
    y_max: float | None = None,
    observed: np.ndarray | None = None,
    origin: datetime | None = None,
) -> alt.LayerChart:
    start = int(entity["steps"][0]["hour"]) if entity["steps"] else 0
    history = None if origin is None else history_frame(observed, start, origin, None)
    return fan_chart(
        step_frame(entity["steps"]), service=title, color="#1f2933", height=220, y_max=y_max, history=history
    )


def observed_traffic(dataset_id: int, entity_name: str, hours: int, n_services: int) -> np.ndarray | None:
    """The (hours, services) bytes of a run's entity ("user:U0001"), or None when the data set lacks it."""
    key = entity_name.split(":", 1)[-1]
    with database().session() as session:
        entity = queries.find_entity(session, dataset_id, key)
        return None if entity is None else queries.entity_matrix(session, entity.id, hours, n_services)


def known_steps(entity: dict) -> list[dict]:
    """The steps whose truth is known for every service (inside the data)."""
    return [step for step in entity["steps"] if step["total"].get("truth") is not None]


def forecast_mix(entity: dict, services: tuple[str, ...] | list[str]) -> tuple[pd.DataFrame, int]:
    """Each service's share of the traffic over the horizon, forecast (expected bytes) vs truth (paper
    Fig. 6), and how many hours it covers. When some truth is known both series use only those hours,
    so that they compare like with like."""
    known = known_steps(entity)
    steps = known or entity["steps"]
    forecast = np.array([sum(step["services"][s]["mean"] for step in steps) for s in services], dtype=float)
    series = [("forecast", forecast)]
    if known:
        series.append(
            ("truth", np.array([sum(step["services"][s]["truth"] for step in known) for s in services], dtype=float))
        )
    rows = []
    for name, values in series:
        total = float(values.sum())
        rows += [
            {"series": name, "service": s, "share": float(v) / total if total > 0 else 0.0}
            for s, v in zip(services, values, strict=True)
        ]
    return pd.DataFrame(rows, columns=["series", "service", "share"]), len(steps)


def mix_chart(mix: pd.DataFrame, services: tuple[str, ...] | list[str]) -> alt.LayerChart:
    return radar(mix, services, value="share", series="series", colors={"truth": "#1f2933", "forecast": "#e4572e"})


def median_frame(entity: dict, services: tuple[str, ...] | list[str], origin: datetime) -> pd.DataFrame:
    """Per-service median forecast (MB) per forecast hour: hour, label, service, value."""
    return pd.DataFrame(
        [
            {
                "hour": int(step["hour"]),
                "label": hour_label(origin, int(step["hour"])),
                "service": name,
                "value": float(megabytes(step["services"][name]["median"])),
            }
            for step in entity["steps"]
            for name in services
        ],
        columns=["hour", "label", "service", "value"],
    )


def median_lines(
    entity: dict, services: tuple[str, ...] | list[str], origin: datetime, y_max: float | None = None
) -> alt.Chart:
    """Per-service median forecast (MB) over the forecast hours, one colour per service."""
    chart = service_lines(median_frame(entity, services, origin), services, height=220)
    if y_max:
        chart = chart.encode(y=alt.Y("value:Q", title="MB", scale=alt.Scale(domain=[0, y_max])))
    return chart


def compare_y_max(entities: list[dict], view: str, services: tuple[str, ...] | list[str]) -> float:
    """The shared top of the y axis (MB) for charts compared side by side: the highest 95 % quantile
    of total traffic (view "total") or the highest per-service median (view "median")."""
    if view == "total":
        values = [step_frame(entity["steps"])["q95"].max() for entity in entities]
    else:
        values = [
            max(step["services"][name]["median"] for step in entity["steps"] for name in services) / 1e6
            for entity in entities
        ]
    top = float(max(values, default=0.0))
    return top if top > 0 else 1.0


def common_entity(first: StoredRun, second: StoredRun) -> str | None:
    """The first entity both runs forecast (what a side-by-side comparison should show), if any."""
    shared = [name for name in first.entity_names if name in second.entity_names]
    return shared[0] if shared else None


# --- metrics ------------------------------------------------------------------------------------------


def run_metrics(run: StoredRun, normaliser: Normaliser | None) -> pd.DataFrame:
    """Scores of the run over the hours whose truth is known, per entity and (for several) all together:
    MSE, RMSE, MAE, cosine, R² (on the sample mean), CRPS and 50 %/90 % interval coverage, all on the
    model's normalised scale (the paper's tables), plus MAE in MB of the median path value. In bytes the
    sample mean is ruled by the rare huge draws of a log-scale model (one 10 GB sample moves it by
    300 MB), while the median is the point that minimises absolute error and maps one to one between
    the two scales. Empty when nothing can be scored."""
    arrays = run.arrays
    if not arrays or "paths" not in arrays or "truth" not in arrays:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    truth = arrays["truth"].astype(np.float64)  # (E, N, K) bytes, NaN beyond the data
    known = ~np.isnan(truth).any(axis=(0, 2))  # steps known for every entity and service
    if not known.any():
        return pd.DataFrame(columns=METRIC_COLUMNS)
    truth = truth[:, known]
    paths = arrays["paths"].astype(np.float64)[:, :, known]  # (E, S, N', K) bytes
    paths_v = arrays["paths_v"].astype(np.float64)[:, :, known] if "paths_v" in arrays else None
    names = run.entity_names or [f"entity {i}" for i in range(truth.shape[0])]
    groups = [(name, [i]) for i, name in enumerate(names)]
    if len(names) > 1:
        groups.append(("all", list(range(len(names)))))
    rows = []
    for name, index in groups:
        y = truth[index]  # (E', N', K)
        samples = np.moveaxis(paths[index], 1, 0)  # (S, E', N', K)
        row = {"entity": name, "hours": int(known.sum())}
        if normaliser is not None and paths_v is not None:
            row.update(score(normaliser.forward(y), np.moveaxis(paths_v[index], 1, 0)))
        row["mae_mb"] = point_metrics(y, np.median(samples, axis=0))["mae"] / 1e6
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=METRIC_COLUMNS)


# --- export -------------------------------------------------------------------------------------------


def export_frame(run: StoredRun, services: tuple[str, ...] | list[str], origin: datetime) -> pd.DataFrame:
    """One row per entity, step and service: mean, median, q05..q95 and truth in bytes (truth empty where
    unknown), with the hour index and its local time."""
    rows = []
    for entity in run.entities:
        for n, step in enumerate(entity["steps"]):
            hour = int(step["hour"])
            moment = (origin + timedelta(hours=hour)).isoformat(timespec="minutes")
            for name in services:
                stats = step["services"][name]
                rows.append(
                    {
                        "run": run.id,
                        "entity": entity["entity"],
                        "step": n + 1,
                        "hour": hour,
                        "time": moment,
                        "service": name,
                        "mean": stats["mean"],
                        "median": stats["median"],
                        "q05": stats["q05"],
                        "q25": stats["q25"],
                        "q75": stats["q75"],
                        "q95": stats["q95"],
                        "truth": stats.get("truth"),
                    }
                )
    frame = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    frame["truth"] = frame["truth"].astype(float)
    return frame


def export_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def export_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# --- cached wrappers (the page calls these) ------------------------------------------------------------


@st.cache_data(show_spinner=False)
def cached_active_model(url: str, dataset_id: int, revision: int) -> ModelInfo | None:
    with database().session() as session:
        return active_model(session, dataset_id)


@st.cache_data(show_spinner=False)
def cached_cells(url: str, dataset_id: int, revision: int) -> pd.DataFrame:
    """Cell key, name and land use of the data set (the location scenario's choices)."""
    with database().session() as session:
        rows = sorted((cell.key, cell.name, cell.land_use) for cell in queries.dataset_cells(session, dataset_id))
    return pd.DataFrame(rows, columns=["key", "name", "land_use"])


@st.cache_data(show_spinner=False)
def cached_history(url: str, dataset_id: int, revision: int, origin: datetime, hours: int) -> pd.DataFrame:
    with database().session() as session:
        return run_history(session, dataset_id, origin, hours)


class RunNotFound(LookupError):
    """No such run in the data set (raised, not returned, so that the absence is never cached)."""


@st.cache_resource(show_spinner=False, max_entries=16)
def _cached_run(url: str, dataset_id: int, revision: int, run_id: int) -> StoredRun:
    with database().session() as session:
        run = load_run(session, run_id, dataset_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def cached_run(url: str, dataset_id: int, revision: int, run_id: int) -> StoredRun | None:
    """A stored run, or None. Kept as a resource (runs never change, so their sample arrays are not
    copied on every rerun); the revision in the key drops it when the data changes."""
    try:
        return _cached_run(url, dataset_id, revision, run_id)
    except RunNotFound:
        return None


@st.cache_data(show_spinner=False)
def cached_metrics(url: str, dataset_id: int, revision: int, run_id: int) -> pd.DataFrame:
    run = cached_run(url, dataset_id, revision, run_id)
    if run is None:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    with database().session() as session:
        normaliser = model_normaliser(session, run.model_id)
    return run_metrics(run, normaliser)


@st.cache_data(show_spinner=False)
def cached_exports(
    url: str, dataset_id: int, revision: int, run_id: int, services: tuple[str, ...], origin: datetime
) -> tuple[bytes, bytes]:
    """(CSV, Parquet) of a stored run."""
    run = cached_run(url, dataset_id, revision, run_id)
    frame = export_frame(run, services, origin)
    return export_csv(frame), export_parquet(frame)


# --- widget state -------------------------------------------------------------------------------------


def adopt_link_value(state: MutableMapping[str, Any], widget_key: str, value: object) -> None:
    """Let a deep link set a widget: only a link value that differs from the last one seen (a new link,
    not the page's own mirror of the widget) overrides it, so the user's changes are never undone. A
    widget without state (Streamlit drops it when the page is left) always takes the link's value."""
    memo = f"_link_{widget_key}"
    if value is not None and (state.get(memo) != value or widget_key not in state):
        state[widget_key] = value
    state[memo] = value


def remember_link_value(state: MutableMapping[str, Any], widget_key: str, value: object) -> None:
    """Record the value the page itself just mirrored into the URL (see ``adopt_link_value``)."""
    state[f"_link_{widget_key}"] = value


def form_values(params: dict) -> dict[str, object]:
    """A stored run's request as the form's widget values (to run it again with changes)."""
    request = ForecastRequest.from_params(params)
    values: dict[str, object] = {
        "fc_users": list(request.entities)[:MAX_USERS],
        "fc_start": request.start,
        "fc_horizon": request.horizon,
        "fc_samples": request.samples,
        "fc_seed": request.seed,
        "fc_sampler": request.sampler,
        "fc_steps": request.sampler_steps,
        "fc_location": request.location,
        "fc_guidance": float(request.guidance),
        "fc_paired": request.antithetic,
    }
    if request.cells:
        values["fc_cell"] = request.cells[0]
    return values


# --- cached chart specs ---------------------------------------------------------------------------------
# Building and validating an Altair chart costs ~0.05-0.1 s; a run shows a dozen. Runs never change, so
# their Vega-Lite specs are built once and rendered with st.vega_lite_chart(spec, theme=None).


@dataclass
class RunViews:
    """The charts of one entity of a stored run, as Vega-Lite specs."""

    total: dict
    mix: dict
    mix_hours: int
    mix_has_truth: bool
    fans: list[dict]  # one per service, in the data set's order


@st.cache_data(show_spinner=False, max_entries=64)
def cached_run_views(
    url: str,
    dataset_id: int,
    revision: int,
    run_id: int,
    entity_name: str,
    services: tuple[str, ...],
    origin: datetime | None = None,
    data_hours: int = 0,
) -> RunViews | None:
    """The run's charts for one entity; with ``origin`` and ``data_hours``, each fan after the entity's last
    observed hours (``HISTORY_HOURS``)."""
    run = cached_run(url, dataset_id, revision, run_id)
    if run is None or entity_name not in run.entity_names:
        return None
    entity = run.entity(entity_name)
    mix, hours = forecast_mix(entity, services)
    observed = observed_traffic(dataset_id, entity_name, data_hours, len(services)) if origin and data_hours else None
    return RunViews(
        total=total_fan(entity, f"Total traffic · {entity_name}", observed=observed, origin=origin).to_dict(),
        mix=mix_chart(mix, services).to_dict(),
        mix_hours=hours,
        mix_has_truth="truth" in set(mix["series"]),
        fans=[chart.to_dict() for chart in service_fans(entity, services, observed, origin)],
    )


@st.cache_data(show_spinner=False, max_entries=64)
def cached_compare_view(
    url: str,
    dataset_id: int,
    revision: int,
    run_id: int,
    entity_name: str,
    view: str,
    services: tuple[str, ...],
    origin: datetime,
    y_max: float | None = None,
) -> dict | None:
    """A run's total-traffic fan (view "total") or per-service medians (view "median") as a spec."""
    run = cached_run(url, dataset_id, revision, run_id)
    if run is None or entity_name not in run.entity_names:
        return None
    entity = run.entity(entity_name)
    if view == "total":
        chart = total_fan(entity, f"Total traffic · {entity_name}", y_max=y_max)
    else:
        chart = median_lines(entity, services, origin, y_max=y_max)
    return chart.to_dict()


def every_total_frame(run: StoredRun) -> pd.DataFrame:
    """An every-entity run's total of the data set per hour, in MB (median and the 90 % band)."""
    rows = [
        {
            "hour": step["label"],
            "median MB": step["total"]["median"] / 1e6,
            "5 % MB": step["total"]["q05"] / 1e6,
            "95 % MB": step["total"]["q95"] / 1e6,
        }
        for step in run.every.get("total", [])
    ]
    return pd.DataFrame(rows, columns=["hour", "median MB", "5 % MB", "95 % MB"])
