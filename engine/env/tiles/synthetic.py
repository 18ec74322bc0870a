"""Rendered "satellite" tiles for synthetic cities, and a city-wide basemap mosaic.

A tile is a 256 x 256 top-down rendering of about 640 m x 640 m (2.5 m per pixel) around a cell,
drawn from its land use and POI counts so that an image model can tell an office district from a
park or a factory zone (``tests/engine/env/test_tiles.py`` checks that a nearest-centroid classifier
on colour histograms separates the eight land uses):

- cbd: towers on podiums with long shadows, glass and pale roofs, plazas, wide streets;
- residential: rows of mid-rise slabs in walled compounds with trees between the rows;
- industrial: large pale / steel-blue sheds with corrugated roofs, concrete yards, trucks, tanks;
- university: campus buildings around a running track and lawns, tree-lined paths;
- park: lawn, tree clumps, winding paths, a pond, a pavilion;
- transport: a rail corridor with tracks and platforms under a big station roof, parking;
- commercial: dense small shops of many roof colours, malls, paved plazas, narrow streets;
- mixed: a block-by-block mix of the above.

The number of POIs sets the density (more, taller, bigger buildings; fewer gaps); the POI mix adds
features (sports fields, ponds, a factory shed). Some things are global, computed in the city's km
coordinates (``x_km``/``y_km``) so that neighbouring tiles agree: a river and a canal, and a grid of
arterial roads. Everything else is drawn from a random generator seeded by the cell key and land
use, so a cell always gets the same bytes. Cells without a land use (real data sets) get one
inferred from their POI mix (``infer_land_use``). Tiles are JPEG (quality 90): photographic texture
compresses ~5x better than PNG and encodes in a fraction of a millisecond.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
from collections.abc import Sequence
from typing import TypedDict, overload

import numpy as np
from PIL import Image, ImageDraw

from engine.data.city import LAND_USES, POI_CATEGORIES, REAL_POI_SHARE
from engine.env.tiles.core import JPEG_QUALITY, TILE_SIZE, CellInfo, TileImage
from engine.errors import InputError

METRES_PER_PIXEL = 2.5
TILE_KM = TILE_SIZE * METRES_PER_PIXEL / 1000.0
_HALF = TILE_SIZE / 2
_REACH = 184  # local drawing half-extent in pixels: covers the tile under any rotation

# Sun from the south-south-west: shadows fall north-north-east, length = height x ratio.
_SHADOW_DIR = (0.45, -0.89)
_SHADOW_RATIO = 0.55
_MAX_SHADOW_PX = 60

# --- Global features in city km coordinates (identical for every tile, so neighbours agree) ------
_RIVER_HALF_KM = 0.075
_CANAL_HALF_KM = 0.02
_ARTERIAL_SPACING_KM = 1.25
_ARTERIAL_OFFSET_KM = (0.35, -0.45)
_ARTERIAL_HALF_KM = 0.016


@overload
def river_x(y_km: float) -> float: ...
@overload
def river_x(y_km: np.ndarray) -> np.ndarray: ...
def river_x(y_km: float | np.ndarray) -> float | np.ndarray:
    """x (km) of the city river's centre line at y: a meander running roughly north-south."""
    return 1.6 + 0.8 * np.sin(y_km / 2.1 + 0.4) + 0.3 * np.sin(y_km / 0.7)


@overload
def canal_y(x_km: float) -> float: ...
@overload
def canal_y(x_km: np.ndarray) -> np.ndarray: ...
def canal_y(x_km: float | np.ndarray) -> float | np.ndarray:
    """y (km) of the canal's centre line at x: a gentle east-west curve south of the centre."""
    return -1.9 + 0.45 * np.sin(x_km / 1.3)


# --- Land-use styles ------------------------------------------------------------------------------
# ground: base colour; veg: share of ground under vegetation; street: (spacing m, width m).
class _Style(TypedDict):
    ground: tuple[int, int, int]  # RGB
    veg: float  # share of vegetation
    street: tuple[float, float] | None  # (spacing, width) of the street grid in metres; parks have none


_STYLE = {
    "cbd": _Style(ground=(150, 148, 143), veg=0.06, street=(150, 20)),
    "residential": _Style(ground=(124, 126, 108), veg=0.32, street=(200, 12)),
    "industrial": _Style(ground=(170, 162, 143), veg=0.08, street=(260, 16)),
    "university": _Style(ground=(128, 140, 104), veg=0.55, street=(210, 9)),
    "park": _Style(ground=(104, 142, 74), veg=0.8, street=None),
    "transport": _Style(ground=(140, 136, 128), veg=0.05, street=(170, 14)),
    "commercial": _Style(ground=(168, 160, 150), veg=0.05, street=(80, 8)),
    "mixed": _Style(ground=(138, 136, 124), veg=0.2, street=(130, 10)),
}
_VEG = np.array((72, 104, 56), dtype=np.float32)
_ASPHALT = (66, 67, 70)
_PAVING = (192, 186, 174)
_SIDEWALK = (170, 168, 162)
_WATER = (62, 92, 98)
_BANK = (112, 118, 96)
_TREE_COLOURS = ((46, 78, 40), (58, 92, 46), (38, 68, 38), (66, 98, 52))
# Cars: mostly white, black and silver, as in any car park seen from above.
_CAR_COLOURS = (
    (232, 232, 230),
    (226, 228, 230),
    (36, 36, 40),
    (44, 44, 50),
    (160, 162, 166),
    (140, 142, 146),
    (150, 40, 36),
    (40, 64, 112),
)

# POI categories that point at a land use (used to infer one for real cells without it).
_POI_HINTS = {
    "Business affairs": "cbd",
    "Hotel": "cbd",
    "Government": "cbd",
    "Residence": "residential",
    "Life service": "residential",
    "Medical care": "residential",
    "Factory": "industrial",
    "Education": "university",
    "Culture": "university",
    "Scenic spot": "park",
    "Sports": "park",
    "Transportation hub": "transport",
    "Shopping": "commercial",
    "Restaurant": "commercial",
    "Entertainment and leisure": "commercial",
}


def _poi_shares(cell: CellInfo) -> dict[str, float]:
    total = sum(cell.poi_counts)
    if total <= 0 or len(cell.poi_categories) != len(cell.poi_counts):
        return {}
    return {name: count / total for name, count in zip(cell.poi_categories, cell.poi_counts, strict=True)}


def _baseline_share() -> dict[str, float]:
    return dict(zip(POI_CATEGORIES, (float(v) for v in REAL_POI_SHARE), strict=True))


def _poi_lift(cell: CellInfo) -> dict[str, float]:
    """Share of each POI category relative to the city-wide share (1 = ordinary)."""
    base = _baseline_share()
    return {name: share / base[name] for name, share in _poi_shares(cell).items() if base.get(name)}


def infer_land_use(cell: CellInfo) -> str:
    """The cell's land use, or one guessed from the POI mix (the hint with the highest lift)."""
    if cell.land_use in LAND_USES:
        return cell.land_use
    scores: dict[str, float] = {}
    for name, lift in _poi_lift(cell).items():
        if name in _POI_HINTS:
            scores[_POI_HINTS[name]] = scores.get(_POI_HINTS[name], 0.0) + lift
    if not scores:
        return "mixed"
    best = max(sorted(scores), key=scores.__getitem__)
    return best if scores[best] > 2.0 else "mixed"


def poi_density(cell: CellInfo) -> float:
    """0.1 (a handful of POIs) .. 1 (a few hundred): how built-up the tile looks."""
    total = sum(cell.poi_counts)
    return float(np.clip((math.log1p(total) - 1.5) / 4.0, 0.1, 1.0))


# --- Noise textures, made once -------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid, "F").resize((size, size), Image.Resampling.BICUBIC))
    field = field - field.mean()
    return (field / (np.abs(field).max() + 1e-6)).astype(np.float32)


_NOISE_RNG = np.random.default_rng(20240417)
_LOW = _value_noise(_NOISE_RNG, 512, 7)  # (512, 512) in [-1, 1], blobs of ~70 px
_MID = _value_noise(_NOISE_RNG, 512, 40)  # (512, 512), ~13 px
_GRAIN = _NOISE_RNG.normal(0, 1, (512, 512, 3)).astype(np.float32)  # per-pixel sensor/roof texture
_VEG_FIELD_Q = np.quantile(_LOW + 0.45 * _MID, np.linspace(0, 1, 101))  # thresholds by share


def _seed(cell: CellInfo, land_use: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{cell.key}|{land_use}".encode(), digest_size=8).digest(), "little")


# --- Drawing helpers -----------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: int = 10) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)
    return r, g, b


class _Canvas:
    """A tile being drawn in a local frame (u, v) rotated by ``theta`` around the tile centre."""

    def __init__(self, ground: np.ndarray, theta: float, rng: np.random.Generator, x_km: float, y_km: float) -> None:
        self.image = Image.fromarray(ground, "RGB")
        self.draw = ImageDraw.Draw(self.image)
        self.shadow = Image.new("L", (TILE_SIZE, TILE_SIZE), 0)
        self.shadow_draw = ImageDraw.Draw(self.shadow)
        self.roofs: list[tuple[list, tuple, str | None]] = []
        self.trees: list[tuple[float, float, float, tuple]] = []
        self.rng = rng
        self.cos, self.sin = math.cos(theta), math.sin(theta)
        self.x_km, self.y_km = x_km, y_km
        self.arterials_x = _arterials(x_km, _ARTERIAL_OFFSET_KM[0])
        self.arterials_y = _arterials(y_km, _ARTERIAL_OFFSET_KM[1])

    # coordinates
    def px(self, u: float, v: float) -> tuple[float, float]:
        return (_HALF + u * self.cos - v * self.sin, _HALF + u * self.sin + v * self.cos)

    def quad(self, u: float, v: float, w: float, h: float) -> list[tuple[float, float]]:
        hw, hh = w / 2, h / 2
        return [self.px(u - hw, v - hh), self.px(u + hw, v - hh), self.px(u + hw, v + hh), self.px(u - hw, v + hh)]

    def km(self, x: float, y: float) -> tuple[float, float]:
        return (self.x_km + (x - _HALF) * TILE_KM / TILE_SIZE, self.y_km - (y - _HALF) * TILE_KM / TILE_SIZE)

    def visible(self, u: float, v: float, margin: float = 0.0) -> bool:
        x, y = self.px(u, v)
        return -margin <= x <= TILE_SIZE + margin and -margin <= y <= TILE_SIZE + margin

    def blocked(self, u: float, v: float, radius_px: float) -> bool:
        """Whether a footprint centred at (u, v) would sit on the river, the canal or an arterial."""
        x, y = self.km(*self.px(u, v))
        r = radius_px * TILE_KM / TILE_SIZE
        if abs(x - river_x(y)) < _RIVER_HALF_KM + r + 0.012 or abs(y - canal_y(x)) < _CANAL_HALF_KM + r + 0.008:
            return True
        return any(abs(x - a) < _ARTERIAL_HALF_KM + r + 0.006 for a in self.arterials_x) or any(
            abs(y - a) < _ARTERIAL_HALF_KM + r + 0.006 for a in self.arterials_y
        )

    # primitives
    def rect(self, u: float, v: float, w: float, h: float, colour: tuple) -> None:
        self.draw.polygon(self.quad(u, v, w, h), fill=colour)

    def line(self, points: list[tuple[float, float]], colour: tuple, width: float) -> None:
        self.draw.line([self.px(u, v) for u, v in points], fill=colour, width=max(1, round(width)))

    def building(
        self, u: float, v: float, w: float, h: float, height_m: float, colour: tuple, detail: str | None = None
    ) -> bool:
        """A footprint with its shadow; its roof is drawn later (after shadows darken the ground)."""
        if w < 2 or h < 2 or not self.visible(u, v, margin=max(w, h)) or self.blocked(u, v, 0.5 * max(w, h)):
            return False
        poly = self.quad(u, v, w, h)
        length = min(_MAX_SHADOW_PX, height_m * _SHADOW_RATIO / METRES_PER_PIXEL)
        dx, dy = _SHADOW_DIR[0] * length, _SHADOW_DIR[1] * length
        moved = [(x + dx, y + dy) for x, y in poly]
        self.shadow_draw.polygon(moved, fill=255)
        for i in range(4):
            a, b = poly[i], poly[(i + 1) % 4]
            self.shadow_draw.polygon([a, b, moved[(i + 1) % 4], moved[i]], fill=255)
        self.roofs.append((poly, colour, detail))
        return True

    def tree(self, x: float, y: float, r: float, colour: tuple | None = None) -> None:
        """A canopy at image coordinates (x, y); drawn after roofs, shadow now."""
        if not (-r <= x <= TILE_SIZE + r and -r <= y <= TILE_SIZE + r):
            return
        colour = colour or _TREE_COLOURS[int(self.rng.integers(len(_TREE_COLOURS)))]
        s = r * 0.8
        self.shadow_draw.ellipse(
            [
                x - r + s * _SHADOW_DIR[0],
                y - r + s * _SHADOW_DIR[1],
                x + r + s * _SHADOW_DIR[0],
                y + r + s * _SHADOW_DIR[1],
            ],
            fill=200,
        )
        self.trees.append((x, y, r, colour))

    def tree_local(self, u: float, v: float, r: float, colour: tuple | None = None) -> None:
        if not self.blocked(u, v, r):
            self.tree(*self.px(u, v), r, colour)

    def cars(self, u0: float, v0: float, u1: float, v1: float, fill: float) -> None:
        """A car park inside a local rectangle: pairs of rows of cars (about 2 x 5 m) and aisles."""
        for v in np.arange(v0 + 1.5, v1 - 1.5, 7.0):
            for row in (v, v + 2.4):
                if row > v1 - 1.5:
                    break
                for u in np.arange(u0 + 1.0, u1 - 0.8, 1.4):
                    if self.rng.random() < fill:
                        colour = _CAR_COLOURS[int(self.rng.integers(len(_CAR_COLOURS)))]
                        self.rect(u, row, 0.8, 1.7, colour)

    # finishing
    def finish(self, grain: np.ndarray, grain_sd: float) -> np.ndarray:
        """Shadows, roofs, trees, then the global features and per-pixel grain; returns uint8 RGB."""
        rgb = np.asarray(self.image, dtype=np.float32)
        shade = np.asarray(self.shadow, dtype=np.float32)[..., None] * (0.58 / 255.0)
        self.image = Image.fromarray((rgb * (1.0 - shade)).astype(np.uint8), "RGB")
        self.draw = ImageDraw.Draw(self.image)
        for poly, colour, detail in self.roofs:
            if detail == "tank":  # round storage tank: a disc with a darker rim
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                box = [min(xs), min(ys), max(xs), max(ys)]
                self.draw.ellipse(box, fill=colour, outline=tuple(max(0, x - 40) for x in colour))
                continue
            self.draw.polygon(poly, fill=colour)
            if detail:
                _roof_detail(self, poly, colour, detail)
        for x, y, r, colour in self.trees:
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            h = r * 0.45
            light = tuple(min(255, c + 18) for c in colour)
            self.draw.ellipse([x - h - r * 0.25, y - h - r * 0.3, x + h - r * 0.25, y + h - r * 0.3], fill=light)
        _draw_global_features(self)
        out = np.asarray(self.image, dtype=np.float32) + grain * grain_sd
        return np.clip(out, 0, 255).astype(np.uint8)


def _arterials(centre_km: float, offset: float) -> list[float]:
    reach = TILE_KM * 0.75
    k0 = math.floor((centre_km - reach - offset) / _ARTERIAL_SPACING_KM)
    k1 = math.ceil((centre_km + reach - offset) / _ARTERIAL_SPACING_KM)
    return [
        offset + k * _ARTERIAL_SPACING_KM
        for k in range(k0, k1 + 1)
        if abs(offset + k * _ARTERIAL_SPACING_KM - centre_km) < reach
    ]


def _lerp(a: tuple, b: tuple, t: float) -> tuple:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _roof_detail(canvas: _Canvas, poly: list, colour: tuple, detail: str) -> None:
    draw, rng = canvas.draw, canvas.rng
    a, b, c, d = poly
    if detail == "pitched":  # the far half of a pitched roof is darker
        mid_ad, mid_bc = _lerp(a, d, 0.5), _lerp(b, c, 0.5)
        draw.polygon([mid_ad, mid_bc, c, d], fill=tuple(max(0, x - 28) for x in colour))
    elif detail == "stripes":  # corrugated shed roof, lines across the short side
        dark = tuple(max(0, x - 16) for x in colour)
        n = int(max(abs(b[0] - a[0]), abs(b[1] - a[1])) / 3)
        for i in range(1, n):
            t = i / n
            draw.line([_lerp(a, b, t), _lerp(d, c, t)], fill=dark, width=1)
        if rng.random() < 0.5:  # a skylight strip along the ridge
            draw.line([_lerp(a, d, 0.5), _lerp(b, c, 0.5)], fill=tuple(min(255, x + 30) for x in colour), width=2)
    elif detail == "equipment":  # rooftop plant on flat roofs
        for _ in range(int(rng.integers(1, 4))):
            t, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
            x, y = _lerp(_lerp(a, b, t), _lerp(d, c, t), s)
            size = rng.uniform(1.0, 2.5)
            tone = int(rng.choice([60, 215]))
            draw.rectangle([x - size, y - size, x + size, y + size], fill=(tone, tone, tone + 4))
    elif detail == "skylights":  # malls and stations: a grid of light panels
        light = tuple(min(255, x + 35) for x in colour)
        for t in (0.25, 0.5, 0.75):
            draw.line([_lerp(a, b, t), _lerp(d, c, t)], fill=light, width=2)
    elif detail == "helipad":
        x, y = _lerp(_lerp(a, b, 0.5), _lerp(d, c, 0.5), 0.5)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(230, 230, 225), width=1)


def _draw_global_features(canvas: _Canvas) -> None:
    """River, canal and arterial roads, in city km so that neighbouring tiles line up."""
    draw = canvas.draw
    x0, y0 = canvas.x_km, canvas.y_km
    scale = TILE_SIZE / TILE_KM

    def to_px(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        return list(zip(((x - x0) * scale + _HALF).tolist(), (_HALF - (y - y0) * scale).tolist(), strict=True))

    ys = np.linspace(y0 - TILE_KM, y0 + TILE_KM, 48)
    xs_river = river_x(ys)
    if np.min(np.abs(xs_river - x0)) < TILE_KM:
        # A band of constant width across the flow: offset the centre line along x by w * sqrt(1 + slope^2).
        stretch = np.sqrt(1 + np.gradient(xs_river, ys) ** 2)
        for half, colour in ((_RIVER_HALF_KM + 0.012, _BANK), (_RIVER_HALF_KM, _WATER)):
            band = to_px(xs_river - half * stretch, ys) + to_px(xs_river + half * stretch, ys)[::-1]
            draw.polygon(band, fill=colour)
    xs = np.linspace(x0 - TILE_KM, x0 + TILE_KM, 48)
    ys_canal = canal_y(xs)
    if np.min(np.abs(ys_canal - y0)) < TILE_KM:
        stretch = np.sqrt(1 + np.gradient(ys_canal, xs) ** 2)
        for half, colour in ((_CANAL_HALF_KM + 0.006, _BANK), (_CANAL_HALF_KM, (70, 98, 100))):
            band = to_px(xs, ys_canal - half * stretch) + to_px(xs, ys_canal + half * stretch)[::-1]
            draw.polygon(band, fill=colour)
    width = int(2 * _ARTERIAL_HALF_KM * scale)
    for a in canvas.arterials_x:
        x = (a - x0) * scale + _HALF
        draw.rectangle([x - width / 2 - 1, 0, x + width / 2 + 1, TILE_SIZE], fill=(150, 150, 146))
        draw.rectangle([x - width / 2, 0, x + width / 2, TILE_SIZE], fill=(58, 60, 63))
        for dash in range(0, TILE_SIZE, 10):
            draw.line([(x, dash), (x, dash + 5)], fill=(205, 200, 160), width=1)
    for a in canvas.arterials_y:
        y = _HALF - (a - y0) * scale
        draw.rectangle([0, y - width / 2 - 1, TILE_SIZE, y + width / 2 + 1], fill=(150, 150, 146))
        draw.rectangle([0, y - width / 2, TILE_SIZE, y + width / 2], fill=(58, 60, 63))
        for dash in range(0, TILE_SIZE, 10):
            draw.line([(dash, y), (dash + 5, y)], fill=(205, 200, 160), width=1)
    rng = canvas.rng
    for a in canvas.arterials_x:  # traffic
        x = (a - x0) * scale + _HALF
        for _ in range(int(rng.integers(2, 7))):
            lane = rng.choice([-1, 1]) * width / 4
            y = rng.uniform(0, TILE_SIZE)
            draw.rectangle([x + lane - 0.8, y - 2, x + lane + 0.8, y + 2], fill=_CAR_COLOURS[int(rng.integers(8))])
    for a in canvas.arterials_y:
        y = _HALF - (a - y0) * scale
        for _ in range(int(rng.integers(2, 7))):
            lane = rng.choice([-1, 1]) * width / 4
            x = rng.uniform(0, TILE_SIZE)
            draw.rectangle([x - 2, y + lane - 0.8, x + 2, y + lane + 0.8], fill=_CAR_COLOURS[int(rng.integers(8))])


def _street_grid(
    canvas: _Canvas, spacing_m: float, width_m: float, colour: tuple = _ASPHALT, jitter: float = 0.15
) -> list[tuple[float, float, float, float]]:
    """Draw a local street grid; return the blocks' interiors (u0, v0, u1, v1) in local pixels."""
    rng = canvas.rng
    sp = spacing_m / METRES_PER_PIXEL
    w = max(1.0, width_m / METRES_PER_PIXEL)

    def positions() -> list[float]:
        out, pos = [], -_REACH - rng.uniform(0, sp)
        while pos < _REACH + sp:
            out.append(pos)
            pos += sp * rng.uniform(1 - jitter, 1 + jitter)
        return out

    us, vs = positions(), positions()
    span = 2 * _REACH + 2 * sp
    for walk, fill in ((w + 2, _SIDEWALK), (w, colour)):  # pavements first, carriageway on top
        for u in us:
            canvas.rect(u, 0, walk, span, fill)
        for v in vs:
            canvas.rect(0, v, span, walk, fill)
    blocks = []
    for u0, u1 in itertools.pairwise(us):
        for v0, v1 in itertools.pairwise(vs):
            block = (u0 + w / 2 + 1.5, v0 + w / 2 + 1.5, u1 - w / 2 - 1.5, v1 - w / 2 - 1.5)
            if canvas.visible((block[0] + block[2]) / 2, (block[1] + block[3]) / 2, margin=sp / 2):
                blocks.append(block)
    return blocks


# --- Land-use painters: each fills the blocks of one tile ----------------------------------------


def _paint_cbd(c: _Canvas, blocks: list, d: float) -> None:
    rng = c.rng
    roofs = [(72, 92, 112), (62, 102, 106), (176, 176, 172), (208, 208, 204), (96, 104, 116)]
    for u0, v0, u1, v1 in blocks:
        bw, bh = u1 - u0, v1 - v0
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        roll = rng.random()
        if roll < 0.12:  # a plaza with trees around it
            c.rect(cu, cv, bw, bh, _jitter(rng, _PAVING, 6))
            for t in np.linspace(0, 1, 6):
                c.tree_local(u0 + 3 + t * (bw - 6), v0 + 3, 2.5)
                c.tree_local(u0 + 3 + t * (bw - 6), v1 - 3, 2.5)
            continue
        c.rect(cu, cv, bw, bh, _jitter(rng, (170, 168, 162), 8))  # paved forecourts
        if rng.random() < 0.6:  # podium
            c.building(
                cu,
                cv,
                bw * rng.uniform(0.75, 0.95),
                bh * rng.uniform(0.75, 0.95),
                18,
                _jitter(rng, (188, 186, 180), 10),
                "equipment",
            )
        towers = 1 + int(rng.random() < 0.35 + 0.4 * d)
        for i in range(towers):
            tw = rng.uniform(13, 22) * (0.8 + 0.3 * d)
            th = tw * rng.uniform(0.8, 1.3)
            tu = cu + (i - (towers - 1) / 2) * bw * 0.45 + rng.uniform(-3, 3)
            tv = cv + rng.uniform(-0.15, 0.15) * bh
            height = rng.uniform(70, 120) + 160 * d * rng.random()
            detail = "helipad" if rng.random() < 0.15 else "equipment"
            c.building(
                tu,
                tv,
                min(tw, bw * 0.5 if towers > 1 else bw * 0.8),
                min(th, bh * 0.8),
                height,
                _jitter(rng, roofs[int(rng.integers(len(roofs)))], 8),
                detail,
            )


def _slab_rows(c: _Canvas, u0: float, v0: float, u1: float, v1: float, d: float, palette: tuple) -> None:
    """A residential compound: parallel slabs in rows, trees between them."""
    rng = c.rng
    length = rng.uniform(18, 30)
    depth = rng.uniform(4.5, 6)
    row_gap = rng.uniform(8, 11) + 4 * (1 - d)
    height = 18 + 70 * d * rng.uniform(0.4, 1.0)
    colour = palette[int(rng.integers(len(palette)))]
    pitched = height < 45 and rng.random() < 0.7
    v = v0 + depth / 2 + 1
    while v + depth / 2 < v1 - 1:
        u = u0 + length / 2 + 1
        while u + length / 2 < u1 - 1:
            if rng.random() < 0.75 + 0.25 * d:
                c.building(u, v, length, depth, height, _jitter(rng, colour, 8), "pitched" if pitched else "equipment")
            if rng.random() < 0.8:
                c.tree_local(
                    u + rng.uniform(-length / 2, length / 2), v + row_gap / 2 + depth / 4, rng.uniform(1.8, 3.2)
                )
            u += length + rng.uniform(3, 6)
        v += depth + row_gap


def _paint_residential(c: _Canvas, blocks: list, d: float) -> None:
    rng = c.rng
    palette = ((172, 88, 62), (150, 96, 74), (124, 132, 142), (192, 186, 174), (186, 112, 76))
    for u0, v0, u1, v1 in blocks:
        roll = rng.random()
        if roll < 0.08:  # a pond or a sports court in the compound's garden
            cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
            if rng.random() < 0.5:
                x, y = c.px(cu, cv)
                r = min(u1 - u0, v1 - v0) * 0.3
                c.draw.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=_WATER)
            else:
                c.rect(cu, cv, 12, 7, (80, 130, 90))
            continue
        if d < 0.25 and rng.random() < 0.6:  # low density: villas in gardens
            for _ in range(int(6 + 10 * d)):
                u, v = rng.uniform(u0 + 3, u1 - 3), rng.uniform(v0 + 3, v1 - 3)
                c.building(u, v, rng.uniform(4, 6), rng.uniform(4, 6), 9, _jitter(rng, palette[0], 14), "pitched")
                c.tree_local(u + 4, v + 3, 2.5)
            continue
        _slab_rows(c, u0, v0, u1, v1, d, palette)


def _paint_industrial(c: _Canvas, blocks: list, d: float) -> None:
    rng = c.rng
    roofs = ((204, 204, 200), (222, 222, 218), (78, 122, 176), (118, 160, 202), (186, 190, 192), (150, 112, 92))
    weights = np.array((0.26, 0.2, 0.22, 0.14, 0.12, 0.06))
    for u0, v0, u1, v1 in blocks:
        bw, bh = u1 - u0, v1 - v0
        c.rect((u0 + u1) / 2, (v0 + v1) / 2, bw, bh, _jitter(rng, (184, 180, 170), 8))  # yard concrete
        n = 1 + int(rng.random() < 0.5 + 0.3 * d)
        for i in range(n):
            sw = bw * (rng.uniform(0.55, 0.85) if n == 1 else rng.uniform(0.38, 0.46))
            sh = bh * rng.uniform(0.45, 0.75)
            su = u0 + sw / 2 + 2 + i * bw * 0.5 if n > 1 else (u0 + u1) / 2 + rng.uniform(-0.1, 0.1) * bw
            sv = v0 + sh / 2 + 2 + rng.uniform(0, max(0.1, bh - sh - 4))
            colour = roofs[int(rng.choice(len(roofs), p=weights))]
            c.building(su, sv, sw, sh, rng.uniform(9, 15), _jitter(rng, colour, 6), "stripes")
        # trucks along the yard's edge, and sometimes storage tanks
        c.cars(u0 + 2, v1 - 7, u0 + bw * 0.6, v1 - 1, 0.35)
        if rng.random() < 0.3:
            for k in range(int(rng.integers(2, 5))):
                x, y = c.px(u1 - 6 - k * 9, v1 - 8)
                if not c.blocked(u1 - 6 - k * 9, v1 - 8, 5):
                    c.shadow_draw.ellipse([x - 3, y - 7, x + 7, y + 3], fill=255)
                    box = [(x - 4, y - 4), (x + 4, y - 4), (x + 4, y + 4), (x - 4, y + 4)]
                    c.roofs.append((box, (226, 226, 222), "tank"))


def _running_track(c: _Canvas, u: float, v: float) -> None:
    """A 400 m track (about 175 x 95 m) around a football pitch."""
    length, width = 70, 38
    x, y = c.px(u, v)
    box = [x - length / 2, y - width / 2, x + length / 2, y + width / 2]
    c.draw.rounded_rectangle(box, radius=width / 2, fill=(172, 78, 64))
    inner = [box[0] + 5, box[1] + 5, box[2] - 5, box[3] - 5]
    c.draw.rounded_rectangle(inner, radius=width / 2 - 5, fill=(84, 146, 72))
    c.draw.rounded_rectangle(
        [box[0] + 2.5, box[1] + 2.5, box[2] - 2.5, box[3] - 2.5],
        radius=width / 2 - 2.5,
        outline=(220, 200, 190),
        width=1,
    )
    c.draw.line([(x, inner[1] + 2), (x, inner[3] - 2)], fill=(225, 230, 220), width=1)


def _paint_university(c: _Canvas, blocks: list, d: float) -> None:
    rng = c.rng
    roofs = ((188, 120, 92), (196, 186, 164), (150, 150, 150), (170, 100, 80))
    track_done = False
    blocks = sorted(blocks, key=lambda b: abs((b[0] + b[2]) / 2) + abs((b[1] + b[3]) / 2))
    for u0, v0, u1, v1 in blocks:
        bw, bh = u1 - u0, v1 - v0
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        if not track_done and not c.blocked(cu, cv, 30):
            _running_track(c, cu, cv)
            track_done = True
            for t in np.linspace(-1, 1, 7):
                c.tree_local(cu + t * 40, cv - 24, 3)
            continue
        roll = rng.random()
        if roll < 0.25:  # lawn with a diagonal path and trees
            c.line([(u0, v0), (u1, v1)], (200, 192, 168), 2)
            for _ in range(8):
                c.tree_local(rng.uniform(u0, u1), rng.uniform(v0, v1), rng.uniform(2.5, 4))
            continue
        if roll < 0.35:  # basketball courts
            for i in range(3):
                c.rect(u0 + 8 + i * 10, cv, 8, 12, (70, 110, 150))
            continue
        colour = _jitter(rng, roofs[int(rng.integers(len(roofs)))], 8)
        height = rng.uniform(14, 30)
        wide, deep = bw * rng.uniform(0.55, 0.8), bh * rng.uniform(0.55, 0.8)
        arm = rng.uniform(6, 9)
        c.building(cu, cv - deep / 2 + arm / 2, wide, arm, height, colour, "pitched")  # U-shaped courtyard
        c.building(cu - wide / 2 + arm / 2, cv + arm / 2, arm, deep - arm, height, colour, "pitched")
        c.building(cu + wide / 2 - arm / 2, cv + arm / 2, arm, deep - arm, height, colour, "pitched")
        for t in np.linspace(-0.4, 0.4, 4):
            c.tree_local(cu + t * wide, cv + deep / 2 + 3, 2.6)


def _paint_park(c: _Canvas, d: float) -> None:
    rng = c.rng
    # a pond (irregular outline)
    if rng.random() < 0.8:
        x, y = rng.uniform(70, 186, 2)
        r = rng.uniform(22, 42)
        angles = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        wobble = 1 + 0.18 * np.sin(3 * angles + rng.uniform(0, 6)) + 0.1 * np.sin(5 * angles + rng.uniform(0, 6))
        xs, ys = x + r * wobble * np.cos(angles), y + 0.75 * r * wobble * np.sin(angles)
        outline = list(zip(xs.tolist(), ys.tolist(), strict=True))
        c.draw.polygon(outline, fill=_BANK)
        inner = [(x + 0.88 * (px - x), y + 0.88 * (py - y)) for px, py in outline]
        c.draw.polygon(inner, fill=(66, 104, 112))
    # winding paths
    for _ in range(int(rng.integers(2, 4))):
        horizontal = rng.random() < 0.5
        t = np.linspace(-10, TILE_SIZE + 10, 24)
        base, amp, freq, phase = rng.uniform(30, 226), rng.uniform(10, 30), rng.uniform(0.01, 0.03), rng.uniform(0, 6)
        wave = base + amp * np.sin(freq * t + phase)
        points = (
            list(zip(t.tolist(), wave.tolist(), strict=True))
            if horizontal
            else list(zip(wave.tolist(), t.tolist(), strict=True))
        )
        c.draw.line(points, fill=(204, 194, 164), width=int(rng.integers(2, 4)), joint="curve")
    # tree clumps
    for _ in range(int(rng.integers(5, 10))):
        cx, cy = rng.uniform(0, TILE_SIZE, 2)
        spread = rng.uniform(10, 26)
        for _ in range(int(rng.integers(10, 30))):
            c.tree(cx + rng.normal(0, spread), cy + rng.normal(0, spread), rng.uniform(2.5, 5.0))
    # a pavilion and a small plaza
    u, v = rng.uniform(-80, 80, 2)
    x, y = c.px(u, v)
    c.draw.ellipse([x - 9, y - 9, x + 9, y + 9], fill=_PAVING)
    c.building(u, v, 6, 6, 8, (150, 70, 50), "pitched")
    if d > 0.4:  # a busy park: a sports field
        c.rect(u + 35, v - 30, 34, 22, (90, 150, 76))


def _paint_transport(c: _Canvas, blocks: list, d: float) -> None:
    rng = c.rng
    # surrounding blocks: parking and service buildings
    for u0, v0, u1, v1 in blocks:
        if rng.random() < 0.4:
            c.rect((u0 + u1) / 2, (v0 + v1) / 2, u1 - u0, v1 - v0, (100, 100, 102))
            c.cars(u0 + 1, v0 + 1, u1 - 1, v1 - 1, 0.25 + 0.35 * d)
        else:
            c.building(
                (u0 + u1) / 2,
                (v0 + v1) / 2,
                (u1 - u0) * 0.7,
                (v1 - v0) * 0.6,
                rng.uniform(15, 40),
                _jitter(rng, (178, 176, 170), 12),
                "equipment",
            )
    # the rail corridor along u through the middle, with tracks
    tracks = int(4 + 6 * d + rng.integers(0, 3))
    pitch = 4.2
    corridor = tracks * pitch + 8
    vc = rng.uniform(-20, 20)
    c.rect(0, vc, 2 * _REACH, corridor, (124, 114, 104))
    for i in range(tracks):
        v = vc - corridor / 2 + 4 + (i + 0.5) * pitch
        c.rect(0, v, 2 * _REACH, 2.2, (104, 92, 82))  # sleepers
        c.rect(0, v - 0.7, 2 * _REACH, 0.5, (52, 50, 50))
        c.rect(0, v + 0.7, 2 * _REACH, 0.5, (52, 50, 50))
    # platforms between pairs of tracks, and the station roof over them
    for i in range(1, tracks - 1, 2):
        v = vc - corridor / 2 + 4 + (i + 1) * pitch
        c.rect(rng.uniform(-10, 10), v, 120, 1.6, (208, 204, 194))
    su = rng.uniform(-30, 30)
    c.building(su, vc - corridor / 2 - 16, 110, 26, 25, (206, 210, 214), "skylights")  # station hall
    c.building(su + 10, vc + 2, 80, corridor * 0.7, 18, (196, 200, 206), "skylights")  # roof over tracks
    # a train or two
    for _ in range(int(rng.integers(1, 3))):
        i = int(rng.integers(tracks))
        v = vc - corridor / 2 + 4 + (i + 0.5) * pitch
        c.rect(rng.uniform(-120, 120), v, rng.uniform(60, 120), 2.4, (222, 224, 226))


def _paint_commercial(c: _Canvas, blocks: list, d: float) -> None:
    rng = c.rng
    colours = (
        (176, 98, 78),
        (196, 160, 120),
        (206, 200, 184),
        (148, 148, 150),
        (120, 128, 140),
        (168, 120, 96),
        (214, 176, 104),
        (100, 110, 124),
    )
    for u0, v0, u1, v1 in blocks:
        bw, bh = u1 - u0, v1 - v0
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        roll = rng.random()
        if roll < 0.12:  # plaza with a fountain
            c.rect(cu, cv, bw, bh, _jitter(rng, _PAVING, 6))
            x, y = c.px(cu, cv)
            c.draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(120, 160, 176))
            continue
        if roll < 0.12 + 0.15 * d:  # a mall with skylights
            c.building(cu, cv, bw * 0.9, bh * 0.9, rng.uniform(15, 30), _jitter(rng, (200, 198, 192), 10), "skylights")
            continue
        c.rect(cu, cv, bw, bh, (150, 140, 130))  # shop lanes
        block_colours = [colours[int(i)] for i in rng.choice(len(colours), 3, replace=False)]
        lot_u, lot_v = rng.uniform(5, 8), rng.uniform(4.5, 6.5)
        for u in np.arange(u0 + lot_u / 2, u1 - lot_u / 2 + 0.1, lot_u + 0.7):
            for v in np.arange(v0 + lot_v / 2, v1 - lot_v / 2 + 0.1, lot_v + 0.7):
                if rng.random() < 0.6 + 0.38 * d:
                    colour = block_colours[int(rng.integers(3))]
                    c.building(
                        u,
                        v,
                        lot_u * rng.uniform(0.85, 1.0),
                        lot_v * rng.uniform(0.85, 1.0),
                        rng.uniform(6, 14) + 10 * d,
                        _jitter(rng, colour, 14),
                        None,
                    )


def _paint_mixed(c: _Canvas, blocks: list, d: float) -> None:
    rng = c.rng
    painters = [_paint_residential, _paint_commercial, _paint_cbd, _paint_residential]
    groups: list[list] = [[] for _ in painters]
    for block in blocks:
        groups[int(rng.choice(len(painters), p=[0.4, 0.3, 0.1, 0.2]))].append(block)
    for painter, group in zip(painters, groups, strict=True):
        if group:
            painter(c, group, d * 0.8)


def _poi_extras(c: _Canvas, cell: CellInfo, land_use: str) -> None:
    """Features that follow the POI mix rather than the land use (sports grounds, ponds, sheds)."""
    lift = _poi_lift(cell)
    rng = c.rng
    u, v = rng.uniform(-70, 70, 2)
    if c.blocked(u, v, 25):
        return
    if lift.get("Sports", 0) > 2.5 and land_use not in ("park", "university"):
        c.rect(u, v, 40, 26, (88, 148, 76))
        x, y = c.px(u, v)
        c.draw.line([(x, y - 10), (x, y + 10)], fill=(225, 230, 220), width=1)
    elif lift.get("Scenic spot", 0) > 3 and land_use != "park":
        x, y = c.px(u, v)
        c.draw.ellipse([x - 16, y - 11, x + 16, y + 11], fill=_WATER)
    elif lift.get("Factory", 0) > 3 and land_use != "industrial":
        c.building(u, v, 40, 24, 12, (80, 124, 176), "stripes")


_PAINTERS = {
    "cbd": _paint_cbd,
    "residential": _paint_residential,
    "industrial": _paint_industrial,
    "university": _paint_university,
    "transport": _paint_transport,
    "commercial": _paint_commercial,
    "mixed": _paint_mixed,
}


# --- Public API -----------------------------------------------------------------------------------


def render_tile_array(cell: CellInfo) -> np.ndarray:
    """(256, 256, 3) uint8 RGB rendering of the cell's surroundings; deterministic per cell."""
    land_use = infer_land_use(cell)
    style = _STYLE[land_use]
    rng = np.random.default_rng(_seed(cell, land_use))
    d = poi_density(cell)
    if cell.x_km is not None and cell.y_km is not None:
        x_km, y_km = cell.x_km, cell.y_km
    else:  # no position: a stable spot far from the global features' crossings
        x_km, y_km = float(rng.uniform(-20, 20)), float(rng.uniform(-20, 20))

    # Ground: base colour modulated by smooth noise, with vegetation where the noise field is high.
    ox, oy = (int(v) for v in rng.integers(0, 256, 2))
    low, mid = _LOW[oy : oy + TILE_SIZE, ox : ox + TILE_SIZE], _MID[oy : oy + TILE_SIZE, ox : ox + TILE_SIZE]
    base = np.array(style["ground"], dtype=np.float32)
    ground = base * (1.0 + 0.07 * low + 0.05 * mid)[..., None]
    veg_share = style["veg"] * (1.15 - 0.4 * d) if land_use != "park" else style["veg"]
    threshold = _VEG_FIELD_Q[round(100 * (1 - min(max(veg_share, 0.0), 1.0)))]
    veg = (low + 0.45 * mid) > threshold
    ground[veg] = _VEG * (1.0 + 0.22 * mid[veg])[..., None]
    # Street grids follow the arterials in about half the tiles and are turned by up to ~30 deg elsewhere.
    theta = 0.0 if rng.random() < 0.45 else float(rng.uniform(-0.5, 0.5))
    canvas = _Canvas(np.clip(ground, 0, 255).astype(np.uint8), theta, rng, x_km, y_km)
    street = style["street"]
    if land_use == "park" or street is None:  # parks have no street grid
        _paint_park(canvas, d)
    else:
        spacing, width = street
        spacing *= 1.15 - 0.3 * d
        blocks = _street_grid(canvas, spacing, width)
        _PAINTERS[land_use](canvas, blocks, d)
    _poi_extras(canvas, cell, land_use)
    gx, gy = (int(v) for v in rng.integers(0, 256, 2))
    return canvas.finish(_GRAIN[gy : gy + TILE_SIZE, gx : gx + TILE_SIZE], 5.0)


def render_tile(cell: CellInfo) -> bytes:
    """The rendering as JPEG bytes (quality 90)."""
    out = io.BytesIO()
    Image.fromarray(render_tile_array(cell), "RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


class SyntheticSource:
    """``synthetic``: render every cell (never missing); the default for synthetic cities."""

    spec = "synthetic"

    def fetch(self, cell: CellInfo) -> TileImage:
        return TileImage(data=render_tile(cell), media_type="image/jpeg", zoom=None, source=self.spec)


# --- City mosaic ------------------------------------------------------------------------------------

_MOSAIC_COLOURS = {
    "cbd": (132, 134, 138),
    "residential": (150, 128, 112),
    "industrial": (176, 178, 180),
    "university": (134, 146, 108),
    "park": (92, 132, 70),
    "transport": (128, 122, 116),
    "commercial": (172, 150, 132),
    "mixed": (146, 138, 126),
}
_MOSAIC_STREETS_KM = {  # local street spacing by land use (0 = none)
    "cbd": 0.15,
    "residential": 0.2,
    "industrial": 0.26,
    "university": 0.21,
    "park": 0.0,
    "transport": 0.17,
    "commercial": 0.08,
    "mixed": 0.13,
}
_RURAL = (142, 150, 112)


def render_city_mosaic(
    cells: Sequence[CellInfo], *, pixels_per_km: float | None = None, width: int = 2048, margin_km: float = 0.6
) -> tuple[bytes, list[float]]:
    """A city-wide basemap (PNG) from the Voronoi land use of ``cells``, and its bounds.

    Returns ``(png_bytes, [west, south, east, north])`` in degrees, ready for a pydeck
    ``BitmapLayer(bounds=...)``. Pixels map linearly to lon/lat (fine for a city: over 20 km the
    difference from web-mercator is under a pixel). Colours follow each pixel's nearest cell's land
    use (inferred from POIs where unknown), with texture, district borders, local street grids and
    the same river, canal and arterial roads as the tiles. Pixels farther than ``margin_km`` from any
    cell are countryside. ``pixels_per_km`` wins over ``width`` when given; neither side exceeds
    4096 pixels.
    """
    from scipy.spatial import cKDTree

    located = [c for c in cells if c.has_position]
    if not located:
        raise InputError("no cell has a latitude/longitude, so there is nothing to place on a map", field="cells")
    lat = np.array([c.lat for c in located])
    lon = np.array([c.lon for c in located])
    lat0 = float(lat.mean())
    km_lon = 111.320 * math.cos(math.radians(lat0))
    km_lat = 110.574
    pad_lat, pad_lon = margin_km / km_lat, margin_km / km_lon
    west, east = float(lon.min() - pad_lon), float(lon.max() + pad_lon)
    south, north = float(lat.min() - pad_lat), float(lat.max() + pad_lat)
    extent_x, extent_y = (east - west) * km_lon, (north - south) * km_lat
    if pixels_per_km is None:
        pixels_per_km = width / extent_x
    pixels_per_km = min(pixels_per_km, 4096 / max(extent_x, extent_y))
    w = int(max(16, round(extent_x * pixels_per_km)))
    h = int(max(16, round(extent_y * pixels_per_km)))

    # City km coordinates of every pixel: the cells' own x_km/y_km where known (least-squares affine
    # fit lon/lat -> km), so the river and arterials line up with the tiles; else an equirectangular map.
    px_lon = west + (np.arange(w) + 0.5) / w * (east - west)
    px_lat = north - (np.arange(h) + 0.5) / h * (north - south)
    with_km = [c for c in located if c.x_km is not None and c.y_km is not None]
    if len(with_km) >= 3:
        lat_lon = np.array([c.lat_lon() for c in with_km])
        design = np.column_stack([lat_lon[:, 1], lat_lon[:, 0], np.ones(len(with_km))])
        coef_x, *_ = np.linalg.lstsq(design, np.array([c.x_km for c in with_km]), rcond=None)
        coef_y, *_ = np.linalg.lstsq(design, np.array([c.y_km for c in with_km]), rcond=None)
    else:
        lon0 = float(lon.mean())
        coef_x = np.array([km_lon, 0.0, -km_lon * lon0])
        coef_y = np.array([0.0, km_lat, -km_lat * lat0])
    glon, glat = np.meshgrid(px_lon, px_lat)  # (h, w)
    xk = (coef_x[0] * glon + coef_x[1] * glat + coef_x[2]).astype(np.float32)
    yk = (coef_y[0] * glon + coef_y[1] * glat + coef_y[2]).astype(np.float32)

    # Voronoi land use: nearest cell in local km.
    cell_xy = np.column_stack([(lon - lon.mean()) * km_lon, (lat - lat0) * km_lat])
    tree = cKDTree(cell_xy)
    pix_xy = np.column_stack([((glon - lon.mean()) * km_lon).ravel(), ((glat - lat0) * km_lat).ravel()])
    dist, nearest = tree.query(pix_xy, workers=-1)
    nearest = nearest.reshape(h, w)
    uses = [infer_land_use(c) for c in located]
    use_index = np.array([LAND_USES.index(u) for u in uses])[nearest]  # (h, w)
    palette = np.array([_MOSAIC_COLOURS[u] for u in LAND_USES], dtype=np.float32)
    spacing = np.array([_MOSAIC_STREETS_KM[u] for u in LAND_USES], dtype=np.float32)[use_index]
    density = np.array([poi_density(c) for c in located], dtype=np.float32)[nearest]

    rgb = palette[use_index]  # (h, w, 3)
    # texture: tiled noise, stronger in built-up areas
    reps = (math.ceil(h / 512), math.ceil(w / 512))
    low = np.tile(_LOW, reps)[:h, :w]
    mid = np.tile(_MID, reps)[:h, :w]
    rgb *= (1.0 + 0.06 * low + (0.05 + 0.08 * density) * mid)[..., None]
    # local street grids
    streets = np.zeros((h, w), dtype=bool)
    has = spacing > 0
    street_half = 0.006 + 2.0 / pixels_per_km * 0.5
    for coord in (xk, yk):
        phase = np.mod(coord[has], spacing[has])
        streets[has] |= (phase < street_half) | (phase > spacing[has] - street_half)
    rgb[streets] = rgb[streets] * 0.55 + np.array(_ASPHALT, dtype=np.float32) * 0.45
    # district borders (where the nearest cell's land use changes)
    border = np.zeros((h, w), dtype=bool)
    border[:, 1:] |= use_index[:, 1:] != use_index[:, :-1]
    border[1:, :] |= use_index[1:, :] != use_index[:-1, :]
    rgb[border] = np.array(_ASPHALT, dtype=np.float32)
    # countryside beyond the cells
    rural = dist.reshape(h, w) > margin_km
    rgb[rural] = np.array(_RURAL, dtype=np.float32) * (1.0 + 0.1 * low[rural] + 0.06 * mid[rural])[..., None]
    # global features: arterials, canal, river (the same functions as the tiles)
    half_road = max(_ARTERIAL_HALF_KM, 1.0 / pixels_per_km)
    for coord, offset in ((xk, _ARTERIAL_OFFSET_KM[0]), (yk, _ARTERIAL_OFFSET_KM[1])):
        phase = np.mod(coord - offset + _ARTERIAL_SPACING_KM / 2, _ARTERIAL_SPACING_KM) - _ARTERIAL_SPACING_KM / 2
        rgb[np.abs(phase) < half_road] = np.array((72, 74, 78), dtype=np.float32)
    canal = np.abs(yk - canal_y(xk)) < max(_CANAL_HALF_KM, 0.8 / pixels_per_km)
    rgb[canal] = np.array((70, 98, 100), dtype=np.float32)
    river = np.abs(xk - river_x(yk)) < _RIVER_HALF_KM
    rgb[river] = np.array(_WATER, dtype=np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(out, format="PNG", compress_level=6)
    return out.getvalue(), [west, south, east, north]
