"""Several operators at once: three browser sessions on the served dashboard (server + worker) each
queue a forecast within the same second; every session gets its own run, nothing is lost or mixed up,
and the database stays sound."""

from __future__ import annotations

import re
import sqlite3

import pytest
from sqlalchemy import select

from db import open_database
from db.models import ForecastRun, Job
from tests.e2e.conftest import VIEWPORT, exception_texts, wait_rendered

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USERS = ("U0011", "U0012", "U0013")


def test_three_sessions_queue_forecasts_at_once_and_each_gets_its_own_run(browser, fresh_dashboard):
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in USERS]
    try:
        tabs = []
        for context, user in zip(contexts, USERS, strict=True):
            tab = context.new_page()
            tab.set_default_timeout(120_000)
            tab.goto(f"{fresh_dashboard.url}/forecast?user={user}&hour=300&horizon=3")
            wait_rendered(tab, "Forecast")
            tabs.append(tab)
        for tab in tabs:  # three clicks in quick succession, before any job has finished
            tab.get_by_role("button", name="Run forecast").click()
        runs = {}
        for tab, user in zip(tabs, USERS, strict=True):
            tab.wait_for_url(re.compile(r"[?&]run=\d+"), timeout=300_000)
            wait_rendered(tab, "Forecast", timeout=120)
            assert exception_texts(tab) == []
            runs[user] = int(re.search(r"[?&]run=(\d+)", tab.url).group(1))
    finally:
        for context in contexts:
            context.close()

    assert len(set(runs.values())) == len(USERS), runs
    database = open_database(str(fresh_dashboard.db_path))
    with database.session() as session:
        for user, run_id in runs.items():
            assert session.get(ForecastRun, run_id).params["entities"] == [user]
        jobs = session.scalars(select(Job).where(Job.kind == "forecast")).all()
        assert len(jobs) == len(USERS) and all(j.status == "done" and j.attempts == 1 for j in jobs)
        assert sorted(j.result_ref for j in jobs) == sorted(f"forecast_run:{r}" for r in runs.values())
    with sqlite3.connect(fresh_dashboard.db_path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
