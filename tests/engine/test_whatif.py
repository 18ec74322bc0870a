"""What-if scenarios on a small real city: a trained tiny model, real CLIP embeddings, real SQLite."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, inspect, select

from db import open_database
from db.models import Cell, ForecastRun, Tile
from db.models import Scenario as ScenarioRow
from db.queries import store_dataset
from db.schema import upgrade
from db.session import _configure_sqlite
from engine.data.city import CityConfig, generate_city
from engine.env.clip import ClipSettings, combine_env
from engine.env.describe import CityStats, TemplateDescriber
from engine.env.pipeline import build_environment
from engine.errors import InputError
from engine.forecast import ForecastResult
from engine.model.config import resolve_config
from engine.requests import WhatIfRequest
from engine.train import train
from engine.whatif import (
    CellEdit,
    Scenario,
    list_scenarios,
    load_scenario,
    load_whatif_context,
    rename_scenario,
    run_whatif,
    scenario_env,
    validate_scenario,
)

USER = "user:U0002"
START = 300


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """A 16-user, 24-cell city with environment embeddings and a tiny trained model, and its what-if
    context (loaded once, as the app keeps it)."""
    import os

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("LSDM_HOME")
    os.environ["LSDM_HOME"] = str(home)
    database = open_database(str(home / "lsdm.sqlite"))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=16, cells=24, seed=2)))
    build_environment(database, settings=ClipSettings(epochs=1))
    name, config = resolve_config("tiny")
    train(database, name, config)
    yield database, load_whatif_context(database)
    if old is None:
        os.environ.pop("LSDM_HOME", None)
    else:
        os.environ["LSDM_HOME"] = old


def _counts(database) -> tuple[int, int]:
    with database.session() as session:
        return (
            session.scalar(select(func.count()).select_from(ForecastRun)),
            session.scalar(select(func.count()).select_from(ScenarioRow)),
        )


def _land_use(database) -> dict[str, str]:
    with database.session() as session:
        return dict(session.execute(select(Cell.key, Cell.land_use)).all())


def _other_land_use_cell(database, context) -> str:
    """A cell whose land use differs from the user's habitual cell at the start hour."""
    series = context.series
    row = series.entity_keys.index(USER.split(":")[1])
    home = series.cell_keys[series.habitual_cell(row, START, before=START)]
    uses = _land_use(database)
    return next(key for key in series.cell_keys if uses[key] != uses[home])


def _run(database, context, scenario, name=None, **options):
    request = WhatIfRequest.from_params(
        {
            "entity": USER,
            "start": START,
            "horizon": 4,
            "samples": 6,
            "seed": 3,
            "scenario": scenario.to_dict(),
            "name": name,
        }
    )
    return run_whatif(database, request, context=context, **options)


def test_an_empty_scenario_reproduces_the_baseline_path_for_path(city):
    database, context = city
    payload = _run(database, context, Scenario())
    with database.session() as session:
        runs = [session.get(ForecastRun, payload[k]) for k in ("baseline_run_id", "scenario_run_id")]
        base, scen = (ForecastResult.arrays_from_npz(run.result)["paths"] for run in runs)
    assert base.shape == (1, 6, 4, 10) and np.array_equal(base, scen)
    assert np.all(np.asarray(payload["difference"]["median"]) == 0)
    assert np.asarray(payload["baseline"]["median"]).sum() > 0
    paired = payload["difference"]["paired"]
    assert paired["total"] == {"mean": 0.0, "q05": 0.0, "q95": 0.0} and paired["within_noise"]


def test_the_paired_difference_is_path_by_path_with_a_90_percent_interval():
    from engine.whatif import paired_difference

    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1e6, size=(40, 3, 2))  # (S, N, K) bytes
    shifted = paired_difference(base, base + 1e5)  # every path up by 0.1 MB per hour and service
    assert shifted["total"]["mean"] == pytest.approx(6e5) and shifted["total"]["q05"] == pytest.approx(6e5)
    assert not shifted["within_noise"] and shifted["paths"] == 40
    assert shifted["services"]["mean"] == pytest.approx([3e5, 3e5]) and len(shifted["hours"]["q95"]) == 3
    noisy = paired_difference(base, rng.permutation(base))  # unpaired paths: the spread straddles 0
    assert noisy["within_noise"] and noisy["total"]["q05"] < 0 < noisy["total"]["q95"]


def test_the_environment_of_an_empty_scenario_is_the_stored_one_bit_for_bit(city):
    _, context = city
    env = scenario_env(context, validate_scenario(Scenario(), context)).env
    assert env.dtype == np.float32 and np.array_equal(env, context.series.env)
    # Recombining every cell with the encoder's own a/b gives the stored z_env too (Eq. 9).
    recombined = combine_env(context.image_z, context.text_z, context.has_image, context.a, context.b)
    assert np.array_equal(recombined, context.series.env)


def test_moving_the_user_to_a_cell_of_another_land_use_changes_the_forecast(city):
    database, context = city
    target = _other_land_use_cell(database, context)
    payload = _run(database, context, Scenario(location=f"cell:{target}"), store=False)
    assert [s["scenario_cell"] for s in payload["steps"]] == [target] * 4
    assert all(s["baseline_cell"] != target for s in payload["steps"][:1])
    assert np.abs(np.asarray(payload["difference"]["median"])).max() > 0
    assert payload["name"].endswith(f"moved to {target}") and payload["steps"][0]["label"] == "Sat 12:00"


def test_the_same_seed_reproduces_a_scenario_and_another_seed_does_not(city):
    database, context = city
    scenario = Scenario(location=f"cell:{_other_land_use_cell(database, context)}", guidance=2.0)
    first = _run(database, context, scenario, store=False)
    again = _run(database, context, scenario, store=False)
    assert first["scenario"] == again["scenario"] and first["baseline"] == again["baseline"]
    request = WhatIfRequest.from_params(
        {"entity": USER, "start": START, "horizon": 4, "samples": 6, "seed": 4, "scenario": scenario.to_dict()}
    )
    other = run_whatif(database, request, context=context, store=False)
    assert other["scenario"]["median"] != first["scenario"]["median"]


def test_edited_poi_counts_are_described_again_and_change_only_that_cell(city):
    _, context = city
    key = context.series.cell_keys[5]
    counts = [0] * len(context.categories)
    counts[context.categories.index("Factory")] = 30
    changed = scenario_env(context, validate_scenario(Scenario(cell_edits={key: CellEdit(poi_counts=counts)}), context))
    stats = CityStats.from_counts(context.poi, context.categories)
    assert changed.descriptions == {key: TemplateDescriber().text(counts, stats)}
    assert "industrial" in changed.descriptions[key]
    others = np.arange(len(context.series.cell_keys)) != 5
    assert np.array_equal(changed.env[others], context.series.env[others])
    assert not np.allclose(changed.env[5], context.series.env[5])
    # The image half of Eq. 9 is untouched: env - a * image is the new text half.
    text_half = (changed.env[5] - context.a * context.image_z[5]) / context.b
    assert np.linalg.norm(text_half) == pytest.approx(1.0, abs=1e-4)


def test_an_explicit_description_is_encoded_as_written(city):
    _, context = city
    key = context.series.cell_keys[7]
    same = scenario_env(
        context, validate_scenario(Scenario(cell_edits={key: CellEdit(description=context.descriptions[7])}), context)
    )
    # Encoding the stored text again gives the stored embedding (up to float noise).
    assert np.allclose(same.env[7], context.series.env[7], atol=1e-5)
    park = scenario_env(
        context,
        validate_scenario(
            Scenario(cell_edits={key: CellEdit(description="a quiet park with lawns, trees and a pond")}), context
        ),
    )
    assert park.descriptions[key] == "a quiet park with lawns, trees and a pond"
    assert not np.allclose(park.env[7], context.series.env[7], atol=1e-3)


def test_a_tile_from_another_cell_or_the_same_tile_uploaded_gives_that_tiles_embedding(city):
    database, context = city
    keys = context.series.cell_keys
    taken = scenario_env(
        context, validate_scenario(Scenario(cell_edits={keys[1]: CellEdit(tile_from=keys[9])}), context)
    )
    expected = context.a * context.image_z[9] + context.b * context.text_z[1]
    assert np.allclose(taken.env[1], expected, atol=1e-6)
    with database.session() as session:
        png = session.scalar(select(Tile.image).join(Cell).where(Cell.key == keys[9]))
    uploaded = scenario_env(context, validate_scenario(Scenario(cell_edits={keys[1]: CellEdit(tile_png=png)}), context))
    assert np.allclose(uploaded.env[1], taken.env[1], atol=1e-5)


def test_other_eq9_weights_recombine_every_cell(city):
    _, context = city
    image_only = scenario_env(context, validate_scenario(Scenario(a=1.0, b=0.0), context)).env
    has = context.has_image
    assert has.any() and np.array_equal(image_only[has], context.image_z[has])
    assert not np.array_equal(image_only, context.series.env)


def test_a_run_stores_two_runs_and_a_scenario_and_reloads_without_forecasting(city):
    database, context = city
    target = _other_land_use_cell(database, context)
    before = _counts(database)
    key = context.series.cell_keys[3]
    scenario = Scenario(
        location=f"cell:{target}", cell_edits={key: CellEdit(description="a busy rail station")}, guidance=1.5
    )
    payload = _run(database, context, scenario, name="station test")
    assert _counts(database) == (before[0] + 2, before[1] + 1)
    with database.session() as session:
        row = session.get(ScenarioRow, payload["scenario_id"])
        base = session.get(ForecastRun, row.baseline_run_id)
        scen = session.get(ForecastRun, row.scenario_run_id)
        assert row.name == "station test" and row.params["scenario"]["location"] == f"cell:{target}"
        assert base.params["role"] == "baseline" and base.params["location"] == "habitual"
        assert base.params["guidance"] == 1.0 and base.params["seed"] == scen.params["seed"] == 3
        assert scen.params["role"] == "scenario" and scen.params["guidance"] == 1.5
        assert scen.params["scenario"]["cell_edits"] == {key: {"description": "a busy rail station"}}
        assert scen.params["scenario"]["a"] == context.a
    reloaded = load_scenario(database, payload["scenario_id"])
    for part in ("baseline", "scenario", "difference", "steps", "params", "services"):
        assert reloaded[part] == payload[part], part
    assert _counts(database) == (before[0] + 2, before[1] + 1)
    rebuilt = Scenario.from_dict(reloaded["params"]["scenario"])
    assert rebuilt.location == scenario.location and rebuilt.cell_edits[key].description == "a busy rail station"
    rename_scenario(database, payload["scenario_id"], "renamed")
    listed = list_scenarios(database, context.forecast.dataset_id)
    assert listed[0]["id"] == payload["scenario_id"] and listed[0]["name"] == "renamed"
    assert listed[0]["entity"] == USER and listed[0]["location"] == f"cell:{target}"


def test_a_scenario_with_an_uploaded_tile_round_trips_through_json(city):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="PNG")
    edit = CellEdit(poi_counts=[1] * 17, tile_png=buffer.getvalue())
    scenario = Scenario(location="stay", cell_edits={"C0001": edit}, a=0.7, b=0.3, guidance=2.0)
    data = scenario.to_dict()
    assert isinstance(data["cell_edits"]["C0001"]["tile_png"], str)
    assert Scenario.from_dict(data) == scenario


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "scenario,field",
    [
        (Scenario(location="cell:C9999"), "location"),
        (Scenario(location="nowhere"), "location"),
        (Scenario(cell_edits={"C9999": CellEdit(description="x")}), "cell_edits.C9999"),
        (Scenario(cell_edits={"C0001": CellEdit(poi_counts=[1, 2, 3])}), "cell_edits.C0001.poi_counts"),
        (Scenario(cell_edits={"C0001": CellEdit(poi_counts=[-1] + [0] * 16)}), "cell_edits.C0001.poi_counts"),
        (Scenario(cell_edits={"C0001": CellEdit(poi_counts=[0.5] + [0] * 16)}), "cell_edits.C0001.poi_counts"),
        (Scenario(cell_edits={"C0001": CellEdit(description="   ")}), "cell_edits.C0001.description"),
        (Scenario(cell_edits={"C0001": CellEdit(description="x" * 601)}), "cell_edits.C0001.description"),
        (Scenario(cell_edits={"C0001": CellEdit(tile_from="C9999")}), "cell_edits.C0001.tile_from"),
        (Scenario(cell_edits={"C0001": CellEdit(tile_from="C0002", tile_png=_png())}), "cell_edits.C0001.tile_from"),
        (Scenario(cell_edits={"C0001": CellEdit(tile_png=b"not an image")}), "cell_edits.C0001.tile_png"),
        (Scenario(a=-0.1), "a"),
        (Scenario(a=0.0, b=0.0), "a"),
        (Scenario(b=float("nan")), "b"),
        (Scenario(guidance=-1.0), "guidance"),
    ],
)
def test_invalid_scenarios_name_the_field_and_write_nothing(city, scenario, field):
    database, context = city
    before = _counts(database)
    with pytest.raises(InputError) as error:
        _run(database, context, scenario)
    assert error.value.field == field
    assert _counts(database) == before


def test_a_forecast_error_after_validation_writes_nothing(city):
    database, context = city
    before = _counts(database)
    with pytest.raises(InputError, match="start"):
        run_whatif(
            database,
            WhatIfRequest.from_params({"entity": USER, "start": 3, "horizon": 2, "samples": 2}),
            context=context,
        )
    with pytest.raises(InputError, match="no user"):
        run_whatif(database, WhatIfRequest(entity="nobody", start=START), context=context)
    assert _counts(database) == before


def test_upgrading_a_version_3_database_adds_the_scenarios_table(tmp_path: Path):
    old = create_engine(f"sqlite:///{tmp_path / 'v3.sqlite'}")
    _configure_sqlite(old)
    assert upgrade(old, target=3) == (0, 3)
    assert "scenarios" not in inspect(old).get_table_names()
    assert upgrade(old, target=4) == (3, 4)
    columns = {c["name"] for c in inspect(old).get_columns("scenarios")}
    assert columns == {"id", "name", "dataset_id", "params", "baseline_run_id", "scenario_run_id", "created_at"}
