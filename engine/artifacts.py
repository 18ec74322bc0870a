"""Saved model folders, the one format for the CLIP encoder and the forecaster: weights as
``model.safetensors`` and a JSON document that records their SHA-256. Reading checks that both files
exist, that the JSON parses and that the weights are the ones recorded; nothing is ever unpickled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine.errors import InputError

WEIGHTS = "model.safetensors"


def save_weights(state_dict: dict, directory: Path) -> str:
    """Write ``model.safetensors`` into ``directory``; returns its SHA-256."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(weights))
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def read_document(directory: Path, document_name: str, *, hint: str, expected_sha256: str | None = None) -> dict:
    """The JSON document of a saved folder, after checking that the weights beside it are the ones it
    records (their SHA-256) and, with ``expected_sha256`` (the database's record), the ones registered: a
    folder whose weights and JSON were changed together is refused. The weights themselves are not loaded."""
    directory = Path(directory)
    document_file, weights = directory / document_name, directory / WEIGHTS
    for path in (document_file, weights):
        if not path.is_file():
            raise InputError("missing model file", file=path, hint=hint)
    try:
        document = json.loads(document_file.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON: {error.msg}", file=document_file, line=error.lineno) from None
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != document.get("sha256"):
        raise InputError(
            f"weights do not match the hash recorded in {document_name}",
            file=weights,
            hint="the file was changed or belongs to another model",
        )
    if expected_sha256 is not None and digest != expected_sha256:
        raise InputError(
            f"weights are not the ones registered in the database (SHA-256 {expected_sha256[:12]}..., "
            f"found {digest[:12]}...)",
            file=weights,
            hint="the model's files were replaced since it was trained; train or install it again",
        )
    return document


def read_verified(
    directory: Path, document_name: str, *, hint: str, expected_sha256: str | None = None
) -> tuple[dict, dict]:
    """(the JSON document, the state dict) of a saved folder, after checking the recorded hash (and the
    database's, ``expected_sha256``, where given)."""
    from safetensors.torch import load_file

    document = read_document(directory, document_name, hint=hint, expected_sha256=expected_sha256)
    return document, load_file(str(Path(directory) / WEIGHTS))
