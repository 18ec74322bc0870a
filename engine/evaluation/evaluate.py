"""`lsdm evaluate`: the paper's tables on our data (Table III, Table IV, Fig. 7, Fig. 8/9).

- Table III: seasonal naive, hour-of-week mean, ARIMA, ridge (the evaluated model's own linear mean alone,
  ``ridge_samples``), a CSDI-like configuration, LSDM without condition and LSDM (the model evaluated),
  one-step forecasts of every test-day window, with MSE, RMSE, MAE, CS, R² (Eq. 10-14) on the normalised
  scale plus CRPS and 50 %/90 % interval coverage.
- Table IV: the ablations (no 2D attention, environment added to the input, no condition, LSDM), and
  the evaluated model itself given other users' cells (``shuffled-environment``, a permutation test: see
  ``shuffled_locations``).
- Per-service R² (Fig. 7) and MSE by recursive step 1..N (Fig. 8/9) from several start hours.
Comparison models are the registered models of the same data set whose configuration name matches;
missing ones are trained first with the evaluated model's epochs (``train_missing``, the default),
or left out with a note.
The result is kept with the evaluated model (``metrics["evaluation"]``, see ``store_evaluation``), so
that the dashboard shows the last evaluation without recomputing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from db import Database
from db.models import Dataset, ModelRecord, utcnow
from db.queries import get_dataset
from engine.data.windows import HourlyProfile, SeriesData, Splits, SplitSpec, Windows, load_series, make_splits
from engine.env.clip import retrieval_verdict
from engine.errors import InputError
from engine.evaluation.baselines import BASELINES, DEFAULT_SAMPLES, forecast_paths, quantile_levels
from engine.evaluation.learned import LEARNED, learned_note, unavailable
from engine.evaluation.metrics import mse_by_step, per_service_r2, r2_gain_interval, score
from engine.evaluation.report import DrawFigure, write_report
from engine.forecast import LocationPlan, recursive_forecast
from engine.model import Forecaster
from engine.model.config import CONFIGS, ModelConfig
from engine.requests import EVALUATION_LOCATIONS, EvaluateRequest
from engine.train import check_compatible, load_model, to_batch, train

TABLE3 = (
    "seasonal-naive",
    "hour-of-week-mean",
    "arima",
    "ridge",
    "lightgbm",
    "patchtst",
    "csdi-like",
    "lsdm-no-condition",
    "lsdm",
)
# The learned baselines of engine/evaluation/learned.py in the evaluation (include_learned): each fitted once on
# the training windows, then scored on the test windows and the recursive paths like the local ones.
LEARNED_ROWS = ("lightgbm", "patchtst")
TABLE4 = ("no-2d-attention", "env-input", "shuffled-environment", "lsdm-no-condition", "lsdm")
COMPARISON_MODELS = ("csdi-like", "lsdm-no-condition", "no-2d-attention", "env-input")
# Where the entity is at the forecast hours of the test day: ``observed`` (default) conditions on the cells the
# data recorded, as the training windows do and as the paper's task does (the next hour's traffic given the
# environment there); ``habitual`` forecasts the location too (the user's usual cell at that hour of the
# week), as `lsdm forecast` does by default for hours not yet observed.
LOCATIONS = EVALUATION_LOCATIONS
LOCATION_TEXT = {
    "observed": "the cells the data recorded, as in training",
    "habitual": "each user's habitual cells (the location forecast too)",
}


def progress_messages(
    registered: set[str],
    *,
    include_arima: bool,
    train_missing: bool,
    shuffled: bool = False,
    include_learned: bool = False,
    fracast: bool = False,
) -> int:
    """How many progress messages ``evaluate`` sends for these options (a progress bar's length): one
    per baseline (ridge included), per comparison model trained, per one-step pass and per recursive-path pass (lsdm and
    lsdm-no-condition), and one for the shuffled-environment pass (``shuffled``: the evaluated model is
    conditioned on the environment). ``registered``: the names of the data set's registered forecasters."""
    count = (3 if include_arima else 2) + 1 + int(shuffled)  # + 1: the ridge row
    count += (len(LEARNED_ROWS) if include_learned else 0) + int(fracast)
    evaluated = ["lsdm"]
    for name in COMPARISON_MODELS:
        if name in registered:
            evaluated.append(name)
        elif train_missing:
            count += 1
            evaluated.append(name)
    count += len(evaluated)
    return count + sum(1 for name in ("lsdm", "lsdm-no-condition") if name in evaluated)


Progress = Callable[[str], None]
# Sample paths per recursive_forecast call: on CPU the time per path grows with the batch (more system
# time), so the evaluation goes through entities in chunks. One-step, 500 users x 32 samples at one hour:
# one batch 14.5 s, chunks of 800 paths 5.7 s; 30 recursive steps x 16 paths: 0.71 s per entity in
# chunks of 160 paths, 1.47 s in chunks of 800.
ONE_STEP_BATCH = 800
PATH_BATCH = 160


def _one_step(
    forecaster: Forecaster, series: SeriesData, splits: Splits, samples: int, seed: int, location: str = "observed"
) -> np.ndarray:
    """Samples (S, N, 1, K) for the test windows, in the order of ``splits.test``; the target hour's
    cell per ``location`` (``LOCATIONS``)."""
    plan = LocationPlan(location)
    values = forecaster.normaliser.forward(series.traffic)
    out = np.zeros((samples, len(splits.test), 1, len(series.services)), dtype=np.float32)
    chunk = max(1, ONE_STEP_BATCH // samples)
    for hour in np.unique(splits.test.hour):
        all_rows = np.flatnonzero(splits.test.hour == hour)
        for first in range(0, len(all_rows), chunk):
            rows = all_rows[first : first + chunk]
            result = recursive_forecast(
                forecaster,
                series,
                splits.test.entity[rows].tolist(),
                start=int(hour),
                horizon=1,
                samples=samples,
                values=values,
                seed=seed + int(hour) + first,
                plan=plan,
            )
            out[:, rows] = np.moveaxis(result.paths_v, 1, 0)
    return out


def _paths(
    forecaster: Forecaster,
    series: SeriesData,
    entities: np.ndarray,
    starts: list[int],
    steps: int,
    samples: int,
    seed: int,
    location: str = "observed",
) -> np.ndarray:
    """Recursive paths (S, len(starts) * len(entities), steps, K), in chunks of about PATH_BATCH paths."""
    plan = LocationPlan(location)
    values = forecaster.normaliser.forward(series.traffic)
    chunk = max(1, PATH_BATCH // samples)
    parts = []
    for start in starts:
        for first in range(0, len(entities), chunk):
            result = recursive_forecast(
                forecaster,
                series,
                entities[first : first + chunk].tolist(),
                start=start,
                horizon=steps,
                samples=samples,
                values=values,
                seed=seed + start + first,
                plan=plan,
            )
            parts.append(np.moveaxis(result.paths_v, 1, 0))
    return np.concatenate(parts, axis=1)


RIDGE_RESIDUAL_WINDOWS = 20_000  # training windows whose residuals give the ridge row's quantiles


def ridge_samples(
    forecaster: Forecaster, series: SeriesData, splits: Splits, n_samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> np.ndarray | None:
    """The ``ridge`` row: the evaluated model's own linear mean g alone (engine/model/prior.py, fitted in closed
    form on the training windows; the same inputs the denoiser reads beside it), as (S, N, 1, K) samples of the
    test windows: g plus the quantiles of its residuals on (up to 20,000 of) the training windows, per service,
    at the levels (i + 0.5) / S, clipped at 0. At the recorded cells. None for a model without a linear mean."""
    model = forecaster.model
    if model.prior is None:
        return None
    config = forecaster.config
    values = forecaster.normaliser.forward(series.traffic)
    spec = SplitSpec(kind=splits.spec.kind, history=config.history, horizon=1, seed=config.seed)
    cpu = torch.device("cpu")
    prior = model.prior.to(cpu)

    def means(windows: Windows, before: int) -> tuple[np.ndarray, np.ndarray]:
        profile = HourlyProfile.build(series, values, before, env=config.uses_env_profile)
        out, targets = [], []
        with torch.no_grad():
            for first in range(0, len(windows), 4096):
                part = Windows(windows.entity[first : first + 4096], windows.hour[first : first + 4096])
                batch = to_batch(series, values, part, spec, cpu, profile)
                h = batch["history"].shape[1]
                g = prior(
                    batch["history"],
                    batch["profile"][:, h:],
                    batch["env"][:, h:],
                    batch["hours"][:, h:],
                    batch["days"][:, h:],
                )
                out.append(g.numpy())
                targets.append(batch["target"].numpy())
        return np.concatenate(out), np.concatenate(targets)

    train = splits.train
    if len(train) > RIDGE_RESIDUAL_WINDOWS:
        pick = np.sort(np.random.default_rng(seed).choice(len(train), RIDGE_RESIDUAL_WINDOWS, replace=False))
        train = Windows(train.entity[pick], train.hour[pick])
    fitted, observed = means(train, splits.train_hours_end)
    levels = quantile_levels(n_samples)
    offsets = np.quantile((observed - fitted).reshape(-1, fitted.shape[-1]), levels, axis=0)  # (S, K)
    point, _ = means(splits.test, int(splits.test.hour.min()))  # (N, 1, K)
    return np.clip(point[None] + offsets[:, None, None, :], 0, None).astype(np.float32)


QUICK_ENTITIES = 50


def _quick(splits: Splits) -> Splits:
    """The splits with the test windows of ``QUICK_ENTITIES`` entities drawn with seed 0 (fixed: runs compare)."""
    present = np.unique(splits.test.entity)
    chosen = np.random.default_rng(0).choice(present, min(QUICK_ENTITIES, len(present)), replace=False)
    keep = np.isin(splits.test.entity, chosen)
    return replace(splits, test=Windows(splits.test.entity[keep], splits.test.hour[keep]))


def _fracast_subset(test: Windows, entities: int, seed: int) -> np.ndarray:
    """Rows of ``test`` of ``entities`` entities drawn with ``seed`` (all their test hours)."""
    present = np.unique(test.entity)
    chosen = np.random.default_rng(seed).choice(present, min(entities, len(present)), replace=False)
    return np.flatnonzero(np.isin(test.entity, chosen))


SEASONAL = ("seasonal-naive", "hour-of-week-mean")


def seasonal_floor(rows: dict[str, dict]) -> dict:
    """The floor every model must clear: the better seasonal mean of each entity's own history on RMSE and on
    CRPS, and whether the evaluated model (``lsdm``) is below both. On short real data a seasonal mean can be
    very strong (a real week of cells: R² 0.99 for the mean of the same hour on the previous days), and a
    model that does not beat it should not be used there; every evaluation says which it is."""
    found = [rows[m] for m in SEASONAL if m in rows]
    if not found or "lsdm" not in rows:
        return {"clears": None, "note": "Seasonal floor: not measured (a seasonal baseline or lsdm is missing)."}
    best_rmse = min(found, key=lambda r: r["rmse"])
    best_crps = min(found, key=lambda r: r["crps"])
    lsdm = rows["lsdm"]
    clears = lsdm["rmse"] < best_rmse["rmse"] and lsdm["crps"] < best_crps["crps"]
    verdict = "clears it" if clears else "does NOT clear it: prefer the seasonal mean on this data"
    return {
        "clears": bool(clears),
        "rmse": best_rmse["rmse"],
        "rmse_method": best_rmse["method"],
        "crps": best_crps["crps"],
        "crps_method": best_crps["method"],
        "note": (
            f"Seasonal floor: RMSE {best_rmse['rmse']:.4f} ({best_rmse['method']}), CRPS {best_crps['crps']:.4f} "
            f"({best_crps['method']}); lsdm RMSE {lsdm['rmse']:.4f}, CRPS {lsdm['crps']:.4f}: {verdict}."
        ),
    }


def _row(method: str, y: np.ndarray, samples: np.ndarray, seconds: float, **extra: object) -> dict:
    return {
        "method": method,
        **{k: round(float(v), 6) for k, v in score(y, samples).items()},
        "seconds": round(seconds, 2),
        **extra,
    }


def _encoder_verdict(database: Database, encoder_id: str | None) -> dict | None:
    """The environment encoder's held-out retrieval and whether it is clearly above chance (issue 18: at
    chance, the environment condition is noise and the evaluation says so)."""
    if not encoder_id:
        return None
    with database.session() as session:
        record = session.scalar(select(ModelRecord).where(ModelRecord.name == encoder_id, ModelRecord.kind == "clip"))
    if record is None:
        return None
    retrieval = (record.metrics or {}).get("retrieval") or {}
    # Which embeddings form z_env (--env-mode; "auto" leaves it to the text embedding at chance).
    z_env = ((record.config or {}).get("settings") or {}).get("mode")
    return {"encoder": encoder_id, "retrieval": retrieval, "z_env": z_env, **retrieval_verdict(retrieval)}


def _gain_over(
    reference: str,
    label: str,
    rows: dict[str, dict],
    point_forecasts: dict[str, np.ndarray],
    y: np.ndarray,
    entity: np.ndarray,
    seed: int,
    notes: list[str],
) -> tuple[float | None, dict | None]:
    """lsdm's relative R² gain over the ``reference`` row (percent; None when its R² is 0) and its 95 %
    interval over entities (``r2_gain_interval``), with a note; (None, None) without both rows."""
    if "lsdm" not in rows or reference not in rows:
        return None, None
    base_r2 = rows[reference]["r2"]
    gain = round(100 * (rows["lsdm"]["r2"] - base_r2) / abs(base_r2), 2) if base_r2 else None
    interval = r2_gain_interval(y, point_forecasts["lsdm"], point_forecasts[reference], entity, seed=seed)
    percent = "no relative gain: the reference R² is 0" if gain is None else f"{gain:+.2f} %"
    notes.append(
        f"{label}: R² {rows['lsdm']['r2']:.4f} vs {base_r2:.4f} ({percent}; "
        f"95 % interval over users {interval['low']:+.2f} to {interval['high']:+.2f} %)."
    )
    return gain, interval


def shuffled_locations(series: SeriesData, seed: int) -> SeriesData:
    """The data set with every entity given another entity's whole location history (a seeded
    derangement of the rows of ``series.location``); traffic, cells and embeddings unchanged.

    The permutation test of the environment: the same model, the same windows and noise, conditioned on
    places that are real and follow a real routine but are not this entity's. The R² it loses against
    the entity's own cells is what the model takes from where the entity actually is; unlike the gain
    over the no-condition model, it has no second training run in it (no seed-to-seed difference) and no
    difference of architecture. In a city without environment effect (``--env-effect 0``) it should
    vanish (docs/results.md#control-city)."""
    n = len(series.location)
    if n < 2:
        return series
    rng = np.random.default_rng([seed, 4242])
    order = rng.permutation(n)
    derangement = np.empty(n, dtype=np.int64)
    derangement[order] = np.roll(order, 1)  # one cycle through a random order: nobody keeps their own row
    return replace(series, location=series.location[derangement])


SHARED_SETTINGS = (
    "epochs",
    "seed",
    "history",
    "horizon",
    "channels",
    "heads",
    "blocks",
    "windows_per_epoch",
    "batch_size",
    "noise_draws",
)
# What makes a registered model a fair comparison: the shared settings and the architecture of the named
# configuration (a model from an older version of it, e.g. without the linear mean feature, is not).
MATCHED = (
    *SHARED_SETTINGS,
    "prior",
    "service_attention",
    "condition",
    "step_conditioning",
    "env_kind",
    "l2",
    "intercepts_without_environment",
    "uses_env_profile",
)


def comparison_config(name: str, base: ModelConfig) -> ModelConfig:
    """The configuration ``name`` trained like ``base``: its own architecture, the base's size and budget."""
    return replace(CONFIGS[name], **{k: getattr(base, k) for k in SHARED_SETTINGS})


def _comparison_model(
    database: Database,
    dataset_id: int,
    dataset_name: str,
    name: str,
    base: Forecaster,
    train_missing: bool,
    progress: Progress,
    split: str = "time",
) -> tuple[ModelRecord, Forecaster] | None:
    """The newest registered model of that name trained on the same data set and split whose configuration
    agrees with ``comparison_config`` on ``MATCHED``, or a new one trained so (``train_missing``)."""
    config = comparison_config(name, base.config)
    with database.session() as session:
        ids = session.scalars(
            select(ModelRecord.id)
            .where(ModelRecord.kind == "lsdm", ModelRecord.dataset_id == dataset_id, ModelRecord.name == name)
            .order_by(ModelRecord.id.desc())
        ).all()
    for record_id in ids:
        found = load_model(database, record_id)
        if found[1].meta.get("split", "time") == split and all(
            getattr(found[1].config, k) == getattr(config, k) for k in MATCHED
        ):
            return found
    if not train_missing:
        return None
    progress(f"training the comparison model {name} ...")
    result = train(database, name, config, dataset_name=dataset_name, split=split, activate=False)
    return load_model(database, result.record_id)


def evaluate(
    database: Database,
    model_id: int | None = None,
    *,
    report_dir: str | Path | None = None,
    samples: int = 32,
    steps: int = 30,
    path_users: int = 100,
    train_missing: bool = True,
    include_arima: bool = True,
    include_learned: bool = True,
    fracast_entities: int = 0,
    quick: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    store: bool = True,
    dataset_name: str | None = None,
    path_samples: int = 16,
    location: str = "observed",
    draw: DrawFigure | None = None,
) -> dict:
    """Score the model, its comparison models and the baselines on the test day; write the report.

    ``samples``: samples per test window (antithetic pairs, see engine/forecast.py); the point metrics
    are on their mean, so more samples raise every diffusion row's R²
    (docs/model.md#point-forecasts-and-sample-size). ``path_samples``: sample paths per entity and start
    for the MSE by recursive step.
    ``dataset_name``: score on another data set's test day than the model's own (e.g. a second city,
    "new city" generalisation; its cells embedded with the model's encoder, `lsdm env build --encoder`).
    Comparison models come from the model's own data set; the baselines are fitted on the scored one.
    ``store``: keep the result with the model (``store_evaluation``) for the dashboard; only an evaluation
    on the model's own data set is stored. ``location``: the cells of the forecast hours (``LOCATIONS``).
    ``draw``: draws the report's figures (the command line's cli/report_figures.py; none without)."""
    if location not in LOCATIONS:
        raise InputError(f"expected one of {', '.join(LOCATIONS)}, got {location!r}", field="location")
    say = progress or (lambda message: None)
    started = time.perf_counter()
    record, forecaster = load_model(database, model_id)
    with database.session() as session:
        # The data set the model was trained on (the active one for models registered without one).
        home = session.get_one(Dataset, record.dataset_id) if record.dataset_id else get_dataset(session)
        dataset_id, home_name = home.id, home.name
        dataset = get_dataset(session, dataset_name) if dataset_name else home
        dataset_name = dataset.name
        series = load_series(
            session,
            dataset,
            env_kind=forecaster.config.env_kind,
            encoder_id=forecaster.meta.get("data", {}).get("encoder_id"),
        )
    own_data = dataset_name == home_name
    store = store and own_data
    check_compatible(forecaster, series)
    split = forecaster.meta.get("split", "time")
    spec = SplitSpec(
        kind=split if own_data else "time", history=forecaster.config.history, horizon=1, seed=forecaster.config.seed
    )
    splits = make_splits(series, spec)
    if quick:
        splits, samples, path_samples, path_users = _quick(splits), min(samples, 16), min(path_samples, 8), 20
        include_arima, include_learned, train_missing = False, False, False
    values = forecaster.normaliser.forward(series.traffic)
    y = values[splits.test.entity, splits.test.hour][:, None, :]  # (N, 1, K)

    # Recursive paths: a seeded random subset of entities, from start hours whose paths end inside the data.
    rng = np.random.default_rng(seed)
    entities = np.sort(rng.choice(len(series.entity_ids), min(path_users, len(series.entity_ids)), replace=False))
    last_start = series.hours - steps
    starts = sorted(
        {
            max(spec.history, last_start - 18),
            max(spec.history, last_start - 12),
            max(spec.history, last_start - 6),
            last_start,
        }
    )
    y_paths = np.concatenate([values[entities][:, s : s + steps] for s in starts], axis=0)  # (P, steps, K)
    path_windows = Windows(np.tile(entities, len(starts)), np.repeat(np.array(starts, dtype=np.int64), len(entities)))

    rows: dict[str, dict] = {}
    bytes_rows: dict[str, dict] = {}
    y_bytes = forecaster.normaliser.inverse(y)

    def add_row(name: str, draws: np.ndarray, seconds: float, **extra: object) -> None:
        # Every method's samples as byte counts can be (below half a byte -> 0): LSDM's are already, and
        # the baselines get the same treatment so that the comparison is fair.
        draws = forecaster.normaliser.snap(draws)
        rows[name] = _row(name, y, draws, seconds, **extra)
        bytes_rows[name] = _row(name, y_bytes, forecaster.normaliser.inverse(draws), seconds, **extra)
        service_r2[name] = per_service_r2(y, draws.mean(0), series.services)
        point_forecasts[name] = draws.mean(0)
        if subset is not None:
            subset_draws[name] = draws[:, subset]

    # fracast costs about 0.1 s per series and window: scored on the test windows of a seeded subset of entities,
    # with every other row scored again on the same windows (``fracast_subset``).
    subset = _fracast_subset(splits.test, fracast_entities, seed) if fracast_entities else None
    subset_draws: dict[str, np.ndarray] = {}
    step_mse: dict[str, list[float]] = {}
    service_r2: dict[str, dict[str, float]] = {}
    point_forecasts: dict[str, np.ndarray] = {}  # the sample means, for the gain's interval
    notes = [
        f"Data set {dataset_name!r}: {len(series.entity_ids)} entities, {series.hours} hours; test day = "
        f"hours {int(splits.test.hour.min())}-{int(splits.test.hour.max())} ({len(splits.test)} windows); "
        f"{splits.describe()}.",
        f"LSDM rows: {samples} samples per window in antithetic pairs, DDIM 10 steps, point metrics on "
        f"their mean; forecast hours at {LOCATION_TEXT[location]} (--location {location}); tables on the "
        f"normalised scale v = log1p(bytes) / {forecaster.normaliser.scale:.3f}; "
        "`bytes_rows` has the same metrics in bytes.",
        f"MSE by recursive step: {len(entities)} entities x start hours {starts}, {steps} steps, "
        f"{path_samples} paths each, each sample path feeding back its own samples.",
        "Every method's samples are whole bytes: below half a byte (v < "
        f"{forecaster.normaliser.zero_below:.4f}) counts as 0 bytes.",
    ]
    if quick:
        notes.append(
            f"Quick evaluation: the test day of {QUICK_ENTITIES} entities drawn once with seed 0 (the same ones at "
            "every run), 16 samples per window, 20 entities x 8 sample paths for the recursive steps; ARIMA and the "
            "learned baselines left out, no comparison model trained (registered ones are scored). Noisier than "
            "the full evaluation: compare quick runs with quick runs."
        )
    encoder = _encoder_verdict(database, series.encoder_id) if forecaster.config.uses_environment else None
    if encoder is not None:
        uses = {"both": "both embeddings (Eq. 9)", "text": "the text (POI) embedding alone"}.get(
            str(encoder["z_env"]), f"the {encoder['z_env']} embedding"
        )
        notes.append(f"Environment encoder {series.encoder_id}: {encoder['verdict']}; z_env from {uses}.")
    if not own_data:
        notes.append(
            f"New data: the models were trained on {home_name!r} and are scored on {dataset_name!r} "
            f"as they are (normalisation of {home_name!r}); the baselines are fitted on {dataset_name!r}."
        )
    elif split == "users":
        notes.append(
            f"Split 'users': the test windows are those of the {len(np.unique(splits.test.entity))} "
            "users held out of training."
        )

    for name in ("seasonal-naive", "hour-of-week-mean", "arima"):
        if name == "arima" and not include_arima:
            notes.append("ARIMA left out (include_arima=False).")
            continue
        say(f"baseline {name} ...")
        t0 = time.perf_counter()
        forecast = BASELINES[name](series, values, splits, splits.test)
        add_row(name, forecast.samples, time.perf_counter() - t0)
        extra = {"params": forecast.params} if name == "arima" and forecast.params is not None else {}
        baseline_paths = forecast_paths(
            name,
            series,
            values,
            splits,
            np.concatenate([entities for _ in starts]),
            np.concatenate([np.full(len(entities), s) for s in starts]),
            steps,
            **extra,
        )
        step_mse[name] = mse_by_step(y_paths, forecaster.normaliser.snap(baseline_paths.samples).mean(0))

    say("ridge: the model's linear mean alone ...")
    t0 = time.perf_counter()
    ridge = ridge_samples(forecaster, series, splits, seed=seed)
    if ridge is None:
        notes.append("ridge: this model has no linear mean (prior 'none'); left out.")
    else:
        add_row("ridge", ridge, time.perf_counter() - t0)
        notes.append(
            "ridge: the evaluated model's own linear mean alone (closed-form ridge fit on the training windows), "
            "at the recorded cells, with the quantiles of its training residuals as its distribution."
        )

    for name in LEARNED_ROWS if include_learned else ():
        reason = unavailable(name)
        if reason:
            notes.append(reason)
            continue
        say(f"baseline {name}: fitting on the training windows ...")
        t0 = time.perf_counter()
        # PatchTST's head is direct: fitted for the paths' length (cut on data too short for it, see its docstring).
        options = {"horizon": steps} if name == "patchtst" else {}
        fitted = LEARNED[name](series, values, splits, seed=seed, **options)
        forecast = fitted.forecast(splits.test, steps=1)
        add_row(name, forecast.samples, time.perf_counter() - t0)
        notes.append(learned_note(fitted))
        try:
            baseline_paths = fitted.forecast(path_windows, steps=steps, n_samples=path_samples)
        except InputError as error:  # PatchTST's direct head is shorter than the paths on short data
            notes.append(f"{name}: no recursive paths ({error.message}).")
            continue
        step_mse[name] = mse_by_step(y_paths, forecaster.normaliser.snap(baseline_paths.samples).mean(0))
    if not include_learned:
        notes.append(f"Learned baselines ({', '.join(LEARNED_ROWS)}) left out (include_learned=False).")

    models: dict[str, tuple[ModelRecord, Forecaster]] = {"lsdm": (record, forecaster)}
    for name in COMPARISON_MODELS:
        found = _comparison_model(database, dataset_id, home_name, name, forecaster, train_missing, say, split)
        if found is None:
            notes.append(f"{name}: no registered model of this data set (run `lsdm train --config {name}`).")
        else:
            models[name] = found
    for name, (model_record, model) in models.items():
        say(f"{name}: one-step forecasts of the test day ...")
        t0 = time.perf_counter()
        draws = _one_step(model, series, splits, samples, seed, location)
        add_row(name, draws, time.perf_counter() - t0, model_id=model_record.id)
        if name in ("lsdm", "lsdm-no-condition"):
            say(f"{name}: recursive paths ...")
            paths = _paths(model, series, entities, starts, steps, path_samples, seed, location)
            step_mse[name] = mse_by_step(y_paths, paths.mean(0))
    if forecaster.config.uses_environment and series.env.shape[1]:
        say("lsdm: one-step forecasts with other users' cells (shuffled environment) ...")
        t0 = time.perf_counter()
        draws = _one_step(forecaster, shuffled_locations(series, seed), splits, samples, seed, location)
        add_row("shuffled-environment", draws, time.perf_counter() - t0, model_id=record.id)

    fracast_table: dict[str, Any] | None = None
    if subset is not None:
        reason = unavailable("fracast")
        if reason:
            notes.append(reason)
        else:
            say("baseline fracast: zero-shot forecasts of a subset of the test windows ...")
            t0 = time.perf_counter()
            fitted = LEARNED["fracast"](series, values, splits, seed=seed)
            test_subset = Windows(splits.test.entity[subset], splits.test.hour[subset])
            subset_draws["fracast"] = forecaster.normaliser.snap(fitted.forecast(test_subset, steps=1).samples)
            seconds = time.perf_counter() - t0
            fracast_table = {
                "entities": len(np.unique(test_subset.entity)),
                "windows": len(subset),
                "seconds": round(seconds, 1),
                "rows": [
                    _row(name, y[subset], subset_draws[name], seconds if name == "fracast" else 0.0)
                    for name in (*[m for m in TABLE3 if m in subset_draws], "fracast")
                ],
            }
            notes.append(
                f"{fitted.describe()} Scored on the {len(subset)} test windows of {fracast_table['entities']} "
                f"seeded entities ({seconds:.0f} s), beside every other row scored on the same windows "
                "(`fracast_subset`)."
            )

    table3 = [rows[m] for m in TABLE3 if m in rows]
    table4 = [rows[m] for m in TABLE4 if m in rows]
    floor = seasonal_floor(rows)
    notes.append(floor["note"])
    # Beyond noise? A paired bootstrap over entities of the same windows' forecasts.
    gain, interval = _gain_over(
        "lsdm-no-condition", "Condition vs no condition", rows, point_forecasts, y, splits.test.entity, seed, notes
    )
    env_gain, env_interval = _gain_over(
        "shuffled-environment",
        "Own cells vs other users' cells (the same model, each user given another user's whole location history)",
        rows,
        point_forecasts,
        y,
        splits.test.entity,
        seed,
        notes,
    )
    result = {
        "model_id": record.id,
        "dataset": dataset_name,
        "trained_on": home_name,
        "split": spec.kind,
        "location": location,
        "samples": samples,
        "rows": table3,
        "table4": table4,
        "bytes_rows": [bytes_rows[m] for m in TABLE3 if m in bytes_rows],
        "per_service_r2": service_r2,
        "mse_by_step": step_mse,
        "seasonal_floor": {k: v for k, v in floor.items() if k != "note"},
        "condition_gain_r2_percent": gain,
        "condition_gain_interval": interval,
        "environment_gain_r2_percent": env_gain,
        "environment_gain_interval": env_interval,
        "environment_encoder": encoder,
        "fracast_subset": fracast_table,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if report_dir:
        files = write_report(
            report_dir,
            title=f"LSDM evaluation: model {record.id} on {dataset_name}",
            table3_rows=table3,
            table4_rows=table4,
            extra_tables=[
                (
                    f"Table III on the fracast subset ({fracast_table['windows']} test windows of "
                    f"{fracast_table['entities']} entities)",
                    "fracast_subset",
                    fracast_table["rows"],
                )
            ]
            if fracast_table
            else [],
            per_service_r2=service_r2,
            mse_by_step=step_mse,
            notes=notes,
            metadata={
                "model_id": record.id,
                "model_sha256": record.sha256,
                "dataset": dataset_name,
                "samples": samples,
                "steps": steps,
                "location": location,
            },
            draw=draw,
        )
        result["report"] = [str(f) for f in files]
    if store:
        store_evaluation(
            database,
            record.id,
            result,
            settings={
                "samples": samples,
                "path_samples": path_samples,
                "steps": steps,
                "path_users": path_users,
                "location": location,
                "train_missing": train_missing,
                "include_arima": include_arima,
                "include_learned": include_learned,
                "fracast_entities": fracast_entities,
                "quick": quick,
                "seed": seed,
            },
        )
    return result


def store_evaluation(database: Database, model_id: int, result: dict, *, settings: dict | None = None) -> None:
    """Keep an evaluation with its model (``metrics["evaluation"]``, one transaction), replacing an
    earlier one: it takes minutes to compute, so the dashboard shows the stored result."""
    stored = {**result, "settings": dict(settings or {}), "evaluated_at": utcnow().isoformat(timespec="seconds")}
    with database.write_session() as session, session.begin():
        record = session.get(ModelRecord, model_id)
        if record is None:
            raise InputError(f"no model with id {model_id} to store the evaluation with", field="--model")
        # A new dict, not an in-place change: the JSON column only notices assignment.
        record.metrics = {**(record.metrics or {}), "evaluation": stored}


def evaluate_request(
    database: Database,
    request: EvaluateRequest,
    *,
    report_dir: str | Path | None = None,
    progress: Progress | None = None,
    draw: DrawFigure | None = None,
) -> dict:
    """`lsdm evaluate` and the ``evaluate`` job: ``evaluate`` with the request's settings."""
    request = request.checked()
    return evaluate(
        database,
        request.model_id,
        report_dir=report_dir,
        samples=request.samples,
        path_samples=request.path_samples,
        steps=request.steps,
        path_users=request.path_users,
        train_missing=request.train_missing,
        include_arima=request.include_arima,
        include_learned=request.include_learned,
        fracast_entities=request.fracast_entities,
        quick=request.quick,
        progress=progress,
        dataset_name=request.dataset,
        location=request.location,
        draw=draw,
    )
