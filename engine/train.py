"""Training: AdamW, EMA weights, gradient clipping, early stopping on validation; the checkpoint is
registered in the database.

Data flow: db -> ``load_series`` -> splits and normalisation (fitted on training hours only) ->
batches gathered on the fly (the environment embeddings of 25 hours x 128 dims per window would not fit
in memory for all windows at once) -> ``diffusion_loss`` -> EMA weights -> ``Forecaster.save``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from db import Database, model_folder, models_dir
from db.models import Dataset, ModelRecord
from db.queries import activate_model, active_model, get_dataset
from engine.data.windows import (
    HourlyProfile,
    Normaliser,
    SeriesData,
    Splits,
    SplitSpec,
    Windows,
    gather,
    load_series,
    make_splits,
)
from engine.errors import InputError
from engine.model import Forecaster, pick_device
from engine.model.config import ModelConfig
from engine.model.diffusion import Standardiser, diffusion_loss
from engine.model.prior import PriorFit
from engine.requests import TrainRequest

Progress = Callable[[dict], None]
Tick = Callable[[int, int, int], None]


def to_batch(
    series: SeriesData,
    values: np.ndarray,
    windows: Windows,
    spec: SplitSpec,
    device: torch.device,
    profile: HourlyProfile | None = None,
) -> dict:
    """Gather windows into model tensors."""
    wb = gather(series, values, windows, spec, profile)
    return {
        "profile": torch.from_numpy(wb.profile).to(device) if wb.profile is not None else None,
        "history": torch.from_numpy(wb.history).to(device),
        "target": torch.from_numpy(wb.target).to(device),
        "hours": torch.from_numpy(wb.hour_of_day).long().to(device),
        "days": torch.from_numpy(wb.day_of_week).long().to(device),
        "env": torch.from_numpy(wb.env).to(device),
    }


def data_fingerprint(series: SeriesData, splits: Splits) -> dict:
    """What the model was trained on: a forecast on other data (other services, another encoder's
    embeddings) is refused by ``check_compatible``."""
    digest = hashlib.sha256()
    digest.update(series.traffic[:, : splits.train_hours_end].astype(np.float64).tobytes())
    digest.update(series.location[:, : splits.train_hours_end].astype(np.int64).tobytes())
    return {
        "dataset": series.dataset_name,
        "services": series.services,
        "encoder_id": series.encoder_id,
        "env_dim": int(series.env.shape[1]),
        "entities": len(series.entity_ids),
        "hours": series.hours,
        "train_hours_end": splits.train_hours_end,
        "sha256": digest.hexdigest(),
    }


def check_compatible(forecaster: Forecaster, series: SeriesData) -> None:
    fingerprint = forecaster.meta.get("data", {})
    if list(series.services) != list(forecaster.services):
        raise InputError(
            f"the model was trained on services {forecaster.services}, the data set "
            f"{series.dataset_name!r} has {series.services}",
            field="--model",
        )
    if forecaster.config.uses_environment and fingerprint.get("encoder_id") != series.encoder_id:
        raise InputError(
            f"the model was trained on environment embeddings of encoder "
            f"{fingerprint.get('encoder_id')!r}, the data set {series.dataset_name!r} has "
            f"{series.encoder_id!r}",
            field="--model",
            hint="rebuild the environment with that encoder or train a model on these embeddings",
        )


@dataclass
class TrainResult:
    forecaster: Forecaster
    record_id: int
    path: Path
    metrics: dict


def fit_prior(
    forecaster: Forecaster,
    series: SeriesData,
    values: np.ndarray,
    windows: Windows,
    spec: SplitSpec,
    profile: HourlyProfile,
    chunk: int = 4096,
) -> Standardiser | None:
    """Fit the model's linear mean on the training windows (engine/model/prior.py). When the diffusion
    models the residual around it (``prior_is_offset``), return the standardiser of that residual (a
    second pass over the windows); else None."""
    model = forecaster.model
    if model.prior is None:
        raise ValueError("this model has no linear mean (prior 'none')")
    model.prior.set_env_axes(series.env)
    fit = PriorFit(model.prior)
    cpu = torch.device("cpu")

    def batches() -> Iterator[dict]:
        for start in range(0, len(windows), chunk):
            part = Windows(windows.entity[start : start + chunk], windows.hour[start : start + chunk])
            yield to_batch(series, values, part, spec, cpu, profile)

    with torch.no_grad():
        for batch in batches():
            h = batch["history"].shape[1]
            fit.add(
                batch["history"],
                batch["profile"][:, h:],
                batch["env"][:, h:],
                batch["hours"][:, h:],
                batch["days"][:, h:],
                batch["target"],
            )
        fit.solve()
        if not forecaster.config.prior_is_offset:
            return None
        total = total_sq = count = 0.0
        for batch in batches():
            residual = (
                batch["target"]
                - model.linear_mean(batch["history"], batch["profile"], batch["env"], batch["hours"], batch["days"])
            ).double()
            total, total_sq, count = (
                total + float(residual.sum()),
                total_sq + float((residual**2).sum()),
                count + residual.numel(),
            )
    mean = total / max(count, 1)
    std = max(total_sq / max(count, 1) - mean**2, 0.0) ** 0.5
    return Standardiser(mean=mean, std=std or 1.0)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


MIN_WEEKDAY_HOURS = 24  # training target hours each weekday needs for the day of the week to be an input


def adapt_to_data(config: ModelConfig, series: SeriesData, splits: Splits) -> tuple[ModelConfig, list[str]]:
    """The configuration for this data, and what was changed and why (docs/model.md#short-data): the day of
    the week is an input only where every weekday has a day of training targets (a week of data trains on
    4 days: the validation and test days' weekdays would reach the model untrained)."""
    adapted = []
    days = series.day_of_week[splits.spec.history : splits.train_hours_end]
    counts = np.bincount(days, minlength=7)
    if config.day_of_week and (counts < MIN_WEEKDAY_HOURS).any():
        config = replace(config, day_of_week=False)
        adapted.append(
            f"day of the week off: the training hours cover {int((counts >= MIN_WEEKDAY_HOURS).sum())} of 7 "
            "weekdays with a whole day"
        )
    return config, adapted


def fit(
    series: SeriesData,
    config: ModelConfig,
    *,
    split: str = "time",
    device: str | None = None,
    progress: Progress | None = None,
    max_seconds: float | None = None,
    tick: Tick | None = None,
) -> tuple[Forecaster, dict, Splits]:
    """Train a forecaster on ``series``; returns it (EMA weights), its metrics and the splits.

    ``progress`` is called after each epoch with its losses; ``tick(epoch, batch, batches)`` after each
    batch (a job reports finer progress there, and may raise to stop: nothing is saved then)."""
    config.validate()
    if config.uses_environment and series.env.shape[1] == 0:
        raise InputError(
            f"the data set {series.dataset_name!r} has no environment embeddings, but the "
            f"configuration is conditioned on them",
            field="--config",
            hint="run `lsdm env build` first, or train --config lsdm-no-condition",
        )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dev = pick_device(device)
    spec = SplitSpec(kind=split, history=config.history, horizon=config.horizon, seed=config.seed)
    splits = make_splits(series, spec)
    train_end = splits.train_hours_end
    config, adapted = adapt_to_data(config, series, splits)
    fit_rows = np.unique(splits.train.entity)
    normaliser = Normaliser.fit(series.traffic[fit_rows, :train_end])
    values = normaliser.forward(series.traffic)  # (E, T, K)
    train_values = values[fit_rows, :train_end]
    standardiser = Standardiser(mean=float(train_values.mean()), std=float(train_values.std() or 1.0))
    # The entities' hourly profiles from training hours only (leave-one-out for training targets), and
    # their environment profiles when the model reads them.
    profile = HourlyProfile.build(series, values, train_end, env=config.uses_env_profile)
    forecaster = Forecaster.create(
        config,
        normaliser=normaliser,
        standardiser=standardiser,
        services=series.services,
        env_dim=int(series.env.shape[1]),
        meta={"data": data_fingerprint(series, splits), "split": spec.kind},
    )
    if forecaster.model.prior is not None:  # closed form, before the network trains around it (or on it)
        residual = fit_prior(forecaster, series, values, splits.train, spec, profile)
        if residual is not None:  # the diffusion models the residual: standardise that
            forecaster.standardiser = standardiser = residual
    model = forecaster.model.to(dev)
    ema = copy.deepcopy(model).eval()
    schedule = forecaster.schedule
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(min(len(splits.train), config.windows_per_epoch) / config.batch_size)))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)

    # A fixed validation set: at most 4,096 windows with fixed diffusion steps and noise, so that the
    # validation loss is comparable across epochs.
    val_windows = splits.val
    if len(val_windows) > 4096:
        val_windows = val_windows.subset(np.sort(rng.choice(len(val_windows), 4096, replace=False)))
    val_batch = to_batch(series, values, val_windows, spec, dev, profile)
    val_gen = torch.Generator().manual_seed(10_000 + config.seed)
    val_t = torch.randint(0, config.diffusion_steps, (len(val_windows),), generator=val_gen)
    val_noise = torch.randn(val_batch["target"].shape, generator=val_gen)
    keep_all = torch.ones(len(val_windows), dtype=torch.bool)

    def validation_loss() -> float:
        with torch.no_grad():
            losses = []
            for start in range(0, len(val_windows), 1024):
                part = {k: (v[start : start + 1024] if v is not None else None) for k, v in val_batch.items()}
                n = min(1024, len(val_windows) - start)
                losses.append(
                    float(
                        diffusion_loss(
                            ema,
                            schedule,
                            standardiser,
                            part,
                            t=val_t[start : start + 1024],
                            noise=val_noise[start : start + 1024].to(dev),
                            keep_env=keep_all[start : start + 1024],
                            draws=1,
                        )
                    )
                    * n
                )
            return sum(losses) / len(val_windows)

    history: list[dict] = []
    best, best_state, stale = float("inf"), copy.deepcopy(ema.state_dict()), 0
    started = time.perf_counter()
    stopped = "epochs"
    step_count = 0
    for epoch in range(config.epochs):
        model.train()
        # Each epoch sees ``windows_per_epoch`` windows drawn afresh (all of them when there are fewer).
        order = rng.permutation(len(splits.train))[: config.windows_per_epoch]
        losses = []
        batches = -(-len(order) // config.batch_size)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            batch = to_batch(
                series, values, Windows(splits.train.entity[idx], splits.train.hour[idx]), spec, dev, profile
            )
            loss = diffusion_loss(model, schedule, standardiser, batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step_count += 1
            # EMA warm-up: early on the average would otherwise be dominated by the random initial weights.
            _ema_update(ema, model, min(config.ema_decay, (1 + step_count) / (10 + step_count)))
            losses.append(float(loss.detach()))
            if tick:
                tick(epoch, len(losses), batches)
        val = validation_loss()
        entry = {
            "epoch": epoch + 1,
            "train_loss": round(float(np.mean(losses)), 5),
            "val_loss": round(val, 5),
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(entry)
        if progress:
            progress(entry)
        if val < best - 1e-5:
            best, best_state, stale = val, copy.deepcopy(ema.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                stopped = "early stopping"
                break
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            stopped = "time budget"
            break
    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        "history": history,
        "best_val_loss": round(best, 5),
        "epochs_run": len(history),
        "stopped_by": stopped,
        "train_seconds": round(time.perf_counter() - started, 1),
        "train_windows": len(splits.train),
        "val_windows": len(splits.val),
        "split": splits.describe(),
        "adapted": adapted,
        "device": str(dev),
    }
    forecaster.meta["metrics"] = metrics
    return forecaster, metrics, splits


def register(
    database: Database, forecaster: Forecaster, *, name: str, dataset_id: int, activate: bool = True
) -> tuple[int, Path]:
    """Save the forecaster under the data directory and register it (one transaction)."""
    with tempfile.TemporaryDirectory(dir=models_dir()) as tmp:
        digest = forecaster.save(Path(tmp) / "model")
        final = models_dir() / f"lsdm-{digest[:12]}"
        # The folder is named by its content's hash: one already there holds these very files (another
        # model trained to the same weights, or another worker's run of the same job) and is kept as it is.
        created = not final.exists()
        if created:
            shutil.move(str(Path(tmp) / "model"), final)
    try:
        with database.write_session() as session, session.begin():
            record = ModelRecord(
                name=name,
                kind="lsdm",
                path=str(final),
                sha256=digest,
                config=forecaster.config.to_dict(),
                metrics=forecaster.meta.get("metrics", {}),
                dataset_id=dataset_id,
                is_active=False,
            )
            session.add(record)
            if activate:
                activate_model(session, record)
            session.flush()
            return record.id, final
    except BaseException:
        if created:  # not registered: no folder left behind that no model row names
            shutil.rmtree(final, ignore_errors=True)
        raise


def train(
    database: Database,
    config_name: str,
    config: ModelConfig,
    *,
    dataset_name: str | None = None,
    split: str = "time",
    activate: bool = True,
    device: str | None = None,
    progress: Progress | None = None,
    max_seconds: float | None = None,
    tick: Tick | None = None,
) -> TrainResult:
    """`lsdm train`: fit on the data set, save, register."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with database.session() as session:
        dataset = get_dataset(session, dataset_name)
        series = load_series(session, dataset, env_kind=config.env_kind)
        dataset_id = dataset.id
    forecaster, metrics, _ = fit(
        series, config, split=split, device=device, progress=progress, max_seconds=max_seconds, tick=tick
    )
    record_id, path = register(database, forecaster, name=config_name, dataset_id=dataset_id, activate=activate)
    return TrainResult(forecaster, record_id, path, metrics)


def train_request(
    database: Database, request: TrainRequest, *, progress: Progress | None = None, tick: Tick | None = None
) -> tuple[str, TrainResult]:
    """`lsdm train` and the ``train`` job: the request's configuration, trained; (its name, the result)."""
    name, config = request.checked().model_config()
    result = train(
        database,
        name,
        config,
        dataset_name=request.dataset,
        split=request.split,
        activate=request.activate,
        device=request.device,
        progress=progress,
        tick=tick,
        max_seconds=request.max_minutes * 60 if request.max_minutes else None,
    )
    return name, result


def load_model(
    database: Database, model_id: int | None = None, *, dataset: Dataset | None = None, device: str | None = None
) -> tuple[ModelRecord, Forecaster]:
    """The given model, or the active one of the data set; a clear error when there is none."""
    with database.session() as session:
        if model_id is not None:
            record = session.get(ModelRecord, model_id)
            if record is None or record.kind != "lsdm":
                raise InputError(
                    f"no forecasting model with id {model_id}", field="--model", hint="`lsdm models` lists them"
                )
        else:
            dataset = dataset or get_dataset(session)
            record = active_model(session, dataset.id)
            if record is None:
                raise InputError(
                    f"no active forecasting model for data set {dataset.name!r}",
                    field="--model",
                    hint="train one with `lsdm train`",
                )
        session.expunge(record)
    return record, Forecaster.load(model_folder(record.path), device=device, expected_sha256=record.sha256 or None)
