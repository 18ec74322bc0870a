"""The plain types of the job queue: statuses and lanes, what a kind is, what a finished job produced,
and a job as the app and the command line show it (a detached snapshot)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from db.models import Job, utcnow

if TYPE_CHECKING:
    from engine.jobs.worker import JobContext

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
    """One kind of job (engine/jobs/kinds.py lists them all in ``KINDS``)."""

    name: str
    title: str
    lane: str
    run: Callable[[JobContext], Outcome]
    check: Callable[[dict], dict]
    changes_data: bool = False  # a done job of this kind drops the worker's loaded models and data
    # How big one request is, for the estimate (engine/jobs/queue.py ``estimate``): past jobs' seconds per
    # unit of size, times this one's size. None: jobs of the kind are compared as they are.
    size: Callable[[dict], float] | None = None
    # Before this machine has run the kind once: a measured figure to go by (seconds), where it comes from,
    # and the parameters it was measured with: scaled to a request by ``size``, or (without a size) used only
    # for a request with those parameters (an absent one counts as its default, which the reference holds).
    prior: tuple[float, str, dict] | None = None

    def __post_init__(self) -> None:
        if self.lane not in LANES:
            raise ValueError(f"lane must be one of {LANES}, got {self.lane!r}")


@dataclass(frozen=True)
class JobView:
    """A job as the app and the command line show it (a plain snapshot, detached from any session).
    ``title`` is its kind's (engine/jobs/queue.py ``job_view`` fills it in); the kind's name when none."""

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
    title: str = ""

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.kind)

    @classmethod
    def of(cls, job: Job, title: str = "") -> JobView:
        return cls(
            job.id,
            job.kind,
            dict(job.params or {}),
            job.status,
            float(job.progress or 0.0),
            job.message,
            job.result_ref,
            job.result,
            job.error,
            bool(job.cancel_requested),
            job.created_at,
            job.started_at,
            job.heartbeat_at,
            job.finished_at,
            job.worker_id,
            int(job.attempts or 0),
            title,
        )

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
        out["seconds"] = None if self.seconds is None else round(self.seconds, 3)
        return out
