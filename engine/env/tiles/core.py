"""What every tile source shares: the cell it is asked about, the image it returns, validation, storage."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from db.models import Cell, Dataset, Tile
from engine.errors import InputError

log = logging.getLogger(__name__)

TILE_SIZE = 256
JPEG_QUALITY = 90
MAX_SOURCE_PIXELS = 64_000_000  # refuse anything bigger before decoding it (decompression bombs)
STORE_CHUNK = 64  # cells fetched (and rows inserted) per round in store_tiles


@dataclass(frozen=True)
class CellInfo:
    """A cell as the tile sources see it: where it is and what is around it."""

    id: int
    key: str
    lat: float | None = None
    lon: float | None = None
    land_use: str | None = None
    poi_counts: list[int] = field(default_factory=list)
    poi_categories: list[str] = field(default_factory=list)
    x_km: float | None = None  # east of the data set's centre
    y_km: float | None = None  # north of the data set's centre

    @property
    def has_position(self) -> bool:
        return self.lat is not None and self.lon is not None

    def lat_lon(self) -> tuple[float, float]:
        """(lat, lon) of a cell that has a position."""
        if self.lat is None or self.lon is None:
            raise ValueError(f"cell {self.key!r} has no position")
        return self.lat, self.lon


@dataclass(frozen=True)
class TileImage:
    """One normalised 256 x 256 RGB image (PNG or JPEG bytes) of a cell's surroundings."""

    data: bytes
    media_type: str  # image/png | image/jpeg
    zoom: int | None
    source: str


class TileFetchError(RuntimeError):
    """A tile source could not be reached or answered wrongly (not the same as "no imagery here")."""


@runtime_checkable
class TileSource(Protocol):
    """Something that returns a cell's image; ``None`` means "no imagery for this cell" (allowed)."""

    spec: str

    def fetch(self, cell: CellInfo) -> TileImage | None: ...


# --- Validation -------------------------------------------------------------------------------------


def sniff_media_type(data: bytes) -> str:
    """``image/jpeg`` or ``image/png`` from the leading bytes (validate_tile only returns these)."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return "application/octet-stream"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB.

    - Alpha (RGBA, LA, PA, P with transparency) is flattened onto white: a transparent pixel in a map
      tile means "nothing drawn here", and white is what a map viewer shows behind it.
    - 16/32-bit greyscale (I;16, I, F) is scaled to 8 bits (I;16 by 1/257, the others by their own
      min..max), because Pillow's plain conversion would clip everything above 255 to white.
    - Everything else (L, 1, P, CMYK, YCbCr, LAB, HSV) goes through Pillow's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scaled = values / 257.0
        else:
            low, high = float(values.min()), float(values.max())
            scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_tile_size(image: Image.Image) -> Image.Image:
    """Centre-crop to a square (keeps the aspect ratio of what is shown), then resize to 256 x 256."""
    width, height = image.size
    if (width, height) == (TILE_SIZE, TILE_SIZE):
        return image
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    resample = Image.Resampling.LANCZOS if side > TILE_SIZE else Image.Resampling.BICUBIC
    return square.resize((TILE_SIZE, TILE_SIZE), resample)


def validate_tile(data: bytes, *, origin: str) -> bytes:
    """Decode ``data`` and return it as a 256 x 256 RGB PNG or JPEG; bad images -> InputError.

    Choices (documented for the people who bring their own imagery):
    - Corrupt, truncated, empty or unknown-format bytes raise ``InputError`` naming ``origin`` (the
      file path or URL); nothing is guessed. Images over 64 megapixels are refused before decoding.
    - Modes: see ``_to_rgb`` (alpha on white, 16-bit scaled, the rest via Pillow). Multi-frame images
      (GIF, TIFF) keep their first frame.
    - Size: anything other than 256 x 256 is centre-cropped to a square, then resized (Lanczos down,
      bicubic up), so a 512 x 300 image keeps its middle 300 x 300 and is never stretched.
    - Encoding: a source that was already a 256 x 256 RGB JPEG or PNG passes through byte for byte
      (no second JPEG loss). Otherwise a JPEG source is re-encoded as JPEG at quality 90 (photos stay
      small) and anything else (PNG, WebP, GIF, TIFF, BMP, ...) becomes PNG (lossless).
    """
    if not data:
        raise InputError("empty image (0 bytes); expected a PNG or JPEG tile", file=origin)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_SOURCE_PIXELS:
            raise InputError(
                f"image of {width} x {height} pixels is too large for a tile (at most {MAX_SOURCE_PIXELS:,} pixels)",
                file=origin,
            )
        source_format = image.format
        image.load()  # decodes everything now: truncated data fails here, not later
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InputError(
            f"not a readable image ({type(exc).__name__}: {exc})",
            file=origin,
            hint="expected a complete PNG or JPEG tile",
        ) from exc
    if source_format in ("JPEG", "PNG") and image.mode == "RGB" and image.size == (TILE_SIZE, TILE_SIZE):
        return bytes(data)
    normalised = _to_tile_size(_to_rgb(image))
    out = io.BytesIO()
    if source_format == "JPEG":
        normalised.save(out, format="JPEG", quality=JPEG_QUALITY)
    else:
        normalised.save(out, format="PNG")
    return out.getvalue()


def tile_from_bytes(data: bytes, *, origin: str, zoom: int | None, source: str) -> TileImage:
    """validate_tile + the media type: what folder, MBTiles and HTTP sources return."""
    clean = validate_tile(data, origin=origin)
    return TileImage(data=clean, media_type=sniff_media_type(clean), zoom=zoom, source=source)


# --- Cells of a data set --------------------------------------------------------------------------

_KM_PER_DEG_LAT = 110.574
_KM_PER_DEG_LON_EQUATOR = 111.320


def cells_for_dataset(session: Session, dataset: Dataset | int) -> list[CellInfo]:
    """Every cell of ``dataset`` (ordered by id) with what tile sources need.

    ``x_km``/``y_km`` come from the cell's attrs (the synthetic city stores them); otherwise they are
    computed from lat/lon around the mean position of the data set's located cells, so that global
    features of the synthetic renderer (river, arterial roads) still agree between neighbours.
    """
    if isinstance(dataset, int):
        found = session.get(Dataset, dataset)
        if found is None:
            raise InputError(f"no data set with id {dataset}", field="dataset")
        dataset = found
    categories = list(dataset.poi_categories or [])
    rows = session.scalars(select(Cell).where(Cell.dataset_id == dataset.id).order_by(Cell.id)).all()
    located = [(c.lat, c.lon) for c in rows if c.lat is not None and c.lon is not None]
    lat0 = float(np.mean([p[0] for p in located])) if located else 0.0
    lon0 = float(np.mean([p[1] for p in located])) if located else 0.0
    km_per_deg_lon = _KM_PER_DEG_LON_EQUATOR * math.cos(math.radians(lat0))
    cells = []
    for c in rows:
        attrs = c.attrs or {}
        x_km, y_km = attrs.get("x_km"), attrs.get("y_km")
        if (x_km is None or y_km is None) and c.lat is not None and c.lon is not None:
            x_km, y_km = (c.lon - lon0) * km_per_deg_lon, (c.lat - lat0) * _KM_PER_DEG_LAT
        cells.append(
            CellInfo(
                id=c.id,
                key=c.key,
                lat=c.lat,
                lon=c.lon,
                land_use=c.land_use,
                poi_counts=[int(v) for v in (c.poi_counts or [])],
                poi_categories=categories,
                x_km=None if x_km is None else float(x_km),
                y_km=None if y_km is None else float(y_km),
            )
        )
    return cells


# --- Storage ----------------------------------------------------------------------------------------


def _chunks(items: Sequence[CellInfo], size: int) -> Iterable[Sequence[CellInfo]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def store_tiles(
    session: Session,
    dataset: Dataset | int,
    source: TileSource,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Replace the Tile rows of every cell of ``dataset`` with what ``source`` returns.

    Runs in the caller's transaction and never commits: if the source fails part-way (unreachable
    server, ``TileFetchError``, any unexpected error) the exception propagates and a rollback leaves
    the tiles table exactly as before. One bad image (``InputError`` from validation) is counted as
    ``failed`` and logged, and the other cells go on. Sources with ``fetch_many`` (HTTP) are asked for
    a chunk of cells at a time so their downloads run concurrently.
    ``progress(done, total)`` is called after each chunk. Returns ``{tiles, missing, failed}``.
    """
    cells = cells_for_dataset(session, dataset)
    dataset_id = dataset if isinstance(dataset, int) else dataset.id
    session.execute(delete(Tile).where(Tile.cell_id.in_(select(Cell.id).where(Cell.dataset_id == dataset_id))))
    counts = {"tiles": 0, "missing": 0, "failed": 0}
    spec = source.spec[:500]
    fetch_many = getattr(source, "fetch_many", None)
    done = 0
    for chunk in _chunks(cells, STORE_CHUNK):
        if fetch_many is not None:
            results = fetch_many(chunk, return_errors=True)
        else:
            results = []
            for cell in chunk:
                try:
                    results.append(source.fetch(cell))
                except InputError as exc:
                    results.append(exc)
        rows = []
        for cell, result in zip(chunk, results, strict=True):
            if isinstance(result, InputError):
                counts["failed"] += 1
                log.warning("tile for cell %s skipped: %s", cell.key, result)
            elif isinstance(result, BaseException):
                raise result
            elif result is None:
                counts["missing"] += 1
            else:
                counts["tiles"] += 1
                rows.append(
                    {
                        "cell_id": cell.id,
                        "image": result.data,
                        "media_type": result.media_type,
                        "source": spec,
                        "zoom": result.zoom,
                    }
                )
        if rows:
            session.execute(insert(Tile), rows)
        done += len(chunk)
        if progress is not None:
            progress(done, len(cells))
    return counts
