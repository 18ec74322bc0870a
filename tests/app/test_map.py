"""Map page: an offline basemap, every cell coloured by traffic or land use in the chosen hour, every user
at the cell the database puts them in, a linked user's week as a path, and a way to open a cell or a
user without clicking the map. Expected values come from independent SQL on the same database."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app import map_data as m
from app.common import LAND_USE_COLORS
from db import open_database
from db.queries import get_dataset
from tests.app.conftest import page, query, run_page, sql


def run_map(**params: object) -> AppTest:
    return run_page("map", **params)


def deck(at: AppTest) -> dict:
    charts = at.get("deck_gl_json_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.json)


def layers(at: AppTest) -> dict[str, dict]:
    return {layer["id"]: layer for layer in deck(at)["layers"]}


def cell_traffic_at(db: Path, hour: int) -> dict[str, float]:
    """Bytes per cell key in one hour: each user's traffic counted at the cell they were in."""
    rows = sql(
        db,
        "SELECT c.key, SUM(t.bytes) FROM traffic t JOIN locations l ON l.entity_id = t.entity_id "
        "AND l.hour = t.hour JOIN cells c ON c.id = l.cell_id WHERE t.hour = ? GROUP BY c.key",
        hour,
    )
    return dict(rows)


# --- the page -------------------------------------------------------------------------------------


def test_map_draws_an_offline_basemap_all_400_cells_and_every_located_user(app_db: Path) -> None:
    at = run_map(hour=10)
    spec = deck(at)
    by_id = {layer["id"]: layer for layer in spec["layers"]}

    basemap = by_id["basemap"]
    assert basemap["@@type"] == "BitmapLayer"
    assert basemap["image"].startswith("data:image/")
    west, south, east, north = basemap["bounds"]
    assert west < east and south < north
    cells = by_id["cells"]
    assert cells["@@type"] == "ScatterplotLayer"
    keys = {row["key"] for row in cells["data"]}
    assert keys == {k for (k,) in sql(app_db, "SELECT key FROM cells")} and len(cells["data"]) == 400
    assert all(west < row["lon"] < east and south < row["lat"] < north for row in cells["data"])
    located_users = sql(
        app_db,
        "SELECT COUNT(DISTINCT l.entity_id) FROM locations l JOIN entities e "
        "ON e.id = l.entity_id WHERE e.kind = 'user' AND l.hour = 10",
    )[0][0]
    assert len(by_id["users"]["data"]) == located_users == 500
    # Offline: no basemap provider and no URL anywhere in the chart.
    assert spec.get("mapProvider") is None
    assert "://" not in at.get("deck_gl_json_chart")[0].proto.json


def test_each_user_is_drawn_beside_the_cell_the_database_puts_them_in_that_hour(app_db: Path) -> None:
    users = pd.DataFrame(layers(run_map(hour=50))["users"]["data"])
    expected = dict(
        sql(
            app_db,
            "SELECT e.key, c.key FROM locations l JOIN entities e ON e.id = l.entity_id "
            "JOIN cells c ON c.id = l.cell_id WHERE l.hour = 50",
        )
    )
    assert dict(zip(users["key"], users["detail"].str.removeprefix("at "), strict=True)) == expected
    centre = {k: (lon, lat) for k, lon, lat in sql(app_db, "SELECT key, lon, lat FROM cells")}
    lon0 = users["detail"].str.removeprefix("at ").map(lambda k: centre[k][0])
    lat0 = users["detail"].str.removeprefix("at ").map(lambda k: centre[k][1])
    metres = np.hypot((users["lon"] - lon0) * 111_320 * math.cos(math.radians(31.23)), (users["lat"] - lat0) * 110_574)
    assert metres.between(35, 105).all()  # around the cell, inside its dot
    assert not users.duplicated(["lon", "lat"]).any()  # users sharing a cell do not stack


def test_moving_the_hour_slider_recolours_cells_with_that_hours_traffic(app_db: Path) -> None:
    at = run_map(hour=4)
    night = pd.DataFrame(layers(at)["cells"]["data"]).set_index("key")
    at.select_slider(key="map_hour").set_value(40).run()
    assert not at.exception
    assert query(at, "hour") == "40"
    day = pd.DataFrame(layers(at)["cells"]["data"]).set_index("key")
    assert (night[["r", "g", "b"]] != day[["r", "g", "b"]]).any(axis=1).sum() > 50
    expected = cell_traffic_at(app_db, 40)
    shown = day["detail"].str.split(" MB").str[0].astype(float)
    assert shown.to_dict() == {k: round(expected.get(k, 0) / 1e6, 2) for k in day.index}
    silent = [k for k in day.index if not expected.get(k)]
    assert silent and (day.loc[silent, "a"] == m.NO_TRAFFIC_RGBA[3]).all()


def test_land_use_colouring_paints_each_cell_in_its_land_uses_legend_colour(app_db: Path) -> None:
    at = run_map(hour=40)
    traffic = pd.DataFrame(layers(at)["cells"]["data"]).set_index("key")
    at.radio(key="map_color").set_value("land_use").run()
    assert not at.exception and query(at, "color") == "land_use"
    land = pd.DataFrame(layers(at)["cells"]["data"]).set_index("key")
    land_use = dict(sql(app_db, "SELECT key, land_use FROM cells"))
    assert {k: (r.r, r.g, r.b) for k, r in land.iterrows()} == {k: LAND_USE_COLORS[u] for k, u in land_use.items()}
    assert (traffic[["r", "g", "b"]] != land[["r", "g", "b"]]).any(axis=1).sum() > 300
    legend = " ".join(md.value for md in at.markdown)
    assert all(name in legend for name in set(land_use.values()))


def test_user_link_draws_that_users_day_as_legs_with_arrows_and_arrival_times(app_db: Path) -> None:
    spec = layers(run_map(user="U0001", hour=30))
    legs = spec["trajectory"]
    assert legs["@@type"] == "PathLayer"
    origin = sql(app_db, "SELECT time_origin FROM datasets")[0][0]
    first = 30 - (int(str(origin)[11:13]) + 30) % 24  # midnight of the day that holds hour 30
    rows = sql(
        app_db,
        "SELECT l.hour, c.key, c.lon, c.lat FROM locations l JOIN entities e ON e.id = l.entity_id "
        "JOIN cells c ON c.id = l.cell_id WHERE e.key = 'U0001' AND l.hour >= ? AND l.hour < ? ORDER BY l.hour",
        first,
        first + 24,
    )
    stops = [r for i, r in enumerate(rows) if i == 0 or r[1] != rows[i - 1][1]]  # repeats are one stop
    assert len(stops) > 2
    expected = [
        [[round(a[2], 6), round(a[3], 6)], [round(b[2], 6), round(b[3], 6)]] for a, b in itertools.pairwise(stops)
    ]
    assert [leg["path"] for leg in legs["data"]] == expected
    colours = [(leg["r"], leg["g"], leg["b"]) for leg in legs["data"]]
    assert colours[0] == m.PATH_START_RGB and colours[-1] == m.PATH_END_RGB  # light to dark through the day
    moved = sum(1 for a, b in itertools.pairwise(stops) if (a[2], a[3]) != (b[2], b[3]))
    assert len(spec["trajectory_arrows"]["data"]) == moved
    times = {row["key"]: row["text"] for row in spec["trajectory_times"]["data"]}
    hour0 = int(str(origin)[11:13])
    for hour, key, _, _ in stops:
        assert f"{(hour + hour0) % 24:02d}:00" in times[key]
    last_user = spec["users"]["data"][-1]  # the linked user is drawn on top, in the accent colour
    assert last_user["key"] == "U0001" and (last_user["r"], last_user["g"], last_user["b"]) == m.SELECTED_USER_RGB


def test_find_centres_the_map_on_the_cell_rings_it_and_goes_into_the_link(app_db: Path) -> None:
    at = run_map(hour=12)
    whole = deck(at)["initialViewState"]
    at.selectbox(key="map_find").set_value("cell:C0042").run()
    assert not at.exception and query(at, "find") == "cell:C0042"
    spec = deck(at)
    lon, lat = sql(app_db, "SELECT lon, lat FROM cells WHERE key = 'C0042'")[0]
    view = spec["initialViewState"]
    assert (view["longitude"], view["latitude"]) == pytest.approx((lon, lat)) and view["zoom"] > whole["zoom"]
    ring = {layer["id"]: layer for layer in spec["layers"]}["focus"]["data"]
    assert [r["key"] for r in ring] == ["C0042"]
    # A user is found at their cell of the chosen hour.
    at.selectbox(key="map_find").set_value("user:U0007").run()
    cell = sql(
        app_db,
        "SELECT c.key FROM locations l JOIN entities e ON e.id = l.entity_id JOIN cells c ON c.id = l.cell_id "
        "WHERE e.key = 'U0007' AND l.hour = 12",
    )[0][0]
    assert [r["key"] for r in layers(at)["focus"]["data"]] == [cell]
    assert any("find=nobody" in w.value for w in run_map(find="nobody").warning)


def test_the_legend_names_the_basemap_and_explains_the_users_day(app_db: Path) -> None:
    legend = next(md.value for md in run_map(hour=12, user="U0001").markdown if "basemap:" in md.value)
    assert "synthetic city" in legend and "U0001" in legend and "early → late" in legend


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hour": "abc"}, "hour=abc"),
        ({"hour": "9999"}, "hour=9999"),
        ({"color": "purple"}, "color=purple"),
        ({"user": "U9999"}, "user=U9999"),
    ],
)
def test_a_bad_link_parameter_warns_and_the_map_still_shows_the_default(
    app_db: Path, params: dict, message: str
) -> None:
    at = run_map(**params)
    assert any(message in w.value for w in at.warning)
    busiest = sql(app_db, "SELECT hour FROM traffic GROUP BY hour ORDER BY SUM(bytes) DESC LIMIT 1")[0][0]
    if "hour" in params:
        assert at.select_slider(key="map_hour").value == busiest
    assert "trajectory" not in layers(at) and len(layers(at)["cells"]["data"]) == 400


def _map_and_cell_pages(pages: str) -> None:
    from pathlib import Path

    import streamlit as st

    st.navigation(
        [
            st.Page(Path(pages) / "map.py", url_path="map", default=True),
            st.Page(Path(pages) / "cell.py", url_path="cell"),
        ]
    ).run()


def test_the_cell_picker_below_the_map_opens_that_cells_page(app_db: Path) -> None:
    at = AppTest.from_function(_map_and_cell_pages, args=(str(Path(page("map")).parent),), default_timeout=120)
    at.run()
    assert not at.exception and at.title[0].value == "City map"
    at.selectbox(key="map_open_cell").set_value("C0005").run()
    assert not at.exception
    assert query(at, "cell") == "C0005"
    assert any(md.value.startswith("### C0005") for md in at.markdown)


def test_map_without_data_explains_how_to_get_some(empty_db: Path) -> None:
    at = run_map()
    assert "No data yet" in at.info[0].value
    assert not at.get("deck_gl_json_chart")


# --- map_data functions ---------------------------------------------------------------------------


def _tiny_city() -> m.CityData:
    """Three cells (the third without coordinates), two users over ten hours."""
    cells = pd.DataFrame(
        {
            "id": [10, 11, 12],
            "key": ["A", "B", "C"],
            "lon": [121.0, 121.01, np.nan],
            "lat": [31.0, 31.0, np.nan],
            "land_use": ["park", "cbd", "mixed"],
            "inferred": [False, False, True],
        }
    )
    user_cell = np.array([[0, 0, 1, 1, -1, 1, 0, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=np.int32)
    traffic = np.zeros((3, 10))
    traffic[0, 0], traffic[1, 0] = 4e6, 1e6
    return m.CityData(
        cells=cells,
        cell_hour_bytes=traffic,
        user_keys=np.array(["U1", "U2"], dtype=object),
        user_cell=user_cell,
        hours=10,
        traffic_cap=4e6,
    )


def test_cell_hour_bytes_counts_each_entitys_traffic_at_its_cell_of_that_hour() -> None:
    located = np.array([[0, 1, -1], [1, 1, 0]])
    used = np.array([[5.0, 7.0, 9.0], [1.0, 2.0, 3.0]])
    assert m.cell_hour_bytes(located, used, 3).tolist() == [[5, 0, 3], [1, 9, 0], [0, 0, 0]]


def test_day_trajectory_merges_repeats_skips_unknown_or_unplaced_hours_and_says_when() -> None:
    city = _tiny_city()
    day = m.day_trajectory(city, "U1", hour=3, origin_hour=20)  # hour 0 is 20:00: hours 0-3 are one day
    assert day.hours == range(4)
    assert list(day.stops["key"]) == ["A", "B"] and list(day.stops["arrive"]) == ["20:00", "22:00"]
    assert list(day.stops["leave"]) == ["22:00", "00:00"]
    later = m.day_trajectory(city, "U1", hour=6, origin_hour=20)  # hours 4-9: unknown, B, A, unplaced, A, A
    assert later.hours == range(4, 10)
    # an unplaced hour between two in the same cell does not split the stay
    assert list(later.stops["key"]) == ["B", "A"] and list(later.stops["arrive"]) == ["01:00", "02:00"]
    assert list(later.stops["leave"]) == ["02:00", "06:00"]
    assert later.path == [[121.01, 31.0], [121.0, 31.0]]
    assert len(later.legs()) == 1 and len(later.arrows(31.0)) == 1
    assert later.labels().set_index("key")["text"].to_dict() == {"B": "01:00", "A": "02:00"}
    arrow = np.array(later.arrows(31.0)["polygon"].iat[0])
    assert arrow[0, 0] < arrow[1:, 0].min()  # the tip points west, from B to A
    assert m.day_trajectory(city, "nobody", 3).stops.empty


def test_a_real_data_set_gets_a_plain_basemap_with_a_round_grid_not_an_invented_city() -> None:
    from PIL import Image

    lon, lat = np.array([116.30, 116.42, 116.35]), np.array([39.90, 39.98, 39.93])
    base = m.neutral_basemap(lon, lat)
    west, south, east, north = base.bounds
    assert west < lon.min() < lon.max() < east and south < lat.min() < lat.max() < north
    image = np.asarray(Image.open(__import__("io").BytesIO(__import__("base64").b64decode(base.uri.split(",")[1]))))
    colours = {tuple(int(v) for v in px) for px in image.reshape(-1, 3)}
    assert colours == {m.NEUTRAL_RGB, m.GRID_RGB}  # grey and grid lines, nothing drawn
    assert base.kind == "neutral" and base.grid_deg == 0.02 and "0.02°" in base.legend()
    assert [m.grid_step(s) for s in (0.11, 1.0, 0.004)] == pytest.approx([0.02, 0.1, 0.0005])


def test_users_in_one_cell_are_spread_around_it_and_keep_their_spot() -> None:
    city = _tiny_city()
    frame = m.user_layer_frame(city, 0, selected="U1")
    assert list(frame["key"]) == ["U2", "U1"]  # selected user last, on top
    assert (frame.iloc[-1][["r", "g", "b"]].tolist()) == list(m.SELECTED_USER_RGB)
    assert list(frame["detail"]) == ["at B", "at A"]
    again = m.user_layer_frame(city, 1).set_index("key")
    first = frame.set_index("key")
    offset0 = (first.loc["U1", "lon"] - 121.0, first.loc["U1", "lat"] - 31.0)
    offset1 = (again.loc["U1", "lon"] - 121.0, again.loc["U1", "lat"] - 31.0)
    assert offset0 == pytest.approx(offset1)  # same cell, same spot from hour to hour
    assert m.user_layer_frame(city, 7).empty is False and "U1" not in set(m.user_layer_frame(city, 7)["key"])


def test_traffic_colours_run_light_to_dark_on_a_square_root_scale_and_grey_means_none() -> None:
    colours = m.traffic_colors(np.array([0.0, 1.0, 25.0, 100.0, 400.0]), cap=100.0)
    assert tuple(colours[0]) == m.NO_TRAFFIC_RGBA
    assert tuple(colours[2][:3]) == tuple(m.TRAFFIC_RAMP[2].astype(int))  # sqrt(25 / 100) = the ramp's middle
    assert tuple(colours[3][:3]) == tuple(m.TRAFFIC_RAMP[-1].astype(int)) == tuple(colours[4][:3])  # saturates
    brightness = colours[1:4, :3].astype(int).sum(axis=1)
    assert brightness[0] > brightness[1] > brightness[2]


def test_cells_layer_rows_are_compact_and_carry_the_hours_traffic_and_users() -> None:
    frame = m.cell_layer_frame(_tiny_city(), 0, "traffic")
    assert list(frame.columns) == ["key", "lon", "lat", "r", "g", "b", "a", "title", "detail"]
    assert list(frame["key"]) == ["A", "B"]  # C has no coordinates
    assert list(frame["detail"]) == ["4.0 MB · 1 user", "1.0 MB · 1 user"]
    land = m.cell_layer_frame(_tiny_city(), 0, "land_use")
    assert (land.loc[0, "r"], land.loc[0, "g"], land.loc[0, "b"]) == LAND_USE_COLORS["park"]


def test_a_click_opens_the_cell_or_the_user_it_landed_on() -> None:
    assert m.picked_object({"objects": {"cells": [{"key": "C0003"}]}}) == ("cell", "C0003")
    assert m.picked_object({"objects": {"users": [{"key": "U0002"}]}}) == ("user", "U0002")
    assert m.picked_object({"objects": {"trajectory": [{"key": "U0002"}]}}) == ("user", "U0002")
    assert m.picked_object({"indices": {}, "objects": {}}) is None and m.picked_object(None) is None


def test_initial_view_shows_the_whole_extent() -> None:
    bounds = [121.40, 31.17, 121.55, 31.29]
    view = m.initial_view(bounds, width_px=900, height_px=620)
    degrees_per_px = 360.0 / (512 * 2**view.zoom)
    assert 900 * degrees_per_px >= 0.15 and 620 * degrees_per_px * math.cos(math.radians(31.23)) >= 0.12 * 0.999
    assert 900 * degrees_per_px < 0.15 * 2.5  # and not much more


def test_load_city_agrees_with_sql(city_db: Path) -> None:
    database = open_database(str(city_db))
    with database.session() as session:
        city = m.load_city(session, get_dataset(session))
    assert city.cell_hour_bytes.shape == (400, 336) and city.user_cell.shape == (500, 336)
    total = sql(city_db, "SELECT SUM(bytes) FROM traffic")[0][0]
    assert city.cell_hour_bytes.sum() == pytest.approx(total)  # every user-hour is located in the default city
    hour_77 = cell_traffic_at(city_db, 77)
    assert {k: v for k, v in zip(city.cells["key"], city.cell_hour_bytes[:, 77], strict=True) if v} == pytest.approx(
        hour_77
    )
    u = list(city.user_keys).index("U0042")
    cells = [
        k
        for (k,) in sql(
            city_db,
            "SELECT c.key FROM locations l JOIN entities e ON e.id = l.entity_id "
            "JOIN cells c ON c.id = l.cell_id WHERE e.key = 'U0042' ORDER BY l.hour",
        )
    ]
    assert list(city.cells["key"].to_numpy()[city.user_cell[u]]) == cells
    busiest = sql(city_db, "SELECT hour FROM traffic GROUP BY hour ORDER BY SUM(bytes) DESC LIMIT 1")[0][0]
    assert m.busiest_hour(city) == busiest
    database.dispose()


# --- load and risk -------------------------------------------------------------------------------------------


def _risk_layer(at: AppTest) -> dict:
    charts = [json.loads(c.proto.json) for c in at.get("deck_gl_json_chart")]
    (found,) = [layer for chart in charts for layer in chart["layers"] if layer["id"] == "risk"]
    return found


def test_forecast_this_area_queues_a_load_job_for_the_chosen_cells_or_box(app_db: Path) -> None:
    at = run_map()
    at.multiselect(key="ml_cells").set_value(["C0001", "C0005"])
    at.number_input(key="ml_horizon").set_value(2).run()  # Run is disabled until a cell is chosen
    at.button(key="ml_run").click().run()
    assert not at.exception, at.exception
    ((kind, params),) = sql(app_db, "SELECT kind, params FROM jobs")
    params = json.loads(params)
    # the batch lane: an area takes minutes
    assert kind == "load.area" and params["scope"] == "cell:C0001,C0005" and params["horizon"] == 2
    at.radio(key="ml_kind").set_value("box").run()
    at.button(key="ml_run").click().run()
    (params,) = sql(app_db, "SELECT params FROM jobs ORDER BY id DESC LIMIT 1")[0:1][0]
    scope = json.loads(params)["scope"]
    south, west, north, east = (float(v) for v in scope.removeprefix("box:").split(","))
    lat, lon = zip(*sql(app_db, "SELECT lat, lon FROM cells"), strict=True)
    assert south == pytest.approx(min(lat), abs=1e-5) and north == pytest.approx(max(lat), abs=1e-5)
    assert west == pytest.approx(min(lon), abs=1e-5) and east == pytest.approx(max(lon), abs=1e-5)
    at.radio(key="ml_kind").set_value("cells").run()
    at.multiselect(key="ml_cells").set_value([]).run()
    assert at.button(key="ml_run").disabled and "at least one cell" in at.button(key="ml_run").help
    at.multiselect(key="ml_cells").set_value(["C0001"]).run()
    at.number_input(key="ml_horizon").set_value(9999).run()  # out of range: said at the field, not replaced
    assert any(e.value.startswith("Horizon (h): expected") for e in at.error) and at.button(key="ml_run").disabled
    assert sql(app_db, "SELECT COUNT(*) FROM jobs") == [(2,)]


def test_an_area_forecast_can_ask_for_ray_and_a_bad_executor_is_named_before_anything_is_queued(app_db: Path) -> None:
    at = run_map()
    at.multiselect(key="ml_cells").set_value(["C0001"]).run()
    at.text_input(key="ml_executor").set_value("spark").run()
    assert any("executor" in e.value and "local, ray or ray:ADDRESS" in e.value for e in at.error), at.error
    assert at.button(key="ml_run").disabled
    at.text_input(key="ml_executor").set_value("ray:auto").run()
    at.number_input(key="ml_workers").set_value(4).run()
    at.button(key="ml_run").click().run()
    assert not at.exception, at.exception
    ((params,),) = sql(app_db, "SELECT params FROM jobs")
    assert json.loads(params)["executor"] == "ray:auto" and json.loads(params)["workers"] == 4


def test_the_risk_map_colours_a_runs_cells_by_their_risk_and_the_slider_moves_the_hour(app_db: Path) -> None:
    from app.load_common import risk_colors
    from engine.forecast import load_context
    from engine.load.core import read_load_run
    from engine.load.forecast import run_load
    from engine.requests import LoadRequest

    database = open_database(str(app_db))
    cells = ",".join(f"C{i:04d}" for i in range(1, 7))
    run_id = run_load(
        database,
        LoadRequest(scope=f"cell:{cells}", start=310, horizon=3, samples=4, location="habitual"),
        context=load_context(database),
    )["run_id"]
    stored = read_load_run(database, run_id).result
    at = run_map()
    assert at.selectbox(key="map_risk_pick").value == run_id and query(at, "risk") == str(run_id)
    for hour in (0, 2):
        if hour:
            at.select_slider(key="map_risk_hour").set_value(hour).run()
        data = pd.DataFrame(_risk_layer(at)["data"])
        assert data["key"].tolist() == cells.split(",")
        np.testing.assert_allclose(data["p"], stored.p_exceed[:, hour])
        expected = risk_colors(stored.p_exceed[:, hour], stored.totals[:, :, hour].max(axis=1))
        np.testing.assert_array_equal(data[["r", "g", "b", "a"]].to_numpy(), expected)
    assert any("cells with P(load > capacity) at least 10%" in c.value for c in at.caption)
    database.dispose()


def test_risk_colours_run_green_to_red_and_grey_means_no_load() -> None:
    from app.load_common import risk_colors

    rgba = risk_colors(np.array([0.0, 0.1, 0.5, 1.0, 0.7]), np.array([1, 1, 1, 1, 0]))
    assert tuple(rgba[0, :3]) == (26, 150, 65) and tuple(rgba[3, :3]) == (215, 25, 28)
    assert rgba[1, 0] > rgba[0, 0] and rgba[2, 0] > rgba[1, 0]  # redder with the risk
    assert tuple(rgba[4]) == (190, 190, 190, 140)


def test_a_long_area_forecast_says_its_estimate_and_asks_once_before_it_is_queued(app_db: Path) -> None:
    """Issue 19: a job expected to take more than a minute says so and asks, once per kind in a session."""
    at = run_map()
    at.radio(key="ml_kind").set_value("all").run()
    at.button(key="ml_run").click().run()
    assert not at.exception, at.exception
    assert sql(app_db, "SELECT COUNT(*) FROM jobs") == [(0,)]  # asked first
    text = " ".join(md.value for md in at.markdown)
    assert "should take **about 16 min**" in text and "500 users, 24 h, 32 paths" in text
    at.button(key="_jobs_confirm_yes").click().run()
    assert [kind for (kind,) in sql(app_db, "SELECT kind FROM jobs")] == ["load.area"]
    assert any("Forecast an area" in md.value for md in at.markdown)  # followed on the page
    at.number_input(key="ml_horizon").set_value(12).run()
    at.button(key="ml_run").click().run()  # the same kind again: no second question
    assert sql(app_db, "SELECT COUNT(*) FROM jobs") == [(2,)]


def test_a_data_set_made_active_from_the_command_line_shows_without_a_restart(app_db: Path) -> None:
    """Issue 20: the dashboard cached the active data set without expiry and showed the old one until it was
    restarted. Its cache keys follow the database's data sets and models (read at most every 2 s)."""
    import time

    from cli.main import main as lsdm

    at = run_map()
    assert "synthetic-seed0" in at.caption[0].value
    other = ["city", "build", "--users", "6", "--cells", "8", "--days", "3", "--name", "made-outside"]
    assert lsdm([*other, "--db", str(app_db)]) == 0
    time.sleep(2.1)
    at.run()
    assert not at.exception and "made-outside" in at.caption[0].value


def test_a_data_set_name_with_markdown_in_it_is_shown_as_written_not_rendered(empty_db: Path) -> None:
    """Issue 20: a data set named with a markdown image made Chromium fetch its URL on every page."""
    from app.common import md_escape
    from cli.main import main as lsdm

    name = "![x](http://127.0.0.1:9/x.png) my_city"
    argv = ["city", "build", "--users", "6", "--cells", "8", "--days", "3", "--name", name, "--db", str(empty_db)]
    assert lsdm(argv) == 0
    caption = run_map().caption[0].value
    assert caption.startswith(md_escape(name)) and "![x](" not in caption
    assert md_escape(name) == "\\!\\[x\\](http://127.0.0.1:9/x.png) my\\_city"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("map", {"find": "![x](http://127.0.0.1:9/find.png)"}),
        ("map", {"user": "![x](http://127.0.0.1:9/user.png)"}),
        ("user", {"user": "![x](http://127.0.0.1:9/user.png)"}),
        ("cell", {"cell": "![x](http://127.0.0.1:9/cell.png)"}),
        ("forecast", {"user": "![x](http://127.0.0.1:9/forecast.png)"}),
    ],
    ids=["map-find", "map-user", "user", "cell", "forecast"],
)
def test_a_link_parameter_with_markdown_in_it_is_quoted_not_rendered(app_db: Path, name: str, params: dict) -> None:
    """Issue 20: values from a link reach the page's messages; escaped, a crafted link cannot make the browser
    fetch an image (or show a link) on the operator's page."""
    at = run_page(name, **params)
    shown = [element.value for element in [*at.warning, *at.error, *at.info]]
    assert any("\\!\\[x\\](http://127.0.0.1:9/" in text for text in shown), shown
    assert not any("![x](" in text for text in shown), shown
