"""``mbtiles:PATH``: raster tiles from an MBTiles file (SQLite; spec 1.3).

MBTiles stores rows in the TMS scheme (row 0 at the south), so the XYZ y of a cell's tile is
flipped: ``tile_row = 2**z - 1 - y``. The zoom is the ``zoom`` option, else 16 when the file holds
zoom 16, else its highest zoom (``maxzoom`` in the metadata, or the tiles themselves). A missing tile
is ``None``; a file that is not SQLite, has no ``tiles`` table, or holds vector tiles is an
``InputError`` naming the file. The file is opened read-only.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from engine.env.tiles.core import CellInfo, TileImage, tile_from_bytes
from engine.env.tiles.geo import lat_lon_to_xyz, wgs84_to_gcj02
from engine.errors import InputError

DEFAULT_ZOOM = 16


class MBTilesSource:
    """Raster tiles read from an MBTiles file."""

    def __init__(
        self, path: str | Path, *, zoom: int | None = None, datum: str = "wgs84", spec: str | None = None
    ) -> None:
        self.path = Path(path).expanduser()
        self.spec = spec or f"mbtiles:{path}"
        if not self.path.is_file():
            raise InputError("no such file", file=self.path, field="--tiles", hint="expected mbtiles:PATH.mbtiles")
        if datum not in ("wgs84", "gcj02"):
            raise InputError(f"expected 'wgs84' or 'gcj02', got {datum!r}", field="datum")
        self.datum = datum
        self._lock = threading.Lock()
        not_mbtiles = "not an MBTiles file: expected an SQLite database with a 'tiles' table"
        try:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            query = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
            tables = {row[0] for row in self._db.execute(query)}
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{not_mbtiles} ({exc})", file=self.path) from exc
        if "tiles" not in tables:
            self._db.close()
            raise InputError(not_mbtiles, file=self.path)
        self.metadata: dict[str, str] = {}
        if "metadata" in tables:
            self.metadata = {str(k): str(v) for k, v in self._db.execute("SELECT name, value FROM metadata")}
        fmt = self.metadata.get("format", "").lower()
        if fmt in ("pbf", "mvt"):
            self._db.close()
            raise InputError("holds vector tiles (format pbf); expected raster imagery (png/jpg/webp)", file=self.path)
        if zoom is None:
            zooms = {int(z) for (z,) in self._db.execute("SELECT DISTINCT zoom_level FROM tiles")}
            if not zooms and self.metadata.get("maxzoom", "").isdigit():
                zooms = {int(self.metadata["maxzoom"])}
            zoom = DEFAULT_ZOOM if DEFAULT_ZOOM in zooms or not zooms else max(zooms)
        self.zoom = int(zoom)

    def fetch(self, cell: CellInfo) -> TileImage | None:
        if not cell.has_position:
            return None
        lat, lon = cell.lat_lon()
        if self.datum == "gcj02":
            lat, lon = wgs84_to_gcj02(lat, lon)
        x, y = lat_lon_to_xyz(lat, lon, self.zoom)
        row = 2**self.zoom - 1 - y  # TMS
        with self._lock:
            found = self._db.execute(
                "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
                (self.zoom, x, row),
            ).fetchone()
        if found is None or found[0] is None:
            return None
        origin = f"{self.path} (z={self.zoom}, x={x}, y={y}, tms_row={row})"
        return tile_from_bytes(bytes(found[0]), origin=origin, zoom=self.zoom, source=self.spec)

    def close(self) -> None:
        self._db.close()
