"""`lsdm env build` / `env info` end to end on small real SQLite data sets."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import select

from cli.main import main
from db import open_database
from db.models import Description, ModelRecord
from db.queries import DatasetContent, get_dataset, load_env_embeddings, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.env.clip import ClipSettings
from engine.env.pipeline import build_environment, environment_info, reload_active_encoder


@pytest.fixture
def small_city_db(db_path):
    database = open_database(str(db_path))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=5, cells=48, seed=4)))
    return database


def test_env_build_stores_tiles_descriptions_an_encoder_and_embeddings(small_city_db):
    summary = build_environment(small_city_db, settings=ClipSettings(epochs=2, batch_size=16, mode="both"))
    assert summary["env_mode"] == "both" and summary["env_mode_why"] is None  # asked for, whatever the verdict
    assert summary["cells"] == summary["tiles"] == summary["descriptions"] == summary["embeddings"] == 48
    assert 0.0 <= summary["retrieval"]["top1"] <= summary["retrieval"]["top5"] <= 1.0
    assert summary["retrieval"]["pairs"] == 10  # 20 % of 48 cells held out
    assert set(summary["land_use_agreement"]) == {"env", "image", "text", "chance"}
    with small_city_db.session() as session:
        dataset = get_dataset(session)
        _cell_ids, z = load_env_embeddings(session, dataset)
        assert z.shape == (48, 128) and z.dtype == np.float32
        # The stored z_env is Eq. 9 of the stored image and text embeddings (a = b = 0.5).
        _, z_image = load_env_embeddings(session, dataset, kind="image")
        _, z_text = load_env_embeddings(session, dataset, kind="text")
        assert np.allclose(z, 0.5 * z_image + 0.5 * z_text, atol=1e-6)
        record = session.scalar(select(ModelRecord).where(ModelRecord.kind == "clip"))
        assert record.is_active and record.metrics["train_pairs"] == 38
        assert reload_active_encoder(session, dataset).encoder_id == record.name


def test_by_default_an_encoder_at_chance_leaves_z_env_to_the_text_embedding_and_says_so(small_city_db, capsys):
    # Untrained (0 epochs), the images retrieve their descriptions by chance: 10 held-out pairs, top-5 under 1.
    summary = build_environment(small_city_db, settings=ClipSettings(epochs=0))
    assert summary["retrieval_verdict"]["above_chance"] is False
    assert summary["env_mode"] == "text" and "not clearly above chance" in summary["env_mode_why"]
    with small_city_db.session() as session:
        dataset = get_dataset(session)
        _, z = load_env_embeddings(session, dataset)
        _, z_text = load_env_embeddings(session, dataset, kind="text")
        _, z_image = load_env_embeddings(session, dataset, kind="image")
        assert np.array_equal(z, z_text) and not np.allclose(z_image, z_text)  # the images kept, not used
        record = session.scalar(select(ModelRecord).where(ModelRecord.kind == "clip", ModelRecord.is_active))
        assert record.config["settings"]["mode"] == "text"  # what the what-ifs recompute z_env with
        assert record.metrics["env_mode"] == {"asked": "auto", "used": "text", "why": summary["env_mode_why"]}
    assert main(["env", "info", "--db", small_city_db.url]) == 0
    assert "z_env (Eq. 9) from: the text (POI) embedding alone (auto: the images'" in capsys.readouterr().out


def test_the_descriptor_tower_is_built_saved_and_used_from_the_command_line(small_city_db, capsys):
    db = small_city_db.url
    assert main(["env", "build", "--db", db, "--clip-arch", "lsdm-clip-d", "--epochs", "2", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["embeddings"] == 48 and built["retrieval"]["pairs"] == 10
    with small_city_db.session() as session:
        dataset = get_dataset(session)
        record = session.scalar(select(ModelRecord).where(ModelRecord.kind == "clip", ModelRecord.is_active))
        assert record.config["encoder"]["model_cfg"]["image_tower"] == "descriptor"
        encoder = reload_active_encoder(session, dataset)  # from its files: the head and the standardisation
        _, z_image = load_env_embeddings(session, dataset, kind="image")
    assert type(encoder.model.visual).__name__ == "DescriptorTower" and z_image.shape == (48, 128)
    assert float(encoder.model.visual.feature_std.min()) > 0


def test_a_second_build_keeps_descriptions_and_activates_the_new_encoder(small_city_db):
    first = build_environment(small_city_db, settings=ClipSettings(epochs=1, batch_size=16, seed=1))
    with small_city_db.session() as session:
        before = {d.cell_id: d.created_at for d in session.scalars(select(Description))}
    second = build_environment(small_city_db, settings=ClipSettings(epochs=1, batch_size=16, seed=2))
    with small_city_db.session() as session:
        after = {d.cell_id: d.created_at for d in session.scalars(select(Description))}
        active = session.scalars(select(ModelRecord.name).where(ModelRecord.is_active.is_(True))).all()
    assert before == after
    assert first["encoder"] != second["encoder"] and active == [second["encoder"]]


def test_cells_without_imagery_are_embedded_from_their_text(db_path):
    database = open_database(str(db_path))
    content = DatasetContent(
        name="no-imagery",
        kind="table",
        entity_kind="user",
        services=["A"],
        poi_categories=["Shop", "Home"],
        time_origin=datetime(2016, 4, 18),
        timezone="UTC",
        hours=24,
        cell_keys=[f"c{i}" for i in range(6)],
        cell_poi=np.array([[9, 0], [0, 9], [5, 5], [1, 0], [0, 0], [3, 7]]),
        entity_keys=["u"],
        traffic_entity=np.array([0]),
        traffic_hour=np.array([0]),
        traffic_service=np.array([0]),
        traffic_bytes=np.array([10]),
        location_entity=np.array([0]),
        location_hour=np.array([0]),
        location_cell=np.array([0]),
    )
    with database.write_session() as session, session.begin():
        store_dataset(session, content)
    summary = build_environment(database, settings=ClipSettings(epochs=1))
    assert summary["tiles"] == 0 and summary["embeddings"] == 6 and summary["retrieval"]["top1"] is None
    with database.session() as session:
        dataset = get_dataset(session)
        _, z_env = load_env_embeddings(session, dataset)
        _, z_text = load_env_embeddings(session, dataset, kind="text")
        assert np.allclose(z_env, z_text, atol=1e-6)  # a = b = 0.5, the image replaced by the text


def test_cli_env_build_and_info_print_the_documented_json(small_city_db, capsys):
    db = small_city_db.url
    assert main(["env", "build", "--db", db, "--epochs", "1", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["seconds"] > 0 and "timings" in built
    with small_city_db.session() as session:  # 48 tiles: --clip-arch auto trains the descriptor tower
        record = session.scalar(select(ModelRecord).where(ModelRecord.kind == "clip", ModelRecord.is_active))
        assert record.config["settings"]["arch"] == "lsdm-clip-d"
    assert main(["env", "info", "--db", db, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key, kind in [("cells", int), ("tiles", int), ("descriptions", int), ("embeddings", int)]:
        assert isinstance(info[key], kind) and info[key] == 48
    assert isinstance(info["retrieval"]["top1"], float) and isinstance(info["retrieval"]["top5"], float)
    verdict, pairs = info["retrieval_verdict"], info["retrieval"]["pairs"]
    assert verdict["chance_top5"] == round(5 / pairs, 4) and isinstance(verdict["above_chance"], bool)
    assert verdict["above_chance"] is (info["retrieval"]["top5"] >= 10 / pairs)  # one epoch: at chance or not
    assert main(["env", "info", "--db", db]) == 0
    assert f"the encoder is {verdict['verdict']}" in capsys.readouterr().out


def test_unreachable_llm_endpoint_falls_back_to_the_template_and_says_so(small_city_db, capsys):
    db = small_city_db.url
    status = main(
        [
            "env",
            "build",
            "--db",
            db,
            "--epochs",
            "0",
            "--describer",
            "openai",
            "--llm-url",
            "http://127.0.0.1:9/v1",
            "--llm-model",
            "none",
            "--json",
        ]
    )
    assert status == 0
    info = json.loads(capsys.readouterr().out)
    assert info["descriptions"] == 48 and info["description_fallbacks"] == 48
    with small_city_db.session() as session:
        row = session.scalars(select(Description)).first()
        assert row.generator == "template-fallback" and row.error and row.model == "none"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--tiles", "ftp:somewhere"], "field '--tiles'"),
        (["--frozen"], "--frozen needs --clip-init"),
        (["--clip-init", "/no/such/file.pt"], "no such checkpoint file"),
    ],
)
def test_bad_env_options_exit_2_with_the_option_named(small_city_db, capsys, argv, message):
    assert main(["env", "build", "--db", small_city_db.url, "--epochs", "0", *argv]) == 2
    assert message in capsys.readouterr().err
    assert environment_info(small_city_db)["embeddings"] == 0


def test_a_clip_checkpoint_that_cannot_be_loaded_is_refused_before_anything_is_written(small_city_db, capsys):
    """Issue 20: `--clip-init /etc/passwd` failed with a clear message but left tiles and descriptions behind."""
    before = environment_info(small_city_db)
    assert main(["env", "build", "--db", small_city_db.url, "--epochs", "0", "--clip-init", "/etc/passwd"]) == 2
    assert "cannot load as open_clip architecture" in capsys.readouterr().err
    assert environment_info(small_city_db) == before


def test_real_baidu_tiles_flow_through_the_folder_source_into_clip_embeddings(db_path, shared_data):
    """The six real Shanghai tiles (BD09 names) reach the database and the encoder; a seventh cell
    outside their area has no imagery and is embedded from its text."""
    from engine.env.tiles.geo import baidu_tile_center_wgs84

    centres = [baidu_tile_center_wgs84(13165, y, 16) for y in range(3580, 3586)] + [(31.2304, 121.4737)]
    database = open_database(str(db_path))
    content = DatasetContent(
        name="real-tiles",
        kind="table",
        entity_kind="user",
        services=["A"],
        poi_categories=["Factory", "Home"],
        time_origin=datetime(2016, 4, 18),
        timezone="Asia/Shanghai",
        hours=24,
        cell_keys=[f"b{i}" for i in range(7)],
        cell_poi=np.array([[5, 1], [1, 5], [3, 3], [0, 2], [2, 0], [4, 4], [1, 1]]),
        cell_lat=np.array([c[0] for c in centres]),
        cell_lon=np.array([c[1] for c in centres]),
        entity_keys=["u"],
        traffic_entity=np.array([0]),
        traffic_hour=np.array([0]),
        traffic_service=np.array([0]),
        traffic_bytes=np.array([10]),
        location_entity=np.array([0]),
        location_hour=np.array([0]),
        location_cell=np.array([0]),
    )
    with database.write_session() as session, session.begin():
        store_dataset(session, content)
    folder = shared_data / "tiles" / "shanghai_z16_bd09"
    summary = build_environment(database, tiles=f"dir:{folder}", settings=ClipSettings(epochs=1))
    assert summary["tiles"] == 6 and summary["embeddings"] == 7
    with database.session() as session:
        from db.models import Tile

        tiles = session.scalars(select(Tile)).all()
        assert {t.zoom for t in tiles} == {16} and all(t.media_type == "image/jpeg" for t in tiles)
        assert all(t.source.startswith("dir:") for t in tiles)
        _, z_image = load_env_embeddings(session, get_dataset(session), kind="image")
        assert z_image.shape == (6, 128)
