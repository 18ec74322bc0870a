"""The coordinate chain behind Baidu (BD09) and web-mercator tiles."""

from __future__ import annotations

import math

import pytest

from engine.env.tiles.geo import (
    baidu_tile_center_wgs84,
    bd09_to_bd09mc,
    bd09_to_wgs84,
    bd09mc_to_bd09,
    gcj02_to_wgs84,
    lat_lon_to_xyz,
    wgs84_to_baidu_tile,
    wgs84_to_bd09,
    wgs84_to_gcj02,
    xyz_tile_center,
)

M_PER_DEG = 111_000


def test_bd09mc_matches_baidus_published_value_for_tiananmen():
    # Baidu's demo centre (BD09 116.404, 39.915) is quoted as (12958175.00, 4825923.77) in BD09MC.
    x, y = bd09_to_bd09mc(39.915, 116.404)
    assert x == pytest.approx(12958175.00, abs=0.5)
    assert y == pytest.approx(4825923.77, abs=0.5)


@pytest.mark.parametrize("lat", [1.0, 14.9, 15.1, 22.5, 29.99, 31.23, 39.9, 45.2, 55.0])
def test_bd09mc_round_trips_within_half_a_metre_below_60_degrees(lat):
    for lon in (73.6, 100.0, 121.47, 134.9):
        back_lat, back_lon = bd09mc_to_bd09(*bd09_to_bd09mc(lat, lon))
        assert abs(back_lat - lat) * M_PER_DEG < 0.5 and abs(back_lon - lon) * M_PER_DEG < 0.5


@pytest.mark.parametrize("band", [15.0, 30.0, 45.0])
def test_bd09mc_bands_meet_without_a_jump(band):
    below = bd09_to_bd09mc(band - 1e-9, 120.0)[1]
    above = bd09_to_bd09mc(band, 120.0)[1]
    assert abs(above - below) < 0.5  # metres


def test_gcj02_and_bd09_shift_shanghai_by_the_known_few_hundred_metres_and_invert():
    lat, lon = 31.2304, 121.4737  # People's Square, WGS84
    glat, glon = wgs84_to_gcj02(lat, lon)
    assert (glat - lat, glon - lon) == (pytest.approx(-0.0019, abs=3e-4), pytest.approx(0.0045, abs=3e-4))
    blat, blon = wgs84_to_bd09(lat, lon)
    assert (blat - glat, blon - glon) == (pytest.approx(0.0059, abs=6e-4), pytest.approx(0.0066, abs=6e-4))
    assert gcj02_to_wgs84(glat, glon) == (pytest.approx(lat, abs=1e-8), pytest.approx(lon, abs=1e-8))
    assert bd09_to_wgs84(blat, blon) == (pytest.approx(lat, abs=1e-6), pytest.approx(lon, abs=1e-6))
    assert wgs84_to_gcj02(48.85, 2.35) == (48.85, 2.35)  # outside China: untouched


def test_baidu_tiles_grow_northward_and_their_centres_map_back():
    x, y = wgs84_to_baidu_tile(31.2304, 121.4737, 16)
    assert (x, y) == (13206, 3555)
    assert wgs84_to_baidu_tile(31.2404, 121.4737, 16)[1] == y + 1  # ~1.1 km north: the next row up
    centre = baidu_tile_center_wgs84(x, y, 16)
    assert wgs84_to_baidu_tile(*centre, 16) == (x, y)


def test_xyz_tile_of_peoples_square_follows_the_osm_formula():
    lat, lon, z = 31.2304, 121.4737, 16
    n = 2**z
    expected_x = int((lon + 180) / 360 * n)
    expected_y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    assert lat_lon_to_xyz(lat, lon, z) == (expected_x, expected_y) == (54881, 26778)
    assert lat_lon_to_xyz(*xyz_tile_center(54881, 26778, z), z) == (54881, 26778)
