"""What-if scenarios: change a user's environment and compare two forecasts made with the same seed.

A :class:`Scenario` says what is different from reality during the forecast: where the user is
(``location``: habitual | stay | cell:KEY[,KEY...]), what some cells look like (``cell_edits``: other
POI counts, another description, another tile), how the two CLIP embeddings are mixed (Eq. 9's ``a``
and ``b``) and how strongly the model follows its condition (classifier-free ``guidance``).

``run_whatif`` forecasts twice from the same history with the same seed: the *baseline* (nothing
changed: habitual cells, the stored embeddings, the encoder's a/b, guidance 1) and the *scenario*.
Both recursive forecasts draw the same noise, so their difference is the effect of the change alone
and an empty scenario reproduces the baseline path for path. Both runs and a ``Scenario`` row that
links them are written in one transaction; ``load_scenario`` rebuilds the comparison from the stored
runs without forecasting again.

How an edited cell's environment embedding is made (``scenario_env``): its image and text embeddings
start as the stored ones; edited POI counts without an explicit description are described again by the
template describer (against the data set's own POI statistics), an explicit description is used as
written, and the text is encoded by the data set's CLIP encoder; a tile taken from another cell reuses
that cell's stored image embedding, an uploaded PNG is encoded. Eq. 9 then combines them. Unedited
cells keep their stored embeddings bit for bit unless a/b change, which recombines every cell.

An edit changes the forecast hours only: the observed hours before the start, and the entity's usual
environment that summarises them (engine/data/windows.py HourlyProfile), were spent in the places as they
were (``ScenarioEnv.history_env``: the stored embeddings, recombined when a/b change, since those are a
way of reading every place rather than a change of one).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from db import Database, model_folder
from db.models import ForecastRun
from db.models import Scenario as ScenarioRow
from db.queries import cell_descriptions, dataset_cells, find_encoder, get_dataset_by_id, load_env_embeddings
from engine.data.ingest_table import MAX_POI_COUNT
from engine.data.windows import SeriesData
from engine.env.clip import ClipEncoder, combine_env, encode, images_to_tensor, load_encoder
from engine.env.describe import CityStats, TemplateDescriber
from engine.errors import InputError
from engine.forecast import (
    QUANTILES,
    ForecastContext,
    ForecastResult,
    LocationPlan,
    check_sampler,
    entity_rows,
    hour_label,
    load_context,
    recursive_forecast,
    step_summaries,  # the one per-step summary of a forecast run, shared with `lsdm forecast`
)
from engine.requests import ForecastRequest, WhatIfRequest, parse_location_text

MAX_TILE_BYTES = 2_000_000  # an uploaded tile is a small aerial image; this keeps scenario JSON small
MAX_DESCRIPTION_CHARS = 600  # CLIP reads 77 tokens; longer text would be cut silently
BASELINE_GUIDANCE = 1.0  # the plain conditional model, as `lsdm forecast` uses by default
Progress = Callable[[int, int], None]


# --- the scenario ---------------------------------------------------------------------------------


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it holds; anything else unchanged."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


@dataclass
class CellEdit:
    """What is different about one cell. ``None`` = unchanged."""

    poi_counts: list[int] | None = None  # aligned with the data set's POI categories
    description: str | None = None  # used as written; else regenerated from edited counts
    tile_from: str | None = None  # take the tile of another cell (its key)
    tile_png: bytes | None = None  # an uploaded image (base64 in JSON)

    def is_empty(self) -> bool:
        return all(v is None for v in (self.poi_counts, self.description, self.tile_from, self.tile_png))

    def to_dict(self) -> dict:
        out: dict = {}
        if self.poi_counts is not None:
            # whole numbers as int (numpy's too); anything else kept as given, for validation to name
            out["poi_counts"] = [
                int(v) if isinstance(v, int | float) and float(v).is_integer() else v
                for v in map(_plain, self.poi_counts)
            ]
        if self.description is not None:
            out["description"] = self.description
        if self.tile_from is not None:
            out["tile_from"] = self.tile_from
        if self.tile_png is not None:
            out["tile_png"] = base64.b64encode(self.tile_png).decode("ascii")
        return out

    @classmethod
    def from_dict(cls, data: dict, key: str) -> CellEdit:
        known = {"poi_counts", "description", "tile_from", "tile_png"}
        unknown = set(data) - known
        if unknown:
            raise InputError(
                f"unknown edit {sorted(unknown)[0]!r}; expected one of {', '.join(sorted(known))}",
                field=f"cell_edits.{key}",
            )
        png = data.get("tile_png")
        if isinstance(png, str):
            try:
                png = base64.b64decode(png, validate=True)
            except (binascii.Error, ValueError):
                raise InputError("expected base64-encoded image bytes", field=f"cell_edits.{key}.tile_png") from None
        return cls(
            poi_counts=data.get("poi_counts"),
            description=data.get("description"),
            tile_from=data.get("tile_from"),
            tile_png=png,
        )


@dataclass
class Scenario:
    """A changed environment for one forecast (see the module docstring)."""

    location: str = "habitual"
    cell_edits: dict[str, CellEdit] = field(default_factory=dict)
    a: float | None = None  # Eq. 9 image weight; None = the encoder's own
    b: float | None = None  # Eq. 9 text weight; None = the encoder's own
    guidance: float = BASELINE_GUIDANCE

    def to_dict(self) -> dict:
        return {
            "location": self.location,
            "cell_edits": {k: e.to_dict() for k, e in self.cell_edits.items()},
            "a": self.a,
            "b": self.b,
            "guidance": self.guidance,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scenario:
        edits = data.get("cell_edits") or {}
        if not isinstance(edits, dict):
            raise InputError("expected an object {cell key: edits}", field="cell_edits")
        return cls(
            location=data.get("location", "habitual"),
            cell_edits={str(k): CellEdit.from_dict(v or {}, str(k)) for k, v in edits.items()},
            a=data.get("a"),
            b=data.get("b"),
            guidance=data.get("guidance", BASELINE_GUIDANCE),
        )

    def moved_to(self) -> list[str]:
        """The cells of an explicit ``cell:`` location, else []."""
        return [k.strip() for k in self.location[5:].split(",")] if self.location.startswith("cell:") else []

    def describe(self, weights: tuple[float, float] | None = None) -> str:
        """A short human summary, used as the default name: 'moved to C0042; C0042: POIs, tile'.
        ``weights``: the encoder's own (a, b), not mentioned when the scenario keeps them."""
        parts = []
        if self.location != "habitual":
            parts.append(f"moved to {', '.join(self.moved_to())}" if self.moved_to() else f"location {self.location}")
        for key, edit in self.cell_edits.items():
            what = [
                name
                for name, value in (
                    ("POIs", edit.poi_counts),
                    ("description", edit.description),
                    ("tile", edit.tile_from or edit.tile_png),
                )
                if value is not None
            ]
            if what:
                parts.append(f"{key}: {', '.join(what)}")
        if (self.a, self.b) != (None, None) and (self.a, self.b) != weights:
            shown = ["default" if v is None else f"{v:g}" for v in (self.a, self.b)]
            parts.append(f"a={shown[0]}, b={shown[1]}")
        if self.guidance != BASELINE_GUIDANCE:
            parts.append(f"guidance {self.guidance:g}")
        return "; ".join(parts) or "no change"


def _check_number(value: object, name: str, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise InputError(f"expected a finite number >= {low:g}, got {value!r}", field=name)
    return float(value)


def _check_counts(counts: object, categories: tuple[str, ...], name: str) -> list[int]:
    if not isinstance(counts, (list, tuple)) or len(counts) != len(categories):
        size = len(counts) if isinstance(counts, (list, tuple)) else type(counts).__name__
        raise InputError(f"expected {len(categories)} POI counts (one per category), got {size}", field=name)
    out = []
    for category, v in zip(categories, counts, strict=True):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not math.isfinite(v)
            or v != int(v)
        ):
            raise InputError(f"the count of {category!r} must be a whole number, got {v!r}", field=name)
        if v < 0 or v > MAX_POI_COUNT:
            raise InputError(
                f"the count of {category!r} must be from 0 to {MAX_POI_COUNT:,}, got {int(v):,}", field=name
            )
        out.append(int(v))
    return out


def check_tile_image(data: object, name: str) -> bytes:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError("expected the bytes of an image file", field=name)
    if len(data) > MAX_TILE_BYTES:
        raise InputError(
            f"the image has {len(data) / 1e6:.1f} MB; at most {MAX_TILE_BYTES / 1e6:.0f} MB",
            field=name,
            hint="upload a smaller tile (it is shrunk to the encoder's size anyway)",
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError("not a readable image (PNG or JPEG expected)", field=name) from None
    return bytes(data)


# --- what the engine needs to apply scenarios -----------------------------------------------------


@dataclass
class WhatIfContext:
    """A loaded forecaster and data set plus the environment's parts (image and text embeddings, POI
    counts, descriptions, the encoder's Eq. 9 settings): what the app keeps between scenarios."""

    forecast: ForecastContext
    encoder_path: Path | None  # the CLIP encoder that made the data set's embeddings (None: no environment)
    image_z: np.ndarray  # (C, D) stored image embeddings; zeros where a cell has no tile
    text_z: np.ndarray  # (C, D) stored text embeddings
    has_image: np.ndarray  # (C,) bool
    a: float  # the encoder's Eq. 9 weights and mode (engine/env/clip.py ClipSettings)
    b: float
    mode: str
    categories: tuple[str, ...]
    poi: np.ndarray  # (C, P) POI counts
    descriptions: list[str]  # the stored description of each cell ("" where none)
    _encoder: ClipEncoder | None = field(default=None, repr=False)

    @property
    def series(self) -> SeriesData:
        return self.forecast.series

    @property
    def env_kind(self) -> str:
        return self.forecast.forecaster.config.env_kind

    @property
    def uses_environment(self) -> bool:
        return bool(self.forecast.forecaster.config.uses_environment) and self.series.env.shape[1] > 0

    @cached_property
    def cell_row(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.series.cell_keys)}

    @cached_property
    def city_stats(self) -> CityStats:
        """The data set's POI statistics, against which edited counts are described."""
        return CityStats.from_counts(self.poi, self.categories)

    def describe_counts(self, counts: list[int]) -> str:
        """The template description of a cell with these POI counts, in this city (what an edit of the
        counts without an explicit description encodes)."""
        return TemplateDescriber().text(counts, self.city_stats)

    def encoder(self) -> ClipEncoder:
        """The CLIP encoder, loaded on first use (only edits of text or an uploaded tile need it)."""
        if self._encoder is None:
            if self.encoder_path is None:
                raise InputError(
                    "this data set has no environment encoder that can embed a new text or tile (its vectors, if "
                    "any, were supplied with the data)",
                    field="cell_edits",
                    hint="build one with `lsdm env build`",
                )
            self._encoder = load_encoder(self.encoder_path)
        return self._encoder


def load_whatif_context(
    database: Database,
    forecast_context: ForecastContext | None = None,
    **load_options: Any,
) -> WhatIfContext:
    """Load (or reuse) the forecast context and the environment parts of its data set."""
    context = forecast_context or load_context(database, **load_options)
    series = context.series
    n, dim = len(series.cell_ids), series.env.shape[1]
    row = {int(c): i for i, c in enumerate(series.cell_ids)}
    image_z = np.zeros((n, dim), np.float32)
    text_z = np.zeros((n, dim), np.float32)
    has_image = np.zeros(n, bool)
    a, b, mode, path = 0.5, 0.5, "both", None
    with database.session() as session:
        dataset = get_dataset_by_id(session, context.dataset_id)
        if series.encoder_id and dim:
            record = find_encoder(session, series.encoder_id, dataset.id)
            if record is not None and record.path:  # an external encoder (vectors supplied with the data) has no files
                path = model_folder(record.path)
                settings = (record.config or {}).get("settings", {})
                a, b, mode = float(settings.get("a", a)), float(settings.get("b", b)), settings.get("mode", mode)
            for kind, matrix in (("image", image_z), ("text", text_z)):
                ids, vectors = load_env_embeddings(session, dataset, kind=kind, encoder_id=series.encoder_id)
                if len(ids):
                    rows = [row[int(c)] for c in ids]
                    matrix[rows] = vectors
                    if kind == "image":
                        has_image[rows] = True
        poi = {cell.id: cell.poi_counts for cell in dataset_cells(session, dataset.id)}
        texts = cell_descriptions(session, dataset.id)
        categories = tuple(dataset.poi_categories)
    return WhatIfContext(
        forecast=context,
        encoder_path=path,
        image_z=image_z,
        text_z=text_z,
        has_image=has_image,
        a=a,
        b=b,
        mode=mode,
        categories=categories,
        poi=np.array([poi[int(c)] for c in series.cell_ids], dtype=np.int64).reshape(n, len(categories)),
        descriptions=[texts.get(int(c), "") for c in series.cell_ids],
    )


def _check_location(scenario: Scenario, context: WhatIfContext) -> None:
    if scenario.location in ("habitual", "stay"):
        return
    keys = scenario.moved_to()
    if not keys or not all(keys):
        raise InputError(f"expected habitual, stay or cell:KEY[,KEY...], got {scenario.location!r}", field="location")
    for key in keys:
        if key not in context.cell_row:
            raise InputError(f"unknown cell {key!r} in data set {context.series.dataset_name!r}", field="location")


def _check_description(text: object, name: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError("the description is empty; write one or leave it unchanged", field=name)
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise InputError(
            f"the description has {len(text)} characters; at most {MAX_DESCRIPTION_CHARS} (CLIP reads about 77 tokens)",
            field=name,
        )
    return text.strip()


def _check_edit(key: str, edit: CellEdit, context: WhatIfContext) -> CellEdit:
    """One cell's edit, checked field by field; returns it normalised (whole counts, stripped text)."""
    name = f"cell_edits.{key}"
    if key not in context.cell_row:
        raise InputError(f"unknown cell {key!r} in data set {context.series.dataset_name!r}", field=name)
    counts = (
        None if edit.poi_counts is None else _check_counts(edit.poi_counts, context.categories, f"{name}.poi_counts")
    )
    text = None if edit.description is None else _check_description(edit.description, f"{name}.description")
    if edit.tile_from is not None and edit.tile_png is not None:
        raise InputError("choose one: another cell's tile or an uploaded image", field=f"{name}.tile_from")
    if edit.tile_from is not None:
        if edit.tile_from not in context.cell_row:
            raise InputError(f"unknown cell {edit.tile_from!r}", field=f"{name}.tile_from")
        if not context.has_image[context.cell_row[edit.tile_from]]:
            raise InputError(f"cell {edit.tile_from!r} has no tile", field=f"{name}.tile_from")
    png = None if edit.tile_png is None else check_tile_image(edit.tile_png, f"{name}.tile_png")
    return CellEdit(poi_counts=counts, description=text, tile_from=edit.tile_from, tile_png=png)


def validate_scenario(scenario: Scenario, context: WhatIfContext) -> Scenario:
    """Check every field against the data set (InputError names the field); returns the scenario with
    a/b filled in from the encoder and empty edits dropped."""
    _check_location(scenario, context)
    edits = {key: _check_edit(key, edit, context) for key, edit in scenario.cell_edits.items()}
    edits = {key: edit for key, edit in edits.items() if not edit.is_empty()}
    a = context.a if scenario.a is None else _check_number(scenario.a, "a")
    b = context.b if scenario.b is None else _check_number(scenario.b, "b")
    if a + b <= 0:
        raise InputError(
            "a and b cannot both be 0 (that removes the environment; use guidance 0 for an unconditional forecast)",
            field="a",
        )
    guidance = _check_number(scenario.guidance, "guidance")
    return Scenario(location=scenario.location, cell_edits=edits, a=a, b=b, guidance=guidance)


# --- the changed environment ----------------------------------------------------------------------


@dataclass
class ScenarioEnv:
    """The scenario's environment matrix and what went into it."""

    env: np.ndarray  # (C, D), the model's conditioning embedding of every cell
    descriptions: dict[str, str]  # edited cell -> the text that was encoded
    notes: list[str]  # edits that cannot change this model's forecast, said plainly
    history_env: np.ndarray  # (C, D) the unedited places, read with the scenario's a/b


def _model_env(
    context: WhatIfContext, image_z: np.ndarray, text_z: np.ndarray, has_image: np.ndarray, a: float, b: float
) -> np.ndarray:
    """What the model conditions on, from image and text embeddings (as engine/env/pipeline.py stores it
    and engine/data/windows.py loads it)."""
    if context.env_kind == "image":  # a cell without a tile has no image embedding: zeros, as when loaded
        return np.where(has_image[:, None], image_z, 0).astype(np.float32)
    if context.env_kind == "text":
        return text_z.astype(np.float32, copy=True)
    return combine_env(image_z, text_z, has_image, a, b, context.mode)  # Eq. 9


def _notes(context: WhatIfContext, scenario: Scenario) -> list[str]:
    notes = []
    if not context.uses_environment:
        return [
            "The active model does not use the environment: a different place or environment cannot "
            "change its forecast."
        ]
    texts = any(e.poi_counts is not None or e.description is not None for e in scenario.cell_edits.values())
    tiles = any(e.tile_from is not None or e.tile_png is not None for e in scenario.cell_edits.values())
    if context.env_kind == "image" and texts:
        notes.append("The model conditions on tile embeddings only: POI and description edits have no effect.")
    if context.env_kind == "text" and tiles:
        notes.append("The model conditions on text embeddings only: tile edits have no effect.")
    if (scenario.a, scenario.b) != (context.a, context.b) and (context.env_kind != "env" or context.mode != "both"):
        notes.append("a and b only matter for a model conditioned on both embeddings (Eq. 9); they have no effect.")
    return notes


def scenario_env(context: WhatIfContext, scenario: Scenario) -> ScenarioEnv:
    """The (cells, D) environment of a validated scenario (see the module docstring)."""
    series = context.series
    env = series.env.copy()
    notes = _notes(context, scenario)
    a, b = scenario.a, scenario.b
    assert a is not None and b is not None, "validate_scenario fills a and b in"
    if series.env.shape[1] == 0:
        return ScenarioEnv(env, {}, notes, series.env)
    image_z, text_z, has_image = context.image_z.copy(), context.text_z.copy(), context.has_image.copy()
    rows = context.cell_row
    texts: dict[int, str] = {}
    uploads: dict[int, bytes] = {}
    for key, edit in scenario.cell_edits.items():
        row = rows[key]
        if edit.tile_from is not None:  # the same tile gives the same embedding: reuse the stored one
            image_z[row], has_image[row] = context.image_z[rows[edit.tile_from]], True
        if edit.tile_png is not None:
            uploads[row] = edit.tile_png
        if edit.description is not None:
            texts[row] = edit.description
        elif edit.poi_counts is not None:
            texts[row] = context.describe_counts(edit.poi_counts)
    todo = sorted(set(texts) | set(uploads))
    if todo:
        encoder = context.encoder()
        pixels = images_to_tensor([uploads.get(r) for r in todo], encoder.image_size)
        new_image, new_text = encode(encoder, pixels, [texts.get(r, context.descriptions[r]) for r in todo])
        for i, r in enumerate(todo):
            if r in uploads:
                image_z[r], has_image[r] = new_image[i], True
            if r in texts:
                text_z[r] = new_text[i]
    combined = _model_env(context, image_z, text_z, has_image, a, b)
    if (a, b) == (context.a, context.b):
        # Unedited cells keep their stored embeddings exactly; only edited ones are recombined.
        edited = [rows[k] for k in scenario.cell_edits]
        env[edited] = combined[edited]
        history = series.env
    else:
        env = combined
        history = _model_env(context, context.image_z, context.text_z, context.has_image, a, b)
    return ScenarioEnv(env, {series.cell_keys[r]: t for r, t in texts.items()}, notes, history)


# --- comparing two runs ---------------------------------------------------------------------------


def _run_stats(paths: np.ndarray) -> dict:
    """Per-step per-service median and mean, and total-traffic quantiles, of (S, N, K) paths in bytes."""
    totals = np.quantile(paths.sum(axis=-1), QUANTILES, axis=0)  # (5, N) over the samples
    names = ["median" if q == 0.5 else f"q{int(q * 100):02d}" for q in QUANTILES]
    return {
        "median": np.median(paths, axis=0).tolist(),  # (N, K)
        "mean": paths.mean(axis=0).tolist(),
        "total": {name: totals[i].tolist() for i, name in enumerate(names)},  # q05 q25 median q75 q95, (N,)
    }


def compare_paths(baseline: np.ndarray, scenario: np.ndarray) -> dict:
    """The comparison of two runs' (S, N, K) sample paths in bytes: each run's statistics and the
    scenario-minus-baseline difference of the per-step medians and means. Paths are taken as float32,
    as stored, so a comparison rebuilt from the database equals the one computed at run time."""
    base, scen = _run_stats(baseline.astype(np.float32)), _run_stats(scenario.astype(np.float32))
    difference: dict = {stat: (np.asarray(scen[stat]) - np.asarray(base[stat])).tolist() for stat in ("median", "mean")}
    difference["paired"] = paired_difference(baseline, scenario)
    return {"baseline": base, "scenario": scen, "difference": difference}


def paired_difference(baseline: np.ndarray, scenario: np.ndarray) -> dict:
    """Path i of the scenario minus path i of the baseline (the same seed: the same noise, so the difference
    is the change's alone), summed over the horizon: its mean and 90 % interval (the 5 % and 95 % quantiles
    over the paths) for the total and per service, and per hour for the total; ``within_noise`` when the
    total's interval holds 0. The convention of the cell-level what-ifs (engine/load/whatif.py)."""
    paired = scenario.astype(np.float32).astype(np.float64) - baseline.astype(np.float32).astype(np.float64)
    by_service = paired.sum(axis=1)  # (S, K) over the hours
    total = by_service.sum(axis=1)  # (S,)
    by_hour = paired.sum(axis=2)  # (S, N)

    def stats(values: np.ndarray) -> dict:
        return {
            "mean": values.mean(axis=0).tolist(),
            "q05": np.quantile(values, 0.05, axis=0).tolist(),
            "q95": np.quantile(values, 0.95, axis=0).tolist(),
        }

    whole = stats(total)
    return {
        "paths": int(paired.shape[0]),
        "total": whole,
        "services": stats(by_service),
        "hours": stats(by_hour),
        "within_noise": bool(whole["q05"] <= 0 <= whole["q95"]),
    }


def _steps(
    series: SeriesData,
    start: int,
    horizon: int,
    baseline_cells: np.ndarray,
    scenario_cells: np.ndarray,
) -> list[dict]:
    """Per step: hour, label and each run's cell (as the stored run summaries have them)."""

    def key(row: int) -> str | None:
        return series.cell_keys[int(row)] if row >= 0 else None

    return [
        {
            "hour": start + n,
            "label": hour_label(series, start + n),
            "baseline_cell": key(baseline_cells[n]),
            "scenario_cell": key(scenario_cells[n]),
        }
        for n in range(horizon)
    ]


def _halves(progress: Progress | None, offset: int) -> Progress | None:
    """Report one of the two forecasts as a half of the whole what-if."""
    if progress is None:
        return None
    return lambda done, total: progress(offset + done, 2 * total)


# --- running, storing and reloading ---------------------------------------------------------------


def run_whatif(
    database: Database,
    request: WhatIfRequest,
    *,
    context: WhatIfContext | None = None,
    store: bool = True,
    progress: Progress | None = None,
) -> dict:
    """Forecast the baseline and the scenario with the same seed; store both runs and the scenario
    (one transaction) unless ``store`` is False. Nothing is written when any input is invalid."""
    request = request.checked()
    start, horizon = request.start, request.horizon
    context = context or load_whatif_context(database)
    forecaster, series = context.forecast.forecaster, context.series
    check_sampler(forecaster, request.sampler, request.sampler_steps)
    rows = entity_rows(series, request.entity_kind, (request.entity,))
    scenario = validate_scenario(Scenario.from_dict(request.scenario), context)
    plan = LocationPlan.parse(scenario.location, series)
    changed = scenario_env(context, scenario)
    summary = scenario.describe((context.a, context.b))
    name = (request.name or "").strip() or f"{series.entity_keys[rows[0]]} {hour_label(series, start)}: {summary}"
    if len(name) > 200:
        raise InputError(f"the name has {len(name)} characters; at most 200", field="name")

    values = forecaster.normaliser.forward(series.traffic)  # shared by both runs
    common: dict[str, Any] = dict(
        start=start,
        horizon=horizon,
        samples=request.samples,
        sampler=request.sampler,
        steps=request.sampler_steps,
        seed=request.seed,
        values=values,
    )
    baseline = recursive_forecast(
        forecaster,
        series,
        rows,
        plan=LocationPlan(),
        guidance=BASELINE_GUIDANCE,
        progress=_halves(progress, 0),
        **common,
    )
    # The edited places change the future hours' environment; the entity's past (its profiles) stays as
    # it was recorded, under the original embeddings.
    outcome = recursive_forecast(
        forecaster,
        dataclasses.replace(series, env=changed.env),
        rows,
        plan=plan,
        guidance=scenario.guidance,
        progress=_halves(progress, horizon),
        history_env=changed.history_env,
        **common,
    )

    model = {
        "model_id": context.forecast.record_id,
        "model_sha256": context.forecast.record_sha256,
        "dataset": series.dataset_name,
    }
    baseline_scenario = Scenario(a=context.a, b=context.b)
    payload = {
        "scenario_id": None,
        "name": name,
        "baseline_run_id": None,
        "scenario_run_id": None,
        "params": {
            **request.to_params(),
            "name": name,
            **model,
            "scenario": scenario.to_dict(),
            "descriptions": changed.descriptions,
            "notes": changed.notes,
        },
        "services": list(series.services),
        "steps": _steps(series, start, horizon, baseline.cells[0], outcome.cells[0]),
        **compare_paths(baseline.paths[0], outcome.paths[0]),
        "seconds": round(baseline.seconds + outcome.seconds, 4),
    }
    if not store:
        return payload
    entity_label = f"{request.entity_kind}:{series.entity_keys[rows[0]]}"
    with database.write_session() as session, session.begin():
        runs = []
        for role, result, scen in (("baseline", baseline, baseline_scenario), ("scenario", outcome, scenario)):
            # Each of the two runs is a forecast of its own: its request, with what made it a what-if half.
            location, cells = parse_location_text(scen.location)
            run_request = ForecastRequest(
                entities=(request.entity,),
                start=start,
                entity_kind=request.entity_kind,
                horizon=horizon,
                samples=request.samples,
                sampler=request.sampler,
                sampler_steps=request.sampler_steps,
                location=location,
                cells=cells,
                guidance=scen.guidance,
                seed=request.seed,
                noise="antithetic",
                model_id=context.forecast.record_id,
                dataset=series.dataset_name,
            )
            params = {**run_request.to_params(), **model, "role": role, "scenario": scen.to_dict()}
            run = ForecastRun(
                model_id=context.forecast.record_id,
                dataset_id=context.forecast.dataset_id,
                params=params,
                result=result.to_npz_bytes(),
                seconds=result.seconds,
                summary={"entities": [{"entity": entity_label, "steps": step_summaries(result, series, 0)}]},
            )
            session.add(run)
            runs.append(run)
        session.flush()
        row = ScenarioRow(
            name=name,
            dataset_id=context.forecast.dataset_id,
            params=payload["params"],
            baseline_run_id=runs[0].id,
            scenario_run_id=runs[1].id,
        )
        session.add(row)
        session.flush()
        payload.update(scenario_id=row.id, baseline_run_id=runs[0].id, scenario_run_id=runs[1].id)
    return payload


def load_scenario(database: Database, scenario_id: int) -> dict:
    """A stored scenario as ``run_whatif`` returned it, rebuilt from its two stored runs."""
    with database.session() as session:
        row = session.get(ScenarioRow, scenario_id)
        if row is None:
            raise InputError(f"no what-if scenario with id {scenario_id}", field="scenario")
        found = [
            session.get(ForecastRun, run_id) if run_id else None
            for run_id in (row.baseline_run_id, row.scenario_run_id)
        ]
        runs = [run for run in found if run is not None and run.result is not None]
        if len(runs) != 2:
            raise InputError(f"scenario {scenario_id} has lost one of its forecast runs", field="scenario")
        paths = [ForecastResult.arrays_from_npz(run.result or b"")["paths"][0] for run in runs]  # (S, N, K) each
        base_steps, scen_steps = (run.summary["entities"][0]["steps"] for run in runs)
        return {
            "scenario_id": row.id,
            "dataset_id": row.dataset_id,
            "name": row.name,
            "baseline_run_id": runs[0].id,
            "scenario_run_id": runs[1].id,
            "params": row.params,
            "services": list(get_dataset_by_id(session, row.dataset_id).services),
            "steps": [
                {"hour": b["hour"], "label": b["label"], "baseline_cell": b["cell"], "scenario_cell": s["cell"]}
                for b, s in zip(base_steps, scen_steps, strict=True)
            ],
            **compare_paths(*paths),
            "seconds": round(sum(float(run.seconds or 0) for run in runs), 4),
            "created_at": row.created_at.isoformat(timespec="seconds"),
        }


def list_scenarios(database: Database, dataset_id: int) -> list[dict]:
    """The data set's stored scenarios, newest first: id, name, entity, start, location, created_at."""
    with database.session() as session:
        rows = session.execute(
            select(ScenarioRow.id, ScenarioRow.name, ScenarioRow.params, ScenarioRow.created_at)
            .where(ScenarioRow.dataset_id == dataset_id)
            .order_by(ScenarioRow.id.desc())
        ).all()
    out = []
    for r in rows:
        request = WhatIfRequest.from_params(r.params)  # scenarios stored before requests read too
        out.append(
            {
                "id": r.id,
                "name": r.name,
                "entity": f"{request.entity_kind}:{request.entity}",
                "start": request.start,
                "horizon": request.horizon,
                "location": request.scenario.get("location"),
                "created_at": r.created_at,
            }
        )
    return out


def rename_scenario(database: Database, scenario_id: int, name: str) -> None:
    """Save a scenario under another name."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InputError("expected a name of 1 to 200 characters", field="name")
    with database.write_session() as session, session.begin():
        row = session.get(ScenarioRow, scenario_id)
        if row is None:
            raise InputError(f"no what-if scenario with id {scenario_id}", field="scenario")
        row.name = name
