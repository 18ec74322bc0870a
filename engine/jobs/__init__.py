"""Jobs: long work requested by the dashboard or the command line and run by `lsdm worker`.

- ``types.py``: the plain types (statuses, lanes, ``Outcome``, ``JobKind``, ``JobView``, the exceptions);
- ``kinds.py``: what each kind of job does, and the one table of kinds (``KINDS``);
- ``queue.py``: requesting, inspecting and cancelling jobs (``enqueue``, ``get_job``, ``list_jobs``,
  ``cancel``, ``wait_for``, ``live_workers``) and the upload folders that travel with a job;
- ``worker.py``: the worker that claims and runs them (``JobWorker``) and what a running job sees
  (``JobContext``).

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
- **Fencing.** A claim is (worker id, attempt); every commit of a running job checks it in the committing
  transaction (``db.session.job_claim``), so a worker declared dead while paused stores nothing
  (``ClaimLost``), drops its jobs and rejoins under a new id.
- **Stopping.** SIGTERM/SIGINT stop the worker: running jobs are interrupted at their next progress
  call and queued again without counting the attempt.
"""

from engine.jobs.kinds import KINDS, environment_progress
from engine.jobs.queue import (
    Estimate,
    QueueOutlook,
    cancel,
    discard_uploads,
    enqueue,
    estimate,
    get_job,
    job_view,
    list_jobs,
    live_workers,
    new_uploads_dir,
    queue_outlook,
    uploads_root,
    wait_for,
)
from engine.jobs.types import (
    ACTIVE,
    LANES,
    STATUSES,
    WORKER_ALIVE_SECONDS,
    JobCancelled,
    JobKind,
    JobView,
    Outcome,
    WorkerStopping,
)
from engine.jobs.worker import JobContext, JobWorker

__all__ = [
    "ACTIVE",
    "KINDS",
    "LANES",
    "STATUSES",
    "WORKER_ALIVE_SECONDS",
    "Estimate",
    "JobCancelled",
    "JobContext",
    "JobKind",
    "JobView",
    "JobWorker",
    "Outcome",
    "QueueOutlook",
    "WorkerStopping",
    "cancel",
    "discard_uploads",
    "enqueue",
    "environment_progress",
    "estimate",
    "get_job",
    "job_view",
    "list_jobs",
    "live_workers",
    "new_uploads_dir",
    "queue_outlook",
    "uploads_root",
    "wait_for",
]
