"""`lsdm ingest matrix`: wide entity x time matrices, one per service, whose entities are cells (base
stations), with optional environment vectors supplied by the user (docs/data-formats.md#matrices).

The shape real cell-level data comes in (e.g. ../shared/data/beijing_5g: 960 stations x 168 hours, one
service, a 32-d pre-trained vector per station, no coordinates, POIs or tiles):

- **Values**: one 2-D array per service, rows = entities, columns = time steps, from ``.npy``, ``.npz``
  (``FILE.npz:KEY``; the key may be left out when the file holds one array) or ``.csv`` (a header row; the
  first column is the entity key, every other column one time step, in order). Every array has the same
  shape; CSV files also the same keys in the same order. Values are finite and non-negative; they are
  multiplied by ``unit_bytes`` (bytes per unit of the files, e.g. 1e6 for MB) and rounded to whole bytes.
- **Time**: ``start`` is the time of the first column (ISO 8601; naive times are in ``timezone``); the
  step is 1 h, 30, 15 or 10 min. Shorter steps are **summed** to calendar hours (traffic volumes add up):
  steps before the first whole hour and after the last whole hour are dropped, and the summary says how
  many. ``start`` must fall on a step boundary.
- **Entities** are cells: each is its own cell at every hour (no coordinates, no POIs). Keys: the CSV's
  first column, else ``cell`` + the row number (``cell000`` ... for rows 0 ...).
- **Environment vectors** (``embeddings``): one row per entity, finite; registered as an *external*
  encoder (``external-<sha256 prefix>``, no files) whose vectors are the cells' z_env, used by training and
  forecasts as CLIP embeddings are (docs/model.md#external-environment-vectors). Stored with the data set
  in the same transaction.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from db.queries import DatasetContent
from engine.data.ingest_table import check_total_bytes
from engine.errors import InputError
from engine.requests import MATRIX_SERVICES, MATRIX_STEPS, IngestMatrixRequest, split_source

STEP_MINUTES = dict(zip(MATRIX_STEPS, (60, 30, 15, 10), strict=True))
MAX_SERVICES = MATRIX_SERVICES


@dataclass
class _Matrix:
    values: np.ndarray  # (E, T) float64
    keys: list[str] | None  # from a CSV's first column
    label: str  # the array's name: its npz key or the file's stem


def _first_bad(values: np.ndarray, volumes: bool) -> tuple[int, int, str] | None:
    """(row, column, what) of the first value that is not finite (or, of ``volumes``, is negative)."""
    bad = ~np.isfinite(values)
    what = "not a finite number"
    if not bad.any():
        if not volumes:
            return None
        bad, what = values < 0, "negative"
        if not bad.any():
            return None
    row, column = np.argwhere(bad)[0]
    return int(row), int(column), what


def read_array(source: str, field: str, *, volumes: bool = True) -> _Matrix:
    """One 2-D array from ``FILE.npy``, ``FILE.npz[:KEY]`` or ``FILE.csv``; errors name the file and field."""
    path, key = split_source(source)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"no such file: {path}", field=field)
    keys: list[str] | None = None
    if suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(f"not a NumPy .npz archive ({error})", file=path, field=field) from None
        with archive:
            names = list(archive.files)
            if key is None:
                if len(names) != 1:
                    raise InputError(
                        f"holds {len(names)} arrays ({', '.join(names)}); name one as {path.name}:KEY",
                        file=path,
                        field=field,
                    )
                key = names[0]
            if key not in names:
                raise InputError(f"has no array {key!r}; it holds {', '.join(names) or 'none'}", file=path, field=field)
            try:
                values = np.asarray(archive[key])
            except ValueError as error:  # an object array needs pickle: refused
                raise InputError(f"array {key!r} cannot be read without pickle ({error})", file=path) from None
        label = key
    elif suffix == ".npy":
        if key is not None:
            raise InputError(f"a .npy file holds one array; drop ':{key}'", file=path, field=field)
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(f"not a NumPy .npy array ({error})", file=path, field=field) from None
        label = path.stem
    elif suffix == ".csv":
        if key is not None:
            raise InputError(f"a .csv file holds one matrix; drop ':{key}'", file=path, field=field)
        values, keys = _read_csv(path, field)
        label = path.stem
    else:
        raise InputError(f"expected a .npy, .npz or .csv file, got {path.name!r}", file=path, field=field)
    if values.dtype.kind not in "biuf":
        raise InputError(f"expected numbers, got an array of {values.dtype}", file=path, field=field)
    if values.ndim != 2:
        raise InputError(
            f"expected a 2-D array (entities x time steps), got shape {tuple(values.shape)}", file=path, field=field
        )
    values = values.astype(np.float64)
    bad = _first_bad(values, volumes)
    if bad is not None:
        row, column, what = bad
        where = f"line {row + 2}, column {column + 2}" if keys is not None else f"row {row}, column {column}"
        expected = "a traffic volume >= 0" if volumes else "a finite number"
        raise InputError(f"{where}: {what} ({float(values[row, column])}); expected {expected}", file=path, field=field)
    return _Matrix(values, keys, label)


def _read_csv(path: Path, field: str) -> tuple[np.ndarray, list[str]]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise InputError(f"cannot read it as CSV ({error})", file=path, field=field) from None
    if frame.shape[1] < 2 or frame.empty:
        raise InputError(
            "expected a header row, then one row per entity: its key, then one value per time step", file=path
        )
    keys = [k.strip() for k in frame.iloc[:, 0]]
    for i, k in enumerate(keys):
        if not k:
            raise InputError("the entity key (first column) is empty", file=path, line=i + 2)
    duplicated = pd.Series(keys).duplicated()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InputError(f"entity {keys[i]!r} appears twice", file=path, line=i + 2)
    numbers = frame.iloc[:, 1:].apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    missing = numbers.isna().to_numpy()
    if missing.any():
        row, column = np.argwhere(missing)[0]
        text = frame.iloc[row, column + 1]
        raise InputError(
            f"column {frame.columns[column + 1]!r}: expected a number, got {text!r}",
            file=path,
            line=int(row) + 2,
        )
    return numbers.to_numpy(dtype=np.float64), keys


def _origin(start: str, step: str, timezone: str) -> tuple[datetime, int]:
    """The first whole hour at or after ``start`` (local wall-clock time) and the steps before it."""
    try:
        when = datetime.fromisoformat(start.strip())
    except ValueError:
        raise InputError(f"expected an ISO 8601 time such as 2024-03-04T00:00, got {start!r}", field="start") from None
    if when.tzinfo is not None:
        when = when.astimezone(zoneinfo.ZoneInfo(timezone)).replace(tzinfo=None)
    minutes = STEP_MINUTES[step]
    if when.second or when.microsecond or when.minute % minutes:
        raise InputError(
            f"{start!r} is not on a {step} step boundary (minute {when.minute}); the first column's time is expected",
            field="start",
        )
    skip = ((60 - when.minute) % 60) // minutes
    return when + timedelta(minutes=skip * minutes), skip


def read_matrix(
    values: tuple[str, ...],
    *,
    start: str,
    step: str = "1h",
    services: tuple[str, ...] = (),
    embeddings: str | None = None,
    unit_bytes: float = 1.0,
    timezone: str = "UTC",
    name: str | None = None,
) -> DatasetContent:
    """The data set the matrices hold (module docstring); not stored."""
    if not values:
        raise InputError("give one matrix per service", field="values")
    if len(values) > MAX_SERVICES:
        raise InputError(f"{len(values)} matrices; at most {MAX_SERVICES} services", field="values")
    if services and len(services) != len(values):
        raise InputError(
            f"{len(services)} service names for {len(values)} matrices; give one name per matrix", field="services"
        )
    if step not in STEP_MINUTES:
        raise InputError(f"expected one of {', '.join(STEP_MINUTES)}, got {step!r}", field="step")
    matrices = [read_array(source, "values") for source in values]
    first = matrices[0]
    for source, m in zip(values[1:], matrices[1:], strict=True):
        if m.values.shape != first.values.shape:
            raise InputError(
                f"has shape {m.values.shape}; {values[0]} has {first.values.shape} (every service's matrix has "
                "the same entities and time steps)",
                file=split_source(source)[0],
            )
        if m.keys is not None and first.keys is not None and m.keys != first.keys:
            raise InputError(
                f"its entity keys differ from those of {values[0]} (same keys, same order)",
                file=split_source(source)[0],
            )
    names = list(services) or [m.label for m in matrices]
    if len(set(names)) != len(names):
        raise InputError(f"service names repeat ({', '.join(names)}); name them with --services", field="services")
    n_entities, n_steps = first.values.shape
    origin, skip = _origin(start, step, timezone)
    per_hour = 60 // STEP_MINUTES[step]
    hours = (n_steps - skip) // per_hour
    if n_entities == 0 or hours < 1:
        raise InputError(
            f"{n_entities} entities x {n_steps} steps of {step}: not one whole hour of data", field="values"
        )
    used = slice(skip, skip + hours * per_hour)
    dropped_end = n_steps - skip - hours * per_hour
    # (S, E, hours): each hour the sum of its steps, in bytes
    cube = np.stack([m.values[:, used].reshape(n_entities, hours, per_hour).sum(axis=2) for m in matrices])
    cube = np.rint(cube * unit_bytes)
    check_total_bytes(cube, split_source(values[0])[0], "values")  # else the int64 bytes would wrap
    service, entity, hour = np.nonzero(cube > 0)
    keys = first.keys or next((m.keys for m in matrices if m.keys), None)
    if keys is None:
        width = len(str(n_entities - 1))
        keys = [f"cell{i:0{width}d}" for i in range(n_entities)]
    env_vectors, env_source = None, None
    if embeddings:
        vectors_path, vectors_key = split_source(embeddings)
        vectors = read_array(embeddings, "embeddings", volumes=False)
        if vectors.values.shape[0] != n_entities:
            raise InputError(
                f"has {vectors.values.shape[0]} rows; the matrices have {n_entities} entities (one vector each)",
                file=vectors_path,
                field="embeddings",
            )
        env_vectors = vectors.values.astype(np.float32)
        env_source = vectors_path.name + (f":{vectors_key}" if vectors_key else "")
    label = name or split_source(values[0])[0].stem
    return DatasetContent(
        name=label,
        kind="matrix",
        entity_kind="cell",
        services=names,
        poi_categories=[],
        time_origin=origin,
        timezone=timezone,
        hours=hours,
        cell_keys=list(keys),
        cell_poi=np.zeros((n_entities, 0), dtype=np.int64),
        entity_keys=list(keys),
        traffic_entity=entity,
        traffic_hour=hour,
        traffic_service=service,
        traffic_bytes=cube[service, entity, hour].astype(np.int64),
        location_entity=np.repeat(np.arange(n_entities), hours),
        location_hour=np.tile(np.arange(hours), n_entities),
        location_cell=np.repeat(np.arange(n_entities), hours),
        entity_cell=np.arange(n_entities),
        env_vectors=env_vectors,
        env_source=env_source,
        params={
            "files": [
                split_source(v)[0].name + (f":{m.label}" if split_source(v)[1] else "")
                for v, m in zip(values, matrices, strict=True)
            ],
            "step": step,
            "resampling": "1h as given" if per_hour == 1 else f"each hour the sum of its {per_hour} steps of {step}",
            "dropped_steps": {"before_the_first_hour": skip, "after_the_last_hour": dropped_end},
            "unit_bytes": unit_bytes,
            "embeddings": env_source,
        },
    )


def read_matrix_request(request: IngestMatrixRequest) -> DatasetContent:
    """``read_matrix`` with a request's fields (`lsdm ingest matrix` and the ``ingest.matrix`` job)."""
    return read_matrix(
        request.values,
        start=request.start,
        step=request.step,
        services=request.services,
        embeddings=request.embeddings,
        unit_bytes=request.unit_bytes,
        timezone=request.timezone,
        name=request.name,
    )
