"""Satellite tiles of each cell's surroundings (paper Sec. IV-A: the image the CLIP encoder sees).

Where a tile comes from is a ``TileSource`` chosen by a spec string (the CLI's ``--tiles``):

- ``synthetic``          rendered from land use and POIs (``synthetic.py``; the default for synthetic
                         cities, and the only one that works with no imagery at all);
- ``dir:PATH``           a folder of images: per cell key, ``{z}/{x}/{y}``, or Baidu ``z_x_y_s.jpg``
                         (``folder.py``; the BD09 coordinate chain is in ``geo.py``);
- ``mbtiles:PATH``       an MBTiles file (``mbtiles.py``);
- ``xyz:URL_TEMPLATE``   an HTTP tile server with ``{z}/{x}/{y}`` (and ``{s}``), cached on disk
                         (``xyz.py``).

Every source returns a ``TileImage`` (256 x 256 RGB, PNG or JPEG, normalised by ``validate_tile``) or
``None`` when it has no imagery for the cell. ``store_tiles`` writes one data set's tiles into the
``tiles`` table inside the caller's transaction; ``render_city_mosaic`` draws the city-wide basemap.
"""

from __future__ import annotations

from typing import Any

from engine.env.tiles.core import (
    TILE_SIZE,
    CellInfo,
    TileFetchError,
    TileImage,
    TileSource,
    cells_for_dataset,
    sniff_media_type,
    store_tiles,
    validate_tile,
)
from engine.env.tiles.folder import FolderSource
from engine.env.tiles.mbtiles import MBTilesSource
from engine.env.tiles.synthetic import (
    SyntheticSource,
    infer_land_use,
    render_city_mosaic,
    render_tile,
    render_tile_array,
)
from engine.env.tiles.xyz import USER_AGENT, XYZSource
from engine.errors import InputError

ACCEPTED_SPECS = ("synthetic", "dir:PATH", "mbtiles:PATH", "xyz:URL_TEMPLATE")
_OPTIONS = {
    "synthetic": set(),
    "dir": {"zoom", "datum"},
    "mbtiles": {"zoom", "datum"},
    "xyz": {
        "zoom",
        "cache_dir",
        "timeout",
        "retries",
        "backoff",
        "max_concurrency",
        "subdomains",
        "datum",
        "user_agent",
    },
}


def open_tile_source(spec: str, **options: Any) -> TileSource:
    """The tile source named by ``spec`` (see the module docstring); bad specs -> InputError."""
    text = (spec or "").strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    accepted = ", ".join(ACCEPTED_SPECS)
    if kind not in _OPTIONS or (kind == "synthetic" and rest) or (kind != "synthetic" and not rest.strip()):
        hint = "e.g. synthetic, dir:./tiles, mbtiles:./city.mbtiles, xyz:https://host/{z}/{x}/{y}.png"
        raise InputError(f"expected one of {accepted}; got {spec!r}", field="--tiles", hint=hint)
    unknown = sorted(set(options) - _OPTIONS[kind])
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for {kind} tiles; accepted: {allowed}", field="--tiles"
        )
    if kind == "synthetic":
        return SyntheticSource()
    if kind == "dir":
        return FolderSource(rest, spec=text, **options)
    if kind == "mbtiles":
        return MBTilesSource(rest, spec=text, **options)
    return XYZSource(rest, spec=text, **options)


__all__ = [
    "ACCEPTED_SPECS",
    "TILE_SIZE",
    "USER_AGENT",
    "CellInfo",
    "FolderSource",
    "MBTilesSource",
    "SyntheticSource",
    "TileFetchError",
    "TileImage",
    "TileSource",
    "XYZSource",
    "cells_for_dataset",
    "infer_land_use",
    "open_tile_source",
    "render_city_mosaic",
    "render_tile",
    "render_tile_array",
    "sniff_media_type",
    "store_tiles",
    "validate_tile",
]
