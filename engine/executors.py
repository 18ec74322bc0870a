"""Where a run over many entities is computed: in this process (``local``) or on a Ray cluster (``ray``, or
``ray:ADDRESS``) (docs/scale.md#executors).

A run is cut into chunks (rows: a dict of numpy arrays each); a *task* turns a chunk into its part of the
result. The task is a class: constructed once per process with a plain ``spec`` (a database URL, a model id,
the request's parameters: what a remote process needs to load the model and the data by itself), then
called on one chunk at a time. Locally the class is constructed once here (reusing the loaded model where
the caller has it); on Ray, Ray Data's ``map_batches`` runs it in a pool of actors, each of which loads the
model once, and the parts stream back in the chunks' order (``preserve_order``) to be summed or written here.
The same class does the work either way, and an entity's sample paths depend only on the seed and the entity
(engine/model/diffusion.py ``entity_generators``), so both executors give the same numbers.

Ray is an optional extra (``pip install -e '.[scale]'``); asking for it without it is a clear error."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine.errors import InputError

Chunk = dict[str, np.ndarray]


class ChunkTask(Protocol):
    def __call__(self, chunk: Chunk, /) -> Chunk: ...


@dataclass(frozen=True)
class Executor:
    """``local`` or ``ray`` (a local Ray instance started for the run, with ``workers`` actors) or
    ``ray:ADDRESS`` (an existing cluster: ``auto``, ``HOST:PORT`` or ``ray://HOST:10001``)."""

    kind: str = "local"
    address: str | None = None
    workers: int | None = None

    @classmethod
    def parse(cls, text: str | None, workers: int | None = None) -> Executor:
        value = "local" if text is None else text.strip()
        if value == "local":
            return cls("local", None, workers)
        if value == "ray":
            return cls("ray", None, workers)
        if value.startswith("ray:") and value[4:].strip():
            return cls("ray", value[4:].strip(), workers)
        raise InputError(
            f"executor {text!r} is not one of local, ray or ray:ADDRESS",
            field="executor",
            hint="ray:auto joins the cluster this machine belongs to; ray:HOST:6379 or ray://HOST:10001 another",
        )

    def __str__(self) -> str:
        return self.kind if self.address is None else f"{self.kind}:{self.address}"


def check_executor_text(text: str) -> str | None:
    """The message for an executor value that cannot be parsed, else None (a request's ``relations``)."""
    try:
        Executor.parse(text)
    except InputError as error:
        return error.message
    return None


def map_chunks(
    executor: Executor,
    task: Callable[[], ChunkTask],
    remote: tuple[type, dict[str, Any]],
    chunks: Iterable[Chunk],
) -> Iterator[Chunk]:
    """Each chunk's result, in the chunks' order. ``task`` makes the local task (called only locally);
    ``remote`` is (task class, its constructor's keyword arguments) for Ray's actors."""
    if executor.kind == "local":
        local = task()
        for chunk in chunks:
            yield local(chunk)
        return
    yield from _ray_map(executor, remote, list(chunks))


def _ray_map(executor: Executor, remote: tuple[type, dict[str, Any]], chunks: list[Chunk]) -> Iterator[Chunk]:
    try:
        import ray
    except ImportError:
        raise InputError(
            "the Ray executor needs Ray, which is not installed",
            field="executor",
            hint="pip install -e '.[scale]' (or use --executor local)",
        ) from None
    if not chunks:
        return
    started_here = not ray.is_initialized()
    if started_here:
        _start_ray(ray, executor)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # parts come back in the chunks' order: sums are exact
        context.enable_progress_bars = False
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = max(1, min(executor.workers or cluster_cpus, len(chunks)))
        task_class, kwargs = remote
        items = [{**chunk, "_order": np.int64(i)} for i, chunk in enumerate(chunks)]
        # One block per chunk: the pool hands blocks to its actors, so chunks in one block would share an actor.
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        results = dataset.map_batches(
            _Ordered,
            fn_constructor_kwargs={"task_class": task_class, "kwargs": kwargs},
            batch_size=1,
            batch_format="numpy",
            # Each actor loads the model once, then takes one chunk at a time: a chunk is seconds to minutes of
            # work, and queueing several on the first actor ready would leave the others idle.
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=1,
        )
        for batch in results.iter_batches(batch_size=1, batch_format="numpy"):
            yield {key: value[0] for key, value in batch.items() if key != "_order"}
    finally:
        if started_here:
            ray.shutdown()


def _start_ray(ray: Any, executor: Executor) -> None:
    import logging

    logging.getLogger("ray").setLevel(logging.WARNING)  # Ray Data's per-run INFO lines are not the user's business
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if executor.address is None:  # a Ray instance on this machine for this run
        options["num_cpus"] = executor.workers or os.cpu_count() or 1
        options["object_store_memory"] = 512 * 1024 * 1024
    try:
        ray.init(address=executor.address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(
            f"cannot start or join the Ray cluster {executor.address or '(local)'}: {str(error).splitlines()[0]}",
            field="executor",
        ) from None


class _Ordered:
    """A Ray actor around a task: built once per actor, then called on one chunk at a time."""

    def __init__(self, task_class: type, kwargs: dict[str, Any]) -> None:
        self.task = task_class(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunk = {key: value[0] for key, value in batch.items() if key != "_order"}
        out = self.task(chunk)
        return {"_order": batch["_order"], **{key: np.asarray(value)[None] for key, value in out.items()}}
