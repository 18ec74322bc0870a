"""``dir:PATH``: tiles from a folder, in any of three layouts detected from the files present.

1. Per cell: ``PATH/<cell key>.png|jpg|jpeg`` (one image per cell, named by the data set's cell key).
2. Web-mercator XYZ: ``PATH/<z>/<x>/<y>.png|jpg|jpeg`` (what most tile downloaders write; y grows
   southward). Option ``datum="gcj02"`` for imagery from Chinese providers (AMap, Tencent), which
   is drawn in GCJ-02 coordinates on the same grid.
3. Baidu: ``PATH/**/<z>_<x>_<y>_s.jpg`` (BD09 tiles; y grows northward; subfolders are searched,
   so a folder holding one subfolder per city works). See ``geo.py`` for the coordinate chain.

A cell is looked up in that order (its own image wins). The zoom is the ``zoom`` option, else 16
when the folder has zoom-16 tiles, else the highest zoom present. A cell whose tile is not in the
folder gets ``None`` (no imagery), never an error; a corrupt image is an ``InputError`` naming its file.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.env.tiles.core import CellInfo, TileImage, tile_from_bytes
from engine.env.tiles.geo import lat_lon_to_xyz, wgs84_to_baidu_tile, wgs84_to_gcj02
from engine.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_BAIDU_NAME = re.compile(r"^(\d{1,2})_(-?\d+)_(-?\d+)_s\.(?:png|jpe?g)$", re.IGNORECASE)
_INT = re.compile(r"^\d+$")
DEFAULT_ZOOM = 16
LAYOUTS = ("cell", "xyz", "baidu")


def _choose_zoom(present: set[int], requested: int | None) -> int | None:
    if requested is not None:
        return requested
    if not present:
        return None
    return DEFAULT_ZOOM if DEFAULT_ZOOM in present else max(present)


class FolderSource:
    """Tiles read from a folder (see the module docstring for the layouts)."""

    def __init__(
        self, path: str | Path, *, zoom: int | None = None, datum: str = "wgs84", spec: str | None = None
    ) -> None:
        self.root = Path(path).expanduser()
        self.spec = spec or f"dir:{path}"
        if not self.root.is_dir():
            raise InputError(
                "no such folder",
                file=self.root,
                field="--tiles",
                hint="expected dir:PATH with images named <cell key>.png, <z>/<x>/<y>.png or <z>_<x>_<y>_s.jpg",
            )
        if datum not in ("wgs84", "gcj02"):
            raise InputError(f"expected 'wgs84' or 'gcj02', got {datum!r}", field="datum")
        self.datum = datum
        self.per_cell: dict[str, Path] = {}
        self.baidu: dict[tuple[int, int, int], Path] = {}
        xyz_zooms: set[int] = set()
        for entry in self.root.iterdir():
            if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES and not _BAIDU_NAME.match(entry.name):
                self.per_cell.setdefault(entry.stem, entry)
            elif (
                entry.is_dir()
                and _INT.match(entry.name)
                and any(sub.is_dir() and _INT.match(sub.name) for sub in entry.iterdir())
            ):
                xyz_zooms.add(int(entry.name))
        for entry in self.root.rglob("*_s.*"):
            match = _BAIDU_NAME.match(entry.name)
            if match and entry.is_file():
                z, x, y = (int(g) for g in match.groups())
                self.baidu.setdefault((z, x, y), entry)
        self.layouts = [
            name for name, present in (("cell", self.per_cell), ("xyz", xyz_zooms), ("baidu", self.baidu)) if present
        ]
        if not self.layouts:
            raise InputError(
                "found no tile images in this folder",
                file=self.root,
                field="--tiles",
                hint="expected <cell key>.png|jpg, <z>/<x>/<y>.png|jpg or <z>_<x>_<y>_s.jpg",
            )
        self.xyz_zoom = _choose_zoom(xyz_zooms, zoom)
        self.baidu_zoom = _choose_zoom({z for z, _, _ in self.baidu}, zoom)

    def _xyz_path(self, cell: CellInfo, zoom: int) -> Path | None:
        lat, lon = cell.lat_lon()
        if self.datum == "gcj02":
            lat, lon = wgs84_to_gcj02(lat, lon)
        x, y = lat_lon_to_xyz(lat, lon, zoom)
        for suffix in IMAGE_SUFFIXES:
            path = self.root / str(zoom) / str(x) / f"{y}{suffix}"
            if path.is_file():
                return path
        return None

    def locate(self, cell: CellInfo) -> tuple[Path, int | None] | None:
        """The file that holds the cell's imagery and its zoom, or None."""
        if cell.key in self.per_cell:
            return self.per_cell[cell.key], None
        if not cell.has_position:
            return None
        if "xyz" in self.layouts and self.xyz_zoom is not None:  # a zoom is chosen when the layout is there
            path = self._xyz_path(cell, self.xyz_zoom)
            if path is not None:
                return path, self.xyz_zoom
        if self.baidu and self.baidu_zoom is not None:
            x, y = wgs84_to_baidu_tile(*cell.lat_lon(), self.baidu_zoom)
            path = self.baidu.get((self.baidu_zoom, x, y))
            if path is not None:
                return path, self.baidu_zoom
        return None

    def fetch(self, cell: CellInfo) -> TileImage | None:
        found = self.locate(cell)
        if found is None:
            return None
        path, zoom = found
        return tile_from_bytes(path.read_bytes(), origin=str(path), zoom=zoom, source=self.spec)
