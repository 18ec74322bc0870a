"""The User page (?user=KEY): heatmap and series of the user's history in MB, service-mix radar, places
with links to the Cell page, and the user's past forecast runs; plus the functions behind it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from app import user_data as ud
from db import open_database
from db.models import Cell, Entity, ForecastRun, LocationHour
from db.queries import entity_matrix, get_dataset
from tests.app.conftest import page
from tests.conftest import copy_database

MONDAY = datetime(2016, 4, 18)


# --- helpers --------------------------------------------------------------------------------------------


def chart_data(element) -> list[pd.DataFrame]:
    """The data sets a rendered Vega-Lite chart carries (Streamlit moves them into Arrow tables)."""
    frames = [pa.ipc.open_stream(d.data.data).read_pandas() for d in element.proto.datasets]
    inline = json.loads(element.proto.spec).get("datasets", {})
    return frames + [pd.DataFrame(rows) for rows in inline.values()]


def chart_with_columns(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first chart data set having all these columns."""
    for element in at.get("vega_lite_chart"):
        for frame in chart_data(element):
            if set(columns) <= set(frame.columns):
                return frame
    raise AssertionError(f"no chart with columns {columns}")


def user_matrix(db_path: Path, key: str) -> np.ndarray:
    database = open_database(str(db_path))
    with database.session() as session:
        dataset = get_dataset(session)
        entity_id = session.scalar(select(Entity.id).where(Entity.dataset_id == dataset.id, Entity.key == key))
        matrix = entity_matrix(session, entity_id, dataset.hours, len(dataset.services))
    database.dispose()
    return matrix


def open_user_page(key: str | None = None) -> AppTest:
    at = AppTest.from_file(page("user"), default_timeout=60)
    if key is not None:
        at.query_params["user"] = key
    return at.run()


# --- the page -------------------------------------------------------------------------------------------


def test_user_page_shows_the_heatmap_of_the_linked_user_for_the_last_full_week_in_mb(app_db: Path) -> None:
    at = open_user_page("U0001")
    assert not at.exception
    assert at.selectbox(key="user_key").value == "U0001"
    heat = chart_with_columns(at, "hour", "service", "value", "label").sort_values(["hour", "service"])
    matrix = user_matrix(app_db, "U0001")
    assert len(heat) == 168 * 10
    # The default week is the last full one (hours 168..335 of the 336-hour city), values in MB.
    expected = pd.DataFrame(matrix[168:336] / 1e6)
    got = heat.pivot(index="hour", columns="service", values="value")
    database = open_database(str(app_db))
    with database.session() as session:
        order = list(get_dataset(session).services)
    database.dispose()
    np.testing.assert_allclose(got[order].to_numpy(), expected.to_numpy(), rtol=1e-9)
    assert heat["label"].iloc[0] == "Mon 00:00"  # hours carry weekday labels, not bare indices


def test_user_page_week_picker_shows_the_chosen_week(app_db: Path) -> None:
    at = open_user_page("U0001")
    assert at.selectbox(key="user_week").options == ["Mon 18 Apr - Sun 24 Apr", "Mon 25 Apr - Sun 01 May"]
    at.selectbox(key="user_week").set_value(0).run()
    assert not at.exception
    heat = chart_with_columns(at, "hour", "service", "value", "label")
    total = user_matrix(app_db, "U0001")[:168].sum() / 1e6
    assert heat["value"].sum() == pytest.approx(total)


def test_user_page_draws_the_service_mix_radar_for_weekdays_and_weekends(app_db: Path) -> None:
    at = open_user_page("U0001")
    radar = chart_with_columns(at, "series", "service", "value", "order")
    assert set(radar["series"]) == {"weekdays", "weekends"}
    matrix = user_matrix(app_db, "U0001")
    weekday_hours = np.r_[0:120, 168:288]  # Monday 00:00 origin: Mon-Fri of both weeks
    shares = matrix[weekday_hours].sum(axis=0) / matrix[weekday_hours].sum()
    weekdays = radar[(radar["series"] == "weekdays") & (radar["order"] < 10)].sort_values("order")
    np.testing.assert_allclose(weekdays["value"].to_numpy(), shares, rtol=1e-9)


def test_user_page_lists_the_users_places_with_share_of_hours_and_links_to_the_cell_page(app_db: Path) -> None:
    at = open_user_page("U0001")
    places = at.dataframe[0].value
    database = open_database(str(app_db))
    with database.session() as session:
        entity = session.scalar(select(Entity).where(Entity.key == "U0001"))
        visits = dict(
            session.execute(
                select(Cell.key, func.count())
                .join(LocationHour, LocationHour.cell_id == Cell.id)
                .where(LocationHour.entity_id == entity.id)
                .group_by(Cell.key)
            ).all()
        )
        home = entity.attrs["home"]
    database.dispose()
    assert dict(zip(places["cell"], places["hours"], strict=True)) == visits
    assert places["share"].sum() == pytest.approx(1.0)
    assert list(places["hours"]) == sorted(places["hours"], reverse=True)  # most visited first
    assert places.set_index("cell").loc[home, "role"].startswith("home")
    assert places.set_index("cell").loc[home, "link"] == f"cell?cell={home}"
    assert {"land_use", "name"} <= set(places.columns)


def test_user_page_lists_past_forecast_runs_that_include_the_user(app_db: Path) -> None:
    database = open_database(str(app_db))
    with database.write_session() as session, session.begin():
        dataset = get_dataset(session)
        common = {
            "horizon": 6,
            "samples": 8,
            "sampler": "ddim:10",
            "location": "habitual",
            "guidance": 1.0,
            "seed": 0,
            "model_id": None,
        }
        mine = ForecastRun(dataset_id=dataset.id, params={"entity": "user:U0003,user:U0001", "start": 200, **common})
        other = ForecastRun(dataset_id=dataset.id, params={"entity": "user:U0002", "start": 100, **common})
        session.add_all([mine, other])
        session.flush()
        mine_id = mine.id
    database.dispose()
    at = open_user_page("U0001")
    assert not at.exception
    runs = at.dataframe[1].value
    assert list(runs["run"]) == [mine_id]
    assert runs["open"].iloc[0] == f"forecast?run={mine_id}"
    assert runs["start"].iloc[0] == "Tue 26 Apr 08:00"  # hour 200 = 8 days 8 hours after Mon 18 Apr 00:00
    assert runs["users"].iloc[0] == 2


def test_user_page_without_forecasts_says_so(app_db: Path) -> None:
    at = open_user_page("U0002")
    assert any("No forecasts of this user yet" in info.value for info in at.info)


def test_user_page_with_an_unknown_user_warns_and_shows_the_first_user(app_db: Path) -> None:
    at = open_user_page("NOPE")
    assert not at.exception
    assert any("No user NOPE in data set" in w.value for w in at.warning)
    assert at.selectbox(key="user_key").value == "U0000"


def test_user_page_picker_changes_the_user_and_the_link(app_db: Path) -> None:
    at = open_user_page("U0001")
    at.selectbox(key="user_key").set_value("U0004").run()
    assert not at.exception
    assert at.query_params["user"] == ["U0004"] or at.query_params["user"] == "U0004"
    heat = chart_with_columns(at, "hour", "service", "value", "label")
    assert heat["value"].sum() == pytest.approx(user_matrix(app_db, "U0004")[168:].sum() / 1e6)


def test_user_page_on_an_empty_database_explains_how_to_get_data(empty_db: Path) -> None:
    at = AppTest.from_file(page("user"), default_timeout=60).run()
    assert not at.exception
    assert any("No data yet" in info.value for info in at.info)
    assert not at.get("vega_lite_chart")


# --- the functions behind it --------------------------------------------------------------------------


def test_week_starts_are_the_full_weeks_only() -> None:
    assert ud.week_starts(336) == [0, 168]
    assert ud.week_starts(400) == [0, 168]
    assert ud.week_starts(100) == []


def test_week_label_names_the_first_and_last_day() -> None:
    assert ud.week_label(MONDAY, 168) == "Mon 25 Apr - Sun 01 May"


def test_service_mix_gives_shares_per_part_of_the_week_and_skips_an_empty_part() -> None:
    matrix = np.zeros((168, 2))
    matrix[:120, 0] = 3.0  # weekdays: only the first service
    matrix[120:, 1] = 1.0  # weekend: only the second
    mix = ud.service_mix(matrix, ("a", "b"), MONDAY)
    assert mix.set_index(["series", "service"])["share"].to_dict() == {
        ("weekdays", "a"): 1.0,
        ("weekdays", "b"): 0.0,
        ("weekends", "a"): 0.0,
        ("weekends", "b"): 1.0,
    }
    matrix[120:] = 0.0
    assert set(ud.service_mix(matrix, ("a", "b"), MONDAY)["series"]) == {"weekdays"}


def test_weekend_follows_the_data_sets_calendar_not_the_hour_index() -> None:
    saturday_noon = datetime(2016, 4, 23, 12)
    weekend = ud.is_weekend(saturday_noon, 48)
    assert weekend[:36].all() and not weekend[36:].any()  # Sat 12:00 .. Sun 23:00, then Monday


def test_place_roles_come_from_the_synthetic_users_attributes() -> None:
    roles = ud.place_roles({"home": "C1", "work": "C2", "leisure": ["C3", "C1"], "persona": "office"})
    assert roles == {"C1": "home, leisure", "C2": "work", "C3": "leisure"}
    assert ud.place_roles({}) == {}


def test_user_runs_match_whole_keys_in_old_and_new_runs(tmp_path: Path, city_db: Path) -> None:
    copy = tmp_path / "runs.sqlite"
    copy_database(city_db, copy)
    database = open_database(str(copy))
    with database.write_session() as session, session.begin():
        dataset = get_dataset(session)
        old = {
            "entity": "user:U0007,user:U00070",
            "start": 300,
            "horizon": 2,
            "samples": 3,
            "sampler": "ddim:4",
            "location": "habitual",
            "guidance": 1.0,
            "seed": 0,
            "model_sha256": "x",
        }  # before requests
        new = {"entities": ["U00071"], "start": 310, "horizon": 5, "samples": 3}
        session.add_all(
            [ForecastRun(dataset_id=dataset.id, params=old), ForecastRun(dataset_id=dataset.id, params=new)]
        )
    with database.session() as session:
        dataset = get_dataset(session)
        runs = ud.user_runs(session, dataset.id, "user", "U0007", dataset.time_origin)
        assert list(runs["horizon_h"]) == [2] and list(runs["sampler"]) == ["ddim:4"] and list(runs["users"]) == [2]
        assert list(ud.user_runs(session, dataset.id, "user", "U00071", dataset.time_origin)["horizon_h"]) == [5]
        assert ud.user_runs(session, dataset.id, "cell", "U00071", dataset.time_origin).empty
        assert ud.user_runs(session, dataset.id, "user", "U000", dataset.time_origin).empty
    database.dispose()


def test_user_places_and_runs_read_from_the_database(city_db: Path) -> None:
    database = open_database(str(city_db))
    with database.session() as session:
        dataset = get_dataset(session)
        user = ud.find_user(session, dataset.id, "U0007")
        assert user is not None and ud.find_user(session, dataset.id, "missing") is None
        places = ud.user_places(session, user)
        located = session.scalar(
            select(func.count()).select_from(LocationHour).where(LocationHour.entity_id == user.id)
        )
        assert places["hours"].sum() == located
        assert ud.entity_keys(session, dataset.id)[:2] == ["U0000", "U0001"]
        runs = ud.user_runs(session, dataset.id, "user", "U0007", dataset.time_origin)
        assert runs.empty and "open" in runs.columns
    database.dispose()


def test_usage_summary_counts_bytes_active_hours_and_cells() -> None:
    matrix = np.array([[1e6, 2e6], [0.0, 0.0], [5e5, 0.0], [0.0, 0.0]])
    places = pd.DataFrame({"cell": ["C1", "C2"]})
    assert ud.usage_summary(matrix, places) == {
        "total_bytes": 3.5e6,
        "mean_bytes_per_hour": 875_000.0,
        "active_share": 0.5,
        "cells": 2,
    }


def test_series_frame_is_long_and_in_mb() -> None:
    matrix = np.array([[1e6, 2e6], [0.0, 5e5]])
    frame = ud.series_frame(matrix, ("a", "b"), MONDAY)
    assert list(frame["value"]) == [1.0, 2.0, 0.0, 0.5]
    assert list(frame["label"]) == ["Mon 00:00", "Mon 00:00", "Mon 01:00", "Mon 01:00"]
