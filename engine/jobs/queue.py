"""Requesting, inspecting and cancelling jobs (the ``jobs`` table, db/models.py), and the upload folders
that travel with a job. The worker that runs them is engine/jobs/worker.py."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from db import Database
from db.models import Job, Worker, utcnow
from db.session import data_dir
from engine.errors import InputError
from engine.jobs.kinds import KINDS
from engine.jobs.types import WORKER_ALIVE_SECONDS, JobView

# --- requesting, inspecting and cancelling ----------------------------------------------------------


def job_view(job: Job) -> JobView:
    """A job row as a detached snapshot, titled with its kind's title (its name for an unknown kind)."""
    kind = KINDS.get(job.kind)
    return JobView.of(job, kind.title if kind else job.kind)


def enqueue(database: Database, kind: str, params: dict | None = None) -> int:
    """Check the request and queue it; returns the job id. Bad requests raise InputError naming the
    field; nothing is written then."""
    if kind not in KINDS:
        raise InputError(f"unknown job kind {kind!r}; expected one of {', '.join(sorted(KINDS))}", field="kind")
    checked = KINDS[kind].check(dict(params or {}))
    try:
        json.dumps(checked)
    except (TypeError, ValueError) as error:
        raise InputError(f"the parameters must be plain JSON values: {error}", field="params") from None
    with database.write_session() as session, session.begin():
        job = Job(
            kind=kind, params=checked, status="queued", progress=0.0, attempts=0, message="waiting for the worker"
        )
        session.add(job)
        session.flush()
        return int(job.id)


def get_job(database: Database, job_id: int) -> JobView:
    with database.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise InputError(f"no job with id {job_id}", field="job", hint="`lsdm jobs list` shows them")
        return job_view(job)


def list_jobs(
    database: Database, *, statuses: Iterable[str] | None = None, kinds_: Iterable[str] | None = None, limit: int = 100
) -> list[JobView]:
    """Newest first."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if statuses:
        query = query.where(Job.status.in_(list(statuses)))
    if kinds_:
        query = query.where(Job.kind.in_(list(kinds_)))
    with database.session() as session:
        return [job_view(job) for job in session.scalars(query)]


def cancel(database: Database, job_id: int) -> str:
    """Cancel a job: a queued one at once, a running one at its next progress report. Returns the
    job's status afterwards (a finished job is left as it is)."""
    with database.write_session() as session, session.begin():
        job = session.get(Job, job_id)
        if job is None:
            raise InputError(f"no job with id {job_id}", field="job", hint="`lsdm jobs list` shows them")
        if job.status == "queued":
            job.status, job.finished_at, job.message = "cancelled", utcnow(), "cancelled before it started"
            params = dict(job.params or {})
        elif job.status == "running":
            job.cancel_requested = True
            job.message = "cancelling ..."
            return "running"
        else:
            return job.status
    discard_uploads(params)
    return "cancelled"


def wait_for(
    database: Database,
    job_id: int,
    *,
    timeout: float = 600.0,
    poll: float = 0.25,
    on_progress: Callable[[JobView], None] | None = None,
) -> JobView:
    """Poll until the job is finished (for scripts and tests); raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(database, job_id)
        if on_progress:
            on_progress(job)
        if not job.active:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:.0f} s ({job.message})")
        time.sleep(poll)


def live_workers(database: Database, *, within: float = WORKER_ALIVE_SECONDS) -> list[dict]:
    """Workers that beat within the last ``within`` seconds and have not stopped."""
    since = utcnow() - timedelta(seconds=within)
    with database.session() as session:
        rows = session.scalars(select(Worker).where(Worker.stopped_at.is_(None), Worker.heartbeat_at >= since))
        return [
            {
                "id": w.id,
                "pid": w.pid,
                "host": w.host,
                "lanes": list(w.lanes or []),
                "started_at": w.started_at,
                "heartbeat_at": w.heartbeat_at,
            }
            for w in rows
        ]


# --- uploads that travel with a job -----------------------------------------------------------------


def uploads_root() -> Path:
    path = data_dir() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_uploads_dir() -> Path:
    """A fresh folder under ``<data dir>/uploads`` for files a job reads; the job removes it when it ends."""
    path = uploads_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def discard_uploads(params: dict) -> None:
    """Remove a job's upload folder (only ever one under ``<data dir>/uploads``)."""
    folder = params.get("uploads_dir")
    if not folder:
        return
    path, root = Path(folder).resolve(), uploads_root().resolve()
    if root in path.parents:
        shutil.rmtree(path, ignore_errors=True)
