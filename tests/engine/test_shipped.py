"""The shipped default (assets/default): it matches the default city exactly, is used by
`lsdm env build` and `lsdm assets install` there, and is refused anywhere else."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cli.main import main as lsdm
from db import open_database
from db.models import Embedding, ForecastRun, ModelRecord
from db.queries import get_dataset
from engine.shipped import dataset_digest, default_dir, read_manifest

MANIFEST = read_manifest()
pytestmark = pytest.mark.skipif(MANIFEST is None, reason="assets/default is not present (rebuild: lsdm assets build)")


@pytest.fixture(scope="module")
def default_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("shipped")
    db = home / "city.sqlite"
    assert lsdm(["city", "build", "--db", str(db), "--json"]) == 0
    return db


def test_manifest_describes_the_files_it_ships():
    model = default_dir() / "lsdm" / "model.safetensors"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == MANIFEST["model_sha256"]
    clip_config = json.loads((default_dir() / "clip" / "config.json").read_text())
    assert clip_config["encoder_id"] == MANIFEST["encoder_id"]
    model_doc = json.loads((default_dir() / "lsdm" / "model.json").read_text())
    assert model_doc["data"]["encoder_id"] == MANIFEST["encoder_id"]


def test_the_default_city_is_the_one_the_shipped_model_was_trained_on(default_city):
    with open_database(str(default_city)).session() as session:
        assert dataset_digest(session, get_dataset(session)) == MANIFEST["dataset_digest"]


def test_env_build_on_the_default_city_uses_the_shipped_encoder(default_city, capsys):
    assert lsdm(["env", "build", "--db", str(default_city), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoder"] == MANIFEST["encoder_id"]
    assert summary["embeddings"] == 400
    assert summary["timings"]["clip_train_s"] < 10  # loaded, not trained


def test_assets_install_activates_the_shipped_model_which_forecasts_at_once(default_city, capsys):
    db_args = ["--db", str(default_city)]
    assert lsdm(["assets", "install", *db_args, "--json"]) == 0
    installed = json.loads(capsys.readouterr().out)
    assert lsdm(["assets", "install", *db_args, "--json"]) == 0  # idempotent: the same record again
    assert json.loads(capsys.readouterr().out)["model_id"] == installed["model_id"]
    with open_database(str(default_city)).session() as session:
        active = session.scalar(select(ModelRecord).where(ModelRecord.kind == "lsdm", ModelRecord.is_active.is_(True)))
        assert active.id == installed["model_id"] and active.sha256 == MANIFEST["model_sha256"]
        assert Path(active.path).parent == Path(os.environ["LSDM_HOME"]) / "models"
    assert (
        lsdm(
            [
                "forecast",
                *db_args,
                "--entity",
                "user:U0007",
                "--start",
                "320",
                "--horizon",
                "3",
                "--samples",
                "4",
                "--json",
            ]
        )
        == 0
    )
    run = json.loads(capsys.readouterr().out)
    assert run["model_id"] == installed["model_id"] and len(run["entities"][0]["steps"]) == 3


def test_install_is_refused_on_another_city_and_writes_nothing(tmp_path, capsys):
    db = tmp_path / "other.sqlite"
    assert lsdm(["city", "build", "--db", str(db), "--seed", "3", "--users", "20", "--cells", "30", "--days", "3"]) == 0
    capsys.readouterr()
    assert lsdm(["assets", "install", "--db", str(db)]) == 2
    assert "not on data set 'synthetic-seed3'" in capsys.readouterr().err
    with open_database(str(db)).session() as session:
        assert session.scalar(select(func.count()).select_from(ModelRecord)) == 0
        assert session.scalar(select(func.count()).select_from(Embedding)) == 0
        assert session.scalar(select(func.count()).select_from(ForecastRun)) == 0


def test_assets_build_keep_encoder_retrains_only_the_forecaster(tmp_path):
    """`lsdm assets build --keep-encoder` on the real default city: the shipped encoder is carried over byte for
    byte (its id and metrics too) and a new forecaster is trained on its embeddings (a small one here: one
    epoch of 512 windows; the shipped one is built without overrides)."""
    from engine.model import Forecaster
    from engine.shipped import build

    messages: list[str] = []
    out = tmp_path / "default"
    manifest = build(
        out,
        epochs=1,
        keep_encoder=True,
        progress=messages.append,
        overrides={"windows_per_epoch": 512, "batch_size": 128},
    )
    assert any("shipped CLIP encoder" in m for m in messages) and not any("training the CLIP" in m for m in messages)
    shipped_clip = default_dir() / "clip"
    for path in shipped_clip.rglob("*"):
        if path.is_file():
            copy = out / "clip" / path.relative_to(shipped_clip)
            assert copy.read_bytes() == path.read_bytes(), path.name
    assert (manifest["encoder_id"], manifest["dataset_digest"], manifest["clip_metrics"]) == (
        MANIFEST["encoder_id"],
        MANIFEST["dataset_digest"],
        MANIFEST["clip_metrics"],
    )
    assert manifest["built_with"] == "lsdm assets build --epochs 1 --keep-encoder"
    assert manifest["config_overrides"] == {"windows_per_epoch": 512, "batch_size": 128, "epochs": 1}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    forecaster = Forecaster.load(out / "lsdm")
    assert forecaster.meta["data"]["encoder_id"] == MANIFEST["encoder_id"]
    assert forecaster.config.windows_per_epoch == 512 and forecaster.config.epochs == 1
    assert hashlib.sha256((out / "lsdm" / "model.safetensors").read_bytes()).hexdigest() == manifest["model_sha256"]
    # The shipped assets themselves are untouched.
    assert read_manifest() == MANIFEST
