"""Storing a generated or ingested data set: `lsdm city build`, `lsdm ingest ...` and their jobs."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Dataset
from db.queries import DatasetContent, store_dataset
from engine.errors import InputError


def store_new_dataset(session: Session, content: DatasetContent, *, replace: bool) -> Dataset:
    """Store ``content`` as the active data set (the caller commits: one transaction). A data set of the
    same name is replaced only when ``replace`` is asked for; otherwise an error names the field."""
    taken = session.scalar(select(Dataset.id).where(Dataset.name == content.name))
    if taken is not None and not replace:
        raise InputError(
            f"a data set named {content.name!r} exists already; choose another name or ask to replace it "
            "(--replace on the command line; on the Data page, tick 'Replace a data set of the same name')",
            field="name",
        )
    return store_dataset(session, content, activate=True)
