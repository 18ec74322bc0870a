"""Forecast page: ask the active model for probabilistic forecasts of one or more users, watch it run,
read the fans, the service mix and the scores, export them, and reopen or compare stored runs.
Deep links: ?user=KEY[,KEY...]&hour=H&horizon=N, ?run=ID for a stored run (never recomputed), and
?job=ID for a forecast job still being followed.
The form queues a ``forecast`` job (app/jobs_ui.py) that `lsdm worker` runs (engine/forecast.py); the
page follows it and opens the stored run when it is done. The logic lives in app/forecast_data.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from app import forecast_data as fd
from app import jobs_ui
from app.common import database, md_escape, page_header, query_int, query_str, revision, set_query
from app.glossary import explain
from app.user_data import cached_entity_keys
from engine.requests import ForecastRequest

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

    from engine.jobs import JobView

info = jobs_ui.require_dataset()
url = database().url
noun = info.entity_kind
page_header("Forecast", f"Probabilistic forecasts of the coming hours per service (LSDM) · data set **{info.label}**")
state = st.session_state


def label(hour: int) -> str:
    return fd.start_label(info.time_origin, info.hours, hour)


def show_error(slot: DeltaGenerator, message: str | None) -> None:
    """A field's validation message, right under the field."""
    if message:
        slot.error(message, icon=":material/error:")


def forecast_form(model: fd.ModelInfo, keys: list[str]) -> None:
    """The request form and the Run button, which queues a forecast job; the followed job is shown under
    the button and, when done, its run becomes the shown run (?run=ID)."""
    linked = [k for k in (query_str("user") or "").split(",") if k]
    unknown = [k for k in linked if k not in set(keys)]
    if unknown:
        st.warning(f"Link names {noun}s not in this data set: {md_escape(', '.join(unknown))}.")
    linked = [k for k in linked if k in set(keys)][: fd.MAX_USERS]
    fd.adopt_link_value(state, "fc_users", linked or None)
    fd.adopt_link_value(state, "fc_start", query_int("hour", None, 0, info.hours))
    fd.adopt_link_value(state, "fc_horizon", query_int("horizon", None, 1, fd.MAX_HORIZON))
    state.setdefault("fc_users", keys[:1])
    state.setdefault("fc_start", fd.default_start(info.hours, model.history))
    defaults = ForecastRequest.field_specs()
    for key, name in (
        ("fc_horizon", "horizon"),
        ("fc_samples", "samples"),
        ("fc_sampler", "sampler"),
        ("fc_location", "location"),
        ("fc_guidance", "guidance"),
        ("fc_seed", "seed"),
    ):
        state.setdefault(key, defaults[name]["default"])
    state.setdefault("fc_steps", min(defaults["sampler_steps"]["default"], model.diffusion_steps))
    state.setdefault("fc_paired", defaults["noise"]["default"] == "antithetic")

    with st.container(border=True):
        top = st.columns([3, 2])
        users = top[0].multiselect(
            f"{noun.capitalize()}s",
            keys,
            key="fc_users",
            max_selections=fd.MAX_USERS,
            help=f"Up to {fd.MAX_USERS}; their sample paths are denoised in one batch.",
        )
        users_slot = top[0].empty()
        start = top[1].select_slider(
            "Start (first forecast hour)",
            options=list(range(info.hours + 1)),
            key="fc_start",
            format_func=label,
            help=f"The model reads the {model.history} hours before the start; truth is overlaid for hours "
            f"inside the data.",
        )
        start_slot = top[1].empty()
        middle = st.columns(4)
        # No min/max on the number fields: the browser would keep an out-of-range entry red and send the old
        # value (the run then went with it, silently); the request's check says what is wrong under the field.
        horizon = middle[0].number_input(
            "Horizon (hours)",
            step=1,
            key="fc_horizon",
            help=f"1 to {fd.MAX_HORIZON}. Hours forecast recursively: each sample path feeds back its own draws.",
        )
        samples = middle[1].number_input(
            "Sample paths",
            step=1,
            key="fc_samples",
            help=f"1 to {fd.MAX_SAMPLES}. More paths: smoother quantiles, longer run.",
        )
        sampler = middle[2].radio(
            "Sampler",
            fd.SAMPLERS,
            key="fc_sampler",
            horizontal=True,
            help=explain("sampler"),
        )
        steps = middle[3].number_input(
            "DDIM steps",
            step=1,
            key="fc_steps",
            disabled=sampler == "ddpm",
            help=f"1 to {model.diffusion_steps} (the model's diffusion steps). " + explain("DDIM steps"),
        )
        sampler_slot = st.empty()
        bottom = st.columns([4, 3, 3, 2])
        location = bottom[0].radio(
            "Location scenario",
            fd.LOCATION_MODES,
            key="fc_location",
            horizontal=True,
            format_func=fd.LOCATION_LABELS.get,
            help="; ".join(f"{k}: {v}" for k, v in fd.LOCATION_HELP.items()),
        )
        cells = fd.cached_cells(url, info.id, revision())
        names = dict(zip(cells["key"], cells["name"] + " (" + cells["land_use"].fillna("unknown") + ")", strict=True))
        cell = bottom[1].selectbox(
            "Cell",
            list(names),
            key="fc_cell",
            disabled=location != "cells",
            format_func=lambda k: f"{k} · {names[k]}",
            help="Used by the `cell` scenario.",
        )
        location_slot = bottom[0].empty()
        guidance = bottom[2].slider(
            "Guidance",
            0.0,
            fd.MAX_GUIDANCE,
            step=0.1,
            key="fc_guidance",
            help=explain("guidance"),
        )
        low, high = ForecastRequest.bounds("seed")
        seed = bottom[3].number_input("Seed", step=1, key="fc_seed", help=f"{low} to {high}. " + explain("seed"))
        paired = bottom[3].checkbox(
            "Paired paths",
            key="fc_paired",
            help=explain("paired paths"),
        )

        request = ForecastRequest(
            entities=tuple(users),
            start=int(start),
            entity_kind=noun,
            horizon=int(horizon),
            samples=int(samples),
            sampler=sampler,
            sampler_steps=int(steps),
            location=location,
            cells=(cell,) if location == "cells" and cell else (),
            guidance=float(guidance),
            seed=int(seed),
            noise="antithetic" if paired else "independent",
            model_id=model.id,
        )
        errors = fd.request_problems(
            request,
            history=model.history,
            hours=info.hours,
            origin=info.time_origin,
            diffusion_steps=model.diffusion_steps,
        )
        show_error(users_slot, errors.get("entities"))
        show_error(start_slot, errors.get("start"))
        show_error(sampler_slot, errors.get("sampler") or errors.get("sampler_steps"))
        show_error(location_slot, errors.get("location") or errors.get("cells"))
        for name in ("horizon", "samples", "guidance", "seed", "noise"):
            show_error(
                sampler_slot if name != "guidance" else location_slot,
                f"{name.capitalize()}: {errors[name]}" if name in errors else None,
            )
        set_query(user=",".join(users) or None, hour=start, horizon=horizon)
        for key, value in (("fc_users", list(users) or None), ("fc_start", start), ("fc_horizon", horizon)):
            fd.remember_link_value(state, key, value)

        job_id = jobs_ui.followed("forecast", ("forecast",))
        clicked = st.button(
            "Run forecast",
            type="primary",
            icon=":material/play_arrow:",
            key="fc_run",
            disabled=bool(errors),
            help="Correct the fields marked above first." if errors else None,
        )
        st.caption(f"Model {model.id} · {md_escape(model.name)} · reads {model.history} h of history")
        if clicked:
            if errors:
                st.error("Not run: correct the fields marked above.")
            else:
                job_id = jobs_ui.submit("forecast", request.to_params()) or job_id
        if job_id is not None:
            jobs_ui.follow(job_id, key="forecast", on_done=open_run)


def open_in_form(run_id: int | None) -> None:
    """A run opened (from the history, a link or a finished job) fills the form with its own settings once,
    so the form never shows another user's; the user's later edits are kept."""
    if run_id is None or state.get("_fc_opened_run") == run_id:
        return
    state["_fc_opened_run"] = run_id
    run = fd.cached_run(url, info.id, revision(), run_id)
    if run is None:
        return
    values = fd.form_values(run.params)
    state.update(values)
    for key in ("fc_users", "fc_start", "fc_horizon"):  # the link mirrors them: keep the run's, not the old link's
        fd.remember_link_value(state, key, values[key] or None)
    set_query(user=",".join(values["fc_users"]) or None, hour=values["fc_start"], horizon=values["fc_horizon"])


def open_run(job: JobView) -> None:
    """A done forecast job: show its stored run (?run=ID)."""
    run_id = job.ref_id("forecast_run")
    set_query(run=run_id)
    st.toast(f"Run {run_id} stored ({(job.result or {}).get('seconds') or 0:.1f} s).", icon=":material/check:")


def show_run(run: fd.StoredRun) -> None:
    """A stored run: parameters, total fan and service-mix radar, scores, per-service fans, exports."""
    st.subheader(fd.run_title(run, info.time_origin, info.hours))
    with st.expander("Parameters", icon=":material/tune:"):
        st.dataframe(fd.params_frame(run, info.time_origin, info.hours), hide_index=True, width="stretch")
        st.button(
            "Use these settings in the form",
            key="fc_reuse",
            on_click=state.update,
            args=(fd.form_values(run.params),),
            icon=":material/restart_alt:",
        )
    names = run.entity_names
    if run.every:  # --entity all: per-entity results are Parquet parts on disk; the data set's total is here
        folder = str(run.every.get("parts", ""))
        shown = f"`{folder}`" if "`" not in folder else md_escape(folder)  # a code span shows it literally
        st.info(
            f"Run {run.id} forecast every entity of the data set ({run.every.get('entities', 0):,}) on "
            f"{md_escape(str(run.every.get('executor', 'local')))}: {run.every.get('rows', 0):,} rows of per-hour "
            f"quantiles are in the Parquet parts in {shown}. "
            "The data set's total per hour, summed path by path:",
            icon=":material/groups:",
        )
        st.dataframe(fd.every_total_frame(run), hide_index=True, width="stretch")
        return
    if not names:
        st.warning(f"Run {run.id} holds no forecasts.")
        return
    # One picker per run: another run has other users, and its picker starts at the first of them.
    shown = st.selectbox(noun.capitalize(), names, key=f"fc_entity_{run.id}") if len(names) > 1 else names[0]

    views = fd.cached_run_views(url, info.id, revision(), run.id, shown, info.services, info.time_origin, info.hours)
    left, right = st.columns([3, 2])
    left.vega_lite_chart(views.total, theme=None, width="stretch")
    right.vega_lite_chart(views.mix, theme=None, width="stretch")
    right.caption(
        f"Service mix over {views.mix_hours} hours: each service's share of the traffic"
        + (", forecast vs truth." if views.mix_has_truth else " (no truth: beyond the data).")
    )
    metrics = fd.cached_metrics(url, info.id, revision(), run.id)
    if len(metrics):
        st.markdown("**Scores** over the hours with known truth")
        st.dataframe(
            metrics,
            hide_index=True,
            width="stretch",
            column_config={
                "entity": noun,
                "hours": "hours",
                "mse": st.column_config.NumberColumn("MSE", format="%.4f"),
                "rmse": st.column_config.NumberColumn("RMSE", format="%.4f", help=explain("RMSE")),
                "mae": st.column_config.NumberColumn("MAE", format="%.4f"),
                "cs": st.column_config.NumberColumn("cosine", format="%.3f", help=explain("cosine")),
                "r2": st.column_config.NumberColumn("R²", format="%.3f", help=explain("R²")),
                "crps": st.column_config.NumberColumn("CRPS", format="%.4f", help=explain("CRPS")),
                "cov50": st.column_config.NumberColumn("50% coverage", format="%.2f", help=explain("coverage")),
                "cov90": st.column_config.NumberColumn("90% coverage", format="%.2f", help=explain("coverage")),
                "mae_mb": st.column_config.NumberColumn(
                    "MAE (MB)", format="%.3f", help="Mean absolute error of the median forecast, in MB."
                ),
            },
        )
        st.caption(
            "MSE to CRPS on the model's normalised scale (the paper's tables; point scores of the sample "
            "mean); coverage: share of true values inside the 50% / 90% bands; MAE (MB): of the median "
            "forecast, in megabytes."
        )

    st.markdown("**Per service** (MB per hour: median, 50% and 90% bands, truth as dots)")
    for row in range(0, len(views.fans), 3):
        for column, spec in zip(st.columns(3), views.fans[row : row + 3], strict=False):
            column.vega_lite_chart(spec, theme=None, width="stretch")

    csv, parquet = fd.cached_exports(url, info.id, revision(), run.id, info.services, info.time_origin)
    buttons = st.columns([1, 1, 4])
    buttons[0].download_button(
        "CSV", csv, file_name=f"forecast-run-{run.id}.csv", mime="text/csv", icon=":material/download:", key="fc_csv"
    )
    buttons[1].download_button(
        "Parquet",
        parquet,
        file_name=f"forecast-run-{run.id}.parquet",
        mime="application/vnd.apache.parquet",
        icon=":material/download:",
        key="fc_parquet",
    )
    buttons[2].caption("One row per user, hour and service: mean, median, 5/25/75/95 % quantiles and truth, in bytes.")


def history_section() -> None:
    """Every stored run of the data set, newest first; pick one to reopen it, or two to compare."""
    st.subheader("Run history")
    history = fd.cached_history(url, info.id, revision(), info.time_origin, info.hours)
    if history.empty:
        st.info("No forecast runs yet for this data set.", icon=":material/history:")
        return
    present = [kind for kind in fd.HISTORY_KINDS if kind in set(history["kind"])]
    kinds = st.pills(
        "Kinds of run", present, selection_mode="multi", default=present, key="fc_history_kinds",
        help="What-if runs are stored in pairs: the baseline and the scenario (the What-if page shows them "
        "side by side).",
    )  # fmt: skip
    history = history[history["kind"].isin(kinds or [])].reset_index(drop=True)
    if history.empty:
        st.caption("No run of the chosen kinds.")
        return

    def open_selected() -> None:
        rows = state["fc_history"].selection.rows
        if rows:
            st.query_params["run"] = str(int(history.iloc[rows[0]]["run"]))

    st.dataframe(
        history,
        hide_index=True,
        width="stretch",
        key="fc_history",
        on_select=open_selected,
        selection_mode="single-row",
        column_config={
            "run": "Run",
            "kind": "Kind",
            "created": st.column_config.DatetimeColumn("Created (UTC)", format="YYYY-MM-DD HH:mm"),
            "start": st.column_config.NumberColumn("Start hour"),
            "start_label": "Start",
            "horizon": st.column_config.NumberColumn("Horizon", format="%d h"),
            "entity": "Users",
            "users": "Count",
            "samples": "Samples",
            "sampler": "Sampler",
            "location": "Location",
            "guidance": "Guidance",
            "seed": "Seed",
            "model": "Model",
            "seconds": st.column_config.NumberColumn("Seconds", format="%.1f"),
        },
    )
    st.caption("Select a row to open that run above (its stored result; nothing is recomputed).")

    titles = {
        int(row.run): f"Run {row.run} · {row.kind} · {row.entity} · {row.start_label} · {row.horizon} h · "
        f"seed {row.seed} · {row.created:%d %b %H:%M}"
        for row in history.itertuples()
    }
    pair = st.multiselect("Compare two runs", list(titles), format_func=titles.get, max_selections=2, key="fc_compare")
    if len(pair) < 2:
        return
    view = st.radio("Show", ["Total traffic", "Per-service median"], horizontal=True, key="fc_compare_view")
    runs = [fd.cached_run(url, info.id, revision(), run_id) for run_id in pair]
    if any(run is None for run in runs):
        st.warning("One of these runs is no longer stored.")
        return
    shared = fd.common_entity(*runs)
    names = [shared or run.entity_names[0] for run in runs]
    kind = "total" if view == "Total traffic" else "median"
    top = fd.compare_y_max([run.entity(name) for run, name in zip(runs, names, strict=True)], kind, info.services)
    for column, run, name in zip(st.columns(2), runs, names, strict=False):
        with column:
            st.markdown(
                f"**{fd.run_title(run, info.time_origin, info.hours)}**  \n"
                f"{run.request.sampler_label} · {run.request.samples} "
                f"{'paired ' if run.request.antithetic else ''}paths · "
                f"{fd.location_label(run.request)} · guidance {run.request.guidance} · "
                f"seed {run.request.seed} · model {run.request.model_id}"
            )
            spec = fd.cached_compare_view(
                url, info.id, revision(), run.id, name, kind, info.services, info.time_origin, top
            )
            st.vega_lite_chart(spec, theme=None, width="stretch")


model = fd.cached_active_model(url, info.id, revision())
if model is None:
    st.info(
        "No forecasting model yet for this data set: run `lsdm train` or `lsdm assets install` "
        "(or train one on the **Models & evaluation** page).",
        icon=":material/model_training:",
    )
else:
    open_in_form(query_int("run", None, 1, 2**63 - 1))
    forecast_form(model, cached_entity_keys(url, info.id, revision()))

shown_id = query_int("run", None, 1, 2**63 - 1)
if shown_id is not None:
    shown_run = fd.cached_run(url, info.id, revision(), shown_id)
    if shown_run is None:
        st.warning(f"No forecast run {shown_id} in data set **{info.label}**.")
    else:
        show_run(shown_run)
history_section()
