"""Storing a generated or ingested data set: `lsdm city build`, `lsdm ingest ...` and their jobs."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Dataset
from db.queries import DatasetContent, store_dataset
from engine.errors import InputError

# The columns' widths (db/models.py): SQLite would store longer text as it is, PostgreSQL refuses it with a
# traceback; both get the same check here, before anything is written. A NUL byte is refused by PostgreSQL
# and cut short by some SQLite tools.
MAX_KEY = 100  # an entity's or a cell's id
MAX_NAME = 200  # a data set's, a cell's, a service's or a POI category's name


def check_texts(content: DatasetContent) -> None:
    """Every id and name of ``content`` within its column's width and free of NUL bytes, or InputError naming
    the field and the first offending value."""
    groups = [
        ("name", [content.name], MAX_NAME),
        ("entity id", content.entity_keys, MAX_KEY),
        ("cell id", content.cell_keys, MAX_KEY),
        ("cell name", content.cell_names or [], MAX_NAME),
        ("service", content.services, MAX_NAME),
        ("POI category", content.poi_categories, MAX_NAME),
    ]
    for field, values, limit in groups:
        for value in values:
            text = str(value)
            if "\x00" in text:
                raise InputError(f"{field} {text[:40]!r}... holds a NUL byte; expected plain text", field=field)
            if len(text) > limit:
                raise InputError(f"{field} {text[:40]!r}... has {len(text):,} characters; at most {limit}", field=field)


def store_new_dataset(session: Session, content: DatasetContent, *, replace: bool) -> Dataset:
    """Store ``content`` as the active data set (the caller commits: one transaction). A data set of the
    same name is replaced only when ``replace`` is asked for; otherwise an error names the field. Ids and
    names are checked first (``check_texts``): the same bounds on SQLite and PostgreSQL."""
    check_texts(content)
    taken = session.scalar(select(Dataset.id).where(Dataset.name == content.name))
    if taken is not None and not replace:
        raise InputError(
            f"a data set named {content.name!r} exists already; choose another name or ask to replace it "
            "(--replace on the command line; on the Data page, tick 'Replace a data set of the same name')",
            field="name",
        )
    return store_dataset(session, content, activate=True)
