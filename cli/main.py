"""The `lsdm` command line: one parser composed of the command groups, one handler per subcommand.

Every subcommand takes ``--db`` (a path or SQLAlchemy URL; default ``$LSDM_DB`` or the per-user data
directory) and every one that reports something takes ``--json``. Bad input exits with status 2 and a
message naming the file, line and field; the database is left exactly as it was.

Each group adds its commands with ``add_commands(commands, common, reporting)``:

- cli/data.py: ``city build``, ``ingest tsinghua|table``, ``data info|list|use``;
- cli/env.py: ``env build|info``;
- cli/models.py: ``train``, ``forecast``, ``models``, ``evaluate``, ``export windows``, ``score``
  (cli/report_figures.py draws the evaluation report's PNG figures);
- cli/load.py: ``load``, ``loads``, ``capacity``, ``export load`` (cell and area load runs);
- cli/app.py: ``app``, ``assets build|install``;
- cli/jobs.py: ``worker``, ``jobs list|show|submit|cancel|wait``;
- cli/common.py: the value types and the printing the groups share.

Start-up: the groups import the engine at their top, except the modules that import torch
(engine.model.config, engine.train, engine.forecast, engine.evaluation.evaluate) and Matplotlib
(cli/report_figures.py), which cli/models.py imports in the commands that use them. Measured on
2 cores (median of 5 runs): `lsdm --help` takes 1.0 s and `lsdm jobs list` 0.9 s this way; importing
the command line with those modules at the top takes 3.1 s, before any command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cli import app, data, env, jobs, load, models
from cli.common import flag_of
from db.session import DatabaseOpenError
from engine.errors import InputError

EXIT_INPUT = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE: a failure of ours, not of the input; the traceback is in the log
EXIT_BUSY = 75  # EX_TEMPFAIL: try again later
GROUPS = (data, env, models, load, app, jobs)  # in the order `lsdm --help` lists their commands


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        metavar="PATH|URL",
        default=None,
        help="database file or SQLAlchemy URL (default: $LSDM_DB, else lsdm.sqlite in the per-user data directory)",
    )
    reporting = argparse.ArgumentParser(add_help=False)
    reporting.add_argument("--json", action="store_true", help="print the result as JSON")

    parser = argparse.ArgumentParser(
        prog="lsdm", description="LSDM operator dashboard: data, environment, forecasting engine and app."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands, common, reporting)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed (`lsdm train --nproc` relaunches it)
    try:
        return args.handler(args)
    except InputError as error:  # fields are named after the flags that set them (cli/common.py)
        print(f"error: {flag_of(args, error)}", file=sys.stderr)
        return EXIT_INPUT
    except DatabaseOpenError as error:  # a folder, not SQLite, damaged, unreachable: nothing was written
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except LookupError as error:  # no such data set / entity
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as error:  # a database that another process keeps locked: a sentence, not a traceback
        from db.session import busy_message

        message = busy_message(error)
        if message is None:
            if os.environ.get("LSDM_DEBUG"):  # developers: the traceback on the terminal
                raise
            print(f"error: {unexpected(args, error)}", file=sys.stderr)
            return EXIT_INTERNAL
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BUSY
    except BrokenPipeError:  # `lsdm jobs list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def unexpected(args: argparse.Namespace, error: BaseException) -> str:
    """One line for a failure that is ours, not the input's; its traceback goes to ``<data dir>/logs/cli.log``
    (owner-only); ``LSDM_DEBUG=1`` shows it on the terminal instead."""
    import traceback
    from datetime import UTC, datetime

    command = " ".join(str(part) for part in (getattr(args, "command", None), getattr(args, "action", None)) if part)
    text = "".join(traceback.format_exception(error))
    where = "the log could not be written"
    try:
        from db.session import data_dir

        folder = data_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "cli.log"
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a", encoding="utf-8") as out:
            out.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} lsdm {command}\n{text}\n")
        where = f"the traceback is in {log}"
    except OSError:
        pass
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    return (f"`lsdm {command}` failed unexpectedly ({reason}); {where}; please report it with that log").replace(
        "`lsdm ` failed", "`lsdm` failed"
    )


if __name__ == "__main__":
    sys.exit(main())
