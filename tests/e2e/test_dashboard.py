"""The served dashboard in a real browser: clicking the map opens cells and users, a forecast from the
form is queued as a job that the worker `lsdm app` starts beside the server runs (the page follows it
live, then draws the stored run's fans), and every page renders without an exception.

Where to click on the map is computed, not guessed: the Map page's own deck (read through AppTest with
the same link) gives the view state and every dot's position; web-mercator arithmetic turns a dot into
a canvas pixel; hovering there must show the expected tooltip before the click.
Screenshots land in the artifacts directory (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from db import open_database
from db.models import ForecastRun, Job
from tests.e2e.conftest import (
    Dashboard,
    artifacts_dir,
    exception_texts,
    full_screenshot,
    wait_rendered,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MAP_HOUR = 38  # Tue 14:00 of the default city: users spread over work, study and home cells
TILE_SIZE = 512  # deck.gl's web-mercator world is 512 px wide at zoom 0
CLICK_MARGIN_PX = 60  # keep clear of the chart's edges (zoom buttons, toolbar)

# Every page, its link and its title (the h1 that page_header writes). The Map is the default page:
# it lives at the root URL (Streamlit answers /map with "Page not found" and then runs the default page).
PAGES = {
    "map": ("/", "City map"),
    "cell": ("/cell?cell=C0001", "Cell"),
    "user": ("/user?user=U0001", "User"),
    "forecast": ("/forecast", "Forecast"),
    "whatif": ("/whatif", "What-if"),
    "models": ("/models", "Models & evaluation"),
    "data": ("/data", "Data"),
    "jobs": ("/jobs", "Jobs"),
    "glossary": ("/glossary", "Glossary"),
}


# --- the map's geometry -------------------------------------------------------------------------------


def map_deck_spec(db_path: Path, hour: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The deck JSON the Map page renders for ``?hour=`` (its view state and every layer's rows)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LSDM_DB", str(db_path))
    at = AppTest.from_file(str(REPO / "app" / "views" / "map.py"), default_timeout=60)
    at.query_params["hour"] = str(hour)
    at.run()
    assert not at.exception, at.exception
    decks = at.get("deck_gl_json_chart")
    assert len(decks) == 1, "the Map page should draw exactly one deck"
    return json.loads(decks[0].proto.json)


def layer_rows(spec: dict, layer_id: str) -> list[dict]:
    layer = next(layer for layer in spec["layers"] if layer.get("id") == layer_id)
    return layer["data"]


def mercator(lon: float, lat: float, zoom: float) -> tuple[float, float]:
    """Web-mercator world pixels of a point at ``zoom`` (deck.gl's WebMercatorViewport)."""
    scale = TILE_SIZE * 2**zoom / (2 * math.pi)
    x = scale * (math.radians(lon) + math.pi)
    y = scale * (math.pi - math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))
    return x, y


def to_canvas(view: dict, box: dict, lon: float, lat: float) -> tuple[float, float]:
    """Page coordinates of (lon, lat) on a deck canvas whose view is centred on ``view`` (no pitch or
    bearing: the map page draws a flat, north-up map) and that occupies the bounding box ``box``."""
    cx, cy = mercator(view["longitude"], view["latitude"], view["zoom"])
    x, y = mercator(lon, lat, view["zoom"])
    return box["x"] + box["width"] / 2 + (x - cx), box["y"] + box["height"] / 2 + (y - cy)


def inside(point: tuple[float, float], box: dict) -> bool:
    x, y = point
    return (
        box["x"] + CLICK_MARGIN_PX < x < box["x"] + box["width"] - CLICK_MARGIN_PX
        and box["y"] + CLICK_MARGIN_PX < y < box["y"] + box["height"] - CLICK_MARGIN_PX
    )


def loneliest(
    targets: dict[str, tuple[float, float]], obstacles: dict[str, tuple[float, float]], box: dict
) -> tuple[str, tuple[float, float], float]:
    """The target (key -> pixel) inside the canvas that is farthest from every obstacle dot (other
    than itself): a click on it cannot hit a neighbour. Returns its key, pixel and that distance."""
    best = None
    for key, point in targets.items():
        if not inside(point, box):
            continue
        gap = min((math.dist(point, other) for name, other in obstacles.items() if name != key), default=math.inf)
        if best is None or gap > best[2]:
            best = (key, point, gap)
    assert best is not None, "no dot of the layer lies inside the map canvas"
    return best


def open_map(page, dashboard: Dashboard, hour: int) -> dict:
    """Open the Map page at ``hour``; returns the deck canvas's bounding box once it has drawn."""
    page.goto(f"{dashboard.url}/?hour={hour}")
    wait_rendered(page, PAGES["map"][1])
    canvas = page.locator('[data-testid="stDeckGlJsonChart"] canvas').first
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the deck draws its layers on the next animation frames
    box = canvas.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 300, f"the map canvas is too small: {box}"
    return box


def hover_then_click(page, point: tuple[float, float], expected: str) -> None:
    """Hover the pixel, check the deck's tooltip names ``expected``, then click it."""
    page.mouse.move(*point)
    tooltip = page.locator(".deck-tooltip")
    tooltip.filter(has_text=expected).wait_for(state="visible", timeout=10_000)
    page.mouse.click(*point)


# --- tests ----------------------------------------------------------------------------------------


def test_clicking_a_cell_on_the_map_opens_that_cells_page(page, dashboard, monkeypatch):
    spec = map_deck_spec(dashboard.db_path, MAP_HOUR, monkeypatch)
    view = spec["initialViewState"]
    box = open_map(page, dashboard, MAP_HOUR)
    users = {u["key"]: to_canvas(view, box, u["lon"], u["lat"]) for u in layer_rows(spec, "users")}
    cells = {c["key"]: to_canvas(view, box, c["lon"], c["lat"]) for c in layer_rows(spec, "cells")}
    # A cell whose centre is far from every user dot, so that the click picks the cell itself.
    key, point, gap = loneliest(cells, users, box)
    assert gap > 6, f"every cell centre has a user dot within {gap:.1f} px"

    hover_then_click(page, point, key)

    page.wait_for_url(re.compile(rf"/cell\?(.*&)?cell={key}(&|$)"))
    wait_rendered(page, PAGES["cell"][1])
    assert exception_texts(page) == []
    assert page.get_by_text(key).first.is_visible()


def test_clicking_a_user_on_the_map_opens_that_users_page(page, dashboard, monkeypatch):
    spec = map_deck_spec(dashboard.db_path, MAP_HOUR, monkeypatch)
    view = spec["initialViewState"]
    box = open_map(page, dashboard, MAP_HOUR)
    users = {u["key"]: to_canvas(view, box, u["lon"], u["lat"]) for u in layer_rows(spec, "users")}
    key, point, gap = loneliest(users, users, box)
    assert gap > 5, f"every user dot has a neighbour within {gap:.1f} px"

    hover_then_click(page, point, key)

    page.wait_for_url(re.compile(rf"/user\?(.*&)?user={key}(&|$)"))
    wait_rendered(page, PAGES["user"][1])
    assert exception_texts(page) == []
    assert page.get_by_role("combobox", name="User").input_value() == key  # the page's user picker


def forecast_runs(db_path: Path) -> list[int]:
    with open_database(str(db_path)).session() as session:
        return list(session.scalars(select(ForecastRun.id).order_by(ForecastRun.id)))


def set_number(page, label: str, value: int) -> None:
    """Type into a Streamlit number_input and commit it (Enter), as a user would."""
    field = page.get_by_role("spinbutton", name=label)
    field.fill(str(value))
    field.press("Enter")
    wait_rendered(page, PAGES["forecast"][1])
    assert field.input_value() == str(value)


def choose_only(page, label: str, option: str) -> list[str]:
    """Clear a Streamlit multiselect, pick one option by typing it, and return the chosen tags."""
    widget = page.locator('[data-testid="stMultiSelect"]').filter(has=page.get_by_role("combobox", name=label))
    widget.get_by_role("button", name="Clear all").click()
    wait_rendered(page, PAGES["forecast"][1])
    widget.get_by_role("combobox", name=label).fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")  # close the list
    wait_rendered(page, PAGES["forecast"][1])
    return widget.locator('[data-testid="stMultiSelectTagsContainer"] [data-tag]').all_inner_texts()


def test_a_forecast_from_the_form_runs_as_a_job_and_the_page_draws_the_stored_run(page, dashboard):
    before = forecast_runs(dashboard.db_path)
    page.goto(f"{dashboard.url}/forecast")
    wait_rendered(page, PAGES["forecast"][1])
    assert choose_only(page, "Users", "U0003") == ["U0003"]
    set_number(page, "Horizon (hours)", 3)
    set_number(page, "Sample paths", 4)

    page.get_by_role("button", name="Run forecast").click()
    # Queued and followed (?job=ID); the worker beside the server runs it, and the page's fragment sees
    # the end and opens the stored run (?run=ID).
    page.wait_for_url(re.compile(r"[?&](job|run)=\d+"), timeout=60_000)
    page.wait_for_url(re.compile(r"[?&]run=\d+"), timeout=300_000)
    wait_rendered(page, PAGES["forecast"][1], timeout=120)
    assert "job=" not in page.url

    after = forecast_runs(dashboard.db_path)
    assert len(after) == len(before) + 1
    run_id = int(re.search(r"[?&]run=(\d+)", page.url).group(1))
    assert run_id == after[-1] and run_id not in before
    with open_database(str(dashboard.db_path)).session() as session:
        run = session.get(ForecastRun, run_id)
        assert run.params["horizon"] == 3 and run.params["samples"] == 4
        assert run.params["entities"] == ["U0003"]
        job = session.scalars(select(Job).where(Job.kind == "forecast").order_by(Job.id.desc())).first()
        assert (job.status, job.result_ref) == ("done", f"forecast_run:{run_id}")
    assert exception_texts(page) == []
    # The total fan, the service mix and one fan per service (10 in the default city), all drawn.
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    assert charts.count() >= 12
    for index in (0, charts.count() - 1):
        chart = charts.nth(index)
        chart.scroll_into_view_if_needed()
        assert chart.is_visible() and chart.locator("canvas, svg").count() >= 1
    full_screenshot(page, artifacts_dir() / "forecast.png")


def navigation_titles(page) -> list[str]:
    """The page titles in the sidebar navigation (each link's text, less its icon's ligature)."""
    links = page.locator('[data-testid="stSidebarNavLink"] [data-testid="stMarkdownContainer"]')
    return [text.strip() for text in links.all_inner_texts()]


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_renders_without_an_exception(page, dashboard, name):
    link, title = PAGES[name]
    page.goto(dashboard.url + link)
    wait_rendered(page, title)
    assert exception_texts(page) == []
    heading = page.locator('[data-testid="stMain"] h1').first
    assert title in heading.inner_text()
    assert "Models & evaluation" in navigation_titles(page)  # app/main.py's navigation
    assert page.get_by_text("Page not found").count() == 0  # the link names a page of the app
    shot = full_screenshot(page, artifacts_dir() / ("forecast-form.png" if name == "forecast" else f"{name}.png"))
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one


def test_a_deep_link_as_the_first_visit_after_start_runs_the_apps_entry(page, fresh_dashboard):
    """A shared link (here a cell) opened before anyone visited the root URL must still go through
    app/main.py: its navigation (sections, titles) and wide layout, not Streamlit's legacy multipage
    mode, which it uses while the entry script has a sibling folder named ``pages`` and no session
    has called st.navigation yet."""
    page.goto(f"{fresh_dashboard.url}/cell?cell=C0002")
    wait_rendered(page, PAGES["cell"][1])
    assert exception_texts(page) == []
    assert page.get_by_role("combobox", name="Cell").input_value() == "C0002"
    titles = navigation_titles(page)
    assert titles[:3] == ["Map", "Cell", "User"], f"legacy navigation (one link per file): {titles}"


def queued_jobs(db_path: Path) -> list[int]:
    with open_database(str(db_path)).session() as session:
        return list(session.scalars(select(Job.id).order_by(Job.id)))


@pytest.mark.parametrize(
    ("link", "title", "tab", "fields"),
    [
        ("/models", PAGES["models"][1], None, ["Epochs", "Seed", "Samples per window", "Recursive steps"]),
        ("/data", PAGES["data"][1], "Build a synthetic city", ["Users", "Cells"]),
    ],
)
def test_enter_in_a_form_that_starts_work_queues_nothing(page, dashboard, link, title, tab, fields):
    """Issue 19: pressing Enter after typing a setting must not submit the form (a training, an evaluation,
    a city build); only the form's button does."""
    before = queued_jobs(dashboard.db_path)
    page.goto(f"{dashboard.url}{link}")
    wait_rendered(page, title)
    if tab:
        page.get_by_role("tab", name=tab).click()
    typed = 0
    for label in fields:
        field = page.get_by_role("spinbutton", name=label, exact=True)
        if field.count() == 0:
            continue
        field.first.scroll_into_view_if_needed()
        field.first.fill("2")
        field.first.press("Enter")
        wait_rendered(page, title)
        typed += 1
    assert typed >= 2, f"no form field found on {link}: {fields}"
    page.wait_for_timeout(1500)  # a submitted form would have queued its job by now
    assert queued_jobs(dashboard.db_path) == before
    assert exception_texts(page) == []


def test_an_out_of_range_horizon_is_named_under_the_field_and_the_run_button_is_disabled(page, dashboard):
    """Issue 19: Horizon 9999 showed red in the browser while the forecast ran as 24 h; the "1 to 72 hours"
    message never appeared (the range is 1 to 168 hours)."""
    before = queued_jobs(dashboard.db_path)
    page.goto(f"{dashboard.url}/forecast")
    wait_rendered(page, PAGES["forecast"][1])
    field = page.get_by_role("spinbutton", name="Horizon (hours)")
    field.fill("9999")
    field.press("Enter")
    wait_rendered(page, PAGES["forecast"][1])
    assert field.input_value() == "9999"
    message = page.get_by_text("Horizon: expected a value from 1 to 168, got 9999")
    message.scroll_into_view_if_needed()
    assert message.is_visible()
    run = page.get_by_role("button", name="Run forecast")
    assert run.is_disabled()
    assert queued_jobs(dashboard.db_path) == before
    assert exception_texts(page) == []


def test_a_users_forecast_from_the_form_is_the_same_alone_or_with_other_users(page, fresh_dashboard):
    """Issue 19, problem 5: one user, seed 0, the same settings gave a 90 % band peaking near 75 MB alone and
    near 22 MB beside four other users. Two forecasts from the form, through the worker: U0003 alone, then
    U0003 with U0001 and U0002; U0003's stored paths are the same in both runs, path for path."""
    from engine.forecast import ForecastResult

    runs = []
    for users in (["U0003"], ["U0001", "U0003", "U0002"]):
        page.goto(f"{fresh_dashboard.url}/forecast?user={','.join(users)}&hour=300&horizon=2")
        wait_rendered(page, PAGES["forecast"][1])
        set_number(page, "Sample paths", 4)
        before = len(forecast_runs(fresh_dashboard.db_path))
        page.get_by_role("button", name="Run forecast").click()
        deadline = time.monotonic() + 300
        while len(forecast_runs(fresh_dashboard.db_path)) == before and time.monotonic() < deadline:
            page.wait_for_timeout(500)
        runs.append(forecast_runs(fresh_dashboard.db_path)[-1])
        page.wait_for_url(re.compile(rf"[?&]run={runs[-1]}(&|$)"), timeout=120_000)
        wait_rendered(page, PAGES["forecast"][1], timeout=120)
    with open_database(str(fresh_dashboard.db_path)).session() as session:
        stored = [session.get(ForecastRun, run_id) for run_id in runs]
        (alone, batch), keys = (
            [ForecastResult.arrays_from_npz(run.result) for run in stored],
            [run.params["entities"] for run in stored],
        )
    assert keys[0] == ["U0003"] and sorted(keys[1]) == ["U0001", "U0002", "U0003"]
    assert len(batch["paths_v"]) == 3
    where = keys[1].index("U0003")
    np.testing.assert_allclose(batch["paths_v"][where], alone["paths_v"][0], atol=1e-5)
    assert exception_texts(page) == []
