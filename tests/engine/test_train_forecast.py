"""Training, checkpoints, recursive forecasts and forecast runs on a small real city and real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from cli.main import main
from db import open_database
from db.models import ForecastRun, ModelRecord
from db.queries import get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.data.windows import load_series
from engine.env.clip import ClipSettings
from engine.env.pipeline import build_environment
from engine.errors import InputError
from engine.forecast import LocationPlan, load_context, recursive_forecast, run_forecast
from engine.model import Forecaster
from engine.model.config import resolve_config
from engine.requests import ForecastRequest
from engine.train import load_model, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 16-user city with environment embeddings and a tiny trained LSDM model."""
    import os

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("LSDM_HOME")
    os.environ["LSDM_HOME"] = str(home)
    database = open_database(str(home / "lsdm.sqlite"))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=16, cells=24, seed=2)))
    build_environment(database, settings=ClipSettings(epochs=1))
    name, config = resolve_config("tiny")
    result = train(database, name, config)
    yield database, result
    if old is None:
        os.environ.pop("LSDM_HOME", None)
    else:
        os.environ["LSDM_HOME"] = old


@pytest.fixture(autouse=True)
def _home(trained, monkeypatch):
    database, _ = trained
    monkeypatch.setenv("LSDM_HOME", str(Path(database.url.removeprefix("sqlite:///")).parent))


def test_training_registers_an_active_model_with_its_loss_curve(trained):
    database, result = trained
    metrics = result.metrics
    assert metrics["epochs_run"] == 2 and len(metrics["history"]) == 2
    assert all(np.isfinite(e["train_loss"]) and np.isfinite(e["val_loss"]) for e in metrics["history"])
    assert (result.path / "model.safetensors").is_file() and (result.path / "model.json").is_file()
    with database.session() as session:
        record = session.get(ModelRecord, result.record_id)
        assert record.is_active and record.kind == "lsdm" and record.config["channels"] == 16
    document = json.loads((result.path / "model.json").read_text())
    assert document["data"]["encoder_id"].startswith("clip-") and document["normaliser"]["scale"] > 10


def test_checkpoint_reloads_identically_and_refuses_tampering(trained, tmp_path):
    _, result = trained
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(result.path, copy)
    reloaded = Forecaster.load(copy)
    for name, tensor in result.forecaster.model.state_dict().items():
        assert np.array_equal(tensor.cpu().numpy(), reloaded.model.state_dict()[name].numpy())
    document = json.loads((copy / "model.json").read_text())
    document["config"]["channels"] = 32
    document["config"]["heads"] = 4
    (copy / "model.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match="do not match the configuration"):
        Forecaster.load(copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-3] ^= 0x55
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="do not match the hash"):
        Forecaster.load(copy)


def test_recursive_forecast_feeds_each_path_its_own_samples(trained):
    database, _ = trained
    _record, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    result = recursive_forecast(forecaster, series, [0, 3], start=300, horizon=6, samples=5, seed=4)
    assert result.paths.shape == (2, 5, 6, 10) and (result.paths >= 0).all()
    # Paths diverge after the first step: each fed back its own sample.
    assert np.ptp(result.paths_v[0, :, 5], axis=0).max() > 0
    again = recursive_forecast(forecaster, series, [0, 3], start=300, horizon=6, samples=5, seed=4)
    assert np.array_equal(result.paths, again.paths)
    summary = result.summary()
    assert (summary["q05"] <= summary["q25"]).all() and (summary["q25"] <= summary["median"]).all()
    assert (summary["median"] <= summary["q75"]).all() and (summary["q75"] <= summary["q95"]).all()
    np.testing.assert_array_equal(result.truth[0], series.traffic[0, 300:306])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_longer_forecast_begins_with_the_shorter_ones_hours(trained, sampler):
    """The rollout is a loop of next-hour samples: step n draws its noise after step n - 1, so with the same
    seed the first hours of a 4-hour forecast are the 1- and 2-hour forecasts, the first step (where an
    entity's paths share the observed history, encoded once) included. Up to rounding: the shorter span's
    arrays are laid out differently in memory."""
    database, _ = trained
    _, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    common = dict(start=300, samples=4, seed=2, sampler=sampler, steps=5, guidance=1.5)
    long = recursive_forecast(forecaster, series, [0, 3], horizon=4, **common)
    for horizon in (1, 2):
        short = recursive_forecast(forecaster, series, [0, 3], horizon=horizon, **common)
        np.testing.assert_allclose(long.paths_v[:, :, :horizon], short.paths_v, atol=1e-5)
    assert np.ptp(long.paths_v[:, :, 0], axis=1).max() > 0  # the paths differ from the first hour on


def test_a_model_whose_files_were_replaced_since_it_was_registered_is_refused(trained, tmp_path):
    """Issue 20: the weights were checked only against their own model.json, so replacing weights and JSON
    together loaded and recorded the old hash. The database's hash is compared too; and a tampered stored
    configuration (channels 400000 asked for 640 GB) is refused before any tensor is made."""
    import json
    import shutil

    from engine.model import Forecaster

    database, _ = trained
    record, _ = load_model(database)
    with pytest.raises(InputError, match="not the ones registered in the database") as caught:
        Forecaster.load(Path(record.path), expected_sha256="0" * 64)
    assert caught.value.file.endswith("model.safetensors")
    assert Forecaster.load(Path(record.path), expected_sha256=record.sha256).config is not None
    tampered = tmp_path / "tampered"
    shutil.copytree(record.path, tampered)
    document = json.loads((tampered / "model.json").read_text())
    document["config"]["channels"] = 400_000
    (tampered / "model.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match="from 2 to 2048, got 400000") as caught:
        Forecaster.load(tampered)
    assert caught.value.field == "channels"


def test_a_cancellation_check_stops_a_forecast_inside_its_first_hour(trained):
    """Issue 20: cancelling a running forecast waited 58 s, because it was checked once per forecast hour. The
    job's check (engine/errors.py set_interrupt_check, set by the worker) now runs before each denoising step."""
    from engine.errors import set_interrupt_check
    from engine.jobs import JobCancelled

    database, _ = trained
    _, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    calls, hours_done = [], []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:  # the third denoising step of the first hour
            raise JobCancelled()

    set_interrupt_check(check)
    try:
        with pytest.raises(JobCancelled):
            recursive_forecast(
                forecaster, series, [0, 3], start=300, horizon=4, samples=4, steps=5,
                progress=lambda done, total: hours_done.append(done),
            )  # fmt: skip
    finally:
        set_interrupt_check(None)
    assert hours_done == [] and len(calls) == 3  # stopped inside the first hour
    recursive_forecast(forecaster, series, [0], start=300, horizon=1, samples=2, steps=2)  # no check: runs


@pytest.mark.parametrize(("sampler", "location"), [("ddim", "habitual"), ("ddpm", "habitual"), ("ddim", "sampled")])
def test_an_entitys_paths_are_the_same_alone_or_in_any_batch(trained, sampler, location):
    """Issue 19: one user, seed 0, the same settings, must get the same sample paths whoever shares the batch
    (its own noise generator, engine/model/diffusion.py entity_generators), path for path, in either order."""
    database, _ = trained
    _, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    common = dict(start=300, horizon=4, samples=4, seed=0, sampler=sampler, steps=5, plan=LocationPlan(location))
    alone = recursive_forecast(forecaster, series, [3], **common)
    batch = recursive_forecast(forecaster, series, [9, 0, 3, 12, 5], **common)
    reordered = recursive_forecast(forecaster, series, [3, 5, 9], **common)
    np.testing.assert_allclose(batch.paths_v[2], alone.paths_v[0], atol=1e-5)
    np.testing.assert_allclose(reordered.paths_v[0], alone.paths_v[0], atol=1e-5)
    np.testing.assert_allclose(batch.paths_v[0], reordered.paths_v[2], atol=1e-5)  # user 9 too
    assert not np.allclose(batch.paths_v[0], batch.paths_v[1])  # but each entity its own noise
    other_seed = recursive_forecast(forecaster, series, [3], **{**common, "seed": 1})
    assert not np.allclose(other_seed.paths_v, alone.paths_v)


def test_an_entity_listed_twice_gets_two_different_noises():
    """Copies of one profile (an event's visitors) are different users: each occurrence its own generator."""
    from engine.model.diffusion import entity_generators, paired_noise

    noise = paired_noise((3 * 4, 2, 5), entity_generators(7, [5, 5, 8]), block=4)
    assert not torch.allclose(noise[0:4], noise[4:8])
    assert torch.equal(noise[8:12], paired_noise((4, 2, 5), entity_generators(7, [8]), block=4))
    assert torch.equal(noise[0:4], paired_noise((4, 2, 5), entity_generators(7, [5]), block=4))
    assert torch.equal(noise[2:4], -noise[0:2])  # antithetic within each entity's block
    with pytest.raises(ValueError, match="equal groups"):
        paired_noise((10, 2, 5), entity_generators(7, [1, 2, 3]), block=1)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (the CPU-only check of the device "
    "handling is tests/engine/model/test_diffusion.py::test_loss_and_samplers_keep_every_tensor_"
    "on_the_models_device)",
)
def test_cuda_trains_and_agrees_with_the_cpu_within_tolerance(trained):
    """The same checkpoint on CUDA and on the CPU, same seed: the noise is drawn on the CPU from the seeded
    generator on both, so the forecasts differ by floating point only. Training runs on CUDA too."""
    database, result = trained
    _, on_cpu = load_model(database, result.record_id, device="cpu")
    _, on_gpu = load_model(database, result.record_id, device="cuda")
    assert on_gpu.device.type == "cuda"
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    for sampler in ("ddim", "ddpm"):
        cpu = recursive_forecast(on_cpu, series, [0, 3, 5], start=300, horizon=3, samples=8, seed=4, sampler=sampler)
        gpu = recursive_forecast(on_gpu, series, [0, 3, 5], start=300, horizon=3, samples=8, seed=4, sampler=sampler)
        assert np.abs(cpu.paths_v.mean(1) - gpu.paths_v.mean(1)).max() < 2e-3, sampler
        assert np.mean(np.abs(cpu.paths_v - gpu.paths_v) < 1e-3) > 0.99, sampler
    name, config = resolve_config("tiny", epochs=1)
    trained_on_gpu = train(database, name, config, activate=False, device="cuda")
    assert trained_on_gpu.metrics["device"].startswith("cuda")
    assert np.isfinite(trained_on_gpu.metrics["best_val_loss"])


def test_forecast_beyond_the_data_has_no_truth_and_uses_habitual_cells(trained):
    database, _ = trained
    _, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    result = recursive_forecast(forecaster, series, [1], start=330, horizon=12, samples=3)
    assert np.isnan(result.truth[0, 6:]).all() and not np.isnan(result.truth[0, :6]).any()
    expected = [series.habitual_cell(1, 330 + n, before=330) for n in range(12)]
    assert result.cells[0].tolist() == expected


def test_observed_plan_uses_the_recorded_cells_and_the_habitual_ones_beyond_the_data(trained):
    database, _ = trained
    _, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    start = series.hours - 4
    observed = recursive_forecast(
        forecaster, series, [1, 5], start=start, horizon=8, samples=2, plan=LocationPlan.parse("observed", series)
    )
    for row, entity in enumerate([1, 5]):
        recorded = series.location[entity, start:].tolist()
        assert observed.cells[row, :4].tolist() == recorded
        assert observed.cells[row, 4:].tolist() == [
            series.habitual_cell(entity, start + n, before=start) for n in range(4, 8)
        ]
    # A recorded hour the user spent away from the usual cell: the two plans condition on different places.
    differs = [
        (e, h)
        for e in range(len(series.entity_ids))
        for h in range(200, series.hours)
        if series.location[e, h] >= 0 and series.location[e, h] != series.habitual_cell(e, h, before=h)
    ]
    assert differs
    entity, hour = differs[0]
    plans = {
        name: recursive_forecast(
            forecaster,
            series,
            [entity],
            start=hour,
            horizon=1,
            samples=4,
            seed=3,
            plan=LocationPlan.parse(name, series),
        )
        for name in ("observed", "habitual")
    }
    assert plans["observed"].cells[0, 0] == series.location[entity, hour] != plans["habitual"].cells[0, 0]
    assert not np.array_equal(plans["observed"].paths, plans["habitual"].paths)
    with pytest.raises(InputError, match="observed") as caught:
        LocationPlan.parse("seen", series)
    assert caught.value.field == "location"  # the engine names the request's fields; only the CLI names flags


def test_location_scenario_changes_an_environment_conditioned_forecast(trained):
    database, _ = trained
    _, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    home = recursive_forecast(forecaster, series, [2], start=300, horizon=3, samples=4, seed=1)
    hub_key = series.cell_keys[int(np.argmax(np.linalg.norm(series.env - series.env[home.cells[0, 0]], axis=1)))]
    moved = recursive_forecast(
        forecaster,
        series,
        [2],
        start=300,
        horizon=3,
        samples=4,
        seed=1,
        plan=LocationPlan.parse(f"cell:{hub_key}", series),
    )
    assert moved.cells[0].tolist() == [series.cell_keys.index(hub_key)] * 3
    assert not np.array_equal(home.paths, moved.paths)


def test_the_model_reads_the_usual_place_and_an_edit_of_a_past_place_changes_only_the_future(trained):
    """The default configuration reads [the cell's embedding, the entity's usual one at that hour of day].
    A place the entity was in before the start, edited, changes the forecast only where the forecast hours
    are spent there: given the embeddings the history was recorded under (``history_env``), a forecast
    that stays elsewhere is the unedited one path for path; read from the edited embeddings, its past and
    its usual environment change, and so does the forecast."""
    from dataclasses import replace

    database, _ = trained
    _, forecaster = load_model(database)
    assert forecaster.config.uses_env_profile
    assert forecaster.model.env_proj[0].in_features == 2 * forecaster.env_dim
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    entity, start = 2, 300
    visited = np.unique(series.location[entity, :start])
    visited = visited[visited >= 0]
    past = int(visited[np.argmax([(series.location[entity, start - 24 : start] == c).sum() for c in visited])])
    elsewhere = next(c for c in range(len(series.cell_keys)) if c not in visited)
    plan = LocationPlan.parse(f"cell:{series.cell_keys[elsewhere]}", series)
    edited_env = series.env.copy()
    edited_env[past] = -series.env[past]
    edited = replace(series, env=edited_env)
    common = dict(start=start, horizon=3, samples=4, seed=1, plan=plan)
    baseline = recursive_forecast(forecaster, series, [entity], **common)
    as_recorded = recursive_forecast(forecaster, edited, [entity], history_env=series.env, **common)
    assert np.array_equal(baseline.paths, as_recorded.paths)
    rewritten = recursive_forecast(forecaster, edited, [entity], **common)
    assert not np.array_equal(baseline.paths, rewritten.paths)


def test_cli_forecast_stores_a_reproducible_run(trained, capsys):
    database, _ = trained
    argv = [
        "forecast",
        "--db",
        database.url,
        "--entity",
        "user:U0004",
        "--start",
        "310",
        "--horizon",
        "4",
        "--samples",
        "6",
        "--seed",
        "9",
        "--json",
    ]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert isinstance(first["run_id"], int) and first["seconds"] > 0
    steps = first["entities"][0]["steps"]
    assert [s["hour"] for s in steps] == [310, 311, 312, 313] and steps[0]["label"] == "Sat 22:00"
    assert set(steps[0]["services"]["Games"]) >= {"mean", "median", "q05", "q25", "q75", "q95", "truth"}
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    with database.session() as session:
        runs = {r.id: r for r in session.scalars(select(ForecastRun))}
        assert runs[first["run_id"]].result == runs[second["run_id"]].result  # reproduced exactly
        assert runs[first["run_id"]].params["model_sha256"] and runs[first["run_id"]].params["seed"] == 9
        assert runs[first["run_id"]].params["noise"] == "antithetic"
    # Independent noise is another run of the same model: other paths, stored as such.
    assert main([*argv, "--noise", "independent"]) == 0
    third = json.loads(capsys.readouterr().out)
    with database.session() as session:
        run = session.get(ForecastRun, third["run_id"])
        assert run.params["noise"] == "independent" and run.result != runs[first["run_id"]].result


def test_antithetic_paths_give_a_steadier_mean_at_every_step(trained):
    """Across seeds, the mean of an entity's 8 antithetic paths varies less than that of 8 independent
    ones, at the first step (one noise draw per path) and later ones (paths fed back their own samples)."""
    database, _ = trained
    _record, forecaster = load_model(database)
    with database.session() as session:
        series = load_series(session, get_dataset(session), encoder_id=forecaster.meta["data"]["encoder_id"])

    def spread(antithetic: bool) -> np.ndarray:  # variance over seeds of the path mean, per step
        means = np.stack(
            [
                recursive_forecast(
                    forecaster, series, [0, 1, 2, 3], start=300, horizon=3, samples=8, seed=seed, antithetic=antithetic
                ).paths_v.mean(1)
                for seed in range(24)
            ]
        )  # (seeds, E, steps, K)
        return means.var(0).mean(axis=(0, 2))  # (steps,)

    paired, independent = spread(True), spread(False)
    assert (paired < 0.8 * independent).all(), (paired, independent)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--start", "5"], "field '--start'"),
        (["--start", "300", "--entity", "user:nobody"], "no user 'nobody'"),
        (["--start", "300", "--sampler", "ddim:x"], "field '--sampler'"),
        (["--start", "300", "--noise", "pink"], "--noise"),
        (["--start", "300", "--location", "cell:C9999"], "unknown cell 'C9999'"),
        (["--start", "300", "--model", "999"], "no forecasting model with id 999"),
    ],
)
def test_bad_forecast_requests_exit_2_and_store_nothing(trained, capsys, extra, message):
    database, _ = trained
    with database.session() as session:
        before = session.scalar(select(func.count()).select_from(ForecastRun))
    argv = ["forecast", "--db", database.url, "--entity", "user:U0001", *extra]
    if "--entity" in extra:
        argv = ["forecast", "--db", database.url, *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(ForecastRun)) == before


def test_training_an_environment_model_without_embeddings_is_refused(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=4, cells=10, seed=1)))
    name, config = resolve_config("tiny")
    with pytest.raises(InputError, match="no environment embeddings"):
        train(database, name, config)
    name, config = resolve_config("tiny", condition="none")
    assert train(database, name, config).metrics["epochs_run"] == 2


def test_run_forecast_returns_without_storing_when_asked(trained):
    database, _ = trained
    payload = run_forecast(database, ForecastRequest(entities=("U0000",), start=300, horizon=2, samples=2), store=False)
    assert payload["run_id"] is None and len(payload["entities"][0]["steps"]) == 2


def test_evaluate_writes_the_papers_tables_with_every_method(trained, tmp_path, capsys):
    database, _ = trained
    report = tmp_path / "report"
    status = main(
        [
            "evaluate",
            "--db",
            database.url,
            "--report",
            str(report),
            "--samples",
            "4",
            "--steps",
            "6",
            "--path-users",
            "4",
            "--no-learned",  # lightgbm/patchtst: minutes here; scored in tests/app/test_models.py's fixture
            "--json",
        ]
    )
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    methods = [row["method"] for row in result["rows"]]
    assert any(note.startswith("Learned baselines (lightgbm, patchtst) left out") for note in result["notes"])
    assert methods == [
        "seasonal-naive",
        "hour-of-week-mean",
        "arima",
        "ridge",
        "csdi-like",
        "lsdm-no-condition",
        "lsdm",
    ]
    for row in result["rows"]:
        assert set(row) >= {"method", "mse", "rmse", "mae", "cs", "r2", "crps", "cov50", "cov90"}
        assert row["rmse"] == pytest.approx(row["mse"] ** 0.5, rel=1e-4) and 0 <= row["cov90"] <= 1
    floor = result["seasonal_floor"]
    lsdm_row = result["rows"][-1]
    assert floor["clears"] == (lsdm_row["rmse"] < floor["rmse"] and lsdm_row["crps"] < floor["crps"])
    assert floor["rmse"] == min(r["rmse"] for r in result["rows"][:2])
    assert any(note.startswith("Seasonal floor:") for note in result["notes"])
    ridge = next(r for r in result["rows"] if r["method"] == "ridge")  # the linear mean with residual quantiles
    assert 0.6 <= ridge["cov90"] <= 1 and ridge["mse"] != result["rows"][0]["mse"]
    assert [r["method"] for r in result["table4"]] == [
        "no-2d-attention",
        "env-input",
        "shuffled-environment",
        "lsdm-no-condition",
        "lsdm",
    ]
    # The permutation test: the evaluated model itself, given other users' cells, scored on the same windows.
    shuffled = next(r for r in result["table4"] if r["method"] == "shuffled-environment")
    assert shuffled["model_id"] == result["model_id"] and shuffled["mse"] != result["rows"][-1]["mse"]
    interval = result["environment_gain_interval"]
    assert interval["low"] <= result["environment_gain_r2_percent"] <= interval["high"]
    assert any("other users' cells" in note for note in result["notes"])
    encoder = result["environment_encoder"]  # issue 18: whether the condition's encoder is above chance, said
    assert encoder["encoder"] and isinstance(encoder["above_chance"], bool | None)
    # --env-mode auto: the text embedding alone exactly when the encoder is not clearly above chance.
    assert encoder["z_env"] == ("text" if encoder["above_chance"] is False else "both")
    assert any(note.startswith(f"Environment encoder {encoder['encoder']}: ") for note in result["notes"])
    assert [r["method"] for r in result["bytes_rows"]] == methods
    assert result["bytes_rows"][-1]["mse"] > 1e6 * result["rows"][-1]["mse"]  # the same scores, in bytes
    assert set(result["mse_by_step"]) >= {"lsdm", "arima", "seasonal-naive"}
    assert all(len(v) == 6 for v in result["mse_by_step"].values())
    assert set(result["per_service_r2"]["lsdm"]) == set(result["per_service_r2"]["arima"])
    written = {p.name for p in report.iterdir()}
    assert {"report.md", "table3.csv", "table4.csv"} <= written and any(n.endswith(".png") for n in written)
    # The comparison models were trained once and are reused by the next evaluation.
    with database.session() as session:
        names = session.scalars(select(ModelRecord.name).where(ModelRecord.kind == "lsdm")).all()
    assert sorted(names).count("csdi-like") == 1
    assert result["location"] == "observed"


def test_the_seasonal_floor_names_the_better_seasonal_mean_and_says_whether_lsdm_clears_it():
    from engine.evaluation.evaluate import seasonal_floor

    rows = {
        "seasonal-naive": {"method": "seasonal-naive", "rmse": 0.30, "crps": 0.10},
        "hour-of-week-mean": {"method": "hour-of-week-mean", "rmse": 0.20, "crps": 0.12},
        "lsdm": {"method": "lsdm", "rmse": 0.25, "crps": 0.09},
    }
    floor = seasonal_floor(rows)
    assert (floor["rmse_method"], floor["crps_method"], floor["clears"]) == (
        "hour-of-week-mean",
        "seasonal-naive",
        False,
    )
    assert "does NOT clear it" in floor["note"]
    rows["lsdm"]["rmse"] = 0.19
    assert seasonal_floor(rows)["clears"] is True
    assert seasonal_floor({"lsdm": rows["lsdm"]})["clears"] is None


def test_the_ridge_row_is_the_models_linear_mean_with_its_training_residual_quantiles(trained):
    from engine.data.windows import HourlyProfile, SplitSpec, make_splits
    from engine.evaluation.evaluate import ridge_samples
    from engine.train import to_batch

    database, result = trained
    context = load_context(database, model_id=result.record_id)
    forecaster, series = context.forecaster, context.series
    splits = make_splits(series, SplitSpec(history=forecaster.config.history))
    samples = ridge_samples(forecaster, series, splits, n_samples=9)
    assert samples.shape == (9, len(splits.test), 1, len(series.services))
    assert (np.diff(samples, axis=0) >= 0).all()  # quantile levels in order
    # The middle level is g plus the median training residual: g from the model's own linear mean here.
    values = forecaster.normaliser.forward(series.traffic)
    profile = HourlyProfile.build(series, values, int(splits.test.hour.min()), env=forecaster.config.uses_env_profile)
    batch = to_batch(series, values, splits.test, splits.spec, torch.device("cpu"), profile)
    with torch.no_grad():
        g = forecaster.model.linear_mean(
            batch["history"], batch["profile"], batch["env"], batch["hours"], batch["days"]
        ).numpy()
    offset = samples[4] - g  # where not clipped at 0, one offset per service
    unclipped = samples[4] > 0
    for k in range(len(series.services)):
        spread = offset[..., k][unclipped[..., k]]
        assert spread.size and np.ptp(spread) < 1e-5


def test_evaluate_conditions_on_the_recorded_or_the_habitual_cells(trained, capsys):
    """``--location observed`` (default) feeds the cells the data recorded at the test hours, as training
    does; ``habitual`` forecasts the location too; anything else is an input error naming the flag."""
    database, _ = trained
    common = [
        "evaluate",
        "--db",
        database.url,
        "--samples",
        "4",
        "--steps",
        "2",
        "--path-users",
        "2",
        "--no-train",
        "--no-arima",
        "--no-learned",
        "--json",
    ]
    scores = {}
    for location in ("observed", "habitual"):
        assert main([*common, "--location", location]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["location"] == location and any(location in note for note in result["notes"])
        scores[location] = {row["method"]: row["mse"] for row in result["rows"]}
    # The baselines do not read the environment; the conditioned model does.
    assert scores["observed"]["seasonal-naive"] == scores["habitual"]["seasonal-naive"]
    assert scores["observed"]["lsdm"] != scores["habitual"]["lsdm"]
    assert main([*common, "--location", "elsewhere"]) == 2
    assert "--location" in capsys.readouterr().err


def test_exported_windows_score_outside_predictions_with_the_same_metrics(trained, tmp_path, capsys):
    database, _ = trained
    windows = tmp_path / "windows.npz"
    assert main(["export", "windows", "--db", database.url, "--out", str(windows), "--json"]) == 0
    capsys.readouterr()
    with np.load(windows, allow_pickle=False) as npz:
        test = npz["split"] == "test"
        perfect = npz["target"][test]
    predictions = tmp_path / "pred.npz"
    np.savez(predictions, prediction=perfect, method="oracle")
    assert main(["score", "--predictions", str(predictions), "--windows", str(windows), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["r2"] == pytest.approx(1.0) and scored["mse"] == pytest.approx(0.0)


def test_forecast_samples_are_whole_bytes_with_exact_zeros(trained):
    """A sample below half a byte is 0 bytes (Normaliser.snap), also in what is fed back."""
    database, _ = trained
    _record, forecaster = load_model(database)
    with database.session() as session:
        from db.queries import get_dataset
        from engine.data.windows import load_series

        series = load_series(session, get_dataset(session), env_kind=forecaster.config.env_kind)
    result = recursive_forecast(
        forecaster, series, [0, 1, 2], start=forecaster.config.history + 5, horizon=4, samples=8, seed=1
    )
    assert np.all((result.paths == 0) | (result.paths >= 0.5))
    assert np.all((result.paths_v == 0) | (result.paths_v >= forecaster.normaliser.zero_below))
    assert (result.paths == 0).any(), "a sparse city has hours without traffic: some samples are exactly 0"
    assert forecaster.normaliser.snap(
        np.array([-0.1, 0.0, forecaster.normaliser.zero_below * 0.99, 0.5], np.float32)
    ).tolist() == [0.0, 0.0, 0.0, 0.5]


def test_evaluation_compares_only_with_models_of_the_same_architecture(trained):
    """A registered comparison model from an older version of its configuration (here: without the linear
    mean feature) is not used; one trained with ``comparison_config`` is."""
    from dataclasses import replace as _replace

    from engine.evaluation.evaluate import _comparison_model, comparison_config

    database, _ = trained
    _, base = load_model(database)
    base = _replace(base, config=_replace(base.config, seed=5))  # none of the other tests' models match it
    with database.session() as session:
        dataset = get_dataset(session)
        dataset_id, dataset_name = dataset.id, dataset.name
    expected = comparison_config("env-input", base.config)
    assert expected.condition == "input" and expected.prior == base.config.prior == "feature"
    assert expected.channels == base.config.channels and expected.seed == 5
    stale = train(database, "env-input", _replace(expected, prior="none"), activate=False)
    assert _comparison_model(database, dataset_id, dataset_name, "env-input", base, False, print) is None
    train(database, "env-input", _replace(expected, env_profile=False), activate=False)  # without the usual place
    assert _comparison_model(database, dataset_id, dataset_name, "env-input", base, False, print) is None
    fresh = train(database, "env-input", expected, activate=False)
    found = _comparison_model(database, dataset_id, dataset_name, "env-input", base, False, print)
    assert found is not None and found[0].id == fresh.record_id != stale.record_id


def test_shuffled_locations_give_every_entity_another_entitys_whole_history(trained):
    from engine.evaluation.evaluate import shuffled_locations

    database, _ = trained
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    shuffled = shuffled_locations(series, seed=0)
    rows = [
        next(
            j
            for j in range(len(series.location))
            if np.array_equal(shuffled.location[i], series.location[j]) and j != i
        )
        for i in range(len(series.location))
    ]
    assert sorted(rows) == list(range(len(series.location)))  # a permutation, and nobody keeps their own row
    assert shuffled.traffic is series.traffic and shuffled.env is series.env
    assert np.array_equal(shuffled_locations(series, seed=0).location, shuffled.location)
    assert not np.array_equal(shuffled_locations(series, seed=1).location, shuffled.location)
