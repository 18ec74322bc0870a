"""The kinds of job the worker runs (engine/jobs.py): each checks its parameters when queued and runs
the engine function the command line runs, reporting progress and writing its result in one transaction.

| kind | lane | parameters | result_ref |
|---|---|---|---|
| ``setup.default`` | batch | none | ``dataset:ID`` (first launch: default city + shipped model) |
| ``city.build`` | batch | users, cells, seed, days, env_effect, name, replace | ``dataset:ID`` |
| ``ingest.table`` | batch | records, cells, mapping, entity_kind, timezone, name, replace, uploads_dir | ``dataset:ID`` |
| ``ingest.tsinghua`` | batch | trace, app2category, categories, poi, coords, all_services, name, replace, uploads_dir | ``dataset:ID`` |
| ``env.build`` | batch | tiles, describer, describer_options, regenerate, train_encoder, clip_epochs, encoder | ``encoder:NAME`` |
| ``assets.install`` | batch | none | ``model:ID`` |
| ``train`` | batch | config, epochs, seed, max_minutes, activate, split | ``model:ID`` |
| ``evaluate`` | batch | model_id, samples, steps, path_users, include_arima, train_missing, dataset, location | ``evaluation:MODEL_ID`` |
| ``forecast`` | interactive | entity, start, horizon, samples, sampler, location, guidance, seed, noise, model_id | ``forecast_run:ID`` |
| ``whatif`` | interactive | entity, start, horizon, samples, sampler, seed, scenario, name | ``scenario:ID`` |

Files named in an ingest's parameters are read from disk by the worker; the app saves uploads under
``<data dir>/uploads/...`` and passes that folder as ``uploads_dir`` (removed when the job ends) and
the files' own names as ``names``, which error messages then use instead of the folder's paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from engine.errors import InputError
from engine.jobs import JobContext, Outcome, job_kind

_MISSING = object()


# --- checking parameters ----------------------------------------------------------------------------


def _only(params: dict, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(f"unknown parameter; expected some of {', '.join(sorted(allowed)) or 'none'}",
                         field=unknown[0])


def _number(params: dict, name: str, kind: type, default: object = _MISSING, *, low: float | None = None,
            high: float | None = None, optional: bool = False) -> None:
    if params.get(name) is None:
        if optional:
            params[name] = None
            return
        if default is _MISSING:
            raise InputError("is required", field=name)
        params[name] = default
        return
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and float(value) != int(value)):
        raise InputError(f"expected {'a whole number' if kind is int else 'a number'}, got {value!r}", field=name)
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else \
            (f">= {low}" if low is not None else f"<= {high}")
        raise InputError(f"expected a value {bounds}, got {value}", field=name)
    params[name] = value


def _flag(params: dict, name: str, default: bool = False) -> None:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise InputError(f"expected true or false, got {value!r}", field=name)
    params[name] = value


def _text(params: dict, name: str, default: object = _MISSING, *, choices: tuple[str, ...] | None = None,
          max_length: int = 500) -> None:
    value = params.get(name)
    if value is None or value == "":
        if default is _MISSING:
            raise InputError("is required", field=name)
        params[name] = default
        return
    if not isinstance(value, str):
        raise InputError(f"expected text, got {value!r}", field=name)
    if choices and value not in choices:
        raise InputError(f"expected one of {', '.join(choices)}, got {value!r}", field=name)
    if len(value) > max_length:
        raise InputError(f"has {len(value)} characters; at most {max_length}", field=name)
    params[name] = value


def _file(params: dict, name: str, *, optional: bool = False) -> None:
    value = params.get(name)
    if not value:
        if optional:
            params[name] = None
            return
        raise InputError("is required: the path of a file", field=name)
    if not isinstance(value, str) or not Path(value).is_file():
        raise InputError("no such file", file=str(value), field=name)
    params[name] = str(Path(value).resolve())


def _uploads(params: dict) -> None:
    _text(params, "uploads_dir", None, max_length=1000)
    names = params.get("names") or {}
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise InputError("expected an object {path: file name}", field="names")
    params["names"] = names


def _readable(error: InputError, params: dict) -> InputError:
    """The engine's message with upload paths replaced by the files' own names."""
    message = str(error)
    for path, name in (params.get("names") or {}).items():
        message = message.replace(path, name)
    if params.get("uploads_dir"):
        message = message.replace(params["uploads_dir"], "…")
    file = (params.get("names") or {}).get(error.file or "", error.file)
    out = InputError(message)
    out.file, out.line, out.field = file, error.line, error.field
    return out


# --- data sets ----------------------------------------------------------------------------------------


def _store_new(ctx: JobContext, content, *, replace: bool) -> Outcome:  # noqa: ANN001
    """Store a data set and make it active (one transaction); an existing name only when ``replace``."""
    from db.models import Dataset
    from db.queries import dataset_summary, store_dataset

    ctx.progress(0.8, f"storing {content.name!r} ...")
    with ctx.database.write_session() as session, session.begin():
        taken = session.scalar(select(Dataset.id).where(Dataset.name == content.name))
        if taken is not None and not replace:
            raise InputError(f"a data set named {content.name!r} exists already; choose another name or ask to "
                             "replace it", field="name")
        dataset = store_dataset(session, content, activate=True)
        session.flush()
        summary = dataset_summary(session, dataset)
        dataset_id = dataset.id
    return Outcome(f"dataset:{dataset_id}", summary, f"stored {summary['dataset']!r}: {summary['entities']} "
                                                    f"{summary['entity_kind']}s, {summary['cells']} cells")


def _read_and_store(ctx: JobContext, read: Callable[[], object]) -> Outcome:
    """An ingest: read and check the files (errors name the uploaded files), then store the data set."""
    try:
        content = read()
    except InputError as error:
        raise _readable(error, ctx.params) from None
    return _store_new(ctx, content, replace=ctx.params["replace"])


def _check_city(params: dict) -> dict:
    _only(params, {"users", "cells", "seed", "days", "env_effect", "name", "replace"})
    _number(params, "users", int, 500, low=1, high=100_000)
    _number(params, "cells", int, 400, low=1, high=20_000)
    _number(params, "seed", int, 0, low=0)
    _number(params, "days", int, 14, low=8, high=60)
    _number(params, "env_effect", float, 1.0, low=0.0, high=5.0)
    _text(params, "name", None, max_length=200)
    _flag(params, "replace", False)
    return params


@job_kind("city.build", "Build a synthetic city", check=_check_city, changes_data=True)
def _city_build(ctx: JobContext) -> Outcome:
    from engine.data.city import CityConfig, generate_city

    p = ctx.params
    ctx.progress(0.05, "generating the city ...")
    content = generate_city(CityConfig(users=p["users"], cells=p["cells"], seed=p["seed"], days=p["days"],
                                       env_effect=p["env_effect"]), name=p["name"])
    return _store_new(ctx, content, replace=p["replace"])


def _check_table(params: dict) -> dict:
    _only(params, {"records", "cells", "mapping", "entity_kind", "timezone", "name", "replace", "uploads_dir",
                   "names"})
    _file(params, "records")
    _file(params, "cells")
    _file(params, "mapping", optional=True)
    _text(params, "entity_kind", None, choices=("user", "cell"))
    _text(params, "timezone", None, max_length=64)
    _text(params, "name", None, max_length=200)
    _flag(params, "replace", False)
    _uploads(params)
    return params


@job_kind("ingest.table", "Ingest a traffic table", check=_check_table, changes_data=True)
def _ingest_table(ctx: JobContext) -> Outcome:
    from engine.data.ingest_table import read_table

    p = ctx.params
    ctx.progress(0.05, "reading and checking the files ...")
    return _read_and_store(ctx, lambda: read_table(p["records"], p["cells"], p["mapping"], entity_kind=p["entity_kind"],
                                                   timezone=p["timezone"], name=p["name"]))


def _check_tsinghua(params: dict) -> dict:
    _only(params, {"trace", "app2category", "categories", "poi", "coords", "all_services", "name", "replace",
                   "uploads_dir", "names"})
    for name in ("trace", "app2category", "categories", "poi"):
        _file(params, name)
    _file(params, "coords", optional=True)
    _flag(params, "all_services", False)
    _text(params, "name", "tsinghua", max_length=200)
    _flag(params, "replace", False)
    _uploads(params)
    return params


@job_kind("ingest.tsinghua", "Ingest the Tsinghua App Usage data", check=_check_tsinghua, changes_data=True)
def _ingest_tsinghua(ctx: JobContext) -> Outcome:
    from engine.data.ingest_tsinghua import read_tsinghua

    p = ctx.params
    ctx.progress(0.02, "reading and checking the files ...")
    return _read_and_store(ctx, lambda: read_tsinghua(
        p["trace"], p["app2category"], p["categories"], p["poi"], coords=p["coords"], all_services=p["all_services"],
        name=p["name"], progress=lambda message: ctx.progress(None, message)))


# --- the environment and the shipped default ------------------------------------------------------

# Where each stage of engine.env.pipeline.build_environment sits on the progress bar; messages with
# "done/total" advance within their stage.
ENV_STAGES = (("tiles", 0.0, 0.25), ("descriptions", 0.25, 0.45), ("CLIP", 0.45, 0.95))


def environment_progress(message: str) -> float | None:
    """The progress-bar position of a build_environment message (None for messages of no stage)."""
    for prefix, low, high in ENV_STAGES:
        if message.startswith(prefix):
            found = re.search(r"(\d+)/(\d+)", message)
            share = int(found[1]) / max(int(found[2]), 1) if found else 0.0
            return low + (high - low) * min(share, 1.0)
    return None


def _check_env(params: dict) -> dict:
    _only(params, {"tiles", "describer", "describer_options", "regenerate", "train_encoder", "clip_epochs", "encoder"})
    _text(params, "tiles", None, max_length=1000)
    _text(params, "encoder", None, max_length=200)
    _text(params, "describer", "template", choices=("template", "openai"))
    options = params.get("describer_options") or {}
    if not isinstance(options, dict):
        raise InputError("expected an object of describer options", field="describer_options")
    params["describer_options"] = options
    _flag(params, "regenerate", False)
    _flag(params, "train_encoder", False)
    _number(params, "clip_epochs", int, 40, low=0, high=1000)
    return params


@job_kind("env.build", "Build the environment (tiles, descriptions, CLIP)", check=_check_env, changes_data=True)
def _env_build(ctx: JobContext) -> Outcome:
    from db.queries import get_dataset
    from engine.env.clip import ClipSettings
    from engine.env.pipeline import build_environment
    from engine.shipped import shipped_encoder_dir

    from engine.env.pipeline import registered_encoder_dir

    p = ctx.params
    encoder_dir = None
    if p["encoder"]:  # a registered encoder as is (e.g. another city's)
        if p["train_encoder"]:
            raise InputError("encoder and train_encoder exclude each other", field="encoder")
        with ctx.database.session() as session:
            encoder_dir = registered_encoder_dir(session, p["encoder"])
    elif not p["train_encoder"]:  # as `lsdm env build`: the default city uses the shipped encoder
        with ctx.database.session() as session:
            encoder_dir = shipped_encoder_dir(session, get_dataset(session))

    def say(message: str) -> None:
        ctx.progress(environment_progress(message), message)

    summary = build_environment(ctx.database, tiles=p["tiles"], describer=p["describer"],
                                describer_options=p["describer_options"], regenerate=p["regenerate"],
                                settings=ClipSettings(epochs=p["clip_epochs"]), encoder_dir=encoder_dir, progress=say)
    encoder = summary.get("encoder_id") or summary.get("encoder")
    return Outcome(f"encoder:{encoder}" if encoder else None, summary)


def _no_params(params: dict) -> dict:
    _only(params, set())
    return params


@job_kind("assets.install", "Install the shipped model", check=_no_params, changes_data=True)
def _assets_install(ctx: JobContext) -> Outcome:
    from engine.shipped import install

    ctx.progress(0.05, "installing the shipped CLIP encoder and forecaster ...")
    summary = install(ctx.database, progress=lambda message: ctx.progress(None, message))
    model_id = summary.get("model_id")
    return Outcome(f"model:{model_id}" if model_id else None, summary)


@job_kind("setup.default", "First launch: the default city and model", check=_no_params, changes_data=True)
def _setup_default(ctx: JobContext) -> Outcome:
    """Build the embedded default city (unless a data set exists) and install the shipped model when it
    fits; each part is one transaction, and a retry skips what is there."""
    from db.models import ModelRecord
    from db.queries import NoDatasetError, dataset_summary, get_dataset, store_dataset
    from engine.data.city import CityConfig, generate_city
    from engine.shipped import install, matches, read_manifest

    database = ctx.database
    try:
        with database.session() as session:
            get_dataset(session)
    except NoDatasetError:
        ctx.progress(0.05, "building the default city (500 users, 400 cells, two weeks) ...")
        content = generate_city(CityConfig())
        ctx.progress(0.35, "storing the default city ...")
        with database.write_session() as session, session.begin():
            store_dataset(session, content, activate=True)
    with database.session() as session:
        dataset = get_dataset(session)
        summary = dataset_summary(session, dataset)
        dataset_id = dataset.id
        has_model = session.scalar(select(ModelRecord.id).where(ModelRecord.kind == "lsdm",
                                                                ModelRecord.dataset_id == dataset.id).limit(1))
        fits = has_model is None and read_manifest() is not None and matches(session, dataset)
    if fits:
        ctx.progress(0.5, "embedding the cells with the shipped CLIP encoder ...")
        installed = install(database, progress=lambda message: ctx.progress(None, message))
        summary["model_id"] = installed.get("model_id")
    return Outcome(f"dataset:{dataset_id}", summary, f"ready: {summary['dataset']!r}")


# --- models ---------------------------------------------------------------------------------------------


def _check_train(params: dict) -> dict:
    from engine.model.config import resolve_config

    _only(params, {"config", "epochs", "seed", "max_minutes", "activate", "split"})
    _text(params, "config", "lsdm", max_length=1000)
    _number(params, "epochs", int, optional=True, low=1, high=10_000)
    _number(params, "seed", int, 0, low=0)
    _number(params, "max_minutes", float, optional=True, low=0.1, high=10_000)
    _flag(params, "activate", True)
    _text(params, "split", "time", choices=("time", "users"))
    try:
        resolve_config(params["config"], epochs=params["epochs"], seed=params["seed"])
    except InputError as error:
        raise InputError(str(error), field="config") from None
    return params


@job_kind("train", "Train a forecaster", check=_check_train, changes_data=True)
def _train(ctx: JobContext) -> Outcome:
    from engine.model.config import resolve_config
    from engine.train import train

    p = ctx.params
    name, config = resolve_config(p["config"], epochs=p["epochs"], seed=p["seed"])
    epochs = config.epochs
    history: list[dict] = []

    def epoch_done(entry: dict) -> None:
        history.append(entry)
        ctx.progress(entry["epoch"] / epochs, f"epoch {entry['epoch']}/{epochs}: validation loss "
                                              f"{entry['val_loss']:.4f}", detail={"history": history})

    def tick(epoch: int, batch: int, batches: int) -> None:
        ctx.progress((epoch + batch / max(batches, 1)) / epochs, None)

    ctx.progress(0.0, f"training {name} for up to {epochs} epochs ...")
    result = train(ctx.database, name, config, split=p["split"], activate=p["activate"], progress=epoch_done,
                   tick=tick, max_seconds=p["max_minutes"] * 60 if p["max_minutes"] else None)
    metrics = {k: v for k, v in result.metrics.items() if k != "history"}
    return Outcome(f"model:{result.record_id}", {"model_id": result.record_id, "config": name, **metrics,
                                                 "history": history},
                   f"model {result.record_id} ({name}) trained in {result.metrics.get('train_seconds', 0):.0f} s")


def _check_evaluate(params: dict) -> dict:
    from engine.evaluate import LOCATIONS

    _only(params, {"model_id", "samples", "steps", "path_users", "include_arima", "train_missing", "dataset",
                   "location"})
    _number(params, "model_id", int, optional=True, low=1)
    _text(params, "dataset", None, max_length=200)
    _number(params, "samples", int, 32, low=1, high=256)
    _number(params, "steps", int, 30, low=1, high=72)
    _number(params, "path_users", int, 100, low=1, high=100_000)
    _flag(params, "include_arima", True)
    _flag(params, "train_missing", True)
    _text(params, "location", "observed", choices=LOCATIONS)
    return params


@job_kind("evaluate", "Evaluate against the baselines", check=_check_evaluate)
def _evaluate(ctx: JobContext) -> Outcome:
    from db.models import ModelRecord
    from engine.evaluate import evaluate, progress_messages
    from engine.train import load_model

    p = ctx.params
    record, forecaster = load_model(ctx.database, p["model_id"])
    with ctx.database.session() as session:
        registered = set(session.scalars(select(ModelRecord.name).where(ModelRecord.kind == "lsdm",
                                                                        ModelRecord.dataset_id == record.dataset_id)))
    total = progress_messages(registered, include_arima=p["include_arima"], train_missing=p["train_missing"],
                              shuffled=forecaster.config.uses_environment)
    said = [0]

    def say(message: str) -> None:
        said[0] += 1
        ctx.progress(min(0.98, (said[0] - 1) / total), message)

    result = evaluate(ctx.database, record.id, samples=p["samples"], steps=p["steps"], path_users=p["path_users"],
                      include_arima=p["include_arima"], train_missing=p["train_missing"], progress=say,
                      dataset_name=p["dataset"], location=p["location"])
    rows = {row["method"]: {k: row.get(k) for k in ("rmse", "r2", "crps")} for row in result["rows"]}
    detail = {"model_id": record.id, "dataset": result["dataset"], "location": result["location"], "table3": rows,
              "condition_gain_r2_percent": result.get("condition_gain_r2_percent"),
              "environment_gain_r2_percent": result.get("environment_gain_r2_percent"), "seconds": result.get("seconds")}
    # Only an evaluation on the model's own data set is stored with it (and has a page to link to).
    stored = result["dataset"] == result["trained_on"]
    return Outcome(f"evaluation:{record.id}" if stored else None, detail)


# --- forecasts ----------------------------------------------------------------------------------------------


def _check_sampler(params: dict) -> None:
    from engine.requests import parse_sampler_text

    _text(params, "sampler", "ddim:10", max_length=40)
    parse_sampler_text(params["sampler"])


def _check_forecast(params: dict) -> dict:
    from engine.requests import NOISE_MODES

    _only(params, {"entity", "start", "horizon", "samples", "sampler", "location", "guidance", "seed", "noise",
                   "model_id"})
    _text(params, "entity", max_length=100_000)
    _number(params, "start", int, low=0)
    _number(params, "horizon", int, 1, low=1, high=168)
    _number(params, "samples", int, 32, low=1, high=1024)
    _check_sampler(params)
    _text(params, "location", "habitual", max_length=10_000)
    _number(params, "guidance", float, 1.0, low=0.0, high=20.0)
    _number(params, "seed", int, 0, low=0)
    _text(params, "noise", "antithetic", choices=NOISE_MODES)
    _number(params, "model_id", int, optional=True, low=1)
    return params


def forecast_context(ctx: JobContext, model_id: int | None = None):  # noqa: ANN201
    """The loaded model and series, kept by the worker between jobs while the model, the active data set
    and the data (data-changing jobs bump the worker's epoch) stay the same."""
    from db.models import ModelRecord
    from db.queries import get_dataset
    from engine.forecast import load_context

    with ctx.database.session() as session:
        dataset = get_dataset(session)
        if model_id is None:
            model_id = session.scalar(select(ModelRecord.id).where(ModelRecord.kind == "lsdm",
                                                                   ModelRecord.dataset_id == dataset.id,
                                                                   ModelRecord.is_active.is_(True)))
        record = session.get(ModelRecord, model_id) if model_id is not None else None
        stamp = (model_id, record.sha256 if record else None, dataset.id, str(dataset.created_at))
    if record is None:  # load_context raises the engine's own message
        return load_context(ctx.database, model_id=model_id)
    return ctx.worker.cached("forecast", stamp, lambda: load_context(ctx.database, model_id=model_id))


def _hours(ctx: JobContext, what: str = "hour") -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        ctx.progress(done / max(total, 1), f"{what} {done} of {total}")

    return report


@job_kind("forecast", "Forecast", lane="interactive", check=_check_forecast)
def _forecast(ctx: JobContext) -> Outcome:
    from engine.forecast import run_forecast

    p = dict(ctx.params)
    ctx.progress(0.0, "loading the model and the data set ...")
    context = forecast_context(ctx, p.pop("model_id"))
    ctx.progress(0.0, f"forecasting {p['horizon']} hours ...")
    from engine.requests import ForecastRequest

    run = run_forecast(ctx.database, ForecastRequest.from_params(p), context=context,
                       progress=_hours(ctx, "forecast hour"))
    return Outcome(f"forecast_run:{run['run_id']}", {"run_id": run["run_id"], "model_id": run["model_id"],
                                                     "seconds": run["seconds"]},
                   f"forecast run {run['run_id']} in {run['seconds']:.1f} s")


def _check_whatif(params: dict) -> dict:
    from engine.whatif import Scenario

    _only(params, {"entity", "start", "horizon", "samples", "sampler", "seed", "scenario", "name"})
    _text(params, "entity", max_length=200)
    _number(params, "start", int, low=0)
    _number(params, "horizon", int, 12, low=1, high=168)
    _number(params, "samples", int, 32, low=1, high=1024)
    _check_sampler(params)
    _number(params, "seed", int, 0, low=0)
    _text(params, "name", None, max_length=200)
    scenario = params.get("scenario") or {}
    if not isinstance(scenario, dict):
        raise InputError("expected a scenario object", field="scenario")
    params["scenario"] = Scenario.from_dict(scenario).to_dict()  # checks its shape
    return params


@job_kind("whatif", "What-if", lane="interactive", check=_check_whatif)
def _whatif(ctx: JobContext) -> Outcome:
    from engine.whatif import Scenario, load_whatif_context, run_whatif

    p = dict(ctx.params)
    ctx.progress(0.0, "loading the model and the environment ...")
    forecast = forecast_context(ctx)
    context = ctx.worker.cached("whatif", (forecast.record_id, forecast.record_sha256, forecast.dataset_id),
                                lambda: load_whatif_context(ctx.database, forecast))

    def report(done: int, total: int) -> None:
        half = total // 2
        run = "baseline" if done <= half else "scenario"
        ctx.progress(done / max(total, 1), f"forecasting the {run}: hour {done if done <= half else done - half} "
                                           f"of {half}")

    ctx.progress(0.0, "encoding the changed environment ...")
    from engine.requests import WhatIfRequest

    payload = run_whatif(ctx.database, WhatIfRequest.from_params(p), context=context, progress=report)
    return Outcome(f"scenario:{payload['scenario_id']}",
                   {key: payload[key] for key in ("scenario_id", "name", "baseline_run_id", "scenario_run_id",
                                                  "seconds")},
                   f"scenario {payload['scenario_id']} in {payload['seconds']:.1f} s")
