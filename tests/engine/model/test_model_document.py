"""A saved forecaster's model.json is read in one verified way: engine.model.read_model_document (the
dashboard's reader, no weights loaded) checks what Forecaster.load checks before it builds the network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.model import read_model_document
from engine.shipped import default_dir

SHIPPED = default_dir() / "lsdm"
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.json").is_file(), reason="assets/default is not present")


def test_the_shipped_model_document_reads_with_its_normaliser_and_data_fingerprint():
    document = read_model_document(SHIPPED)
    assert document["format"] == "lsdm-forecaster/1"
    assert document["normaliser"]["scale"] > 0 and document["data"]["encoder_id"]


def test_changed_weights_or_a_missing_file_are_refused_naming_the_file(tmp_path: Path):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(InputError, match="do not match the hash") as raised:
        read_model_document(folder)
    assert raised.value.file == str(weights)
    weights.unlink()
    with pytest.raises(InputError, match="missing model file"):
        read_model_document(folder)
