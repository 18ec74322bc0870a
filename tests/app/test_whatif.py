"""The What-if page on the default city with the shipped model: the editor (which never loads the
model), running a scenario as a job (the worker, drained in the test's process, stores both forecasts
with the scenario in one transaction), the difference charts read from the stored runs, reopening a
scenario by link without recomputing, field errors, a failed job's reason, and the empty states."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from app.whatif_data import EditorInput, build_scenario, error_text, field_slot
from db import open_database
from db.models import Cell, Dataset, ForecastRun, Tile
from db.models import Scenario as ScenarioRow
from db.queries import store_dataset
from engine.data.city import CityConfig, generate_city
from engine.errors import InputError
from engine.forecast import ForecastResult
from engine.jobs import JobWorker, enqueue, list_jobs
from engine.requests import WhatIfRequest
from engine.whatif import CellEdit, Scenario, run_whatif
from tests.app.conftest import page, query, run_page, sql

USER = "U0007"
START = 300  # Sat 12:00 of the second week: inside the data, after the model's 24 hours of history


def _counts(db_path) -> tuple[int, int]:
    database = open_database(str(db_path))
    with database.session() as session:
        return (
            session.scalar(select(func.count()).select_from(ForecastRun)),
            session.scalar(select(func.count()).select_from(ScenarioRow)),
        )


def _services(db_path) -> list[str]:
    database = open_database(str(db_path))
    with database.session() as session:
        return session.scalar(select(Dataset.services))


def _page(**params) -> AppTest:
    at = AppTest.from_file(page("whatif"), default_timeout=180)
    for key, value in params.items():
        at.query_params[key] = str(value)
    return at.run()


def _drain(db_path) -> list[str]:
    """Run every queued job with the real worker code, in this process; returns their statuses."""
    database = open_database(str(db_path))
    JobWorker(database).drain()
    statuses = [job.status for job in reversed(list_jobs(database))]
    database.dispose()
    return statuses


def _elements(node) -> list:
    """Every element under a block, in page order."""
    out = []
    for child in getattr(node, "children", {}).values():
        out.append(child)
        out.extend(_elements(child))
    return out


def _chart(at: AppTest, title: str) -> list:
    """The datasets (as DataFrames) of the Vega-Lite chart with this title."""
    for chart in at.get("vega_lite_chart"):
        if json.loads(chart.proto.spec).get("title") == title:
            return [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]
    raise AssertionError(f"no chart titled {title!r}")


def _other_land_use_cell(db_path, context_cell: str) -> str:
    database = open_database(str(db_path))
    with database.session() as session:
        uses = dict(session.execute(select(Cell.key, Cell.land_use)).all())
    return next(key for key in sorted(uses) if uses[key] != uses[context_cell])


def _start_cell(at: AppTest) -> str:
    """The cell the editor edits (the user's habitual cell at the start hour), from its heading."""
    heading = next(m.value for m in at.markdown if m.value.startswith("**Environment of cell "))
    return heading.split()[3].rstrip("*")


def test_the_page_opens_on_the_linked_user_and_hour_with_the_map_and_the_poi_editor(app_db):
    at = _page(user=USER, hour=START)
    assert not at.exception and not at.error
    assert at.selectbox(key="wi_user").value == USER and at.select_slider(key="wi_start").value == START
    assert at.number_input(key="wi_horizon").value == 12 and at.number_input(key="wi_samples").value == 32
    deck = json.loads(at.get("deck_gl_json_chart")[0].proto.json)
    cells = next(layer for layer in deck["layers"] if layer["id"] == "cells")
    assert len(cells["data"]) == 400
    target = _start_cell(at)
    editor = next(e for e in _elements(at.main) if getattr(e, "key", "") == f"wi_poi_{target}_0")
    assert editor is not None
    assert "No what-if scenarios yet" in " ".join(i.value for i in at.info)
    assert at.query_params["user"] == USER and at.query_params["hour"] == str(START)


def test_moving_the_user_stores_one_scenario_with_two_runs_and_charts_their_difference(app_db):
    at = _page(user=USER, hour=START)
    target = _other_land_use_cell(app_db, _start_cell(at))
    before = _counts(app_db)
    at.number_input(key="wi_horizon").set_value(3)
    at.number_input(key="wi_samples").set_value(4)
    at.radio(key="wi_location").set_value("cell").run()
    at.selectbox(key="wi_cell").set_value(target)
    at.button(key="wi_run").click().run()
    assert not at.exception and not at.error
    assert _counts(app_db) == before  # queued for the worker
    assert any("What-if" in m.value and "job" in m.value for m in at.markdown)
    assert _drain(app_db) == ["done"]
    at.run()
    assert not at.exception and not at.error
    assert _counts(app_db) == (before[0] + 2, before[1] + 1)
    assert query(at, "job") is None
    scenario_id = int(query(at, "scenario"))

    database = open_database(str(app_db))
    with database.session() as session:
        row = session.get(ScenarioRow, scenario_id)
        assert row.params["scenario"]["location"] == f"cell:{target}" and row.params["horizon"] == 3
        runs = [session.get(ForecastRun, i) for i in (row.baseline_run_id, row.scenario_run_id)]
        assert [r.params["role"] for r in runs] == ["baseline", "scenario"]
        base, scen = (ForecastResult.arrays_from_npz(r.result)["paths"][0] for r in runs)  # (S, N, K)
    expected = (np.median(scen, axis=0) - np.median(base, axis=0)).sum(axis=0) / 1e6  # MB per service

    bars = next(
        d for d in _chart(at, "Scenario − baseline, median traffic summed over 3 h (MB)") if "difference_mb" in d
    )
    assert bars["service"].tolist() == list(_services(app_db))
    np.testing.assert_allclose(bars["difference_mb"].to_numpy(), expected, rtol=1e-5, atol=1e-9)
    assert np.abs(expected).max() > 0  # another land use: another forecast
    steps = next(d for d in _chart(at, "Difference of the median per hour (MB)") if "difference_mb" in d)
    assert len(steps) == 3 * 10
    np.testing.assert_allclose(
        steps.groupby("service", sort=False)["difference_mb"].sum().to_numpy(), expected, rtol=1e-5, atol=1e-9
    )
    assert at.subheader[0].value.startswith(f"Scenario {scenario_id} · {USER} ")
    # Whether the change matters (issue 19): the paired paths' difference over the horizon, 90 % interval.
    change = (scen.astype(np.float64) - base.astype(np.float64)).sum(axis=(1, 2))  # per path
    low, high = np.quantile(change, 0.05) / 1e6, np.quantile(change, 0.95) / 1e6
    [note] = [m.value for m in (*at.info, *at.success) if "Path by path" in m.value]
    assert f"by **{change.mean() / 1e6:+.3g} MB** on average" in note
    assert f"between {low:+.3g} and {high:+.3g} MB" in note
    assert ("Within noise" in note) == (low <= 0 <= high) and ("Beyond noise" in note) != (low <= 0 <= high)


def test_a_scenario_link_fills_the_editor_shows_the_stored_result_and_renames_it_without_new_runs(app_db):
    database = open_database(str(app_db))
    edit = CellEdit(poi_counts=[0] * 11 + [40] + [0] * 5)  # a cell full of factories
    scenario = Scenario(location="cell:C0100", cell_edits={"C0100": edit}, guidance=2.0)
    stored = run_whatif(
        database,
        WhatIfRequest(
            entity=USER,
            start=START,
            horizon=3,
            samples=4,
            seed=5,
            scenario=scenario.to_dict(),
            name="factory next door",
        ),
    )
    before = _counts(app_db)
    at = _page(scenario=stored["scenario_id"])
    assert not at.exception and not at.error
    assert _counts(app_db) == before
    assert at.subheader[0].value == f"Scenario {stored['scenario_id']} · factory next door"
    assert at.radio(key="wi_location").value == "cell" and at.selectbox(key="wi_cell").value == "C0100"
    assert at.number_input(key="wi_horizon").value == 3 and at.number_input(key="wi_seed").value == 5
    assert at.slider(key="wi_guidance").value == 2.0
    editor = next(e for e in _elements(at.main) if getattr(e, "key", "") == "wi_poi_C0100_1")
    assert editor is not None
    bars = next(
        d for d in _chart(at, "Scenario − baseline, median traffic summed over 3 h (MB)") if "difference_mb" in d
    )
    expected = np.asarray(stored["difference"]["median"]).sum(axis=0) / 1e6
    np.testing.assert_allclose(bars["difference_mb"].to_numpy(), expected, rtol=1e-5, atol=1e-9)
    assert "factory next door" in at.dataframe[-1].value["name"].tolist()
    assert "industrial" in at.dataframe[-2].value["encoded text"].iloc[0]  # the regenerated description

    next(t for t in at.text_input if t.label == "Save as").input("factory, renamed")
    next(b for b in at.button if b.label == "Save name").click().run()
    assert at.subheader[0].value == f"Scenario {stored['scenario_id']} · factory, renamed"
    with database.session() as session:
        assert session.get(ScenarioRow, stored["scenario_id"]).name == "factory, renamed"
    assert _counts(app_db) == before


def test_a_negative_poi_count_shows_an_error_under_the_table_and_writes_nothing(app_db):
    at = _page(user=USER, hour=START)
    target = _start_cell(at)
    key = f"wi_poi_{target}_0"
    before = _counts(app_db)
    at.session_state[key] = {"edited_rows": {0: {"count": -3}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    column = next(
        block
        for block in _elements(at.main)
        if any(getattr(child, "key", None) == key for child in getattr(block, "children", {}).values())
    )
    children = list(column.children.values())
    after_editor = children[[getattr(c, "key", None) for c in children].index(key) + 1]
    assert type(after_editor).__name__ == "Error"
    assert after_editor.value == "the count of 'Medical care' must be from 0 to 1,000,000, got -3"
    assert at.button(key="wi_run").disabled  # nothing can be queued until it is corrected
    assert _counts(app_db) == before and "scenario" not in at.query_params


def test_an_uploaded_tile_travels_inside_the_job_and_is_stored_with_the_scenario(app_db):
    database = open_database(str(app_db))
    with database.session() as session:
        png = session.scalar(select(Tile.image).join(Cell).where(Cell.key == "C0003"))
    database.dispose()
    at = _page(user=USER, hour=START)
    target = _start_cell(at)
    at.number_input(key="wi_horizon").set_value(2)
    at.number_input(key="wi_samples").set_value(2)
    at.radio(key="wi_tile_mode").set_value("upload").run()
    at.file_uploader(key="wi_upload").set_value(("my-tile.png", png, "image/png"))
    at.button(key="wi_run").click().run()
    assert not at.exception and not at.error
    [job] = list_jobs(open_database(str(app_db)))
    assert base64.b64decode(job.params["scenario"]["cell_edits"][target]["tile_png"]) == png  # in the job
    assert _drain(app_db) == ["done"]
    at.run()
    assert not at.exception and not at.error
    database = open_database(str(app_db))
    with database.session() as session:
        stored = session.get(ScenarioRow, int(query(at, "scenario")))
        assert base64.b64decode(stored.params["scenario"]["cell_edits"][target]["tile_png"]) == png
    database.dispose()
    assert at.dataframe[-2].value["changed"].tolist() == ["uploaded tile"]  # the edited cells' table


def test_an_upload_that_is_not_an_image_is_an_error_at_the_tile_and_runs_nothing(app_db):
    """Issue 19: a non-image uploaded as the tile showed PIL's traceback and hid the Run button."""
    at = _page(user=USER, hour=START)
    _start_cell(at)
    at.radio(key="wi_tile_mode").set_value("upload").run()
    at.file_uploader(key="wi_upload").set_value(("notes.png", b"these are my notes, not a picture", "image/png"))
    at.run()
    assert not at.exception
    assert "not a readable image (PNG or JPEG expected)" in [e.value for e in at.error]
    run = at.button(key="wi_run")  # the button is still there, and disabled
    assert run.disabled and "Correct the fields" in run.help
    assert list_jobs(open_database(str(app_db))) == []


def test_a_failed_whatif_job_shows_the_reason_the_worker_found_and_writes_nothing(app_db):
    database = open_database(str(app_db))
    job_id = enqueue(
        database,
        "whatif",
        {
            "entity": f"user:{USER}",
            "start": START,
            "horizon": 2,
            "samples": 2,
            "scenario": Scenario(location="cell:NO-SUCH-CELL").to_dict(),
        },
    )
    database.dispose()
    before = _counts(app_db)
    at = _page(job=job_id)
    assert any(f"job {job_id}" in m.value for m in at.markdown)
    assert _drain(app_db) == ["failed"]
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "What-if failed: field 'location': unknown cell 'NO-SUCH-CELL' in data set 'synthetic-seed0'"
    ]
    assert _counts(app_db) == before and query(at, "scenario") is None


def test_an_unknown_scenario_link_warns_and_still_shows_the_editor(app_db):
    at = _page(scenario=999)
    assert not at.exception
    assert "Cannot open scenario 999: no what-if scenario with id 999." in [w.value for w in at.warning]
    assert at.button(key="wi_run") is not None


def test_without_a_data_set_the_page_says_how_to_get_one(empty_db):
    at = _page()
    assert not at.exception and "No data yet" in at.info[0].value


def test_without_a_model_the_page_says_how_to_train_one(empty_db):
    database = open_database(str(empty_db))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=4, cells=10, days=3)))
    at = _page()
    assert not at.exception and "No forecasting model yet" in at.info[0].value


def _form(**changes) -> EditorInput:
    values = dict(
        location="habitual",
        cell=None,
        target="C0001",
        current_counts=[1, 2],
        counts=[1, 2],
        current_description="shops",
        description="shops",
        tile_mode="keep",
        tile_from=None,
        tile_png=None,
        a=0.5,
        b=0.5,
        default_a=0.5,
        default_b=0.5,
        guidance=1.0,
    )
    return EditorInput(**{**values, **changes})


def test_the_editor_turns_only_real_changes_into_a_scenario():
    assert build_scenario(_form()) == Scenario()
    assert build_scenario(_form(description="shops ")) == Scenario()  # whitespace is no change
    moved = build_scenario(_form(location="cell", cell="C0009", counts=[1, 5], tile_mode="cell", tile_from="C0003"))
    assert moved.location == "cell:C0009" and moved.a is None and moved.b is None
    assert moved.cell_edits == {"C0001": CellEdit(poi_counts=[1, 5], tile_from="C0003")}
    weighted = build_scenario(_form(a=1.0, b=0.0, guidance=2.5, description="a park"))
    assert (weighted.a, weighted.b, weighted.guidance) == (1.0, 0.0, 2.5)
    assert weighted.cell_edits == {"C0001": CellEdit(description="a park")}


@pytest.mark.parametrize(
    "field,slot",
    [
        ("cell_edits.C0001.poi_counts", "poi_counts"),
        ("cell_edits.C0001.tile_png", "tile"),
        ("b", "weights"),
        ("location", "location"),
        ("--start", "request"),
    ],
)
def test_engine_errors_are_shown_next_to_their_field_without_its_path(field, slot):
    assert field_slot(field) == slot
    assert error_text(InputError("bad value", field=field)) == "bad value"


# --- the cell level ------------------------------------------------------------------------------------------


def test_a_cell_outage_is_queued_from_the_page_and_its_comparison_reopens(app_db: Path) -> None:
    from engine.jobs import JobWorker

    at = run_page("whatif")
    at.selectbox(key="cw_cell").set_value("C0001")
    for key, value in (("cw_at", 1), ("cw_duration", 1), ("cw_horizon", 3), ("cw_samples", 2), ("cw_neighbours", 2)):
        at.number_input(key=key).set_value(value)
    at.run()  # Run is disabled until a cell is chosen
    at.button(key="cw_run").click().run()
    assert not at.exception, at.exception
    ((kind, params),) = sql(app_db, "SELECT kind, params FROM jobs")
    params = json.loads(params)
    assert kind == "load.whatif" and params["cell"] == "C0001" and params["what"] == "outage"
    assert (params["at"], params["duration"], params["horizon"], params["neighbours"]) == (1, 1, 3, 2)
    database = open_database(str(app_db))
    assert JobWorker(database).drain() == 1
    ((scenario_id, baseline_id),) = sql(app_db, "SELECT id, baseline_id FROM load_runs WHERE kind = 'outage'")
    at = run_page("whatif", cell_scenario=scenario_id)
    assert any(f"baseline run {baseline_id}, scenario run {scenario_id}" in md.value for md in at.markdown)
    table = at.dataframe[-1].value
    ((scope,),) = sql(app_db, "SELECT scope FROM load_runs WHERE id = ?", scenario_id)
    assert table["cell"].tolist() == scope.removeprefix("cell:").split(",")
    assert len(table) == 3 and table.iloc[0]["cell"] == "C0001"
    assert (table["p_baseline"].between(0, 1)).all()
    database.dispose()


def test_a_cell_scenario_with_a_window_beyond_the_horizon_is_refused_on_the_page(app_db: Path) -> None:
    at = run_page("whatif")
    at.selectbox(key="cw_cell").set_value("C0001")
    at.number_input(key="cw_horizon").set_value(3)
    at.number_input(key="cw_at").set_value(3).run()
    # named under the row by the field's label, and the button disabled (issue 19)
    assert any(e.value.startswith("From forecast hour:") and "beyond the 3 hours" in e.value for e in at.error)
    assert at.button(key="cw_run").disabled
    assert sql(app_db, "SELECT COUNT(*) FROM jobs") == [(0,)]
