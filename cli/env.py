"""`lsdm env`: tiles, descriptions and CLIP embeddings of a data set's cells (engine/env/), and their coverage."""

from __future__ import annotations

import argparse
import time

from cli.common import Commands, emit, stderr_progress
from db import open_database
from db.queries import get_dataset
from engine.env.clip import ClipSettings
from engine.env.pipeline import build_environment, environment_info, registered_encoder_dir
from engine.errors import InputError
from engine.shipped import shipped_encoder_dir


def add_commands(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """env build|info."""
    _add_env(commands, common, reporting)


def _add_env(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm env build|info`."""
    env = commands.add_parser("env", help="environment: tiles, descriptions, CLIP embeddings").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    env_build = env.add_parser(
        "build", parents=[common, reporting], help="tiles, descriptions and CLIP embeddings for a data set",
        description="Fetch or render a tile per cell, describe every cell, train (or load) the CLIP encoder and "
        "store z_env = a*z_image + b*z_text (paper Eq. 7-9) per cell.",
    )
    env_build.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    env_build.add_argument("--tiles", default=None, metavar="SOURCE",
                           help="synthetic | dir:PATH | mbtiles:PATH | xyz:URL_TEMPLATE (default: synthetic for "
                                "synthetic cities, else keep the stored tiles)")
    env_build.add_argument("--describer", choices=["template", "openai"], default="template",
                           help="template (offline, default) or an OpenAI-compatible chat endpoint")
    env_build.add_argument("--llm-url", default="http://127.0.0.1:11434/v1",
                           help="base URL of the OpenAI-compatible endpoint (default: a local Ollama)")
    env_build.add_argument("--llm-model", default="llama3.1", help="model name at that endpoint")
    env_build.add_argument("--regenerate", action="store_true", help="re-render tiles and rewrite descriptions")
    env_build.add_argument("--clip-init", default=None, metavar="PATH",
                           help="start from a local pretrained open_clip checkpoint (nothing is downloaded)")
    env_build.add_argument("--clip-arch", default="lsdm-clip-s",
                           help="architecture: lsdm-clip-s (ours, default) or an open_clip name for --clip-init")
    env_build.add_argument("--train", action="store_true",
                           help="train a new encoder even on the default city (which otherwise uses the shipped one)")
    env_build.add_argument("--frozen", action="store_true", help="use the --clip-init checkpoint as is")
    env_build.add_argument("--encoder", default=None, metavar="ID",
                           help="embed with this registered encoder as is (e.g. another city's, to evaluate its "
                                "model here); default: the shipped one on the default city, else train one")
    env_build.add_argument("--epochs", type=int, default=40, help="CLIP training epochs (default 40)")
    env_build.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    env_build.add_argument("--a", type=float, default=0.5, help="Eq. 9 weight of the image embedding (default 0.5)")
    env_build.add_argument("--b", type=float, default=0.5, help="Eq. 9 weight of the text embedding (default 0.5)")
    env_build.add_argument("--env-mode", choices=["both", "image", "text", "none"], default="both",
                           help="which embeddings form z_env (ablations); default both")
    env_build.set_defaults(handler=cmd_env_build)
    env_info = env.add_parser("info", parents=[common, reporting], help="coverage and encoder metrics")
    env_info.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    env_info.set_defaults(handler=cmd_env_info)


# --- handlers -------------------------------------------------------------------------------------


def cmd_env_build(args: argparse.Namespace) -> int:
    settings = ClipSettings(arch=args.clip_arch, init=args.clip_init, frozen=args.frozen, epochs=args.epochs,
                            seed=args.seed, a=args.a, b=args.b, mode=args.env_mode)
    options = {}
    if args.describer == "openai":
        options = {"base_url": args.llm_url, "model": args.llm_model}
    started = time.perf_counter()
    database = open_database(args.db)
    encoder_dir = None
    if args.encoder:
        if args.train or args.clip_init:
            raise InputError("--encoder embeds with a registered encoder as is: it cannot be combined with "
                             "--train or --clip-init", field="--encoder")
        with database.session() as session:
            encoder_dir = registered_encoder_dir(session, args.encoder)
    elif not (args.train or args.clip_init):
        # The default city gets the shipped encoder, whose embeddings the shipped model was trained on.
        with database.session() as session:
            encoder_dir = shipped_encoder_dir(session, get_dataset(session, args.dataset))
    summary = build_environment(
        database, dataset_name=args.dataset, tiles=args.tiles, describer=args.describer,
        describer_options=options, regenerate=args.regenerate, settings=settings, encoder_dir=encoder_dir,
        progress=stderr_progress(not args.json),
    )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    emit(args, summary, _env_lines(summary))
    return 0


def cmd_env_info(args: argparse.Namespace) -> int:
    summary = environment_info(open_database(args.db), args.dataset)
    emit(args, summary, _env_lines(summary))
    return 0


def _env_lines(summary: dict) -> list[str]:
    r = summary["retrieval"]
    lines = [
        f"Environment of '{summary['dataset']}': {summary['cells']} cells, {summary['tiles']} tiles, "
        f"{summary['descriptions']} descriptions ({summary['description_fallbacks']} template fallbacks), "
        f"{summary['embeddings']} embeddings",
        f"  encoder: {summary['encoder'] or 'none yet (run `lsdm env build`)'}",
    ]
    if r.get("top1") is not None:
        lines.append(f"  held-out retrieval over {r.get('pairs')} pairs: top-1 {r['top1']:.3f}, top-5 {r['top5']:.3f} "
                     f"(chance {r.get('chance_top1')})")
    agreement = summary.get("land_use_agreement")
    if agreement:
        lines.append(f"  nearest-neighbour land-use agreement: env {agreement['env']}, image {agreement['image']}, "
                     f"text {agreement['text']} (chance {agreement['chance']})")
    return lines
