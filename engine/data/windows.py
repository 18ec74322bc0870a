"""A data set as arrays, its normalisation, and the (entity, target hour) windows of each split.

Decisions (the paper leaves them open; see docs/model.md#data-and-splits and the headings after it):
- Normalisation: v = log1p(bytes) / s with one global scale s = the largest log1p(bytes) seen in the
  training windows' hours (fitted on training data only, stored with the model). v lies in [0, ~1];
  metrics "on the normalised scale" (the paper's tables) are on v, metrics "in bytes" on
  expm1(v * s). One global scale (not one per service) keeps the services' relative volumes, which
  the cosine term and the service mix (radar) depend on.
- A window is (entity e, target hour t): history v[e, t-H : t] (H hours x K services), the side
  information of hours t-H .. t+F-1 (hour of day, day of week), the environment embedding of the
  entity's cell at every one of those hours, and the target v[e, t : t+F].
- Splits: "time" (default): targets in the first days train, the next day validates, the last day
  tests (history may reach back into earlier days: it is observed data). "users": a held-out share of
  entities, tested on the test day, trained on the others' training days. "city": train on one data
  set, test on another (the CLI passes the second one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Cell, Dataset, Entity
from db.queries import active_model, load_env_embeddings, location_batches, traffic_batches
from engine.errors import InputError


def embeddings_of(cell_env: np.ndarray, cell_rows: np.ndarray) -> np.ndarray:
    """Rows of ``cell_env`` (C, D) for cell rows of any shape -> (..., D); zeros where the row is -1 (unknown)."""
    padded = np.concatenate([cell_env, np.zeros((1, cell_env.shape[1]), dtype=np.float32)]).astype(np.float32)
    return padded[np.where(cell_rows >= 0, cell_rows, len(cell_env))]


@dataclass
class SeriesData:
    """One data set in memory: traffic, locations, environment embeddings and calendar."""

    dataset_name: str
    services: list[str]
    entity_ids: np.ndarray  # (E,) database ids
    entity_keys: list[str]
    traffic: np.ndarray  # (E, T, K) bytes, float64
    location: np.ndarray  # (E, T) row in ``cell_ids``/``env``; -1 = unknown
    cell_ids: np.ndarray  # (C,) database ids
    cell_keys: list[str]
    env: np.ndarray  # (C, D) float32 environment embedding per cell (D = 0 when there is none)
    time_origin: datetime
    encoder_id: str | None = None
    # A row view's rows in the whole data set (``rows``): an entity's random draws are seeded by that row, so
    # that its forecast is the same from the view as from the whole data set. None: this is the whole.
    source_rows: np.ndarray | None = None

    def rows(self, entities: np.ndarray) -> SeriesData:
        """These entities alone (rows of this series), for work whose cost must not grow with the data set
        (a chunk of a city-wide run reads only its own entities' traffic and places)."""
        entities = np.asarray(entities, dtype=np.int64)
        return dataclasses.replace(
            self,
            entity_ids=self.entity_ids[entities],
            entity_keys=[self.entity_keys[int(e)] for e in entities],
            traffic=self.traffic[entities],
            location=self.location[entities],
            source_rows=self.source_row(entities),
        )

    def source_row(self, entities: np.ndarray) -> np.ndarray:
        """The rows of these entities in the whole data set (their seeds)."""
        entities = np.asarray(entities, dtype=np.int64)
        return entities if self.source_rows is None else self.source_rows[entities]

    @property
    def hours(self) -> int:
        return self.traffic.shape[1]

    @property
    def hour_of_day(self) -> np.ndarray:
        return (self.time_origin.hour + np.arange(self.hours)) % 24

    @property
    def day_of_week(self) -> np.ndarray:
        return (self.time_origin.weekday() + (self.time_origin.hour + np.arange(self.hours)) // 24) % 7

    def env_at(self, entity: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """Environment embeddings of the entities' cells at the given hours: (..., D); zeros where the
        cell (or its embedding) is unknown."""
        return self.env_of_cells(self.location[entity, hours])

    def env_of_cells(self, cell_rows: np.ndarray) -> np.ndarray:
        return embeddings_of(self.env, cell_rows)

    def habitual_cell(self, entity: int, hour: int, before: int) -> int:
        """The entity's most frequent cell at this hour of the week (falling back to this hour of the
        day, then to its most frequent cell overall), using only hours before ``before``."""
        past = self.location[entity, :before]
        hours = np.arange(before)
        for same in ((hours % 168) == (hour % 168), (hours % 24) == (hour % 24), np.ones(before, bool)):
            cells = past[same & (past >= 0)]
            if len(cells):
                values, counts = np.unique(cells, return_counts=True)
                return int(values[np.argmax(counts)])
        return -1


def load_series(
    session: Session,
    dataset: Dataset,
    *,
    env_kind: str = "env",
    encoder_id: str | None = None,
    entity_keys: list[str] | None = None,
    of_ids: list[int] | None = None,
) -> SeriesData:
    """Read a whole data set (and the active encoder's embeddings, if any) into arrays; of the entities
    with ``entity_keys`` or the database ids ``of_ids`` only, when given (in id order; unknown ones are left out).
    ``encoder_id=""``: no embeddings."""
    statement = select(Entity.id, Entity.key).where(Entity.dataset_id == dataset.id).order_by(Entity.id)
    if entity_keys is not None:
        statement = statement.where(Entity.key.in_(list(entity_keys)))
    if of_ids is not None:
        statement = statement.where(Entity.id.in_([int(e) for e in of_ids]))
    entities = session.execute(statement).all()
    cells = session.execute(select(Cell.id, Cell.key).where(Cell.dataset_id == dataset.id).order_by(Cell.id)).all()
    entity_ids = np.array([e[0] for e in entities], dtype=np.int64)  # ascending: rows by searchsorted
    cell_ids = np.array([c[0] for c in cells], dtype=np.int64)
    c_row = {int(c): i for i, c in enumerate(cell_ids)}
    some = None if entity_keys is None and of_ids is None else entity_ids.tolist()
    k = len(dataset.services)
    # Filled batch by batch: the rows read from the database are never all in memory beside the arrays.
    traffic = np.zeros((len(entity_ids), dataset.hours, k))
    for arr in traffic_batches(session, dataset.id, some):
        traffic[np.searchsorted(entity_ids, arr[:, 0]), arr[:, 1], arr[:, 2]] = arr[:, 3]
    location = np.full((len(entity_ids), dataset.hours), -1, dtype=np.int64)
    for arr in location_batches(session, dataset.id, some):
        location[np.searchsorted(entity_ids, arr[:, 0]), arr[:, 1]] = np.searchsorted(cell_ids, arr[:, 2])
    env = np.zeros((len(cell_ids), 0), dtype=np.float32)
    if encoder_id is None:
        record = active_model(session, dataset.id, kind="clip")
        encoder_id = record.name if record else None
    if encoder_id is not None:
        ids, vectors = load_env_embeddings(session, dataset, kind=env_kind, encoder_id=encoder_id)
        if len(ids):
            env = np.zeros((len(cell_ids), vectors.shape[1]), dtype=np.float32)
            env[[c_row[int(c)] for c in ids]] = vectors
        else:  # this encoder never embedded the data set's cells
            encoder_id = None
    return SeriesData(
        dataset_name=dataset.name,
        services=list(dataset.services),
        entity_ids=entity_ids,
        entity_keys=[e[1] for e in entities],
        traffic=traffic,
        location=location,
        cell_ids=cell_ids,
        cell_keys=[c[1] for c in cells],
        env=env,
        time_origin=dataset.time_origin,
        encoder_id=encoder_id,
    )


@dataclass
class SeriesReader:
    """A data set read a few entities at a time: for the chunks of a city-wide run, whose process must not
    hold every entity's series (docs/scale.md#executors). It keeps every entity's database id and key (a few
    bytes each) and ``skeleton``: the data set without entities (its cells, embeddings, services, calendar)."""

    database: Any  # db.Database
    dataset_id: int
    env_kind: str
    encoder_id: str  # "" = no embeddings
    entity_ids: np.ndarray  # (E,) ascending
    entity_keys: list[str]
    skeleton: SeriesData

    @classmethod
    def open(
        cls, database: Any, dataset: Dataset, *, env_kind: str = "env", encoder_id: str | None = None
    ) -> SeriesReader:
        """The reader of ``dataset`` (read in ``database``'s session); ``encoder_id`` as for ``load_series``."""
        with database.session() as session:
            dataset = session.get(Dataset, dataset.id) or dataset
            skeleton = load_series(session, dataset, env_kind=env_kind, encoder_id=encoder_id, of_ids=[])
            entities = session.execute(
                select(Entity.id, Entity.key).where(Entity.dataset_id == dataset.id).order_by(Entity.id)
            ).all()
        return cls(
            database=database,
            dataset_id=dataset.id,
            env_kind=env_kind,
            encoder_id=skeleton.encoder_id or "",
            entity_ids=np.array([e[0] for e in entities], dtype=np.int64),
            entity_keys=[e[1] for e in entities],
            skeleton=skeleton,
        )

    def rows(self, rows: np.ndarray) -> SeriesData:
        """The entities of these rows (of the whole data set, ascending), read from the database: a row view
        (``SeriesData.rows``) whose random draws are the whole data set's."""
        asked = np.asarray(rows, dtype=np.int64)
        rows = np.sort(asked)  # the database gives them in id order, which is row order
        with self.database.session() as session:
            dataset = session.get(Dataset, self.dataset_id)
            if dataset is None:
                raise InputError(f"the data set with id {self.dataset_id} was deleted during the run", field="dataset")
            series = load_series(
                session,
                dataset,
                env_kind=self.env_kind,
                encoder_id=self.encoder_id,
                of_ids=self.entity_ids[rows].tolist(),
            )
        if len(series.entity_ids) != len(rows):
            raise InputError(
                f"{len(rows) - len(series.entity_ids)} entities were deleted during the run", field="dataset"
            )
        series = dataclasses.replace(series, source_rows=rows)
        return series if np.array_equal(rows, asked) else series.rows(np.searchsorted(rows, asked))


@dataclass
class Normaliser:
    """v = log1p(bytes) / scale (see module docstring); fitted on training data only."""

    scale: float = 1.0

    @classmethod
    def fit(cls, traffic_bytes: np.ndarray) -> Normaliser:
        peak = float(np.log1p(np.max(traffic_bytes, initial=0.0)))
        return cls(scale=peak if peak > 0 else 1.0)

    def forward(self, traffic_bytes: np.ndarray) -> np.ndarray:
        return (np.log1p(np.maximum(traffic_bytes, 0)) / self.scale).astype(np.float32)

    def inverse(self, v: np.ndarray) -> np.ndarray:
        return np.expm1(np.clip(v, 0, None) * self.scale)

    @property
    def zero_below(self) -> float:
        """v of half a byte: traffic is a whole number of bytes, so a sample below it is 0 bytes."""
        return float(np.log1p(0.5) / self.scale)

    def snap(self, v: np.ndarray) -> np.ndarray:
        """Samples as byte counts can be: below half a byte (or negative) -> exactly 0.

        Why: three quarters of the default city's (user, hour, service) values are exactly 0 bytes. A
        diffusion sample lands near 0, not on it, so without this a 90 % interval excluded the true 0 in
        38 % of those points (measured cov90 0.62 on the test day); with it, cov90 is 0.90 and CRPS and R²
        are unchanged or better (docs/model.md#whole-bytes)."""
        return np.where(v < self.zero_below, 0.0, v).astype(v.dtype, copy=False)

    def to_dict(self) -> dict:
        return {"kind": "log1p-global-max", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Normaliser:
        return cls(scale=float(data["scale"]))


@dataclass
class SplitSpec:
    """Which windows train, validate and test. Days are counted from hour 0 of the data set."""

    kind: str = "time"  # time | users
    history: int = 24
    horizon: int = 1  # F: hours predicted jointly
    val_days: int = 1
    test_days: int = 1
    heldout_users: float = 0.2  # kind == "users"
    seed: int = 0

    def validate(self, hours: int) -> None:
        if self.kind not in ("time", "users"):
            raise InputError(f"expected time or users, got {self.kind!r}", field="split")
        needed = self.history + 24 * (self.val_days + self.test_days) + 24
        if self.history < 1 or self.horizon < 1:
            raise InputError("history and horizon must be >= 1 hour", field="history")
        if hours < needed:
            raise InputError(
                f"the data set has {hours} hours; this split needs at least {needed} "
                f"({self.history} h history + a training day + {self.val_days} validation and "
                f"{self.test_days} test days)",
                field="split",
            )


@dataclass
class Windows:
    """(entity row, target hour) pairs; the first target hour of each window."""

    entity: np.ndarray
    hour: np.ndarray

    def __len__(self) -> int:
        return len(self.entity)

    def subset(self, mask: np.ndarray) -> Windows:
        return Windows(self.entity[mask], self.hour[mask])


@dataclass
class Splits:
    train: Windows
    val: Windows
    test: Windows
    spec: SplitSpec
    heldout_entities: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def train_hours_end(self) -> int:
        """First hour that belongs to validation (training windows' targets end before it)."""
        return int(self.val.hour.min()) if len(self.val) else int(self.test.hour.min())

    def describe(self) -> str:
        """The split in words, for reports: which hours train, validate and test (on data of any length:
        the last day tests, the day before validates, everything before trains)."""
        first_test = int(self.test.hour.min())
        train_days = (self.train_hours_end - self.spec.history) / 24
        return (
            f"split {self.spec.kind!r}: training targets at hours {self.spec.history}-{self.train_hours_end - 1} "
            f"({train_days:g} days after the first {self.spec.history} h of history), validation "
            f"{self.train_hours_end}-{first_test - 1}, test {first_test}-{int(self.test.hour.max())}"
        )


def make_splits(series: SeriesData, spec: SplitSpec) -> Splits:
    spec.validate(series.hours)
    hours = series.hours
    n_entities = len(series.entity_ids)
    test_start = hours - 24 * spec.test_days
    val_start = test_start - 24 * spec.val_days

    def grid(entities: np.ndarray, start: int, end: int) -> Windows:
        targets = np.arange(start, end - spec.horizon + 1)
        return Windows(np.repeat(entities, len(targets)), np.tile(targets, len(entities)))

    everyone = np.arange(n_entities)
    if spec.kind == "time":
        return Splits(
            grid(everyone, spec.history, val_start),
            grid(everyone, val_start, test_start),
            grid(everyone, test_start, hours),
            spec,
        )
    order = np.random.default_rng(spec.seed).permutation(n_entities)
    n_held = max(1, round(n_entities * spec.heldout_users))
    held, kept = np.sort(order[:n_held]), np.sort(order[n_held:])
    return Splits(
        grid(kept, spec.history, val_start),
        grid(kept, val_start, test_start),
        grid(held, test_start, hours),
        spec,
        heldout_entities=held,
    )


@dataclass
class HourlyProfile:
    """Each entity's mean normalised traffic by hour of day over the hours before ``before``: the
    "user profile" side information (paper Sec. IV-B: the condition carries user behaviour).

    Leave-one-out for targets inside the profile's own hours, so that a training target never
    sees itself in its profile.

    With ``env=True`` it also holds the entity's *environment profile*: the mean embedding of the cells
    it was in at each hour of day over the same hours (``env_at``). Why: the traffic profile already
    holds the effect of the places an entity usually is in at that hour; the environment the model can
    still use is where the entity is now against where it usually is. Given both embeddings, a model
    can tell the two apart (docs/model.md#the-environment-profile). ``history_env`` are the cells' embeddings
    as they were while the history was recorded: a what-if that changes a place changes the future hours'
    embedding, not the past that the profiles summarise."""

    sums: np.ndarray  # (E, 24, K)
    counts: np.ndarray  # (24,)
    before: int
    hour_of_day: np.ndarray  # (T,) of the series
    env_sums: np.ndarray | None = None  # (E, 24, D) float32: embeddings summed over the known cells' hours
    env_counts: np.ndarray | None = None  # (E, 24) hours with a known cell
    env_fallback: np.ndarray | None = None  # (E, D): the entity's mean over all hours (the cells' mean if none)
    location: np.ndarray | None = None  # (E, T) of the series (leave-one-out of the own hour's cell)
    history_env: np.ndarray | None = None  # (C, D)

    @classmethod
    def build(
        cls,
        series: SeriesData,
        values: np.ndarray,
        before: int,
        *,
        env: bool = False,
        history_env: np.ndarray | None = None,
    ) -> HourlyProfile:
        before = max(1, min(before, values.shape[1]))
        hod = series.hour_of_day[:before]
        sums = np.zeros((values.shape[0], 24, values.shape[2]))
        np.add.at(sums, (slice(None), hod), values[:, :before])  # type: ignore[arg-type]  # the stub lacks slices
        profile = cls(sums, np.bincount(hod, minlength=24).astype(float), before, series.hour_of_day)
        if env and series.env.shape[1]:
            profile._build_env(series, before, series.env if history_env is None else history_env)
        return profile

    def _build_env(self, series: SeriesData, before: int, cell_env: np.ndarray) -> None:
        n, d = series.location.shape[0], cell_env.shape[1]
        known_cells = np.abs(cell_env).sum(1) > 0  # a cell without embedding does not count
        location = series.location[:, :before]
        known = (location >= 0) & known_cells[np.maximum(location, 0)]  # (E, before)
        env_sums = np.zeros((n, 24, d), np.float32)
        env_counts = np.zeros((n, 24))
        hod = series.hour_of_day[:before]
        for hour in range(24):  # one hour of day at a time: (E, days, D), never (E, T, D)
            env_sums[:, hour] = embeddings_of(cell_env, location[:, hod == hour]).sum(1)
            env_counts[:, hour] = known[:, hod == hour].sum(1)
        cells_mean = cell_env[known_cells].mean(0) if known_cells.any() else np.zeros(d, np.float32)
        total = env_counts.sum(1, keepdims=True)
        self.env_fallback = np.where(total > 0, env_sums.sum(1) / np.maximum(total, 1), cells_mean).astype(np.float32)
        self.env_sums, self.env_counts = env_sums, env_counts
        self.location, self.history_env = series.location, cell_env

    @property
    def has_env(self) -> bool:
        return self.env_sums is not None

    def at(self, entity: np.ndarray, hours: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """Profile values (..., K) for entities at hours (any hour index, also beyond the data);
        ``own`` (..., K) are the true values at those hours, removed where the hour is in the profile."""
        hod = (self.hour_of_day[0] + hours) % 24
        sums = self.sums[entity, hod]
        counts = np.broadcast_to(self.counts[hod][..., None], sums.shape).copy()
        if own is not None:
            inside = (hours < self.before)[..., None] & (counts > 1)
            sums = np.where(inside, sums - own, sums)
            counts = np.where(inside, counts - 1, counts)
        return (sums / np.maximum(counts, 1)).astype(np.float32)

    def env_at(self, entity: np.ndarray, hours: np.ndarray, leave_out: bool = False) -> np.ndarray:
        """The entities' usual embedding at these hours' hour of day (..., D); the entity's mean over all
        its hours where it has none at that hour of day. ``leave_out``: an hour inside the profile does
        not count its own cell (as ``at`` leaves out its own traffic), so that training windows see the
        profile as a forecast does."""
        if (
            self.env_sums is None
            or self.env_counts is None
            or self.env_fallback is None
            or self.location is None
            or self.history_env is None
        ):  # all five are set together (_build_env)
            raise ValueError("this profile was built without the environment (env=True)")
        hod = (self.hour_of_day[0] + hours) % 24
        sums, counts = self.env_sums[entity, hod], self.env_counts[entity, hod]
        if leave_out:
            inside = hours < self.before
            cell = np.where(inside, self.location[entity, np.minimum(hours, self.before - 1)], -1)
            own = embeddings_of(self.history_env, cell)  # zeros outside the profile's hours or cells
            sums = sums - own
            counts = counts - (np.abs(own).sum(-1) > 0)
        mean = sums / np.maximum(counts, 1)[..., None]
        fallback = self.env_fallback[np.broadcast_arrays(entity, hod)[0]]
        return np.where((counts > 0)[..., None], mean, fallback).astype(np.float32)


@dataclass
class WindowBatch:
    """Arrays of a batch of windows, ready for the model (all float32 / int64 numpy)."""

    history: np.ndarray  # (N, H, K) normalised
    target: np.ndarray  # (N, F, K) normalised
    hour_of_day: np.ndarray  # (N, H + F)
    day_of_week: np.ndarray  # (N, H + F)
    env: np.ndarray  # (N, H + F, D), or (N, H + F, 2D) with the environment profile (``gather``)
    profile: np.ndarray | None = None  # (N, H + F, K) the entity's hourly profile at each hour


def gather(
    series: SeriesData, values: np.ndarray, windows: Windows, spec: SplitSpec, profile: HourlyProfile | None = None
) -> WindowBatch:
    """Slice the windows out of ``values`` ((E, T, K) normalised traffic). With a profile built with the
    environment, ``env`` is [the cell's embedding, the entity's usual one at that hour of day] (N, L, 2D)."""
    offsets = np.arange(-spec.history, spec.horizon)
    hours = windows.hour[:, None] + offsets[None, :]  # (N, H + F)
    entity = windows.entity[:, None]
    block = values[entity, hours]  # (N, H + F, K)
    env = series.env_at(entity, hours) if series.env.shape[1] else np.zeros((*hours.shape, 0), np.float32)
    if profile is not None and profile.has_env:
        env = np.concatenate([env, profile.env_at(entity, hours, leave_out=True)], axis=-1)
    return WindowBatch(
        history=block[:, : spec.history],
        target=block[:, spec.history :],
        hour_of_day=series.hour_of_day[hours],
        day_of_week=series.day_of_week[hours],
        env=env,
        profile=None if profile is None else profile.at(entity, hours, own=block),
    )
