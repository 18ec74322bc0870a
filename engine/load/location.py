"""Where entities will be, as a distribution: the ``sampled`` location scenario.

Every sample path of a forecast draws the entity's cell at each forecast hour from the entity's own
history before the start (never from the hours it forecasts), and the traffic model is conditioned on
the drawn cell (engine/forecast.py). Three ways of drawing were built and measured on the default
city's test day (``benchmarks/bench_location.py``, docs/model.md#where-users-will-be):

- :class:`HourOfWeekDraw`: the empirical distribution of the entity's cells at the same hour of the
  week (falling back to the hour of the day, then to every hour): ``habitual`` is its mode. With two
  weeks of data an hour of the week has been seen once or twice, so it is nearly as sure as
  ``habitual`` and as often wrong (Brier 0.306 against habitual's 0.306).
- :class:`DayTypeDraw` (the one ``sampled`` uses): the cells at the same hour of the day on days of
  the same type (weekday or weekend), falling back to any day, then to every hour. Five to ten
  observations per hour: the draws match the recorded cell as often as the habitual cell does
  (84.9 % against 84.7 % of path-hours) and their spread is honest (Brier 0.205; some path holds the
  recorded cell in 92.2 % of hours).
- :class:`TransitionDraw`: a first-order chain, P(cell at t | cell at t - 1, hour of day of t), counted
  over the history and started from the last recorded cell; where the history never left the
  previous cell at that hour of day, the hour-of-week draw. It keeps runs but strays once it makes a
  rare move: 61.5 % of path-hours match, Brier 0.536.

The draws use one generator per entity, seeded by (seed, entity row): an entity's locations are the
same whichever other entities share the forecast, so a cell's and an area's load runs see the same
places for the same user (engine/load/core.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.data.windows import SeriesData

LOCATION_DRAWS = ("hour-of-week", "day-type", "transition")


def _choose(rng: np.random.Generator, cells: np.ndarray) -> int:
    """One of the recorded ``cells`` (with repeats: a cell seen twice as often is drawn twice as often)."""
    return int(cells[rng.integers(len(cells))])


@dataclass
class HourOfWeekDraw:
    """The entity's cells at the same hour of the week (else hour of day, else any hour) before ``before``."""

    series: SeriesData
    before: int

    def candidates(self, entity: int, hour: int) -> np.ndarray:
        past = self.series.location[entity, : self.before]
        hours = np.arange(self.before)
        for same in ((hours % 168) == (hour % 168), (hours % 24) == (hour % 24), np.ones(self.before, bool)):
            cells = past[same & (past >= 0)]
            if len(cells):
                return cells
        return np.empty(0, dtype=np.int64)

    def slot(self, hour: int) -> int:
        """Hours of one slot have the same candidates."""
        return hour % 168

    def draw(self, entity: int, start: int, steps: int, samples: int, rng: np.random.Generator) -> np.ndarray:
        out = np.full((samples, steps), -1, dtype=np.int64)
        seen: dict[int, np.ndarray] = {}
        for n in range(steps):
            slot = self.slot(start + n)
            if slot not in seen:
                seen[slot] = self.candidates(entity, start + n)
            cells = seen[slot]
            if len(cells):
                out[:, n] = cells[rng.integers(len(cells), size=samples)]
        return out

    def support(self, entity: int, start: int, steps: int) -> set[int]:
        """Every cell a path can draw (for finding who can reach a scope without drawing)."""
        return {int(c) for n in range(steps) for c in np.unique(self.candidates(entity, start + n))}


@dataclass
class DayTypeDraw(HourOfWeekDraw):
    """The entity's cells at the same hour of the day on days of the same type (weekday or weekend),
    falling back to the same hour of any day, then to every hour."""

    def slot(self, hour: int) -> int:
        return hour % 24 + 24 * int(self._weekend(hour))

    def _weekend(self, hour: int) -> bool:
        origin = self.series.time_origin
        return (origin.weekday() + (origin.hour + hour) // 24) % 7 >= 5

    def candidates(self, entity: int, hour: int) -> np.ndarray:
        past = self.series.location[entity, : self.before]
        hours = np.arange(self.before)
        origin = self.series.time_origin
        day = (origin.weekday() + (origin.hour + np.arange(self.before + hour + 1)) // 24) % 7
        weekend = day >= 5
        same_hour = (hours % 24) == (hour % 24)
        for same in (same_hour & (weekend[: self.before] == weekend[hour]), same_hour, np.ones(self.before, bool)):
            cells = past[same & (past >= 0)]
            if len(cells):
                return cells
        return np.empty(0, dtype=np.int64)


@dataclass
class TransitionDraw:
    """A first-order chain over cells by hour of day, from the entity's history before ``before``."""

    series: SeriesData
    before: int

    def __post_init__(self) -> None:
        self.by_week = HourOfWeekDraw(self.series, self.before)

    def _moves(self, entity: int) -> dict[tuple[int, int], np.ndarray]:
        """(previous cell, hour of day) -> the cells recorded one hour later."""
        past = self.series.location[entity, : self.before]
        moves: dict[tuple[int, int], list[int]] = {}
        for t in range(1, len(past)):
            if past[t - 1] >= 0 and past[t] >= 0:
                moves.setdefault((int(past[t - 1]), t % 24), []).append(int(past[t]))
        return {key: np.array(cells) for key, cells in moves.items()}

    def draw(self, entity: int, start: int, steps: int, samples: int, rng: np.random.Generator) -> np.ndarray:
        moves = self._moves(entity)
        known = self.series.location[entity, : min(start, self.before)]
        known = known[known >= 0]
        out = np.full((samples, steps), -1, dtype=np.int64)
        for s in range(samples):
            previous = int(known[-1]) if len(known) else -1
            for n in range(steps):
                hour = start + n
                cells = moves.get((previous, hour % 24))
                if cells is None:
                    cells = self.by_week.candidates(entity, hour)
                previous = _choose(rng, cells) if len(cells) else -1
                out[s, n] = previous
        return out


def entity_rng(seed: int, entity: int) -> np.random.Generator:
    """The location generator of one entity in a forecast with this seed."""
    return np.random.default_rng([seed, entity, 0x10CA7E])


def draw_locations(
    series: SeriesData,
    entities: np.ndarray,
    *,
    start: int,
    steps: int,
    samples: int,
    seed: int,
    method: str = "hour-of-week",
) -> np.ndarray:
    """Cells of ``steps`` forecast hours from ``start`` for every path: (E, S, N) cell rows (-1: unknown)."""
    kinds: dict[str, type[HourOfWeekDraw] | type[TransitionDraw]] = {
        "hour-of-week": HourOfWeekDraw,
        "day-type": DayTypeDraw,
        "transition": TransitionDraw,
    }
    drawer = kinds[method](series, start)
    seeds = series.source_row(np.asarray(entities, dtype=np.int64))  # a row view draws as the whole data set does
    draws = [
        drawer.draw(int(e), start, steps, samples, entity_rng(seed, int(r)))
        for e, r in zip(entities, seeds, strict=True)
    ]
    return np.stack(draws).reshape(len(entities), samples, steps)


def match_rate(series: SeriesData, drawn: np.ndarray, entities: np.ndarray, start: int) -> dict:
    """How often drawn cells equal the recorded ones over the hours the data recorded: the share of
    (entity, hour, path), and of (entity, hour) for the paths' most frequent cell."""
    steps = drawn.shape[2]
    recorded = series.location[entities, start : start + steps]  # (E, N)
    known = recorded >= 0
    hits = drawn == recorded[:, None, :]
    per_path = float(hits[np.broadcast_to(known[:, None, :], hits.shape)].mean()) if known.any() else float("nan")
    covered = hits.any(axis=1)[known].mean() if known.any() else float("nan")
    # Brier score of the paths' distribution of cells (proper: a distribution sure of the wrong cell scores 2)
    share_true = hits.mean(axis=1)  # (E, N) the probability the draws give the recorded cell
    sum_sq = np.zeros(recorded.shape)
    for e in range(drawn.shape[0]):
        for n in range(steps):
            _, counts = np.unique(drawn[e, :, n], return_counts=True)
            sum_sq[e, n] = ((counts / drawn.shape[1]) ** 2).sum()
    brier = (sum_sq - 2 * share_true + 1)[known]
    return {
        "path_match": per_path,
        "any_path_match": float(covered),
        "brier": float(brier.mean()) if known.any() else float("nan"),
        "hours": int(known.sum()),
    }
