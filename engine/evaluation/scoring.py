"""Scoring outside models on exactly the windows LSDM and the baselines are scored on.

``export_windows`` writes every window of a split (train, validation and test, in that order) to one
compressed NumPy ``.npz`` file; an outside model trains on the ``train``/``val`` rows, predicts the
``test`` rows, saves its predictions to another ``.npz`` and ``score_predictions`` scores them with
``engine.evaluation.metrics`` (the same eight numbers as the evaluation report, plus R² per service).

Windows file (``export_windows``), N windows, H history hours, F horizon hours, K services,
D environment-embedding dimensions (0 when the data set has none); all values on the normalised
scale v = log1p(bytes) / scale:

==================  ====================  ===========================================================
key                 shape, dtype          meaning
==================  ====================  ===========================================================
``history``         (N, H, K) float32     v at hours t-H .. t-1 (t = the window's first target hour)
``target``          (N, F, K) float32     v at hours t .. t+F-1: what is to be predicted
``hour_of_day``     (N, H+F) int64        hour of the day (0-23) of hours t-H .. t+F-1
``day_of_week``     (N, H+F) int64        day of the week (0 = Monday) of the same hours
``env``             (N, H+F, D) float32   environment embedding of the entity's cell at those hours
                                          (zeros where the cell is unknown)
``entity_key``      (N,) str              the user's (entity's) key in the data set
``target_hour``     (N,) int64            t, counted from hour 0 of the data set
``split``           (N,) str              "train", "val" or "test"; rows are in that order
``services``        (K,) str              service names, in the order of the last axis
``scale``           () float64            the normaliser's scale: bytes = expm1(v * scale)
``history_hours``   () int64              H
``horizon``         () int64              F
``dataset``         () str                the data set's name
``time_origin``     () str                ISO date-time of hour 0 (local time of the data set)
``split_kind``      () str                "time" or "users" (how the windows were split)
==================  ====================  ===========================================================

Predictions file (``score_predictions``), on the normalised scale, rows in the export's order:

- ``prediction`` (N_test, F, K): a point forecast of the test windows, or
- ``samples`` (S, N_test, F, K): S samples per test window (CRPS and coverage then mean something;
  point metrics use the sample mean);
- either may instead cover all N exported windows (train, val and test rows); only the test rows
  are scored;
- ``method`` () str, optional: the model's name in the result.

Values must be finite; only one of ``prediction`` / ``samples`` may be present.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from engine.data.windows import Normaliser, SeriesData, Splits, gather
from engine.errors import InputError, check_output_file
from engine.evaluation.metrics import METRIC_KEYS, per_service_r2, score

SPLIT_NAMES = ("train", "val", "test")
WINDOW_KEYS = (
    "history",
    "target",
    "hour_of_day",
    "day_of_week",
    "env",
    "entity_key",
    "target_hour",
    "split",
    "services",
    "scale",
    "history_hours",
    "horizon",
    "dataset",
    "time_origin",
    "split_kind",
)


def export_windows(
    series: SeriesData, normaliser: Normaliser, splits: Splits, out_path: str | Path, *, replace: bool = False
) -> dict:
    """Write the split's windows to ``out_path`` (.npz, keys in the module docstring); returns a summary. The
    file appears whole or not at all; an existing one is replaced only when asked."""
    out_path = check_output_file(out_path, (".npz",), replace=replace)
    values = normaliser.forward(series.traffic)
    spec = splits.spec
    parts = {name: getattr(splits, name) for name in SPLIT_NAMES}
    batches = {name: gather(series, values, windows, spec) for name, windows in parts.items()}

    def joined(attr: str) -> np.ndarray:
        return np.concatenate([getattr(batches[name], attr) for name in SPLIT_NAMES])

    entity = np.concatenate([parts[name].entity for name in SPLIT_NAMES]).astype(np.int64)
    keys = np.asarray(series.entity_keys, dtype=str)
    arrays: dict[str, np.ndarray | np.generic] = {
        "history": joined("history").astype(np.float32),
        "target": joined("target").astype(np.float32),
        "hour_of_day": joined("hour_of_day").astype(np.int64),
        "day_of_week": joined("day_of_week").astype(np.int64),
        "env": joined("env").astype(np.float32),
        "entity_key": keys[entity] if len(entity) else np.zeros(0, dtype=str),
        "target_hour": np.concatenate([parts[name].hour for name in SPLIT_NAMES]).astype(np.int64),
        "split": np.concatenate([np.full(len(parts[name]), name) for name in SPLIT_NAMES]).astype("<U5"),
        "services": np.asarray(series.services, dtype=str),
        "scale": np.float64(normaliser.scale),
        "history_hours": np.int64(spec.history),
        "horizon": np.int64(spec.horizon),
        "dataset": np.asarray(series.dataset_name),
        "time_origin": np.asarray(series.time_origin.isoformat()),
        "split_kind": np.asarray(spec.kind),
    }
    partial = out_path.with_name(out_path.name + ".partial")
    with partial.open("wb") as handle:  # a file object: NumPy adds no ".npz" to the name
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # mypy matches ** to allow_pickle too
    partial.replace(out_path)
    return {
        "path": str(out_path),
        "bytes": out_path.stat().st_size,
        "dataset": series.dataset_name,
        "windows": {name: len(parts[name]) for name in SPLIT_NAMES},
        "history_hours": spec.history,
        "horizon": spec.horizon,
        "services": list(series.services),
        "env_dim": int(arrays["env"].shape[-1]),
        "scale": normaliser.scale,
        "keys": list(WINDOW_KEYS),
    }


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError("no such file", file=path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable NumPy .npz file ({exc})", file=path) from None


def _check_finite(path: Path, key: str, array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"expected real numbers, got dtype {array.dtype}", file=path, field=key)
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{int(bad.sum())} value(s) are NaN or infinite (first at index {first})", file=path, field=key
        )


def score_predictions(predictions_path: str | Path, windows_path: str | Path) -> dict:
    """Score an outside model's predictions of the exported test windows (see the module docstring).

    Returns ``method``, the eight metrics of ``engine.evaluation.metrics.score`` (mse, rmse, mae, cs, r2, crps,
    cov50, cov90; normalised scale), ``per_service_r2``, ``windows`` (test windows scored),
    ``samples`` (S; 1 for a point prediction) and ``aligned`` ("test" or "all": which rows the file
    covered).
    """
    predictions_path, windows_path = Path(predictions_path), Path(windows_path)
    windows = _load_npz(windows_path)
    missing = [key for key in ("target", "split", "services") if key not in windows]
    if missing:
        raise InputError(
            f"not a windows export (missing {', '.join(missing)}); write one with export_windows",
            file=windows_path,
            field=missing[0],
        )
    target = windows["target"].astype(np.float64)
    is_test = windows["split"] == "test"
    services = [str(s) for s in windows["services"]]
    n_all, n_test = len(target), int(is_test.sum())
    if n_test == 0:
        raise InputError("the export has no test windows", file=windows_path, field="split")

    data = _load_npz(predictions_path)
    present = [key for key in ("prediction", "samples") if key in data]
    if len(present) != 1:
        raise InputError(
            "expected exactly one of the keys 'prediction' (N, F, K) or 'samples' (S, N, F, K), "
            f"found {present or sorted(data)}",
            file=predictions_path,
            field=present[0] if present else "prediction",
        )
    key = present[0]
    array = data[key]
    _check_finite(predictions_path, key, array)
    samples = array[None] if key == "prediction" else array
    _, horizon, n_services = target.shape
    want = "(N, F, K)" if key == "prediction" else "(S, N, F, K)"
    if (
        samples.ndim != 4
        or samples.shape[0] < 1
        or samples.shape[2:] != (horizon, n_services)
        or samples.shape[1] not in (n_test, n_all)
    ):
        lead = "" if key == "prediction" else "S, "
        raise InputError(
            f"expected shape {want} = ({lead}{n_test} test windows or {n_all} windows, {horizon}, "
            f"{n_services}), got {array.shape}",
            file=predictions_path,
            field=key,
        )
    aligned = "test" if samples.shape[1] == n_test else "all"
    if aligned == "all":
        samples = samples[:, is_test]
    truth = target[is_test]
    method = str(data["method"]) if "method" in data else predictions_path.stem
    metrics = score(truth, samples.astype(np.float64))
    return {
        "method": method,
        **{k: metrics[k] for k in METRIC_KEYS},
        "per_service_r2": per_service_r2(truth, samples, services),
        "windows": n_test,
        "samples": int(samples.shape[0]),
        "aligned": aligned,
        "predictions": str(predictions_path),
        "windows_file": str(windows_path),
    }
