"""The one job component every page uses: queue long work for the worker and follow it.

Long work (forecasts, what-ifs, training, evaluations, ingests, city and environment builds) never runs
in the Streamlit process: a page queues it (``submit``, engine/jobs/queue.py ``enqueue``) and `lsdm worker`
runs it, whatever the browser does meanwhile. ``follow`` shows a followed job: while it is queued or
running, a fragment that polls the jobs table every second (title, progress bar with the job's own
message, elapsed time, Cancel, and a warning when no worker is alive to run it); a finished job renders
once, without a timer.

The followed job's id is kept in session state (per follower ``key``) and in the URL (``?job=ID``), so
that a reload, or the link itself, keeps following it. The end of a job is handled in two steps, each
once: first the cached queries are dropped (``bump_revision``) and the whole page reruns, so that it is
drawn from fresh data; then the page concludes the job (``on_done`` for a result, the reason for a
failure, a note for a cancellation) and stops following it.

``require_dataset`` is every page's first line: the active data set, or the empty state that follows the
first launch's job (here, not in app/common.py, which this module builds on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import streamlit as st

from app.common import DatasetInfo, bump_revision, database, dataset_info, query_int, set_query
from db.models import utcnow
from engine import jobs
from engine.errors import InputError, plural
from engine.jobs import JobView

POLL_SECONDS = 1.0
NO_WORKER = (
    "No worker is running, so queued jobs wait. Start one in a terminal with `lsdm worker` (with the "
    "same `--db` as the dashboard), or restart the dashboard with the launcher (`make run` or "
    "`lsdm app`), which starts one beside it."
)
_ENDED = "_jobs_ended"  # ids of followed jobs whose end was seen: revision bumped and page rerun once
MAX_ID = 2**63 - 1


def _state_key(key: str) -> str:
    return f"_job_{key}"


# --- queueing -----------------------------------------------------------------------------------------


_CONFIRMED = "_jobs_confirmed_kinds"  # kinds whose long run was confirmed once in this session: not asked again
_PENDING = "_jobs_pending"  # a long request waiting for its confirmation: kind, params and the estimate


def submit(kind: str, params: dict, *, slots: dict | None = None) -> int | None:
    """Queue a job; returns its id, or None when the request was refused: then ``st.error`` names the
    parameter (placed in ``slots[field]`` when the page has a slot for that field).

    A job expected to run more than a minute (engine/jobs/queue.py ``estimate``) is not queued at once the
    first time in a session: the page reruns and the follower of that kind (``followed``) asks, saying how
    long and on what the estimate rests; "Queue it" queues it there. After one "Queue it" for a kind, no
    more asking in the session."""
    try:
        jobs.KINDS[kind].check(dict(params))
    except (TypeError, ValueError):  # refused: enqueue says why (at the field) and drops the uploads
        return _enqueue(kind, params, slots)
    expected = jobs.estimate(database(), kind, params)
    if expected.long and kind not in st.session_state.get(_CONFIRMED, set()):
        st.session_state[_PENDING] = {"kind": kind, "params": params, "estimate": expected}
        st.rerun()
    return _enqueue(kind, params, slots)


def _enqueue(kind: str, params: dict, slots: dict | None = None) -> int | None:
    try:
        return jobs.enqueue(database(), kind, params)
    except InputError as error:
        slot = (slots or {}).get(error.field) or st
        slot.error(f"Not started: {error}", icon=":material/error:")
        return None
    except Exception as error:  # another process keeps the database locked: say so on the form
        from db.session import busy_message

        message = busy_message(error)
        if message is None:
            raise
        st.error(f"Not started: {message[0].upper()}{message[1:]}", icon=":material/hourglass_top:")
        return None


def _ask(pending: dict) -> int | None:
    """The question about a long job, where its follower stands; the new job's id once it is queued."""
    kind, params, expected = pending["kind"], pending["params"], pending["estimate"]
    with st.container(border=True):
        st.markdown(
            f":material/schedule: **{jobs.KINDS[kind].title}** should take **{duration_text(expected.seconds or 0)}** "
            f"({expected.basis}). It runs in the background: keep working, and follow it here or on **Jobs**, "
            "where it can be cancelled."
        )
        left, right, _ = st.columns([1, 1, 3])
        if left.button("Queue it", type="primary", icon=":material/play_arrow:", key="_jobs_confirm_yes"):
            del st.session_state[_PENDING]
            st.session_state.setdefault(_CONFIRMED, set()).add(kind)
            return _enqueue(kind, params)
        if right.button("Not now", key="_jobs_confirm_no"):
            del st.session_state[_PENDING]
            jobs.discard_uploads(params)
            st.rerun()
        st.caption("Asked once per kind of job in a session.")
    return None


def cancel(job_id: int) -> None:
    """Cancel a job (a queued one at once, a running one at its next progress report)."""
    jobs.cancel(database(), job_id)


# --- which job a page follows ---------------------------------------------------------------------------


def followed(key: str, kinds: Iterable[str]) -> int | None:
    """The job this follower shows: the one kept in session state, else the job of a ``?job=ID`` link
    when it is of one of ``kinds`` (a link to another kind of job belongs to another page or follower)."""
    kinds = set(kinds)
    pending = st.session_state.get(_PENDING)
    if pending is not None and pending["kind"] in kinds:  # a long job waiting for its "Queue it" (``submit``)
        queued = _ask(pending)
        if queued is not None:
            st.session_state[_state_key(key)] = queued
            return queued
    job_id = st.session_state.get(_state_key(key))
    if job_id is not None:
        return int(job_id)
    linked = query_int("job", None, 1, MAX_ID)
    if linked is None:
        return None
    try:
        job = jobs.get_job(database(), linked)
    except InputError:
        st.warning(f"Link parameter `job={linked}`: there is no such job (the **Jobs** page lists them).")
        set_query(job=None)
        return None
    held = any(name.startswith("_job_") and value == job.id for name, value in st.session_state.items())
    return job.id if job.kind in kinds and not held else None  # held: another follower shows it


def forget(key: str) -> None:
    """Stop following (session state, and the link when it names this follower's job)."""
    job_id = st.session_state.pop(_state_key(key), None)
    if job_id is not None and query_int("job", None, 1, MAX_ID) == int(job_id):
        set_query(job=None)


# --- following ----------------------------------------------------------------------------------------


def follow(
    job_id: int,
    *,
    key: str,
    on_done: Callable[[JobView], None] | None = None,
    live: Callable[[JobView], None] | None = None,
) -> JobView | None:
    """Show a job: live while it is active, then (once) its result, failure or cancellation.

    ``on_done(job)`` runs once, in a full run of the page after the job is done and the page's cached
    queries were dropped, e.g. to open the result (``job.ref_id("forecast_run")``); without it a short
    success note is shown. ``live(job)`` draws extra parts of a running job under its progress (e.g. the
    loss curve so far from ``job.result``). Returns the job as last read (None for an unknown id)."""
    try:
        job = jobs.get_job(database(), job_id)
    except InputError:
        forget(key)
        st.warning(f"Job {job_id} no longer exists.")
        return None
    st.session_state[_state_key(key)] = job.id
    if job.active:
        set_query(job=job.id)
        _watch(job.id, live)
        return job
    ended: set = st.session_state.setdefault(_ENDED, set())
    if job.id not in ended:  # it ended while no fragment watched (a reload, a finished link): fresh data first
        ended.add(job.id)
        bump_revision()
        st.rerun(scope="app")
    ended.discard(job.id)
    forget(key)
    if job.status == "done":
        if on_done is not None:
            on_done(job)
        else:
            st.success(f"{job.title}: {job.message or 'done'}", icon=":material/check_circle:")
    elif job.status == "failed":
        st.error(f"{job.title} failed: {job.error or job.message or 'no reason recorded'}", icon=":material/error:")
    else:
        st.info(f"{job.title} was cancelled; nothing was stored.", icon=":material/cancel:")
    return job


@st.fragment(run_every=POLL_SECONDS)
def _watch(job_id: int, live: Callable[[JobView], None] | None = None) -> None:
    """The live view of an active job, redrawn every second on its own; at the job's end the whole page
    reruns once (with fresh data) and the fragment, no longer called, stops polling."""
    job = jobs.get_job(database(), job_id)
    if not job.active:
        st.session_state.setdefault(_ENDED, set()).add(job.id)
        bump_revision()
        st.rerun(scope="app")
    show_progress(job, key=f"follow_cancel_{job.id}")
    if live is not None and job.status == "running":
        live(job)


def elapsed_text(job: JobView) -> str:
    """'running for 12 s' or 'queued 3 s ago'."""
    if job.status == "running" and job.seconds is not None:
        return f"running for {job.seconds:.0f} s"
    waited = max(0.0, (utcnow() - job.created_at).total_seconds())
    return f"queued {waited:.0f} s ago"


def duration_text(seconds: float) -> str:
    """'about 40 s', 'about 3 min', 'about 1.5 h'."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def queue_text(outlook: jobs.QueueOutlook | None) -> str:
    """Where a queued job stands: its place in its lane, what runs before it, and when it should start and
    end (from the median run time of past jobs of each kind)."""
    if outlook is None:
        return "Waiting for the worker ..."
    running = [j for j in outlook.ahead if j.status == "running"]
    queued = [j for j in outlook.ahead if j.status == "queued"]
    parts = []
    if running:
        parts.append(f"behind **{running[0].title}** (running, {running[0].progress:.0%})")
    if queued:
        parts.append(f"{plural(len(queued), 'job')} queued before it")
    place = "next" if not outlook.ahead else "; ".join(parts)
    text = f"Waiting in the {outlook.lane} queue: {place}."
    if outlook.start_in is not None and outlook.ahead:
        text += f" Starts in {duration_text(outlook.start_in)}"
        text += f", done {duration_text(outlook.start_in + outlook.run_for)} from now." if outlook.run_for else "."
    elif outlook.run_for is not None and not outlook.ahead:
        text += f" Runs {duration_text(outlook.run_for)}."
    if outlook.unknown:
        text += f" No estimate for {', '.join(outlook.unknown)}: no finished job of that kind yet."
    else:
        text += " (Estimates: the median run time of the last jobs of each kind.)"
    return text


def show_progress(job: JobView, *, key: str, worker_note: bool = True) -> None:
    """An active job: title, progress bar with its message, elapsed time, Cancel and, for a queued job,
    that it waits for the worker (with a warning when none is alive, unless ``worker_note`` is off
    because the page says so once for all jobs)."""
    with st.container(border=True):
        top = st.columns([5, 1], vertical_alignment="center")
        top[0].markdown(f"**{job.title}** · job {job.id} · {elapsed_text(job)}")
        top[1].button(
            "Cancelling ..." if job.cancel_requested else "Cancel",
            key=key,
            icon=":material/cancel:",
            disabled=job.cancel_requested,
            on_click=cancel,
            args=(job.id,),
        )
        st.progress(job.progress, text=job.message or job.status)
        if job.status == "queued":
            st.caption(queue_text(jobs.queue_outlook(database(), job.id)))
            if worker_note and not jobs.live_workers(database()):
                st.warning(NO_WORKER, icon=":material/warning:")


# --- first launch ---------------------------------------------------------------------------------------

FIRST_LAUNCH_KINDS = ("setup.default", "city.build")
FIRST_LAUNCH_KEY = "first_launch"


def first_launch(*, stop: bool = True) -> None:
    """On a database without data: follow the job that is making the first data set, if any (the
    launcher queues ``setup.default`` on an empty database), and stop the page (``stop``) while it runs;
    the page appears when it is done. Without such a job, say why the last one failed, if it did."""
    latest = jobs.list_jobs(database(), kinds_=FIRST_LAUNCH_KINDS, limit=1)
    job = latest[0] if latest else None
    if job is not None and (job.active or st.session_state.get(_state_key(FIRST_LAUNCH_KEY)) == job.id):
        if job.active:
            st.info("Preparing the first data set; the page appears when it is ready.", icon=":material/hourglass_top:")
        follow(job.id, key=FIRST_LAUNCH_KEY)  # ended unseen: fresh data first (the page then appears)
        if stop and job.active:
            st.stop()
        return
    if job is not None and job.status == "failed":
        st.error(f"{job.title} failed: {job.error or job.message}", icon=":material/error:")


def require_dataset() -> DatasetInfo:
    """The active data set, or an empty state that stops the page: the progress of the job making the
    first data set while there is one (the page appears when it is done), else how to get data."""
    info = dataset_info()
    if info is None:
        first_launch()
        st.info(
            "No data yet. The first launch builds the default synthetic city; you can also build one with "
            "`lsdm city build` or ingest real data on the **Data** page.",
            icon=":material/database:",
        )
        st.stop()
    forget(FIRST_LAUNCH_KEY)
    return info
