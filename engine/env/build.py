"""`lsdm env build` and the ``env.build`` job: which encoder embeds the cells, then the build itself
(engine/env/pipeline.py).

The encoder, in this order: a registered one named by the request (e.g. another city's, to evaluate
its model here); a new one when the request asks to train or gives a CLIP checkpoint; else the shipped
encoder on the embedded default city (whose embeddings the shipped forecaster was trained on), and a
new one anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from db import Database
from db.queries import get_dataset
from engine.env.clip import ClipSettings, resolve_arch
from engine.env.pipeline import build_environment, registered_encoder_dir
from engine.executors import Executor
from engine.requests import EnvRequest
from engine.shipped import shipped_encoder_dir


def build_environment_for(
    database: Database, request: EnvRequest, progress: Callable[[str], None] | None = None
) -> dict:
    """Tiles, descriptions and embeddings of the request's data set; returns build_environment's summary."""
    request = request.checked()
    encoder_dir = None
    with database.session() as session:
        if request.encoder:
            encoder_dir = registered_encoder_dir(session, request.encoder)
        elif not (request.train_encoder or request.clip_init):
            encoder_dir = shipped_encoder_dir(session, get_dataset(session, request.dataset))
    settings = ClipSettings(
        arch=request.clip_arch,
        init=request.clip_init,
        frozen=request.frozen,
        epochs=request.clip_epochs,
        seed=request.seed,
        a=request.a,
        b=request.b,
        mode=request.env_mode,
    )
    if settings.init:  # a checkpoint's architecture does not depend on the number of tiles
        settings.arch = resolve_arch(settings, 0)
    if settings.init and Path(settings.init).is_file():  # refused before a tile or a description is written
        from engine.env.clip import build_encoder

        build_encoder(settings)
    return build_environment(
        database,
        dataset_name=request.dataset,
        tiles=request.tiles,
        describer=request.describer,
        describer_options=request.describer_options(),
        regenerate=request.regenerate,
        settings=settings,
        encoder_dir=encoder_dir,
        progress=progress,
        executor=Executor.parse(request.executor, request.workers),
    )
