"""The `lsdm` command line: one parser, one handler per subcommand.

Every subcommand takes ``--db`` (a path or SQLAlchemy URL; default ``$LSDM_DB`` or the per-user data
directory) and every one that reports something takes ``--json``. Bad input exits with status 2 and a
message naming the file, line and field; the database is left exactly as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import InputError

EXIT_INPUT = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _lat_lon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON such as 31.2304,121.4737, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise argparse.ArgumentTypeError(f"latitude must be in [-90, 90] and longitude in [-180, 180], got {text!r}")
    return lat, lon


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _emit(args: argparse.Namespace, payload: dict, lines: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("\n".join(lines))


def _stderr_progress(enabled: bool) -> Callable[[str], None]:
    def report(message: str) -> None:
        if enabled:
            print(f"  {message}", file=sys.stderr, flush=True)

    return report


# --- handlers --------------------------------------------------------------------------------------


def _store(args: argparse.Namespace, content) -> dict:  # noqa: ANN001
    """Write a whole data set in one transaction and return its summary."""
    from db import open_database
    from db.queries import dataset_summary, store_dataset

    database = open_database(args.db)
    with database.write_session() as session, session.begin():
        dataset = store_dataset(session, content)
        session.flush()
        summary = dataset_summary(session, dataset)
    summary["db"] = database.url
    return summary


def _store_and_report(args: argparse.Namespace, content, title: str, started: float) -> int:  # noqa: ANN001
    """Store a generated or ingested data set (one transaction) and print its summary."""
    summary = _store(args, content)
    seconds = time.perf_counter() - started
    summary["seconds"] = round(seconds, 3)
    _emit(args, summary, _summary_lines(title, summary, seconds))
    return 0


def _summary_lines(title: str, summary: dict, seconds: float) -> list[str]:
    return [
        f"{title} '{summary['dataset']}' in {seconds:.1f} s -> {summary['db']}",
        f"  {summary['entities']} {summary['entity_kind']}s, {summary['cells']} cells "
        f"({summary['cells_with_coordinates']} on the map), {summary['hours']} hours",
        f"  {len(summary['services'])} services: {', '.join(summary['services'])}",
        f"  {len(summary['poi_categories'])} POI categories; {summary['traffic_rows']:,} non-zero "
        f"entity-hour-service rows; {summary['total_bytes'] / 1e9:.2f} GB in total",
    ]


def cmd_city_build(args: argparse.Namespace) -> int:
    from engine.data.city import CityConfig, generate_city

    started = time.perf_counter()
    config = CityConfig(
        users=args.users,
        cells=args.cells,
        seed=args.seed,
        env_effect=args.env_effect,
        days=args.days,
        center=args.center,
        radius_km=args.radius_km,
    )
    content = generate_city(config, name=args.name)
    return _store_and_report(args, content, "Built synthetic city", started)


def cmd_ingest_tsinghua(args: argparse.Namespace) -> int:
    from engine.data.ingest_tsinghua import read_tsinghua

    started = time.perf_counter()
    content = read_tsinghua(
        trace=args.trace,
        app2category=args.app2category,
        categories=args.categories,
        poi=args.poi,
        coords=args.coords,
        all_services=args.all_services,
        name=args.name,
        progress=_stderr_progress(not args.json),
    )
    return _store_and_report(args, content, "Ingested Tsinghua App Usage data", started)


def cmd_ingest_table(args: argparse.Namespace) -> int:
    from engine.data.ingest_table import read_table

    started = time.perf_counter()
    content = read_table(
        records=args.records,
        cells=args.cells,
        mapping=args.mapping,
        entity_kind=args.entity_kind,
        timezone=args.timezone,
        name=args.name,
    )
    return _store_and_report(args, content, "Ingested table", started)


def cmd_data_info(args: argparse.Namespace) -> int:
    from db import open_database
    from db.queries import dataset_summary, get_dataset

    database = open_database(args.db)
    with database.session() as session:
        summary = dataset_summary(session, get_dataset(session, args.dataset))
    summary["db"] = database.url
    _emit(args, summary, _summary_lines("Data set", summary, 0.0)[1:] + [f"  database: {database.url}"])
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from db import open_database
    from db.models import Dataset

    database = open_database(args.db)
    with database.session() as session:
        datasets = session.scalars(select(Dataset).order_by(Dataset.id)).all()
        rows = [
            {"name": d.name, "kind": d.kind, "entity_kind": d.entity_kind, "active": d.is_active,
             "hours": d.hours, "created_at": d.created_at.isoformat(timespec="seconds")}
            for d in datasets
        ]
    lines = [f"{'*' if r['active'] else ' '} {r['name']:30s} {r['kind']:10s} {r['created_at']}" for r in rows]
    _emit(args, {"datasets": rows}, lines or ["no data sets yet; run `lsdm city build`"])
    return 0


def cmd_data_use(args: argparse.Namespace) -> int:
    from db import open_database
    from db.queries import activate_dataset, get_dataset

    database = open_database(args.db)
    with database.write_session() as session, session.begin():
        activate_dataset(session, get_dataset(session, args.name))
    print(f"active data set: {args.name}")
    return 0


def cmd_env_build(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.env.clip import ClipSettings
    from engine.env.pipeline import build_environment

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
        from engine.env.pipeline import registered_encoder_dir

        with database.session() as session:
            encoder_dir = registered_encoder_dir(session, args.encoder)
    elif not (args.train or args.clip_init):
        # The default city gets the shipped encoder, whose embeddings the shipped model was trained on.
        from db.queries import get_dataset
        from engine.shipped import shipped_encoder_dir

        with database.session() as session:
            encoder_dir = shipped_encoder_dir(session, get_dataset(session, args.dataset))
    summary = build_environment(
        database, dataset_name=args.dataset, tiles=args.tiles, describer=args.describer,
        describer_options=options, regenerate=args.regenerate, settings=settings, encoder_dir=encoder_dir,
        progress=_stderr_progress(not args.json),
    )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    _emit(args, summary, _env_lines(summary))
    return 0


def cmd_env_info(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.env.pipeline import environment_info

    summary = environment_info(open_database(args.db), args.dataset)
    _emit(args, summary, _env_lines(summary))
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


def cmd_train(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.model.config import resolve_config
    from engine.train import train

    name, config = resolve_config(args.config, epochs=args.epochs, seed=args.seed)

    def report(entry: dict) -> None:
        if not args.json:
            print(f"  epoch {entry['epoch']:>3}: train loss {entry['train_loss']:.4f}  "
                  f"validation loss {entry['val_loss']:.4f}  ({entry['seconds']:.0f} s)", file=sys.stderr, flush=True)

    result = train(open_database(args.db), name, config, dataset_name=args.dataset, split=args.split,
                   activate=not args.no_activate, device=args.device, progress=report,
                   max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    payload = {"model_id": result.record_id, "config": name, "path": str(result.path), **result.metrics}
    curve = " ".join(f"{e['val_loss']:.3f}" for e in result.metrics["history"])
    _emit(args, payload, [f"Trained model {result.record_id} ({name}) in {result.metrics['train_seconds']:.0f} s "
                          f"on {result.metrics['device']}; stopped by {result.metrics['stopped_by']}",
                          f"  validation loss by epoch: {curve}", f"  saved to {result.path}"])
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.forecast import run_forecast

    from engine.requests import ForecastRequest

    run = run_forecast(open_database(args.db), ForecastRequest.from_params(
        {"entity": args.entity, "start": args.start, "horizon": args.horizon, "samples": args.samples,
         "sampler": args.sampler, "location": args.location, "guidance": args.guidance, "seed": args.seed,
         "noise": args.noise, "model_id": args.model, "dataset": args.dataset, "device": args.device}))
    lines = [f"Forecast run {run['run_id']} with model {run['model_id']} in {run['seconds']:.2f} s"]
    for entity in run["entities"]:
        lines.append(f"  {entity['entity']}: total MB per hour, median [5%, 95%]")
        for step in entity["steps"][:48]:
            lines.append(f"    {step['label']}: {step['total']['median'] / 1e6:8.2f} "
                         f"[{step['total']['q05'] / 1e6:.2f}, {step['total']['q95'] / 1e6:.2f}]"
                         + (f"  truth {step['total']['truth'] / 1e6:.2f}" if step["total"].get("truth") is not None else ""))
    _emit(args, run, lines)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from db import open_database
    from db.models import Dataset, ModelRecord

    database = open_database(args.db)
    with database.session() as session:
        rows = session.execute(select(ModelRecord, Dataset.name).outerjoin(Dataset, Dataset.id == ModelRecord.dataset_id)
                               .order_by(ModelRecord.id)).all()
        models = [{"id": m.id, "name": m.name, "kind": m.kind, "dataset": d, "active": m.is_active,
                   "created_at": m.created_at.isoformat(timespec="seconds"), "path": m.path,
                   "best_val_loss": (m.metrics or {}).get("best_val_loss")} for m, d in rows]
    lines = [f"{'*' if m['active'] else ' '} {m['id']:>4} {m['kind']:6s} {m['name']:24s} {m['dataset'] or '-':20s} "
             f"{m['created_at']}" for m in models]
    _emit(args, {"models": models}, lines or ["no models yet; run `lsdm train`"])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from db import open_database
    from cli.report_figures import draw
    from engine.evaluation.evaluate import evaluate

    result = evaluate(open_database(args.db), args.model, report_dir=args.report, draw=draw, samples=args.samples,
                      path_samples=args.path_samples,
                      steps=args.steps, path_users=args.path_users, train_missing=not args.no_train,
                      include_arima=not args.no_arima, progress=_stderr_progress(not args.json),
                      dataset_name=args.dataset, location=args.location)
    lines = [f"Evaluation of model {result['model_id']} on {result['dataset']} ({result['seconds']:.0f} s)",
             f"  {'method':20s} {'MSE':>8s} {'RMSE':>8s} {'MAE':>8s} {'CS':>8s} {'R2':>8s} {'CRPS':>8s} "
             f"{'cov50':>6s} {'cov90':>6s}"]
    for row in result["rows"] + [r for r in result["table4"] if r not in result["rows"]]:
        lines.append(f"  {row['method']:20s} {row['mse']:8.4f} {row['rmse']:8.4f} {row['mae']:8.4f} {row['cs']:8.4f} "
                     f"{row['r2']:8.4f} {row['crps']:8.4f} {row['cov50']:6.3f} {row['cov90']:6.3f}")
    lines += [f"  {note}" for note in result["notes"]]
    if result.get("report"):
        lines.append(f"  report: {Path(result['report'][0]).parent}")
    _emit(args, result, lines)
    return 0


def cmd_export_windows(args: argparse.Namespace) -> int:
    from db import open_database
    from db.queries import get_dataset
    from engine.data.windows import Normaliser, SplitSpec, load_series, make_splits
    from engine.evaluation.scoring import export_windows
    from engine.train import load_model

    database = open_database(args.db)
    with database.session() as session:
        dataset = get_dataset(session, args.dataset)
        series = load_series(session, dataset)
    history = args.history
    normaliser = None
    if args.model is not None or history is None:
        try:
            _, forecaster = load_model(database, args.model, dataset=dataset)
            history, normaliser = history or forecaster.config.history, forecaster.normaliser
        except InputError:
            if args.model is not None:
                raise
    spec = SplitSpec(kind=args.split, history=history or 24)
    splits = make_splits(series, spec)
    normaliser = normaliser or Normaliser.fit(series.traffic[:, : splits.train_hours_end])
    summary = export_windows(series, normaliser, splits, args.out)
    _emit(args, {"out": str(args.out), **summary}, [f"Wrote {args.out}: {summary}"])
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from engine.evaluation.scoring import score_predictions

    result = score_predictions(args.predictions, args.windows)
    _emit(args, result, [f"{k}: {v}" for k, v in result.items()])
    return 0


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", metavar="PATH|URL", default=None,
        help="database file or SQLAlchemy URL (default: $LSDM_DB, else lsdm.sqlite in the per-user data directory)",
    )
    reporting = argparse.ArgumentParser(add_help=False)
    reporting.add_argument("--json", action="store_true", help="print the result as JSON")

    parser = argparse.ArgumentParser(
        prog="lsdm", description="LSDM operator dashboard: data, environment, forecasting engine and app."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    city = commands.add_parser("city", help="the embedded synthetic city").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    build = city.add_parser(
        "build", parents=[common, reporting], help="generate a synthetic city and store it",
        description="Generate a deterministic synthetic city (cells, POIs, users, hourly traffic) and store "
        "it as a data set, replacing one of the same name.",
    )
    build.add_argument("--users", type=_positive_int, default=500, help="number of users (default 500)")
    build.add_argument("--cells", type=_positive_int, default=400, help="number of cells (default 400)")
    build.add_argument("--seed", type=int, default=0, help="random seed: another seed gives another city (default 0)")
    build.add_argument(
        "--env-effect", type=_non_negative_float, default=1.0,
        help="strength of the environment's influence on service use; 0 removes it entirely (default 1.0)",
    )
    build.add_argument("--days", type=_positive_int, default=14,
                       help="days of hourly data (default 14: two weeks, so that a weekend is in the training days)")
    build.add_argument("--center", type=_lat_lon, default=(31.2304, 121.4737), metavar="LAT,LON",
                       help="city centre (default: central Shanghai, 31.2304,121.4737)")
    build.add_argument("--radius-km", type=_non_negative_float, default=5.0, help="city radius in km (default 5)")
    build.add_argument("--name", default=None, help="data set name (default synthetic-seed<SEED>)")
    build.set_defaults(handler=cmd_city_build)

    ingest = commands.add_parser("ingest", help="ingest real data from its own formats").add_subparsers(
        dest="action", required=True, metavar="FORMAT"
    )
    tsinghua = ingest.add_parser(
        "tsinghua", parents=[common, reporting], help="the Tsinghua App Usage dataset's files",
        description="Ingest the Tsinghua App Usage dataset: apps -> categories, bytes per user-hour-service, "
        "the modal cell of each user-hour, POIs per base station.",
    )
    tsinghua.add_argument("--trace", type=_existing_file, required=True, help="App_usage_trace.txt")
    tsinghua.add_argument("--app2category", type=_existing_file, required=True, help="App2Category.txt")
    tsinghua.add_argument("--categories", type=_existing_file, required=True, help="Categorys.txt")
    tsinghua.add_argument("--poi", type=_existing_file, required=True, help="base_poi.txt")
    tsinghua.add_argument("--coords", type=_existing_file, default=None,
                          help="optional CSV cell_id,lat,lon of base stations (the public release has none)")
    tsinghua.add_argument("--all-services", action="store_true",
                          help="keep all 20 app categories instead of the paper's 10")
    tsinghua.add_argument("--name", default="tsinghua", help="data set name (default tsinghua)")
    tsinghua.set_defaults(handler=cmd_ingest_tsinghua)

    table = ingest.add_parser(
        "table", parents=[common, reporting], help="the documented long format (CSV or Parquet)",
        description="Ingest records (entity_id, timestamp, cell_id, service, bytes) and cells "
        "(cell_id, lat, lon, <POI columns>); see docs/data-formats.md#long-table.",
    )
    table.add_argument("--records", type=_existing_file, required=True, help="records file (.csv or .parquet)")
    table.add_argument("--cells", type=_existing_file, required=True, help="cells file (.csv or .parquet)")
    table.add_argument("--mapping", type=_existing_file, default=None, help="JSON column mapping (docs/data-formats.md)")
    table.add_argument("--entity-kind", choices=["user", "cell"], default=None,
                       help="what the records' entity_id is (default: the mapping's, else user)")
    table.add_argument("--timezone", default=None,
                       help="IANA time zone of naive timestamps (default: the mapping's, else UTC)")
    table.add_argument("--name", default=None, help="data set name (default: the records file's stem)")
    table.set_defaults(handler=cmd_ingest_table)

    data = commands.add_parser("data", help="inspect the data sets").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    info = data.add_parser("info", parents=[common, reporting], help="counts and vocabularies of a data set")
    info.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    info.set_defaults(handler=cmd_data_info)
    listing = data.add_parser("list", parents=[common, reporting], help="all data sets; * marks the active one")
    listing.set_defaults(handler=cmd_data_list)
    use = data.add_parser("use", parents=[common], help="make a data set the active one")
    use.add_argument("name")
    use.set_defaults(handler=cmd_data_use)

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

    train_p = commands.add_parser(
        "train", parents=[common, reporting], help="train an LSDM forecaster",
        description="Train an LSDM forecaster on a data set (AdamW, EMA, gradient clipping, early stopping on "
        "validation), save it (safetensors + JSON) and register it as the active model.",
    )
    train_p.add_argument("--config", default="lsdm", metavar="NAME|FILE",
                         help="lsdm (default), lsdm-no-condition, csdi-like, no-2d-attention, env-input, image-only, "
                              "text-only, lsdm-plain (no linear mean feature), lsdm-plain-no-condition, lsdm-prior and "
                              "lsdm-residual (experimental), tiny, or a JSON file of model settings")
    train_p.add_argument("--epochs", type=_positive_int, default=None, help="maximum epochs (default: the config's)")
    train_p.add_argument("--seed", type=int, default=None, help="seed (default: the config's)")
    train_p.add_argument("--split", choices=["time", "users"], default="time",
                         help="time: train on the first days, validate on the next, test on the last (default); "
                              "users: also hold out a share of the users")
    train_p.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    train_p.add_argument("--max-minutes", type=_non_negative_float, default=None, help="stop after this training time")
    train_p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    train_p.add_argument("--no-activate", action="store_true", help="register without making it the active model")
    train_p.set_defaults(handler=cmd_train)

    forecast = commands.add_parser(
        "forecast", parents=[common, reporting], help="probabilistic recursive forecast for users or cells",
        description="Forecast the coming hours per service: every sample path feeds its own samples back. "
        "The run is stored with every parameter and can be reproduced exactly.",
    )
    forecast.add_argument("--entity", required=True, metavar="user:ID[,user:ID...]", help="who to forecast")
    forecast.add_argument("--start", type=int, required=True, metavar="HOUR",
                          help="first forecast hour (hours since the data set's origin)")
    forecast.add_argument("--horizon", type=_positive_int, default=1, help="hours to forecast (default 1)")
    forecast.add_argument("--samples", type=_positive_int, default=32, help="sample paths (default 32)")
    forecast.add_argument("--sampler", default="ddim:10", help="ddpm (faithful, all steps) or ddim:STEPS (default ddim:10)")
    forecast.add_argument("--location", default="habitual", metavar="habitual|stay|observed|cell:ID,...",
                          help="where the entity is during the forecast (default: its habitual cell for that hour; "
                          "observed: the cells the data recorded, for backtests)")
    forecast.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    forecast.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    forecast.add_argument("--noise", default="antithetic", metavar="antithetic|independent",
                          help="antithetic (default): each path paired with one driven by the opposite noise, "
                          "for a steadier mean; independent: every path on its own noise")
    forecast.add_argument("--model", type=int, default=None, help="model id (default: the active model)")
    forecast.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    forecast.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    forecast.set_defaults(handler=cmd_forecast)

    models = commands.add_parser("models", parents=[common, reporting], help="registered models; * marks active ones")
    models.set_defaults(handler=cmd_models)

    evaluate_p = commands.add_parser(
        "evaluate", parents=[common, reporting], help="reproduce the paper's tables on this data",
        description="Score the model, its comparison models (trained if missing) and the baselines on the test day; "
        "write report.md, CSV tables and PNG plots.",
    )
    evaluate_p.add_argument("--model", type=int, default=None, help="model id (default: the active model)")
    evaluate_p.add_argument("--report", default=None, metavar="DIR", help="write the report into DIR")
    evaluate_p.add_argument("--samples", type=_positive_int, default=32,
                            help="samples per test window, their mean is the point forecast (default 32)")
    evaluate_p.add_argument("--path-samples", type=_positive_int, default=16,
                            help="sample paths per entity for the MSE by recursive step (default 16)")
    evaluate_p.add_argument("--steps", type=_positive_int, default=30, help="recursive steps for Fig. 8/9 (default 30)")
    evaluate_p.add_argument("--path-users", type=_positive_int, default=100,
                            help="entities in the recursive evaluation (default 100)")
    evaluate_p.add_argument("--location", default="observed", metavar="observed|habitual",
                            help="cells of the forecast hours: observed (default: those the data recorded, as in "
                            "training and the paper) or habitual (each user's usual cell: the location forecast too)")
    evaluate_p.add_argument("--no-train", action="store_true", help="do not train missing comparison models")
    evaluate_p.add_argument("--no-arima", action="store_true", help="leave ARIMA out (it takes about 2 minutes)")
    evaluate_p.add_argument("--dataset", default=None,
                            help="score on this data set's test day (default: the model's own), e.g. a second city "
                                 "embedded with the model's encoder (`lsdm env build --encoder`)")
    evaluate_p.set_defaults(handler=cmd_evaluate)

    export = commands.add_parser("export", help="export data for outside models").add_subparsers(
        dest="action", required=True, metavar="WHAT")
    export_windows_p = export.add_parser(
        "windows", parents=[common, reporting], help="the exact evaluation windows and splits as .npz",
        description="Write every train/validation/test window (history, target, calendar, environment) with "
        "the documented keys of engine/evaluation/scoring.py, for `lsdm score`.")
    export_windows_p.add_argument("--out", type=Path, required=True, help="output .npz file")
    export_windows_p.add_argument("--model", type=int, default=None,
                                  help="use this model's history length and normalisation (default: the active one)")
    export_windows_p.add_argument("--history", type=_positive_int, default=None, help="history hours (default: the model's)")
    export_windows_p.add_argument("--split", choices=["time", "users"], default="time", help="split kind (default time)")
    export_windows_p.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    export_windows_p.set_defaults(handler=cmd_export_windows)

    score_p = commands.add_parser(
        "score", parents=[reporting], help="score outside predictions on the exported windows",
        description="Score predictions (.npz with `prediction` or `samples`) with the same metrics as the report.")
    score_p.add_argument("--predictions", type=_existing_file, required=True, help="predictions .npz")
    score_p.add_argument("--windows", type=_existing_file, required=True, help="the windows .npz it was made from")
    score_p.set_defaults(handler=cmd_score)

    app_p = commands.add_parser("app", parents=[common], help="serve the dashboard on 127.0.0.1",
                                description="Serve the Streamlit dashboard on 127.0.0.1 with a worker for its jobs, and open it "
                                            "in the browser. Ctrl+C stops both.")
    app_p.add_argument("--port", type=_positive_int, default=None, help="TCP port (default: a free one)")
    app_p.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    app_p.add_argument("--no-worker", action="store_true",
                       help="do not start a worker beside the server (jobs then wait for `lsdm worker`)")
    app_p.set_defaults(handler=cmd_app)

    assets = commands.add_parser("assets", help="the shipped default encoder and model").add_subparsers(
        dest="assets_command", required=True, metavar="build|install")
    assets_build = assets.add_parser(
        "build", parents=[reporting], help="retrain the shipped default (about 12 min on 2 CPU cores)",
        description="Build the default city in a scratch database, train the CLIP encoder and the default "
                    "forecaster on it, and write them with a manifest into assets/default (or --out).")
    assets_build.add_argument("--out", type=Path, default=None, help="output folder (default: assets/default)")
    assets_build.add_argument("--clip-epochs", type=_positive_int, default=40, help="CLIP epochs (default 40)")
    assets_build.add_argument("--epochs", type=_positive_int, default=None, help="forecaster epochs (default: the config's)")
    assets_build.add_argument("--keep-encoder", action="store_true",
                              help="keep the shipped CLIP encoder (embed the city with it) and retrain only the "
                                   "forecaster")
    assets_build.set_defaults(handler=cmd_assets_build)
    assets_install = assets.add_parser(
        "install", parents=[common, reporting], help="use the shipped encoder and model on the default city",
        description="Embed the default city's cells with the shipped encoder and register the shipped forecaster "
                    "as the active model (refused on any other data set).")
    assets_install.add_argument("--dataset", default=None, help="data set name (default: the active one)")
    assets_install.set_defaults(handler=cmd_assets_install)
    worker_p = commands.add_parser(
        "worker", parents=[common], help="run queued jobs (the dashboard's engine)",
        description="Claim and run queued jobs (forecasts, what-ifs, training, evaluations, ingests, city and "
                    "environment builds) until stopped with Ctrl+C or SIGTERM. Jobs of a dead worker are queued "
                    "again once, then failed.")
    worker_p.add_argument("--lanes", default="interactive,batch",
                          help="comma-separated lanes to serve: interactive (forecasts, what-ifs), batch (the rest)")
    worker_p.add_argument("--drain", action="store_true", help="run the queued jobs, then exit")
    worker_p.add_argument("--stale-after", type=_positive_int, default=60,
                          help="seconds without a heartbeat after which another worker counts as dead (default 60)")
    worker_p.add_argument("--max-attempts", type=_positive_int, default=2,
                          help="starts of a job whose worker died before it is failed instead of queued again (default 2)")
    worker_p.add_argument("--log-file", type=Path, default=None, help="append the log to this file (default: stderr)")
    worker_p.set_defaults(handler=cmd_worker)

    jobs = commands.add_parser("jobs", help="queue, inspect and cancel jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="list|show|submit|cancel|wait")
    jobs_list = jobs.add_parser("list", parents=[common, reporting], help="recent jobs, newest first")
    jobs_list.add_argument("--status", default=None, help="comma-separated statuses (queued,running,done,failed,cancelled)")
    jobs_list.add_argument("--limit", type=_positive_int, default=30)
    jobs_list.set_defaults(handler=cmd_jobs_list)
    jobs_show = jobs.add_parser("show", parents=[common, reporting], help="one job with its parameters and result")
    jobs_show.add_argument("job", type=_positive_int)
    jobs_show.set_defaults(handler=cmd_jobs_show)
    jobs_submit = jobs.add_parser(
        "submit", parents=[common, reporting], help="queue a job for the worker",
        description="Queue a job. KIND is one of: " + ", ".join(
            ("setup.default", "city.build", "ingest.table", "ingest.tsinghua", "env.build", "assets.install", "train",
             "evaluate", "forecast", "whatif")) + "; parameters are KEY=VALUE (VALUE read as JSON when it parses, "
        "else as text), e.g. `lsdm jobs submit forecast entity=user:u0001 start=300 horizon=12`.")
    jobs_submit.add_argument("kind")
    jobs_submit.add_argument("params", nargs="*", metavar="KEY=VALUE")
    jobs_submit.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless it is done")
    jobs_submit.add_argument("--timeout", type=_positive_int, default=3600, help="seconds to wait (default 3600)")
    jobs_submit.set_defaults(handler=cmd_jobs_submit)
    jobs_cancel = jobs.add_parser("cancel", parents=[common, reporting], help="cancel a queued or running job")
    jobs_cancel.add_argument("job", type=_positive_int)
    jobs_cancel.set_defaults(handler=cmd_jobs_cancel)
    jobs_wait = jobs.add_parser("wait", parents=[common, reporting], help="wait until a job ends; exit 1 unless done")
    jobs_wait.add_argument("job", type=_positive_int)
    jobs_wait.add_argument("--timeout", type=_positive_int, default=3600)
    jobs_wait.set_defaults(handler=cmd_jobs_wait)
    return parser


def cmd_worker(args: argparse.Namespace) -> int:
    import logging
    import signal

    from db import open_database
    from engine.jobs import JobWorker

    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("lsdm")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        worker = JobWorker(open_database(args.db), lanes=[lane.strip() for lane in args.lanes.split(",") if lane.strip()],
                           stale_after=args.stale_after, max_attempts=args.max_attempts)
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


def _job_line(job) -> str:  # noqa: ANN001
    seconds = f"{job.seconds:.1f} s" if job.seconds is not None else ""
    state = job.error if job.status == "failed" else (job.message or "")
    return (f"{job.id:>5}  {job.kind:<16} {job.status:<9} {job.progress * 100:5.1f}%  {seconds:>9}  "
            f"{job.result_ref or '':<18} {state}")


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.jobs import STATUSES, list_jobs

    statuses = [s.strip() for s in args.status.split(",")] if args.status else None
    for status in statuses or []:
        if status not in STATUSES:
            raise InputError(f"expected some of {', '.join(STATUSES)}, got {status!r}", field="--status")
    rows = list_jobs(open_database(args.db), statuses=statuses, limit=args.limit)
    _emit(args, {"jobs": [job.to_dict() for job in rows]},
          ["   id  kind             status    progress       time  result             message"]
          + [_job_line(job) for job in rows])
    return 0


def _report_job(args: argparse.Namespace, job) -> int:  # noqa: ANN001
    lines = [_job_line(job), f"  parameters: {json.dumps(job.params)}"]
    if job.result:
        lines.append(f"  result: {json.dumps(job.result, default=str)[:2000]}")
    _emit(args, job.to_dict(), lines)
    return 0 if job.status in ("done", "queued", "running") else 1


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.jobs import get_job

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


def _wait(args: argparse.Namespace, database, job_id: int) -> int:  # noqa: ANN001
    from engine.jobs import wait_for

    last = [None]

    def show(job) -> None:  # noqa: ANN001
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
    from db import open_database
    from engine.jobs import enqueue, get_job

    database = open_database(args.db)
    params = dict(_parse_param(text) for text in args.params)
    job_id = enqueue(database, args.kind, params)
    if args.wait:
        return _wait(args, database, job_id)
    job = get_job(database, job_id)
    _emit(args, job.to_dict(), [f"queued job {job_id} ({args.kind}); `lsdm jobs wait {job_id}` follows it"])
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.jobs import cancel

    status = cancel(open_database(args.db), args.job)
    text = {"running": "cancellation asked; the job stops at its next progress report",
            "cancelled": "cancelled"}.get(status, f"already {status}; nothing to cancel")
    _emit(args, {"job": args.job, "status": status}, [f"job {args.job}: {text}"])
    return 0


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    from db import open_database

    return _wait(args, open_database(args.db), args.job)


def cmd_assets_build(args: argparse.Namespace) -> int:
    from engine.shipped import build, default_dir

    out = args.out or default_dir()
    manifest = build(out, clip_epochs=args.clip_epochs, epochs=args.epochs, keep_encoder=args.keep_encoder,
                     progress=_stderr_progress(not args.json))
    manifest["out"] = str(out)
    _emit(args, manifest, [f"Shipped default written to {out} in {manifest['seconds']:.0f} s",
                           f"  encoder {manifest['encoder_id']}, model {manifest['model_id']} "
                           f"(best validation loss {manifest['model_metrics'].get('best_val_loss')})"])
    return 0


def cmd_assets_install(args: argparse.Namespace) -> int:
    from db import open_database
    from engine.shipped import install

    result = install(open_database(args.db), args.dataset, progress=_stderr_progress(not args.json))
    _emit(args, result, [f"Installed the shipped model on '{result['dataset']}': model id {result['model_id']} "
                         f"({result['model_name']}), encoder {result['encoder_id']}, {result['seconds']:.1f} s"])
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from db.session import resolve_db_url
    from desktop.serve import serve

    return serve(resolve_db_url(args.db), port=args.port, open_browser=not args.no_browser,
                 with_worker=not args.no_worker)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except LookupError as error:  # no such data set / entity
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lsdm jobs list | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
