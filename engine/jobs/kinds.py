"""The kinds of job the worker runs (engine/jobs/worker.py): each checks its parameters when queued and
runs the engine function the command line runs, reporting progress and writing its result in one
transaction. ``KINDS``, at the bottom, is the one table of them.

Each kind's parameters are a request of engine/requests.py (``to_params``): the same fields, defaults
and bounds as the command line and the dashboard's forms.

| kind | lane | request | result_ref |
|---|---|---|---|
| ``setup.default`` | batch | none | ``dataset:ID`` (first launch: default city + shipped model) |
| ``city.build`` | batch | CityRequest | ``dataset:ID`` |
| ``data.aggregate`` | batch | AggregateRequest | ``dataset:ID`` (a user data set summed to its cells) |
| ``ingest.table`` | batch | IngestTableRequest | ``dataset:ID`` |
| ``ingest.tsinghua`` | batch | IngestTsinghuaRequest | ``dataset:ID`` |
| ``ingest.matrix`` | batch | IngestMatrixRequest | ``dataset:ID`` (cells as entities, optional external vectors) |
| ``env.build`` | batch | EnvRequest | ``encoder:NAME`` |
| ``assets.install`` | batch | none | ``model:ID`` |
| ``train`` | batch | TrainRequest | ``model:ID`` |
| ``evaluate`` | batch | EvaluateRequest | ``evaluation:MODEL_ID`` |
| ``forecast`` | interactive | ForecastRequest | ``forecast_run:ID`` |
| ``whatif`` | interactive | WhatIfRequest | ``scenario:ID`` |
| ``load`` | interactive | LoadRequest | ``load_run:ID`` (one cell or a few: the Cell page) |
| ``load.area`` | batch | LoadRequest | ``load_run:ID`` (an area, the Map page: minutes, out of the way) |
| ``load.whatif`` | interactive | LoadWhatIfRequest | ``load_run:ID`` (the scenario's; it names its baseline) |

Files named in an ingest's parameters are read from disk by the worker; the app saves uploads under
``<data dir>/uploads/...`` and passes that folder as ``uploads_dir`` (removed when the job ends) and
the files' own names as ``names``, which error messages then use instead of the folder's paths.

The kinds that run the model (train, evaluate, forecast, what-if) import engine.train, engine.forecast,
engine.whatif and engine.evaluation.evaluate when they run, not at the top: those import torch, and
this module is imported by everything that reads the queue (``KINDS`` gives a job its title and its
check): importing engine.jobs takes 0.9 s this way, 2.4 s with them at the top (median of 5 runs
on 2 cores), and `lsdm jobs list` 0.9 s.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from db.models import ModelRecord
from db.queries import DatasetContent, NoDatasetError, active_model, dataset_summary, get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city, generate_city_for
from engine.data.ingest_matrix import read_matrix_request
from engine.data.ingest_table import peek_table, read_table
from engine.data.ingest_tsinghua import peek_tsinghua, read_tsinghua
from engine.data.store import store_new_dataset
from engine.env.build import build_environment_for
from engine.errors import InputError, plural
from engine.jobs.types import JobKind, Outcome
from engine.requests import (
    AggregateRequest,
    CityRequest,
    EnvRequest,
    EvaluateRequest,
    ForecastRequest,
    IngestMatrixRequest,
    IngestTableRequest,
    IngestTsinghuaRequest,
    LoadRequest,
    LoadWhatIfRequest,
    Request,
    TrainRequest,
    WhatIfRequest,
)
from engine.shipped import install, matches, read_manifest

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.models import Dataset
    from engine.forecast import ForecastContext
    from engine.jobs.worker import JobContext


# --- checking parameters ----------------------------------------------------------------------------


def _only(params: dict, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(
            f"unknown parameter; expected some of {', '.join(sorted(allowed)) or 'none'}", field=unknown[0]
        )


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


def _store_new(ctx: JobContext, content: DatasetContent, *, replace: bool) -> Outcome:
    """Store a data set and make it active (one transaction); an existing name only when ``replace``."""
    ctx.progress(0.8, f"storing {content.name!r} ...")
    return _dataset_outcome(ctx, lambda session: store_new_dataset(session, content, replace=replace))


def _dataset_outcome(ctx: JobContext, store: Callable[[Session], Dataset]) -> Outcome:
    """Store a data set in one transaction and report it (``dataset:ID``, its summary)."""
    with ctx.database.write_session() as session, session.begin():
        dataset = store(session)
        session.flush()
        summary = dataset_summary(session, dataset)
        dataset_id = dataset.id
    return Outcome(
        f"dataset:{dataset_id}",
        summary,
        f"stored {summary['dataset']!r}: {plural(summary['entities'], summary['entity_kind'])}, "
        f"{plural(summary['cells'], 'cell')}",
    )


def _read_and_store(ctx: JobContext, read: Callable[[], DatasetContent]) -> Outcome:
    """An ingest: read and check the files (errors name the uploaded files), then store the data set."""
    try:
        content = read()
    except InputError as error:
        raise _readable(error, ctx.params) from None
    return _store_new(ctx, content, replace=ctx.params["replace"])


def _checked(request_type: type[Request]) -> Callable[[dict], dict]:
    """A job kind's parameter check: the request's own (engine/requests.py), back as JSON."""
    return lambda params: request_type.parse(params).with_absolute_files().to_params()


def _checked_table(params: dict) -> dict:
    """The table ingest's check: the request's, then a peek at the files (format, columns, first rows: well
    under a second), so that a wrong upload is refused on its form instead of failing after the queue. The
    error names the upload's own name, line and column; its field is the file's role (records, cells,
    mapping), where the form shows it."""
    checked = _checked(IngestTableRequest)(params)
    p = IngestTableRequest.from_params(checked)
    try:
        peek_table(p.records, p.cells, p.mapping, entity_kind=p.entity_kind, timezone=p.timezone)
    except InputError as error:
        out = _readable(error, params)
        roles = {str(p.records): "records", str(p.cells): "cells", str(p.mapping): "mapping"}
        out.field = roles.get(error.file or "", error.field)
        raise out from None
    return checked


def _checked_tsinghua(params: dict) -> dict:
    """The Tsinghua ingest's check: the request's, then the metadata files whole and the trace's first 200
    lines (``peek_tsinghua``), refused on the form with the upload's own name, line and field; the error's
    field is the file's role (trace, app2category, categories, poi, coords), where the form shows it."""
    checked = _checked(IngestTsinghuaRequest)(params)
    p = IngestTsinghuaRequest.from_params(checked)
    try:
        peek_tsinghua(p.trace, p.app2category, p.categories, p.poi, p.coords)
    except InputError as error:
        out = _readable(error, params)
        roles = {str(getattr(p, role)): role for role in ("trace", "app2category", "categories", "poi", "coords")}
        out.field = roles.get(str(error.file or ""), error.field)
        raise out from None
    return checked


PEEK_MATRIX_BYTES = 50_000_000  # matrices up to this size are read whole when submitted (well under a second)


def _checked_matrix(params: dict) -> dict:
    """The matrix ingest's check: the request's, then (files up to ``PEEK_MATRIX_BYTES`` in all) the whole
    read, which is quick for such sizes: shapes, values, services, embeddings; refused on the form."""
    checked = _checked(IngestMatrixRequest)(params)
    request = IngestMatrixRequest.from_params(checked)
    sources = [*request.values, *([request.embeddings] if request.embeddings else [])]
    files = [Path(s.rsplit(":", 1)[0]) if not Path(s).exists() else Path(s) for s in sources]
    if sum(f.stat().st_size for f in files if f.is_file()) <= PEEK_MATRIX_BYTES:
        try:
            read_matrix_request(request)
        except InputError as error:
            raise _readable(error, params) from None
    return checked


def _city_build(ctx: JobContext) -> Outcome:
    request = CityRequest.from_params(ctx.params)
    ctx.progress(0.05, "generating the city ...")
    return _store_new(ctx, generate_city_for(request), replace=request.replace)


def _aggregate(ctx: JobContext) -> Outcome:
    from engine.data.aggregate import store_aggregate

    request = AggregateRequest.from_params(ctx.params)
    ctx.progress(0.1, "summing the users of every cell ...")
    return _dataset_outcome(ctx, lambda session: store_aggregate(session, request))


def _ingest_matrix(ctx: JobContext) -> Outcome:
    p = IngestMatrixRequest.from_params(ctx.params)
    ctx.progress(0.05, "reading and checking the matrices ...")
    return _read_and_store(
        ctx,
        lambda: read_matrix_request(p),
    )


def _ingest_table(ctx: JobContext) -> Outcome:
    p = IngestTableRequest.from_params(ctx.params)
    ctx.progress(0.05, "reading and checking the files ...")
    return _read_and_store(
        ctx,
        lambda: read_table(p.records, p.cells, p.mapping, entity_kind=p.entity_kind, timezone=p.timezone, name=p.name),
    )


def _ingest_tsinghua(ctx: JobContext) -> Outcome:
    p = IngestTsinghuaRequest.from_params(ctx.params)
    ctx.progress(0.02, "reading and checking the files ...")
    return _read_and_store(
        ctx,
        lambda: read_tsinghua(
            p.trace,
            p.app2category,
            p.categories,
            p.poi,
            coords=p.coords,
            all_services=p.all_services,
            name=p.name,
            progress=lambda message: ctx.progress(None, message),
        ),
    )


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


def _env_build(ctx: JobContext) -> Outcome:
    def say(message: str) -> None:
        ctx.progress(environment_progress(message), message)

    summary = build_environment_for(ctx.database, EnvRequest.from_params(ctx.params), progress=say)
    encoder = summary.get("encoder_id") or summary.get("encoder")
    return Outcome(f"encoder:{encoder}" if encoder else None, summary)


def _no_params(params: dict) -> dict:
    _only(params, set())
    return params


def _assets_install(ctx: JobContext) -> Outcome:
    ctx.progress(0.05, "installing the shipped CLIP encoder and forecaster ...")
    summary = install(ctx.database, progress=lambda message: ctx.progress(None, message))
    model_id = summary.get("model_id")
    return Outcome(f"model:{model_id}" if model_id else None, summary)


def _setup_default(ctx: JobContext) -> Outcome:
    """Build the embedded default city (unless a data set exists) and install the shipped model when it
    fits; each part is one transaction, and a retry skips what is there."""
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
        has_model = session.scalar(
            select(ModelRecord.id).where(ModelRecord.kind == "lsdm", ModelRecord.dataset_id == dataset.id).limit(1)
        )
        fits = has_model is None and read_manifest() is not None and matches(session, dataset)
    if fits:
        ctx.progress(0.5, "embedding the cells with the shipped CLIP encoder ...")
        installed = install(database, progress=lambda message: ctx.progress(None, message))
        summary["model_id"] = installed.get("model_id")
    return Outcome(f"dataset:{dataset_id}", summary, f"ready: {summary['dataset']!r}")


# --- models ---------------------------------------------------------------------------------------------


def _train(ctx: JobContext) -> Outcome:
    from engine.train import train_request  # torch: imported when the job runs (module docstring)

    request = TrainRequest.from_params(ctx.params)
    name, config = request.model_config()
    epochs = config.epochs
    history: list[dict] = []

    def epoch_done(entry: dict) -> None:
        history.append(entry)
        ctx.progress(
            entry["epoch"] / epochs,
            f"epoch {entry['epoch']}/{epochs}: validation loss {entry['val_loss']:.4f}",
            detail={"history": history},
        )

    def tick(epoch: int, batch: int, batches: int) -> None:
        ctx.progress((epoch + batch / max(batches, 1)) / epochs, None)

    ctx.progress(0.0, f"training {name} for up to {epochs} epochs ...")
    _, result = train_request(ctx.database, request, progress=epoch_done, tick=tick)
    metrics = {k: v for k, v in result.metrics.items() if k != "history"}
    return Outcome(
        f"model:{result.record_id}",
        {"model_id": result.record_id, "config": name, **metrics, "history": history},
        f"model {result.record_id} ({name}) trained in {result.metrics.get('train_seconds', 0):.0f} s",
    )


def _evaluate(ctx: JobContext) -> Outcome:
    from engine.evaluation.evaluate import evaluate_request, progress_messages  # torch (module docstring)
    from engine.train import load_model

    p = EvaluateRequest.from_params(ctx.params)
    if p.level == "cell":
        return _evaluate_cells(ctx, p)
    record, forecaster = load_model(ctx.database, p.model_id)
    with ctx.database.session() as session:
        registered = set(
            session.scalars(
                select(ModelRecord.name).where(ModelRecord.kind == "lsdm", ModelRecord.dataset_id == record.dataset_id)
            )
        )
    total = progress_messages(
        registered,
        include_arima=p.include_arima and not p.quick,
        include_learned=p.include_learned and not p.quick,
        fracast=p.fracast_entities > 0,
        train_missing=p.train_missing and not p.quick,
        shuffled=forecaster.config.uses_environment,
    )
    said = [0]

    def say(message: str) -> None:
        said[0] += 1
        ctx.progress(min(0.98, (said[0] - 1) / total), message)

    result = evaluate_request(ctx.database, p.with_changes(model_id=record.id), progress=say)
    rows = {row["method"]: {k: row.get(k) for k in ("rmse", "r2", "crps")} for row in result["rows"]}
    detail = {
        "model_id": record.id,
        "dataset": result["dataset"],
        "location": result["location"],
        "table3": rows,
        "condition_gain_r2_percent": result.get("condition_gain_r2_percent"),
        "environment_gain_r2_percent": result.get("environment_gain_r2_percent"),
        "seconds": result.get("seconds"),
    }
    # Only an evaluation on the model's own data set is stored with it (and has a page to link to).
    stored = result["dataset"] == result["trained_on"]
    return Outcome(f"evaluation:{record.id}" if stored else None, detail)


def _evaluate_cells(ctx: JobContext, p: EvaluateRequest) -> Outcome:
    from engine.evaluation.cell_level import PROGRESS_STEPS, evaluate_cells  # torch (module docstring)

    said = [0]

    def say(message: str) -> None:
        said[0] += 1
        ctx.progress(min(0.98, (said[0] - 1) / PROGRESS_STEPS), message)

    result = evaluate_cells(ctx.database, p, progress=say)
    detail = {
        "model_id": result["model_id"],
        "dataset": result["dataset"],
        "level": "cell",
        "cells": result["cells"],
        "rows": {row["method"]: {k: row.get(k) for k in ("rmse_mb", "crps_mb", "cov90")} for row in result["rows"]},
        "seconds": result["seconds"],
    }
    return Outcome(f"evaluation:{result['model_id']}" if result["stored"] else None, detail)


# --- forecasts ----------------------------------------------------------------------------------------------


def forecast_context(
    ctx: JobContext, model_id: int | None = None, dataset: str | None = None, device: str | None = None
) -> ForecastContext:
    """The loaded model and series, kept by the worker between jobs while the model, the data set and
    the data (data-changing jobs bump the worker's epoch) stay the same."""
    from engine.forecast import load_context  # torch (module docstring)

    with ctx.database.session() as session:
        found = get_dataset(session, dataset)
        if model_id is None:
            active = active_model(session, found.id)
            model_id = active.id if active is not None else None
        record = session.get(ModelRecord, model_id) if model_id is not None else None
        stamp = (model_id, record.sha256 if record else None, found.id, str(found.created_at), device)

    def load() -> ForecastContext:
        return load_context(ctx.database, model_id=model_id, dataset_name=dataset, device=device)

    if record is None:  # load_context raises the engine's own message
        return load()
    return ctx.worker.cached("forecast", stamp, load)


def _hours(ctx: JobContext, what: str = "hour") -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        ctx.progress(done / max(total, 1), f"{what} {done} of {total}")

    return report


def _forecast(ctx: JobContext) -> Outcome:
    from engine.forecast import run_forecast  # torch (module docstring)

    request = ForecastRequest.from_params(ctx.params)
    ctx.progress(0.0, "loading the model and the data set ...")
    context = forecast_context(ctx, request.model_id, request.dataset, request.device)
    ctx.progress(0.0, f"forecasting {request.horizon} hours ...")
    run = run_forecast(ctx.database, request, context=context, progress=_hours(ctx, "forecast hour"))
    return Outcome(
        f"forecast_run:{run['run_id']}",
        {"run_id": run["run_id"], "model_id": run["model_id"], "seconds": run["seconds"]},
        f"forecast run {run['run_id']}, computed in {run['seconds']:.1f} s",
    )


def _checked_whatif(params: dict) -> dict:
    """The what-if request's check, keeping the data set and model the job was pinned to when queued
    (engine/jobs/queue.py ``pin_targets``; a stored scenario records them as well)."""
    checked = _checked(WhatIfRequest)(params)
    dataset, model_id = params.get("dataset"), params.get("model_id")
    if dataset is not None and (not isinstance(dataset, str) or len(dataset) > 200):
        raise InputError(f"expected a data set name, got {str(dataset)[:60]!r}", field="dataset")
    if model_id is not None and (isinstance(model_id, bool) or not isinstance(model_id, int) or model_id < 1):
        raise InputError(f"expected a model id (a whole number >= 1), got {str(model_id)[:60]!r}", field="model_id")
    return {**checked, **({"dataset": dataset} if dataset else {}), **({"model_id": model_id} if model_id else {})}


def _whatif(ctx: JobContext) -> Outcome:
    from engine.whatif import load_whatif_context, run_whatif  # torch (module docstring)

    request = WhatIfRequest.from_params(ctx.params)
    ctx.progress(0.0, "loading the model and the environment ...")
    forecast = forecast_context(ctx, ctx.params.get("model_id"), ctx.params.get("dataset"))
    context = ctx.worker.cached(
        "whatif",
        (forecast.record_id, forecast.record_sha256, forecast.dataset_id),
        lambda: load_whatif_context(ctx.database, forecast),
    )

    def report(done: int, total: int) -> None:
        half = total // 2
        run = "baseline" if done <= half else "scenario"
        ctx.progress(
            done / max(total, 1), f"forecasting the {run}: hour {done if done <= half else done - half} of {half}"
        )

    ctx.progress(0.0, "encoding the changed environment ...")
    payload = run_whatif(ctx.database, request, context=context, progress=report)
    return Outcome(
        f"scenario:{payload['scenario_id']}",
        {key: payload[key] for key in ("scenario_id", "name", "baseline_run_id", "scenario_run_id", "seconds")},
        f"scenario {payload['scenario_id']}, computed in {payload['seconds']:.1f} s",
    )


def _load(ctx: JobContext) -> Outcome:
    from engine.load.forecast import run_load  # torch (module docstring)

    request = LoadRequest.from_params(ctx.params)
    ctx.progress(0.0, "loading the model and the data set ...")
    context = forecast_context(ctx, request.model_id, request.dataset, request.device)
    ctx.progress(0.0, "drawing where the users will be ...")
    run = run_load(ctx.database, request, context=context, progress=_hours(ctx, "users forecast:"), detail=False)
    return Outcome(
        f"load_run:{run['run_id']}",
        {
            "run_id": run["run_id"],
            "model_id": run["model_id"],
            "seconds": run["seconds"],
            "users": run["users_forecast"],
            "cells": len(run["cells"]),
        },
        f"load run {run['run_id']}: {plural(len(run['cells']), 'cell')}, {plural(run['users_forecast'], 'user')} "
        f"computed in {run['seconds']:.1f} s",
    )


def _load_whatif(ctx: JobContext) -> Outcome:
    from engine.load.whatif import run_load_whatif  # torch (module docstring)

    request = LoadWhatIfRequest.from_params(ctx.params)
    ctx.progress(0.0, "loading the model and the data set ...")
    context = forecast_context(ctx, request.model_id, request.dataset, request.device)
    payload = run_load_whatif(ctx.database, request, context=context, progress=_hours(ctx, "users forecast:"))
    return Outcome(
        f"load_run:{payload['scenario_run_id']}",
        {
            key: payload[key]
            for key in ("baseline_run_id", "scenario_run_id", "name", "what", "cell", "seconds", "users_forecast")
        },
        f"{payload['name']}: runs {payload['baseline_run_id']} and {payload['scenario_run_id']} "
        f"computed in {payload['seconds']:.1f} s",
    )


# --- the table of kinds -------------------------------------------------------------------------------

KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("city.build", CityRequest.TITLE, "batch", _city_build, _checked(CityRequest), changes_data=True),
        JobKind(
            "data.aggregate", AggregateRequest.TITLE, "batch", _aggregate, _checked(AggregateRequest), changes_data=True
        ),
        JobKind(
            "ingest.table",
            IngestTableRequest.TITLE,
            "batch",
            _ingest_table,
            _checked_table,
            changes_data=True,
        ),
        JobKind(
            "ingest.tsinghua",
            IngestTsinghuaRequest.TITLE,
            "batch",
            _ingest_tsinghua,
            _checked_tsinghua,
            changes_data=True,
        ),
        JobKind(
            "ingest.matrix",
            IngestMatrixRequest.TITLE,
            "batch",
            _ingest_matrix,
            _checked_matrix,
            changes_data=True,
        ),
        JobKind("env.build", EnvRequest.TITLE, "batch", _env_build, _checked(EnvRequest), changes_data=True),
        JobKind("assets.install", "Install the shipped model", "batch", _assets_install, _no_params, changes_data=True),
        JobKind(
            "setup.default",
            "First launch: the default city and model",
            "batch",
            _setup_default,
            _no_params,
            changes_data=True,
        ),
        JobKind("train", TrainRequest.TITLE, "batch", _train, _checked(TrainRequest), changes_data=True),
        JobKind(
            "evaluate",
            EvaluateRequest.TITLE,
            "batch",
            _evaluate,
            _checked(EvaluateRequest),
            # measured at the default settings only: other settings have no figure until one ran here
            prior=(
                27 * 60.0,
                "a full evaluation of the default city at these settings took 27 min on 2 CPU cores, "
                "before the learned baselines (a few minutes each) were added",
                {"quick": False, "samples": 32, "path_samples": 16, "steps": 30, "path_users": 100}
                | {"train_missing": True, "level": "user"},
            ),
        ),
        JobKind(
            "forecast",
            ForecastRequest.TITLE,
            "interactive",
            _forecast,
            _checked(ForecastRequest),
            size=lambda p: len(p.get("entities") or [1]) * p.get("horizon", 24) * p.get("samples", 32),
        ),
        JobKind("whatif", WhatIfRequest.TITLE, "interactive", _whatif, _checked_whatif),
        JobKind("load", LoadRequest.TITLE, "interactive", _load, _checked(LoadRequest)),
        # An area's users are many (the whole default city: about 16 minutes on two cores): the batch lane, so
        # that the Cell page's and the Forecast page's runs are not queued behind it.
        JobKind(
            "load.area",
            "Forecast an area's load",
            "batch",
            _load,
            _checked(LoadRequest),
            # path-hours; an area of chosen cells is taken as 1/20 of the whole default city
            size=lambda p: p.get("horizon", 24) * p.get("samples", 32) * (20.0 if p.get("scope") == "area:all" else 1),
            prior=(
                16 * 60.0,
                "the whole default city's load (500 users, 24 h, 32 paths) took about 16 min on 2 CPU cores",
                {"scope": "area:all", "horizon": 24, "samples": 32},
            ),
        ),
        JobKind("load.whatif", LoadWhatIfRequest.TITLE, "interactive", _load_whatif, _checked(LoadWhatIfRequest)),
    )
}
