"""Held-out users and a second city ("new city" generalisation), on real SQLite and real training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from cli.main import main
from db import open_database
from db.models import ModelRecord
from db.queries import get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.data.windows import load_series
from engine.env.clip import ClipSettings
from engine.env.pipeline import build_environment
from engine.evaluation.evaluate import evaluate
from engine.model.config import resolve_config
from engine.train import load_model, train


@pytest.fixture(scope="module")
def two_cities(tmp_path_factory):
    """City A (seed 2) with its encoder and a tiny model; city B (seed 3) embedded with A's encoder."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:  # module scope: the per-test home fixture is not active yet
        patch.setenv("LSDM_HOME", str(home))
        database = open_database(str(home / "lsdm.sqlite"))
        with database.write_session() as session, session.begin():
            store_dataset(session, generate_city(CityConfig(users=16, cells=24, seed=2), name="city-a"))
            store_dataset(session, generate_city(CityConfig(users=12, cells=20, seed=3), name="city-b"))
        build_environment(database, dataset_name="city-a", settings=ClipSettings(epochs=1))
        name, config = resolve_config("tiny")
        yield database, train(database, name, config, dataset_name="city-a")


@pytest.fixture(autouse=True)
def _home(two_cities, monkeypatch):
    database, _ = two_cities
    monkeypatch.setenv("LSDM_HOME", str(database.url.removeprefix("sqlite:///").rsplit("/", 1)[0]))


def _series(database, name, encoder_id=None):
    with database.session() as session:
        return load_series(session, get_dataset(session, name), encoder_id=encoder_id)


def test_env_build_with_a_registered_encoder_embeds_another_city_for_the_same_model(two_cities, capsys):
    database, result = two_cities
    _, forecaster = load_model(database, result.record_id)
    encoder_id = forecaster.meta["data"]["encoder_id"]
    # Unknown encoder: a clear error naming the flag, nothing written.
    assert main(["env", "build", "--db", database.url, "--dataset", "city-b", "--encoder", "clip-nope"]) == 2
    assert "--encoder" in capsys.readouterr().err
    assert _series(database, "city-b").encoder_id is None
    assert main(["env", "build", "--db", database.url, "--dataset", "city-b", "--encoder", encoder_id, "--train"]) == 2
    assert "--encoder" in capsys.readouterr().err
    assert main(["env", "build", "--db", database.url, "--dataset", "city-b", "--encoder", encoder_id, "--json"]) == 0
    capsys.readouterr()
    b = _series(database, "city-b")
    assert b.encoder_id == encoder_id and b.env.shape[1] == forecaster.env_dim
    # Same encoder, same embedding for the same tile and text: city A's own embeddings are untouched.
    a = _series(database, "city-a")
    assert a.encoder_id == encoder_id and np.isfinite(a.env).all()


def test_evaluate_scores_a_model_on_a_new_city_without_storing_it(two_cities, capsys):
    database, result = two_cities
    _, forecaster = load_model(database, result.record_id)
    encoder_id = forecaster.meta["data"]["encoder_id"]
    if _series(database, "city-b").encoder_id != encoder_id:
        assert (
            main(["env", "build", "--db", database.url, "--dataset", "city-b", "--encoder", encoder_id, "--json"]) == 0
        )
        capsys.readouterr()
    status = main(
        [
            "evaluate",
            "--db",
            database.url,
            "--model",
            str(result.record_id),
            "--dataset",
            "city-b",
            "--samples",
            "3",
            "--steps",
            "4",
            "--path-users",
            "3",
            "--no-arima",
            "--no-learned",
            "--json",
        ]
    )
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "city-b" and out["trained_on"] == "city-a" and out["split"] == "time"
    methods = [row["method"] for row in out["rows"]]
    assert methods == ["seasonal-naive", "hour-of-week-mean", "ridge", "csdi-like", "lsdm-no-condition", "lsdm"]
    assert any("trained on 'city-a'" in note for note in out["notes"])
    b = _series(database, "city-b")
    assert f"({b.traffic.shape[0] * 24} windows)" in out["notes"][0]  # every city-B user on its test day
    with database.session() as session:
        record = session.get(ModelRecord, result.record_id)
        assert "evaluation" not in (record.metrics or {})  # only an evaluation on its own data is stored
        # The comparison models were trained on city A, the model's own data.
        homes = {r.name: r.dataset_id for r in session.scalars(select(ModelRecord).where(ModelRecord.kind == "lsdm"))}
        assert homes["csdi-like"] == homes["tiny"] == get_dataset(session, "city-a").id
    # A data set embedded with another encoder is refused with the reason.
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=6, cells=10, seed=4), name="city-c"))
    assert (
        main(
            [
                "evaluate",
                "--db",
                database.url,
                "--model",
                str(result.record_id),
                "--dataset",
                "city-c",
                "--no-arima",
                "--no-train",
            ]
        )
        == 2
    )
    assert "encoder" in capsys.readouterr().err


def test_a_users_split_model_is_evaluated_on_held_out_users_against_users_split_comparisons(two_cities):
    database, _ = two_cities
    _, config = resolve_config("tiny")
    held = train(database, "tiny", config, dataset_name="city-a", split="users", activate=False)
    result = evaluate(
        database,
        held.record_id,
        samples=2,
        steps=3,
        path_users=2,
        include_arima=False,
        include_learned=False,
        store=False,
    )
    assert result["split"] == "users"
    assert any("held out of training" in note for note in result["notes"])
    n_held = round(16 * 0.2)
    assert f"({n_held * 24} windows)" in result["notes"][0]
    by_method = {row["method"]: row for row in result["rows"]}
    _, no_condition = load_model(database, by_method["lsdm-no-condition"]["model_id"])
    assert no_condition.meta["split"] == "users"  # not the time-split one trained by the other test


def test_the_evaluate_job_scores_another_data_set_and_links_no_stored_evaluation(two_cities, capsys):
    from engine.jobs import JobWorker, enqueue, get_job

    database, result = two_cities
    _, forecaster = load_model(database, result.record_id)
    if _series(database, "city-b").encoder_id != forecaster.meta["data"]["encoder_id"]:
        assert (
            main(
                [
                    "env",
                    "build",
                    "--db",
                    database.url,
                    "--dataset",
                    "city-b",
                    "--encoder",
                    forecaster.meta["data"]["encoder_id"],
                    "--json",
                ]
            )
            == 0
        )
        capsys.readouterr()
    job_id = enqueue(
        database,
        "evaluate",
        {
            "model_id": result.record_id,
            "dataset": "city-b",
            "samples": 2,
            "steps": 2,
            "path_users": 2,
            "include_arima": False,
            "include_learned": False,
            "train_missing": False,
            "location": "habitual",
        },
    )
    assert JobWorker(database).drain() == 1
    job = get_job(database, job_id)
    assert job.status == "done", job.error
    assert job.result_ref is None  # nothing stored with the model to link to
    assert job.result["dataset"] == "city-b" and "lsdm" in job.result["table3"]
    assert job.result["location"] == "habitual"


def test_a_model_with_the_linear_prior_fits_it_saves_it_and_forecasts_around_it(two_cities):
    import dataclasses

    import torch

    from engine.forecast import recursive_forecast

    database, _ = two_cities
    _, config = resolve_config("tiny")
    result = train(
        database, "tiny-prior", dataclasses.replace(config, prior="linear"), dataset_name="city-a", activate=False
    )
    _, loaded = load_model(database, result.record_id)
    prior = loaded.model.prior
    assert prior is not None and prior.uses_env and prior.weight.abs().sum() > 0
    assert torch.equal(prior.weight, result.forecaster.model.prior.weight.cpu())  # saved with the weights
    assert abs(loaded.standardiser.mean) < 0.05  # the diffusion's values are residuals around the prior
    series = _series(database, "city-a")
    start = loaded.config.history + 40
    one = recursive_forecast(loaded, series, [2, 5], start=start, horizon=3, samples=4, seed=3)
    again = recursive_forecast(loaded, series, [2, 5], start=start, horizon=3, samples=4, seed=3)
    np.testing.assert_array_equal(one.paths, again.paths)
    assert np.isfinite(one.paths_v).all() and (one.paths_v >= 0).all() and (one.paths_v <= 1 + 1e-5).all()
