"""Jobs: long work requested by the dashboard or the command line and run by `lsdm worker`.

The queue is the ``jobs`` table (db/models.py). Its life cycle::

    queued --claim--> running --> done | failed | cancelled
       \\--cancel--> cancelled          running --worker died--> queued (retry once) | failed

Decisions
- **Atomic claim.** A worker claims the oldest queued job of its lanes with ``UPDATE ... WHERE id = ?
  AND status = 'queued'`` inside a write transaction (``BEGIN IMMEDIATE`` on SQLite); only the worker
  whose update changed the row owns the job, so two workers never run the same job (also on
  PostgreSQL, where the guard does the work).
- **Lanes.** Interactive jobs (forecasts, what-ifs) and batch jobs (city builds, ingests, environment
  builds, training, evaluations, installs) are claimed by two threads of the worker process, so a
  forecast never waits behind a ten-minute training run.
- **Progress, heartbeat, cancellation.** A job reports progress to memory only (the engine calls back
  from inside its own write transactions, where a second writer would wait on itself); a heartbeat
  thread writes every running job's progress and the worker's heartbeat once a second and reads
  ``cancel_requested``. The next progress call of a job whose cancellation was asked raises
  :class:`JobCancelled`; a job's result is written by the engine in one transaction at the end, so a
  cancelled (or failed, or killed) job leaves nothing behind.
- **Dead workers.** A worker is dead when its row says it stopped, when it ran on this host and its
  process is gone, or when its heartbeat is older than ``stale_after`` seconds. Every worker checks at
  start and every ``recover_every`` seconds: a dead worker's running job is queued again when it has
  been started fewer than ``max_attempts`` (2) times, else marked failed with the reason.
- **Stopping.** SIGTERM/SIGINT stop the worker: running jobs are interrupted at their next progress
  call and queued again without counting the attempt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from db import Database
from db.models import Job, Worker, utcnow
from engine.errors import InputError

log = logging.getLogger("lsdm.jobs")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
LANES = ("interactive", "batch")
WORKER_ALIVE_SECONDS = 10.0  # the app calls a worker alive when it beat this recently


class JobCancelled(Exception):
    """Raised inside a job whose cancellation was asked for."""


class WorkerStopping(Exception):
    """Raised inside a job when its worker is shutting down (the job is queued again)."""


@dataclass(frozen=True)
class Outcome:
    """What a finished job produced: a reference to the stored result and a small summary."""

    ref: str | None
    summary: dict = field(default_factory=dict)
    message: str | None = None


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    lane: str
    run: Callable[[JobContext], Outcome]
    check: Callable[[dict], dict]
    changes_data: bool = False  # a done job of this kind drops the worker's loaded models and data


KINDS: dict[str, JobKind] = {}


def job_kind(name: str, title: str, *, lane: str = "batch", check: Callable[[dict], dict] | None = None,
             changes_data: bool = False) -> Callable:
    """Register a job kind (engine/job_kinds.py holds them all)."""
    if lane not in LANES:
        raise ValueError(f"lane must be one of {LANES}, got {lane!r}")

    def register(run: Callable[[JobContext], Outcome]) -> Callable[[JobContext], Outcome]:
        KINDS[name] = JobKind(name, title, lane, run, check or dict, changes_data)
        return run

    return register


def kinds() -> dict[str, JobKind]:
    import engine.job_kinds  # noqa: F401  (registers the kinds)

    return KINDS


# --- views ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    """A job as the app and the command line show it (a plain snapshot, detached from any session)."""

    id: int
    kind: str
    params: dict
    status: str
    progress: float
    message: str | None
    result_ref: str | None
    result: dict | None
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    attempts: int

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(job.id, job.kind, dict(job.params or {}), job.status, float(job.progress or 0.0), job.message,
                   job.result_ref, job.result, job.error, bool(job.cancel_requested), job.created_at, job.started_at,
                   job.heartbeat_at, job.finished_at, job.worker_id, int(job.attempts or 0))

    @property
    def title(self) -> str:
        kind = kinds().get(self.kind)
        return kind.title if kind else self.kind

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def seconds(self) -> float | None:
        """Run time so far (running) or in all (finished); None before it started."""
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return max(0.0, (end - self.started_at).total_seconds())

    def ref_id(self, prefix: str) -> int | None:
        """The id in ``result_ref`` when it starts with ``prefix`` (``forecast_run``, ``model``, ...)."""
        if self.result_ref and self.result_ref.startswith(prefix + ":"):
            return int(self.result_ref.split(":", 1)[1])
        return None

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("created_at", "started_at", "heartbeat_at", "finished_at"):
            out[name] = out[name].isoformat(timespec="seconds") if out[name] else None
        out["title"] = self.title
        out["seconds"] = None if self.seconds is None else round(self.seconds, 3)
        return out


# --- requesting, inspecting and cancelling ----------------------------------------------------------


def enqueue(database: Database, kind: str, params: dict | None = None) -> int:
    """Check the request and queue it; returns the job id. Bad requests raise InputError naming the
    field; nothing is written then."""
    registry = kinds()
    if kind not in registry:
        raise InputError(f"unknown job kind {kind!r}; expected one of {', '.join(sorted(registry))}", field="kind")
    checked = registry[kind].check(dict(params or {}))
    try:
        json.dumps(checked)
    except (TypeError, ValueError) as error:
        raise InputError(f"the parameters must be plain JSON values: {error}", field="params") from None
    with database.write_session() as session, session.begin():
        job = Job(kind=kind, params=checked, status="queued", progress=0.0, attempts=0, message="waiting for the worker")
        session.add(job)
        session.flush()
        return int(job.id)


def get_job(database: Database, job_id: int) -> JobView:
    with database.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise InputError(f"no job with id {job_id}", field="job", hint="`lsdm jobs list` shows them")
        return JobView.of(job)


def list_jobs(database: Database, *, statuses: Iterable[str] | None = None, kinds_: Iterable[str] | None = None,
              limit: int = 100) -> list[JobView]:
    """Newest first."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if statuses:
        query = query.where(Job.status.in_(list(statuses)))
    if kinds_:
        query = query.where(Job.kind.in_(list(kinds_)))
    with database.session() as session:
        return [JobView.of(job) for job in session.scalars(query)]


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


def wait_for(database: Database, job_id: int, *, timeout: float = 600.0, poll: float = 0.25,
             on_progress: Callable[[JobView], None] | None = None) -> JobView:
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
        return [{"id": w.id, "pid": w.pid, "host": w.host, "lanes": list(w.lanes or []),
                 "started_at": w.started_at, "heartbeat_at": w.heartbeat_at} for w in rows]


# --- uploads that travel with a job -----------------------------------------------------------------


def uploads_root() -> Path:
    from db.session import data_dir

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


# --- running ----------------------------------------------------------------------------------------


@dataclass
class _RunState:
    progress: float = 0.0
    message: str | None = None
    cancel: bool = False
    dirty: bool = True
    detail: dict | None = None


class JobContext:
    """What a running job sees: its id and parameters, the database, progress reporting (which is also
    where cancellation and shutdown take effect) and the worker's caches."""

    def __init__(self, worker: JobWorker, job: JobView, state: _RunState) -> None:
        self.worker = worker
        self.job = job
        self.params = job.params
        self.database = worker.database
        self._state = state

    def progress(self, fraction: float | None = None, message: str | None = None, *,
                 detail: dict | None = None) -> None:
        """Record progress (0..1, None keeps the last), a message and optionally a small JSON ``detail``
        that the app can draw while the job runs (stored in ``result`` until the job's own result
        replaces it; e.g. the loss curve so far); raises JobCancelled or WorkerStopping when the job
        must stop."""
        state = self._state
        if fraction is not None:
            state.progress = min(1.0, max(0.0, float(fraction)))
        if message is not None:
            state.message = message[:500]
        if detail is not None:
            state.detail = json.loads(json.dumps(detail, default=str))
        state.dirty = True
        self.check()

    def check(self) -> None:
        if self._state.cancel:
            raise JobCancelled()
        if self.worker.stopping.is_set():
            raise WorkerStopping()


def _host() -> str:
    return socket.gethostname()


def _process_alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there; rely on heartbeats
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobWorker:
    """The worker: claims jobs of its lanes, runs them, keeps the heartbeat, recovers dead workers' jobs.

    ``serve()`` is `lsdm worker`; ``drain()`` runs every queued job and returns (scripts and tests)."""

    def __init__(self, database: Database, *, lanes: Iterable[str] = LANES, poll: float = 0.2,
                 heartbeat: float = 1.0, stale_after: float = 60.0, recover_every: float = 30.0,
                 max_attempts: int = 2) -> None:
        self.database = database
        self.lanes = tuple(lanes)
        unknown = [lane for lane in self.lanes if lane not in LANES]
        if unknown or not self.lanes:
            raise InputError(f"unknown lane {unknown[0] if unknown else '(none)'}; expected some of {', '.join(LANES)}",
                             field="--lanes")
        self.poll, self.heartbeat, self.stale_after = poll, heartbeat, stale_after
        self.recover_every, self.max_attempts = recover_every, max_attempts
        self.id = f"{_host()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stopping = threading.Event()
        self._running: dict[int, _RunState] = {}
        self._lock = threading.Lock()
        self._beat_stop = threading.Event()
        self._cache: dict[str, tuple[object, object]] = {}
        self._cache_lock = threading.Lock()
        self.data_epoch = 0  # bumped when a job that changes data finishes; part of every cache key
        self.done_count = 0

    # -- registration and heartbeat --

    def register(self) -> None:
        with self.database.write_session() as session, session.begin():
            session.merge(Worker(id=self.id, host=_host(), pid=os.getpid(), lanes=list(self.lanes),
                                 started_at=utcnow(), heartbeat_at=utcnow(), stopped_at=None))

    def unregister(self) -> None:
        with self.database.write_session() as session, session.begin():
            session.execute(update(Worker).where(Worker.id == self.id).values(stopped_at=utcnow()))

    def beat(self) -> None:
        """Write the worker's heartbeat and its running jobs' progress; read cancellation requests."""
        with self._lock:
            states = dict(self._running)
        now = utcnow()
        with self.database.write_session() as session, session.begin():
            session.execute(update(Worker).where(Worker.id == self.id).values(heartbeat_at=now))
            for job_id, state in states.items():
                values = {"heartbeat_at": now}
                if state.dirty:
                    state.dirty = False
                    values.update(progress=state.progress, message=state.message)
                    if state.detail is not None:
                        values["result"] = state.detail
                session.execute(update(Job).where(Job.id == job_id, Job.status == "running",
                                                  Job.worker_id == self.id).values(**values))
            if states:
                asked = session.scalars(select(Job.id).where(Job.id.in_(list(states)), Job.cancel_requested.is_(True)))
                for job_id in asked:
                    states[job_id].cancel = True

    def _beat_loop(self) -> None:
        last_recovery = time.monotonic()
        while not self._beat_stop.wait(self.heartbeat):
            try:
                self.beat()
                if time.monotonic() - last_recovery > self.recover_every:
                    last_recovery = time.monotonic()
                    self.recover()
            except Exception:  # a locked database for a moment must not kill the heartbeat
                log.exception("heartbeat failed")

    # -- dead workers --

    def _dead(self, worker: Worker | None, now: datetime) -> bool:
        if worker is None or worker.stopped_at is not None:
            return True
        if worker.host == _host() and not _process_alive(worker.pid):
            return True
        return (now - worker.heartbeat_at).total_seconds() > self.stale_after

    def recover(self) -> list[tuple[int, str]]:
        """Requeue (or fail) the running jobs of dead workers; returns (job id, new status) pairs."""
        changed = []
        now = utcnow()
        with self.database.write_session() as session, session.begin():
            for job in session.scalars(select(Job).where(Job.status == "running", Job.worker_id != self.id)):
                worker = session.get(Worker, job.worker_id) if job.worker_id else None
                if not self._dead(worker, now):
                    continue
                who = f"the worker (pid {worker.pid} on {worker.host})" if worker else "its worker"
                attempts = int(job.attempts or 0)
                if attempts < self.max_attempts:
                    job.status, job.worker_id, job.cancel_requested = "queued", None, False
                    job.progress, job.message = 0.0, f"queued again: {who} stopped during attempt {attempts}"
                else:
                    job.status, job.finished_at = "failed", now
                    job.error = (f"{who} stopped while running this job (attempt {attempts} of {self.max_attempts}); "
                                 "no partial result was kept")
                    job.message = "failed: its worker stopped"
                if worker is not None and worker.stopped_at is None:
                    worker.stopped_at = now
                changed.append((job.id, job.status))
                log.warning("job %s of dead worker %s -> %s", job.id, job.worker_id, job.status)
        return changed

    # -- claiming and running --

    def claim(self, lanes: Iterable[str] | None = None) -> JobView | None:
        """Take the oldest queued job of these lanes (default: all of this worker's), or None."""
        registry = kinds()
        wanted = [name for name, kind in registry.items() if kind.lane in tuple(lanes or self.lanes)]
        while True:
            with self.database.write_session() as session, session.begin():
                job = session.scalars(select(Job).where(Job.status == "queued", Job.kind.in_(wanted))
                                      .order_by(Job.id).limit(1)).first()
                if job is None:
                    return None
                now = utcnow()
                taken = session.execute(
                    update(Job).where(Job.id == job.id, Job.status == "queued")
                    .values(status="running", worker_id=self.id, started_at=now, heartbeat_at=now,
                            attempts=int(job.attempts or 0) + 1, progress=0.0,
                            message="starting", error=None)
                    .execution_options(synchronize_session=False))
                if taken.rowcount == 1:
                    session.flush()
                    session.refresh(job)
                    return JobView.of(job)

    def run(self, job: JobView) -> str:
        """Run a claimed job to its end; returns its final status."""
        kind = kinds().get(job.kind)
        state = _RunState(message="starting")
        with self._lock:
            self._running[job.id] = state
        started = time.perf_counter()
        values: dict = {}
        try:
            if kind is None:
                raise InputError(f"this worker does not know job kind {job.kind!r}", field="kind")
            # Checked again here: a row written by an older version, or by hand, gets its defaults too.
            context = JobContext(self, dataclasses.replace(job, params=kind.check(dict(job.params))), state)
            outcome = kind.run(context)
            values = {"status": "done", "progress": 1.0, "result_ref": outcome.ref, "result": outcome.summary,
                      "message": outcome.message or f"done in {time.perf_counter() - started:.1f} s"}
            if kind.changes_data:
                self.data_epoch += 1
                self.clear_cache()
        except JobCancelled:
            values = {"status": "cancelled", "message": "cancelled; nothing was stored", "result": None}
        except WorkerStopping:
            values = {"status": "queued", "worker_id": None, "progress": 0.0, "cancel_requested": False,
                      "attempts": max(0, job.attempts - 1), "started_at": None, "result": None,
                      "message": "queued again: the worker was stopped"}
        except InputError as error:
            values = {"status": "failed", "error": str(error), "message": "failed: bad input",
                      "result": {"field": error.field, "file": error.file, "line": error.line}}
        except Exception as error:  # noqa: BLE001 - any failure is recorded with its reason
            log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            values = {"status": "failed", "error": f"{type(error).__name__}: {error}", "message": "failed",
                      "result": None}
        finally:
            with self._lock:
                self._running.pop(job.id, None)
        if values["status"] != "queued":
            values["finished_at"] = utcnow()
            discard_uploads(job.params)
        if "result" in values and isinstance(values["result"], dict):
            values["result"] = json.loads(json.dumps(values["result"], default=str))
        with self.database.write_session() as session, session.begin():
            session.execute(update(Job).where(Job.id == job.id, Job.worker_id == self.id, Job.status == "running")
                            .values(**values).execution_options(synchronize_session=False))
        if values["status"] == "done":
            self.done_count += 1
        log.info("job %s (%s) %s in %.1f s", job.id, job.kind, values["status"], time.perf_counter() - started)
        return values["status"]

    def run_next(self, lanes: Iterable[str] | None = None) -> str | None:
        job = self.claim(lanes)
        return None if job is None else self.run(job)

    # -- caches shared by jobs --

    def cached(self, key: str, stamp: object, load: Callable[[], object]) -> object:
        """A value kept between jobs while ``stamp`` (and the data epoch) stays the same."""
        stamp = (stamp, self.data_epoch)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        value = load()
        with self._cache_lock:
            self._cache[key] = (stamp, value)
        return value

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    # -- loops --

    def _start_heartbeat(self) -> threading.Thread:
        self._beat_stop.clear()
        thread = threading.Thread(target=self._beat_loop, name="lsdm-heartbeat", daemon=True)
        thread.start()
        return thread

    def _stop_heartbeat(self, thread: threading.Thread) -> None:
        self._beat_stop.set()
        thread.join(timeout=30)

    def drain(self, *, limit: int | None = None) -> int:
        """Run queued jobs of this worker's lanes one after another until none is left; returns how many ran."""
        self.register()
        beat = self._start_heartbeat()
        ran = 0
        try:
            self.recover()
            while (limit is None or ran < limit) and not self.stopping.is_set():
                if self.run_next() is None:
                    break
                ran += 1
        finally:
            self._stop_heartbeat(beat)
            self.unregister()
        return ran

    def _lane_loop(self, lane: str) -> None:
        while not self.stopping.is_set():
            try:
                if self.run_next([lane]) is None:
                    self.stopping.wait(self.poll)
            except Exception:  # the database may be busy for a moment; keep serving
                log.exception("lane %s: claiming failed", lane)
                self.stopping.wait(max(self.poll, 1.0))

    def serve(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Run until ``stop()`` (SIGTERM/SIGINT in `lsdm worker`)."""
        self.register()
        beat = self._start_heartbeat()
        try:
            for job_id, status in self.recover():
                log.warning("recovered job %s -> %s", job_id, status)
            threads = [threading.Thread(target=self._lane_loop, args=(lane,), name=f"lsdm-lane-{lane}", daemon=True)
                       for lane in self.lanes]
            for thread in threads:
                thread.start()
            if on_ready:
                on_ready()
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=0.5)
        finally:
            self._stop_heartbeat(beat)
            self.unregister()

    def stop(self) -> None:
        self.stopping.set()
