"""The Map page's load parts in a real browser: cells chosen in the area form are forecast by the worker
beside the server (a ``load`` job), the page then shows the run's risk map, and Play steps its forecast
hours in the risk map's fragment while the rest of the page (the city map's own hour) stays as it was."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from db import open_database
from db.models import LoadRun
from engine.load.core import read_load_run
from tests.e2e.conftest import artifacts_dir, exception_texts, full_screenshot, wait_rendered

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def pick(page, label: str, option: str) -> None:
    """Add one option to a Streamlit multiselect by typing it."""
    box = page.get_by_role("combobox", name=label)
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")
    wait_rendered(page, "City map")


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_role("spinbutton", name=label)
    field.fill(str(value))
    field.press("Enter")
    wait_rendered(page, "City map")
    assert field.input_value() == str(value)


def risk_caption(page) -> str:
    return page.get_by_text(re.compile(r"cells with P\(load > capacity\) at least")).first.inner_text()


def test_an_area_chosen_on_the_map_is_forecast_and_its_risk_map_plays_back(page, fresh_dashboard):
    page.goto(f"{fresh_dashboard.url}/?hour=38")
    wait_rendered(page, "City map")
    page.get_by_test_id("stExpander").get_by_text("Forecast an area").click()
    wait_rendered(page, "City map")
    pick(page, "Cells", "C0001")
    pick(page, "Cells", "C0002")
    set_number(page, "Horizon (h)", 3)
    set_number(page, "Sample paths", 2)
    page.get_by_role("button", name="Forecast this area").click()
    page.wait_for_url(re.compile(r"[?&]risk=\d+"), timeout=300_000)
    wait_rendered(page, "City map", timeout=120)
    run_id = int(re.search(r"[?&]risk=(\d+)", page.url).group(1))
    database = open_database(str(fresh_dashboard.db_path))
    with database.session() as session:
        run = session.scalars(select(LoadRun).where(LoadRun.id == run_id)).one()
        assert run.scope == "cell:C0001,C0002" and run.params["horizon"] == 3 and run.params["samples"] == 2
    labels = read_load_run(database, run_id).hour_labels
    assert risk_caption(page).startswith(f"{labels[0]}:")
    assert page.locator('[data-testid="stDeckGlJsonChart"]').count() == 2  # the city map and the risk map
    city_hour = page.get_by_role("slider", name="Hour").first.get_attribute("aria-valuenow")

    page.get_by_text("Play forecast", exact=True).click()
    seen = [labels[0]]
    deadline = time.monotonic() + 30
    while len(seen) < 4 and time.monotonic() < deadline:  # hour 1, hour 2, then back to the first
        text = risk_caption(page)
        label = text.split(":", 2)[0] + ":" + text.split(":", 2)[1][:2]
        if label != seen[-1]:
            seen.append(label)
        page.wait_for_timeout(100)
    assert seen == [labels[0], labels[1], labels[2], labels[0]], seen
    assert page.get_by_role("slider", name="Hour").first.get_attribute("aria-valuenow") == city_hour
    assert "hour=38" in page.url
    page.get_by_text("Play forecast", exact=True).click()
    assert exception_texts(page) == []
    full_screenshot(page, artifacts_dir() / "map-risk.png")
    database.dispose()
