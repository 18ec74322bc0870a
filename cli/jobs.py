"""`lsdm worker` (runs queued jobs) and `lsdm jobs` (queue, inspect, cancel and wait for them): the
command line of engine/jobs/."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from cli.common import Commands, emit, positive_int
from db import Database, open_database
from engine.errors import InputError
from engine.jobs import STATUSES, JobView, JobWorker, cancel, enqueue, get_job, list_jobs, wait_for


def add_commands(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """worker, jobs list|show|submit|cancel|wait."""
    _add_worker(commands, common, reporting)
    _add_jobs(commands, common, reporting)


def _add_worker(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm worker`."""
    worker_p = commands.add_parser(
        "worker",
        parents=[common],
        help="run queued jobs (the dashboard's engine)",
        description="Claim and run queued jobs (forecasts, what-ifs, training, evaluations, ingests, city and "
        "environment builds) until stopped with Ctrl+C or SIGTERM. Jobs of a dead worker are queued "
        "again once, then failed.",
    )
    worker_p.add_argument(
        "--lanes",
        default="interactive,batch",
        help="comma-separated lanes to serve: interactive (forecasts, what-ifs), batch (the rest)",
    )
    worker_p.add_argument("--drain", action="store_true", help="run the queued jobs, then exit")
    worker_p.add_argument(
        "--stale-after",
        type=positive_int,
        default=60,
        help="seconds without a heartbeat after which another worker counts as dead (default 60)",
    )
    worker_p.add_argument(
        "--max-attempts",
        type=positive_int,
        default=2,
        help="starts of a job whose worker died before it is failed instead of queued again (default 2)",
    )
    worker_p.add_argument("--log-file", type=Path, default=None, help="append the log to this file (default: stderr)")
    worker_p.set_defaults(handler=cmd_worker)


def _add_jobs(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm jobs list|show|submit|cancel|wait`."""
    jobs = commands.add_parser("jobs", help="queue, inspect and cancel jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="list|show|submit|cancel|wait"
    )
    jobs_list = jobs.add_parser("list", parents=[common, reporting], help="recent jobs, newest first")
    jobs_list.add_argument(
        "--status", default=None, help="comma-separated statuses (queued,running,done,failed,cancelled)"
    )
    jobs_list.add_argument("--limit", type=positive_int, default=30)
    jobs_list.set_defaults(handler=cmd_jobs_list)
    jobs_show = jobs.add_parser("show", parents=[common, reporting], help="one job with its parameters and result")
    jobs_show.add_argument("job", type=positive_int)
    jobs_show.set_defaults(handler=cmd_jobs_show)
    jobs_submit = jobs.add_parser(
        "submit",
        parents=[common, reporting],
        help="queue a job for the worker",
        description="Queue a job. KIND is one of: "
        + ", ".join(
            (
                "setup.default",
                "city.build",
                "ingest.table",
                "ingest.tsinghua",
                "env.build",
                "assets.install",
                "train",
                "evaluate",
                "forecast",
                "whatif",
            )
        )
        + "; parameters are KEY=VALUE (VALUE read as JSON when it parses, "
        "else as text), e.g. `lsdm jobs submit forecast entity=user:u0001 start=300 horizon=12`.",
    )
    jobs_submit.add_argument("kind")
    jobs_submit.add_argument("params", nargs="*", metavar="KEY=VALUE")
    jobs_submit.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless it is done")
    jobs_submit.add_argument("--timeout", type=positive_int, default=3600, help="seconds to wait (default 3600)")
    jobs_submit.set_defaults(handler=cmd_jobs_submit)
    jobs_cancel = jobs.add_parser("cancel", parents=[common, reporting], help="cancel a queued or running job")
    jobs_cancel.add_argument("job", type=positive_int)
    jobs_cancel.set_defaults(handler=cmd_jobs_cancel)
    jobs_wait = jobs.add_parser("wait", parents=[common, reporting], help="wait until a job ends; exit 1 unless done")
    jobs_wait.add_argument("job", type=positive_int)
    jobs_wait.add_argument("--timeout", type=positive_int, default=3600)
    jobs_wait.set_defaults(handler=cmd_jobs_wait)


# --- handlers -------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("lsdm")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        worker = JobWorker(
            open_database(args.db),
            lanes=[lane.strip() for lane in args.lanes.split(",") if lane.strip()],
            stale_after=args.stale_after,
            max_attempts=args.max_attempts,
        )
        if args.drain:
            ran = worker.drain()
            print(f"ran {ran} job(s)", file=sys.stderr)
            return 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        logger.info("worker %s serving lanes %s", worker.id, ",".join(worker.lanes))
        worker.serve()
        logger.info("worker %s stopped", worker.id)
        return 0
    finally:
        logger.removeHandler(handler)
        handler.close()


def _job_line(job: JobView) -> str:
    seconds = f"{job.seconds:.1f} s" if job.seconds is not None else ""
    state = job.error if job.status == "failed" else (job.message or "")
    return (
        f"{job.id:>5}  {job.kind:<16} {job.status:<9} {job.progress * 100:5.1f}%  {seconds:>9}  "
        f"{job.result_ref or '':<18} {state}"
    )


def cmd_jobs_list(args: argparse.Namespace) -> int:
    statuses = [s.strip() for s in args.status.split(",")] if args.status else None
    for status in statuses or []:
        if status not in STATUSES:
            raise InputError(f"expected some of {', '.join(STATUSES)}, got {status!r}", field="--status")
    rows = list_jobs(open_database(args.db), statuses=statuses, limit=args.limit)
    emit(
        args,
        {"jobs": [job.to_dict() for job in rows]},
        ["   id  kind             status    progress       time  result             message"]
        + [_job_line(job) for job in rows],
    )
    return 0


def _report_job(args: argparse.Namespace, job: JobView) -> int:
    lines = [_job_line(job), f"  parameters: {json.dumps(job.params)}"]
    if job.result:
        lines.append(f"  result: {json.dumps(job.result, default=str)[:2000]}")
    emit(args, job.to_dict(), lines)
    return 0 if job.status in ("done", "queued", "running") else 1


def cmd_jobs_show(args: argparse.Namespace) -> int:
    _report_job(args, get_job(open_database(args.db), args.job))
    return 0


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"expected KEY=VALUE, got {text!r}", field="params")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _wait(args: argparse.Namespace, database: Database, job_id: int) -> int:
    last = [None]

    def show(job: JobView) -> None:
        line = f"{job.status} {job.progress * 100:.0f}% {job.message or ''}"
        if not args.json and line != last[0]:
            print(f"  job {job.id}: {line}", file=sys.stderr, flush=True)
            last[0] = line

    try:
        job = wait_for(database, job_id, timeout=args.timeout, on_progress=show)
    except TimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    status = _report_job(args, job)
    return 0 if job.status == "done" else max(status, 1)


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    params = dict(_parse_param(text) for text in args.params)
    job_id = enqueue(database, args.kind, params)
    if args.wait:
        return _wait(args, database, job_id)
    job = get_job(database, job_id)
    emit(args, job.to_dict(), [f"queued job {job_id} ({args.kind}); `lsdm jobs wait {job_id}` follows it"])
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    status = cancel(open_database(args.db), args.job)
    text = {"running": "cancellation asked; the job stops at its next progress report", "cancelled": "cancelled"}.get(
        status, f"already {status}; nothing to cancel"
    )
    emit(args, {"job": args.job, "status": status}, [f"job {args.job}: {text}"])
    return 0


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    return _wait(args, open_database(args.db), args.job)
