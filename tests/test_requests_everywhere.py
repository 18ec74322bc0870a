"""Every request type is accepted alike by the command line, its job kind and its dashboard form: the
same fields, the same defaults, the same bounds (engine/requests.py; docs/architecture.md#requests).

A new field fails here until each surface has taken a decision about it: the command line gets a flag
by itself (cli/common.py), the job kind checks it by itself, and the form either shows a widget for it
(listed in ``FORMS``) or says why the page sets it (``SET_BY_PAGE``).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cli.common import flag_of, request_of
from cli.main import build_parser
from engine.errors import InputError
from engine.jobs import KINDS
from engine.requests import (
    REQUEST_TYPES,
    AggregateRequest,
    CityRequest,
    EnvRequest,
    EvaluateRequest,
    ForecastRequest,
    IngestMatrixRequest,
    IngestTableRequest,
    IngestTsinghuaRequest,
    LoadRequest,
    LoadWhatIfRequest,
    Request,
    TrainRequest,
    WhatIfRequest,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Surface:
    """How one request type is reached: its command, the flags of its required fields with their
    values, the page of its form, the form's widgets {key: field} and the fields the page sets."""

    command: tuple[str, ...]
    required_argv: tuple[str, ...] = ()
    required: dict = field(default_factory=dict)
    page: str = ""
    widgets: dict[str, str] = field(default_factory=dict)
    set_by_page: dict[str, str] = field(default_factory=dict)


def _surfaces(files: dict[str, str]) -> dict[type[Request], Surface]:
    every_env_field = (
        "dataset",
        "tiles",
        "describer",
        "llm_url",
        "llm_model",
        "clip_init",
        "clip_arch",
        "frozen",
        "encoder",
        "seed",
        "a",
        "b",
        "env_mode",
    )
    return {
        CityRequest: Surface(
            ("city", "build"),
            page="datasets",
            widgets={
                "city_users": "users",
                "city_cells": "cells",
                "city_seed": "seed",
                "city_days": "days",
                "city_env_effect": "env_effect",
                "city_center_lat": "center_lat",
                "city_center_lon": "center_lon",
                "city_radius_km": "radius_km",
                "city_name": "name",
                "city_replace": "replace",
            },
        ),
        IngestTableRequest: Surface(
            ("ingest", "table"),
            ("--records", files["records"], "--cells", files["cells"]),
            {"records": files["records"], "cells": files["cells"]},
            page="datasets",
            widgets={
                "table_records": "records",
                "table_cells": "cells",
                "table_mapping": "mapping",
                "table_kind": "entity_kind",
                "table_timezone": "timezone",
                "table_name": "name",
                "table_replace": "replace",
            },
        ),
        IngestTsinghuaRequest: Surface(
            ("ingest", "tsinghua"),
            (
                "--trace",
                files["trace"],
                "--app2category",
                files["app2category"],
                "--categories",
                files["categories"],
                "--poi",
                files["poi"],
            ),
            {name: files[name] for name in ("trace", "app2category", "categories", "poi")},
            page="datasets",
            widgets={
                "ts_trace": "trace",
                "ts_app2category": "app2category",
                "ts_categories": "categories",
                "ts_poi": "poi",
                "ts_coords": "coords",
                "ts_name": "name",
                "ts_all": "all_services",
                "ts_replace": "replace",
            },
        ),
        IngestMatrixRequest: Surface(
            ("ingest", "matrix"),
            ("--values", files["matrix"], "--start", "2024-01-01T00:00"),
            {"values": (files["matrix"],), "start": "2024-01-01T00:00"},
            page="datasets",
            widgets={
                "mx_values": "values",
                "mx_embeddings": "embeddings",
                "mx_start": "start",
                "mx_step": "step",
                "mx_unit": "unit_bytes",
                "mx_timezone": "timezone",
                "mx_name": "name",
                "mx_replace": "replace",
            },
            set_by_page={"services": "named after the uploaded files or .npz arrays (--services renames them)"},
        ),
        EnvRequest: Surface(
            ("env", "build"),
            page="datasets",
            widgets={"env_regenerate": "regenerate", "env_train": "train_encoder", "env_epochs": "clip_epochs"},
            set_by_page={
                **dict.fromkeys(
                    every_env_field,
                    "the active data set and the Settings tab (tiles, describer); "
                    "the encoder's expert settings are the command line's",
                ),
                **dict.fromkeys(("executor", "workers"), "local: a city's cells embed in seconds (the CLI offers Ray)"),
            },
        ),
        TrainRequest: Surface(
            ("train",),
            page="models",
            widgets={
                "train_config": "config",
                "train_epochs": "epochs",
                "train_seed": "seed",
                "train_minutes": "max_minutes",
                "train_split": "split",
                "train_activate": "activate",
            },
            set_by_page={"dataset": "the active data set", "device": "the GPU when present"},
        ),
        EvaluateRequest: Surface(
            ("evaluate",),
            page="models",
            widgets={
                "eval_samples": "samples",
                "eval_steps": "steps",
                "eval_users": "path_users",
                "eval_path_samples": "path_samples",
                "eval_location": "location",
                "eval_arima": "include_arima",
                "eval_learned": "include_learned",
                "eval_fracast": "fracast_entities",
                "eval_quick": "quick",
                "eval_train": "train_missing",
                "eval_level": "level",
                "eval_cells": "cells",
            },
            set_by_page={"model_id": "the model picked in the table", "dataset": "the model's own"},
        ),
        ForecastRequest: Surface(
            ("forecast",),
            ("--entity", "user:U0001", "--start", "300"),
            {"entities": ("U0001",), "start": 300},
            page="forecast",
            widgets={
                "fc_users": "entities",
                "fc_start": "start",
                "fc_horizon": "horizon",
                "fc_samples": "samples",
                "fc_sampler": "sampler",
                "fc_steps": "sampler_steps",
                "fc_location": "location",
                "fc_cell": "cells",
                "fc_guidance": "guidance",
                "fc_seed": "seed",
                "fc_paired": "noise",
            },
            set_by_page={
                "entity_kind": "the data set's",
                "model_id": "the active model",
                "dataset": "the active data set",
                "device": "the GPU when present",
                **dict.fromkeys(
                    ("every", "out", "executor", "workers"),
                    "the picked users (every entity's run, as Parquet parts, is the command line's; the page opens it)",
                ),
            },
        ),
        WhatIfRequest: Surface(
            ("whatif",),
            ("--entity", "user:U0001", "--start", "300"),
            {"entity": "U0001", "start": 300},
            page="whatif",
            widgets={
                "wi_user": "entity",
                "wi_start": "start",
                "wi_horizon": "horizon",
                "wi_samples": "samples",
                "wi_seed": "seed",
                "wi_location": "scenario",
                "wi_name": "name",
            },
            set_by_page={
                "entity_kind": "the data set's",
                "sampler": "the request's default (DDIM, 10 steps), as the baseline's forecast",
                "sampler_steps": "the request's default (DDIM, 10 steps), as the baseline's forecast",
            },
        ),
        AggregateRequest: Surface(
            ("data", "aggregate"),
            page="datasets",
            widgets={"agg_dataset": "dataset", "agg_name": "name", "agg_replace": "replace"},
            set_by_page={"to": "its only choice (cells)"},
        ),
        LoadRequest: Surface(
            ("load",),
            ("--scope", "cell:C0001", "--start", "300"),
            {"scope": "cell:C0001", "start": 300},
            page="cell",
            widgets={
                "cl_start": "start",
                "cl_horizon": "horizon",
                "cl_samples": "samples",
                "cl_location": "location",
                "cl_seed": "seed",
            },
            set_by_page={
                "scope": "the cell the page shows",
                "sampler": "the request's default (DDIM, 10 steps), as the Forecast page's",
                "sampler_steps": "the request's default (DDIM, 10 steps), as the Forecast page's",
                "noise": "the request's default (antithetic pairs)",
                "risk_level": "the request's default (10 %); the risk chart shows every hour's probability",
                "model_id": "the active model",
                "dataset": "the active data set",
                "device": "the GPU when present",
                "name": "the scope",
                "executor": "local: one cell's users are few (the Map page's area form offers Ray)",
                "workers": "local: one cell's users are few (the Map page's area form offers Ray)",
            },
        ),
        LoadWhatIfRequest: Surface(
            ("load-whatif",),
            ("--cell", "C0001", "--start", "300"),
            {"cell": "C0001", "start": 300},
            page="whatif",
            widgets={
                "cw_cell": "cell",
                "cw_start": "start",
                "cw_what": "what",
                "cw_at": "at",
                "cw_duration": "duration",
                "cw_visitors": "visitors",
                "cw_profile": "profile",
                "cw_neighbours": "neighbours",
                "cw_horizon": "horizon",
                "cw_samples": "samples",
                "cw_location": "location",
                "cw_seed": "seed",
            },
            set_by_page={
                "sampler": "the request's default (DDIM, 10 steps), as the Forecast page's",
                "sampler_steps": "the request's default (DDIM, 10 steps), as the Forecast page's",
                "noise": "the request's default (antithetic pairs)",
                "risk_level": "the request's default (10 %)",
                "model_id": "the active model",
                "dataset": "the active data set",
                "device": "the GPU when present",
                "name": "what it changes (the cell, the window, the visitors)",
            },
        ),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("request-files")
    out = {}
    # The Tsinghua and matrix ingests' job kinds read their files when the request is queued: readable ones.
    from engine.data.ingest_tsinghua import CATEGORIES

    files = {
        "trace": "1 20160420080000 0 1 10\n",
        "app2category": "1\t0\n",
        "categories": "".join(f"{i}\t'{name}'\n" for i, name in enumerate(CATEGORIES)),
        "poi": "BaseID\tShops\n0\t3\n",
    }
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)
        out[name] = str(folder / f"{name}.txt")
    np.save(folder / "matrix.npy", np.ones((2, 30)))
    out["matrix"] = str(folder / "matrix.npy")
    # The table ingest's job kind peeks at its files when the request is queued: two readable ones.
    (folder / "records.csv").write_text(
        "entity_id,timestamp,cell_id,service,bytes\nu1,2016-04-20T08:00:00,c1,video,10\n"
    )
    (folder / "cells.csv").write_text("cell_id,lat,lon,shops\nc1,31.2,121.4,3\n")
    out["records"], out["cells"] = str(folder / "records.csv"), str(folder / "cells.csv")
    return out


@pytest.fixture(scope="module")
def surfaces(files: dict[str, str]) -> dict[type[Request], Surface]:
    return _surfaces(files)


def _subparser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _out_of_bounds(found: dict) -> list:
    """Values just outside a numeric field's bounds."""
    step = 1 if found["kind"] is int else 0.5
    return [bound + sign * step for bound, sign in ((found["low"], -1), (found["high"], 1)) if bound is not None]


def _numeric(request_type: type[Request]) -> dict[str, dict]:
    return {
        name: found
        for name, found in request_type.field_specs().items()
        if found["kind"] in (int, float) and not found["internal"]
    }


def test_every_request_type_has_a_command_a_job_kind_and_a_form(surfaces):
    assert set(surfaces) == set(REQUEST_TYPES)
    for request_type in REQUEST_TYPES:
        assert KINDS[request_type.KIND] is not None, request_type
        parser = _subparser(surfaces[request_type].command)
        assert parser.get_default("request_type") is request_type


@pytest.mark.parametrize("request_type", REQUEST_TYPES, ids=lambda t: t.__name__)
def test_the_command_line_has_a_flag_for_every_field_and_the_request_defaults(request_type, surfaces):
    surface = surfaces[request_type]
    parser = _subparser(surface.command)
    flags = parser.get_default("field_flags")
    specs = request_type.field_specs()
    assert set(flags) == {name for name, found in specs.items() if not found["internal"]}
    args = parser.parse_args(list(surface.required_argv))
    assert request_of(args) == request_type(**surface.required)  # absent flags: the request's defaults


@pytest.mark.parametrize("request_type", REQUEST_TYPES, ids=lambda t: t.__name__)
def test_the_command_line_and_the_job_kind_refuse_the_same_values_naming_the_field(request_type, surfaces):
    surface = surfaces[request_type]
    parser = _subparser(surface.command)
    flags = parser.get_default("field_flags")
    check = KINDS[request_type.KIND].check
    expected = request_type(**surface.required).with_absolute_files().to_params()
    assert check(dict(surface.required)) == expected  # the kind's defaults are the request's
    with pytest.raises(InputError) as unknown:
        check({**surface.required, "no_such_field": 1})
    assert unknown.value.field == "no_such_field"
    text_flags = {compound.flag for compound in parser.get_default("compounds")}
    tried = 0
    for name, found in _numeric(request_type).items():
        if flags[name] in text_flags:
            continue  # a field inside a text flag (--sampler ddim:STEPS): tests/cli
        for value in _out_of_bounds(found):
            with pytest.raises(InputError) as by_kind:
                check({**surface.required, name: value})
            assert by_kind.value.field == name, (name, value)
            args = parser.parse_args([*surface.required_argv, flags[name], str(value)])
            with pytest.raises(InputError) as by_cli:
                request_of(args)
            assert by_cli.value.field == name and flag_of(args, by_cli.value).field == flags[name]
            assert by_cli.value.message == by_kind.value.message
            tried += 1
    assert tried or not _numeric(request_type)


# --- the forms ------------------------------------------------------------------------------------------------

WIDGET_TYPES = (
    "number_input",
    "slider",
    "radio",
    "selectbox",
    "checkbox",
    "text_input",
    "select_slider",
    "multiselect",
)


def _widgets(at: AppTest) -> dict:
    out = {}
    for kind in WIDGET_TYPES:
        for widget in getattr(at, kind):
            if getattr(widget, "key", None):
                out[widget.key] = (kind, widget)
    for uploader in at.get("file_uploader"):  # no typed accessor: the proto carries the key in its id
        out[uploader.proto.id.split("-", 2)[-1]] = ("file_uploader", uploader)
    return out


@pytest.fixture(scope="module")
def pages(city_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The widgets of each form page, rendered once on a copy of the default city."""
    copy = tmp_path_factory.mktemp("forms") / "app.sqlite"
    shutil.copy(city_db, copy)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSDM_DB", str(copy))
        out = {}
        for page in ("datasets", "models", "forecast", "whatif", "cell"):
            at = AppTest.from_file(str(REPO / "app" / "views" / f"{page}.py"), default_timeout=120)
            if page == "cell":
                at.query_params["cell"] = "C0001"
            at.run()
            assert not at.exception, (page, at.exception)
            out[page] = _widgets(at)
    return out


# Widgets narrower than their field, on purpose: the form knows the model, the request does not.
NARROWER = {"fc_steps": "at most the active model's diffusion steps (the engine checks the same)"}
# Number fields without browser bounds, on purpose (issue 19): an out-of-range entry reaches the page, which says
# what is wrong under the field and disables the button, instead of the browser sending the old value silently.
CHECKED_BY_PAGE = {
    "fc_horizon",
    "fc_samples",
    "fc_steps",
    "fc_seed",
    "cl_horizon",
    "cl_samples",
    "cl_seed",
    "ml_horizon",
    "ml_samples",
    "wi_horizon",
    "wi_samples",
    "wi_seed",
    "cw_at",
    "cw_duration",
    "cw_horizon",
    "cw_samples",
    "cw_neighbours",
    "cw_visitors",
    "cw_seed",
}
# Choice widgets with one more option than the field's choices: "unset", which leaves the default.
UNSET_OPTION = {"table_kind": "as the mapping says"}


@pytest.mark.parametrize("request_type", REQUEST_TYPES, ids=lambda t: t.__name__)
def test_the_form_shows_every_field_or_says_why_with_the_request_bounds_and_defaults(request_type, surfaces, pages):
    surface = surfaces[request_type]
    specs = request_type.field_specs()
    shown = set(surface.widgets.values())
    assert shown | set(surface.set_by_page) | {n for n, f in specs.items() if f["internal"]} == set(specs)
    assert not shown & set(surface.set_by_page)
    widgets = pages[surface.page]
    for key, name in surface.widgets.items():
        assert key in widgets, f"{surface.page}: no widget {key!r} for {request_type.__name__}.{name}"
        kind, widget = widgets[key]
        found = specs[name]
        default = found["default"]
        if kind in ("number_input", "slider"):
            low, high = found["low"], found["high"]
            if key in CHECKED_BY_PAGE:
                assert (widget.min, widget.max) == (None, None), key
                assert widget.help.startswith(f"{low} to {high if key not in NARROWER else ''}"), key
            elif key in NARROWER:
                assert low == widget.min and widget.max <= high, key
            else:
                assert (widget.min, widget.max) == (low, high), key
            assert widget.value == default, key
        elif kind in ("radio", "selectbox") and found["choices"]:
            assert len(widget.options) == len(found["choices"]) + (key in UNSET_OPTION), key
            if key not in UNSET_OPTION:
                assert widget.value == default, key
        elif kind == "checkbox" and found["kind"] is bool:
            assert widget.value == default, key
        elif kind == "checkbox":  # a choice of two as a switch: fc_paired <-> noise
            assert widget.value == (default == found["choices"][0]), key
        elif kind == "text_input":
            assert widget.proto.max_chars == found["max_length"], key
            assert widget.value == (default or ""), key
