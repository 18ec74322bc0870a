"""`lsdm city`, `lsdm ingest` and `lsdm data`: build or ingest a data set (stored in one transaction) and
inspect the stored ones."""

from __future__ import annotations

import argparse
import time

from cli.common import Commands, Compound, add_request_flags, emit, request_of, stderr_progress
from db import open_database
from db.queries import DatasetContent, activate_dataset, all_datasets, dataset_summary, get_dataset
from db.session import shown_url
from engine.data.city import generate_city_for
from engine.data.ingest_matrix import read_matrix_request
from engine.data.ingest_table import read_table
from engine.data.ingest_tsinghua import read_tsinghua
from engine.data.store import store_new_dataset
from engine.errors import InputError
from engine.requests import (
    AggregateRequest,
    CityRequest,
    IngestMatrixRequest,
    IngestTableRequest,
    IngestTsinghuaRequest,
)


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
        "build",
        parents=[common, reporting],
        help="generate a synthetic city and store it",
        description="Generate a deterministic synthetic city (cells, POIs, users, hourly traffic) and store "
        "it as the active data set (one of the same name only with --replace).",
    )
    add_request_flags(
        build,
        CityRequest,
        compounds=[
            Compound(
                "--center",
                ("center_lat", "center_lon"),
                _lat_lon,
                "LAT,LON",
                f"city centre (default: central Shanghai, {CityRequest.default('center_lat')},"
                f"{CityRequest.default('center_lon')})",
            )
        ],
    )
    build.set_defaults(handler=cmd_city_build)


def _add_ingest(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm ingest tsinghua|table`."""
    ingest = commands.add_parser("ingest", help="ingest real data from its own formats").add_subparsers(
        dest="action", required=True, metavar="FORMAT"
    )
    tsinghua = ingest.add_parser(
        "tsinghua",
        parents=[common, reporting],
        help="the Tsinghua App Usage dataset's files",
        description="Ingest the Tsinghua App Usage dataset: apps -> categories, bytes per user-hour-service, "
        "the modal cell of each user-hour, POIs per base station.",
    )
    add_request_flags(tsinghua, IngestTsinghuaRequest)
    tsinghua.set_defaults(handler=cmd_ingest_tsinghua)

    table = ingest.add_parser(
        "table",
        parents=[common, reporting],
        help="the documented long format (CSV or Parquet)",
        description="Ingest records (entity_id, timestamp, cell_id, service, bytes) and cells "
        "(cell_id, lat, lon, <POI columns>); see docs/data-formats.md#long-table.",
    )
    add_request_flags(table, IngestTableRequest)
    table.set_defaults(handler=cmd_ingest_table)

    matrix = ingest.add_parser(
        "matrix",
        parents=[common, reporting],
        help="wide entity x time matrices, one per service (cells as entities)",
        description="Ingest one entities x time steps matrix per service (.npy, .npz[:KEY] or .csv), entities as "
        "cells, with optional environment vectors per entity; see docs/data-formats.md#matrices.",
    )
    add_request_flags(matrix, IngestMatrixRequest)
    matrix.set_defaults(handler=cmd_ingest_matrix)


def _add_data(commands: Commands, common: argparse.ArgumentParser, reporting: argparse.ArgumentParser) -> None:
    """`lsdm data info|list|use|aggregate`."""
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
    aggregate = data.add_parser(
        "aggregate",
        parents=[common, reporting],
        help="a data set of cells summed from a user-level one (the direct cell model's data)",
        description="Sum each cell's users per hour and service into a data set whose entities are the cells, "
        "with the cells' tiles and descriptions copied; stored in one transaction as the active data set.",
    )
    add_request_flags(aggregate, AggregateRequest)
    aggregate.set_defaults(handler=cmd_data_aggregate)


# --- handlers -------------------------------------------------------------------------------------


def _store_and_report(
    args: argparse.Namespace, content: DatasetContent, replace: bool, title: str, started: float
) -> int:
    """Store a generated or ingested data set as the active one (one transaction) and print its summary."""
    database = open_database(args.db)
    with database.write_session() as session, session.begin():
        dataset = store_new_dataset(session, content, replace=replace)
        session.flush()
        summary = dataset_summary(session, dataset)
    summary["db"] = shown_url(database.url)
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
    request = request_of(args)
    return _store_and_report(args, generate_city_for(request), request.replace, "Built synthetic city", started)


def cmd_ingest_tsinghua(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    r = request_of(args)
    content = read_tsinghua(
        trace=r.trace,
        app2category=r.app2category,
        categories=r.categories,
        poi=r.poi,
        coords=r.coords,
        all_services=r.all_services,
        name=r.name,
        progress=stderr_progress(not args.json),
    )
    return _store_and_report(args, content, r.replace, "Ingested Tsinghua App Usage data", started)


def cmd_ingest_table(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    r = request_of(args)
    content = read_table(
        records=r.records, cells=r.cells, mapping=r.mapping, entity_kind=r.entity_kind, timezone=r.timezone, name=r.name
    )
    return _store_and_report(args, content, r.replace, "Ingested table", started)


def cmd_ingest_matrix(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    r = request_of(args)
    content = read_matrix_request(r)
    return _store_and_report(args, content, r.replace, "Ingested matrices", started)


def _lat_lon(text: str) -> dict[str, float]:
    """``LAT,LON`` -> the request's centre fields (their ranges are the request's checks)."""
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"expected LAT,LON such as 31.2304,121.4737, got {text!r}", field="center_lat") from None
    return {"center_lat": lat, "center_lon": lon}


def cmd_data_info(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    with database.session() as session:
        summary = dataset_summary(session, get_dataset(session, args.dataset))
    summary["db"] = shown_url(database.url)
    emit(args, summary, [*_summary_lines("Data set", summary, 0.0)[1:], f"  database: {shown_url(database.url)}"])
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    with database.session() as session:
        rows = [
            {
                "name": d.name,
                "kind": d.kind,
                "entity_kind": d.entity_kind,
                "active": d.is_active,
                "hours": d.hours,
                "created_at": d.created_at.isoformat(timespec="seconds"),
            }
            for d in all_datasets(session)
        ]
    lines = [f"{'*' if r['active'] else ' '} {r['name']:30s} {r['kind']:10s} {r['created_at']}" for r in rows]
    emit(args, {"datasets": rows}, lines or ["no data sets yet; run `lsdm city build`"])
    return 0


def cmd_data_aggregate(args: argparse.Namespace) -> int:
    from engine.data.aggregate import store_aggregate

    started = time.perf_counter()
    request = request_of(args)
    database = open_database(args.db)
    with database.write_session() as session, session.begin():
        dataset = store_aggregate(session, request)
        session.flush()
        summary = dataset_summary(session, dataset)
    summary["db"] = shown_url(database.url)
    seconds = time.perf_counter() - started
    summary["seconds"] = round(seconds, 3)
    emit(args, summary, _summary_lines("Summed to cells", summary, seconds))
    return 0


def cmd_data_use(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    with database.write_session() as session, session.begin():
        activate_dataset(session, get_dataset(session, args.name))
    print(f"active data set: {args.name}")
    return 0
