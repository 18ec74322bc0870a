"""Probabilistic recursive forecasts (paper Sec. VI-C) and forecast runs stored in the database.

``recursive_forecast`` is nanoGPT's ``generate`` for traffic: a plain loop that samples the next hour
from the last H hours, appends it and moves on. Every sample path feeds back its OWN samples (never
the median), so the spread of the paths is the forecast's honest uncertainty. Future locations follow
a scenario: ``habitual`` (the entity's most frequent cell at that hour of the week, from hours before
the start), ``sampled`` (each path draws its own cell per hour from the entity's history,
engine/load/location.py), ``stay`` (the last known cell), ``observed`` (the cells the data recorded, for backtests:
the habitual cell where none is recorded or beyond the data), or explicit cells (one per step, the last
one repeated).
All paths of all entities are denoised in one batch; the history is encoded once per step and only
the new hour is denoised (engine/model/denoiser.py).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from db import Database
from db.models import ForecastRun
from db.queries import get_dataset
from engine.data.windows import HourlyProfile, SeriesData, SeriesReader, embeddings_of, load_series
from engine.errors import InputError
from engine.load.location import draw_locations
from engine.model import Forecaster
from engine.model.diffusion import NoiseSource, entity_generators, sample
from engine.requests import ForecastRequest, parse_location_text
from engine.train import check_compatible, load_model

HourProgress = Callable[[int, int], None]  # (hours forecast so far, of the horizon)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class LocationPlan:
    """Where each entity is during the forecast: habitual | sampled | stay | observed | explicit cell rows per
    step. ``sampled`` is the one where an entity's paths differ (``path_cells``)."""

    mode: str = "habitual"
    cells: list[int] = field(default_factory=list)  # rows in SeriesData.cell_ids, for mode "cells"
    paths: np.ndarray | None = None  # (E, S, N) cell rows drawn beforehand, for mode "drawn"

    @classmethod
    def drawn(cls, paths: np.ndarray) -> LocationPlan:
        """Every path's cells given (a load run draws them first to find who reaches its cells)."""
        return cls("drawn", paths=np.asarray(paths))

    @classmethod
    def of(cls, location: str, cells: tuple[str, ...], series: SeriesData) -> LocationPlan:
        """A request's ``location`` and ``cells`` (cell keys of the data set) as a plan."""
        if location != "cells":
            return cls(location)
        index = {key: i for i, key in enumerate(series.cell_keys)}
        unknown = [key for key in cells if key not in index]
        if unknown:
            raise InputError(f"unknown cell {unknown[0]!r} in data set {series.dataset_name!r}", field="cells")
        return cls("cells", [index[key] for key in cells])

    @classmethod
    def parse(cls, text: str, series: SeriesData) -> LocationPlan:
        """``habitual`` | ``stay`` | ``observed`` | ``cell:KEY[,KEY...]`` (a what-if scenario's location)."""
        return cls.of(*parse_location_text(text), series)

    @property
    def per_path(self) -> bool:
        return self.mode in ("sampled", "drawn")

    def path_cells(
        self, series: SeriesData, entities: np.ndarray, start: int, steps: int, samples: int, seed: int
    ) -> np.ndarray:
        """Cell rows of every path: (E, S, N); the same for all of an entity's paths but in ``sampled``."""
        if self.mode == "drawn":
            assert self.paths is not None
            given = self.paths
            if given.shape[:2] != (len(entities), samples):
                raise ValueError(f"drawn cells of shape {given.shape} for {len(entities)} entities x {samples} paths")
            if given.shape[2] < steps:  # the last hour's cells for the rest of a multi-hour model's last window
                given = np.concatenate([given, np.repeat(given[:, :, -1:], steps - given.shape[2], axis=2)], axis=2)
            return given[:, :, :steps]
        if self.per_path:
            return draw_locations(
                series, entities, start=start, steps=steps, samples=samples, seed=seed, method="day-type"
            )
        cells = np.stack([self.cell_rows(series, int(e), start, steps) for e in entities]).reshape(len(entities), steps)
        return np.repeat(cells[:, None, :], samples, axis=1)

    def cell_rows(self, series: SeriesData, entity: int, start: int, steps: int) -> np.ndarray:
        """The cell rows of one entity's forecast hours, (N,); in ``sampled``: the habitual ones."""
        if self.mode == "cells":
            return np.array([self.cells[min(i, len(self.cells) - 1)] for i in range(steps)])
        if self.mode == "stay":
            known = series.location[entity, :start]
            known = known[known >= 0]
            return np.full(steps, known[-1] if len(known) else -1)
        if self.mode == "observed":  # where the data recorded the entity; the habitual cell elsewhere
            recorded = np.full(steps, -1)
            inside = series.location[entity, start : start + steps]
            recorded[: len(inside)] = inside
            return np.array(
                [
                    cell if cell >= 0 else series.habitual_cell(entity, start + i, before=start)
                    for i, cell in enumerate(recorded)
                ]
            )
        return np.array([series.habitual_cell(entity, start + i, before=start) for i in range(steps)])


@dataclass
class ForecastResult:
    """Sample paths and their summaries, per entity, step and service."""

    entities: list[int]  # rows in SeriesData
    start: int
    horizon: int
    paths: np.ndarray  # (E, S, N, K) bytes
    paths_v: np.ndarray  # (E, S, N, K) normalised scale
    truth: np.ndarray  # (E, N, K) bytes, NaN where unknown (beyond the data)
    cells: np.ndarray  # (E, N) cell rows used for the forecast hours (sampled: the paths' most frequent one)
    seconds: float
    path_cells: np.ndarray | None = None  # (E, S, N) each path's cell rows, where paths differ (sampled)

    def summary(self, scale: str = "bytes") -> dict[str, np.ndarray]:
        paths = self.paths if scale == "bytes" else self.paths_v
        out = {"mean": paths.mean(axis=1)}
        for q, values in zip(QUANTILES, np.quantile(paths, QUANTILES, axis=1), strict=True):
            out[f"q{int(q * 100):02d}"] = values
        out["median"] = out.pop("q50")
        return out  # each (E, N, K)

    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {
            "paths": self.paths.astype(np.float32),
            "paths_v": self.paths_v.astype(np.float32),
            "truth": self.truth.astype(np.float32),
            "cells": self.cells,
            "entities": np.array(self.entities),
            "start": self.start,
            "horizon": self.horizon,
        }
        if self.path_cells is not None:
            arrays["path_cells"] = self.path_cells
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @staticmethod
    def arrays_from_npz(data: bytes) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def _calendar(series: SeriesData, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day and day of week for any hour index, also beyond the data."""
    origin = series.time_origin
    absolute = origin.hour + hours
    return absolute % 24, (origin.weekday() + absolute // 24) % 7


# Memory of a recursive forecast, all of whose paths are denoised in one batch: per path, a window of H + F
# hours x K services x C channels lives in about 12 float32 copies at once (attention's q, k, v and output,
# the residuals, the feed-forward's 4C hidden layer), plus each service's time attention (heads x T x T, and
# its softmax), plus the paths themselves. Measured against the peak memory of `lsdm forecast` on the default
# city's model (H 24, C 64, 4 heads, 10 services), 100 users: 7.3 GB at 64 samples, 24.3 GB at 256; this
# estimates 6.2 and 24.9 GB (docs/architecture.md#refusals-at-the-edges).
ACTIVATION_COPIES = 12
MEMORY_SHARE = 0.8  # of the memory free when a forecast starts


def forecast_bytes(forecaster: Forecaster, paths: int, steps: int, services: int) -> int:
    """About how many bytes a recursive forecast of ``paths`` paths over ``steps`` hours needs at its peak."""
    config = forecaster.config
    window = config.history + config.horizon
    per_path = (
        window * services * config.channels * 4 * ACTIVATION_COPIES
        + services * config.heads * window * window * 4 * 2
        + (config.history + steps) * services * 4 * 4
    )
    return int(paths * per_path)


def memory_free(device: torch.device) -> int | None:
    """Bytes free for a forecast on ``device`` (Linux: MemAvailable; elsewhere the free physical pages), or
    None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(forecaster: Forecaster, entities: int, samples: int, steps: int, services: int) -> None:
    """Refuse, before anything is allocated, a forecast whose paths would not fit in the memory free now,
    saying how many samples would."""
    need = forecast_bytes(forecaster, entities * samples, steps, services)
    free = memory_free(forecaster.device)
    if free is None or need <= free * MEMORY_SHARE:
        return
    fit = int(free * MEMORY_SHARE // max(1, forecast_bytes(forecaster, entities, steps, services)))
    where = "GPU" if forecaster.device.type == "cuda" else "machine"
    fewer = f"at most {fit} samples fit" if fit >= 1 else "not even one sample fits"
    raise InputError(
        f"this forecast needs about {need / 2**30:.1f} GiB ({entities:,} x {samples:,} paths) and this {where} has "
        f"{free / 2**30:.1f} GiB free: {fewer} for {entities:,} {'entity' if entities == 1 else 'entities'}; "
        "ask for fewer samples or fewer entities at once",
        field="samples",
    )


def _check_forecast(
    forecaster: Forecaster, series: SeriesData, *, start: int, horizon: int, samples: int, guidance: float
) -> None:
    h = forecaster.config.history
    if start < h:
        raise InputError(f"the model needs {h} hours of history: start must be >= {h}, got {start}", field="start")
    if start > series.hours:
        raise InputError(f"start must be within the data (<= {series.hours}), got {start}", field="start")
    if horizon < 1 or samples < 1:
        raise InputError("horizon and samples must be >= 1", field="horizon")
    if guidance < 0:
        raise InputError(f"guidance must be >= 0, got {guidance}", field="guidance")


@dataclass
class _Conditions:
    """What a recursive forecast's paths are conditioned on, per entity over the hours start - H ..
    start + N - 1 (the history, then the N forecast hours); the rollout reads one window of H + F at a time."""

    hours: np.ndarray  # (H + N,) hour of day
    days: np.ndarray  # (H + N,) day of week
    env: np.ndarray  # (E, H + N, D): the cell's embedding [, the entity's usual one at that hour of day]; D may be 0
    profile: np.ndarray  # (E, H + N, K): the entity's hourly profile
    cells: np.ndarray  # (E, N): the scenario's cell rows of the forecast hours
    # Where an entity's paths are in different cells (sampled): (E * S, N) each path's cell rows, and the
    # cells' embeddings of the forecast hours, which replace the first columns of ``env`` path by path.
    path_cells: np.ndarray | None = None
    cell_env: np.ndarray | None = None

    def path_env(self, env: torch.Tensor, step: int, history: int) -> torch.Tensor:
        """``env`` of a window per path, (E * S, H + F, D), with each path's own cells in its forecast hours."""
        if self.path_cells is None or self.cell_env is None:
            return env
        width = self.cell_env.shape[1]
        first = max(0, history - step)  # the window's first forecast hour
        if width == 0 or first >= env.shape[1]:
            return env
        rows = self.path_cells[:, step + first - history : step + env.shape[1] - history]  # (E * S, F')
        env = env.clone()
        env[:, first:, :width] = torch.from_numpy(embeddings_of(self.cell_env, rows)).to(env.device)
        return env


def _modal(cells: np.ndarray) -> np.ndarray:
    """The most frequent cell row over the paths' axis: (E, S, N) -> (E, N)."""
    out = np.empty((cells.shape[0], cells.shape[2]), dtype=np.int64)
    for e in range(cells.shape[0]):
        for n in range(cells.shape[2]):
            values, counts = np.unique(cells[e, :, n], return_counts=True)
            out[e, n] = values[np.argmax(counts)]
    return out


def _conditions(
    forecaster: Forecaster,
    series: SeriesData,
    e_rows: np.ndarray,
    start: int,
    n_steps: int,
    plan: LocationPlan,
    values: np.ndarray,
    history_env: np.ndarray | None,
    path_cells: np.ndarray | None = None,
) -> _Conditions:
    h = forecaster.config.history
    # Cells of every hour: observed ones for the history, the scenario's for the forecast hours (where the
    # paths draw their own, the most frequent cell here and each path's in ``path_env``).
    if path_cells is not None:
        future_cells = _modal(path_cells)
    else:
        future_cells = np.stack([plan.cell_rows(series, int(e), start, n_steps) for e in e_rows])  # (E, N)
    past_cells = series.location[e_rows, start - h : start]  # (E, H)
    # The observed hours were spent in the places as they were (``history_env``), the forecast hours in
    # the scenario's.
    past_env = embeddings_of(series.env if history_env is None else history_env, past_cells)
    env = np.concatenate([past_env, series.env_of_cells(future_cells)], axis=1)  # (E, H + N, D)
    hours = np.arange(start - h, start + n_steps)
    hod, dow = _calendar(series, hours)
    # The entities' hourly profiles from every hour before the start (side information).
    profile = HourlyProfile.build(
        series, values, start, env=forecaster.config.uses_env_profile, history_env=history_env
    )
    if profile.has_env:  # [the cell's embedding, the entity's usual one at that hour of day]
        env = np.concatenate([env, profile.env_at(e_rows[:, None], hours[None, :])], axis=-1)
    return _Conditions(
        hod,
        dow,
        env,
        profile.at(e_rows[:, None], hours[None, :]),
        future_cells,
        None if path_cells is None else path_cells.reshape(-1, n_steps),
        None if path_cells is None else series.env,
    )


@torch.no_grad()
def _sample_next_hours(
    forecaster: Forecaster,
    conditions: _Conditions,
    history: np.ndarray,
    step: int,
    *,
    shared: bool,
    samples: int,
    sampler: str,
    steps: int,
    guidance: float,
    generator: NoiseSource,
    antithetic: bool,
) -> torch.Tensor:
    """Samples of the F hours after ``history`` for every path: (E * S, F, K) on the v scale.

    ``history``: the last H hours of every path, (E * S, H, K); with ``shared`` (no sample fed back yet, so
    an entity's S paths hold the same hours) one per entity, (E, H, K), encoded once and sampled S times."""
    model, device = forecaster.model, forecaster.device
    h, f = forecaster.config.history, forecaster.config.horizon
    n_e, window = len(conditions.env), slice(step, step + h + f)
    hours = torch.from_numpy(np.tile(conditions.hours[window], (n_e, 1))).long().to(device)  # (E, H + F)
    days = torch.from_numpy(np.tile(conditions.days[window], (n_e, 1))).long().to(device)
    env = torch.from_numpy(conditions.env[:, window]).to(device)
    profile = torch.from_numpy(conditions.profile[:, window]).to(device)
    if not shared:  # a window per path: its entity's conditions repeated for each (and its own cells)
        hours, days, env, profile = (t.repeat_interleave(samples, 0) for t in (hours, days, env, profile))
        env = conditions.path_env(env, step, h)
    per_window = samples if shared else 1
    hist = torch.from_numpy(history).to(device)
    cache = model.encode_history(hist, hours, days, env, None, profile)
    null_keep = torch.zeros(len(hist), dtype=torch.bool, device=device)
    null = model.encode_history(hist, hours, days, env, null_keep, profile) if guidance != 1.0 else None
    # Each window's prior mean from its own history (a path's own samples fed back).
    prior = model.prior_mean(hist, profile, env, hours, days)
    return sample(
        model,
        forecaster.schedule,
        forecaster.standardiser,
        cache,
        per_window,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        null_cache=null,
        generator=generator,
        offset=None if prior is None else prior.repeat_interleave(per_window, 0),
        antithetic=samples if antithetic else 0,
    )


def recursive_forecast(
    forecaster: Forecaster,
    series: SeriesData,
    entities: list[int],
    *,
    start: int,
    horizon: int,
    samples: int = 32,
    sampler: str = "ddim",
    steps: int = 10,
    plan: LocationPlan | None = None,
    guidance: float = 1.0,
    seed: int = 0,
    values: np.ndarray | None = None,
    progress: HourProgress | None = None,
    antithetic: bool = True,
    history_env: np.ndarray | None = None,
) -> ForecastResult:
    """Forecast hours start .. start + horizon - 1 for the given entity rows, ``samples`` paths each.

    ``antithetic`` (default): an entity's paths come in pairs driven by opposite noise (``paired_noise``
    in engine/model/diffusion.py). Every path is still a sample of the model; the paths' mean is a
    better estimate of the model's expected traffic for the same number of paths
    (docs/model.md#point-forecasts-and-sample-size). False: independent noise, as in runs stored before the
    option.

    ``history_env``: the cells' embeddings while the history was recorded, when ``series.env`` is a
    what-if's edited one (default: ``series.env``): the observed hours get them, and so does the
    entity's usual environment (the environment profile, engine/data/windows.py HourlyProfile), which
    summarises the past. The edit changes the forecast hours' environment only."""
    _check_forecast(forecaster, series, start=start, horizon=horizon, samples=samples, guidance=guidance)
    h, f = forecaster.config.history, forecaster.config.horizon
    started = time.perf_counter()
    e_rows = np.asarray(entities, dtype=np.int64)
    asked_rows = series.source_row(e_rows)  # what the result names, and what seeds each entity's draws
    if values is None and len(e_rows) < len(series.entity_keys):
        # These entities alone: normalising, profiles and draws then cost what these entities cost, not what the
        # whole data set does (a chunk of a city-wide run). Their numbers are the same (row-wise operations and
        # draws seeded by each entity's row in the data set).
        series, e_rows = series.rows(e_rows), np.arange(len(e_rows))
    values = forecaster.normaliser.forward(series.traffic) if values is None else values
    n_e, k = len(e_rows), len(series.services)
    n_steps = int(np.ceil(horizon / f)) * f
    check_memory(forecaster, n_e, samples, n_steps, k)
    plan = plan or LocationPlan()
    path_cells = plan.path_cells(series, e_rows, start, n_steps, samples, seed) if plan.per_path else None
    conditions = _conditions(forecaster, series, e_rows, start, n_steps, plan, values, history_env, path_cells)
    generator = entity_generators(seed, [int(e) for e in series.source_row(e_rows)])  # alone = in any batch

    # paths: (E * S, H + N, K); each entity's S paths start from the same observed history.
    paths = np.repeat(values[e_rows, start - h : start], samples, axis=0)
    paths = np.concatenate([paths, np.zeros((n_e * samples, n_steps, k), np.float32)], axis=1)
    for step in range(0, n_steps, f):
        # At the first step an entity's paths hold the same (observed) hours: encode them once per entity. (An
        # optimisation that also fixes the numbers: encoding them per path gives the same values up to rounding.)
        # Not where the paths are in different cells: the window's forecast hour differs path by path.
        shared = step == 0 and path_cells is None
        history = paths[:: samples if shared else 1, step : step + h]
        draws = _sample_next_hours(
            forecaster,
            conditions,
            history,
            step,
            shared=shared,
            samples=samples,
            sampler=sampler,
            steps=steps,
            guidance=guidance,
            generator=generator,
            antithetic=antithetic,
        )
        # Whole bytes: a sample below half a byte is 0 bytes, and is fed back as such (Normaliser.snap).
        paths[:, h + step : h + step + f] = forecaster.normaliser.snap(draws.cpu().numpy())
        if progress:
            progress(min(step + f, horizon), horizon)
    paths_v = paths[:, h : h + horizon].reshape(n_e, samples, horizon, k)
    truth = np.full((n_e, horizon, k), np.nan)
    known = min(horizon, max(0, series.hours - start))
    truth[:, :known] = series.traffic[e_rows, start : start + known]
    return ForecastResult(
        entities=[int(e) for e in asked_rows],
        start=start,
        horizon=horizon,
        paths=forecaster.normaliser.inverse(paths_v),
        paths_v=paths_v,
        truth=truth,
        cells=conditions.cells[:, :horizon],
        seconds=time.perf_counter() - started,
        path_cells=None if path_cells is None else path_cells[:, :, :horizon],
    )


def hour_label(series: SeriesData, hour: int) -> str:
    """'Tue 14:00' for an hour index of the data set."""
    moment = series.time_origin + timedelta(hours=int(hour))
    return moment.strftime("%a %H:%M")


def entity_rows(series: SeriesData, kind: str, keys: tuple[str, ...]) -> list[int]:
    """Entity keys of the data set -> their rows (an unknown key is an error naming it)."""
    index = {key: i for i, key in enumerate(series.entity_keys)}
    unknown = [key for key in keys if key not in index]
    if unknown:
        raise InputError(f"no {kind} {unknown[0]!r} in data set {series.dataset_name!r}", field="entities")
    return [index[key] for key in keys]


def check_sampler(forecaster: Forecaster, sampler: str, steps: int) -> None:
    """DDIM takes at most the model's diffusion steps (the request bounds what it can without the model)."""
    most = forecaster.config.diffusion_steps
    if sampler == "ddim" and steps > most:
        raise InputError(
            f"DDIM takes 1 to {most} steps (the model's diffusion steps), got {steps}", field="sampler_steps"
        )


def step_summaries(result: ForecastResult, series: SeriesData, e: int) -> list[dict]:
    """Per step: label, per-service and total mean/median/quantiles in bytes (and truth if known)."""
    stats = result.summary("bytes")
    totals = result.paths[e].sum(axis=-1)  # (S, N)
    total_q = np.quantile(totals, QUANTILES, axis=0)
    steps = []
    for n in range(result.horizon):
        hour = result.start + n
        services: dict[str, dict[str, float | None]] = {}
        for k, name in enumerate(series.services):
            services[name] = {key: float(values[e, n, k]) for key, values in stats.items()}
            truth = result.truth[e, n, k]
            services[name]["truth"] = None if np.isnan(truth) else float(truth)
        truth_total = result.truth[e, n]
        cell = int(result.cells[e, n])
        steps.append(
            {
                "hour": hour,
                "label": hour_label(series, hour),
                "cell": series.cell_keys[cell] if cell >= 0 else None,
                "services": services,
                "total": {
                    "mean": float(totals[:, n].mean()),
                    "median": float(total_q[2, n]),
                    "q05": float(total_q[0, n]),
                    "q25": float(total_q[1, n]),
                    "q75": float(total_q[3, n]),
                    "q95": float(total_q[4, n]),
                    "truth": None if np.isnan(truth_total).any() else float(truth_total.sum()),
                },
            }
        )
    return steps


@dataclass
class ForecastContext:
    """A loaded model and the data it forecasts: what a long-lived process (the app, the worker) keeps
    between forecasts instead of reading them again (``load_context``)."""

    record_id: int
    record_sha256: str
    dataset_id: int
    forecaster: Forecaster
    series: SeriesData


def load_context(
    database: Database,
    *,
    model_id: int | None = None,
    dataset_name: str | None = None,
    device: str | None = None,
    entities: bool = True,
) -> ForecastContext:
    """Load the model (default: the active one) and the data set's series with its embeddings; without any
    entity's series when ``entities`` is False (a city-wide run reads them chunk by chunk: ``SeriesReader``)."""
    with database.session() as session:
        dataset = get_dataset(session, dataset_name)
        record, forecaster = load_model(database, model_id, dataset=dataset, device=device)
        series = load_series(
            session,
            dataset,
            env_kind=forecaster.config.env_kind,
            encoder_id=forecaster.meta.get("data", {}).get("encoder_id"),
            of_ids=None if entities else [],
        )
        dataset_id = dataset.id
    check_compatible(forecaster, series)
    return ForecastContext(record.id, record.sha256, dataset_id, forecaster, series)


def run_forecast(
    database: Database,
    request: ForecastRequest,
    *,
    store: bool = True,
    progress: HourProgress | None = None,
    context: ForecastContext | None = None,
) -> dict:
    """`lsdm forecast` and the ``forecast`` job: load the model and data (or use ``context``), forecast,
    store the run (one transaction) with its request."""
    request = request.checked()
    if request.every:
        out = prepare_parts_folder(request.out)  # refused before the model is loaded
    if context is None:  # every entity's run reads the entities' series chunk by chunk
        context = load_context(
            database,
            model_id=request.model_id,
            dataset_name=request.dataset,
            device=request.device,
            entities=not request.every,
        )
    forecaster, series, dataset_id = context.forecaster, context.series, context.dataset_id
    check_sampler(forecaster, request.sampler, request.sampler_steps)
    if request.every:
        return run_every_forecast(database, request, context, out, progress=progress, store=store)
    rows = entity_rows(series, request.entity_kind, request.entities)
    plan = LocationPlan.of(request.location, request.cells, series)
    result = recursive_forecast(
        forecaster,
        series,
        rows,
        start=request.start,
        horizon=request.horizon,
        samples=request.samples,
        sampler=request.sampler,
        steps=request.sampler_steps,
        plan=plan,
        guidance=request.guidance,
        seed=request.seed,
        progress=progress,
        antithetic=request.antithetic,
    )
    params = {
        **request.to_params(),
        "model_id": context.record_id,
        "dataset": series.dataset_name,
        "model_sha256": context.record_sha256,
    }
    entities = [
        {"entity": f"{request.entity_kind}:{series.entity_keys[e]}", "steps": step_summaries(result, series, i)}
        for i, e in enumerate(result.entities)
    ]
    payload = {
        "run_id": None,
        "model_id": context.record_id,
        "seconds": round(result.seconds, 4),
        "params": params,
        "services": series.services,
        "entities": entities,
    }
    if store:
        with database.write_session() as session, session.begin():
            run = ForecastRun(
                model_id=context.record_id,
                dataset_id=dataset_id,
                params=params,
                summary={"entities": entities},
                result=result.to_npz_bytes(),
                seconds=result.seconds,
            )
            session.add(run)
            session.flush()
            payload["run_id"] = run.id
    return payload


# --- every entity of the data set: docs/scale.md#every-entity-forecast -------------------------------------

EVERY_CHUNK = 16  # entities per chunk (a load run's CHUNK_USERS: the fastest per path-hour on 2 cores)
EVERY_STATS = ("mean", "q05", "median", "q95")


def reader_of(spec: dict, forecaster: Forecaster | None = None) -> tuple[Forecaster, SeriesReader]:
    """The model and a reader of the data set that a chunk task's ``spec`` names (its ``database`` URL,
    ``model_id``, ``dataset``, ``device``, ``env_kind``, ``encoder_id``), for a process of its own (a Ray
    actor; the database is opened as it is, not upgraded), or with the caller's model already loaded. The
    task then reads only its chunk's entities: a worker's memory does not grow with the data set."""
    from db import open_database

    database = open_database(spec["database"], migrate=False)
    with database.session() as session:
        dataset = get_dataset(session, spec["dataset"])
        if forecaster is None:
            _, forecaster = load_model(database, spec["model_id"], dataset=dataset, device=spec["device"])
    reader = SeriesReader.open(database, dataset, env_kind=spec["env_kind"], encoder_id=spec["encoder_id"])
    return forecaster, reader


def chunk_spec(database_url: str, context: ForecastContext, request: Any) -> dict:
    """What a chunk task needs to load the model and read its entities by itself (plain data, for Ray)."""
    return {
        "database": database_url,
        "model_id": context.record_id,
        "dataset": context.series.dataset_name,
        "device": request.device,
        "env_kind": context.forecaster.config.env_kind,
        "encoder_id": context.series.encoder_id or "",
        "params": request.to_params(),
    }


def prepare_parts_folder(out: str | None) -> Path:
    """Where an every-entity run's Parquet parts go: ``out``, or ``<data dir>/runs/forecast-<time>``. It must
    not exist, or be an empty folder: nothing the user made is replaced."""
    from db import data_dir

    folder = Path(out).expanduser() if out else data_dir() / "runs" / f"forecast-{time.strftime('%Y%m%d-%H%M%S')}"
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "a folder with files in it"
        raise InputError(f"{folder} is {what}; expected a new or empty folder for the Parquet parts", field="out")
    if not folder.parent.is_dir():
        raise InputError(f"no such folder: {folder.parent}", field="out")
    return folder


class ForecastChunks:
    """A chunk of entity rows -> each entity's per-hour, per-service mean and quantiles, and the chunk's sum
    over its entities path by path (for the data set's total): the task that engine/executors.py runs here or
    on Ray's actors (which load the model and the data from ``spec``)."""

    def __init__(self, spec: dict, forecaster: Forecaster | None = None) -> None:
        self.forecaster, self.reader = reader_of(spec, forecaster)
        self.request = ForecastRequest.from_params(spec["params"])

    def __call__(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self.request
        series = self.reader.rows(np.asarray(chunk["entities"]))  # this chunk's entities only
        result = recursive_forecast(
            self.forecaster,
            series,
            list(range(len(series.entity_keys))),
            start=request.start,
            horizon=request.horizon,
            samples=request.samples,
            sampler=request.sampler,
            steps=request.sampler_steps,
            plan=LocationPlan.of(request.location, request.cells, series),
            guidance=request.guidance,
            seed=request.seed,
            antithetic=request.antithetic,
        )
        paths = result.paths  # (E, S, N, K) bytes
        q05, median, q95 = np.quantile(paths, (0.05, 0.5, 0.95), axis=1)
        return {
            "stats": np.stack([paths.mean(axis=1), q05, median, q95], axis=-1),  # (E, N, K, 4)
            "sum": paths.sum(axis=0),  # (S, N, K)
        }


def run_every_forecast(
    database: Database,
    request: ForecastRequest,
    context: ForecastContext,
    out: Path,
    *,
    progress: HourProgress | None = None,
    store: bool = True,
) -> dict:
    """Every entity's forecast (``--entity all``): each chunk's per-entity quantiles written as a Parquet part
    (rows: entity, hour, time, service, mean, q05, median, q95 in bytes), the data set's total per hour and
    service summed path by path, and one run row naming the folder. The parts are written to a hidden folder
    beside ``out`` and renamed to it when complete; the row is written after, in one transaction, and the
    folder removed if that fails: a run is all there or not there. ``progress``: (entities done, of all)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.executors import Executor, map_chunks

    series = context.series  # its entities are not used: each chunk reads its own (ForecastChunks)
    executor = Executor.parse(request.executor, request.workers)
    started = time.perf_counter()
    spec = chunk_spec(database.url, context, request)
    local = ForecastChunks(spec, context.forecaster)
    entity_keys = local.reader.entity_keys
    rows = np.arange(len(entity_keys))
    chunks = [{"entities": rows[i : i + EVERY_CHUNK]} for i in range(0, len(rows), EVERY_CHUNK)]
    n_k, hours = len(series.services), np.arange(request.start, request.start + request.horizon)
    labels = [hour_label(series, int(h)) for h in hours]
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    total = np.zeros((request.samples, request.horizon, n_k))
    written = 0
    try:
        parts = map_chunks(executor, lambda: local, (ForecastChunks, {"spec": spec}), chunks)
        for i, (chunk, part) in enumerate(zip(chunks, parts, strict=True)):
            stats = np.asarray(part["stats"])  # (E, N, K, 4)
            e, n = stats.shape[0], stats.shape[1]
            keys = np.asarray(entity_keys, dtype=object)[chunk["entities"]]
            columns = {
                "entity": np.repeat(keys, n * n_k),
                "hour": np.tile(np.repeat(hours, n_k), e),
                "time": np.tile(np.repeat(np.asarray(labels, dtype=object), n_k), e),
                "service": np.tile(np.asarray(series.services, dtype=object), e * n),
                **{name: stats[..., j].reshape(-1) for j, name in enumerate(EVERY_STATS)},
            }
            pq.write_table(pa.table(columns), staging / f"part-{i:05d}.parquet")
            total += part["sum"]
            written += e * n * n_k
            if progress:
                progress(int(min(len(rows), (i + 1) * EVERY_CHUNK)), len(rows))
        if out.exists():
            out.rmdir()  # empty (checked): replaced by the complete folder
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    city = _total_steps(total, hours, labels, series.services)
    params = {
        **request.to_params(),
        "model_id": context.record_id,
        "dataset": series.dataset_name,
        "model_sha256": context.record_sha256,
        "out": str(out),
        "entities_count": len(rows),
    }
    every = {"parts": str(out), "entities": len(rows), "rows": written, "executor": str(executor), "total": city}
    payload = {"run_id": None, "model_id": context.record_id, "seconds": round(seconds, 4), "params": params,
               "services": series.services, "entities": [], "every": every}  # fmt: skip
    if store:
        try:
            with database.write_session() as session, session.begin():
                run = ForecastRun(
                    model_id=context.record_id,
                    dataset_id=context.dataset_id,
                    params=params,
                    summary={"entities": [], "every": every},
                    result=None,
                    seconds=seconds,
                )
                session.add(run)
                session.flush()
                payload["run_id"] = run.id
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    return payload


def _total_steps(total: np.ndarray, hours: np.ndarray, labels: list[str], services: list[str]) -> list[dict]:
    """The data set's total per hour (all services, and each) from its paths (S, N, K): mean and quantiles."""
    steps = []
    for n, hour in enumerate(hours):
        all_services = total[:, n].sum(axis=-1)
        q = np.quantile(all_services, QUANTILES)
        steps.append(
            {
                "hour": int(hour),
                "label": labels[n],
                "total": {"mean": float(all_services.mean()), "q05": float(q[0]), "median": float(q[2]),
                          "q95": float(q[4])},
                "services": {
                    name: {"mean": float(total[:, n, k].mean()), "median": float(np.median(total[:, n, k]))}
                    for k, name in enumerate(services)
                },
            }
        )  # fmt: skip
    return steps
