"""The worker (`lsdm worker`): claims queued jobs of its lanes and runs them, keeps the heartbeat,
recovers the jobs of dead workers; ``JobContext`` is what a running job sees. The design (atomic claim,
lanes, progress and cancellation, dead workers, stopping) is in engine/jobs/__init__.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar, cast

from sqlalchemy import CursorResult, select, update

from db import Database
from db.models import Job, Worker, utcnow
from db.session import ClaimLost, job_claim
from engine.errors import InputError, set_interrupt_check
from engine.jobs.kinds import KINDS
from engine.jobs.queue import discard_uploads, job_view
from engine.jobs.types import LANES, JobCancelled, JobView, WorkerStopping

log = logging.getLogger("lsdm.jobs")

T = TypeVar("T")  # what a cached loader returns


@dataclass
class _RunState:
    progress: float = 0.0
    message: str | None = None
    cancel: bool = False
    lost: bool = False  # another worker took the job over (this one was declared dead)
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

    def progress(
        self, fraction: float | None = None, message: str | None = None, *, detail: dict | None = None
    ) -> None:
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
        if self._state.lost:
            raise ClaimLost(f"job {self.job.id} was taken over by another worker while this one was not answering")
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

    def __init__(
        self,
        database: Database,
        *,
        lanes: Iterable[str] = LANES,
        poll: float = 0.2,
        heartbeat: float = 1.0,
        stale_after: float = 60.0,
        recover_every: float = 30.0,
        max_attempts: int = 2,
    ) -> None:
        self.database = database
        self.lanes = tuple(lanes)
        unknown = [lane for lane in self.lanes if lane not in LANES]
        if unknown or not self.lanes:
            raise InputError(
                f"unknown lane {unknown[0] if unknown else '(none)'}; expected some of {', '.join(LANES)}",
                field="--lanes",
            )
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
        self.former_ids: list[str] = []  # ids this process ran under before it was declared dead

    # -- registration and heartbeat --

    def _row(self) -> Worker:
        now = utcnow()
        return Worker(
            id=self.id,
            host=_host(),
            pid=os.getpid(),
            lanes=list(self.lanes),
            started_at=now,
            heartbeat_at=now,
            stopped_at=None,
        )

    def register(self) -> None:
        with self.database.write_session() as session, session.begin():
            session.merge(self._row())

    def unregister(self) -> None:
        with self.database.write_session() as session, session.begin():
            session.execute(update(Worker).where(Worker.id == self.id).values(stopped_at=utcnow()))

    def beat(self) -> None:
        """Write the worker's heartbeat and its running jobs' progress; read cancellation requests."""
        with self._lock:
            states = dict(self._running)
        now = utcnow()
        me = self.id
        with self.database.write_session() as session, session.begin():
            alive = session.execute(
                update(Worker).where(Worker.id == me, Worker.stopped_at.is_(None)).values(heartbeat_at=now)
            )
            declared_dead = cast(CursorResult, alive).rowcount != 1
            for job_id, state in states.items():
                values: dict[str, object] = {"heartbeat_at": now}
                if state.dirty:
                    state.dirty = False
                    values.update(progress=state.progress, message=state.message)
                    if state.detail is not None:
                        values["result"] = state.detail
                mine = session.execute(
                    update(Job).where(Job.id == job_id, Job.status == "running", Job.worker_id == me).values(**values)
                )
                if cast(CursorResult, mine).rowcount != 1 and job_id in self._running:
                    state.lost = True  # requeued or failed by another worker: stop at the next progress report
            if states:
                asked = session.scalars(select(Job.id).where(Job.id.in_(list(states)), Job.cancel_requested.is_(True)))
                for job_id in asked:
                    states[job_id].cancel = True
        if declared_dead:
            self._rejoin(me)

    def _rejoin(self, former: str) -> None:
        """This worker was declared dead by another (paused past its dead-worker timeout) and its jobs were
        requeued or failed: drop them (their results will be refused by the claim check) and go on under a new
        id, so the old id never claims or stores anything again."""
        with self._lock:
            if self.id != former:
                return  # another thread already did it
            for state in self._running.values():
                state.lost = True
            self.former_ids.append(former)
            self.id = f"{_host()}:{os.getpid()}:{secrets.token_hex(3)}"
        log.warning(
            "worker %s was declared dead by another worker (no heartbeat for longer than its timeout: paused?); "
            "its running jobs were taken over and are dropped here; going on as worker %s",
            former,
            self.id,
        )
        self.register()

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
            # Locked (PostgreSQL; SQLite's write lock is the whole database): a job another worker is recovering,
            # or whose worker is storing its result (the claim check locks the row), is left for the next round.
            running = select(Job).where(Job.status == "running", Job.worker_id != self.id)
            for job in session.scalars(running.with_for_update(skip_locked=True)):
                worker = session.get(Worker, job.worker_id) if job.worker_id else None
                if not self._dead(worker, now):
                    continue
                who = f"the worker (pid {worker.pid} on {worker.host})" if worker else "its worker"
                attempts = int(job.attempts or 0)
                if job.result_ref:  # its result was stored (the same transaction named it here): keep it
                    job.status, job.finished_at, job.progress = "done", now, 1.0
                    job.message = f"done: {who} stopped right after storing the result, which is kept"
                elif attempts < self.max_attempts:
                    job.status, job.worker_id, job.cancel_requested = "queued", None, False
                    job.progress, job.message = 0.0, f"queued again: {who} stopped during attempt {attempts}"
                else:
                    job.status, job.finished_at = "failed", now
                    job.error = (
                        f"{who} stopped while running this job (attempt {attempts} of {self.max_attempts}); "
                        "no partial result was kept"
                    )
                    job.message = "failed: its worker stopped"
                if worker is not None and worker.stopped_at is None:
                    worker.stopped_at = now
                changed.append((job.id, job.status))
                log.warning("job %s of dead worker %s -> %s", job.id, job.worker_id, job.status)
        return changed

    # -- claiming and running --

    def claim(self, lanes: Iterable[str] | None = None) -> JobView | None:
        """Take the oldest queued job of these lanes (default: all of this worker's), or None. A worker that
        was declared dead (its row marked stopped by another worker) claims nothing under that id: it
        rejoins under a new one first."""
        wanted = [name for name, kind in KINDS.items() if kind.lane in tuple(lanes or self.lanes)]
        while True:
            me = self.id
            with self.database.write_session() as session, session.begin():
                row = session.execute(select(Worker.stopped_at).where(Worker.id == me)).first()
                declared_dead = row is not None and row[0] is not None
                if row is None:  # claiming without serving (scripts, tests): registered on the way
                    session.add(self._row())
                job = None
                if not declared_dead:
                    job = session.scalars(
                        select(Job)
                        .where(Job.status == "queued", Job.kind.in_(wanted))
                        .order_by(Job.id)
                        .limit(1)
                        .with_for_update(skip_locked=True)  # PostgreSQL: concurrent claimers take different rows
                    ).first()
                if job is not None:
                    now = utcnow()
                    taken = session.execute(
                        update(Job)
                        .where(Job.id == job.id, Job.status == "queued")
                        .values(
                            status="running",
                            worker_id=me,
                            started_at=now,
                            heartbeat_at=now,
                            attempts=int(job.attempts or 0) + 1,
                            progress=0.0,
                            message="starting",
                            error=None,
                        )
                        .execution_options(synchronize_session=False)
                    )
                    if cast(CursorResult, taken).rowcount == 1:  # an UPDATE's result is a cursor's
                        session.flush()
                        session.refresh(job)
                        return job_view(job)
                    continue  # taken by another worker between the two statements (PostgreSQL): look again
            if not declared_dead:
                return None
            self._rejoin(me)

    def run(self, job: JobView) -> str:
        """Run a claimed job to its end; returns its final status."""
        kind = KINDS.get(job.kind)
        claimed_by = job.worker_id or self.id
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
            set_interrupt_check(context.check)  # cancellation within a forecast hour (each denoising step)
            try:
                with job_claim(job.id, claimed_by, job.attempts):  # every commit of the job checks the claim
                    outcome = kind.run(context)
            finally:
                set_interrupt_check(None)
            values = {
                "status": "done",
                "progress": 1.0,
                "result_ref": outcome.ref,
                "result": outcome.summary,
                "message": outcome.message or f"done in {time.perf_counter() - started:.1f} s",
            }
            if kind.changes_data:
                self.data_epoch += 1
                self.clear_cache()
        except ClaimLost as error:
            log.warning("job %s (%s) dropped: %s", job.id, job.kind, error)
            values = {"status": "lost"}  # the job is another worker's now: its row is not touched
        except JobCancelled:
            values = {"status": "cancelled", "message": "cancelled; nothing was stored", "result": None}
        except WorkerStopping:
            values = {
                "status": "queued",
                "worker_id": None,
                "progress": 0.0,
                "cancel_requested": False,
                "attempts": max(0, job.attempts - 1),
                "started_at": None,
                "result": None,
                "message": "queued again: the worker was stopped",
            }
        except InputError as error:
            values = {
                "status": "failed",
                "error": str(error),
                "message": "failed: bad input",
                "result": {"field": error.field, "file": error.file, "line": error.line},
            }
        except Exception as error:  # noqa: BLE001 - any failure is recorded with its reason
            log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            values = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "message": "failed",
                "result": None,
            }
        finally:
            with self._lock:
                self._running.pop(job.id, None)
        if values["status"] == "lost":
            return "lost"
        if values["status"] != "queued":
            values["finished_at"] = utcnow()
        if "result" in values and isinstance(values["result"], dict):
            values["result"] = json.loads(json.dumps(values["result"], default=str))
        with self.database.write_session() as session, session.begin():
            ours = session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.worker_id == claimed_by,
                    Job.attempts == job.attempts,
                    Job.status == "running",
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if cast(CursorResult, ours).rowcount != 1:  # taken over meanwhile: its uploads are the new claim's
            log.warning(
                "job %s (%s) ended here as %s, but another worker holds it now", job.id, job.kind, values["status"]
            )
            return "lost"
        if values["status"] != "queued":
            discard_uploads(job.params)
        if values["status"] == "done":
            self.done_count += 1
        log.info("job %s (%s) %s in %.1f s", job.id, job.kind, values["status"], time.perf_counter() - started)
        return values["status"]

    def run_next(self, lanes: Iterable[str] | None = None) -> str | None:
        job = self.claim(lanes)
        return None if job is None else self.run(job)

    # -- caches shared by jobs --

    def cached(self, key: str, stamp: object, load: Callable[[], T]) -> T:
        """A value kept between jobs while ``stamp`` (and the data epoch) stays the same."""
        stamp = (stamp, self.data_epoch)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                return cast(T, hit[1])  # stored by the same key's loader
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
            threads = [
                threading.Thread(target=self._lane_loop, args=(lane,), name=f"lsdm-lane-{lane}", daemon=True)
                for lane in self.lanes
            ]
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
