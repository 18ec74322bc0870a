"""Issue 19, problems 4, 9 and 10 in a real browser: the Map plays its hours in a fragment (the page around it
is not run again), finds a cell, keeps its legend in view above the map; the Cell page names an out-of-range
number under its field with Run disabled; the glossary explains the jargon."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.conftest import exception_texts, wait_rendered
from tests.e2e.test_dashboard import PAGES, queued_jobs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def map_caption(page) -> str:
    return page.get_by_text("in all cells").first.inner_text()


def test_the_map_plays_hours_finds_a_cell_and_keeps_its_legend_in_view(page, dashboard):
    page.goto(f"{dashboard.url}/?hour=30&user=U0001")
    wait_rendered(page, PAGES["map"][1])
    legend = page.get_by_text("basemap: the synthetic city's drawing")
    box = legend.bounding_box()
    assert box is not None and box["y"] + box["height"] < 900, "the legend is below the fold"
    assert page.get_by_text("U0001's day: early → late").is_visible()
    first = map_caption(page).split(":")[0]

    page.get_by_text("Play", exact=True).click()
    seen = [first]
    deadline = time.monotonic() + 30
    while len(seen) < 3 and time.monotonic() < deadline:  # two steps on, one a second
        label = map_caption(page).split(":")[0]
        if label != seen[-1]:
            seen.append(label)
        page.wait_for_timeout(100)
    page.get_by_text("Play", exact=True).click()  # stop (the dashboard is shared with other tests)
    assert len(seen) == 3, seen
    page.wait_for_url(re.compile(r"[?&]hour=3[2-9]"), timeout=10_000)  # the link follows the playback

    finder = page.get_by_role("combobox", name="Find")
    finder.fill("C0042")
    page.get_by_role("option", name=re.compile(r"^cell C0042 ")).click()
    page.wait_for_url(re.compile(r"[?&]find=cell(%3A|:)C0042"), timeout=10_000)
    wait_rendered(page, PAGES["map"][1])
    assert exception_texts(page) == []


def test_an_out_of_range_sample_count_on_the_cell_page_is_named_at_the_field(page, dashboard):
    before = queued_jobs(dashboard.db_path)
    page.goto(f"{dashboard.url}/cell?cell=C0001")
    wait_rendered(page, PAGES["cell"][1])
    field = page.get_by_role("spinbutton", name="Sample paths")
    field.scroll_into_view_if_needed()
    field.fill("100000")
    field.press("Enter")
    wait_rendered(page, PAGES["cell"][1])
    assert field.input_value() == "100000"  # not replaced
    message = page.get_by_text(re.compile(r"^Sample paths: expected a value from \d+ to [\d,]+, got 100,000"))
    message.scroll_into_view_if_needed()
    assert message.is_visible()
    assert page.get_by_role("button", name="Forecast this cell").is_disabled()
    assert queued_jobs(dashboard.db_path) == before
    assert exception_texts(page) == []


def test_the_glossary_explains_the_forecast_jargon(page, dashboard):
    page.goto(f"{dashboard.url}/glossary")
    wait_rendered(page, "Glossary")
    for term in ("CRPS", "DDIM steps", "paired paths", "a and b (Eq. 9)"):
        assert page.get_by_text(term, exact=True).first.is_visible(), term
    assert exception_texts(page) == []


def upload(page, label: str, name: str, data: bytes, mime: str) -> None:
    """Give a Streamlit file uploader a file, as a user choosing it would."""
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text=label)
    uploader.locator('input[type="file"]').set_input_files({"name": name, "mimeType": mime, "buffer": data})


def test_a_garbage_table_upload_is_refused_on_its_form_and_queues_nothing(page, dashboard):
    """Issue 19, problem 2: a garbage CSV waited 24 minutes behind an evaluation, then failed in 0.4 s."""
    before = queued_jobs(dashboard.db_path)
    page.goto(f"{dashboard.url}/data")
    wait_rendered(page, PAGES["data"][1])
    page.get_by_role("tab", name="Ingest a table").click()
    upload(page, "Records (CSV or Parquet)", "records.csv", b"this,is\nnot,traffic\n", "text/csv")
    upload(page, "Cells (CSV or Parquet)", "cells.csv", b"cell_id,lat,lon,shops\nc1,31.2,121.4,3\n", "text/csv")
    wait_rendered(page, PAGES["data"][1])
    page.get_by_role("button", name="Ingest").click()
    wait_rendered(page, PAGES["data"][1])
    message = page.get_by_text(re.compile(r"records\.csv.*missing column"))
    message.first.scroll_into_view_if_needed()
    assert message.first.is_visible()
    assert queued_jobs(dashboard.db_path) == before
    assert exception_texts(page) == []


def test_a_non_image_what_if_tile_is_an_error_at_the_field_not_a_traceback(page, dashboard):
    """Issue 19, problem 3: a non-image tile showed PIL's traceback and the Run button disappeared."""
    page.goto(f"{dashboard.url}/whatif?user=U0001")
    wait_rendered(page, PAGES["whatif"][1])
    page.get_by_text("Upload an image", exact=True).click()
    wait_rendered(page, PAGES["whatif"][1])
    upload(page, "Tile image (PNG or JPEG)", "notes.png", b"these are my notes, not a picture", "image/png")
    wait_rendered(page, PAGES["whatif"][1])
    message = page.get_by_text("not a readable image (PNG or JPEG expected)")
    message.first.scroll_into_view_if_needed()
    assert message.first.is_visible()
    run = page.get_by_role("button", name="Run what-if")
    assert run.is_visible() and run.is_disabled()
    assert exception_texts(page) == []


def test_a_what_if_says_whether_its_change_matters_and_its_runs_are_labelled_in_the_history(page, fresh_dashboard):
    """Issue 19, problems 7 and 8: what-if runs were listed as ordinary forecasts with identical labels, and a
    result did not say whether the change was beyond noise. A "move to another cell" scenario through the
    worker; the page then states the paired interval and a verdict; the Forecast page's history labels the
    two runs and filters them by kind."""
    page.goto(f"{fresh_dashboard.url}/whatif?user=U0001")
    wait_rendered(page, PAGES["whatif"][1])
    for label, value in (("Horizon (h)", "2"), ("Sample paths", "4")):
        field = page.get_by_role("spinbutton", name=label).first
        field.fill(value)
        field.press("Enter")
        wait_rendered(page, PAGES["whatif"][1])
    page.get_by_text("Move to a cell", exact=True).click()
    wait_rendered(page, PAGES["whatif"][1])
    page.get_by_role("button", name="Run what-if").click()
    page.wait_for_url(re.compile(r"[?&]scenario=\d+"), timeout=300_000)
    wait_rendered(page, PAGES["whatif"][1], timeout=120)
    verdict = page.get_by_text(re.compile(r"(Within|Beyond) noise"))
    verdict.first.scroll_into_view_if_needed()
    assert verdict.first.is_visible()
    assert page.get_by_text(re.compile(r"paths' changes lie between")).first.is_visible()
    assert exception_texts(page) == []

    page.goto(f"{fresh_dashboard.url}/forecast")
    wait_rendered(page, PAGES["forecast"][1])
    kinds = page.get_by_role("button", name=re.compile(r"^what-if (baseline|scenario)$"))
    assert kinds.count() == 2  # the history's kind filter offers both, one per stored run of the pair
    assert exception_texts(page) == []
