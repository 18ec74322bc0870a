"""What the Models & evaluation page shows, as plain functions: the registered models of a data set,
their loss curves, activation, and the stored evaluation (the paper's Tables III/IV, per-service R²,
error by recursive step). Training and evaluation are ``train`` and ``evaluate`` jobs that `lsdm worker`
runs (engine/train.py, engine/evaluation/evaluate.py); this module only reads, reshapes and draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import altair as alt
import pandas as pd
import streamlit as st

from app.charts import radar
from app.common import ACCENT, database
from db import Database, queries  # qualified: this module's activate_model takes a model id
from db.models import ModelRecord
from engine.evaluation.evaluate import LOCATION_TEXT
from engine.evaluation.metrics import METRIC_KEYS
from engine.evaluation.report import LABELS

KINDS = ("lsdm", "clip")  # forecasters and environment encoders
# One colour per evaluated method, the same in the radar and the error-by-step chart.
METHOD_COLORS = {
    "lsdm": ACCENT,
    "lsdm-no-condition": "#4e79a7",
    "csdi-like": "#59a14f",
    "no-2d-attention": "#76b7b2",
    "env-input": "#ff9da7",
    "arima": "#edc948",
    "hour-of-week-mean": "#b07aa1",
    "seasonal-naive": "#9aa5b1",
}
RADAR_DEFAULT = ("lsdm", "lsdm-no-condition", "hour-of-week-mean")  # the comparison the paper's Fig. 7 makes
EVALUATE_COMMAND = "lsdm evaluate --model {id} --report reports/model-{id}"


@dataclass(frozen=True)
class ModelInfo:
    """One registered model as the page shows it (a plain value, cacheable)."""

    id: int
    name: str
    kind: str
    active: bool
    created_at: datetime
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def history(self) -> list[dict]:
        """Training epochs: epoch, train_loss, val_loss, seconds (engine/train.py ``fit``)."""
        return list(self.metrics.get("history") or [])

    @property
    def evaluation(self) -> dict | None:
        """The last evaluation, stored by engine.evaluation.evaluate.store_evaluation; None when never evaluated."""
        return self.metrics.get("evaluation")

    @property
    def cell_evaluation(self) -> dict | None:
        """The last cell-level evaluation (engine/evaluation/cell_level.py); None when never evaluated so."""
        return self.metrics.get("cell_evaluation")

    @property
    def label(self) -> str:
        return f"#{self.id} {self.name}" + (" (active)" if self.active else "")


# --- reading --------------------------------------------------------------------------------------


def list_models(db: Database, dataset_id: int) -> list[ModelInfo]:
    """The data set's forecasters and encoders, newest first."""
    with db.session() as session:
        records = queries.dataset_models(session, dataset_id, KINDS)
        return [
            ModelInfo(
                id=r.id,
                name=r.name,
                kind=r.kind,
                active=bool(r.is_active),
                created_at=r.created_at,
                config=dict(r.config or {}),
                metrics=dict(r.metrics or {}),
            )
            for r in records
        ]


@st.cache_data(show_spinner=False)
def cached_models(url: str, dataset_id: int, revision_: int) -> list[ModelInfo]:
    """``list_models`` for the page, keyed by database, data set and app revision."""
    del revision_  # part of the cache key only (no leading underscore: Streamlit hashes it)
    return list_models(database(), dataset_id)


def config_summary(model: ModelInfo) -> str:
    """A one-line description of what distinguishes the model."""
    c = model.config
    if model.kind == "clip":
        settings = c.get("settings", {})
        how = "frozen" if settings.get("frozen") else f"{settings.get('epochs', '?')} epochs"
        return f"{settings.get('arch', '?')}, {how}, env mode {settings.get('mode', '?')}"
    parts = [
        f"{c.get('channels', '?')} ch x {c.get('blocks', '?')} blocks, {c.get('heads', '?')} heads",
        f"history {c.get('history', '?')} h",
        f"condition {c.get('condition', '?')}",
    ]
    if c.get("service_attention") is False:
        parts.append("no 2D attention")
    if c.get("env_kind", "env") != "env":
        parts.append(f"{c['env_kind']} embedding")
    return ", ".join(parts)


def utc_label(moment: datetime) -> str:
    """Creation times are stored in UTC (db/models.py ``utcnow``)."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def model_table(models: list[ModelInfo]) -> pd.DataFrame:
    """One row per model: identity, configuration and its headline numbers."""
    rows = []
    for m in models:
        evaluation = m.evaluation or {}
        lsdm_row = next((r for r in evaluation.get("rows", []) if r.get("method") == "lsdm"), {})
        retrieval = m.metrics.get("retrieval") or {}
        rows.append(
            {
                "id": m.id,
                "active": m.active,
                "kind": m.kind,
                "name": m.name,
                "created": utc_label(m.created_at),
                "configuration": config_summary(m),
                "best val loss": m.metrics.get("best_val_loss"),
                "epochs": m.metrics.get("epochs_run"),
                "train s": m.metrics.get("train_seconds"),
                "test R²": lsdm_row.get("r2"),
                "retrieval top-1": retrieval.get("top1"),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "id",
            "active",
            "kind",
            "name",
            "created",
            "configuration",
            "best val loss",
            "epochs",
            "train s",
            "test R²",
            "retrieval top-1",
        ],
    )


def loss_curve(history: list[dict], *, height: int = 240) -> alt.Chart:
    """Training and validation loss per epoch. The chart's data is ``history`` itself (folded by
    Vega-Lite), so what is drawn is exactly what training recorded."""
    frame = pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss", "seconds"])
    names = {"train_loss": "training", "val_loss": "validation"}
    return (
        alt.Chart(frame)
        .transform_fold(["train_loss", "val_loss"], as_=["series", "loss"])
        .transform_calculate(curve=f"datum.series == 'train_loss' ? '{names['train_loss']}' : '{names['val_loss']}'")
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("loss:Q", title="diffusion loss", scale=alt.Scale(zero=False)),
            color=alt.Color(
                "curve:N",
                title=None,
                legend=alt.Legend(orient="bottom"),
                scale=alt.Scale(domain=list(names.values()), range=["#9aa5b1", ACCENT]),
            ),
            tooltip=[
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("curve:N", title="loss"),
                alt.Tooltip("loss:Q", format=".4f"),
                alt.Tooltip("seconds:Q", title="elapsed s"),
            ],
        )
        .properties(height=height)
    )


# --- writing --------------------------------------------------------------------------------------


def activate_model(db: Database, model_id: int) -> None:
    """Make a model the active one of its kind for its data set (one transaction)."""
    with db.write_session() as session, session.begin():
        record = session.get(ModelRecord, model_id)
        if record is None:
            raise LookupError(f"no model with id {model_id}")
        queries.activate_model(session, record)


# --- the stored evaluation ------------------------------------------------------------------------


def metric_table(rows: list[dict]) -> pd.DataFrame:
    """Table III/IV rows: method and the eight metrics, labelled as in the paper."""
    columns = ["method", *METRIC_KEYS]
    frame = pd.DataFrame([{key: row.get(key) for key in columns} for row in rows], columns=columns)
    return frame.rename(columns={key: LABELS[key] for key in METRIC_KEYS})


def per_service_table(evaluation: dict) -> pd.DataFrame:
    """R² per service (columns) for each method (rows), as stored."""
    scores = evaluation.get("per_service_r2") or {}
    return pd.DataFrame.from_dict(scores, orient="index").rename_axis("method")


def default_radar_methods(evaluation: dict) -> list[str]:
    available = list(evaluation.get("per_service_r2") or {})
    return [m for m in RADAR_DEFAULT if m in available] or available[:3]


def method_colors(methods: list[str]) -> dict[str, str]:
    fallback = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1"]
    return {m: METHOD_COLORS.get(m, fallback[i % len(fallback)]) for i, m in enumerate(methods)}


def r2_radar(evaluation: dict, methods: list[str], services: list[str] | tuple[str, ...]) -> alt.LayerChart:
    """Per-service R² of the chosen methods (paper Fig. 7). The radius cannot go below the centre,
    so an R² below 0 (worse than the test day's mean) is drawn at the centre; the table has it."""
    scores = evaluation.get("per_service_r2") or {}
    rows = [
        {"series": m, "service": s, "r2": max(0.0, float(scores[m].get(s) or 0.0))}
        for m in methods
        if m in scores
        for s in services
    ]
    frame = pd.DataFrame(rows, columns=["series", "service", "r2"])
    return radar(frame, services, value="r2", colors=method_colors(methods))


def horizon_frame(evaluation: dict) -> pd.DataFrame:
    """MSE by recursive step, long form: method, step (1..n), mse."""
    rows = [
        {"method": method, "step": i + 1, "mse": value}
        for method, values in (evaluation.get("mse_by_step") or {}).items()
        for i, value in enumerate(values)
        if value is not None
    ]
    return pd.DataFrame(rows, columns=["method", "step", "mse"])


def horizon_chart(evaluation: dict, *, height: int = 300) -> alt.Chart:
    """Error by horizon (paper Fig. 8): how the error grows as forecasts feed on forecasts."""
    frame = horizon_frame(evaluation)
    methods = list(dict.fromkeys(frame["method"]))
    colors = method_colors(methods)
    return (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=alt.X("step:Q", title="hours ahead (recursive step)", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("mse:Q", title="MSE (normalised scale)"),
            color=alt.Color(
                "method:N",
                title="method",
                legend=alt.Legend(orient="bottom"),
                scale=alt.Scale(domain=methods, range=[colors[m] for m in methods]),
            ),
            tooltip=["method:N", "step:Q", alt.Tooltip("mse:Q", format=".4f", title="MSE")],
        )
        .properties(height=height)
    )


def evaluation_caption(evaluation: dict) -> str:
    """When and how the stored evaluation was made."""
    settings = evaluation.get("settings") or {}
    parts = [
        f"Evaluated {evaluation.get('evaluated_at', '?').replace('T', ' ')} UTC "
        f"in {evaluation.get('seconds', 0):.0f} s on data set {evaluation.get('dataset')!r}"
    ]
    if settings:
        parts.append(
            f"{settings.get('samples')} samples per window, {settings.get('steps')} recursive steps, "
            f"ARIMA {'included' if settings.get('include_arima') else 'left out'}, "
            f"LightGBM and PatchTST {'included' if settings.get('include_learned') else 'left out'}"
        )
        if settings.get("quick"):
            parts.append("quick: the test day of 50 fixed entities")
        # Evaluations stored before the setting existed forecast at the habitual cells.
        parts.append(f"at {LOCATION_TEXT[settings.get('location', 'habitual')]}")
    return "; ".join(parts) + "."


# --- the stored cell-level evaluation ------------------------------------------------------------------

CELL_COLUMNS = {
    "method": "method",
    "rmse_mb": "RMSE (MB)",
    "crps_mb": "CRPS (MB)",
    "cov90": "cov90",
    "brier_capacity": "Brier (capacity)",
    "brier_busy": "Brier (busy hour)",
    "crps_mb_median_over_cells": "CRPS median over cells (MB)",
}


def cell_metric_table(evaluation: dict) -> pd.DataFrame:
    """The pooled cell-level scores, one row per method (point forecasts have no coverage)."""
    rows = evaluation.get("rows") or []
    frame = pd.DataFrame([{key: row.get(key) for key in CELL_COLUMNS} for row in rows], columns=list(CELL_COLUMNS))
    return frame.rename(columns=CELL_COLUMNS)


def cell_crps_table(evaluation: dict) -> pd.DataFrame:
    """CRPS (MB) per scored cell (rows) and method (columns)."""
    rows = evaluation.get("per_cell") or []
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    order = list(dict.fromkeys(frame["cell"]))
    return frame.pivot(index="cell", columns="method", values="crps_mb").reindex(order)[
        list(dict.fromkeys(frame["method"]))
    ]


def cell_evaluation_caption(evaluation: dict) -> str:
    return (
        f"{evaluation.get('dataset')}: the {evaluation.get('cells')} busiest cells, test day from hour "
        f"{evaluation.get('start')}, {evaluation.get('samples')} paths, {evaluation.get('users_forecast')} users "
        f"forecast; direct model #{evaluation.get('direct_model_id') or '-'} on "
        f"{evaluation.get('cells_dataset') or '-'}; evaluated {evaluation.get('evaluated_at', '?')} "
        f"in {evaluation.get('seconds', 0):.0f} s."
    )
