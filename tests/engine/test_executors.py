"""Issue 21, part 1: runs over many users on Ray (engine/executors.py) give what the local executor gives.

A real local Ray instance (2 CPUs, 2 actors) is started once for the module; the tests skip, saying why, where
Ray is not installed (the ``scale`` extra, which ``make test`` installs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from db import open_database
from engine.errors import InputError
from engine.executors import Executor
from engine.jobs import JobWorker, enqueue, get_job
from engine.load.core import read_load_run
from engine.load.forecast import run_load
from engine.requests import LoadRequest
from tests.conftest import city_with_tiny_model, copy_database, data_home, stored_city


@pytest.fixture(scope="module")
def small_city(tmp_path_factory) -> Path:
    """A 40-user city with a tiny trained model (no environment condition)."""
    return city_with_tiny_model(tmp_path_factory.mktemp("executors-home"), users=40, cells=30, seed=3)


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance on this machine for the module (2 CPUs); the runs join it instead of starting their own."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[scale]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local", Executor("local")),
        ("ray", Executor("ray")),
        ("ray:auto", Executor("ray", "auto")),
        ("ray:ray://head:10001", Executor("ray", "ray://head:10001")),
    ],
)
def test_executor_values(text, expected):
    assert Executor.parse(text) == expected


@pytest.mark.parametrize("text", ["spark", "ray:", "RAY", ""])
def test_a_bad_executor_names_the_field_and_what_is_accepted(text):
    with pytest.raises(InputError) as caught:
        LoadRequest(scope="area:all", start=300, executor=text).checked()
    assert caught.value.field == "executor" and "local, ray or ray:ADDRESS" in caught.value.message


def _arrays(database, run_id: int) -> dict[str, np.ndarray]:
    result = read_load_run(database, run_id).result
    return {key: getattr(result, key) for key in ("cell_rows", "quantiles", "totals", "present", "users")}


def test_a_load_run_on_ray_equals_the_local_one_path_for_path(small_city, local_ray, tmp_path):
    """Every user's paths depend on the seed and the user only, and the parts are summed in the chunks' order:
    the whole city's load on 2 Ray actors is the local run's, to the last bit."""
    with data_home(small_city.parent):
        database = open_database(str(small_city))
        asked = {"scope": "area:all", "start": 300, "horizon": 3, "samples": 4, "seed": 7}
        local = run_load(database, LoadRequest(**asked))
        on_ray = run_load(database, LoadRequest(**asked, executor="ray", workers=2))
    assert on_ray["users_forecast"] == local["users_forecast"] == 40
    assert on_ray["params"]["executor"] == "ray" and local["params"]["executor"] == "local"
    first, second = _arrays(database, local["run_id"]), _arrays(database, on_ray["run_id"])
    assert first["totals"].shape == (30, 4, 3) and first["totals"].sum() > 0
    for key in first:
        assert np.array_equal(first[key], second[key], equal_nan=True), key


def test_an_area_load_job_on_ray_is_queued_followed_and_stored(small_city, local_ray):
    """What the Map page queues (``load.area``), asking for Ray: the worker follows its progress to the end."""
    with data_home(small_city.parent):
        database = open_database(str(small_city))
        job_id = enqueue(
            database,
            "load.area",
            {"scope": "area:all", "start": 300, "horizon": 2, "samples": 4, "executor": "ray", "workers": 2},
        )
        assert JobWorker(database).drain() == 1
    job = get_job(database, job_id)
    assert job.status == "done" and job.ref_id("load_run"), job.error
    assert job.result["users"] == 40


def _embeddings(db: Path) -> dict[tuple[int, str], bytes]:
    import sqlite3

    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT cell_id, kind, vector FROM embeddings").fetchall()
    return {(cell, kind): vector for cell, kind, vector in rows}


def test_an_environment_built_on_ray_embeds_every_cell_as_the_local_build_does(tmp_path, local_ray):
    """`lsdm env build --executor ray`: 150 cells in two chunks on 2 actors, each loading the newly trained
    encoder from its folder; every stored vector equals the local build's."""

    from engine.env.build import build_environment_for
    from engine.requests import EnvRequest

    first = stored_city(tmp_path / "local.sqlite", users=6, cells=150, seed=5)
    second = tmp_path / "ray.sqlite"
    copy_database(first, second)
    with data_home(tmp_path / "home"):
        summaries = [
            build_environment_for(
                open_database(str(db)), EnvRequest(train_encoder=True, clip_epochs=1, executor=executor, workers=2)
            )
            for db, executor in ((first, "local"), (second, "ray"))
        ]
    assert summaries[0]["embeddings"] == summaries[1]["embeddings"] > 0
    local, on_ray = _embeddings(first), _embeddings(second)
    assert len(local) >= 300 and local.keys() == on_ray.keys()
    different = [key for key in local if local[key] != on_ray[key]]
    assert different == [], f"{len(different)} vectors differ, e.g. {different[:3]}"


# --- every entity's forecast (`lsdm forecast --entity all`) ----------------------------------------------------


def _parts(folder: Path):
    import pandas as pd

    files = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), len(files)


def test_every_entitys_forecast_on_ray_equals_the_local_one_and_each_entitys_own_run(small_city, local_ray, tmp_path):
    """Every user's forecast, locally and on 2 Ray actors: the same Parquet rows and the same total, and a user's
    quantiles there are the ones of a run of that user alone (an entity's paths do not depend on its batch)."""
    from engine.forecast import run_forecast
    from engine.requests import ForecastRequest

    asked = {"start": 300, "every": True, "horizon": 3, "samples": 4, "seed": 5, "location": "sampled"}
    with data_home(small_city.parent):
        database = open_database(str(small_city))
        local = run_forecast(database, ForecastRequest(**asked, out=str(tmp_path / "local")))
        on_ray = run_forecast(database, ForecastRequest(**asked, out=str(tmp_path / "ray"), executor="ray", workers=2))
        alone = run_forecast(database, ForecastRequest.from_params({**asked, "every": False, "entities": ["U0021"]}))
    (first, files), (second, _) = _parts(tmp_path / "local"), _parts(tmp_path / "ray")
    assert files == 3 and len(first) == 40 * 3 * 10 == local["every"]["rows"]  # 40 users, 3 hours, 10 services
    assert set(first.columns) == {"entity", "hour", "time", "service", "mean", "q05", "median", "q95"}
    assert first.equals(second) and local["every"]["total"] == on_ray["every"]["total"]
    assert on_ray["every"]["executor"] == "ray" and not list(tmp_path.glob(".*partial*"))
    mine = first[first["entity"] == "U0021"]
    for step in alone["entities"][0]["steps"]:
        for service, values in step["services"].items():
            row = mine[(mine["hour"] == step["hour"]) & (mine["service"] == service)].iloc[0]
            assert row["median"] == pytest.approx(values["median"], rel=1e-12, abs=1e-6)
            assert row["q95"] == pytest.approx(values["q95"], rel=1e-12, abs=1e-6)
    import sqlite3

    with sqlite3.connect(small_city) as connection:
        stored = connection.execute(
            "SELECT summary, result FROM forecast_runs WHERE id IN (?, ?)", (local["run_id"], on_ray["run_id"])
        ).fetchall()
    assert [json.loads(summary)["every"]["parts"] for summary, _ in stored] == [
        str(tmp_path / "local"),
        str(tmp_path / "ray"),
    ]
    assert all(result is None for _, result in stored)


def test_every_entitys_forecast_refuses_a_used_folder_and_leaves_nothing_when_stopped(small_city, tmp_path):
    from engine.forecast import run_forecast
    from engine.requests import ForecastRequest

    database = open_database(str(small_city))
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("the user's")
    with data_home(small_city.parent):
        runs_before = _run_count(small_city)
        with pytest.raises(InputError) as caught:
            run_forecast(database, ForecastRequest(start=300, every=True, horizon=2, samples=2, out=str(used)))
        assert caught.value.field == "out" and "folder with files in it" in caught.value.message
        assert (used / "mine.txt").read_text() == "the user's"
        with pytest.raises(InputError) as caught:
            ForecastRequest(start=300, entities=("U0001",), out=str(tmp_path / "x")).checked()
        assert caught.value.field == "out"

        class Stop(Exception):
            pass

        def stop_after_the_first_chunk(done: int, total: int) -> None:
            if done >= 16:
                raise Stop

        target = tmp_path / "stopped"
        with pytest.raises(Stop):
            run_forecast(
                database,
                ForecastRequest(start=300, every=True, horizon=2, samples=2, out=str(target)),
                progress=stop_after_the_first_chunk,
            )
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["used"]
    assert _run_count(small_city) == runs_before


def _run_count(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM forecast_runs").fetchone()[0])


def test_a_chunk_reads_only_its_own_entities_and_they_equal_the_whole_data_sets_rows(small_city):
    """What Ray's actors (and every entity's forecast) do instead of loading the city: read a chunk's users,
    in any order, from the database; their traffic, places and seeds are the whole data set's rows."""
    from db.queries import get_dataset
    from engine.data.windows import SeriesReader, load_series

    database = open_database(str(small_city))
    with database.session() as session:
        dataset = get_dataset(session)
        whole = load_series(session, dataset, encoder_id="")
    reader = SeriesReader.open(database, dataset, encoder_id="")
    assert reader.entity_keys == whole.entity_keys and reader.skeleton.traffic.shape == (0, whole.hours, 10)
    assert reader.skeleton.cell_keys == whole.cell_keys
    rows = np.array([17, 3, 39, 4])  # a load run's chunks are ordered by when their users leave the scope
    part, expected = reader.rows(rows), whole.rows(rows)
    assert part.entity_keys == expected.entity_keys == [whole.entity_keys[r] for r in rows]
    assert np.array_equal(part.traffic, expected.traffic) and np.array_equal(part.location, expected.location)
    assert np.array_equal(part.source_row(np.arange(4)), rows) and part.traffic.sum() > 0
