"""`lsdm city`, `lsdm ingest` and `lsdm data`: build or ingest a data set (stored in one transaction) and
inspect the stored ones."""

from __future__ import annotations

import argparse
import time

from sqlalchemy import select

from cli.common import Commands, emit, existing_file, lat_lon, non_negative_float, positive_int, stderr_progress
from db import open_database
from db.models import Dataset
from db.queries import activate_dataset, dataset_summary, get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.data.ingest_table import read_table
from engine.data.ingest_tsinghua import read_tsinghua


def add_commands(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """city build, ingest tsinghua|table, data info|list|use."""
    _add_city(commands, common, reporting)
    _add_ingest(commands, common, reporting)
    _add_data(commands, common, reporting)


def _add_city(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm city build`."""
    city = commands.add_parser("city", help="the embedded synthetic city").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    build = city.add_parser(
        "build", parents=[common, reporting], help="generate a synthetic city and store it",
        description="Generate a deterministic synthetic city (cells, POIs, users, hourly traffic) and store "
        "it as a data set, replacing one of the same name.",
    )
    build.add_argument("--users", type=positive_int, default=500, help="number of users (default 500)")
    build.add_argument("--cells", type=positive_int, default=400, help="number of cells (default 400)")
    build.add_argument("--seed", type=int, default=0, help="random seed: another seed gives another city (default 0)")
    build.add_argument(
        "--env-effect", type=non_negative_float, default=1.0,
        help="strength of the environment's influence on service use; 0 removes it entirely (default 1.0)",
    )
    build.add_argument("--days", type=positive_int, default=14,
                       help="days of hourly data (default 14: two weeks, so that a weekend is in the training days)")
    build.add_argument("--center", type=lat_lon, default=(31.2304, 121.4737), metavar="LAT,LON",
                       help="city centre (default: central Shanghai, 31.2304,121.4737)")
    build.add_argument("--radius-km", type=non_negative_float, default=5.0, help="city radius in km (default 5)")
    build.add_argument("--name", default=None, help="data set name (default synthetic-seed<SEED>)")
    build.set_defaults(handler=cmd_city_build)


def _add_ingest(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm ingest tsinghua|table`."""
    ingest = commands.add_parser("ingest", help="ingest real data from its own formats").add_subparsers(
        dest="action", required=True, metavar="FORMAT"
    )
    tsinghua = ingest.add_parser(
        "tsinghua", parents=[common, reporting], help="the Tsinghua App Usage dataset's files",
        description="Ingest the Tsinghua App Usage dataset: apps -> categories, bytes per user-hour-service, "
        "the modal cell of each user-hour, POIs per base station.",
    )
    tsinghua.add_argument("--trace", type=existing_file, required=True, help="App_usage_trace.txt")
    tsinghua.add_argument("--app2category", type=existing_file, required=True, help="App2Category.txt")
    tsinghua.add_argument("--categories", type=existing_file, required=True, help="Categorys.txt")
    tsinghua.add_argument("--poi", type=existing_file, required=True, help="base_poi.txt")
    tsinghua.add_argument("--coords", type=existing_file, default=None,
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
    table.add_argument("--records", type=existing_file, required=True, help="records file (.csv or .parquet)")
    table.add_argument("--cells", type=existing_file, required=True, help="cells file (.csv or .parquet)")
    table.add_argument("--mapping", type=existing_file, default=None, help="JSON column mapping (docs/data-formats.md)")
    table.add_argument("--entity-kind", choices=["user", "cell"], default=None,
                       help="what the records' entity_id is (default: the mapping's, else user)")
    table.add_argument("--timezone", default=None,
                       help="IANA time zone of naive timestamps (default: the mapping's, else UTC)")
    table.add_argument("--name", default=None, help="data set name (default: the records file's stem)")
    table.set_defaults(handler=cmd_ingest_table)


def _add_data(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm data info|list|use`."""
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


# --- handlers -------------------------------------------------------------------------------------


def _store(args: argparse.Namespace, content) -> dict:  # noqa: ANN001
    """Write a whole data set in one transaction and return its summary."""
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
    emit(args, summary, _summary_lines(title, summary, seconds))
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
    started = time.perf_counter()
    content = read_tsinghua(
        trace=args.trace,
        app2category=args.app2category,
        categories=args.categories,
        poi=args.poi,
        coords=args.coords,
        all_services=args.all_services,
        name=args.name,
        progress=stderr_progress(not args.json),
    )
    return _store_and_report(args, content, "Ingested Tsinghua App Usage data", started)


def cmd_ingest_table(args: argparse.Namespace) -> int:
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
    database = open_database(args.db)
    with database.session() as session:
        summary = dataset_summary(session, get_dataset(session, args.dataset))
    summary["db"] = database.url
    emit(args, summary, _summary_lines("Data set", summary, 0.0)[1:] + [f"  database: {database.url}"])
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    with database.session() as session:
        datasets = session.scalars(select(Dataset).order_by(Dataset.id)).all()
        rows = [
            {"name": d.name, "kind": d.kind, "entity_kind": d.entity_kind, "active": d.is_active,
             "hours": d.hours, "created_at": d.created_at.isoformat(timespec="seconds")}
            for d in datasets
        ]
    lines = [f"{'*' if r['active'] else ' '} {r['name']:30s} {r['kind']:10s} {r['created_at']}" for r in rows]
    emit(args, {"datasets": rows}, lines or ["no data sets yet; run `lsdm city build`"])
    return 0


def cmd_data_use(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    with database.write_session() as session, session.begin():
        activate_dataset(session, get_dataset(session, args.name))
    print(f"active data set: {args.name}")
    return 0
