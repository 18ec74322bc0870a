"""`lsdm env`: tiles, descriptions and CLIP embeddings of a data set's cells (engine/env/), and their coverage."""

from __future__ import annotations

import argparse
import time

from cli.common import Commands, add_request_flags, emit, request_of, stderr_progress
from db import open_database
from engine.env.build import build_environment_for
from engine.env.pipeline import environment_info
from engine.requests import EnvRequest


def add_commands(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """env build|info."""
    _add_env(commands, common, reporting)


def _add_env(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm env build|info`."""
    env = commands.add_parser("env", help="environment: tiles, descriptions, CLIP embeddings").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    env_build = env.add_parser(
        "build",
        parents=[common, reporting],
        help="tiles, descriptions and CLIP embeddings for a data set",
        description="Fetch or render a tile per cell, describe every cell, train (or load) the CLIP encoder and "
        "store z_env = a*z_image + b*z_text (paper Eq. 7-9) per cell.",
    )
    add_request_flags(env_build, EnvRequest, flags={"train_encoder": "--train", "clip_epochs": "--epochs"})
    env_build.set_defaults(handler=cmd_env_build)
    env_info = env.add_parser("info", parents=[common, reporting], help="coverage and encoder metrics")
    env_info.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    env_info.set_defaults(handler=cmd_env_info)


# --- handlers -------------------------------------------------------------------------------------


def cmd_env_build(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    summary = build_environment_for(open_database(args.db), request_of(args), progress=stderr_progress(not args.json))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    emit(args, summary, _env_lines(summary))
    return 0


def cmd_env_info(args: argparse.Namespace) -> int:
    summary = environment_info(open_database(args.db), args.dataset)
    emit(args, summary, _env_lines(summary))
    return 0


ENV_MODE_WORDS = {
    "both": "a * image + b * text",
    "image": "the image embedding alone",
    "text": "the text (POI) embedding alone",
    "none": "nothing (zeros)",
}


def _env_lines(summary: dict) -> list[str]:
    r = summary["retrieval"]
    lines = [
        f"Environment of '{summary['dataset']}': {summary['cells']} cells, {summary['tiles']} tiles, "
        f"{summary['descriptions']} descriptions ({summary['description_fallbacks']} template fallbacks), "
        f"{summary['embeddings']} embeddings",
        f"  encoder: {summary['encoder'] or 'none yet (run `lsdm env build`)'}",
    ]
    if r.get("top1") is not None:
        lines.append(
            f"  held-out retrieval over {r.get('pairs')} pairs: top-1 {r['top1']:.3f}, top-5 {r['top5']:.3f} "
            f"(chance {r.get('chance_top1')})"
        )
        lines.append(f"  the encoder is {summary['retrieval_verdict']['verdict']}")
    if summary.get("env_mode"):
        why = f" ({summary['env_mode_why']})" if summary.get("env_mode_why") else ""
        lines.append(f"  z_env (Eq. 9) from: {ENV_MODE_WORDS.get(summary['env_mode'], summary['env_mode'])}{why}")
    agreement = summary.get("land_use_agreement")
    if agreement:
        lines.append(
            f"  nearest-neighbour land-use agreement: env {agreement['env']}, image {agreement['image']}, "
            f"text {agreement['text']} (chance {agreement['chance']})"
        )
    return lines
