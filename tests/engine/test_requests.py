"""The request types (engine/requests.py): one set of fields, defaults, bounds and checks per operation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.requests import (
    REQUEST_TYPES,
    CityRequest,
    EnvRequest,
    ForecastRequest,
    IngestTableRequest,
    TrainRequest,
    WhatIfRequest,
    parse_entities_text,
    parse_location_text,
    parse_sampler_text,
)

REQUIRED = {  # the least each request type needs to be valid
    "CityRequest": {},
    "AggregateRequest": {},
    "IngestTableRequest": {"records": __file__, "cells": __file__},
    "IngestTsinghuaRequest": {"trace": __file__, "app2category": __file__, "categories": __file__, "poi": __file__},
    "IngestMatrixRequest": {"values": [__file__], "start": "2024-01-01T00:00"},
    "EnvRequest": {},
    "TrainRequest": {},
    "EvaluateRequest": {},
    "ForecastRequest": {"entities": ["U0001"], "start": 30},
    "WhatIfRequest": {"entity": "U0001", "start": 30},
    "LoadRequest": {"scope": "cell:C0001", "start": 30},
    "LoadWhatIfRequest": {"cell": "C0001", "start": 30},
}


@pytest.mark.parametrize("request_type", REQUEST_TYPES, ids=lambda t: t.__name__)
def test_every_request_is_frozen_and_round_trips_through_the_job_table(request_type):
    request = request_type.from_params(REQUIRED[request_type.__name__])
    assert request.validate() == {}
    params = json.loads(json.dumps(request.to_params()))  # what the jobs table stores
    assert request_type.from_params(params) == request
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 3  # type: ignore[misc]
    assert request_type.KIND and request_type.TITLE


@pytest.mark.parametrize("request_type", REQUEST_TYPES, ids=lambda t: t.__name__)
def test_every_bounded_field_refuses_values_past_its_bounds_naming_the_field(request_type):
    base = REQUIRED[request_type.__name__]
    bounded = {
        name: found
        for name, found in request_type.field_specs().items()
        if found["kind"] in (int, float) and (found["low"] is not None or found["high"] is not None)
    }
    assert bounded or request_type.__name__.startswith(("Ingest", "Aggregate"))
    for name, found in bounded.items():
        for outside in [
            v
            for v in (
                (found["low"] - 1) if found["low"] is not None else None,
                (found["high"] + 1) if found["high"] is not None else None,
            )
            if v is not None
        ]:
            errors = request_type.from_params({**base, name: found["kind"](outside)}).validate()
            assert list(errors) == [name], (name, outside, errors)
            assert "expected a value" in errors[name]


def test_validate_returns_every_problem_in_the_domains_field_names():
    errors = ForecastRequest(
        entities=(),
        start=-1,
        horizon=1000,
        samples=0,
        guidance=float("nan"),
        sampler="euler",
        noise="loud",
        location="moon",
    ).validate()
    assert set(errors) == {"entities", "start", "horizon", "samples", "guidance", "sampler", "noise", "location"}
    assert errors["entities"] == "expected at least one entity (user:ID or cell:ID), or all"
    assert errors["guidance"] == "expected a finite number, got nan"
    assert "habitual, sampled, stay, observed, cells" in errors["location"]


def test_checked_raises_one_error_naming_the_first_field_and_listing_the_others():
    with pytest.raises(InputError) as error:
        CityRequest(users=0, days=100).checked()
    assert error.value.field == "users"
    assert "days: expected a value from 1 to 60" in str(error.value)
    assert error.value.also == {"days": "expected a value from 1 to 60, got 100"}
    assert CityRequest().checked() == CityRequest()


def test_wrong_types_are_problems_not_crashes():
    errors = TrainRequest.from_params({"epochs": "ten", "seed": 1.5, "activate": "yes", "max_minutes": True}).validate()
    assert errors == {
        "epochs": "expected a whole number, got 'ten'",
        "seed": "expected a whole number, got 1.5",
        "activate": "expected true or false, got 'yes'",
        "max_minutes": "expected a number, got True",
    }
    assert TrainRequest.from_params({"epochs": 12.0}).epochs == 12  # a JSON writer that knows no integers


def test_unknown_parameters_are_refused_by_name():
    with pytest.raises(InputError) as error:
        CityRequest.from_params({"users": 10, "colour": "red"})
    assert error.value.field == "colour"


def test_empty_text_means_the_default_and_missing_required_fields_are_named():
    assert CityRequest.from_params({"name": ""}).name is None
    assert EnvRequest.from_params({"describer": ""}).describer == "template"
    assert IngestTableRequest.from_params({"cells": __file__}).validate() == {"records": "is required"}
    assert "no such file" in IngestTableRequest(records="/no/such.csv", cells=__file__).validate()["records"]


def test_a_source_is_a_file_with_an_optional_array_key_and_each_one_must_exist():
    from engine.requests import IngestMatrixRequest, split_source

    assert split_source(f"{__file__}:bs_record") == (Path(__file__), "bs_record")
    assert split_source(__file__) == (Path(__file__), None)
    request = IngestMatrixRequest.from_params({"values": [__file__, f"{__file__}:x"], "start": "2024-01-01T00:00"})
    assert request.values == (__file__, f"{__file__}:x") and request.validate() == {}
    errors = IngestMatrixRequest(values=(__file__, "/no/such.npz:x"), start="2024-01-01T00:00").validate()
    assert errors == {"values": "no such file: /no/such.npz"}
    assert IngestMatrixRequest(values=(), start="x").validate()["values"] == "is required"
    moved = IngestMatrixRequest(values=("tests/../tests/conftest.py:k",), start="x").with_absolute_files()
    assert moved.values == (f"{Path('tests/conftest.py').resolve()}:k",)


def test_old_job_rows_and_stored_runs_read_as_todays_requests():
    old = {
        "entity": "user:U0001,user:U0002",
        "start": 300,
        "horizon": 6,
        "samples": 8,
        "sampler": "ddim:5",
        "location": "cell:C0001,C0002",
        "guidance": 1.5,
        "seed": 2,
        "noise": "independent",
        "model_id": 3,
        "model_sha256": "abc",
        "dataset": "synthetic-seed0",
    }
    request = ForecastRequest.from_params(old)
    assert request == ForecastRequest(
        entities=("U0001", "U0002"),
        start=300,
        horizon=6,
        samples=8,
        sampler="ddim",
        sampler_steps=5,
        location="cells",
        cells=("C0001", "C0002"),
        guidance=1.5,
        seed=2,
        noise="independent",
        model_id=3,
        dataset="synthetic-seed0",
    )
    assert request.sampler_label == "ddim:5" and not request.antithetic
    whatif = WhatIfRequest.from_params({"entity": "cell:C9", "start": 40, "sampler": "ddpm", "scenario": {}})
    assert (whatif.entity_kind, whatif.entity, whatif.sampler) == ("cell", "C9", "ddpm")


def test_the_forecast_location_and_its_cells_go_together():
    assert ForecastRequest(entities=("A",), start=30, location="cells").validate() == {
        "cells": "location 'cells' needs at least one cell"
    }
    assert "only with location 'cells'" in ForecastRequest(entities=("A",), start=30, cells=("C1",)).validate()["cells"]


def test_text_forms_parse_or_name_what_is_wrong():
    assert parse_entities_text("user:A, user:B") == ("user", ("A", "B"))
    assert parse_sampler_text("ddim") == ("ddim", 10) and parse_sampler_text("ddpm")[0] == "ddpm"
    assert parse_location_text("cell:C1,C2") == ("cells", ("C1", "C2"))
    for parse, text, field in (
        (parse_entities_text, "person:A", "entities"),
        (parse_entities_text, "user:A,cell:B", "entities"),
        (parse_sampler_text, "ddim:x", "sampler"),
        (parse_location_text, "cell:", "cells"),
        (parse_location_text, "moon", "location"),
    ):
        with pytest.raises(InputError) as error:
            parse(text)
        assert error.value.field == field, text


def test_env_request_refuses_a_registered_encoder_with_training():
    assert "cannot be combined" in EnvRequest(encoder="clip-1", train_encoder=True).validate()["encoder"]
    assert EnvRequest(describer="openai").describer_options() == {
        "base_url": "http://127.0.0.1:11434/v1",
        "model": "llama3.1",
    }


def test_an_ingest_request_refuses_an_unknown_time_zone_before_any_file_is_read(tmp_path):
    records, cells = tmp_path / "r.csv", tmp_path / "c.csv"
    records.write_text("x\n")
    cells.write_text("x\n")
    request = IngestTableRequest(records=str(records), cells=str(cells), timezone="Mars/Olympus_Mons")
    assert request.validate() == {
        "timezone": "unknown time zone 'Mars/Olympus_Mons'; expected an IANA name such as Asia/Shanghai, "
        "Europe/Berlin or UTC"
    }
    assert dataclasses.replace(request, timezone="Asia/Shanghai").validate() == {}


def test_a_load_scope_is_checked_when_the_request_is():
    from engine.requests import LoadRequest, parse_scope_text

    assert parse_scope_text("cell: A , B,A") == ("cells", ("A", "B"), ())
    assert parse_scope_text("area:all") == ("all", (), ())
    assert parse_scope_text("box:31,121,31.5,121.5") == ("box", (), (31.0, 121.0, 31.5, 121.5))
    for bad in ("cells:A", "box:31,121,30,122", "box:a,b,c,d", "box:1,2,3", "area:north", ""):
        errors = LoadRequest.from_params({"scope": bad, "start": 30}).validate()
        assert list(errors) == ["scope"], (bad, errors)


def test_a_cell_scenarios_window_lies_within_its_horizon():
    from engine.requests import LoadWhatIfRequest

    base = {"cell": "C0001", "start": 30, "horizon": 6}
    assert LoadWhatIfRequest.from_params({**base, "at": 5, "duration": 1}).validate() == {}
    assert list(LoadWhatIfRequest.from_params({**base, "at": 6}).validate()) == ["at"]
    errors = LoadWhatIfRequest.from_params({**base, "at": 4, "duration": 3}).validate()
    assert list(errors) == ["duration"] and "at most 2" in errors["duration"]
