"""What the Jobs page shows, as plain functions: the workers that are alive (engine.jobs.live_workers)
and the jobs, active ones with their progress and recent ones with their outcome: how long they ran,
the failure's reason, and a link to what they made (``result_ref``, e.g. ``forecast_run:12``)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from engine.jobs import JobView

JOB_COLUMNS = ["id", "job", "kind", "status", "created", "ran", "result", "link", "details"]
WORKER_COLUMNS = ["worker", "host", "pid", "lanes", "started", "last heartbeat (s ago)"]


def result_link(ref: str | None) -> tuple[str | None, str | None]:
    """(label, page link) of a job's result reference: forecast runs open on the Forecast page,
    scenarios on the What-if page, models and evaluations on the Models page, data sets and encoders on
    the Data page; (None, None) when there is none."""
    if not ref:
        return None, None
    kind, _, ident = ref.partition(":")
    if kind == "forecast_run":
        return f"forecast run {ident}", f"/forecast?run={ident}"
    if kind == "scenario":
        return f"scenario {ident}", f"/whatif?scenario={ident}"
    if kind == "model":
        return f"model {ident}", f"/models?model={ident}"
    if kind == "evaluation":
        return f"evaluation of model {ident}", f"/models?model={ident}"
    if kind == "dataset":
        return f"data set {ident}", "/data"
    if kind == "encoder":
        return f"encoder {ident}", "/data"
    return ref, None


def details(job: JobView) -> str:
    """The failure's reason for a failed job, else its last message."""
    if job.status == "failed":
        return job.error or job.message or "no reason recorded"
    return job.message or ""


def ran_text(job: JobView) -> str:
    """How long the whole job ran (from the worker taking it to its end, loading included), as the table
    shows it: '3.0 s', '2 min 05 s', '1 h 02 min'; 'not started' for a job no worker has taken."""
    if job.seconds is None:
        return "not started"
    seconds = float(job.seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def jobs_frame(views: list[JobView]) -> pd.DataFrame:
    """One row per job, newest first as given: what it is, how it went and what it made. Every cell is text
    or a number (an empty string where there is nothing): a table never shows ``None``."""
    rows = []
    for job in views:
        label, link = result_link(job.result_ref) if job.status == "done" else (None, None)
        rows.append(
            {
                "id": job.id,
                "job": job.title,
                "kind": job.kind,
                "status": job.status,
                "created": job.created_at,
                "ran": ran_text(job),
                "result": label or "",
                "link": link or "",
                "details": details(job),
            }
        )
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def workers_frame(workers: list[dict], now: datetime) -> pd.DataFrame:
    """The live workers: id, host, pid, lanes, start time and how long ago they last beat."""
    rows = [
        {
            "worker": w["id"],
            "host": w["host"],
            "pid": w["pid"],
            "lanes": ", ".join(w["lanes"]),
            "started": w["started_at"],
            "last heartbeat (s ago)": max(0.0, (now - w["heartbeat_at"]).total_seconds()),
        }
        for w in workers
    ]
    return pd.DataFrame(rows, columns=WORKER_COLUMNS)
