"""Tile sources, validation, the synthetic renderer and storage (HTTP is in test_tiles_http.py)."""

from __future__ import annotations

import io
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from db import open_database
from db.models import Tile
from db.queries import store_dataset
from engine.data.city import LAND_USES, POI_CATEGORIES, CityConfig, generate_city
from engine.env.tiles import (
    CellInfo,
    FolderSource,
    MBTilesSource,
    SyntheticSource,
    TileFetchError,
    TileImage,
    cells_for_dataset,
    open_tile_source,
    render_city_mosaic,
    render_tile,
    render_tile_array,
    store_tiles,
    validate_tile,
)
from engine.env.tiles.geo import baidu_tile_center_wgs84, lat_lon_to_xyz, wgs84_to_baidu_tile
from engine.errors import InputError

SHARED_TILES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "tiles"


def _cells_of(content) -> list[CellInfo]:
    return [
        CellInfo(
            id=i,
            key=content.cell_keys[i],
            lat=float(content.cell_lat[i]),
            lon=float(content.cell_lon[i]),
            land_use=content.cell_land_use[i],
            poi_counts=[int(v) for v in content.cell_poi[i]],
            poi_categories=list(POI_CATEGORIES),
            x_km=content.cell_attrs[i]["x_km"],
            y_km=content.cell_attrs[i]["y_km"],
        )
        for i in range(len(content.cell_keys))
    ]


@pytest.fixture(scope="module")
def city_cells() -> list[CellInfo]:
    return _cells_of(generate_city(CityConfig(users=20, cells=600, days=1, seed=3)))


@pytest.fixture(scope="module")
def rendered_by_land_use(city_cells) -> dict[str, list[np.ndarray]]:
    """20 rendered tiles per land use (cells re-keyed where a land use has fewer than 20)."""
    out = {}
    for land_use in LAND_USES:
        pool = [c for c in city_cells if c.land_use == land_use]
        chosen = [
            pool[i] if i < len(pool) else replace(pool[i % len(pool)], key=f"{pool[i % len(pool)].key}-{i}")
            for i in range(20)
        ]
        out[land_use] = [render_tile_array(c) for c in chosen]
    return out


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **kwargs)
    return out.getvalue()


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- Synthetic renderer -----------------------------------------------------------------------------


def test_synthetic_tile_is_a_deterministic_256px_rgb_jpeg(city_cells):
    cell = city_cells[5]
    first, again = render_tile(cell), render_tile(replace(cell))
    assert first == again
    image = _decode(first)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (256, 256)
    assert render_tile(replace(cell, key=cell.key + "x")) != first
    tile = SyntheticSource().fetch(cell)
    assert tile.data == first and tile.media_type == "image/jpeg" and tile.source == "synthetic"


def test_parks_are_green_and_cbd_is_grey_and_dark(rendered_by_land_use):
    def green_share(a: np.ndarray) -> float:
        a = a.astype(int)
        return float(((a[..., 1] > a[..., 0] + 10) & (a[..., 1] > a[..., 2] + 10)).mean())

    green = {lu: np.mean([green_share(a) for a in arrays]) for lu, arrays in rendered_by_land_use.items()}
    assert green["park"] > 0.6 and green["cbd"] < 0.15 and green["park"] > 5 * green["cbd"]
    assert green["university"] > green["residential"] > green["commercial"]
    dark = {lu: np.mean([(a.mean(axis=2) < 70).mean() for a in arrays]) for lu, arrays in rendered_by_land_use.items()}
    assert dark["cbd"] > 2 * dark["industrial"]  # towers cast long shadows; sheds hardly any
    blue = {
        lu: np.mean([(a[..., 2].astype(int) > a[..., 0] + 40).mean() for a in arrays])
        for lu, arrays in rendered_by_land_use.items()
    }
    assert blue["industrial"] > blue["residential"]  # steel-blue shed roofs


def test_a_nearest_centroid_classifier_on_colour_histograms_tells_land_uses_apart(rendered_by_land_use):
    def histogram(a: np.ndarray) -> np.ndarray:
        q = (a // 64).astype(int)  # 4 x 4 x 4 RGB bins
        h = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64).astype(float)
        return h / h.sum()

    train, test = {}, []
    for land_use, arrays in rendered_by_land_use.items():
        features = [histogram(a) for a in arrays]
        train[land_use] = np.mean(features[:12], axis=0)
        test += [(land_use, f) for f in features[12:]]
    correct = sum(min(train, key=lambda k: np.abs(f - train[k]).sum()) == truth for truth, f in test)
    assert correct / len(test) > 0.8


def test_more_pois_draw_more_buildings(city_cells):
    cell = next(c for c in city_cells if c.land_use == "commercial")
    few = replace(cell, poi_counts=[0] * 12 + [3] + [0] * 4)
    many = replace(cell, poi_counts=[0] * 12 + [600] + [0] * 4)
    roofs = [render_tile_array(c).astype(int) for c in (few, many)]
    ground = np.array([150, 140, 130])
    built = [(np.abs(a - ground).sum(axis=2) > 40).mean() for a in roofs]
    assert built[1] > built[0]


def test_cells_without_land_use_get_one_from_their_pois(city_cells):
    from engine.env.tiles import infer_land_use

    factory = [0] * len(POI_CATEGORIES)
    factory[POI_CATEGORIES.index("Factory")] = 30
    factory[POI_CATEGORIES.index("Other")] = 5
    cell = CellInfo(id=1, key="B1", poi_counts=factory, poi_categories=list(POI_CATEGORIES))
    assert infer_land_use(cell) == "industrial"
    assert infer_land_use(CellInfo(id=2, key="B2")) == "mixed"
    assert render_tile_array(cell).shape == (256, 256, 3)


def test_the_river_continues_across_neighbouring_tiles():
    from engine.env.tiles.synthetic import TILE_KM, river_x

    y = 0.0
    x = float(river_x(y))
    left = CellInfo(id=1, key="L", land_use="park", x_km=x - TILE_KM / 2, y_km=y)
    right = CellInfo(id=2, key="R", land_use="cbd", x_km=x + TILE_KM / 2, y_km=y)
    a, b = render_tile_array(left).astype(int), render_tile_array(right).astype(int)
    water = np.array([62, 92, 98])
    # The river's centre line runs along the right edge of the left tile and the left edge of the right one.
    assert np.abs(a[100:150, 250:256] - water).sum(axis=2).mean() < 40
    assert np.abs(b[100:150, 0:6] - water).sum(axis=2).mean() < 40


def test_city_mosaic_is_a_png_with_bounds_around_every_cell(city_cells):
    data, bounds = render_city_mosaic(city_cells[:200], width=512)
    image = _decode(data)
    assert image.format == "PNG" and image.width == 512 and image.mode == "RGB"
    west, south, east, north = bounds
    lats = [c.lat for c in city_cells[:200]]
    lons = [c.lon for c in city_cells[:200]]
    assert west < min(lons) < max(lons) < east and south < min(lats) < max(lats) < north
    km_wide = (east - west) * 111.320 * np.cos(np.radians(31.23))
    assert image.height == pytest.approx(512 * (north - south) * 110.574 / km_wide, abs=2)  # square pixels
    with pytest.raises(InputError, match="latitude"):
        render_city_mosaic([CellInfo(id=1, key="A")])


# --- Validation ---------------------------------------------------------------------------------------


def test_corrupt_and_truncated_images_are_input_errors_naming_their_origin():
    with pytest.raises(InputError, match=r"tile-7\.png.*not a readable image"):
        validate_tile(b"this is not an image", origin="tile-7.png")
    whole = _jpeg(Image.new("RGB", (256, 256), (10, 120, 30)), quality=95)
    with pytest.raises(InputError, match=r"https://host/16/1/2.jpg"):
        validate_tile(whole[: len(whole) // 2], origin="https://host/16/1/2.jpg")
    with pytest.raises(InputError, match="empty"):
        validate_tile(b"", origin="x.png")


def test_conforming_jpeg_passes_through_byte_for_byte():
    data = _jpeg(Image.new("RGB", (256, 256), (10, 120, 30)), quality=75)
    assert validate_tile(data, origin="a.jpg") == data


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode):
    if mode == "I;16":
        image = Image.fromarray(np.full((256, 256), 65535, dtype=np.uint16))
        assert image.mode == "I;16"
    else:
        image = Image.new("RGB", (256, 256), (200, 40, 40)).convert(mode)
    data = _jpeg(image) if mode == "CMYK" else _png(image)
    out = _decode(validate_tile(data, origin=f"{mode}.img"))
    assert out.mode == "RGB" and out.size == (256, 256)
    assert out.format == ("JPEG" if mode == "CMYK" else "PNG")
    if mode == "I;16":
        assert out.getpixel((5, 5)) == (255, 255, 255)  # full 16-bit range scaled, not clipped


def test_transparency_is_flattened_onto_white():
    image = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 128, 256))
    out = _decode(validate_tile(_png(image), origin="alpha.png"))
    assert out.getpixel((10, 10)) == (0, 0, 255) and out.getpixel((200, 10)) == (255, 255, 255)


def test_wrong_size_is_centre_cropped_then_resized_not_stretched():
    image = Image.new("RGB", (512, 300), (220, 20, 20))  # red margins ...
    image.paste((20, 20, 220), (106, 0, 406, 300))  # ... around a blue 300 x 300 middle
    out = np.asarray(_decode(validate_tile(_png(image), origin="wide.png")), dtype=int)
    assert out.shape == (256, 256, 3)
    assert (out[..., 2] > out[..., 0]).all()  # only the blue middle is kept
    jpeg_out = _decode(validate_tile(_jpeg(image), origin="wide.jpg"))
    assert jpeg_out.format == "JPEG" and jpeg_out.size == (256, 256)


# --- open_tile_source ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["", "satellite", "dir:", "xyz:ftp://host/{z}/{x}/{y}", "xyz:https://host/tiles", "synthetic:foo"]
)
def test_bad_specs_say_which_forms_are_accepted(spec):
    with pytest.raises(InputError) as caught:
        open_tile_source(spec)
    assert "--tiles" in str(caught.value)


def test_bad_spec_lists_every_accepted_form():
    with pytest.raises(InputError, match="synthetic, dir:PATH, mbtiles:PATH, xyz:URL_TEMPLATE"):
        open_tile_source("google")
    with pytest.raises(InputError, match="unknown option"):
        open_tile_source("synthetic", zoom=3)


# --- Folder source ---------------------------------------------------------------------------------------


def test_real_baidu_tiles_are_found_for_cells_in_shanghai_and_beijing():
    if not SHARED_TILES.is_dir():
        pytest.skip(f"real tile fixtures not present at {SHARED_TILES}")
    source = open_tile_source(f"dir:{SHARED_TILES}")  # both cities' subfolders at once
    assert source.layouts == ["baidu"] and source.baidu_zoom == 16
    for city, (x, y), (lat_range, lon_range) in [
        ("shanghai", (13165, 3582), ((30.7, 31.9), (120.85, 122.2))),  # Shanghai municipality
        ("beijing", (12614, 4692), ((39.4, 41.1), (115.4, 117.5))),  # Beijing municipality
    ]:
        lat, lon = baidu_tile_center_wgs84(x, y, 16)
        assert lat_range[0] < lat < lat_range[1] and lon_range[0] < lon < lon_range[1]
        tile = source.fetch(CellInfo(id=1, key="K", lat=lat, lon=lon))
        path = SHARED_TILES / f"{city}_z16_bd09" / f"16_{x}_{y}_s.jpg"
        assert tile is not None and tile.data == path.read_bytes()  # a conforming JPEG is kept as is
        assert tile.zoom == 16 and tile.media_type == "image/jpeg"
        # a point just north lands in the next row up (Baidu rows grow northward), also in the fixtures
        north = source.fetch(CellInfo(id=2, key="N", lat=lat + 0.0095, lon=lon))
        assert north.data == (SHARED_TILES / f"{city}_z16_bd09" / f"16_{x}_{y + 1}_s.jpg").read_bytes()
    # People's Square is ~40 km east of the Shanghai fixtures: no imagery there
    assert wgs84_to_baidu_tile(31.2304, 121.4737, 16)[0] != 13165
    assert source.fetch(CellInfo(id=3, key="P", lat=31.2304, lon=121.4737)) is None


def test_xyz_and_per_cell_folders(tmp_path):
    cell = CellInfo(id=1, key="C0001", lat=31.2304, lon=121.4737)
    x, y = lat_lon_to_xyz(cell.lat, cell.lon, 15)
    assert (x, y) == (27440, 13389)  # the OSM formula, see test_geo.py
    xyz = tmp_path / "xyz"
    (xyz / "15" / str(x)).mkdir(parents=True)
    (xyz / "15" / str(x) / f"{y}.png").write_bytes(_png(Image.new("RGB", (256, 256), (1, 2, 3))))
    source = FolderSource(xyz)
    assert source.layouts == ["xyz"] and source.xyz_zoom == 15
    tile = source.fetch(cell)
    assert tile.zoom == 15 and _decode(tile.data).getpixel((0, 0)) == (1, 2, 3)
    assert source.fetch(replace(cell, lat=30.0)) is None
    assert source.fetch(CellInfo(id=9, key="nowhere")) is None  # no position, no image of its own

    per_cell = tmp_path / "cells"
    per_cell.mkdir()
    (per_cell / "C0001.png").write_bytes(_png(Image.new("RGBA", (300, 200), (9, 9, 200, 255))))
    source = open_tile_source(f"dir:{per_cell}")
    assert source.layouts == ["cell"]
    tile = source.fetch(replace(cell, lat=None, lon=None))
    image = _decode(tile.data)
    assert image.size == (256, 256) and image.mode == "RGB" and tile.media_type == "image/png"
    assert source.fetch(replace(cell, key="C0002")) is None

    (per_cell / "C0003.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(InputError, match=r"C0003\.jpg"):
        source.__class__(per_cell).fetch(replace(cell, key="C0003"))


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        open_tile_source(f"dir:{tmp_path / 'missing'}")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="found no tile images"):
        open_tile_source(f"dir:{tmp_path}")


# --- MBTiles ------------------------------------------------------------------------------------------------


def _make_mbtiles(path: Path, tiles: dict[tuple[int, int, int], bytes], fmt: str = "png", maxzoom: int = 15) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
    db.execute("CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB)")
    db.executemany(
        "INSERT INTO metadata VALUES (?, ?)",
        [("name", "test"), ("format", fmt), ("minzoom", "15"), ("maxzoom", str(maxzoom))],
    )
    db.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)", [(z, x, r, d) for (z, x, r), d in tiles.items()])
    db.commit()
    db.close()


def test_mbtiles_rows_are_tms_flipped(tmp_path):
    cell = CellInfo(id=1, key="C1", lat=31.2304, lon=121.4737)
    other = CellInfo(id=2, key="C2", lat=31.30, lon=121.55)
    x, y = 27440, 13389  # XYZ at zoom 15 (test_xyz_and_per_cell_folders)
    ox, oy = lat_lon_to_xyz(other.lat, other.lon, 15)
    path = tmp_path / "city.mbtiles"
    _make_mbtiles(
        path,
        {
            (15, x, 2**15 - 1 - y): _png(Image.new("RGB", (256, 256), (5, 6, 7))),  # TMS row: found
            (15, ox, oy): _png(Image.new("RGB", (256, 256), (8, 8, 8))),  # stored unflipped: not the cell's tile
        },
    )
    source = open_tile_source(f"mbtiles:{path}")
    assert isinstance(source, MBTilesSource) and source.zoom == 15
    tile = source.fetch(cell)
    assert tile.zoom == 15 and _decode(tile.data).getpixel((3, 3)) == (5, 6, 7)
    assert source.fetch(other) is None
    source.close()


def test_files_that_are_not_mbtiles_are_input_errors_naming_the_file(tmp_path):
    text = tmp_path / "notes.mbtiles"
    text.write_text("not sqlite at all " * 100)
    with pytest.raises(InputError, match=r"notes\.mbtiles.*not an MBTiles file"):
        open_tile_source(f"mbtiles:{text}")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(InputError, match=r"other\.sqlite.*'tiles' table"):
        open_tile_source(f"mbtiles:{other}")
    vector = tmp_path / "vector.mbtiles"
    _make_mbtiles(vector, {}, fmt="pbf")
    with pytest.raises(InputError, match="vector"):
        open_tile_source(f"mbtiles:{vector}")


# --- store_tiles ------------------------------------------------------------------------------------------


@pytest.fixture
def small_city_db(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        dataset = store_dataset(session, generate_city(CityConfig(users=10, cells=40, days=1, seed=2)))
        dataset_id = dataset.id
    yield database, dataset_id
    database.dispose()


class _FlakySource:
    """Returns nothing for cells whose key ends in 1, a corrupt image for C0002, and fails at C0030."""

    spec = "test:flaky"

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at
        self.inner = SyntheticSource()

    def fetch(self, cell: CellInfo) -> TileImage | None:
        if cell.key == self.fail_at:
            raise TileFetchError("tile server went away")
        if cell.key.endswith("1"):
            return None
        if cell.key == "C0002":
            validate_tile(b"garbage", origin="C0002.png")
        return self.inner.fetch(cell)


def test_cells_for_dataset_carry_positions_pois_and_km_offsets(small_city_db):
    database, dataset_id = small_city_db
    with database.session() as session:
        cells = cells_for_dataset(session, dataset_id)
    assert len(cells) == 40 and all(c.has_position and c.x_km is not None for c in cells)
    assert cells[0].poi_categories == POI_CATEGORIES and len(cells[0].poi_counts) == len(POI_CATEGORIES)
    assert {c.land_use for c in cells} <= set(LAND_USES)


def test_store_tiles_replaces_a_data_sets_tiles_and_counts_them(small_city_db):
    database, dataset_id = small_city_db
    seen = []
    with database.write_session() as session, session.begin():
        counts = store_tiles(
            session, dataset_id, SyntheticSource(), progress=lambda done, total: seen.append((done, total))
        )
    assert counts == {"tiles": 40, "missing": 0, "failed": 0}
    assert seen[-1] == (40, 40)
    with database.write_session() as session, session.begin():
        counts = store_tiles(session, dataset_id, _FlakySource())
    assert counts == {"tiles": 35, "missing": 4, "failed": 1}  # C0001, C0011, C0021, C0031; C0002
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Tile)) == 35
        assert set(session.scalars(select(Tile.source))) == {"test:flaky"}


def test_a_failing_source_leaves_the_tiles_as_they_were_after_rollback(small_city_db):
    database, dataset_id = small_city_db
    with database.write_session() as session, session.begin():
        store_tiles(session, dataset_id, SyntheticSource())
    with database.session() as session:
        before = sorted(session.execute(select(Tile.cell_id, Tile.image, Tile.source)).all())
    with pytest.raises(TileFetchError, match="went away"), database.write_session() as session, session.begin():
        store_tiles(session, dataset_id, _FlakySource(fail_at="C0030"))
    with database.session() as session:
        after = sorted(session.execute(select(Tile.cell_id, Tile.image, Tile.source)).all())
    assert after == before and len(after) == 40
