"""What the Map page shows, as plain functions: the city's cells, where every user is in each hour,
the traffic of each cell in each hour, the offline basemap, and the pydeck chart built from them.

The time axis is the data set's **absolute hour** (0 .. hours - 1, labelled "Tue 19 Apr 14:00" when
the data set is longer than a week), not an hour of the week aggregated over weeks: a user is in one
place in a real hour, but in several places on "every Tuesday at 14:00"; and the other pages (user,
forecast) speak of absolute hours too, so ``?hour=H`` means the same hour everywhere. A selected
user's trajectory covers the week (168 hours) that holds the chosen hour.

Everything expensive is loaded once per data set (``load_city``, ``load_basemap``; the page caches
them) as arrays indexed by cell position and user position; a rerun for another hour or colour only
slices those arrays with numpy/pandas, so a city of thousands of cells stays smooth.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pydeck as pdk
from sqlalchemy.orm import Session

from app.common import LAND_USE_COLORS, format_bytes
from db.models import Dataset
from db.queries import entities_of, hourly_entity_bytes, location_rows
from engine.env.tiles import cells_for_dataset, infer_land_use, render_city_mosaic
from engine.errors import plural

HOURS_PER_WEEK = 168
COLOR_MODES = ("traffic", "land_use")
CELL_RADIUS_M = 110.0  # about a quarter of the default city's mean spacing between cells
USER_RADIUS_M = 22.0
USER_RING_M = (40.0, 100.0)  # users are spread on a ring around their cell's centre, inside its dot
MOSAIC_WIDTH = 1536  # pixels across the city: about 7 m per pixel on the default 11 km city (~2 s to draw)
MOSAIC_JPEG_QUALITY = 85
# Traffic colour ramp (ColorBrewer YlOrRd): light = little traffic, dark red = the busiest cell-hours.
TRAFFIC_RAMP = np.array([(255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38)], dtype=float)
NO_TRAFFIC_RGBA = (190, 196, 204, 110)
USER_RGB = (31, 41, 51)
SELECTED_USER_RGB = (228, 87, 46)  # the app's accent colour (.streamlit/config.toml)
PATH_RGB = (228, 87, 46)
_METRES_PER_DEG_LAT = 110_574.0
_METRES_PER_DEG_LON_EQUATOR = 111_320.0
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


@dataclass(frozen=True)
class CityData:
    """One data set's map content, loaded once and sliced per hour.

    ``cells`` is indexed by cell position (0..C-1) with columns ``id key name lon lat land_use
    inferred`` (``inferred``: the land use was guessed from POIs because the data set has none).
    """

    cells: pd.DataFrame
    cell_hour_bytes: np.ndarray  # (C, H) float64: bytes of the entities attached to the cell in that hour
    user_keys: np.ndarray  # (U,) str, users only (empty when the data set models cells)
    user_cell: np.ndarray  # (U, H) int32 cell position, -1 where the hour's cell is unknown
    hours: int
    # Top of the traffic colour scale (bytes): the 99th percentile of busy cell-hours over the whole data
    # set, so that colours compare across hours and a handful of extreme hours does not wash the rest out.
    traffic_cap: float

    @property
    def located(self) -> np.ndarray:
        """(C,) bool: cells with a latitude and longitude (only those can be drawn)."""
        return self.cells["lon"].notna().to_numpy() & self.cells["lat"].notna().to_numpy()


# --- loading (one SQL pass per table, then numpy) -------------------------------------------------


def load_cells(session: Session, dataset: Dataset) -> pd.DataFrame:
    """Every cell of the data set in id order, with its land use (inferred from POIs where unknown)."""
    infos = cells_for_dataset(session, dataset)
    return pd.DataFrame(
        {
            "id": np.array([c.id for c in infos], dtype=np.int64),
            "key": [c.key for c in infos],
            "lon": np.array([np.nan if c.lon is None else c.lon for c in infos], dtype=float),
            "lat": np.array([np.nan if c.lat is None else c.lat for c in infos], dtype=float),
            "land_use": [infer_land_use(c) for c in infos],
            "inferred": [c.land_use is None for c in infos],
        }
    )


def load_entities(session: Session, dataset: Dataset) -> pd.DataFrame:
    """id, kind and key of every entity (user or cell) of the data set, in id order."""
    return pd.DataFrame(entities_of(session, dataset.id), columns=["id", "kind", "key"])


def load_entity_cells(session: Session, dataset: Dataset, entity_ids: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """(E, H) cell position of each entity (in ``entity_ids`` order) in each hour; -1 = unknown."""
    matrix = np.full((len(entity_ids), int(dataset.hours)), -1, dtype=np.int32)
    arr = location_rows(session, dataset.id)
    if len(arr) and len(entity_ids):
        matrix[np.searchsorted(entity_ids, arr[:, 0]), arr[:, 1]] = np.searchsorted(cell_ids, arr[:, 2])
    return matrix


def entity_hour_bytes(session: Session, dataset: Dataset, entity_ids: np.ndarray) -> np.ndarray:
    """(E, H) bytes of all services per entity (in ``entity_ids`` order) and hour (summed in SQL)."""
    matrix = np.zeros((len(entity_ids), int(dataset.hours)), dtype=np.float64)
    arr = hourly_entity_bytes(session, dataset.id)
    if len(arr) and len(entity_ids):
        matrix[np.searchsorted(entity_ids, arr[:, 0].astype(np.int64)), arr[:, 1].astype(np.int64)] = arr[:, 2]
    return matrix


def cell_hour_bytes(entity_cell: np.ndarray, entity_bytes: np.ndarray, n_cells: int) -> np.ndarray:
    """(C, H) traffic per cell and hour: each entity's bytes of an hour counted at its cell of that hour
    (hours with an unknown cell are left out)."""
    hours = entity_cell.shape[1]
    out = np.zeros((n_cells, hours), dtype=np.float64)
    known = entity_cell >= 0
    hour_index = np.broadcast_to(np.arange(hours), entity_cell.shape)
    np.add.at(out, (entity_cell[known], hour_index[known]), entity_bytes[known])
    return out


def load_city(session: Session, dataset: Dataset) -> CityData:
    """The whole map content of a data set (four SQL queries; about 0.5 s for the default city)."""
    cells = load_cells(session, dataset)
    entities = load_entities(session, dataset)
    entity_ids = entities["id"].to_numpy(dtype=np.int64)
    located = load_entity_cells(session, dataset, entity_ids, cells["id"].to_numpy())
    traffic = cell_hour_bytes(located, entity_hour_bytes(session, dataset, entity_ids), len(cells))
    is_user = (entities["kind"] == "user").to_numpy()
    positive = traffic[traffic > 0]
    return CityData(
        cells=cells,
        cell_hour_bytes=traffic,
        user_keys=entities["key"].to_numpy(dtype=object)[is_user],
        user_cell=located[is_user],
        hours=int(dataset.hours),
        traffic_cap=float(np.percentile(positive, 99)) if positive.size else 1.0,
    )


NEUTRAL_RGB = (238, 240, 243)  # the plain basemap of data sets without a mosaic: a light grey ...
GRID_RGB = (214, 218, 224)  # ... with a faint latitude/longitude grid (its step in the legend)
NEUTRAL_WIDTH = 1024
NEUTRAL_MARGIN = 0.08  # of the cells' extent on each side


def grid_step(span_deg: float) -> float:
    """A round grid step in degrees (1, 2 or 5 x 10^k) that draws 4 to 10 lines over ``span_deg``."""
    span = max(float(span_deg), 1e-6)
    top = math.floor(math.log10(span))
    for exponent in range(top - 2, top + 2):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**exponent
            if span / step <= 10:
                return step
    return span / 5


@dataclass(frozen=True)
class Basemap:
    """What is drawn under the cells: a JPEG data URI, its [west, south, east, north] bounds, and what it is
    (``mosaic``: the synthetic city's own drawing; ``neutral``: a plain grey with a grid every ``grid_deg``
    degrees, for real data, which has no map of its own offline)."""

    uri: str
    bounds: list[float]
    kind: str
    grid_deg: float | None = None

    def light(self, max_px: int = 640) -> Basemap:
        """The same picture at most ``max_px`` wide (maps that redraw often, or small ones)."""
        from PIL import Image

        _, _, data = self.uri.partition(",")
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        image.thumbnail((max_px, max_px))
        return Basemap(_jpeg_uri(image, 70), self.bounds, self.kind, self.grid_deg)

    def legend(self) -> str:
        if self.kind == "mosaic":
            return "basemap: the synthetic city's drawing (land use, streets, river), made with the city"
        km = (self.grid_deg or 0) * _METRES_PER_DEG_LAT / 1000
        return (
            f"basemap: plain grey, grid every {self.grid_deg:g}° (about {km:.3g} km north-south); "
            "real data carries no map, and none is invented"
        )


def _jpeg_uri(image: object, quality: int) -> str:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)  # type: ignore[attr-defined]
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def neutral_basemap(lon: np.ndarray, lat: np.ndarray, width: int = NEUTRAL_WIDTH) -> Basemap:
    """A plain light-grey picture over the cells' extent (plus a margin) with a faint grid at round
    degrees: where the cells are and how far apart, with nothing made up about what is between them."""
    from PIL import Image

    west, east = float(np.min(lon)), float(np.max(lon))
    south, north = float(np.min(lat)), float(np.max(lat))
    pad_lon = max((east - west) * NEUTRAL_MARGIN, 0.005)
    pad_lat = max((north - south) * NEUTRAL_MARGIN, 0.005)
    west, east, south, north = west - pad_lon, east + pad_lon, south - pad_lat, north + pad_lat
    lat0 = (south + north) / 2
    aspect = (north - south) / ((east - west) * math.cos(math.radians(lat0)))
    height = int(min(max(round(width * aspect), 16), 4096))
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = NEUTRAL_RGB
    step = grid_step(max(east - west, north - south))
    for value in np.arange(math.ceil(west / step) * step, east, step):
        rgb[:, int((value - west) / (east - west) * (width - 1))] = GRID_RGB
    for value in np.arange(math.ceil(south / step) * step, north, step):
        rgb[int((north - value) / (north - south) * (height - 1)), :] = GRID_RGB
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG", optimize=True)  # two flat colours: PNG is exact and small
    uri = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")
    return Basemap(uri, [west, south, east, north], "neutral", step)


def load_basemap(session: Session, dataset: Dataset) -> Basemap | None:
    """What is drawn under the cells, or None when no cell has coordinates. The synthetic city gets its own
    mosaic (the engine renders it from the cells' land use, as PNG; re-encoded as JPEG because the browser
    receives it with the map and its texture compresses ~3x better). Every other data set gets the plain
    ``neutral_basemap``: a drawing of land use, streets and a river under real cells would be invented."""
    infos = [c for c in cells_for_dataset(session, dataset) if c.has_position]
    if not infos:
        return None
    if dataset.kind != "synthetic":
        return neutral_basemap(np.array([c.lon for c in infos]), np.array([c.lat for c in infos]))
    png, bounds = render_city_mosaic(infos, width=MOSAIC_WIDTH)
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return Basemap(_jpeg_uri(image, MOSAIC_JPEG_QUALITY), [float(v) for v in bounds], "mosaic")


# --- per-hour views (vectorised) ------------------------------------------------------------------


def traffic_colors(values: np.ndarray, cap: float) -> np.ndarray:
    """(N, 4) uint8 RGBA on the YlOrRd ramp by sqrt(bytes / cap) (a square-root scale: cell traffic is
    heavy-tailed, so a linear scale would leave almost every cell at the light end); 0 bytes = grey."""
    values = np.asarray(values, dtype=float)
    t = np.sqrt(np.clip(values / max(cap, 1e-9), 0.0, 1.0)) * (len(TRAFFIC_RAMP) - 1)
    low = np.minimum(np.floor(t).astype(int), len(TRAFFIC_RAMP) - 2)
    frac = (t - low)[:, None]
    rgb = TRAFFIC_RAMP[low] * (1 - frac) + TRAFFIC_RAMP[low + 1] * frac
    rgba = np.column_stack([rgb, np.full(len(values), 215.0)])
    rgba[values <= 0] = NO_TRAFFIC_RGBA
    return np.rint(rgba).astype(np.uint8)


def land_use_colors(land_use: pd.Series) -> np.ndarray:
    """(N, 4) uint8 RGBA: app.common's colour of each land use (grey when unknown)."""
    palette = {name: (*rgb, 215) for name, rgb in LAND_USE_COLORS.items()}
    default = (*LAND_USE_COLORS[None], 215)
    return np.array([palette.get(name, default) for name in land_use], dtype=np.uint8).reshape(-1, 4)


def users_per_cell(city: CityData, hour: int) -> np.ndarray:
    """(C,) number of users attached to each cell in ``hour``."""
    at = city.user_cell[:, hour] if len(city.user_keys) else np.zeros(0, dtype=np.int32)
    return np.bincount(at[at >= 0], minlength=len(city.cells))


def cell_layer_frame(city: CityData, hour: int, color: str) -> pd.DataFrame:
    """The cells layer's rows for one hour: only what the chart needs (position, colour, tooltip)."""
    cells = city.cells[city.located]
    index = cells.index.to_numpy()
    traffic = city.cell_hour_bytes[index, hour]
    present = users_per_cell(city, hour)[index]
    rgba = traffic_colors(traffic, city.traffic_cap) if color == "traffic" else land_use_colors(cells["land_use"])
    use = cells["land_use"].where(~cells["inferred"], cells["land_use"] + " (inferred)")
    mb = pd.Series(np.round(traffic / 1e6, 2), index=cells.index).astype(str)
    return pd.DataFrame(
        {
            "key": cells["key"],
            "lon": cells["lon"].round(6),
            "lat": cells["lat"].round(6),
            "r": rgba[:, 0],
            "g": rgba[:, 1],
            "b": rgba[:, 2],
            "a": rgba[:, 3],
            "title": cells["key"] + " · " + use,
            "detail": mb + " MB · " + pd.Series([plural(int(n), "user") for n in present], index=cells.index),
        }
    ).reset_index(drop=True)


def user_offsets(n_users: int, lat0: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (dlon, dlat) in degrees per user: a golden-angle spread on a ring around the cell centre, so
    that users in the same cell do not stack and each user keeps its spot from hour to hour."""
    i = np.arange(n_users, dtype=float)
    angle = i * _GOLDEN_ANGLE
    radius = USER_RING_M[0] + (USER_RING_M[1] - USER_RING_M[0]) * np.mod(i * 0.6180339887, 1.0)
    dlon = radius * np.cos(angle) / (_METRES_PER_DEG_LON_EQUATOR * math.cos(math.radians(lat0)))
    dlat = radius * np.sin(angle) / _METRES_PER_DEG_LAT
    return dlon, dlat


def user_layer_frame(city: CityData, hour: int, selected: str | None = None) -> pd.DataFrame:
    """The users layer's rows for one hour: each located user at its cell, jittered; the selected user
    in the accent colour, drawn last (on top)."""
    if not len(city.user_keys):
        return pd.DataFrame(columns=["key", "lon", "lat", "r", "g", "b", "title", "detail"])
    at = city.user_cell[:, hour]
    lon, lat = city.cells["lon"].to_numpy(), city.cells["lat"].to_numpy()
    shown = at >= 0
    shown[shown] = np.isfinite(lon[at[shown]]) & np.isfinite(lat[at[shown]])
    dlon, dlat = user_offsets(len(city.user_keys), float(np.nanmean(lat)) if np.isfinite(lat).any() else 0.0)
    keys = city.user_keys[shown]
    is_selected = keys == selected
    rgb = np.where(is_selected[:, None], np.array(SELECTED_USER_RGB), np.array(USER_RGB))
    frame = pd.DataFrame(
        {
            "key": keys,
            "lon": np.round(lon[at[shown]] + dlon[shown], 6),
            "lat": np.round(lat[at[shown]] + dlat[shown], 6),
            "r": rgb[:, 0],
            "g": rgb[:, 1],
            "b": rgb[:, 2],
            "title": keys,
            "detail": "at " + city.cells["key"].to_numpy()[at[shown]].astype(object),
        }
    )
    return frame.iloc[np.argsort(is_selected, kind="stable")].reset_index(drop=True)


PATH_START_RGB = (253, 187, 132)  # a trajectory goes from light (early in the day) to dark (late)
PATH_END_RGB = (127, 39, 4)
ARROW_M = 70.0  # the direction arrows' length on the map


def day_hours(hour: int, hours: int, origin_hour: int) -> range:
    """The data set's hours of the calendar day that holds ``hour`` (hour 0 is ``origin_hour`` o'clock)."""
    start = int(hour) - (int(origin_hour) + int(hour)) % 24
    return range(max(start, 0), min(start + 24, hours))


@dataclass(frozen=True)
class Trajectory:
    """A user's moves in one day: ``stops`` (one row per visit: cell key, lon, lat, first and last hour,
    its clock times) in order, consecutive hours in the same cell merged, unknown or unplaced hours
    skipped; the map draws the legs between them with arrows, light to dark through the day."""

    user: str
    stops: pd.DataFrame  # key lon lat first last arrive leave
    hours: range

    @property
    def path(self) -> list[list[float]]:
        return self.stops[["lon", "lat"]].to_numpy().round(6).tolist()

    def legs(self) -> pd.DataFrame:
        """One row per move: from, to, its colour (light to dark through the day) and a tooltip."""
        n = len(self.stops) - 1
        if n < 1:
            return pd.DataFrame(columns=["key", "path", "r", "g", "b", "title", "detail"])
        t = np.linspace(0.0, 1.0, n) if n > 1 else np.array([1.0])
        rgb = np.rint(np.outer(1 - t, PATH_START_RGB) + np.outer(t, PATH_END_RGB)).astype(int)
        s = self.stops
        return pd.DataFrame(
            {
                "key": self.user,
                "path": [self.path[i : i + 2] for i in range(n)],
                "r": rgb[:, 0],
                "g": rgb[:, 1],
                "b": rgb[:, 2],
                "title": [f"{self.user}: {s['key'].iat[i]} → {s['key'].iat[i + 1]}" for i in range(n)],
                "detail": [f"left {s['leave'].iat[i]}, arrived {s['arrive'].iat[i + 1]}" for i in range(n)],
            }
        )

    def arrows(self, lat0: float) -> pd.DataFrame:
        """A small triangle at the middle of each move, pointing where the user went (lon/lat polygons)."""
        legs = self.legs()
        rows = []
        scale_lon = _METRES_PER_DEG_LON_EQUATOR * math.cos(math.radians(lat0))
        for _, leg in legs.iterrows():
            (x0, y0), (x1, y1) = leg["path"]
            dx, dy = (x1 - x0) * scale_lon, (y1 - y0) * _METRES_PER_DEG_LAT  # metres
            length = math.hypot(dx, dy)
            if length < 1e-6:
                continue
            ux, uy = dx / length, dy / length
            size = min(ARROW_M, length / 3)
            mx, my = (x0 + x1) / 2 * scale_lon, (y0 + y1) / 2 * _METRES_PER_DEG_LAT
            tip = (mx + ux * size / 2, my + uy * size / 2)
            back = (mx - ux * size / 2, my - uy * size / 2)
            corners = [tip, (back[0] - uy * size / 2.5, back[1] + ux * size / 2.5)]
            corners.append((back[0] + uy * size / 2.5, back[1] - ux * size / 2.5))
            polygon = [[round(x / scale_lon, 7), round(y / _METRES_PER_DEG_LAT, 7)] for x, y in corners]
            rows.append({"polygon": polygon, "r": leg["r"], "g": leg["g"], "b": leg["b"]})
        return pd.DataFrame(rows, columns=["polygon", "r", "g", "b"])

    def labels(self) -> pd.DataFrame:
        """One label per cell visited: its arrival times that day in order ("08:00, 19:00")."""
        if self.stops.empty:
            return pd.DataFrame(columns=["key", "lon", "lat", "text"])
        grouped = self.stops.groupby("key", sort=False).agg(lon=("lon", "first"), lat=("lat", "first"))
        grouped["text"] = self.stops.groupby("key", sort=False)["arrive"].agg(", ".join)
        return grouped.reset_index()


def day_trajectory(city: CityData, user: str, hour: int, origin_hour: int = 0) -> Trajectory:
    """Where ``user`` went on the day of ``hour`` (see ``Trajectory``); empty stops for an unknown user."""
    hours = day_hours(hour, city.hours, origin_hour)
    columns = ["key", "lon", "lat", "first", "last", "arrive", "leave"]
    found = np.flatnonzero(city.user_keys == user)
    if not found.size or not len(hours):
        return Trajectory(user, pd.DataFrame(columns=columns), hours)
    at = city.user_cell[found[0], list(hours)]
    when = np.array(list(hours))
    keep = at >= 0
    keep[keep] = city.located[at[keep]]
    at, when = at[keep], when[keep]
    if not at.size:
        return Trajectory(user, pd.DataFrame(columns=columns), hours)
    starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
    ends = np.r_[starts[1:] - 1, at.size - 1]
    cells = at[starts]
    clock = lambda h: f"{(int(h) + origin_hour) % 24:02d}:00"  # noqa: E731
    stops = pd.DataFrame(
        {
            "key": city.cells["key"].to_numpy()[cells],
            "lon": city.cells["lon"].to_numpy()[cells].astype(float),
            "lat": city.cells["lat"].to_numpy()[cells].astype(float),
            "first": when[starts],
            "last": when[ends],
            "arrive": [clock(h) for h in when[starts]],
            "leave": [f"{(int(h) + origin_hour + 1) % 24:02d}:00" for h in when[ends]],
        }
    )
    return Trajectory(user, stops, hours)


def focus_view(city: CityData, cell_key: str, zoom: float = 15.0) -> pdk.ViewState | None:
    """A close view centred on one cell (the map's "find"), or None when it has no coordinates."""
    row = city.cells[city.cells["key"] == cell_key]
    if row.empty or not np.isfinite(row["lon"].iat[0]) or not np.isfinite(row["lat"].iat[0]):
        return None
    return pdk.ViewState(longitude=float(row["lon"].iat[0]), latitude=float(row["lat"].iat[0]), zoom=zoom)


# --- chart ----------------------------------------------------------------------------------------


def initial_view(bounds: list[float], width_px: int = 900, height_px: int = 620) -> pdk.ViewState:
    """A view that shows the whole [west, south, east, north] extent (web-mercator zoom)."""
    west, south, east, north = bounds
    lat0 = (south + north) / 2
    lon_span = max(east - west, 1e-4)
    lat_span = max(north - south, 1e-4) / math.cos(math.radians(lat0))
    # deck.gl zoom levels are defined on 512-pixel tiles: 2**zoom * 512 pixels span 360 degrees.
    zoom = math.log2(min(width_px / lon_span, height_px / lat_span) * 360.0 / 512.0)
    return pdk.ViewState(longitude=(west + east) / 2, latitude=lat0, zoom=round(min(max(zoom, 2.0), 16.0), 2))


def cell_bounds(city: CityData) -> list[float]:
    """[west, south, east, north] of the located cells."""
    cells = city.cells[city.located]
    return [float(cells["lon"].min()), float(cells["lat"].min()), float(cells["lon"].max()), float(cells["lat"].max())]


class Deck(pdk.Deck):
    """A pydeck chart whose JSON is made by the C encoder: pydeck's own ``to_json`` indents (``indent=2``),
    which sends every row through Python's pure-Python JSON encoder (about 45 ms for the Map's 900 rows,
    redone at every hour step); the same JSON without indentation takes a few milliseconds."""

    def to_json(self) -> str:
        from pydeck.bindings.json_tools import default_serialize

        return json.dumps(self, sort_keys=True, default=default_serialize)


def records(frame: pd.DataFrame) -> list[dict]:
    """A layer's rows as plain dicts, column by column (``.tolist()``): pandas' ``to_dict("records")`` boxes
    every value one by one (about 20 ms for the Map's 900 rows at every hour step)."""
    columns = [frame[c].tolist() for c in frame.columns]
    names = [str(c) for c in frame.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def basemap_layer(basemap: Basemap) -> pdk.Layer:
    # A data URI must be quoted, or pydeck parses it as a JavaScript expression.
    return pdk.Layer("BitmapLayer", id="basemap", image=f'"{basemap.uri}"', bounds=basemap.bounds, opacity=0.9)


def build_deck(
    *,
    basemap: Basemap | None,
    cells: pd.DataFrame,
    users: pd.DataFrame,
    trajectory: Trajectory | None,
    view: pdk.ViewState,
    focus: pd.DataFrame | None = None,
) -> pdk.Deck:
    """The offline map: basemap bitmap, cells, the selected user's day (legs light to dark, an arrow on each
    leg, arrival times at each cell), users, and a ring on the cell found with "Find". Every layer has an
    ``id`` (the Streamlit selection is keyed by it); no map provider, so nothing is fetched."""
    layers = [basemap_layer(basemap)] if basemap is not None else []
    layers.append(
        pdk.Layer(
            "ScatterplotLayer",
            id="cells",
            data=records(cells),
            get_position=["lon", "lat"],
            get_fill_color="[r, g, b, a]",
            get_radius=CELL_RADIUS_M,
            radius_min_pixels=3,
            stroked=True,
            get_line_color=[255, 255, 255, 160],
            line_width_min_pixels=0.5,
            pickable=True,
            auto_highlight=True,
        )
    )
    if trajectory is not None and len(trajectory.stops) > 1:
        lat0 = float(trajectory.stops["lat"].mean())
        layers.append(
            pdk.Layer(
                "PathLayer",
                id="trajectory",
                data=records(trajectory.legs()),
                get_path="path",
                get_color="[r, g, b]",
                get_width=25,
                width_min_pixels=3,
                joint_rounded=True,
                cap_rounded=True,
                pickable=True,
            )
        )
        layers.append(
            pdk.Layer(
                "PolygonLayer",
                id="trajectory_arrows",
                data=records(trajectory.arrows(lat0)),
                get_polygon="polygon",
                get_fill_color="[r, g, b]",
                stroked=False,
            )
        )
    if len(users):
        layers.append(
            pdk.Layer(
                "ScatterplotLayer",
                id="users",
                data=records(users),
                get_position=["lon", "lat"],
                get_fill_color="[r, g, b, 230]",
                get_radius=USER_RADIUS_M,
                radius_min_pixels=2,
                stroked=True,
                get_line_color=[255, 255, 255, 220],
                line_width_min_pixels=0.5,
                pickable=True,
                auto_highlight=True,
            )
        )
    if trajectory is not None and len(trajectory.stops):
        layers.append(
            pdk.Layer(
                "TextLayer",
                id="trajectory_times",
                data=records(trajectory.labels()),
                get_position=["lon", "lat"],
                get_text="text",
                get_size=12,
                get_color=list(PATH_END_RGB),
                get_pixel_offset=[0, -16],
                background=True,
                get_background_color=[255, 255, 255, 220],
                font_weight=600,
            )
        )
    if focus is not None and len(focus):
        layers.append(
            pdk.Layer(
                "ScatterplotLayer",
                id="focus",
                data=records(focus),
                get_position=["lon", "lat"],
                get_radius=CELL_RADIUS_M * 2.2,
                radius_min_pixels=10,
                filled=False,
                stroked=True,
                get_line_color=list(SELECTED_USER_RGB),
                line_width_min_pixels=3,
            )
        )
    return Deck(layers=layers, initial_view_state=view, map_provider=None, tooltip={"text": "{title}\n{detail}"})


# --- legends --------------------------------------------------------------------------------------


def land_use_legend(land_uses: list[str]) -> str:
    """HTML swatches for the land uses present on the map (app.common colours)."""
    items = []
    for name in sorted(set(land_uses)):
        r, g, b = LAND_USE_COLORS.get(name, LAND_USE_COLORS[None])
        items.append(
            f'<span style="white-space:nowrap;margin-right:14px">'
            f'<span style="display:inline-block;width:12px;height:12px;border-radius:6px;'
            f'background:rgb({r},{g},{b});margin-right:4px;vertical-align:middle"></span>{name}</span>'
        )
    return "".join(items)


def traffic_legend(cap: float) -> str:
    """HTML gradient of the traffic scale with its MB values (square-root scale, so ticks are uneven)."""
    stops = ", ".join(f"rgb({int(r)},{int(g)},{int(b)})" for r, g, b in TRAFFIC_RAMP)
    ticks = "".join(
        f"<span>{format_bytes(cap * t * t)}{'+' if t == 1 else ''}</span>" for t in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    gr, gg, gb, _ = NO_TRAFFIC_RGBA
    return (
        f'<div style="max-width:420px"><div style="height:12px;border-radius:3px;'
        f'background:linear-gradient(to right, {stops})"></div>'
        f'<div style="display:flex;justify-content:space-between;font-size:0.8em">{ticks}</div>'
        f'<div style="font-size:0.8em"><span style="display:inline-block;width:10px;height:10px;'
        f'background:rgb({gr},{gg},{gb});margin-right:4px"></span>no traffic in this hour · '
        f"bytes of the users attached to the cell in that hour</div></div>"
    )


def trajectory_legend(user: str) -> str:
    """HTML key of a user's day: the legs' colour from early to late, the arrows, the arrival times."""
    start = "rgb({},{},{})".format(*PATH_START_RGB)
    end = "rgb({},{},{})".format(*PATH_END_RGB)
    return (
        f'<span style="white-space:nowrap"><b>{user}</b>\'s day: '
        f'<span style="display:inline-block;width:60px;height:6px;border-radius:3px;vertical-align:middle;'
        f'background:linear-gradient(to right, {start}, {end})"></span> early → late, '
        "an arrow on each move, arrival times at each cell</span>"
    )


# --- page glue --------------------------------------------------------------------------------------


def busiest_hour(city: CityData) -> int:
    """The hour with the most traffic over all cells: the default view (something to see at once)."""
    totals = city.cell_hour_bytes.sum(axis=0)
    return int(np.argmax(totals)) if totals.size else 0


def picked_object(selection: dict | None) -> tuple[str, str] | None:
    """What a click on the map opens: ("cell", key) or ("user", key), from a Streamlit pydeck selection
    (``{"objects": {layer_id: [row, ...]}}``); None when nothing pickable was clicked."""
    objects = (selection or {}).get("objects") or {}
    for layer, kind in (("cells", "cell"), ("users", "user"), ("trajectory", "user")):
        rows = objects.get(layer) or []
        if rows and rows[0].get("key"):
            return kind, str(rows[0]["key"])
    return None
