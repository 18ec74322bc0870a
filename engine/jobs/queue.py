"""Requesting, inspecting and cancelling jobs (the ``jobs`` table, db/models.py), and the upload folders
that travel with a job. The worker that runs them is engine/jobs/worker.py."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from db import Database
from db.models import Job, Worker, utcnow
from db.queries import NoDatasetError, active_model, get_dataset
from db.session import data_dir
from engine.errors import InputError, plural
from engine.jobs.kinds import KINDS
from engine.jobs.types import WORKER_ALIVE_SECONDS, JobView

# --- requesting, inspecting and cancelling ----------------------------------------------------------


def job_view(job: Job) -> JobView:
    """A job row as a detached snapshot, titled with its kind's title (its name for an unknown kind)."""
    kind = KINDS.get(job.kind)
    return JobView.of(job, kind.title if kind else job.kind)


def enqueue(database: Database, kind: str, params: dict | None = None) -> int:
    """Check the request and queue it; returns the job id. Bad requests raise InputError naming the
    field; nothing is written then, and the request's upload folder is removed."""
    if kind not in KINDS:
        raise InputError(f"unknown job kind {kind!r}; expected one of {', '.join(sorted(KINDS))}", field="kind")
    try:
        checked = KINDS[kind].check(dict(params or {}))
        json.dumps(checked)
    except (TypeError, ValueError) as error:  # InputError is a ValueError
        discard_uploads(params or {})  # a refused request never runs: its uploads would be left behind
        if isinstance(error, InputError):
            raise
        raise InputError(f"the parameters must be plain JSON values: {error}", field="params") from None
    checked = pin_targets(database, kind, checked)
    with database.write_session() as session, session.begin():
        job = Job(
            kind=kind, params=checked, status="queued", progress=0.0, attempts=0, message="waiting for the worker"
        )
        session.add(job)
        session.flush()
        return int(job.id)


PINNED_KINDS = ("forecast", "whatif", "load", "load.area", "load.whatif")  # forecasts: the data set and model as asked


def pin_targets(database: Database, kind: str, params: dict) -> dict:
    """A forecast job carries the data set and the model it was asked for: "the active one" is resolved when
    the job is queued, not when a worker gets to it (two forecasts queued before an ingest that made another
    data set active ran on that one, and failed). Unchanged where nothing is active yet (the job says so)."""
    if kind not in PINNED_KINDS or (params.get("dataset") is not None and params.get("model_id") is not None):
        return params
    with database.session() as session:
        try:
            dataset = get_dataset(session, params.get("dataset"))
        except NoDatasetError:
            return params
        out = {**params, "dataset": dataset.name}
        if out.get("model_id") is None:
            model = active_model(session, dataset.id)
            if model is not None:
                out["model_id"] = model.id
    return out


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
    folder = params.get("uploads_dir") if isinstance(params, dict) else None
    if not folder or not isinstance(folder, str):
        return  # nothing, or not a folder this program made
    try:
        path, root = Path(folder).resolve(), uploads_root().resolve()
    except (OSError, ValueError):  # a NUL byte, a loop of links: not a folder this program made
        return
    if root in path.parents:
        shutil.rmtree(path, ignore_errors=True)


# --- where a queued job stands ------------------------------------------------------------------------

HISTORY_JOBS = 20  # past runs of a kind whose median run time is its estimate
MIN_PROGRESS_FOR_RATE = 0.05  # below this a running job's remaining time is the kind's median less its age


@dataclass(frozen=True)
class QueueOutlook:
    """Where a queued job stands in its lane (one lane runs one job at a time): the jobs ahead of it (the
    lane's running one first), and the estimated seconds until it starts and that it then runs. An estimate
    is None where a kind has no finished run to go by (``unknown`` names those kinds)."""

    lane: str
    position: int  # 1: it starts next
    ahead: list[JobView]
    start_in: float | None
    run_for: float | None
    unknown: list[str]


LONG_JOB_SECONDS = 60.0  # a job expected to run longer is announced with its estimate before it is queued


@dataclass(frozen=True)
class Estimate:
    """How long a requested job should run (seconds; None: nothing to go by) and what that rests on."""

    seconds: float | None
    basis: str

    @property
    def long(self) -> bool:
        return self.seconds is not None and self.seconds > LONG_JOB_SECONDS


def estimate(database: Database, kind: str, params: dict) -> Estimate:
    """The expected run time of a job of ``kind`` with ``params``: the median over this machine's last
    finished jobs of the kind (of their seconds per unit of the kind's ``size``, times this request's size,
    where the kind has one); before any, the kind's measured ``prior``; else unknown."""
    job_kind = KINDS[kind]
    with database.session() as session:
        rows = session.execute(
            select(Job.params, Job.started_at, Job.finished_at)
            .where(Job.kind == kind, Job.status == "done", Job.started_at.is_not(None), Job.finished_at.is_not(None))
            .order_by(Job.id.desc())
            .limit(HISTORY_JOBS)
        ).all()
    size = job_kind.size or (lambda _: 1.0)
    rates = sorted(
        max(0.0, (end - start).total_seconds()) / max(size(dict(p or {})), 1e-9)
        for p, start, end in rows
        if start and end
    )
    if rates:
        middle = len(rates) // 2
        rate = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
        scaled = " scaled to this request's size" if job_kind.size else ""
        return Estimate(rate * size(params), f"the median of the last {plural(len(rates), 'such job')} here{scaled}")
    if job_kind.prior is not None:
        seconds, note, reference = job_kind.prior
        basis = f"none has run here yet; {note}"
        if job_kind.size:  # scaled from the measured request to this one
            return Estimate(seconds * job_kind.size(params) / job_kind.size(reference), basis)
        if all(params.get(name, value) == value for name, value in reference.items()):  # absent: the default
            return Estimate(seconds, basis)
    return Estimate(None, "none has run here yet")


def remaining_seconds(job: JobView, typical: float | None) -> float | None:
    """A running job's time left: from its own rate once it reported some progress, else the kind's median
    less its age; a queued job's: the kind's median."""
    if job.status != "running":
        return typical
    age = job.seconds or 0.0
    if job.progress >= MIN_PROGRESS_FOR_RATE:
        return max(0.0, age / job.progress - age)
    return None if typical is None else max(0.0, typical - age)


def queue_outlook(database: Database, job_id: int) -> QueueOutlook | None:
    """The outlook of a queued job (None when it is not queued any more)."""
    job = get_job(database, job_id)
    kind = KINDS.get(job.kind)
    if job.status != "queued" or kind is None:
        return None
    lane_kinds = [name for name, other in KINDS.items() if other.lane == kind.lane]
    with database.session() as session:
        rows = session.scalars(
            select(Job)
            .where(
                Job.kind.in_(lane_kinds),
                (Job.status == "running") | ((Job.status == "queued") & (Job.id < job.id)),
            )
            .order_by((Job.status == "queued").asc(), Job.id)
        ).all()
        ahead = [job_view(row) for row in rows]
    # Each job's own estimate: the kind's past run times scaled to its size (``estimate``).
    waits = [remaining_seconds(j, estimate(database, j.kind, j.params).seconds) for j in ahead]
    run_for = estimate(database, job.kind, job.params).seconds
    unknown = sorted({j.kind for j, wait in zip(ahead, waits, strict=True) if wait is None})
    if run_for is None:
        unknown = sorted({*unknown, job.kind})
    start_in = None if any(wait is None for wait in waits) else float(sum(w for w in waits if w is not None))
    return QueueOutlook(kind.lane, len([j for j in ahead if j.status == "queued"]) + 1, ahead, start_in,
                        run_for, unknown)  # fmt: skip
