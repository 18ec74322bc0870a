"""The house rules that keep the layers apart (../shared/STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_and_db_never_import_streamlit_or_the_app():
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("engine", "db")
        for path in (REPO / folder).rglob("*.py")
        if _imports(path) & {"streamlit", "app", "pydeck", "altair"}
    ]
    assert offenders == []


def test_db_does_not_depend_on_the_engine():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "db").rglob("*.py") if "engine" in _imports(p)]
    assert offenders == []
