"""Jobs: the long work that `lsdm worker` runs for the dashboard (forecasts, what-ifs, training,
evaluations, ingests, city and environment builds): whether a worker is alive, the active jobs with their
progress and a Cancel button, and the recent jobs with their outcome, the failure's reason and a link to
what they made. The page refreshes itself every few seconds.
The logic lives in app/jobs_data.py; the queue itself in engine/jobs/."""

from __future__ import annotations

import streamlit as st

from app import jobs_data as jd
from app import jobs_ui
from app.common import database, page_header
from db.models import utcnow
from engine import jobs

REFRESH_SECONDS = 2.0
RECENT = 100

page_header("Jobs", "Long work run by the worker beside the dashboard; it goes on whatever the browser does.")
db = database()


def workers_section() -> None:
    st.subheader("Worker")
    workers = jobs.live_workers(db)
    if not workers:
        st.warning(jobs_ui.NO_WORKER, icon=":material/warning:")
        return
    st.dataframe(
        jd.workers_frame(workers, utcnow()),
        hide_index=True,
        width="stretch",
        column_config={
            "started": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "last heartbeat (s ago)": st.column_config.NumberColumn(format="%.1f"),
        },
    )


def active_section(active: list[jobs.JobView]) -> None:
    st.subheader("Active")
    if not active:
        st.caption("No job is queued or running.")
    for job in reversed(active):  # oldest first: the order the worker takes them in
        jobs_ui.show_progress(job, key=f"jobs_cancel_{job.id}", worker_note=False)


def recent_section() -> None:
    st.subheader("Recent")
    statuses = st.multiselect("Status", jobs.STATUSES, key="jobs_status", placeholder="every status")
    recent = jobs.list_jobs(db, statuses=statuses or None, limit=RECENT)
    if not recent:
        st.caption("No jobs yet." if not statuses else "No job with this status.")
        return
    st.dataframe(
        jd.jobs_frame(recent),
        hide_index=True,
        width="stretch",
        column_config={
            "id": st.column_config.NumberColumn("job", format="%d"),
            "job": "what",
            "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "ran": st.column_config.TextColumn(
                "ran",
                help="The whole job, from a worker taking it to its end (loading the model and data included); "
                "a run's own 'computed in' time in the message counts the computation alone.",
            ),
            "link": st.column_config.LinkColumn("open", display_text="open"),
            "details": st.column_config.TextColumn("message or reason", width="large"),
        },
    )
    st.caption(f"The newest {RECENT} jobs. `lsdm jobs list` shows them on the command line.")


def jobs_view(active: list[jobs.JobView]) -> None:
    workers_section()
    active_section(active)
    recent_section()


@st.fragment(run_every=REFRESH_SECONDS)
def live_jobs_view() -> None:
    """The whole page, redrawn on its own every few seconds: a job queued from another session or the
    command line, or a worker that stops, shows up without a reload."""
    jobs_view(jobs.list_jobs(db, statuses=jobs.ACTIVE))


live_jobs_view()
