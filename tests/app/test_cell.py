"""Cell page: a cell's tile, POI counts, description and its generator, the five cells with the most
similar environment, the users present and the traffic used there by service, and explanations where
the environment is not built yet. Expected values come from independent SQL and numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from app import cell_data as c
from cli.main import main as lsdm
from db import open_database
from db.queries import get_dataset
from tests.app.conftest import query, run_page, sql


def run_cell(**params: object) -> AppTest:
    return run_page("cell", **params)


def chart_frames(at: AppTest) -> list[pd.DataFrame]:
    """The data of each Altair chart on the page, in page order (Streamlit ships it as Arrow)."""
    return [convert_arrow_bytes_to_pandas_df(chart.proto.datasets[0].data.data) for chart in at.get("vega_lite_chart")]


def chart_by_field(at: AppTest, field: str) -> pd.DataFrame:
    (frame,) = [f for f in chart_frames(at) if field in f.columns]
    return frame


@pytest.fixture(scope="module")
def bare_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small city with no environment stage (no tiles, descriptions or encoder)."""
    db = tmp_path_factory.mktemp("bare-city") / "bare.sqlite"
    assert lsdm(["city", "build", "--db", str(db), "--users", "30", "--cells", "20", "--days", "2", "--json"]) == 0
    return db


# --- the page -------------------------------------------------------------------------------------


def test_cell_link_shows_its_tile_description_and_who_wrote_it(app_db: Path) -> None:
    at = run_cell(cell="C0001")
    assert at.selectbox(key="cell_pick").value == "C0001"
    (source,) = sql(app_db, "SELECT t.source FROM tiles t JOIN cells c ON c.id = t.cell_id WHERE c.key = 'C0001'")[0]
    assert at.image[0].captions == [f"Tile ({source})"]
    assert len(at.image) == 1 + 5  # the cell's tile and its five neighbours' tiles
    text, generator = sql(
        app_db, "SELECT d.text, d.generator FROM descriptions d JOIN cells c ON c.id = d.cell_id WHERE c.key = 'C0001'"
    )[0]
    assert any(md.value == f"> {text}" for md in at.markdown)
    assert any(cap.value.startswith(f"Generator: {generator}") for cap in at.caption)


def test_poi_chart_holds_the_cells_poi_counts_under_the_data_sets_category_names(app_db: Path) -> None:
    at = run_cell(cell="C0001")
    (counts,) = sql(app_db, "SELECT poi_counts FROM cells WHERE key = 'C0001'")[0]
    (categories,) = sql(app_db, "SELECT poi_categories FROM datasets")[0]
    poi = chart_by_field(at, "category")
    assert dict(zip(poi["category"], poi["count"], strict=True)) == dict(
        zip(json.loads(categories), json.loads(counts), strict=True)
    )


def test_the_five_nearest_cells_by_environment_are_listed_best_first_without_the_cell_itself(app_db: Path) -> None:
    at = run_cell(cell="C0001")
    keys = [button.label.removeprefix("Open ") for button in at.button if button.label.startswith("Open ")]
    assert len(keys) == 5 and "C0001" not in keys
    shown = [float(cap.value.split()[1]) for cap in at.caption if cap.value.startswith("similarity ")]
    assert shown == sorted(shown, reverse=True)
    # Independently: cosine over the active encoder's env vectors.
    (encoder,) = sql(app_db, "SELECT name FROM models WHERE kind = 'clip' AND is_active = 1")[0]
    rows = sql(
        app_db,
        "SELECT c.key, e.vector FROM embeddings e JOIN cells c ON c.id = e.cell_id "
        "WHERE e.encoder_id = ? AND e.kind = 'env'",
        encoder,
    )
    names = [k for k, _ in rows]
    z = np.stack([np.frombuffer(v, dtype="<f4") for _, v in rows]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    sims = z @ z[names.index("C0001")]
    best = [names[i] for i in np.argsort(-sims) if names[i] != "C0001"][:5]
    assert keys == best
    assert shown == pytest.approx([round(float(sims[names.index(k)]), 3) for k in best], abs=1e-3)


def test_traffic_chart_sums_per_service_equal_the_sql_sum_of_traffic_at_the_cell(app_db: Path) -> None:
    at = run_cell(cell="C0001")
    traffic = chart_by_field(at, "mb")
    services = json.loads(sql(app_db, "SELECT services FROM datasets")[0][0])
    expected = dict(
        sql(
            app_db,
            "SELECT t.service, SUM(t.bytes) FROM traffic t JOIN locations l "
            "ON l.entity_id = t.entity_id AND l.hour = t.hour JOIN cells c ON c.id = l.cell_id "
            "WHERE c.key = 'C0001' GROUP BY t.service",
        )
    )
    by_service = traffic.groupby("service")["mb"].sum()
    assert by_service.to_dict() == pytest.approx({s: expected.get(i, 0) / 1e6 for i, s in enumerate(services)})
    assert len(traffic) == 336 * len(services)  # every hour, zeros included
    assert any(h.value == "Traffic by service" for h in at.subheader)


def test_users_present_chart_counts_distinct_users_at_the_cell_each_hour(app_db: Path) -> None:
    presence = chart_by_field(run_cell(cell="C0001"), "users")
    expected = dict(
        sql(
            app_db,
            "SELECT l.hour, COUNT(DISTINCT l.entity_id) FROM locations l JOIN cells c "
            "ON c.id = l.cell_id WHERE c.key = 'C0001' GROUP BY l.hour",
        )
    )
    assert presence["users"].tolist() == [expected.get(h, 0) for h in range(336)]
    assert presence["label"].iloc[0] == "Mon 18 Apr 00:00"  # hours are labelled, never bare numbers


def test_opening_a_neighbour_or_following_a_new_link_shows_that_cell(app_db: Path) -> None:
    at = run_cell(cell="C0001")
    neighbour = at.button[0].label.removeprefix("Open ")
    at.button[0].click().run()
    assert not at.exception and at.selectbox(key="cell_pick").value == neighbour
    assert any(md.value.startswith(f"### {neighbour}") for md in at.markdown)
    assert query(at, "cell") == neighbour
    at.query_params["cell"] = "C0002"  # a link from another page while this one is open
    at.run()
    assert at.selectbox(key="cell_pick").value == "C0002" and query(at, "cell") == "C0002"
    at.selectbox(key="cell_pick").set_value("C0003").run()
    assert query(at, "cell") == "C0003" and any(md.value.startswith("### C0003") for md in at.markdown)


def test_an_unknown_cell_link_warns_and_asks_for_a_cell(app_db: Path) -> None:
    at = run_cell(cell="C9999")
    assert any("cell=C9999" in w.value for w in at.warning)
    assert any("Choose a cell" in i.value for i in at.info)
    assert not at.get("vega_lite_chart")


def test_a_cell_without_environment_explains_how_to_build_it(bare_city: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSDM_DB", str(bare_city))  # the page only reads
    at = run_cell(cell="C0003")
    hints = [i.value for i in at.info if "lsdm env build" in i.value]
    assert len(hints) == 3  # no tile, no description, no neighbours
    assert not at.image and not [b for b in at.button if b.label.startswith("Open ")]
    # no model yet: the load forecast says where to get one; the capacity needs none
    assert any("train one on **Models**" in i.value for i in at.info)
    assert at.button(key="cl_capacity_save") is not None
    (counts,) = sql(bare_city, "SELECT poi_counts FROM cells WHERE key = 'C0003'")[0]
    # What needs no environment stage still shows.
    assert chart_by_field(at, "category")["count"].tolist() == json.loads(counts)


def test_cell_page_without_data_explains_how_to_get_some(empty_db: Path) -> None:
    at = run_cell()
    assert "No data yet" in at.info[0].value


# --- cell_data functions --------------------------------------------------------------------------


def test_nearest_by_cosine_ranks_by_angle_excludes_the_cell_and_breaks_ties_by_id() -> None:
    ids = np.array([7, 3, 5, 9, 1])
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.9, 0.1], [-1, 0]], dtype=np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = c.nearest_by_cosine(ids, unit, cell_id=7, k=3)
    assert [i for i, _ in pairs] == [3, 9, 5]
    assert pairs[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    with pytest.raises(LookupError, match="lsdm env build"):
        c.nearest_by_cosine(ids, unit, cell_id=42)


def test_hour_axis_labels_hours_with_the_date_beyond_one_week() -> None:
    from datetime import datetime

    monday = datetime(2016, 4, 18)
    assert c.hour_axis(monday, 336)["label"].iloc[38] == "Tue 19 Apr 14:00"
    assert c.hour_axis(monday, 168)["label"].iloc[38] == "Tue 14:00"


def test_load_unit_embeddings_without_an_encoder_says_what_to_run(bare_city: Path) -> None:
    database = open_database(str(bare_city))
    with database.session() as session:
        dataset = get_dataset(session)
        with pytest.raises(LookupError, match="lsdm env build"):
            c.load_unit_embeddings(session, dataset)
        detail = c.load_cell(session, dataset, "C0000")
        assert detail.tile is None and detail.description is None and detail.land_use
        assert c.load_cell(session, dataset, "nope") is None
        assert c.cell_keys(session, dataset)[:2] == ["C0000", "C0001"]
        frame = c.traffic_by_service(session, dataset, detail.id)
        assert len(frame) == 48 * len(dataset.services) and frame["mb"].ge(0).all()
    database.dispose()


def test_load_unit_embeddings_returns_unit_vectors_of_every_cell(city_db: Path) -> None:
    database = open_database(str(city_db))
    with database.session() as session:
        encoder, ids, unit = c.load_unit_embeddings(session, get_dataset(session))
    assert encoder.startswith("clip-") and len(ids) == 400
    assert np.linalg.norm(unit, axis=1) == pytest.approx(np.ones(400), abs=1e-5)
    database.dispose()


# --- the load forecast --------------------------------------------------------------------------------------


def test_forecast_this_cell_queues_a_load_job_and_shows_its_run_with_capacity_and_risk(app_db: Path) -> None:
    from engine.jobs import JobWorker
    from engine.load.core import read_load_run

    at = run_cell(cell="C0001")
    at.number_input(key="cl_samples").set_value(100000).run()  # out of range: named at the field, Run disabled
    assert any(e.value.startswith("Sample paths: expected") for e in at.error) and at.button(key="cl_run").disabled
    assert sql(app_db, "SELECT COUNT(*) FROM jobs") == [(0,)]
    at.number_input(key="cl_horizon").set_value(3)
    at.number_input(key="cl_samples").set_value(4).run()
    at.button(key="cl_run").click().run()
    assert not at.exception, at.exception
    ((kind, params),) = sql(app_db, "SELECT kind, params FROM jobs")
    params = json.loads(params)
    assert kind == "load" and params["scope"] == "cell:C0001" and params["horizon"] == 3 and params["samples"] == 4
    assert params["location"] == "sampled"
    database = open_database(str(app_db))
    assert JobWorker(database).drain() == 1
    ((run_id,),) = sql(app_db, "SELECT id FROM load_runs")
    at = run_cell(cell="C0001", load=run_id)
    stored = read_load_run(database, run_id)
    totals = stored.result.total_stats()[0]
    frame = chart_by_field(at, "capacity")  # the total's fan, with the capacity line
    np.testing.assert_allclose(frame["median"], totals[:, 3] / 1e6, rtol=1e-6)
    np.testing.assert_allclose(frame["capacity"], stored.result.capacity[0] / 1e6)
    risk = chart_by_field(at, "p_exceed")
    np.testing.assert_allclose(risk["p_exceed"], stored.result.p_exceed[0])
    users = [f for f in chart_frames(at) if "median" in f.columns and "service" not in f.columns]
    assert any(np.allclose(f["median"], stored.result.present_stats()[0][:, 3]) for f in users)
    assert any("hours at risk" in md.value for md in at.markdown)
    database.dispose()


def test_the_capacity_is_edited_on_the_page_stored_and_reset(app_db: Path) -> None:
    at = run_cell(cell="C0002")
    assert any("derived from the cell's history" in cap.value for cap in at.caption)
    at.number_input(key="cl_capacity_C0002").set_value(42.0)
    at.button(key="cl_capacity_save").click().run()
    assert not at.exception, at.exception
    assert sql(app_db, "SELECT c.key, x.total_bytes FROM cell_capacities x JOIN cells c ON c.id = x.cell_id") == [
        ("C0002", 42e6)
    ]
    assert any("42.00 MB per hour (set by an operator" in cap.value for cap in at.caption)
    at.button(key="cl_capacity_default").click().run()
    assert sql(app_db, "SELECT COUNT(*) FROM cell_capacities") == [(0,)]
    assert any("derived from the cell's history" in cap.value for cap in at.caption)


def test_a_cell_without_a_tile_after_a_build_is_not_told_to_run_the_build_again() -> None:
    """Issue 19: after an environment build with no tile source, the Cell page still said "run lsdm env build"."""

    def detail(description: str | None) -> c.CellDetail:
        return c.CellDetail(1, "C1", "C1", None, None, "mixed", True, pd.DataFrame(), None, None, description,
                            "template" if description else None, None, None)  # fmt: skip

    assert "lsdm env build" in c.tile_hint(detail(None))  # nothing built yet: how to build it
    after = c.tile_hint(detail("A quiet street with shops."))
    assert "built without a tile source" in after and "--tiles dir:PATH" in after
    assert "run `lsdm env build`" not in after
