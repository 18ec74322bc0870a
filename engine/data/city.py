"""The embedded default data set: a deterministic synthetic city.

What it models, in order (every step draws from one ``numpy.random.Generator`` seeded by
``CityConfig.seed``, so a seed always gives the same city and another seed another city):

1. Cells: base stations over a disc of ``radius_km`` around ``center``, denser downtown.
2. Land use: Voronoi districts whose type depends on the distance to the centre (CBD in the core,
   industry at the edge, housing everywhere, parks, campuses, shopping streets, mixed blocks), plus
   transport hubs at a few stations. Neighbouring cells therefore share land use.
3. POIs: counts in the paper's 17 categories (Table II): a heavy-tailed total per cell and a
   Dirichlet-multinomial composition that follows the land use, calibrated against the real
   Tsinghua ``base_poi.txt`` (constants below).
4. Users: a persona (office worker, student, factory worker, home-based, night owl), a home, a work or
   study place, leisure places; weekday routines (commute through the transport hub nearest the way,
   work, sometimes an evening out) and weekend routines (home, outings, trips via hubs). The cell of
   every hour follows.
5. Traffic: per user-hour a Poisson number of app sessions whose rate follows the persona's daily
   rhythm; each session picks a service from the user's own preferences x the service's rhythm x a
   persistent per-user mood (AR(1), so the recent past is informative) x the environment of the cell
   the user is in; sessions co-use related services; bytes per session are log-normal per service;
   rare bursts (downloads, updates). Many hours are zero; totals are heavy-tailed.

The environment effect is ``env_effect`` x (a POI-composition term + a land-use x time-of-day term).
``env_effect=0`` removes every path by which the place influences traffic (choice of services and
volume), while keeping users' routines identical for the same seed: the forecaster's gain from the
environment can then be tested against a city where there is none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict

import numpy as np

from db.queries import DatasetContent
from engine.errors import InputError
from engine.requests import CityRequest

# --- Vocabularies ---------------------------------------------------------------------------------

SERVICES = [  # paper, Table I
    "Utilities",
    "Games",
    "Entertainment",
    "News",
    "Social Networking",
    "Travel",
    "Lifestyle",
    "Navigation",
    "Music",
    "Photo & Video",
]
POI_CATEGORIES = [  # paper, Table II; names as in the Tsinghua base_poi.txt header
    "Medical care",
    "Hotel",
    "Business affairs",
    "Life service",
    "Transportation hub",
    "Culture",
    "Sports",
    "Residence",
    "Entertainment and leisure",
    "Scenic spot",
    "Government",
    "Factory",
    "Shopping",
    "Restaurant",
    "Education",
    "Landmark",
    "Other",
]
LAND_USES = ["cbd", "residential", "industrial", "university", "park", "transport", "commercial", "mixed"]
LAND_USE_LABELS = {
    "cbd": "Offices / CBD",
    "residential": "Residential",
    "industrial": "Industrial",
    "university": "University",
    "park": "Park / scenic",
    "transport": "Transport hub",
    "commercial": "Shopping & restaurants",
    "mixed": "Mixed use",
}
TIME_ORIGIN = datetime(2016, 4, 18)  # a Monday, the week of the Tsinghua trace (20-26 April 2016)
TIMEZONE = "Asia/Shanghai"

S = {name: i for i, name in enumerate(SERVICES)}
P = {name: i for i, name in enumerate(POI_CATEGORIES)}
LU = {name: i for i, name in enumerate(LAND_USES)}

# --- Calibration constants, derived from ../shared/data/tsinghua/base_poi.txt ---------------------
# (9,851 Shanghai base stations.) Share of all POIs per category, in POI_CATEGORIES order:
REAL_POI_SHARE = np.array(
    [
        0.0159,
        0.0314,
        0.2704,
        0.0317,
        0.0022,
        0.0105,
        0.0124,
        0.2258,
        0.0139,
        0.0147,
        0.0441,
        0.0328,
        0.1047,
        0.0637,
        0.0241,
        0.0500,
        0.0514,
    ]
)
REAL_EMPTY_SHARE = 0.045  # 445 of 9,851 stations have no POI at all
REAL_LOG_TOTAL_MEAN = 3.27  # mean of ln(total POIs) over non-empty stations (median total 29.5)
REAL_LOG_TOTAL_SD = 1.25  # its standard deviation (heavy tail: 99th percentile 323, max 8,189)

# Land-use POI profiles: multipliers on REAL_POI_SHARE (unlisted categories x1). Chosen so that the
# city-wide mix reproduces the real shares (tests/engine/data/test_city.py checks the calibration).
_POI_PROFILE = {
    "cbd": {
        "Business affairs": 2.6,
        "Hotel": 2.0,
        "Restaurant": 1.1,
        "Landmark": 1.4,
        "Government": 1.3,
        "Entertainment and leisure": 1.2,
        "Residence": 0.25,
        "Factory": 0.15,
        "Scenic spot": 0.5,
        "Education": 0.5,
    },
    "residential": {
        "Residence": 2.7,
        "Life service": 1.7,
        "Medical care": 1.5,
        "Education": 1.4,
        "Business affairs": 0.45,
        "Factory": 0.3,
        "Hotel": 0.5,
        "Landmark": 0.6,
    },
    "industrial": {
        "Factory": 9.0,
        "Landmark": 2.2,
        "Other": 1.6,
        "Business affairs": 0.9,
        "Residence": 0.3,
        "Restaurant": 0.5,
        "Shopping": 0.4,
        "Hotel": 0.3,
        "Scenic spot": 0.3,
    },
    "university": {
        "Education": 8.0,
        "Culture": 3.0,
        "Sports": 3.0,
        "Restaurant": 1.2,
        "Residence": 0.8,
        "Business affairs": 0.4,
        "Factory": 0.2,
    },
    "park": {
        "Scenic spot": 12.0,
        "Sports": 2.5,
        "Culture": 2.0,
        "Entertainment and leisure": 1.5,
        "Residence": 0.3,
        "Business affairs": 0.3,
        "Factory": 0.1,
    },
    "transport": {
        "Transportation hub": 15.0,
        "Hotel": 2.0,
        "Restaurant": 1.5,
        "Shopping": 1.5,
        "Life service": 1.2,
        "Residence": 0.4,
    },
    "commercial": {
        "Shopping": 3.0,
        "Restaurant": 1.9,
        "Entertainment and leisure": 2.5,
        "Hotel": 1.3,
        "Life service": 1.3,
        "Business affairs": 0.7,
        "Residence": 0.55,
    },
    "mixed": {},
}
# ln(total POIs) offset by land use (dense downtown, sparse parks and industrial estates).
_POI_LOG_TOTAL_OFFSET = {
    "cbd": 1.0,
    "commercial": 0.7,
    "transport": 0.5,
    "mixed": 0.2,
    "residential": 0.0,
    "university": -0.1,
    "industrial": -0.6,
    "park": -0.9,
}
_POI_DIRICHLET_CONCENTRATION = 6.0  # lower = cells of one land use differ more from each other

# --- Behaviour constants (magnitudes follow the real trace's figures in ../shared/data/README.md:
# 67.7 GB over 871 users x 168 h, i.e. about 0.46 MB per user-hour on average, very uneven users) ---

# Share of sessions per service for an average user, and the log-normal bytes of one session.
_SERVICE_POPULARITY = np.array([0.17, 0.06, 0.07, 0.07, 0.33, 0.03, 0.07, 0.05, 0.07, 0.08])
_SESSION_MEDIAN_BYTES = np.array([22e3, 45e3, 90e3, 20e3, 30e3, 30e3, 22e3, 22e3, 38e3, 45e3])
_SESSION_LOG_SD = 1.2
_PREFERENCE_CONCENTRATION = 6.0  # Dirichlet concentration of personal preferences around popularity

# Daily rhythm of each service: (hour of day, width in hours, weight) bumps over a base level.
_RHYTHM: dict[str, list[tuple[float, float, float]]] = {
    "Utilities": [(9, 3, 0.6), (14, 4, 0.6), (20, 3, 0.5)],
    "Games": [(13, 2, 0.5), (21.5, 2.5, 1.4)],
    "Entertainment": [(12.5, 1.5, 0.4), (21.5, 2, 1.6)],
    "News": [(7.5, 1.5, 1.2), (12.5, 1.2, 0.7), (22, 1.5, 0.5)],
    "Social Networking": [(9, 2, 0.6), (12.5, 1.5, 0.9), (18, 2, 0.6), (21.5, 2, 1.0)],
    "Travel": [(9, 2, 0.7), (16, 3, 0.7)],
    "Lifestyle": [(11.5, 1.0, 1.4), (18, 1.2, 1.2)],
    "Navigation": [(8, 1.0, 1.3), (18, 1.2, 1.3)],
    "Music": [(8, 1.2, 1.0), (18, 1.5, 1.0), (22, 2, 0.6)],
    "Photo & Video": [(13, 3, 0.6), (20.5, 2, 0.9)],
}
_WEEKEND_SERVICE_BOOST = np.array([0.9, 1.3, 1.3, 0.8, 1.1, 1.6, 1.3, 1.1, 1.0, 1.5])

# Co-usage: probability that a session of row service also uses the column service.
_CO_USAGE = np.zeros((10, 10))
for _a, _b, _p in [
    ("Social Networking", "Photo & Video", 0.25),
    ("Photo & Video", "Social Networking", 0.45),
    ("Navigation", "Music", 0.35),
    ("Travel", "Navigation", 0.40),
    ("Navigation", "Travel", 0.15),
    ("Lifestyle", "Navigation", 0.20),
    ("Entertainment", "Social Networking", 0.20),
    ("News", "Social Networking", 0.25),
    ("Games", "Social Networking", 0.15),
    ("Social Networking", "News", 0.08),
    ("Music", "Social Networking", 0.10),
    ("Utilities", "Social Networking", 0.10),
    ("Lifestyle", "Social Networking", 0.15),
]:
    _CO_USAGE[S[_a], S[_b]] = _p

# Environment effect, part 1: POI composition -> log multiplier per service (what the text sees).
_POI_EFFECT = np.zeros((10, 17))
for _svc, _poi, _w in [
    ("Navigation", "Transportation hub", 6.0),
    ("Travel", "Transportation hub", 6.0),
    ("Travel", "Hotel", 4.0),
    ("Travel", "Scenic spot", 3.0),
    ("Photo & Video", "Scenic spot", 4.0),
    ("Photo & Video", "Landmark", 2.0),
    ("Social Networking", "Business affairs", 0.9),
    ("Utilities", "Business affairs", 1.2),
    ("News", "Business affairs", 0.8),
    ("Lifestyle", "Restaurant", 3.0),
    ("Lifestyle", "Shopping", 1.5),
    ("Lifestyle", "Life service", 1.5),
    ("Entertainment", "Residence", 1.2),
    ("Games", "Residence", 0.8),
    ("Games", "Education", 2.5),
    ("Entertainment", "Entertainment and leisure", 2.5),
    ("Music", "Sports", 3.0),
    ("Music", "Factory", 1.5),
    ("Games", "Business affairs", -0.8),
    ("Entertainment", "Business affairs", -0.6),
]:
    _POI_EFFECT[S[_svc], P[_poi]] = _w

# Environment effect, part 2: land use x period of day -> log multiplier per service (what the
# image sees). Periods: 0 night 0-6, 1 morning 7-10, 2 day 11-16, 3 evening 17-23.
_LAND_USE_EFFECT = np.zeros((len(LAND_USES), 4, 10))
for _lu, _periods, _svc, _w in [
    ("residential", (3,), "Entertainment", 0.9),
    ("residential", (3,), "Games", 0.5),
    ("residential", (3, 0), "Music", 0.3),
    ("residential", (1, 2), "Navigation", -0.5),
    ("cbd", (1, 2), "Social Networking", 0.6),
    ("cbd", (1, 2), "Utilities", 0.7),
    ("cbd", (1, 2), "News", 0.4),
    ("cbd", (1, 2), "Games", -0.8),
    ("cbd", (1, 2), "Entertainment", -0.9),
    ("transport", (0, 1, 2, 3), "Navigation", 1.3),
    ("transport", (0, 1, 2, 3), "Travel", 1.1),
    ("transport", (1, 3), "Music", 0.7),
    ("transport", (1, 2, 3), "News", 0.3),
    ("park", (1, 2, 3), "Photo & Video", 1.2),
    ("park", (1, 2, 3), "Music", 0.5),
    ("park", (1, 2, 3), "Travel", 0.4),
    ("commercial", (2, 3), "Lifestyle", 0.9),
    ("commercial", (2, 3), "Photo & Video", 0.5),
    ("commercial", (2, 3), "Social Networking", 0.3),
    ("university", (1, 2, 3), "Games", 0.8),
    ("university", (2, 3), "Entertainment", 0.5),
    ("university", (1, 2), "Utilities", 0.3),
    ("industrial", (1, 2), "Music", 0.6),
    ("industrial", (1, 2), "Social Networking", -0.4),
    ("industrial", (1, 2), "Photo & Video", -0.6),
]:
    for _t in _periods:
        _LAND_USE_EFFECT[LU[_lu], _t, S[_svc]] = _w
# Overall activity (session rate) by land use: people at work or in a factory use phones less.
_LAND_USE_ACTIVITY = {"industrial": -0.5, "cbd": -0.15, "park": 0.1, "transport": 0.25, "commercial": 0.15}


# Personas: share of users, where they work, start/end of the working day (mean hours), and a
# multiplier of the session rate.
class _Persona(TypedDict):
    share: float  # of the users
    work: tuple[str, ...]  # land uses of the workplace (none: stays home)
    start: float  # usual hours at work
    end: float
    rate: float  # relative session rate


_PERSONAS = {
    "office": _Persona(share=0.50, work=("cbd", "commercial", "mixed"), start=9.0, end=18.5, rate=1.0),
    "student": _Persona(share=0.15, work=("university",), start=8.5, end=17.0, rate=1.4),
    "factory": _Persona(share=0.10, work=("industrial",), start=7.5, end=17.0, rate=0.7),
    "home": _Persona(share=0.13, work=(), start=0.0, end=0.0, rate=0.8),
    "night_owl": _Persona(share=0.12, work=("commercial", "cbd", "mixed"), start=11.0, end=20.0, rate=1.3),
}
_SESSIONS_PER_ACTIVE_HOUR = 3.0  # Poisson session rate at the daily peak of an average user
_BURST_PROBABILITY = 0.004  # per user-hour: a large download or update
_MOOD_PERSISTENCE = 0.85  # AR(1) coefficient per hour of the per-user, per-service mood
_MOOD_SD = 0.6  # stationary standard deviation of the mood, in log space


@dataclass
class CityConfig:
    """Everything that determines a synthetic city; defaults are the embedded default city."""

    users: int = 500
    cells: int = 400
    seed: int = 0
    env_effect: float = 1.0
    days: int = 14  # two weeks: the model trains on a weekend before it is tested on one
    center: tuple[float, float] = (31.2304, 121.4737)  # central Shanghai (People's Square)
    radius_km: float = 5.0
    districts_per_cell: float = 1 / 8  # one land-use district per ~8 cells
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        checks = [
            ("users", self.users >= 1, "at least 1"),
            ("cells", self.cells >= 8, "at least 8 (one per land-use type)"),
            ("days", self.days >= 1, "at least 1"),
            ("env_effect", self.env_effect >= 0, "a number >= 0"),
            ("radius_km", 0.2 <= self.radius_km <= 100, "between 0.2 and 100 km"),
            ("center", -90 <= self.center[0] <= 90 and -180 <= self.center[1] <= 180, "LAT,LON in range"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"expected {expected}, got {getattr(self, name)!r}", field=name)


# --- 1-3: cells, land use, POIs -------------------------------------------------------------------


def _place_cells(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) positions in units of the city radius, denser downtown (base stations follow demand)."""
    r = rng.random(n) ** 0.75  # sqrt would be uniform over the disc; a larger exponent favours the edge
    theta = rng.random(n) * 2 * np.pi
    xy = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return xy + rng.normal(0, 0.01, size=xy.shape)


def _assign_land_use(rng: np.random.Generator, xy: np.ndarray, config: CityConfig) -> np.ndarray:
    """Land-use index per cell: Voronoi districts typed by distance to the centre, plus hub cells."""
    n = len(xy)
    n_districts = max(len(LAND_USES), round(n * config.districts_per_cell))
    centres = _place_cells(rng, n_districts)
    d = np.linalg.norm(centres, axis=1)
    weights = np.stack(
        [
            3.0 * np.exp(-((d / 0.3) ** 2)),  # cbd
            np.full_like(d, 2.2),  # residential
            5.0 * np.clip(d - 0.5, 0, None),  # industrial
            np.full_like(d, 0.35),  # university
            np.full_like(d, 0.55),  # park
            np.zeros_like(d),  # transport: placed as single cells below
            1.3 * np.exp(-((d / 0.5) ** 2)) + 0.25,  # commercial
            np.full_like(d, 0.9),  # mixed
        ],
        axis=1,
    )
    weights /= weights.sum(axis=1, keepdims=True)
    district_type = np.array([rng.choice(len(LAND_USES), p=w) for w in weights])
    # Every type exists at least once, so that every land use is represented (the most central
    # district is the CBD).
    district_type[np.argmin(d)] = LU["cbd"]
    for lu in ("residential", "industrial", "university", "park", "commercial", "mixed"):
        if not (district_type == LU[lu]).any():
            candidates = (
                np.flatnonzero(district_type == LU["residential"]) if lu != "residential" else np.array([], int)
            )
            pool = candidates if len(candidates) > 1 else np.flatnonzero(district_type != LU["cbd"])
            district_type[rng.choice(pool)] = LU[lu]
    nearest = np.argmin(((xy[:, None, :] - centres[None, :, :]) ** 2).sum(-1), axis=1)
    land_use = district_type[nearest]
    # Transport hubs: the central station and stations spread on a ring (about one per 60 cells).
    n_hubs = max(3, n // 60)
    angles = rng.random() * 2 * np.pi + np.arange(n_hubs - 1) * 2 * np.pi / (n_hubs - 1)
    ring = rng.uniform(0.35, 0.8, n_hubs - 1)
    spots = np.concatenate([[[0.05, -0.03]], np.stack([ring * np.cos(angles), ring * np.sin(angles)], 1)])
    for spot in spots:
        order = np.argsort(((xy - spot) ** 2).sum(1))
        hub = next(i for i in order if land_use[i] != LU["transport"])
        land_use[hub] = LU["transport"]
    return land_use


def _poi_profile_matrix() -> np.ndarray:
    """(land uses, 17) POI composition per land use (rows sum to 1)."""
    profile = np.tile(REAL_POI_SHARE, (len(LAND_USES), 1))
    for lu, multipliers in _POI_PROFILE.items():
        for category, factor in multipliers.items():
            profile[LU[lu], P[category]] *= factor
    return profile / profile.sum(axis=1, keepdims=True)


def _poi_counts(rng: np.random.Generator, xy: np.ndarray, land_use: np.ndarray) -> np.ndarray:
    """(cells, 17) POI counts: heavy-tailed totals, land-use-driven Dirichlet-multinomial mix."""
    n = len(xy)
    profile = _poi_profile_matrix()
    radius = np.linalg.norm(xy, axis=1)
    offset = np.array([_POI_LOG_TOTAL_OFFSET[LAND_USES[i]] for i in land_use])
    log_total = REAL_LOG_TOTAL_MEAN + 0.05 + offset + 0.5 * (0.5 - radius)
    # Land use and centrality explain part of the spread; the rest is per-cell noise.
    log_total += rng.normal(0, np.sqrt(max(REAL_LOG_TOTAL_SD**2 - np.var(log_total), 0.3)), n)
    totals = np.maximum(1, np.round(np.exp(log_total))).astype(np.int64)
    counts = np.zeros((n, len(POI_CATEGORIES)), dtype=np.int64)
    for i in range(n):
        mix = rng.dirichlet(_POI_DIRICHLET_CONCENTRATION * profile[land_use[i]] + 0.02)
        counts[i] = rng.multinomial(totals[i], mix)
    # Empty cells (no POI at all): more likely at the edge and in parks; never transport hubs.
    p_empty = REAL_EMPTY_SHARE * (0.3 + 1.0 * radius) * np.where(land_use == LU["park"], 2.0, 1.0)
    p_empty[land_use == LU["transport"]] = 0
    counts[rng.random(n) < p_empty] = 0
    # A hub cell always holds its station(s): at least one transport-hub POI.
    hubs = land_use == LU["transport"]
    counts[hubs, P["Transportation hub"]] += rng.integers(1, 4, size=int(hubs.sum()))
    return counts


def _cell_names(land_use: np.ndarray) -> list[str]:
    seen: dict[int, int] = {}
    names = []
    for lu in land_use:
        seen[lu] = seen.get(lu, 0) + 1
        names.append(f"{LAND_USE_LABELS[LAND_USES[lu]]} {seen[lu]:03d}")
    return names


def _to_lat_lon(xy: np.ndarray, config: CityConfig) -> tuple[np.ndarray, np.ndarray]:
    lat0, lon0 = config.center
    km_per_deg_lat = 110.574
    km_per_deg_lon = 111.320 * np.cos(np.radians(lat0))
    lat = lat0 + xy[:, 1] * config.radius_km / km_per_deg_lat
    lon = lon0 + xy[:, 0] * config.radius_km / km_per_deg_lon
    return np.round(lat, 6), np.round(lon, 6)


# --- 4: users and their hourly locations ----------------------------------------------------------


def _weighted_choice(rng: np.random.Generator, pool: np.ndarray, weights: np.ndarray) -> int:
    weights = weights.astype(float) + 1e-9
    return int(rng.choice(pool, p=weights / weights.sum()))


def _nearest_hub(xy: np.ndarray, hubs: np.ndarray, a: int, b: int) -> int:
    """The hub closest to the straight way from cell a to cell b."""
    p, q = xy[a], xy[b]
    seg = q - p
    t = np.clip(((xy[hubs] - p) @ seg) / max(seg @ seg, 1e-12), 0, 1)
    dist = np.linalg.norm(xy[hubs] - (p + t[:, None] * seg), axis=1)
    return int(hubs[np.argmin(dist)])


def _make_users(
    rng: np.random.Generator, xy: np.ndarray, land_use: np.ndarray, poi: np.ndarray, config: CityConfig
) -> list[dict]:
    """Persona, home, work and leisure places of every user."""
    names = list(_PERSONAS)
    shares = np.array([_PERSONAS[p]["share"] for p in names])
    hubs = np.flatnonzero(land_use == LU["transport"])

    def pool_of(*kinds: str) -> np.ndarray:
        """Cells of these land uses; in a tiny city that lacks them, any cell that is not a hub."""
        pool = np.flatnonzero(np.isin(land_use, [LU[k] for k in kinds]))
        return pool if len(pool) else np.flatnonzero(land_use != LU["transport"])

    home_pool = pool_of("residential", "mixed")
    leisure_pool = pool_of("commercial", "park", "cbd", "mixed")
    users = []
    for _ in range(config.users):
        persona = names[rng.choice(len(names), p=shares)]
        spec = _PERSONAS[persona]
        home = _weighted_choice(rng, home_pool, poi[home_pool, P["Residence"]] + 5)
        work = None
        if spec["work"]:
            pool = pool_of(*spec["work"])
            work_weight = poi[pool][:, [P["Business affairs"], P["Factory"], P["Education"], P["Shopping"]]].sum(1)
            work = _weighted_choice(rng, pool, work_weight + 5)
        # Leisure places: attractive ones, preferably not too far from home.
        distance = np.linalg.norm(xy[leisure_pool] - xy[home], axis=1)
        attraction = (
            poi[leisure_pool][
                :, [P["Shopping"], P["Restaurant"], P["Scenic spot"], P["Entertainment and leisure"]]
            ].sum(1)
            + 3
        )
        n_leisure = min(int(rng.integers(2, 5)), len(leisure_pool))
        leisure = rng.choice(
            leisure_pool, size=n_leisure, replace=False, p=(w := attraction * np.exp(-distance / 0.5)) / w.sum()
        )
        users.append(
            {
                "persona": persona,
                "home": home,
                "work": work,
                "leisure": [int(c) for c in leisure],
                "commute_hub": _nearest_hub(xy, hubs, home, work) if work is not None else None,
                "start": spec["start"] + rng.normal(0, 0.6) if work is not None else 0.0,
                "end": spec["end"] + rng.normal(0, 0.6) if work is not None else 0.0,
                "outgoing": float(rng.beta(2, 5)),  # how often this user goes out
            }
        )
    return users


def _user_locations(rng: np.random.Generator, user: dict, days: int, hubs: np.ndarray) -> np.ndarray:
    """The cell of every hour of one user's week(s)."""
    hours = np.full(days * 24, user["home"], dtype=np.int64)
    for day in range(days):
        base = day * 24
        weekend = (TIME_ORIGIN.weekday() + day) % 7 >= 5
        if not weekend and user["work"] is not None:
            start = int(np.clip(round(user["start"] + rng.normal(0, 0.4)), 5, 14))
            end = int(np.clip(round(user["end"] + rng.normal(0, 0.5)), start + 4, 23))
            hub = user["commute_hub"]
            hours[base + start - 1] = hub  # commute in through the hub
            hours[base + start : base + end] = user["work"]
            if rng.random() < 0.5:  # lunch out nearby
                lunch = base + int(np.clip(12, start, end - 1))
                hours[lunch] = rng.choice(user["leisure"]) if rng.random() < 0.3 else user["work"]
            hours[min(base + end, base + 23)] = hub  # commute back
            if rng.random() < user["outgoing"] and end + 1 < 23:  # an evening out
                out = int(rng.integers(end + 1, 23))
                hours[base + end + 1 : base + out + 1] = rng.choice(user["leisure"])
        else:
            if rng.random() < 0.3 + user["outgoing"]:
                leave = int(rng.integers(9, 16))
                length = int(rng.integers(2, 6))
                place = rng.choice(user["leisure"])
                if rng.random() < 0.25:  # a trip: via a station
                    hub = int(rng.choice(hubs))
                    hours[base + leave] = hub
                    leave += 1
                hours[base + leave : min(base + leave + length, base + 23)] = place
    return hours


# --- 5: traffic -----------------------------------------------------------------------------------


def _rhythm_matrix() -> np.ndarray:
    """(24, services) relative session propensity by hour of day, with a night trough."""
    hour = np.arange(24)[:, None]
    out = np.full((24, len(SERVICES)), 0.25)
    for name, bumps in _RHYTHM.items():
        for centre, width, weight in bumps:
            # Circular distance, so that a late-evening bump wraps past midnight.
            delta = np.minimum(np.abs(hour[:, 0] - centre), 24 - np.abs(hour[:, 0] - centre))
            out[:, S[name]] += weight * np.exp(-0.5 * (delta / width) ** 2)
    night = np.array([1.0 if 7 <= h <= 23 else 0.08 for h in range(24)])
    night[[0, 1, 6]] = [0.45, 0.2, 0.35]  # just past midnight people are still up
    return out * night[:, None]


def _period(hour_of_day: np.ndarray) -> np.ndarray:
    return np.select([hour_of_day < 7, hour_of_day < 11, hour_of_day < 17], [0, 1, 2], 3)


def environment_log_effect(poi: np.ndarray, land_use: np.ndarray, hour_of_day: np.ndarray) -> np.ndarray:
    """Log multiplier of each service's session propensity for (cell, hour) pairs: (..., services).

    ``poi`` (..., 17), ``land_use`` (...), ``hour_of_day`` (...) broadcast together. Multiply by the
    city's ``env_effect`` before use.
    """
    share = poi / np.maximum(poi.sum(-1, keepdims=True), 1)
    poi_term = share @ _POI_EFFECT.T
    poi_term -= REAL_POI_SHARE @ _POI_EFFECT.T  # an average place has no effect
    land_term = _LAND_USE_EFFECT[land_use, _period(hour_of_day)]
    return np.clip(poi_term + land_term, -2.0, 2.5)


def _traffic(
    rng: np.random.Generator,
    users: list[dict],
    locations: np.ndarray,
    land_use: np.ndarray,
    poi: np.ndarray,
    config: CityConfig,
) -> np.ndarray:
    """(users, hours, services) bytes."""
    n_users: int
    n_hours: int
    n_users, n_hours = locations.shape
    k = len(SERVICES)
    hour_of_day = np.arange(n_hours) % 24
    weekend = np.array([(TIME_ORIGIN.weekday() + h // 24) % 7 >= 5 for h in range(n_hours)])
    rhythm = _rhythm_matrix()[hour_of_day]  # (H, K)
    rhythm = rhythm * np.where(weekend[:, None], _WEEKEND_SERVICE_BOOST, 1.0)

    preference = rng.dirichlet(_PREFERENCE_CONCENTRATION * _SERVICE_POPULARITY * 10, size=n_users)  # (U, K)
    activity = rng.lognormal(0.0, 0.9, size=n_users)  # heavy-tailed: a few users dominate
    persona_rate = np.array([_PERSONAS[u["persona"]]["rate"] for u in users])
    night_owl = np.array([u["persona"] == "night_owl" for u in users])
    volume = rng.lognormal(0.0, 0.5, size=(n_users, k))  # personal bytes-per-session per service

    # Persistent mood per user and service: AR(1) in log space (stationary sd = _MOOD_SD).
    mood = np.empty((n_users, n_hours, k))
    state = rng.normal(0, _MOOD_SD, size=(n_users, k))
    innovation_sd = _MOOD_SD * np.sqrt(1 - _MOOD_PERSISTENCE**2)
    for h in range(n_hours):
        state = _MOOD_PERSISTENCE * state + rng.normal(0, innovation_sd, size=(n_users, k))
        mood[:, h] = state

    cell_lu = land_use[locations]  # (U, H)
    env = config.env_effect * environment_log_effect(poi[locations], cell_lu, hour_of_day[None, :])  # (U, H, K)
    place_activity = np.vectorize(lambda i: _LAND_USE_ACTIVITY.get(LAND_USES[i], 0.0))(cell_lu)
    propensity = preference[:, None, :] * rhythm[None] * np.exp(mood + env)  # (U, H, K)

    # Night owls shift their day by ~2 hours.
    if night_owl.any():
        shifted = np.roll(rhythm, 2, axis=0)
        propensity[night_owl] = (
            preference[night_owl, None, :] * shifted[None] * np.exp(mood[night_owl] + env[night_owl])
        )

    # Session rate: relative to an average user's propensity at the daily peak (no mood, no place).
    peak = (_rhythm_matrix() @ _SERVICE_POPULARITY).max()
    rate = (
        _SESSIONS_PER_ACTIVE_HOUR
        * activity[:, None]
        * persona_rate[:, None]
        * propensity.sum(-1)
        / peak
        * np.exp(config.env_effect * place_activity)
    )  # (U, H)
    n_sessions = rng.poisson(rate)
    choice_p = propensity / propensity.sum(-1, keepdims=True)

    # Sessions: each picks a primary service; some co-use a related one.
    flat = np.repeat(np.arange(n_users * n_hours), n_sessions.ravel())
    cdf = np.cumsum(choice_p.reshape(-1, k)[flat], axis=1)
    primary = (rng.random(len(flat))[:, None] > cdf).sum(1).clip(max=k - 1)
    co_roll = rng.random((len(flat), k)) < _CO_USAGE[primary]
    users_of = flat // n_hours
    bytes_out = np.zeros(n_users * n_hours * k)

    def add(session_rows: np.ndarray, services: np.ndarray, scale: float) -> None:
        u = users_of[session_rows]
        cell_env = env.reshape(-1, k)[flat[session_rows], services]
        median = _SESSION_MEDIAN_BYTES[services] * volume[u, services] * np.exp(0.3 * cell_env) * scale
        amount = median * rng.lognormal(0.0, _SESSION_LOG_SD, size=len(session_rows))
        np.add.at(bytes_out, flat[session_rows] * k + services, amount)

    add(np.arange(len(flat)), primary, 1.0)
    rows, services = np.nonzero(co_roll)
    add(rows, services, 0.6)

    # Bursts: a big download (Utilities updates, Entertainment / Games downloads) in rare hours.
    burst = np.flatnonzero(rng.random(n_users * n_hours) < _BURST_PROBABILITY)
    burst_service = rng.choice([S["Utilities"], S["Entertainment"], S["Games"], S["Photo & Video"]], size=len(burst))
    np.add.at(bytes_out, burst * k + burst_service, rng.lognormal(np.log(8e6), 0.8, size=len(burst)))

    return np.round(bytes_out.reshape(n_users, n_hours, k)).astype(np.int64)


TRAFFIC_CHUNK_USERS = 1000


def _traffic_rows(
    config: CityConfig, users: list[dict], locations: np.ndarray, land_use: np.ndarray, poi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every non-zero (user, hour, service) of the city: user, hour and service rows (int32) and bytes.

    Drawn ``TRAFFIC_CHUNK_USERS`` users at a time, each chunk from its own random stream, and kept only as
    these rows: the draws' float arrays (users x hours x services, several of them) never exist for the whole
    city (at 50,000 users each would be 1.3 GB). The first chunk's stream is the one the whole city used
    before chunking, so a city of up to 1,000 users (the default city has 500) is the same to the byte."""
    parts: list[tuple[np.ndarray, ...]] = []
    for index, start in enumerate(range(0, len(users), TRAFFIC_CHUNK_USERS)):
        stop = start + TRAFFIC_CHUNK_USERS
        rng = np.random.default_rng([config.seed, 2] if index == 0 else [config.seed, 2, index])
        traffic = _traffic(rng, users[start:stop], locations[start:stop], land_use, poi, config)
        u_idx, h_idx, s_idx = np.nonzero(traffic)
        parts.append(
            (
                (u_idx + start).astype(np.int32),
                h_idx.astype(np.int32),
                s_idx.astype(np.int32),
                traffic[u_idx, h_idx, s_idx],
            )
        )
        del traffic
    if not parts:
        empty = np.zeros(0, dtype=np.int32)
        return empty, empty, empty, np.zeros(0, dtype=np.int64)
    u, h, k, amounts = (np.concatenate(column) for column in zip(*parts, strict=True))
    return u, h, k, amounts


# --- Assembly -------------------------------------------------------------------------------------


def generate_city_for(request: CityRequest) -> DatasetContent:
    """`lsdm city build` and the ``city.build`` job: the city a request describes."""
    request = request.checked()
    config = CityConfig(
        users=request.users,
        cells=request.cells,
        seed=request.seed,
        env_effect=request.env_effect,
        days=request.days,
        center=(request.center_lat, request.center_lon),
        radius_km=request.radius_km,
    )
    return generate_city(config, name=request.name)


def generate_city(config: CityConfig | None = None, *, name: str | None = None) -> DatasetContent:
    """Generate the whole city; deterministic for ``config.seed``."""
    config = config or CityConfig()
    config.validate()
    rng = np.random.default_rng(config.seed)
    xy = _place_cells(rng, config.cells)
    land_use = _assign_land_use(rng, xy, config)
    poi = _poi_counts(rng, xy, land_use)
    users = _make_users(rng, xy, land_use, poi, config)
    hubs = np.flatnonzero(land_use == LU["transport"])
    # Routines draw from their own stream, so that env_effect (which changes nothing here) and the
    # traffic draws cannot shift who goes where.
    routine_rng = np.random.default_rng([config.seed, 1])
    locations = np.stack([_user_locations(routine_rng, u, config.days, hubs) for u in users])
    u_idx, h_idx, s_idx, amounts = _traffic_rows(config, users, locations, land_use, poi)

    lat, lon = _to_lat_lon(xy, config)
    n_hours = config.days * 24
    cell_keys = [f"C{i:04d}" for i in range(config.cells)]
    return DatasetContent(
        name=name or f"synthetic-seed{config.seed}",
        kind="synthetic",
        entity_kind="user",
        services=list(SERVICES),
        poi_categories=list(POI_CATEGORIES),
        time_origin=TIME_ORIGIN,
        timezone=TIMEZONE,
        hours=n_hours,
        cell_keys=cell_keys,
        cell_poi=poi,
        cell_names=_cell_names(land_use),
        cell_lat=lat,
        cell_lon=lon,
        cell_land_use=[LAND_USES[i] for i in land_use],
        cell_attrs=[
            {"x_km": round(float(x) * config.radius_km, 3), "y_km": round(float(y) * config.radius_km, 3)}
            for x, y in xy
        ],
        entity_keys=[f"U{i:04d}" for i in range(config.users)],
        entity_attrs=[
            {
                "persona": u["persona"],
                "home": cell_keys[u["home"]],
                "work": cell_keys[u["work"]] if u["work"] is not None else None,
                "leisure": [cell_keys[c] for c in u["leisure"]],
                "commute_hub": cell_keys[u["commute_hub"]] if u["commute_hub"] is not None else None,
            }
            for u in users
        ],
        traffic_entity=u_idx,
        traffic_hour=h_idx,
        traffic_service=s_idx,
        traffic_bytes=amounts,
        location_entity=np.repeat(np.arange(config.users, dtype=np.int32), n_hours),
        location_hour=np.tile(np.arange(n_hours, dtype=np.int32), config.users),
        location_cell=locations.ravel(),
        params={
            "generator": "engine.data.city",
            "seed": config.seed,
            "users": config.users,
            "cells": config.cells,
            "days": config.days,
            "env_effect": config.env_effect,
            "center": list(config.center),
            "radius_km": config.radius_km,
        },
    )
