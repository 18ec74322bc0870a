"""The HTTP XYZ source against a real local tile server (no mocks): cache, retries, limits, errors."""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from engine.env.tiles import CellInfo, TileFetchError, XYZSource, open_tile_source
from engine.env.tiles.geo import lat_lon_to_xyz
from engine.errors import InputError


class TileServerState:
    """What the test server does and what it saw; every field is guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.paths: list[str] = []
        self.user_agents: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_first = 0  # answer 503 to this many requests first
        self.status = 200  # status for every other request
        self.delay_s = 0.0  # time to "render" each tile
        self.body: bytes | None = None  # override the PNG
        self.release = threading.Event()  # set at shutdown so sleeping handlers finish at once


def _png_for(path: str) -> bytes:
    shade = sum(path.encode()) % 200
    out = io.BytesIO()
    Image.new("RGB", (256, 256), (shade, 100, 50)).save(out, format="PNG")
    return out.getvalue()


def _handler(state: TileServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests += 1
                number = state.requests
                state.paths.append(self.path)
                state.user_agents.append(self.headers.get("User-Agent", ""))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            counted = True
            try:
                if state.delay_s:
                    state.release.wait(state.delay_s)
                # Leave the in-flight count before answering: the client frees its slot only after it
                # has read the answer, so counting until after the write would see limit + 1 briefly.
                with state.lock:
                    state.in_flight -= 1
                    counted = False
                status = 503 if number <= state.fail_first else state.status
                body = (state.body if state.body is not None else _png_for(self.path)) if status == 200 else b"no"
                self.send_response(status)
                self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)
            finally:
                if counted:
                    with state.lock:
                        state.in_flight -= 1

    return Handler


@pytest.fixture
def tile_server():
    state = TileServerState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _grid_cells(n: int) -> list[CellInfo]:
    """n cells ~1.1 km apart, so each is on its own zoom-16 tile."""
    cells = [CellInfo(id=i, key=f"C{i}", lat=31.20 + 0.01 * (i // 4), lon=121.44 + 0.012 * (i % 4)) for i in range(n)]
    assert len({lat_lon_to_xyz(c.lat, c.lon, 16) for c in cells}) == n
    return cells


def _source(state: TileServerState, cache: Path, **options) -> XYZSource:
    options = {"retries": 2, "backoff": 0.01, "timeout": 2.0, **options}
    return open_tile_source(f"xyz:{state.url}", cache_dir=cache, **options)


def test_tiles_are_cached_and_never_fetched_twice(tile_server, tmp_path):
    cells = _grid_cells(8)
    first = _source(tile_server, tmp_path / "cache").fetch_many(cells)
    assert tile_server.requests == 8 and all(t is not None and t.zoom == 16 for t in first)
    again = _source(tile_server, tmp_path / "cache").fetch_many(cells)  # a new source, same cache folder
    assert tile_server.requests == 8
    assert [t.data for t in again] == [t.data for t in first]
    x, y = lat_lon_to_xyz(cells[0].lat, cells[0].lon, 16)
    assert f"/16/{x}/{y}.png" in tile_server.paths


def test_server_errors_are_retried_with_backoff_until_the_tile_comes(tile_server, tmp_path):
    tile_server.fail_first = 2
    tile = _source(tile_server, tmp_path / "cache", retries=3).fetch(_grid_cells(1)[0])
    assert tile is not None and tile.media_type == "image/png"
    assert tile_server.requests == 3


def test_missing_tiles_are_none_and_remembered(tile_server, tmp_path):
    tile_server.status = 404
    cell = _grid_cells(1)[0]
    assert _source(tile_server, tmp_path / "cache").fetch(cell) is None
    assert tile_server.requests == 1  # a 404 is not retried
    assert _source(tile_server, tmp_path / "cache").fetch(cell) is None
    assert tile_server.requests == 1


def test_a_server_slower_than_the_timeout_gives_a_clear_error_after_bounded_retries(tile_server, tmp_path):
    tile_server.delay_s = 5.0
    source = _source(tile_server, tmp_path / "cache", timeout=0.3, retries=1)
    started = time.monotonic()
    with pytest.raises(TileFetchError) as caught:
        source.fetch(_grid_cells(1)[0])
    assert time.monotonic() - started < 3.0
    message = str(caught.value)
    assert "127.0.0.1" in message and "/16/" in message and "2 attempts" in message
    assert tile_server.requests == 2


def test_an_unreachable_endpoint_fails_fast_naming_the_url(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = open_tile_source(
        f"xyz:http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png", cache_dir=tmp_path, retries=2, backoff=0.01, timeout=1.0
    )
    started = time.monotonic()
    with pytest.raises(TileFetchError, match=f"127.0.0.1:{port}/16/"):
        source.fetch(_grid_cells(1)[0])
    assert time.monotonic() - started < 3.0


def test_other_client_errors_are_not_retried(tile_server, tmp_path):
    tile_server.status = 403
    with pytest.raises(TileFetchError, match="HTTP 403"):
        _source(tile_server, tmp_path / "cache").fetch(_grid_cells(1)[0])
    assert tile_server.requests == 1


def test_a_corrupt_tile_is_an_input_error_naming_the_url_and_is_not_cached(tile_server, tmp_path):
    tile_server.body = b"\x89PNG\r\n\x1a\n truncated"
    cell = _grid_cells(1)[0]
    with pytest.raises(InputError, match=r"http://127\.0\.0\.1:\d+/16/"):
        _source(tile_server, tmp_path / "cache").fetch(cell)
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_oversized_answer_is_refused_without_reading_it_whole_and_not_retried(tile_server, tmp_path, monkeypatch):
    """Issue 20: the fetcher read whole responses (two 400 MB bodies took 1.6 GB in 4 s)."""
    from engine.env.tiles import xyz

    monkeypatch.setattr(xyz, "MAX_TILE_RESPONSE_BYTES", 100_000)  # the test's body: 300 kB
    tile_server.body = b"\x89PNG" + b"\0" * 300_000
    with pytest.raises(TileFetchError, match=r"more than 0\.1 MB") as caught:
        _source(tile_server, tmp_path / "cache").fetch(_grid_cells(1)[0])
    assert "URL template" in str(caught.value) and tile_server.requests == 1  # not retried
    assert list((tmp_path / "cache").iterdir()) == []


def test_requests_name_the_product_in_the_user_agent(tile_server, tmp_path):
    _source(tile_server, tmp_path / "cache").fetch(_grid_cells(1)[0])
    assert tile_server.user_agents and tile_server.user_agents[0].startswith("lsdm-dashboard/0.1")


def test_concurrency_never_exceeds_the_limit_even_with_two_callers(tile_server, tmp_path):
    tile_server.delay_s = 0.08
    source = _source(tile_server, tmp_path / "cache", max_concurrency=3)
    cells = _grid_cells(24)
    results: dict[str, list] = {}
    callers = [
        threading.Thread(
            target=lambda part=part, name=name: results.__setitem__(name, source.fetch_many(part, max_workers=8))
        )
        for name, part in (("a", cells[:12]), ("b", cells[12:]))
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=20)
    assert all(len(results[name]) == 12 and None not in results[name] for name in "ab")
    assert tile_server.requests == 24
    assert 2 <= tile_server.max_in_flight <= 3


def test_subdomains_rotate_but_share_the_cache(tmp_path, tile_server):
    host_url = tile_server.url.replace("127.0.0.1", "{s}")
    source = open_tile_source(f"xyz:{host_url}", cache_dir=tmp_path, subdomains=["127.0.0.1"], retries=0)
    assert source.fetch(_grid_cells(1)[0]) is not None and tile_server.requests == 1


def test_store_tiles_downloads_each_distinct_tile_once(tile_server, tmp_path, db_path):
    from sqlalchemy import func, select

    from db import open_database
    from db.models import Tile
    from db.queries import store_dataset
    from engine.data.city import CityConfig, generate_city
    from engine.env.tiles import cells_for_dataset, store_tiles

    database = open_database(str(db_path))
    try:
        with database.write_session() as session, session.begin():
            dataset_id = store_dataset(session, generate_city(CityConfig(users=10, cells=60, days=1, seed=4))).id
        source = _source(tile_server, tmp_path / "cache")
        with database.write_session() as session, session.begin():
            distinct = {source.tile_of(c) for c in cells_for_dataset(session, dataset_id)}
            counts = store_tiles(session, dataset_id, source)
        assert counts == {"tiles": 60, "missing": 0, "failed": 0}
        assert tile_server.requests == len(distinct) < 60  # cells sharing a tile share the download
        with database.session() as session:
            assert session.scalar(select(func.count()).select_from(Tile).where(Tile.zoom == 16)) == 60
    finally:
        database.dispose()
