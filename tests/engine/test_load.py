"""Cell and area load (engine/load/core.py, engine/load/forecast.py) and the sampled location scenario
(engine/load/location.py): exact sums on hand-made paths, the real shipped model on the default city, the
capacity table, stored runs and their export, and refusals that store nothing."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from db import open_database
from engine.data.windows import SeriesData
from engine.errors import InputError
from engine.forecast import LocationPlan, load_context, recursive_forecast
from engine.load.core import (
    CHUNK_USERS,
    MIN_CAPACITY,
    CellTable,
    cell_capacity,
    default_capacities,
    export_load,
    load_runs,
    observed_load,
    read_load_run,
    set_capacity,
    sum_by_cell,
)
from engine.load.forecast import reachable_users, run_load, user_chunks
from engine.load.location import DayTypeDraw, draw_locations, match_rate
from engine.requests import LoadRequest
from tests.conftest import copy_database


@pytest.fixture
def city(city_db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "city.sqlite"
    copy_database(city_db, copy)
    return copy


@pytest.fixture(scope="module")
def context(city_db: Path):
    """The shipped model and the default city, loaded once (read only)."""
    database = open_database(str(city_db))
    yield load_context(database)
    database.dispose()


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# --- sums on hand-made paths -----------------------------------------------------------------------------


def test_two_users_moving_between_two_cells_sum_exactly_and_an_unreached_cell_is_zero():
    # users A and B, 2 paths, 3 hours, 2 services; cells 0 and 1, cell 2 nobody reaches.
    paths = np.zeros((2, 2, 3, 2))
    paths[0] = [[[1, 2], [3, 4], [5, 6]], [[10, 20], [30, 40], [50, 60]]]
    paths[1] = [[[100, 200], [300, 400], [500, 600]], [[1000, 2000], [3000, 4000], [5000, 6000]]]
    cells = np.array(
        [
            [[0, 0, 1], [0, 1, 1]],  # A: moves to cell 1 at hour 2 (path 0) or hour 1 (path 1)
            [[1, 1, 1], [1, -1, -1]],  # B: stays in 1 (path 0); leaves the network mid-horizon (path 1)
        ]
    )
    load, present = sum_by_cell(paths, cells, np.array([0, 1, 2]), n_cells=3)
    assert load.shape == (3, 2, 3, 2) and present.shape == (3, 2, 3)
    # cell 0: A while there
    np.testing.assert_array_equal(load[0, 0], [[1, 2], [3, 4], [0, 0]])
    np.testing.assert_array_equal(load[0, 1], [[10, 20], [0, 0], [0, 0]])
    # cell 1: B on path 0 all along, plus A from its move; on path 1 B only at hour 0 (then gone)
    np.testing.assert_array_equal(load[1, 0], [[100, 200], [300, 400], [505, 606]])
    np.testing.assert_array_equal(load[1, 1], [[1000, 2000], [30, 40], [50, 60]])
    np.testing.assert_array_equal(present[1], [[1, 1, 2], [1, 1, 1]])
    np.testing.assert_array_equal(load[2], 0)
    np.testing.assert_array_equal(present[2], 0)
    # a scope of cell 1 alone gives cell 1's numbers
    alone, _ = sum_by_cell(paths, cells, np.array([1]), n_cells=3)
    np.testing.assert_array_equal(alone[0], load[1])


def test_the_cells_of_a_scope_add_up_to_the_users_in_them_path_by_path():
    rng = np.random.default_rng(0)
    paths = rng.gamma(1.0, 1e6, size=(30, 8, 5, 4))
    cells = rng.integers(-1, 6, size=(30, 8, 5))
    load, present = sum_by_cell(paths, cells, np.arange(6), n_cells=6)
    known = cells >= 0
    np.testing.assert_allclose(load.sum(axis=0), (paths * known[..., None]).sum(axis=0))
    np.testing.assert_array_equal(present.sum(axis=0), known.sum(axis=0))


def _tiny_series(location: np.ndarray, traffic: np.ndarray) -> SeriesData:
    e, _t = location.shape
    return SeriesData(
        dataset_name="tiny",
        services=[f"s{k}" for k in range(traffic.shape[2])],
        entity_ids=np.arange(1, e + 1),
        entity_keys=[f"U{i}" for i in range(e)],
        traffic=traffic,
        location=location,
        cell_ids=np.arange(1, 4),
        cell_keys=["A", "B", "C"],
        env=np.zeros((3, 0), np.float32),
        time_origin=datetime(2024, 1, 1),  # a Monday
    )


def test_observed_load_and_the_default_capacity_come_from_the_recorded_users():
    location = np.array([[0, 0, 1, 1], [1, 1, 1, -1]])
    traffic = np.arange(2 * 4 * 2, dtype=float).reshape(2, 4, 2) * 1e6
    series = _tiny_series(location, traffic)
    truth = observed_load(series, np.array([0, 1, 2]), start=2, horizon=3)
    # hour 2: both in B; hour 3: user 0 in B (user 1 unknown); hour 4: beyond the data
    np.testing.assert_array_equal(truth[1, 0], traffic[0, 2] + traffic[1, 2])
    np.testing.assert_array_equal(truth[1, 1], traffic[0, 3])
    np.testing.assert_array_equal(truth[0, :2], 0)
    assert np.isnan(truth[:, 2]).all()
    table = CellTable(["A", "B", "C"], np.full(3, np.nan), np.full(3, np.nan), np.full(3, -1), "user")
    capacity = default_capacities(series, table)
    history_b = [*traffic[1, :3].sum(axis=-1).tolist(), traffic[0, 3].sum()]
    history_b[2] += traffic[0, 2].sum()
    assert capacity[1] == pytest.approx(np.quantile(history_b, 0.99))
    assert capacity[2] == MIN_CAPACITY  # nobody ever there: the floor


# --- where users will be -----------------------------------------------------------------------------


def test_sampled_locations_come_from_the_users_history_and_not_from_the_other_users(context):
    series = context.series
    start = 300
    both = draw_locations(series, np.array([1, 7]), start=start, steps=12, samples=16, seed=3, method="day-type")
    alone = draw_locations(series, np.array([7]), start=start, steps=12, samples=16, seed=3, method="day-type")
    np.testing.assert_array_equal(both[1], alone[0])  # the same draws whoever else is forecast
    again = draw_locations(series, np.array([1]), start=start, steps=12, samples=16, seed=3, method="day-type")
    np.testing.assert_array_equal(again[0], both[0])
    other = draw_locations(series, np.array([1]), start=start, steps=12, samples=16, seed=4, method="day-type")
    assert not np.array_equal(other[0], both[0])
    seen = set(series.location[1, :start].tolist())
    assert set(both[0].ravel().tolist()) <= seen  # only cells the user was seen in before the start
    drawer = DayTypeDraw(series, start)
    for n in range(12):
        assert set(both[0][:, n].tolist()) <= set(drawer.candidates(1, start + n).tolist())


def test_the_draws_match_the_recorded_cells_about_as_often_as_the_habitual_cell(context):
    series = context.series
    users = np.arange(60)
    start = series.hours - 24
    drawn = draw_locations(series, users, start=start, steps=24, samples=16, seed=0, method="day-type")
    habitual = np.array([[series.habitual_cell(int(e), start + n, before=start) for n in range(24)] for e in users])
    sampled, fixed = match_rate(series, drawn, users, start), match_rate(series, habitual[:, None, :], users, start)
    assert sampled["hours"] == fixed["hours"] > 0
    assert sampled["path_match"] > fixed["path_match"] - 0.05
    assert sampled["any_path_match"] >= fixed["any_path_match"]
    assert sampled["brier"] < fixed["brier"]  # an honest spread scores better than a sure guess


def test_a_sampled_forecast_conditions_each_path_on_its_own_cells(context):
    plan = LocationPlan("sampled")
    result = recursive_forecast(
        context.forecaster, context.series, [1, 7], start=300, horizon=3, samples=8, plan=plan, seed=2
    )
    assert result.path_cells is not None and result.path_cells.shape == (2, 8, 3)
    drawn = draw_locations(context.series, np.array([1, 7]), start=300, steps=3, samples=8, seed=2, method="day-type")
    np.testing.assert_array_equal(result.path_cells, drawn)
    again = recursive_forecast(
        context.forecaster, context.series, [1, 7], start=300, horizon=3, samples=8, plan=plan, seed=2
    )
    np.testing.assert_array_equal(again.paths, result.paths)  # reproducible
    given = recursive_forecast(
        context.forecaster,
        context.series,
        [1, 7],
        start=300,
        horizon=3,
        samples=8,
        plan=LocationPlan.drawn(drawn),
        seed=2,
    )
    np.testing.assert_array_equal(given.paths, result.paths)  # drawn beforehand = drawn inside


# --- load runs on the default city ------------------------------------------------------------------------


def test_a_load_run_is_the_sum_of_the_reachable_users_paths_path_by_path(city, context):
    database = open_database(str(city))
    request = LoadRequest(scope="cell:C0001,C0002", start=300, horizon=2, samples=4, seed=5)
    payload = run_load(database, request, context=context)
    stored = read_load_run(database, payload["run_id"])
    r = stored.result
    assert stored.cell_keys == ["C0001", "C0002"] and r.totals.shape == (2, 4, 2)
    scope = np.array([context.series.cell_keys.index(k) for k in ("C0001", "C0002")])
    users, cells = reachable_users(
        context.series, LocationPlan("sampled"), scope, start=300, horizon=2, samples=4, seed=5
    )
    np.testing.assert_array_equal(r.users, users)
    assert payload["users_forecast"] == len(users) > 0
    expected = np.zeros((2, 4, 2, len(context.series.services)))
    present = np.zeros((2, 4, 2))
    for positions, hours in user_chunks(cells, scope, len(context.series.cell_keys)):
        part = recursive_forecast(
            context.forecaster,
            context.series,
            users[positions].tolist(),
            start=300,
            horizon=hours,
            samples=4,
            seed=5,
            plan=LocationPlan.drawn(cells[positions, :, :hours]),
        )
        for u, position in enumerate(positions):
            for i, row in enumerate(scope):
                here = cells[position, :, :hours] == row  # (S, hours)
                expected[i, :, :hours] += part.paths[u] * here[..., None]
                present[i, :, :hours] += here
                assert not (cells[position, :, hours:] == row).any()  # nothing left out after a chunk's hours
    np.testing.assert_allclose(r.totals, expected.sum(axis=-1), rtol=1e-5)  # stored as float32
    np.testing.assert_array_equal(r.present, present)
    # every user outside the reachable set is never in the scope on any path
    everyone = draw_locations(
        context.series,
        np.arange(len(context.series.entity_keys)),
        start=300,
        steps=2,
        samples=4,
        seed=5,
        method="day-type",
    )
    outside = np.setdiff1d(np.arange(len(everyone)), users)
    assert not np.isin(everyone[outside], scope).any()
    # the JSON: quantiles per cell, hour and service, users present, capacity, P(load > capacity)
    hour = payload["cells"][0]["hours"][0]
    assert set(hour["total"]) >= {"mean", "median", "q05", "q25", "q75", "q95", "truth"}
    assert set(hour["services"]) == set(context.series.services)
    assert 0 <= hour["p_exceed"] <= 1 and hour["users_present"]["median"] >= 0
    assert payload["cells"][0]["capacity"] > 0
    # the risk is the share of paths above capacity
    np.testing.assert_allclose(r.p_exceed, (r.totals > r.capacity[:, None, None]).mean(axis=1))
    database.dispose()


def test_the_whole_data_set_adds_up_to_every_users_traffic_path_by_path(city, context):
    database = open_database(str(city))
    payload = run_load(
        database, LoadRequest(scope="area:all", start=300, horizon=1, samples=2, location="habitual"), context=context
    )
    r = read_load_run(database, payload["run_id"]).result
    assert len(r.users) == len(context.series.entity_keys) and len(r.cell_rows) == len(context.series.cell_keys)
    users = r.users
    total = np.zeros((2, 1))
    for done in range(0, len(users), CHUNK_USERS):
        part = recursive_forecast(
            context.forecaster,
            context.series,
            users[done : done + CHUNK_USERS].tolist(),
            start=300,
            horizon=1,
            samples=2,
            plan=LocationPlan("habitual"),
        )
        total += part.paths.sum(axis=(0, -1))
    np.testing.assert_allclose(r.totals.sum(axis=0), total, rtol=1e-5)
    assert r.present.sum(axis=0).tolist() == [[len(users)], [len(users)]]
    database.dispose()


def test_an_operator_capacity_is_used_by_the_next_run_and_can_be_reset(city, context):
    database = open_database(str(city))
    dataset_id = context.dataset_id
    before = cell_capacity(database, dataset_id, "C0001")
    assert not before["set_by_operator"] and before["total_bytes"] == before["default_bytes"] >= MIN_CAPACITY
    set_capacity(database, dataset_id, "C0001", 0.5, {"Games": 0.1})
    after = cell_capacity(database, dataset_id, "C0001")
    assert after["set_by_operator"] and after["total_bytes"] == 0.5e6 and after["services"] == {"Games": 0.1e6}
    payload = run_load(database, LoadRequest(scope="cell:C0001", start=300, horizon=2, samples=2), context=context)
    cell = payload["cells"][0]
    assert cell["capacity"] == 0.5e6 and cell["capacity_services"] == {"Games": 0.1e6}
    assert cell["hours"][0]["services"]["Games"]["p_exceed"] is not None
    assert cell["hours"][0]["services"]["News"]["p_exceed"] is None
    set_capacity(database, dataset_id, "C0001", None)
    assert cell_capacity(database, dataset_id, "C0001")["total_bytes"] == before["total_bytes"]
    for total, services, field in (
        (0.0, None, "capacity"),
        (-1.0, None, "capacity"),
        (1.0, {"Nope": 1.0}, "capacity_services"),
        (1.0, {"Games": 0}, "Games"),
    ):
        with pytest.raises(InputError) as refused:
            set_capacity(database, dataset_id, "C0001", total, services)
        assert refused.value.field == field
    with pytest.raises(InputError) as refused:
        set_capacity(database, dataset_id, "NOPE", 1.0)
    assert refused.value.field == "cell"
    assert _count(city, "cell_capacities") == 0
    database.dispose()


@pytest.mark.parametrize(
    ("scope", "start", "field", "words"),
    [
        ("cell:NOPE", 300, "scope", "no cell 'NOPE'"),
        ("cell:", 300, "scope", "at least one cell"),
        ("box:1,2,3", 300, "scope", "SOUTH,WEST,NORTH,EAST"),
        ("box:10,10,5,20", 300, "scope", "south < north"),
        ("box:0,0,1,1", 300, "scope", "no cell"),
        ("area:some", 300, "scope", "area:all"),
        ("cell:C0001", 3, "start", "24 hours of history"),
        ("cell:C0001", 10_000, "start", "within the data"),
    ],
)
def test_bad_scopes_and_starts_are_refused_naming_the_field_and_nothing_is_stored(
    city, context, scope, start, field, words
):
    database = open_database(str(city))
    with pytest.raises(InputError) as refused:
        run_load(database, LoadRequest(scope=scope, start=start, horizon=2, samples=2), context=context)
    assert refused.value.field == field and words in str(refused.value)
    assert _count(city, "load_runs") == 0
    database.dispose()


def test_a_box_scope_takes_the_cells_inside_it(city, context):
    database = open_database(str(city))
    table = CellTable.read(database, context.dataset_id, context.series)
    lat, lon = table.lat[:5], table.lon[:5]
    box = f"box:{lat.min() - 1e-6},{lon.min() - 1e-6},{lat.max() + 1e-6},{lon.max() + 1e-6}"
    rows = table.scope_rows(box, "x")
    assert set(range(5)) <= set(rows.tolist())
    inside = (table.lat >= lat.min()) & (table.lat <= lat.max()) & (table.lon >= lon.min()) & (table.lon <= lon.max())
    assert set(rows.tolist()) == set(np.flatnonzero(inside).tolist())
    database.dispose()


def test_a_stored_run_is_listed_and_exported_to_csv_and_parquet(city, context, tmp_path):
    database = open_database(str(city))
    payload = run_load(
        database, LoadRequest(scope="cell:C0003", start=310, horizon=3, samples=4, name="morning"), context=context
    )
    listed = load_runs(database, context.dataset_id)
    assert listed[0]["run_id"] == payload["run_id"] and listed[0]["name"] == "morning" and listed[0]["cells"] == 1
    services = context.series.services
    for suffix in ("csv", "parquet"):
        out = tmp_path / f"load.{suffix}"
        rows = export_load(database, payload["run_id"], out)
        frame = pd.read_csv(out) if suffix == "csv" else pd.read_parquet(out)
        assert len(frame) == rows == 3 * (len(services) + 1)
        total = frame[frame["service"] == "total"].reset_index(drop=True)
        assert total["hour"].tolist() == [310, 311, 312]
        hour0 = payload["cells"][0]["hours"][0]
        assert total.loc[0, "median"] == pytest.approx(hour0["total"]["median"], rel=1e-5)
        assert total.loc[0, "p_exceed"] == pytest.approx(hour0["p_exceed"])
    with pytest.raises(InputError) as refused:
        export_load(database, payload["run_id"], tmp_path / "load.xlsx")
    assert refused.value.field == "out"
    with pytest.raises(InputError) as refused:
        export_load(database, 999, tmp_path / "load.csv", replace=True)
    assert refused.value.field == "run"
    assert not (tmp_path / "load.xlsx").exists()
    # Issue 20: a folder is refused with a message (not IsADirectoryError), and a file the user has is kept
    # unless they ask to replace it.
    for target, says in ((tmp_path, "is a folder"), (tmp_path / "load.csv", "exists already")):
        with pytest.raises(InputError, match=says) as refused:
            export_load(database, payload["run_id"], target)
        assert refused.value.field == "out"
    assert export_load(database, payload["run_id"], tmp_path / "load.csv", replace=True) == rows
    database.dispose()


# --- the job, the command line -------------------------------------------------------------------------------


def test_a_load_job_runs_in_the_real_worker_and_a_bad_one_stores_nothing(city):
    from engine.jobs import JobWorker, enqueue, get_job

    database = open_database(str(city))
    job_id = enqueue(database, "load", {"scope": "cell:C0001", "start": 310, "horizon": 2, "samples": 4})
    assert JobWorker(database).drain() == 1
    job = get_job(database, job_id)
    assert job.status == "done" and job.progress == 1.0, job.error
    run_id = job.ref_id("load_run")
    stored = read_load_run(database, run_id)
    assert stored.cell_keys == ["C0001"] and stored.params["samples"] == 4 and stored.params["seed"] == 0
    assert (
        job.result["run_id"] == run_id and job.result["cells"] == 1 and job.result["users"] == len(stored.result.users)
    )
    with pytest.raises(InputError) as refused:  # refused when queued: a field's own check
        enqueue(database, "load", {"scope": "cell:C0001", "start": 310, "samples": 1})
    assert refused.value.field == "samples"
    with pytest.raises(InputError) as refused:
        enqueue(database, "load", {"scope": "somewhere", "start": 310})
    assert refused.value.field == "scope"
    failing = enqueue(database, "load", {"scope": "cell:NOPE", "start": 310, "horizon": 2, "samples": 2})
    JobWorker(database).drain()
    job = get_job(database, failing)
    assert job.status == "failed" and "NOPE" in job.error and job.result["field"] == "scope"
    assert _count(city, "load_runs") == 1
    database.dispose()


def test_lsdm_load_prints_json_and_lsdm_export_load_writes_it(city, tmp_path, capsys):
    import json

    from cli.main import main

    argv = ["load", "--db", str(city), "--scope", "cell:C0002", "--start", "305", "--horizon", "2"]
    assert main([*argv, "--samples", "4", "--location", "habitual", "--seed", "9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_id"] == 1 and out["params"]["location"] == "habitual" and out["params"]["seed"] == 9
    assert {"seconds", "cells", "services", "users_forecast"} <= set(out)
    hour = out["cells"][0]["hours"][1]
    assert hour["hour"] == 306 and {"median", "q05", "q95"} <= set(hour["services"]["Games"])
    assert {"users_present", "p_exceed"} <= set(hour) and out["cells"][0]["capacity"] > 0
    assert main(["export", "load", "1", "--db", str(city), "--out", str(tmp_path / "one.csv")]) == 0
    assert "wrote 22 rows" in capsys.readouterr().out
    assert main(["export", "load", "1", "--db", str(city), "--out", str(tmp_path)]) == 2  # a folder: named as typed
    assert "field '--out'" in capsys.readouterr().err and not list(tmp_path.glob("*.parquet"))
    assert main(["loads", "--db", str(city)]) == 0
    assert "cell:C0002" in capsys.readouterr().out
    assert main(["capacity", "C0002", "--db", str(city), "--mb", "12.5"]) == 0
    assert "12.50 MB per hour (set by an operator)" in capsys.readouterr().out
    # bad flags: a message naming the flag, exit 2, nothing stored
    assert main([*argv[:-1], "0", "--samples", "4"]) == 2
    assert "--horizon" in capsys.readouterr().err
    assert main([*argv, "--location", "everywhere"]) == 2
    assert "--location" in capsys.readouterr().err
    assert main(["load", "--db", str(city), "--scope", "cell:XX", "--start", "305"]) == 2
    err = capsys.readouterr().err
    assert "--scope" in err and "'XX'" in err
    assert _count(city, "load_runs") == 1


# --- data sets whose entities are cells --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cell_city(tmp_path_factory):
    """A small city summed to its cells (entities = cells, linked to them) with a tiny no-condition model."""
    import dataclasses
    import os

    from db.queries import store_dataset
    from engine.data.city import CityConfig, generate_city
    from engine.model.config import resolve_config
    from engine.train import train

    home = tmp_path_factory.mktemp("cell-home")
    old = os.environ.get("LSDM_HOME")
    os.environ["LSDM_HOME"] = str(home)
    users = generate_city(CityConfig(users=40, cells=10, days=4, seed=4))
    located = {
        (int(e), int(h)): int(c)
        for e, h, c in zip(users.location_entity, users.location_hour, users.location_cell, strict=True)
    }
    sums: dict[tuple[int, int, int], int] = {}
    for e, h, k, b in zip(
        users.traffic_entity, users.traffic_hour, users.traffic_service, users.traffic_bytes, strict=True
    ):
        cell = located.get((int(e), int(h)))
        if cell is not None:
            sums[(cell, int(h), int(k))] = sums.get((cell, int(h), int(k)), 0) + int(b)
    keys = np.array(list(sums), dtype=np.int64)
    n_cells = len(users.cell_keys)
    content = dataclasses.replace(
        users,
        name="cells-of-seed4",
        entity_kind="cell",
        entity_keys=list(users.cell_keys),
        traffic_entity=keys[:, 0],
        traffic_hour=keys[:, 1],
        traffic_service=keys[:, 2],
        traffic_bytes=np.array(list(sums.values()), dtype=np.int64),
        location_entity=np.repeat(np.arange(n_cells), users.hours),
        location_hour=np.tile(np.arange(users.hours), n_cells),
        location_cell=np.repeat(np.arange(n_cells), users.hours),
        entity_cell=np.arange(n_cells),
        entity_attrs=None,
    )
    database = open_database(str(home / "lsdm.sqlite"))
    with database.write_session() as session, session.begin():
        store_dataset(session, content)
    name, config = resolve_config("tiny", epochs=1, condition="none", windows_per_epoch=1024)
    train(database, name, config)
    yield database, sums
    database.dispose()
    if old is None:
        os.environ.pop("LSDM_HOME", None)
    else:
        os.environ["LSDM_HOME"] = old


def test_a_cell_data_set_is_forecast_directly_with_no_users_present(cell_city):
    database, sums = cell_city
    context = load_context(database)
    keys = context.series.cell_keys[:2]
    payload = run_load(
        database, LoadRequest(scope="cell:" + ",".join(keys), start=72, horizon=3, samples=4), context=context
    )
    stored = read_load_run(database, payload["run_id"]).result
    rows = [context.series.entity_keys.index(k) for k in keys]
    direct = recursive_forecast(context.forecaster, context.series, rows, start=72, horizon=3, samples=4)
    np.testing.assert_allclose(stored.totals, direct.paths.sum(axis=-1), rtol=1e-5)  # the cells' own paths
    assert (stored.present == -1).all() and payload["cells"][0]["hours"][0]["users_present"] is None
    truth = [sum(v for (c, h, _), v in sums.items() if c == 0 and h == 72)]
    assert payload["cells"][0]["hours"][0]["total"]["truth"] == pytest.approx(truth[0])
    with pytest.raises(InputError) as refused:  # an outage moves users: a cell data set has none
        from engine.load.whatif import run_load_whatif
        from engine.requests import LoadWhatIfRequest

        run_load_whatif(
            database, LoadWhatIfRequest(cell=keys[0], start=72, horizon=2, duration=1, samples=2), context=context
        )
    assert refused.value.field == "cell"
