"""The house rules that keep the layers apart (../shared/STYLE.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("engine", "db", "app", "cli", "desktop")  # and launcher.py
# engine/: everything that computes (../shared/STYLE.md); the command line (cli/) and the process
# supervision (desktop/) live beside it, the drawing in app/ and cli/report_figures.py.
ENGINE_TOP_LEVEL = {
    "__init__.py",
    "artifacts.py",
    "errors.py",
    "executors.py",
    "forecast.py",
    "requests.py",
    "shipped.py",
    "train.py",
    "whatif.py",
    "data",
    "env",
    "evaluation",
    "jobs",
    "load",
    "model",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_and_db_never_import_streamlit_matplotlib_or_the_presentation_layers():
    """The engine computes and never draws; drawing is the app's and the command line's (STYLE.md)."""
    offenders = [
        f"{path.relative_to(REPO)} imports {', '.join(sorted(found))}"
        for folder in ("engine", "db")
        for path in (REPO / folder).rglob("*.py")
        if (found := _imports(path) & {"streamlit", "matplotlib", "altair", "pydeck", "app", "cli", "desktop"})
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
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "app").rglob("*.py")
        if {"sqlalchemy", "sqlalchemy.sql"} & _modules_imported(p)
        or "select(" in p.read_text().replace(".select(", "").replace("multiselect(", "").replace("_select(", "")
    ]
    assert offenders == [], "move the query into db/queries.py, named for what it returns"


def test_app_modules_import_each_other_without_cycles():
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in (REPO / "app").rglob("*.py")}
    graph = {name: {m for m in _modules_imported(path) if m in modules and m != name} for name, path in modules.items()}

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        for dependency in sorted(graph[name]):
            if dependency in path:
                return [*path[path.index(dependency) :], dependency]
            found = cycle_from(dependency, [*path, dependency])
            if found:
                return found
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name, [name]))]
    assert cycles == []


def test_every_page_pairs_with_its_data_module_by_name():
    pages = {p.stem for p in (REPO / "app" / "views").glob("*.py") if p.stem != "__init__"}
    data_modules = {p.stem.removesuffix("_data") for p in (REPO / "app").glob("*_data.py")}
    assert data_modules <= pages, "a *_data.py module without its page: rename it after the page it serves"


def test_engine_holds_no_command_line_and_no_process_supervision():
    """`lsdm` is cli/, the worker-and-server supervision desktop/; engine/ is what computes."""
    top = {p.name for p in (REPO / "engine").iterdir() if p.name != "__pycache__" and not p.name.startswith(".")}
    assert top == ENGINE_TOP_LEVEL, "a new top-level module of engine/: put it in the package it belongs to"
    supervising = [
        str(p.relative_to(REPO))
        for p in (REPO / "engine").rglob("*.py")
        if _imports(p) & {"subprocess", "webbrowser", "argparse"}
    ]
    assert supervising == []


# --- no import cycles among the project's modules ----------------------------------------------------


def _project_modules() -> dict[str, Path]:
    """Dotted name -> file of every project module (a package by its ``__init__.py``)."""
    modules = {"launcher": REPO / "launcher.py"}
    for package in PROJECT_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _project_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a module imports, at the top or inside functions; ``if TYPE_CHECKING:``
    blocks are left out (they never run). ``from a import b`` is ``a.b`` when that is a module, else
    ``a`` (its ``__init__``); relative imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(dotted: str) -> None:
        while dotted and dotted not in modules:  # a name inside a module: the module itself
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found.add(dotted)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
        visit(node)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through
    its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in sorted(graph):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)

    def path_back(start: str, component: set[str]) -> list[str]:
        # breadth-first from start's imports back to start, inside the component
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        chain = [v]
                        while chain[-1] != start:
                            chain.append(previous[chain[-1]])
                        return [start, *reversed(chain[:-1]), start] if len(chain) > 1 else [start, v, start]
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
            frontier = nxt
        return sorted(component)

    return [path_back(min(component), component) for component in components]


def test_the_cycle_finder_reports_a_cycle_through_function_level_imports_but_not_type_checking_ones(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    (tmp_path / "pkg").mkdir()
    one = tmp_path / "pkg" / "one.py"
    one.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import two\n"
        "def f():\n    from . import three\n"
    )
    modules = {"pkg.one": one, "pkg.two": tmp_path, "pkg.three": tmp_path}
    assert _project_imports("pkg.one", one, modules) == {"pkg.three"}


def test_project_modules_import_each_other_without_cycles():
    """engine, db, app, cli, desktop and launcher.py: no module reaches itself through imports (at the
    top or in functions), so the graph reads one way: presentation -> engine -> db."""
    modules = _project_modules()
    graph = {name: _project_imports(name, path, modules) for name, path in modules.items()}
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)
