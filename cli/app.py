"""`lsdm app` (the dashboard and its worker, supervised by desktop/serve.py) and `lsdm assets` (the shipped
default encoder and forecaster, engine/shipped.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import Commands, emit, positive_int, stderr_progress
from db import open_database
from db.session import resolve_db_url
from desktop.serve import serve
from engine.shipped import build, default_dir, install


def add_commands(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """app, assets build|install."""
    _add_app(commands, common, reporting)
    _add_assets(commands, common, reporting)


def _add_app(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm app`."""
    app_p = commands.add_parser(
        "app",
        parents=[common],
        help="serve the dashboard on 127.0.0.1",
        description="Serve the Streamlit dashboard on 127.0.0.1 with a worker for its jobs, and open it "
        "in the browser. Ctrl+C stops both.",
    )
    app_p.add_argument("--port", type=positive_int, default=None, help="TCP port (default: a free one)")
    app_p.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    app_p.add_argument(
        "--no-worker",
        action="store_true",
        help="do not start a worker beside the server (jobs then wait for `lsdm worker`)",
    )
    app_p.set_defaults(handler=cmd_app)


def _add_assets(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm assets build|install`."""
    assets = commands.add_parser("assets", help="the shipped default encoder and model").add_subparsers(
        dest="assets_command", required=True, metavar="build|install"
    )
    assets_build = assets.add_parser(
        "build",
        parents=[reporting],
        help="retrain the shipped default (about 12 min on 2 CPU cores)",
        description="Build the default city in a scratch database, train the CLIP encoder and the default "
        "forecaster on it, and write them with a manifest into assets/default (or --out).",
    )
    assets_build.add_argument("--out", type=Path, default=None, help="output folder (default: assets/default)")
    assets_build.add_argument("--clip-epochs", type=positive_int, default=40, help="CLIP epochs (default 40)")
    assets_build.add_argument(
        "--epochs", type=positive_int, default=None, help="forecaster epochs (default: the config's)"
    )
    assets_build.add_argument(
        "--keep-encoder",
        action="store_true",
        help="keep the shipped CLIP encoder (embed the city with it) and retrain only the forecaster",
    )
    assets_build.set_defaults(handler=cmd_assets_build)
    assets_install = assets.add_parser(
        "install",
        parents=[common, reporting],
        help="use the shipped encoder and model on the default city",
        description="Embed the default city's cells with the shipped encoder and register the shipped forecaster "
        "as the active model (refused on any other data set).",
    )
    assets_install.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    assets_install.set_defaults(handler=cmd_assets_install)


# --- handlers -------------------------------------------------------------------------------------


def cmd_app(args: argparse.Namespace) -> int:
    return serve(
        resolve_db_url(args.db), port=args.port, open_browser=not args.no_browser, with_worker=not args.no_worker
    )


def cmd_assets_build(args: argparse.Namespace) -> int:
    out = args.out or default_dir()
    manifest = build(
        out,
        clip_epochs=args.clip_epochs,
        epochs=args.epochs,
        keep_encoder=args.keep_encoder,
        progress=stderr_progress(not args.json),
    )
    manifest["out"] = str(out)
    emit(
        args,
        manifest,
        [
            f"Shipped default written to {out} in {manifest['seconds']:.0f} s",
            f"  encoder {manifest['encoder_id']}, model {manifest['model_id']} "
            f"(best validation loss {manifest['model_metrics'].get('best_val_loss')})",
        ],
    )
    return 0


def cmd_assets_install(args: argparse.Namespace) -> int:
    result = install(open_database(args.db), args.dataset, progress=stderr_progress(not args.json))
    emit(
        args,
        result,
        [
            f"Installed the shipped model on '{result['dataset']}': model id {result['model_id']} "
            f"({result['model_name']}), encoder {result['encoder_id']}, {result['seconds']:.1f} s"
        ],
    )
    return 0
