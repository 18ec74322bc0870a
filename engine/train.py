"""Training: AdamW, EMA weights, gradient clipping, early stopping on validation; the checkpoint is
registered in the database.

Data flow: db -> ``load_series`` -> splits and normalisation (fitted on training hours only) ->
batches gathered on the fly (the environment embeddings of 25 hours x 128 dims per window would not fit
in memory for all windows at once) -> ``diffusion_loss`` -> EMA weights -> ``Forecaster.save``.
"""

from __future__ import annotations

import copy
import gc
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
from engine.model.denoiser import Denoiser
from engine.model.diffusion import Schedule, Standardiser, diffusion_loss
from engine.model.prior import PriorFit
from engine.requests import TrainRequest

Progress = Callable[[dict], None]
Tick = Callable[[int, int, int], None]


# --- several processes (torchrun, DDP): docs/scale.md#training-on-several-processes -------------------------


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes: rank 0 of 1 alone; under torchrun (``WORLD_SIZE``
    set) its rank in a process group, joined here (gloo on the CPU, nccl on CUDA)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_processes(device: torch.device) -> tuple[Processes, torch.device]:
    """The process group of a torchrun launch (``lsdm train --nproc N``), and this rank's device (its own
    GPU on CUDA); alone: ``Processes()`` and ``device`` unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size()), device


def _noise_draws(config: ModelConfig, windows: int, services: int, generator: torch.Generator) -> dict:
    """The random draws ``diffusion_loss`` makes for a training batch of ``windows`` windows, in its order
    (conditioning dropout, steps, noises): every process draws the whole batch's from the same generator and
    takes its own rows, so a step's randomness is the one a single process would draw."""
    draws = max(1, int(config.noise_draws))
    keep = torch.rand(windows, generator=generator) >= config.cond_dropout if config.cond_dropout > 0 else None
    n = windows * draws
    t = torch.randint(0, config.diffusion_steps, (n,), generator=generator)
    noise = torch.randn((n, config.horizon, services), generator=generator)
    return {"keep": keep, "t": t, "noise": noise, "draws": draws}


class _BatchLoss(torch.nn.Module):
    """The training loss as a module's forward, so that DistributedDataParallel sees the forward pass (its
    gradient hooks are armed there) while ``diffusion_loss`` calls the denoiser's methods."""

    def __init__(self, denoiser: Denoiser, schedule: Schedule, standardiser: Standardiser) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.schedule = schedule
        self.standardiser = standardiser

    def forward(
        self, batch: dict, t: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor | None, draws: int
    ) -> torch.Tensor:
        return diffusion_loss(
            self.denoiser,
            self.schedule,
            self.standardiser,
            batch,
            t=t,
            noise=noise,
            keep_env=keep,
            draws=draws,
        )


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
    procs, dev = join_processes(pick_device(device))
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

    step_loss = None
    if procs.world > 1:  # every process the same weights (DDP broadcasts rank 0's) and its share of each batch
        from torch.nn.parallel import DistributedDataParallel

        step_loss = DistributedDataParallel(_BatchLoss(model, schedule, standardiser), find_unused_parameters=True)
    n_services = len(series.services)

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
            optimizer.zero_grad(set_to_none=True)
            if step_loss is None:
                batch = to_batch(
                    series, values, Windows(splits.train.entity[idx], splits.train.hour[idx]), spec, dev, profile
                )
                loss = diffusion_loss(model, schedule, standardiser, batch, generator)
                loss.backward()
            else:
                loss = _distributed_step(step_loss, procs, idx, splits, series, values, spec, dev, profile, config,
                                         n_services, generator)  # fmt: skip
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
        if progress and procs.main:
            progress(entry)
        if val < best - 1e-5:
            best, best_state, stale = val, copy.deepcopy(ema.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                stopped = "early stopping"
        if stopped == "epochs" and max_seconds is not None and time.perf_counter() - started > max_seconds:
            stopped = "time budget"
        if procs.world > 1:  # rank 0 decides for all (its clock; the validation losses are the same everywhere)
            stopped = _agreed(stopped, procs)
        if stopped != "epochs":
            break
    if step_loss is not None:
        # The wrapper holds the process group and sits in reference cycles: left to the interpreter's exit, the
        # group's threads were torn down there and a process died with "terminate called without an active
        # exception" (about 1 run in 20 on busy cores). Freed here, while every process still waits below.
        del step_loss
        gc.collect()
        import torch.distributed as dist

        dist.barrier()
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
        "processes": procs.world,
    }
    forecaster.meta["metrics"] = metrics
    return forecaster, metrics, splits


def _distributed_step(
    step_loss: torch.nn.Module,
    procs: Processes,
    idx: np.ndarray,
    splits: Splits,
    series: SeriesData,
    values: np.ndarray,
    spec: SplitSpec,
    dev: torch.device,
    profile: HourlyProfile,
    config: ModelConfig,
    n_services: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """One training step's share of this process: its contiguous slice of the batch's windows with their rows
    of the batch's draws. Each loss is weighted by its share of the windows (DDP averages the gradients over
    the processes), so the step's gradient is the whole batch's mean; returns the whole batch's loss.

    A process whose slice is empty (a last batch smaller than the number of processes) runs one window with
    weight 0: every process must take part in each step's gradient exchange."""
    import torch.distributed as dist

    drawn = _noise_draws(config, len(idx), n_services, generator)
    bounds = np.linspace(0, len(idx), procs.world + 1).round().astype(int)
    lo, hi = int(bounds[procs.rank]), int(bounds[procs.rank + 1])
    weight = (hi - lo) * procs.world / len(idx)
    if hi == lo:
        lo, hi = 0, 1
    mine = idx[lo:hi]
    draws = drawn["draws"]
    batch = to_batch(series, values, Windows(splits.train.entity[mine], splits.train.hour[mine]), spec, dev, profile)
    keep = None if drawn["keep"] is None else drawn["keep"][lo:hi]
    loss = step_loss(batch, drawn["t"][lo * draws : hi * draws], drawn["noise"][lo * draws : hi * draws], keep, draws)
    (loss * weight).backward()
    total = (loss.detach() * weight / procs.world).reshape(1)
    dist.all_reduce(total)  # the whole batch's loss, for the curve
    return total[0]


def _agreed(stopped: str, procs: Processes) -> str:
    """Rank 0's reason to stop (or "epochs": go on), the same in every process."""
    import torch.distributed as dist

    reasons = ["epochs", "early stopping", "time budget"]
    code = torch.tensor([reasons.index(stopped)])
    dist.broadcast(code, src=0)
    return reasons[int(code[0])]


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
    """`lsdm train`: fit on the data set, save, register. Under torchrun (``lsdm train --nproc N``) every process
    trains its share and rank 0 alone saves and registers; the others return ``record_id`` 0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, world)))  # the cores shared by the processes
    with database.session() as session:
        dataset = get_dataset(session, dataset_name)
        series = load_series(session, dataset, env_kind=config.env_kind)
        dataset_id = dataset.id
    forecaster, metrics, _ = fit(
        series, config, split=split, device=device, progress=progress, max_seconds=max_seconds, tick=tick
    )
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            rank = dist.get_rank()
            dist.destroy_process_group()
            if rank != 0:
                return TrainResult(forecaster, 0, Path(), metrics)
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
