"""Issue 21, part 3: `lsdm train --nproc N` (torchrun, DistributedDataParallel with gloo on the CPU) follows the
loss curve of one process with the same global batch, and registers one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import open_database
from db.models import ModelRecord
from tests.conftest import TINY_MODEL, stored_city

REPO = Path(__file__).resolve().parents[2]
CONFIG = {**TINY_MODEL, "epochs": 3, "windows_per_epoch": 72, "patience": 100}  # 4 batches and one of 8 windows


def _train(db: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--db", str(db), "--config", str(config), "--json", *extra],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _why(run: subprocess.CompletedProcess) -> str:
    """A failed run's stderr: its start (a process's own last words, e.g. a C++ "terminate called ...") and
    its end (torchrun's summary), which alone names no cause."""
    return run.stderr if len(run.stderr) < 4000 else run.stderr[:2000] + "\n[...]\n" + run.stderr[-2000:]


@pytest.fixture
def small_city(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(CONFIG))
    return stored_city(tmp_path / "city.sqlite", users=24, cells=20, seed=4), config


def test_two_processes_follow_one_process_loss_curve_and_register_one_model(small_city):
    db, config = small_city
    alone = _train(db, config)
    assert alone.returncode == 0, _why(alone)
    shared = _train(db, config, "--nproc", "2")
    assert shared.returncode == 0, _why(shared)
    one, two = json.loads(alone.stdout), json.loads(shared.stdout)  # rank 0 alone prints
    assert one["processes"] == 1 and two["processes"] == 2
    assert [e["epoch"] for e in one["history"]] == [e["epoch"] for e in two["history"]] == [1, 2, 3]
    for a, b in zip(one["history"], two["history"], strict=True):
        # The same windows and the same noise per step; only the loss's cosine term, averaged per process, and
        # the order of floating-point sums differ.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.03)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.01)
    database = open_database(str(db))
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(ModelRecord)) == 2
        active = session.scalars(select(ModelRecord).where(ModelRecord.is_active)).one()
        assert active.id == two["model_id"] and active.metrics["processes"] == 2


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_process_count_is_refused_before_anything_starts(small_city, value):
    db, config = small_city
    refused = _train(db, config, "--nproc", value)
    assert (
        refused.returncode == 2
        and "--nproc" in refused.stderr
        and "expected a whole number from 1 to 64" in (refused.stderr)
    )
    with open_database(str(db)).session() as session:
        assert session.scalar(select(func.count()).select_from(ModelRecord)) == 0
