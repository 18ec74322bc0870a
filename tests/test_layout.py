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


def _modules_imported(path: Path) -> set[str]:
    """Full dotted names a file imports (``from app import common`` gives ``app.common``), anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_app_reads_the_database_through_db_queries_and_builds_no_sql():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "app").rglob("*.py")
                 if {"sqlalchemy", "sqlalchemy.sql"} & _modules_imported(p) or "select(" in p.read_text()
                 .replace(".select(", "").replace("multiselect(", "").replace("_select(", "")]
    assert offenders == [], "move the query into db/queries.py, named for what it returns"


def test_app_modules_import_each_other_without_cycles():
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in (REPO / "app").rglob("*.py")}
    graph = {name: {m for m in _modules_imported(path) if m in modules and m != name} for name, path in modules.items()}

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        for dependency in sorted(graph[name]):
            if dependency in path:
                return path[path.index(dependency):] + [dependency]
            found = cycle_from(dependency, path + [dependency])
            if found:
                return found
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name, [name]))]
    assert cycles == []


def test_every_page_pairs_with_its_data_module_by_name():
    pages = {p.stem for p in (REPO / "app" / "views").glob("*.py") if p.stem != "__init__"}
    data_modules = {p.stem.removesuffix("_data") for p in (REPO / "app").glob("*_data.py")}
    assert data_modules <= pages, "a *_data.py module without its page: rename it after the page it serves"
