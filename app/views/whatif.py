"""What-if page: from a user and an hour, change the environment (move the user to another cell, edit a
cell's POI counts, description or tile, change Eq. 9's a/b or the guidance) and compare the scenario's
forecast with the baseline made with the same seed. Scenarios are stored and reopened with
?scenario=ID (never recomputed); ?user=KEY&hour=H start the editor there; ?job=ID follows a what-if
job. Run queues a ``whatif`` job (app/jobs_ui.py) that `lsdm worker` runs (engine/whatif.py); the page
never loads the model. The logic lives in app/whatif_data.py.

Below it, at the cell level: a cell goes down, or an event brings extra users to it (a ``load.whatif`` job,
engine/load/whatif.py); the cell's and its neighbours' load and risk against the baseline, paired paths,
on a map and as the difference per hour. ?cell_scenario=RUN reopens one."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import streamlit as st

from app import forecast_data as fd
from app import jobs_ui
from app import whatif_data as wd
from app.common import (
    bump_revision,
    checked_number,
    database,
    field_error,
    hour_label_for,
    md_escape,
    page_header,
    query_int,
    query_str,
    revision,
    set_query,
)
from app.glossary import explain
from app.map_data import Basemap, land_use_legend
from app.user_data import cached_entity_keys
from engine.data.ingest_table import MAX_POI_COUNT
from engine.errors import InputError, plural
from engine.load.core import load_runs, read_load_run
from engine.requests import LoadWhatIfRequest, WhatIfRequest
from engine.whatif import CellEdit, check_tile_image, rename_scenario, validate_scenario

if TYPE_CHECKING:
    import pandas as pd
    from streamlit.delta_generator import DeltaGenerator

    from engine.jobs import JobView

info = jobs_ui.require_dataset()
url = database().url
noun = info.entity_kind
state = st.session_state
page_header(
    "What-if",
    "Change a user's environment and compare the forecast with the unchanged baseline "
    f"(same seed) · data set **{info.label}**",
)


def show_error(slot: DeltaGenerator, message: str | None) -> None:
    """A field's validation message, right under the field."""
    if message:
        slot.error(message, icon=":material/error:")


def user_series(key: str) -> wd.SeriesData:
    """The user's traffic and cells (the engine's location plans need them)."""
    return wd.cached_user_series(url, info.id, revision(), key)


def adopt_scenario(result: dict, context: wd.EditorContext, keys: list[str], hours: range) -> None:
    """Fill the editor from a stored scenario (once per linked id): request, location, a/b, guidance,
    and the edits of the cell the editor changes; edits of other cells are kept as they are."""
    values = wd.editor_values(result["params"], context.a, context.b)
    edits: dict[str, CellEdit] = dict(values.pop("edits"))
    if values.get("wi_user") not in set(keys) or values.get("wi_start") not in hours:
        st.warning(f"Scenario {result['scenario_id']} cannot be placed in the editor (unknown {noun} or hour).")
        return
    state.update(values)
    target = wd.target_cell(
        user_series(state["wi_user"]), state["wi_start"], state["wi_location"], state.get("wi_cell")
    )
    edit = edits.pop(target, CellEdit()) if target else CellEdit()
    state["wi_tile_mode"] = "cell" if edit.tile_from else "upload" if edit.tile_png else "keep"
    if edit.tile_from:
        state["wi_tile_from"] = edit.tile_from
    state["_wi_target_edit"] = (target, edit)
    state["_wi_extra_edits"] = edits
    state["wi_gen"] = state.get("wi_gen", 0) + 1  # fresh POI and description editors
    # The scenario's user and hour win over ?user=&hour= in the same link.
    fd.remember_link_value(state, "wi_user", query_str("user"))
    fd.remember_link_value(state, "wi_start", query_int("hour", None, hours.start, hours.stop - 1))


@st.cache_data(show_spinner=False, max_entries=4)
def light_basemap(url: str, dataset_id: int, rev: int) -> Basemap | None:
    """The data set's basemap, small: the What-if maps are 300-360 px high."""
    from app import load_common as ld

    base = ld.cached_basemap(url, dataset_id, rev)
    return base.light() if base is not None else None


def pick_from_map() -> None:
    """A click on a cell of the map moves the user there."""
    picked = wd.picked_cell(state["wi_map"].selection)
    if picked:
        state["wi_cell"], state["wi_location"] = picked, "cell"


def location_editor(cells: pd.DataFrame, user: str, start: int, slots: dict) -> tuple[str, str | None]:
    """Where the user is during the forecast; returns (mode, the cell whose environment is edited)."""
    labels = wd.cell_label(cells)
    mode = st.radio(
        "Location",
        wd.LOCATION_MODES,
        key="wi_location",
        format_func=wd.LOCATION_LABELS.get,
        horizontal=True,
        help="Habitual: the user's most frequent cell at each hour of the week "
        "(the baseline); stay: the last cell seen; move: one chosen cell.",
    )
    cell = st.selectbox(
        "Move to cell",
        list(labels),
        key="wi_cell",
        format_func=labels.get,
        disabled=mode != "cell",
        help="Or click a cell on the map.",
    )
    slots["location"] = st.empty()
    series = user_series(user)
    home = wd.start_cell(series, start, "habitual")
    target = wd.target_cell(series, start, mode, cell)
    base = light_basemap(url, info.id, revision())
    deck = wd.map_deck(cells, target, home, base)
    if deck is not None:
        st.pydeck_chart(deck, on_select=pick_from_map, selection_mode="single-object", key="wi_map", height=300)
        when = hour_label_for(info, start)
        st.markdown(
            land_use_legend(list(cells.dropna(subset=["lat", "lon"])["land_use"]))
            + f"<div><small>Ringed: dark, the user's habitual cell at {when} ({home or 'unknown'}); orange, "
            "the cell edited on the right. Click a cell to move there."
            + (f" {base.legend().capitalize()}." if base is not None else "")
            + "</small></div>",
            unsafe_allow_html=True,
        )
    return mode, target


def environment_editor(context: wd.EditorContext, cells: pd.DataFrame, target: str | None, slots: dict) -> dict:
    """POI counts, description and tile of the target cell; returns the editor's raw values."""
    gen = state.get("wi_gen", 0)
    row = context.cell_row.get(target) if target else None
    if row is None:
        st.info("The user's cell at the start hour is unknown: move the user to a cell to edit its environment.")
        return {
            "counts": [],
            "current_counts": [],
            "description": "",
            "current_description": "",
            "tile_mode": "keep",
            "tile_from": None,
            "tile_png": None,
        }
    use = cells.loc[cells["key"] == target, "land_use"].iloc[0]
    st.markdown(f"**Environment of cell {md_escape(target)}** ({md_escape(use)})")
    loaded_target, loaded = state.get("_wi_target_edit", (None, CellEdit()))
    loaded = loaded if loaded_target == target else CellEdit()
    current = [int(v) for v in context.poi[row]]
    frame = wd.poi_frame(context.categories, current, loaded.poi_counts or current)
    edited = st.data_editor(
        frame,
        key=f"wi_poi_{target}_{gen}",
        hide_index=True,
        width="stretch",
        height=260,
        disabled=["category", "now"],
        column_config={
            "category": "POI category",
            "now": st.column_config.NumberColumn("now", format="%d"),
            "count": st.column_config.NumberColumn(
                "scenario", step=1, format="%d", help=f"A whole number from 0 to {MAX_POI_COUNT:,}."
            ),
        },
    )
    slots["poi_counts"] = st.empty()
    counts = wd.edited_counts(edited)
    current_text = context.descriptions[row]
    description = st.text_area(
        "Description",
        value=loaded.description or current_text,
        height=110,
        key=f"wi_desc_{target}_{gen}",
        max_chars=600,
        help="Encoded by the CLIP text encoder. Leave it as it is to describe edited POI "
        "counts with the template describer.",
    )
    slots["description"] = st.empty()
    if (
        counts != current
        and description.strip() == current_text.strip()
        and all(isinstance(v, int) and v >= 0 for v in counts)
    ):
        st.caption(f"Edited counts will read: *{context.describe_counts(counts)}*")

    tile_mode = st.radio("Tile", wd.TILE_MODES, key="wi_tile_mode", format_func=wd.TILE_LABELS.get, horizontal=True)
    tiled = cells.loc[cells["has_tile"], "key"].tolist()
    labels = wd.cell_label(cells)
    tile_from, tile_png = None, None
    if tile_mode == "cell":
        tile_from = st.selectbox("Use the tile of", tiled, key="wi_tile_from", format_func=labels.get)
    elif tile_mode == "upload":
        upload = st.file_uploader("Tile image (PNG or JPEG)", type=["png", "jpg", "jpeg"], key="wi_upload")
        tile_png = upload.getvalue() if upload is not None else loaded.tile_png
        if upload is None and loaded.tile_png is not None:
            st.caption("Using the image stored with the linked scenario.")
    slots["tile"] = st.empty()
    images = st.columns(2)
    now = wd.cached_tile(url, info.id, target)
    if now is not None:
        images[0].image(now, caption=f"{target} now", width=140)
    new = wd.cached_tile(url, info.id, tile_from) if tile_from else tile_png
    if tile_png is not None and not tile_from:  # an upload: no preview unless readable (the check below says why)
        try:
            check_tile_image(tile_png, "tile")
        except InputError:
            new = None
    if new is not None:
        images[1].image(new, caption="scenario tile", width=140)
    return {
        "counts": counts,
        "current_counts": current,
        "description": description,
        "current_description": current_text,
        "tile_mode": tile_mode,
        "tile_from": tile_from,
        "tile_png": tile_png,
    }


def whatif_form(context: wd.EditorContext, model: fd.ModelInfo, keys: list[str]) -> None:
    """The request, the scenario editor and the Run button, which queues a what-if job; the followed job
    is shown under the button and, when done, its scenario becomes the shown one (?scenario=ID)."""
    hours = range(model.history, info.hours + 1)
    linked_user = query_str("user")
    fd.adopt_link_value(state, "wi_user", linked_user if linked_user in set(keys) else None)
    fd.adopt_link_value(state, "wi_start", query_int("hour", None, hours.start, hours.stop - 1))
    for key, value in (
        ("wi_user", keys[0]),
        ("wi_start", fd.default_start(info.hours, model.history)),
        ("wi_horizon", WhatIfRequest.default("horizon")),
        ("wi_samples", WhatIfRequest.default("samples")),
        ("wi_seed", WhatIfRequest.default("seed")),
        ("wi_location", "habitual"),
        ("wi_tile_mode", "keep"),
        ("wi_a", context.a),
        ("wi_b", context.b),
        ("wi_guidance", 1.0),
    ):
        state.setdefault(key, value)
    cells = wd.cached_cells(url, info.id, revision())
    slots: dict = {}

    with st.container(border=True):
        top = st.columns([2, 3, 1, 1, 1])
        user = top[0].selectbox(noun.capitalize(), keys, key="wi_user")
        start = top[1].select_slider(
            "Start (first forecast hour)",
            options=list(hours),
            key="wi_start",
            format_func=lambda h: hour_label_for(info, h),
            help=f"The model reads the {model.history} hours before the start.",
        )
        horizon = checked_number(top[2], "Horizon (h)", WhatIfRequest, "horizon", "wi_horizon")
        samples = checked_number(top[3], "Sample paths", WhatIfRequest, "samples", "wi_samples", explain("sample path"))
        seed = checked_number(
            top[4],
            "Seed",
            WhatIfRequest,
            "seed",
            "wi_seed",
            "Baseline and scenario draw the same noise from this seed.",
        )
        slots["request"] = st.empty()
        left, right = st.columns([2, 3])
        with left:
            mode, target = location_editor(cells, user, start, slots)
        with right:
            env = environment_editor(context, cells, target, slots)
        bottom = st.columns(4)
        a = bottom[0].slider(
            "a (image weight, Eq. 9)", 0.0, 1.0, step=0.05, key="wi_a", help=explain("a and b (Eq. 9)")
        )
        b = bottom[1].slider("b (text weight, Eq. 9)", 0.0, 1.0, step=0.05, key="wi_b", help=explain("a and b (Eq. 9)"))
        slots["weights"] = bottom[0].empty()
        guidance = bottom[2].slider(
            "Guidance",
            0.0,
            wd.MAX_GUIDANCE,
            step=0.1,
            key="wi_guidance",
            help=explain("guidance"),
        )
        slots["guidance"] = bottom[2].empty()
        name = bottom[3].text_input(
            "Name (optional)", key="wi_name", max_chars=200, placeholder="named after the change"
        )
        slots["name"] = bottom[3].empty()

        extra = state.get("_wi_extra_edits") or {}
        if extra:
            st.caption(f"Also kept from the linked scenario: edits of {', '.join(sorted(extra))}.")
        scenario = wd.build_scenario(
            wd.EditorInput(
                location=mode,
                cell=state.get("wi_cell"),
                target=target,
                current_counts=env["current_counts"],
                counts=env["counts"],
                current_description=env["current_description"],
                description=env["description"],
                tile_mode=env["tile_mode"],
                tile_from=env["tile_from"],
                tile_png=env["tile_png"],
                a=float(a),
                b=float(b),
                default_a=context.a,
                default_b=context.b,
                guidance=float(guidance),
                extra_edits=extra,
            )
        )
        request = WhatIfRequest(
            entity=user,
            start=int(start),
            entity_kind=noun,
            horizon=int(horizon),
            samples=int(samples),
            seed=int(seed),
            scenario=scenario.to_dict(),
            name=name.strip() or None,
        )
        error = None
        try:
            request.checked()
            validate_scenario(scenario, context)
        except InputError as problem:
            error = problem
            show_error(slots.get(wd.field_slot(problem.field), slots["request"]), wd.error_text(problem))
        set_query(user=user, hour=start)
        fd.remember_link_value(state, "wi_user", user)
        fd.remember_link_value(state, "wi_start", start)

        job_id = jobs_ui.followed("whatif", ("whatif",))
        clicked = st.button(
            "Run what-if",
            type="primary",
            icon=":material/play_arrow:",
            key="wi_run",
            disabled=error is not None,
            help="Correct the fields marked above first." if error is not None else None,
        )
        st.caption(
            f"Model {model.id} · {model.name} · {request.sampler_label} · baseline: habitual cells, the stored "
            f"environment, a={context.a:g}, b={context.b:g}, guidance 1 · a scenario changes the forecast "
            f"hours only: the hours before the start stay as recorded"
        )
        if clicked:
            if error is not None:
                st.error("Not run: correct the fields marked above.")
            else:
                job_id = jobs_ui.submit("whatif", request.to_params()) or job_id
        if job_id is not None:
            jobs_ui.follow(job_id, key="whatif", on_done=open_scenario)


def open_scenario(job: JobView) -> None:
    """A done what-if job: show its stored scenario (?scenario=ID); the editor holds it already."""
    scenario_id = job.ref_id("scenario")
    state["_wi_loaded"] = scenario_id
    set_query(scenario=scenario_id)
    st.toast(
        f"Scenario {scenario_id} stored ({(job.result or {}).get('seconds') or 0:.1f} s).", icon=":material/check:"
    )


def show_paired(paired: dict, hours: int) -> None:
    """Whether the change matters: the paired paths' difference over the horizon with its 90 % interval."""
    total = paired["total"]
    text = (
        f"Path by path (the same seed draws the same noise in both runs), the scenario changes the total over "
        f"{hours} h by **{total['mean'] / 1e6:+.3g} MB** on average; 90 % of the {paired['paths']} paths' "
        f"changes lie between {total['q05'] / 1e6:+.3g} and {total['q95'] / 1e6:+.3g} MB."
    )
    if paired["within_noise"]:
        st.info(
            text + " **Within noise**: that interval holds 0, so the change is not told apart from the paths' "
            "own spread (more sample paths narrow it).",
            icon=":material/balance:",
        )
    else:
        st.success(text + " **Beyond noise**: the whole interval is on one side of 0.", icon=":material/trending_up:")


def show_result(result: dict, context: wd.EditorContext | None) -> None:
    """A stored scenario: summary, totals, difference charts, radar, fans, edits, and its name."""
    scenario_id = result["scenario_id"]
    st.subheader(f"Scenario {scenario_id} · {md_escape(result['name'])}")
    weights = (context.a, context.b) if context is not None else None
    st.caption(
        wd.scenario_summary(result["params"], info, weights)
        + f" · stored runs: [baseline {result['baseline_run_id']}](/forecast?run={result['baseline_run_id']})"
        f", [scenario {result['scenario_run_id']}](/forecast?run={result['scenario_run_id']})"
    )
    for note in result["params"].get("notes") or []:
        st.info(note, icon=":material/info:")
    totals = wd.totals(result)
    hours = len(result["steps"])
    metrics = st.columns(3)
    summed = "Median forecast summed over services and hours; the bars below split the change by service."
    metrics[0].metric(f"Baseline, {hours} h", f"{totals['baseline']:.2f} MB", help=summed)
    metrics[1].metric(f"Scenario, {hours} h", f"{totals['scenario']:.2f} MB", help=summed)
    metrics[2].metric(
        "Change",
        f"{totals['change']:+.2f} MB",
        help=summed,
        delta=None if math.isnan(totals["percent"]) else f"{totals['percent']:+.1f} %",
    )
    paired = result["difference"].get("paired")
    if paired:
        show_paired(paired, hours)
    views = wd.cached_views(url, scenario_id, revision())
    left, right = st.columns([3, 2])
    left.vega_lite_chart(views.difference, theme=None, width="stretch")
    right.vega_lite_chart(views.mix, theme=None, width="stretch")
    right.caption("Each service's share of the median traffic over the horizon (scenario dashed).")
    left, right = st.columns(2)
    left.vega_lite_chart(views.steps, theme=None, width="stretch")
    right.vega_lite_chart(views.total, theme=None, width="stretch")
    right.caption("Total traffic per hour over the sample paths: median, 50 % and 90 % bands.")
    edits = wd.edits_frame(result["params"])
    if len(edits):
        st.markdown("**Edited cells** and the text their embedding was made from")
        st.dataframe(edits, hide_index=True, width="stretch")
    with st.form(f"wi_rename_{scenario_id}", border=False):
        columns = st.columns([3, 1])
        new_name = columns[0].text_input("Save as", value=result["name"], max_chars=200)
        if columns[1].form_submit_button("Save name", icon=":material/save:"):
            try:
                rename_scenario(database(), scenario_id, new_name)
            except InputError as error:
                st.error(str(error), icon=":material/error:")
            else:
                bump_revision()
                st.rerun()


def saved_section() -> None:
    """Every stored scenario of the data set, newest first; select one to reopen it."""
    st.subheader("Saved scenarios")
    table = wd.cached_scenarios(url, info, revision())
    if table.empty:
        st.info("No what-if scenarios yet: run one above.", icon=":material/alt_route:")
        return

    def open_selected() -> None:
        rows = state["wi_saved"].selection.rows
        if rows:
            st.query_params["scenario"] = str(int(table.iloc[rows[0]]["id"]))

    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="wi_saved",
        on_select=open_selected,
        selection_mode="single-row",
        column_config={
            "id": "Scenario",
            "created": st.column_config.DatetimeColumn("Created (UTC)", format="YYYY-MM-DD HH:mm"),
            "horizon": st.column_config.NumberColumn("Horizon", format="%d h"),
        },
    )
    st.caption("Select a row to open that scenario (its stored runs; nothing is recomputed).")


model = fd.cached_active_model(url, info.id, revision())
context = None
linked_id = query_int("scenario", None, 1, 2**63 - 1)
linked = None
if linked_id is not None:
    try:
        linked = wd.cached_scenario(url, linked_id, revision())
    except InputError as error:
        st.warning(f"Cannot open scenario {linked_id}: {wd.error_text(error)}.")
    if linked is not None and linked["dataset_id"] != info.id:
        st.warning(f"Scenario {linked_id} belongs to another data set.")
        linked = None

if model is None:
    st.info(
        "No forecasting model yet for this data set: run `lsdm train` or `lsdm assets install` "
        "(or train one on the **Models & evaluation** page).",
        icon=":material/model_training:",
    )
else:
    context = wd.cached_editor_context(url, info.id, model.id, revision())
    entity_keys = cached_entity_keys(url, info.id, revision())
    if not context.uses_environment:
        st.warning("The active model does not use the environment: scenarios will equal the baseline.")
    if linked is not None and state.get("_wi_loaded") != linked_id:
        adopt_scenario(linked, context, entity_keys, range(model.history, info.hours + 1))
        state["_wi_loaded"] = linked_id
    whatif_form(context, model, entity_keys)

shown_id = query_int("scenario", None, 1, 2**63 - 1)
if shown_id is not None and shown_id != linked_id:  # just run: read back what was stored
    linked = wd.cached_scenario(url, shown_id, revision())
if linked is not None:
    show_result(linked, context)
saved_section()


# --- the cell level: outages and events ----------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=16)
def stored_pair(url: str, run_id: int, revision: int) -> tuple[object, object]:
    scenario = read_load_run(database(), run_id)
    if scenario.baseline_id is None:
        raise InputError(f"load run {run_id} is not a cell scenario", field="cell_scenario")
    return read_load_run(database(), scenario.baseline_id), scenario


def cell_whatif_form(model: fd.ModelInfo, cell_keys: list[str], user_keys: list[str]) -> None:
    defaults = LoadWhatIfRequest.field_specs()
    for widget, name in (
        ("cw_what", "what"),
        ("cw_at", "at"),
        ("cw_duration", "duration"),
        ("cw_visitors", "visitors"),
        ("cw_neighbours", "neighbours"),
        ("cw_horizon", "horizon"),
        ("cw_samples", "samples"),
        ("cw_location", "location"),
        ("cw_seed", "seed"),
    ):
        state.setdefault(widget, defaults[name]["default"])
    state.setdefault("cw_start", fd.default_start(info.hours, model.history))
    with st.container(border=True):
        top = st.columns([2, 2, 3])
        cell = top[0].selectbox("Cell", cell_keys, key="cw_cell", index=None, placeholder="Choose a cell")
        what = top[1].radio(
            "What happens",
            LoadWhatIfRequest.choices("what"),
            key="cw_what",
            horizontal=True,
            format_func={"outage": "it goes down", "event": "an event"}.get,
        )
        start = top[2].select_slider(
            "Start (first forecast hour)",
            options=list(range(model.history, info.hours + 1)),
            key="cw_start",
            format_func=lambda h: hour_label_for(info, h),
        )
        middle = st.columns(5)
        labels = {
            "at": "From forecast hour",
            "duration": "For hours",
            "horizon": "Horizon (h)",
            "samples": "Sample paths",
            "neighbours": "Neighbours compared",
            "visitors": "Visitors",
            "seed": "Seed",
        }
        at, duration, horizon, samples, neighbours = (
            checked_number(middle[i], labels[name], LoadWhatIfRequest, name, f"cw_{name}")
            for i, name in enumerate(("at", "duration", "horizon", "samples", "neighbours"))
        )
        bottom = st.columns([2, 3, 2, 1])
        visitors = checked_number(
            bottom[0], "Visitors", LoadWhatIfRequest, "visitors", "cw_visitors", disabled=what != "event"
        )
        profile = bottom[1].selectbox(
            "Visitors behave like",
            user_keys,
            key="cw_profile",
            index=None,
            placeholder="the cell's most frequent user",
            disabled=what != "event",
        )
        location = bottom[2].selectbox("Where users will be", LoadWhatIfRequest.choices("location"), key="cw_location")
        seed = checked_number(bottom[3], "Seed", LoadWhatIfRequest, "seed", "cw_seed")
        row_slot = st.empty()
        request = LoadWhatIfRequest(
            cell=cell or "",
            start=int(start),
            what=what,
            at=int(at),
            duration=int(duration),
            visitors=int(visitors),
            profile=profile if what == "event" else None,
            neighbours=int(neighbours),
            horizon=int(horizon),
            samples=int(samples),
            location=location,
            seed=int(seed),
            model_id=model.id,
        )
        problems = request.validate()
        field_error(row_slot, problems, labels)
        others = {k: v for k, v in problems.items() if k not in labels and not (k == "cell" and not cell)}
        if others:
            st.error("; ".join(f"{name}: {text}" for name, text in others.items()), icon=":material/error:")
        job_id = jobs_ui.followed("cell_whatif", ("load.whatif",))
        if st.button(
            "Run the cell scenario",
            type="primary",
            icon=":material/play_arrow:",
            key="cw_run",
            disabled=bool(problems),
            help=None
            if not problems
            else "Choose a cell first."
            if not cell
            else "Correct the fields marked above first.",
        ):
            job_id = jobs_ui.submit("load.whatif", request.to_params()) or job_id
        st.caption(
            "The baseline and the scenario use the same users, places and seed: the difference, path by path, is "
            "the change alone. An outage re-homes the cell's users to the nearest working cell."
        )
        if job_id is not None:
            jobs_ui.follow(job_id, key="cell_whatif", on_done=open_cell_scenario)


def open_cell_scenario(job: JobView) -> None:
    run_id = job.ref_id("load_run")
    state["cw_shown"] = run_id
    set_query(cell_scenario=run_id)
    st.toast(f"Cell scenario {run_id} stored.", icon=":material/check:")


def show_cell_scenario(run_id: int) -> None:
    from app import load_common as ld
    from app import map_data as m

    try:
        baseline, scenario = stored_pair(url, run_id, revision())
    except InputError as error:
        st.warning(f"Cannot open cell scenario {run_id}: {md_escape(error)}.")
        return
    change = scenario.summary.get("change", {})
    what = (
        f"re-homed {plural(change.get('users', 0), 'user')} to {change.get('to')}"
        if scenario.kind == "outage"
        else f"{change.get('visitors')} visitors behaving like {change.get('profile')}"
    )
    st.markdown(
        f"**{md_escape(scenario.name)}** · {what} · baseline run {baseline.run_id}, scenario run {scenario.run_id}"
    )
    frame = ld.comparison_frame(baseline, scenario)
    st.altair_chart(ld.difference_chart(frame, baseline.cell_keys), theme=None, width="stretch")
    st.caption("Lines: the mean of the paired paths' difference; bands: its 90 % interval.")
    hours = list(frame.drop_duplicates("step")["label"])
    hour = st.select_slider(
        "Hour on the map", options=list(range(len(hours))), format_func=hours.__getitem__, key="cw_hour"
    )
    city = ld.cached_city(url, info.id, revision())
    risk = ld.risk_frames(scenario, city)
    view = m.initial_view(risk.bounds)
    base = light_basemap(url, info.id, revision())
    st.pydeck_chart(ld.risk_deck(risk.frames[hour], view, base), key="cw_map", height=360)
    st.markdown(
        ld.risk_legend(risk.risk_level)
        + " (the scenario's)"
        + (f"<div><small>{base.legend()}</small></div>" if base is not None else ""),
        unsafe_allow_html=True,
    )
    table = frame[frame["step"] == hour][
        ["cell", "baseline_mb", "scenario_mb", "diff_mean", "diff_q05", "diff_q95", "p_baseline", "p_scenario"]
    ]
    st.dataframe(table, hide_index=True, width="stretch")


st.divider()
st.subheader("A cell goes down, or an event")
if model is None:
    st.caption("Needs a forecasting model (above).")
else:
    cell_whatif_form(
        model, list(fd.cached_cells(url, info.id, revision())["key"]), cached_entity_keys(url, info.id, revision())
    )
    saved = [r for r in load_runs(database(), info.id, limit=50) if r["kind"] in ("outage", "event")]
    linked_cell = query_int("cell_scenario", None, 1, 2**63 - 1)
    shown = linked_cell if linked_cell is not None else state.get("cw_shown")
    if saved:
        names = {r["run_id"]: f"{r['run_id']} · {r['name']}" for r in saved}
        ids = list(names)
        if shown not in ids and shown is not None:
            ids = [shown, *ids]
            names[shown] = str(shown)
        shown = st.selectbox(
            "Saved cell scenarios",
            ids,
            index=ids.index(shown) if shown in ids else 0,
            format_func=names.get,
            key="cw_pick",
        )
    if shown is not None:
        show_cell_scenario(int(shown))
