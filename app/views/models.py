"""Models & evaluation: the registered forecasters and encoders of the active data set, which one is
active, their loss curves, training a new one and evaluating one (``train`` and ``evaluate`` jobs that
`lsdm worker` runs; the page follows them), and the stored evaluation (Tables III/IV, per-service R²,
error by horizon). Links: ?model=ID selects a forecaster; ?job=ID follows a training or evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from app import common, jobs_ui
from app import models_data as md
from app.glossary import explain
from engine.evaluation.evaluate import COMPARISON_MODELS, LOCATION_TEXT
from engine.model.config import CONFIGS
from engine.requests import EvaluateRequest, TrainRequest

if TYPE_CHECKING:
    from engine.jobs import JobView

LEVEL_TEXT = {
    "user": "each user's next hour (the paper's tables)",
    "cell": "each cell's load, summed from the users (minutes more: trains a cell model once)",
}
common.page_header("Models & evaluation", "Forecasters and environment encoders of the active data set.")
info = jobs_ui.require_dataset()
db = common.database()
models = md.cached_models(db.url, info.id, common.revision())
forecasters = [m for m in models if m.kind == "lsdm"]


def show_registry() -> None:
    st.subheader("Registered models")
    if not models:
        st.info(
            "No models yet for this data set: train one below, or run `lsdm env build` and `lsdm train`.",
            icon=":material/model_training:",
        )
        return
    st.dataframe(
        md.model_table(models),
        hide_index=True,
        width="stretch",
        column_config={
            "active": st.column_config.CheckboxColumn("active"),
            "best val loss": st.column_config.NumberColumn(format="%.4f"),
            "test R²": st.column_config.NumberColumn(format="%.4f"),
            "retrieval top-1": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def pick_forecaster() -> md.ModelInfo | None:
    """The forecaster of ?model=ID, else the active one, else the newest."""
    if not forecasters:
        return None
    by_id = {m.id: m for m in forecasters}
    wanted = common.query_int("model", None, 1, 2**31 - 1)
    if wanted is not None and wanted not in by_id:
        st.warning(f"Link parameter `model={wanted}` is not a forecaster of this data set; showing the active one.")
    default = by_id.get(wanted) or next((m for m in forecasters if m.active), forecasters[0])
    if st.session_state.get("model_pick") not in by_id:
        st.session_state["model_pick"] = default.id  # first visit, or the picked model is gone
    chosen = st.selectbox("Forecaster", list(by_id), format_func=lambda i: by_id[i].label, key="model_pick")
    common.set_query(model=chosen)
    return by_id[chosen]


def show_forecaster(model: md.ModelInfo) -> None:
    left, right = st.columns([1, 2])
    with left:
        st.metric(
            "Best validation loss",
            f"{model.metrics['best_val_loss']:.4f}" if model.metrics.get("best_val_loss") is not None else "—",
        )
        st.metric(
            "Epochs", model.metrics.get("epochs_run", "—"), help=f"stopped by {model.metrics.get('stopped_by', '?')}"
        )
        st.metric(
            "Training time",
            f"{model.metrics.get('train_seconds', 0):.0f} s",
            help=f"on {model.metrics.get('device', '?')}",
        )
        if model.active:
            st.success("Active: forecasts use this model.", icon=":material/check_circle:")
        elif st.button("Make active", key="activate", type="primary"):
            md.activate_model(db, model.id)
            common.bump_revision()
            st.rerun()
        with st.expander("Configuration"):
            st.caption(md.config_summary(model))
            st.json(model.config, expanded=False)
    with right:
        if model.history:
            st.altair_chart(md.loss_curve(model.history), theme=None, width="stretch")
        else:
            st.caption("No loss curve recorded for this model.")


def show_evaluation(model: md.ModelInfo) -> None:
    st.subheader(f"Evaluation of model #{model.id}")
    evaluation = model.evaluation
    if not evaluation:
        st.info(
            f"No evaluation yet for model #{model.id}. Run one below (minutes), or on the command line: "
            f"`{md.EVALUATE_COMMAND.format(id=model.id)}`.",
            icon=":material/analytics:",
        )
        return
    st.caption(md.evaluation_caption(evaluation))
    floor = evaluation.get("seasonal_floor") or {}
    if floor.get("clears") is False:  # evaluations stored before the floor have none
        st.warning(
            f"LSDM does not clear the seasonal floor on this data (RMSE {floor['rmse']:.4f} by {floor['rmse_method']}, "
            f"CRPS {floor['crps']:.4f} by {floor['crps_method']}): the seasonal mean is the better forecast here.",
            icon=":material/warning:",
        )
    gains = [
        (key, label, help_text)
        for key, label, help_text in (
            (
                "condition_gain",
                "R² gain from the environment condition",
                "LSDM vs the same architecture trained without condition (lsdm-no-condition), on the test day",
            ),
            (
                "environment_gain",
                "R² gain from the user's own cells",
                "The same model given each user's own cells vs another user's whole location history (shuffled "
                "environment, a permutation test): what the model takes from where the user actually is, "
                "without a second training run in the comparison",
            ),
        )
        if evaluation.get(f"{key}_r2_percent") is not None
    ]  # evaluations stored before a measure lack it
    for column, (key, label, help_text) in zip(st.columns(len(gains)) if gains else [], gains, strict=True):
        interval = evaluation.get(f"{key}_interval")
        spread = (
            f"95 % interval over users: {interval['low']:+.2f} to {interval['high']:+.2f} %" if interval else None
        )  # evaluations stored before the interval existed have none
        column.metric(
            label,
            f"{evaluation[f'{key}_r2_percent']:+.2f} %",
            delta=spread,
            delta_color="off",
            delta_arrow="off",
            help=help_text + "; the interval comes from resampling the users (paired bootstrap, 1,000 resamples)",
        )
    terms = {"RMSE": "RMSE", "MAE": "MAE", "CS": "cosine", "R²": "R²", "CRPS": "CRPS", "cov50": "coverage"}
    number = {
        column: st.column_config.NumberColumn(
            format="%.4f", help=explain(terms.get(column, "coverage" if column == "cov90" else "normalised scale"))
        )
        for column in ("MSE", "RMSE", "MAE", "CS", "R²", "CRPS", "cov50", "cov90")
    }
    st.markdown("**Table III: methods compared** (one-step forecasts of the test day, normalised scale)")
    st.dataframe(md.metric_table(evaluation.get("rows", [])), hide_index=True, width="stretch", column_config=number)
    st.markdown("**Table IV: ablations** (`shuffled-environment`: this model, each user given another user's cells)")
    st.dataframe(md.metric_table(evaluation.get("table4", [])), hide_index=True, width="stretch", column_config=number)
    with st.expander("The same metrics in bytes"):
        st.dataframe(md.metric_table(evaluation.get("bytes_rows", [])), hide_index=True, width="stretch")
    fracast = evaluation.get("fracast_subset")
    if fracast:
        with st.expander(f"fracast (pretrained, zero-shot) on the test day of {fracast['entities']} entities"):
            st.caption(
                f"{fracast['windows']:,} windows; every method scored again on these windows only "
                f"(fracast took {fracast['seconds']:.0f} s)."
            )
            st.dataframe(md.metric_table(fracast["rows"]), hide_index=True, width="stretch", column_config=number)
    left, right = st.columns(2)
    with left:
        st.markdown("**R² per service**")
        available = list(evaluation.get("per_service_r2") or {})
        chosen = st.multiselect("Methods", available, default=md.default_radar_methods(evaluation), key="radar_methods")
        if chosen:
            st.altair_chart(md.r2_radar(evaluation, chosen, info.services), theme=None, width="stretch")
            st.caption("R² below 0 (worse than the test day's mean) is drawn at the centre; the table has the values.")
        with st.expander("Per-service R² table"):
            st.dataframe(md.per_service_table(evaluation), width="stretch")
    with right:
        st.markdown("**Error by horizon**")
        if md.horizon_frame(evaluation).empty:
            st.caption("No recursive paths in this evaluation.")
        else:
            st.altair_chart(md.horizon_chart(evaluation), theme=None, width="stretch")
    for note in evaluation.get("notes", []):
        st.caption(note)


def show_cell_evaluation(model: md.ModelInfo) -> None:
    """The stored cell-level evaluation, when there is one (`lsdm evaluate --level cell`)."""
    evaluation = model.cell_evaluation
    if not evaluation:
        return
    st.markdown(
        "**Cell level: each cell's load on the test day** (bottom-up: the users' paths summed per cell, as a "
        "load run does; direct: the same configuration trained on the cells' summed traffic)"
    )
    st.caption(md.cell_evaluation_caption(evaluation))
    number = {label: st.column_config.NumberColumn(format="%.4f") for label in md.CELL_COLUMNS.values()}
    st.dataframe(md.cell_metric_table(evaluation), hide_index=True, width="stretch", column_config=number)
    with st.expander("CRPS per cell (MB)"):
        st.dataframe(md.cell_crps_table(evaluation), width="stretch")
    for note in evaluation.get("notes", []):
        st.caption(note)


def evaluation_form(model: md.ModelInfo) -> None:
    """Queue an ``evaluate`` job; the page follows it and shows the stored evaluation when it is done."""
    with st.form("evaluate", enter_to_submit=False):
        st.markdown(f"**Run an evaluation of model #{model.id}** (a job for the worker; minutes)")
        c1, c2, c3, c4 = st.columns(4)
        spec = EvaluateRequest.field_specs()
        samples = c1.number_input(
            "Samples per window",
            *EvaluateRequest.bounds("samples"),
            spec["samples"]["default"],
            key="eval_samples",
            help="Their mean is the point forecast: fewer samples, noisier means, lower R²",
        )
        steps = c2.number_input(
            "Recursive steps", *EvaluateRequest.bounds("steps"), spec["steps"]["default"], key="eval_steps"
        )
        path_users = c3.number_input(
            "Entities for the recursive paths",
            *EvaluateRequest.bounds("path_users"),
            spec["path_users"]["default"],
            key="eval_users",
        )
        path_samples = c4.number_input(
            "Paths per entity",
            *EvaluateRequest.bounds("path_samples"),
            spec["path_samples"]["default"],
            key="eval_path_samples",
        )
        location = st.radio(
            "Where users are at the forecast hours",
            EvaluateRequest.choices("location"),
            horizontal=True,
            key="eval_location",
            format_func=LOCATION_TEXT.get,
        )
        quick = st.checkbox(
            "Quick (a few minutes)",
            value=spec["quick"]["default"],
            key="eval_quick",
            help=spec["quick"]["help"].capitalize() + ". The other settings below are then ignored.",
        )
        arima = st.checkbox("Include ARIMA (about 2 minutes)", value=spec["include_arima"]["default"], key="eval_arima")
        learned = st.checkbox(
            "Include LightGBM and PatchTST (fitted first, a few minutes each)",
            value=spec["include_learned"]["default"],
            key="eval_learned",
            help="The strongest general-purpose forecasters: a global gradient-boosted model on lag, profile, calendar "
            "and environment features, and a patch transformer, both fitted on the same training windows.",
        )
        fracast_entities = st.number_input(
            "fracast: entities scored (0: left out)",
            *EvaluateRequest.bounds("fracast_entities"),
            spec["fracast_entities"]["default"],
            key="eval_fracast",
            help="A small pretrained time-series model, zero-shot. It costs about 0.1 s per entity, service and hour "
            "on 2 cores, so it is scored on the test day of this many entities, beside every other method on the same "
            "hours.",
        )
        train_missing = st.checkbox(
            "Train missing comparison models (minutes each)",
            value=spec["train_missing"]["default"],
            key="eval_train",
            help=", ".join(COMPARISON_MODELS),
        )
        level_column, cells_column = st.columns([3, 1])
        level = level_column.radio(
            "Level",
            EvaluateRequest.choices("level"),
            horizontal=True,
            key="eval_level",
            format_func=LEVEL_TEXT.get,
            help=spec["level"]["help"],
        )
        cells = cells_column.number_input(
            "Cells (cell level)",
            *EvaluateRequest.bounds("cells"),
            spec["cells"]["default"],
            key="eval_cells",
            help="The busiest cells are scored; the paths per entity are each user's paths",
        )
        submitted = st.form_submit_button("Run evaluation", key="eval_submit")
    job_id = jobs_ui.followed("evaluate", ("evaluate",))
    if submitted:
        request = EvaluateRequest(
            model_id=model.id,
            samples=int(samples),
            steps=int(steps),
            path_users=int(path_users),
            path_samples=int(path_samples),
            location=location,
            include_arima=arima,
            include_learned=learned,
            fracast_entities=int(fracast_entities),
            quick=quick,
            train_missing=train_missing,
            level=level,
            cells=int(cells),
        )
        job_id = jobs_ui.submit("evaluate", request.to_params()) or job_id
    if job_id is not None:
        jobs_ui.follow(job_id, key="evaluate", on_done=evaluated)


def evaluated(job: JobView) -> None:
    """A done evaluation (the page above was drawn from the fresh data already)."""
    st.success(
        f"Evaluated model #{job.ref_id('evaluation')} in {job.seconds or 0:.0f} s.", icon=":material/check_circle:"
    )


def training_form() -> None:
    """Queue a ``train`` job; the page follows it (progress, the loss curve so far) and selects the new
    model when it is done."""
    st.subheader("Train a new forecaster")
    st.caption(
        f"On data set {info.name!r}, by the worker: you may leave the page meanwhile (the **Jobs** page "
        "follows it too)."
    )
    with st.form("train", enter_to_submit=False):
        c1, c2, c3, c4 = st.columns(4)
        config = c1.selectbox(
            "Configuration",
            list(CONFIGS),
            key="train_config",
            index=list(CONFIGS).index(TrainRequest.default("config")),
            help="The paper's ablations are configurations; 'tiny' trains in seconds.",
        )
        epochs = c2.number_input(
            "Epochs",
            *TrainRequest.bounds("epochs"),
            value=None,
            placeholder="configuration default",
            key="train_epochs",
        )
        seed = c3.number_input(
            "Seed", *TrainRequest.bounds("seed"), value=None, placeholder="configuration default", key="train_seed"
        )
        minutes = c4.number_input(
            "Max minutes",
            *TrainRequest.bounds("max_minutes"),
            value=None,
            step=1.0,
            placeholder="no limit",
            key="train_minutes",
            help="Stop after the epoch that passes this budget; empty = no limit.",
        )
        split = st.radio(
            "Split",
            TrainRequest.choices("split"),
            horizontal=True,
            key="train_split",
            help=TrainRequest.field_specs()["split"]["help"],
        )
        activate = st.checkbox("Make it the active model", value=TrainRequest.default("activate"), key="train_activate")
        submitted = st.form_submit_button("Train", type="primary", key="train_submit")
    job_id = jobs_ui.followed("train", ("train",))
    if submitted:
        request = TrainRequest(
            config=config,
            epochs=None if epochs is None else int(epochs),
            seed=None if seed is None else int(seed),
            max_minutes=None if minutes is None else float(minutes),
            split=split,
            activate=activate,
        )
        job_id = jobs_ui.submit("train", request.to_params()) or job_id
    if job_id is not None:
        jobs_ui.follow(job_id, key="train", on_done=trained, live=loss_so_far)


def loss_so_far(job: JobView) -> None:
    """The running training's loss curve, epoch by epoch (the job reports its history as it goes)."""
    history = (job.result or {}).get("history") or []
    if history:
        st.altair_chart(md.loss_curve(history, height=200), width="stretch")


def trained(job: JobView) -> None:
    """A done training: select the new model (on the next run: its picker is drawn already) and say so."""
    result = job.result or {}
    st.session_state["trained"] = (job.ref_id("model"), result.get("stopped_by", "?"), result.get("train_seconds", 0))
    st.session_state["pending_pick"] = job.ref_id("model")
    st.rerun()


if "pending_pick" in st.session_state:
    st.session_state["model_pick"] = st.session_state.pop("pending_pick")
    common.set_query(model=st.session_state["model_pick"])
show_registry()
if "trained" in st.session_state:
    model_id, stopped_by, seconds = st.session_state.pop("trained")
    st.success(f"Trained model #{model_id} in {seconds:.0f} s (stopped by {stopped_by}).")
st.divider()
selected = pick_forecaster()
if selected is not None:
    show_forecaster(selected)
    st.divider()
    show_evaluation(selected)
    show_cell_evaluation(selected)
    evaluation_form(selected)
st.divider()
training_form()
