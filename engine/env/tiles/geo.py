"""Where a cell's tile is: WGS84 -> GCJ-02 -> BD09 -> Baidu Mercator, and web-mercator XYZ.

Chinese map providers do not publish imagery in WGS84 (what GPS and our cells use):

- GCJ-02 ("Mars coordinates") is the state-mandated obfuscation of WGS84: a smooth, deterministic
  offset of a few hundred metres (about +0.0014 deg lat / +0.0062 deg lon in Beijing). Gaode/AMap,
  Tencent and Google's China imagery use it on an ordinary web-mercator XYZ grid.
- BD09 is Baidu's extra shift of GCJ-02 (another ~+0.006 / +0.0065 deg).
- BD09MC is Baidu's Mercator: metre-like coordinates computed from BD09 lat/lon by Baidu's own
  piecewise polynomials (``_LL2MC``, one per 15-degree latitude band, the ``MCBAND``/``LLBAND``
  tables of Baidu's JavaScript API as reproduced by many open-source converters, e.g. the
  ``coordTransform``/``eviltransform`` family). x is simply ``111320.702 m`` per degree of longitude.
- Baidu tiles: at zoom ``z`` one 256-pixel tile spans ``256 * 2**(18 - z)`` BD09MC units and
  ``tile = floor(mc / span)``, counted from (0, 0) at the equator / Greenwich with **y growing
  northward** (unlike XYZ). Files from Baidu downloaders are named ``<z>_<x>_<y>_s.jpg``.

Accuracy (measured by ``tests/engine/env/test_geo.py``): GCJ-02 is the published forward formula
(exact by definition); its inverse here is iterative (< 1e-9 deg). GCJ-02 -> BD09 is the published
formula; its published inverse (~1e-6 deg) is refined here by fixed-point steps to < 1e-9 deg.
``_LL2MC`` then ``_MC2LL`` (Baidu's approximate inverse) round-trips to < 0.3 m below 60 deg latitude
(7 m at 60-74 deg), and adjacent bands of ``_LL2MC`` agree at their borders to < 0.5 m below 60 deg;
``_LL2MC`` reproduces the commonly quoted BD09MC of Baidu's demo centre (Tiananmen). The
polynomials matter: a plain spherical Mercator of the BD09 latitude would be about 22 km (22 zoom-16
tiles) off in Shanghai. The whole chain therefore puts a point in the right zoom-16 Baidu tile (about
0.9 km of ground) unless it lies within a metre of a tile edge; the real Shanghai and Beijing fixture
tiles (../shared/data/tiles) come out in Qingpu/Jiading and Fangshan, i.e. inside those cities.

The web-mercator (XYZ/TMS) helpers use the spherical ``EPSG:3857`` tiling with y growing southward.
"""

from __future__ import annotations

import math

# --- WGS84 <-> GCJ-02 (Krasovsky ellipsoid constants of the published algorithm) -----------------
_GCJ_A = 6378245.0
_GCJ_EE = 0.00669342162296594323


def out_of_china(lat: float, lon: float) -> bool:
    """GCJ-02 is only applied inside this rough bounding box of China (as in every implementation)."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _gcj_dlat(x: float, y: float) -> float:
    ret = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    ret += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return ret


def _gcj_dlon(x: float, y: float) -> float:
    ret = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    ret += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return ret


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """WGS84 -> GCJ-02 (identity outside China)."""
    if out_of_china(lat, lon):
        return lat, lon
    dlat = _gcj_dlat(lon - 105.0, lat - 35.0)
    dlon = _gcj_dlon(lon - 105.0, lat - 35.0)
    rad = math.radians(lat)
    magic = 1 - _GCJ_EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_GCJ_A * (1 - _GCJ_EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_GCJ_A / sqrt_magic * math.cos(rad) * math.pi)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """GCJ-02 -> WGS84 by fixed-point iteration of the forward formula (< 1e-7 deg)."""
    if out_of_china(lat, lon):
        return lat, lon
    wlat, wlon = lat, lon
    for _ in range(30):
        glat, glon = wgs84_to_gcj02(wlat, wlon)
        dlat, dlon = glat - lat, glon - lon
        wlat, wlon = wlat - dlat, wlon - dlon
        if abs(dlat) < 1e-9 and abs(dlon) < 1e-9:
            break
    return wlat, wlon


# --- GCJ-02 <-> BD09 ------------------------------------------------------------------------------
_X_PI = math.pi * 3000.0 / 180.0


def gcj02_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    z = math.hypot(lon, lat) + 0.00002 * math.sin(lat * _X_PI)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * _X_PI)
    return z * math.sin(theta) + 0.006, z * math.cos(theta) + 0.0065


def bd09_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """The published approximate inverse (~1e-6 deg), refined by fixed-point steps to < 1e-9 deg."""
    x, y = lon - 0.0065, lat - 0.006
    z = math.hypot(x, y) - 0.00002 * math.sin(y * _X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _X_PI)
    glat, glon = z * math.sin(theta), z * math.cos(theta)
    for _ in range(5):
        blat, blon = gcj02_to_bd09(glat, glon)
        glat, glon = glat - (blat - lat), glon - (blon - lon)
    return glat, glon


def wgs84_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    return gcj02_to_bd09(*wgs84_to_gcj02(lat, lon))


def bd09_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    return gcj02_to_wgs84(*bd09_to_gcj02(lat, lon))


# --- BD09 lat/lon <-> BD09MC (Baidu Mercator) -------------------------------------------------------
_MCBAND = (12890594.86, 8362377.87, 5591021.0, 3481989.83, 1678043.12, 0.0)
_LLBAND = (75, 60, 45, 30, 15, 0)
_LL2MC = (
    (
        -0.0015702102444,
        111320.7020616939,
        1704480524535203.0,
        -10338987376042340.0,
        26112667856603880.0,
        -35149669176653700.0,
        26595700718403920.0,
        -10725012454188240.0,
        1800819912950474.0,
        82.5,
    ),
    (
        0.0008277824516172526,
        111320.7020463578,
        647795574.6671607,
        -4082003173.641316,
        10774905663.51142,
        -15171875531.51559,
        12053065338.62167,
        -5124939663.577472,
        913311935.9512032,
        67.5,
    ),
    (
        0.00337398766765,
        111320.7020202162,
        4481351.045890365,
        -23393751.19931662,
        79682215.47186455,
        -115964993.2797253,
        97236711.15602145,
        -43661946.33752821,
        8477230.501135234,
        52.5,
    ),
    (
        0.00220636496208,
        111320.7020209128,
        51751.86112841131,
        3796837.749470245,
        992013.7397791013,
        -1221952.21711287,
        1340652.697009075,
        -620943.6990984312,
        144416.9293806241,
        37.5,
    ),
    (
        -0.0003441963504368392,
        111320.7020576856,
        278.2353980772752,
        2485758.690035394,
        6070.750963243378,
        54821.18345352118,
        9540.606633304236,
        -2710.55326746645,
        1405.483844121726,
        22.5,
    ),
    (
        -0.0003218135878613132,
        111320.7020701615,
        0.00369383431289,
        823725.6402795718,
        0.46104986909093,
        2351.343141331292,
        1.58060784298199,
        8.77738589078284,
        0.37238884252424,
        7.45,
    ),
)
_MC2LL = (
    (
        1.410526172116255e-08,
        8.98305509648872e-06,
        -1.9939833816331,
        200.9824383106796,
        -187.2403703815547,
        91.6087516669843,
        -23.38765649603339,
        2.57121317296198,
        -0.03801003308653,
        17337981.2,
    ),
    (
        -7.435856389565537e-09,
        8.983055097726239e-06,
        -0.78625201886289,
        96.32687599759846,
        -1.85204757529826,
        -59.36935905485877,
        47.40033549296737,
        -16.50741931063887,
        2.28786674699375,
        10260144.86,
    ),
    (
        -3.030883460898826e-08,
        8.98305509983578e-06,
        0.30071316287616,
        59.74293618442277,
        7.357984074871,
        -25.38371002664745,
        13.45380521110908,
        -3.29883767235584,
        0.32710905363475,
        6856817.37,
    ),
    (
        -1.981981304930552e-08,
        8.983055099779535e-06,
        0.03278182852591,
        40.31678527705744,
        0.65659298677277,
        -4.44255534477492,
        0.85341911805263,
        0.12923347998204,
        -0.04625736007561,
        4482777.06,
    ),
    (
        3.09191371068437e-09,
        8.983055096812155e-06,
        6.995724062e-05,
        23.10934304144901,
        -0.00023663490511,
        -0.6321817810242,
        -0.00663494467273,
        0.03430082397953,
        -0.00466043876332,
        2555164.4,
    ),
    (
        2.890871144776878e-09,
        8.983055095805407e-06,
        -3.068298e-08,
        7.47137025468032,
        -3.53937994e-06,
        -0.02145144861037,
        -1.234426596e-05,
        0.00010322952773,
        -3.23890364e-06,
        826088.5,
    ),
)


def _baidu_poly(x: float, y: float, c: tuple[float, ...]) -> tuple[float, float]:
    """Baidu's band conversion: x linear, y a degree-6 polynomial in |y| / c[9]."""
    out_x = c[0] + c[1] * abs(x)
    t = abs(y) / c[9]
    out_y = c[2] + t * (c[3] + t * (c[4] + t * (c[5] + t * (c[6] + t * (c[7] + t * c[8])))))
    return math.copysign(out_x, x), math.copysign(out_y, y)


def bd09_to_bd09mc(lat: float, lon: float) -> tuple[float, float]:
    """BD09 lat/lon -> BD09MC (x, y) in Baidu's Mercator units."""
    lat = min(max(lat, -74.0), 74.0)
    coeffs = _LL2MC[-1]
    for band, c in zip(_LLBAND, _LL2MC, strict=True):
        if abs(lat) >= band:
            coeffs = c
            break
    return _baidu_poly(lon, lat, coeffs)


def bd09mc_to_bd09(x: float, y: float) -> tuple[float, float]:
    """BD09MC (x, y) -> BD09 (lat, lon)."""
    coeffs = _MC2LL[-1]
    for band, c in zip(_MCBAND, _MC2LL, strict=True):
        if abs(y) >= band:
            coeffs = c
            break
    lon, lat = _baidu_poly(x, y, coeffs)
    return lat, lon


def baidu_tile_span(zoom: int) -> float:
    """BD09MC units covered by one 256-pixel Baidu tile at ``zoom``."""
    return 256.0 * 2.0 ** (18 - zoom)


def wgs84_to_baidu_tile(lat: float, lon: float, zoom: int) -> tuple[int, int]:
    """The Baidu tile (x, y) holding a WGS84 point (y grows northward)."""
    mx, my = bd09_to_bd09mc(*wgs84_to_bd09(lat, lon))
    span = baidu_tile_span(zoom)
    return math.floor(mx / span), math.floor(my / span)


def baidu_tile_center_wgs84(x: int, y: int, zoom: int) -> tuple[float, float]:
    """WGS84 (lat, lon) of the centre of Baidu tile (x, y) at ``zoom``."""
    span = baidu_tile_span(zoom)
    return bd09_to_wgs84(*bd09mc_to_bd09((x + 0.5) * span, (y + 0.5) * span))


# --- Web mercator XYZ -------------------------------------------------------------------------------
_MAX_MERCATOR_LAT = 85.05112878


def lat_lon_to_xyz(lat: float, lon: float, zoom: int) -> tuple[int, int]:
    """Web-mercator XYZ tile (x, y) of a point (y grows southward; TMS row = 2**z - 1 - y)."""
    lat = min(max(lat, -_MAX_MERCATOR_LAT), _MAX_MERCATOR_LAT)
    n = 2**zoom
    x = (lon + 180.0) / 360.0 * n
    rad = math.radians(lat)
    y = (1.0 - math.asinh(math.tan(rad)) / math.pi) / 2.0 * n
    return min(max(math.floor(x), 0), n - 1), min(max(math.floor(y), 0), n - 1)


def xyz_tile_center(x: int, y: int, zoom: int) -> tuple[float, float]:
    """(lat, lon) of the centre of XYZ tile (x, y)."""
    n = 2**zoom
    lon = (x + 0.5) / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (y + 0.5) / n))))
    return lat, lon
