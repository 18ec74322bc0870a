"""``xyz:URL_TEMPLATE``: tiles over HTTP(S) from a ``{z}/{x}/{y}`` server, cached on disk.

- Template: ``{z}``, ``{x}``, ``{y}`` required; ``{s}`` optional, rotated over ``subdomains``
  (default ``abc``) by ``(x + y) % n`` so a tile always comes from the same host.
- Cache: ``<cache_dir>/<sha256 of the URL>.<png|jpg>`` (default ``<data dir>/tile-cache``), keyed by
  the URL with ``{s}`` left unfilled so every subdomain shares it. Tiles are validated before they
  are cached and written atomically; a 404 leaves a ``.404`` marker. Whatever is in the cache is never
  fetched again (delete the folder to refresh).
- Network: a ``User-Agent`` naming the product, a per-request ``timeout``; retries with exponential
  backoff (``backoff * 2**attempt`` seconds, ``Retry-After`` honoured up to 30 s) on 5xx, 429,
  timeouts and connection errors. 404/410 mean "no imagery" (``None``); other 4xx are a
  configuration error raised at once. When retries run out a ``TileFetchError`` names the URL.
- Concurrency: at most ``max_concurrency`` requests in flight from one source at any time (a
  semaphore around every request), whatever ``fetch_many``'s ``max_workers`` or the number of callers.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from db.session import data_dir
from engine.env.tiles.core import CellInfo, TileFetchError, TileImage, sniff_media_type, tile_from_bytes
from engine.env.tiles.geo import lat_lon_to_xyz, wgs84_to_gcj02
from engine.errors import InputError

USER_AGENT = "lsdm-dashboard/0.1 (offline LSDM traffic-forecasting dashboard; tile fetcher)"
RETRY_STATUS = {429, 500, 502, 503, 504}
MISSING_STATUS = {404, 410}
_MAX_RETRY_AFTER_S = 30.0
MAX_TILE_RESPONSE_BYTES = 8_000_000  # a tile is tens of kB; two 400 MB answers once took 1.6 GB in 4 s


def default_cache_dir() -> Path:
    return data_dir() / "tile-cache"


class XYZSource:
    """Tiles fetched from an XYZ tile server, with an on-disk cache."""

    def __init__(
        self,
        template: str,
        *,
        zoom: int = 16,
        cache_dir: str | Path | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 4,
        subdomains: str | Sequence[str] = "abc",
        datum: str = "wgs84",
        user_agent: str = USER_AGENT,
        spec: str | None = None,
    ) -> None:
        self.spec = spec or f"xyz:{template}"
        missing = [k for k in ("{z}", "{x}", "{y}") if k not in template]
        if missing or not template.lower().startswith(("http://", "https://")):
            raise InputError(
                f"expected an http(s) URL template with {{z}}, {{x}} and {{y}}, got {template!r}",
                field="--tiles",
                hint="e.g. xyz:https://tiles.example.org/{z}/{x}/{y}.png",
            )
        if datum not in ("wgs84", "gcj02"):
            raise InputError(f"expected 'wgs84' or 'gcj02', got {datum!r}", field="datum")
        if max_concurrency < 1 or retries < 0 or timeout <= 0:
            raise InputError("expected max_concurrency >= 1, retries >= 0 and timeout > 0", field="--tiles")
        self.template = template
        self.zoom = int(zoom)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_concurrency = int(max_concurrency)
        self.subdomains = list(subdomains) or ["a"]
        self.datum = datum
        self.user_agent = user_agent
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._opener = urllib.request.build_opener()
        self.requests_made = 0  # network requests, for callers who want to report it
        self._count_lock = threading.Lock()

    # --- addressing -------------------------------------------------------------------------------
    def tile_of(self, cell: CellInfo) -> tuple[int, int]:
        lat, lon = cell.lat_lon()
        if self.datum == "gcj02":
            lat, lon = wgs84_to_gcj02(lat, lon)
        return lat_lon_to_xyz(lat, lon, self.zoom)

    def url_of(self, x: int, y: int, *, for_cache: bool = False) -> str:
        url = self.template.replace("{z}", str(self.zoom)).replace("{x}", str(x)).replace("{y}", str(y))
        if not for_cache:
            url = url.replace("{s}", self.subdomains[(x + y) % len(self.subdomains)])
        return url

    def _cache_stem(self, x: int, y: int) -> Path:
        return self.cache_dir / hashlib.sha256(self.url_of(x, y, for_cache=True).encode()).hexdigest()

    # --- fetching -------------------------------------------------------------------------------
    def fetch(self, cell: CellInfo) -> TileImage | None:
        if not cell.has_position:
            return None
        x, y = self.tile_of(cell)
        stem = self._cache_stem(x, y)
        for suffix in (".png", ".jpg"):
            cached = stem.with_suffix(suffix)
            if cached.is_file():
                data = cached.read_bytes()
                return TileImage(data=data, media_type=sniff_media_type(data), zoom=self.zoom, source=self.spec)
        if stem.with_suffix(".404").is_file():
            return None
        url = self.url_of(x, y)
        body = self._download(url)
        if body is None:
            _atomic_write(stem.with_suffix(".404"), b"")
            return None
        tile = tile_from_bytes(body, origin=url, zoom=self.zoom, source=self.spec)
        _atomic_write(stem.with_suffix(".jpg" if tile.media_type == "image/jpeg" else ".png"), tile.data)
        return tile

    def _download(self, url: str) -> bytes | None:
        """The body of a 200 answer, None for 404/410; retries transient failures, then raises."""
        request = urllib.request.Request(url, headers={"User-Agent": self.user_agent, "Accept": "image/*"})
        last_error = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                with self._slots:
                    with self._count_lock:
                        self.requests_made += 1
                    with self._opener.open(request, timeout=self.timeout) as response:
                        body = response.read(MAX_TILE_RESPONSE_BYTES + 1)  # never a whole unbounded body
                if len(body) > MAX_TILE_RESPONSE_BYTES:
                    raise TileFetchError(
                        f"the tile server sent more than {MAX_TILE_RESPONSE_BYTES / 1e6:g} MB for {url}; "
                        "a map tile is a few tens of kB: check the URL template"
                    )
                return body
            except urllib.error.HTTPError as exc:
                if exc.code in MISSING_STATUS:
                    return None
                if exc.code not in RETRY_STATUS:
                    raise TileFetchError(
                        f"tile server answered HTTP {exc.code} {exc.reason} for {url}; "
                        "check the URL template and access rights"
                    ) from exc
                last_error = f"HTTP {exc.code} {exc.reason}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = max(wait, min(float(retry_after), _MAX_RETRY_AFTER_S))
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as exc:
                # connection refused/reset, DNS failure, timeout, a body cut short (IncompleteRead)
                reason = getattr(exc, "reason", exc)
                last_error = f"{type(reason).__name__}: {reason}"
            if attempt < self.retries:
                time.sleep(wait)
        raise TileFetchError(
            f"could not fetch {url} after {self.retries + 1} attempts "
            f"(timeout {self.timeout:g} s each); last error: {last_error}"
        )

    def fetch_many(
        self, cells: Sequence[CellInfo], max_workers: int = 4, *, return_errors: bool = False
    ) -> list[TileImage | Exception | None]:
        """Fetch many cells concurrently (never more than ``max_concurrency`` requests at once).

        Cells on the same tile share one download. Results are in the order of ``cells``. With
        ``return_errors`` a failed cell's exception is returned in its place; otherwise the first
        failure is raised once all work has stopped.
        """

        def one(cell: CellInfo) -> TileImage | Exception | None:
            try:
                return self.fetch(cell)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller below
                return exc

        first_of_tile: dict[tuple[int, int] | None, CellInfo] = {}
        for cell in cells:
            key = self.tile_of(cell) if cell.has_position else None
            first_of_tile.setdefault(key, cell)
        unique = list(first_of_tile.items())
        workers = max(1, min(max_workers, self.max_concurrency, len(unique) or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tile-fetch") as pool:
            by_tile = dict(zip((key for key, _ in unique), pool.map(one, (cell for _, cell in unique)), strict=True))
        results = [by_tile[self.tile_of(cell) if cell.has_position else None] for cell in cells]
        if not return_errors:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
