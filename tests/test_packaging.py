"""The PyInstaller spec (packaging/lsdm.spec), checked against the tree without building: a page, an
app import, a data folder or an engine module that the bundle would miss fails here, not in a user's
hands. (Building and running the bundle: `make bundle` and `make bundle-smoke`, not part of CI.)

The spec is executed as PyInstaller executes it, with PyInstaller's build classes and hook helpers
replaced by recorders, so PyInstaller need not be installed."""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "packaging" / "lsdm.spec"
STDLIB = sys.stdlib_module_names


def _load_contents() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bundle_contents_under_test", REPO / "packaging" / "bundle_contents.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


contents = _load_contents()


class _Recorder:
    """Stands for Analysis, PYZ, EXE and COLLECT: keeps its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs
        self.binaries, self.datas, self.pure, self.scripts = [], [], [], []


@pytest.fixture(scope="module")
def built(monkeypatch_module: pytest.MonkeyPatch) -> dict:
    """What the spec asks PyInstaller for: {"Analysis": ..., "EXE": ..., "COLLECT": ..., "hooks": calls}."""
    calls: list[tuple[str, tuple, dict]] = []

    def recorder(name: str):
        def record(*args, **kwargs) -> list:
            calls.append((name, args, kwargs))
            return []

        return record

    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_data_files = recorder("collect_data_files")
    hooks.copy_metadata = recorder("copy_metadata")
    for name in ("PyInstaller", "PyInstaller.utils"):
        monkeypatch_module.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch_module.setitem(sys.modules, "PyInstaller.utils.hooks", hooks)
    made: dict[str, _Recorder] = {}

    def maker(kind: str):
        def make(*args, **kwargs) -> _Recorder:
            made[kind] = _Recorder(*args, **kwargs)
            return made[kind]

        return make

    namespace = {
        "__file__": str(SPEC),
        "SPECPATH": str(SPEC.parent),
        "SPEC": str(SPEC),
        **{kind: maker(kind) for kind in ("Analysis", "PYZ", "EXE", "COLLECT")},
    }
    exec(compile(SPEC.read_text(), str(SPEC), "exec"), namespace)
    return {**made, "hooks": calls}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _data(built: dict) -> set[tuple[str, str]]:
    return {(str(Path(src).resolve()), dest) for src, dest in built["Analysis"].kwargs["datas"]}


def _hidden(built: dict) -> set[str]:
    return set(built["Analysis"].kwargs["hiddenimports"])


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules a file imports, ``a.b`` for every ``from a import b``: a module or just a name), at any
    depth; written apart from bundle_contents.imports_of on purpose."""
    modules, maybe = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
            maybe |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules, maybe


def _is_project_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_the_spec_builds_one_folder_named_lsdm_dashboard_from_the_launcher(built):
    analysis, exe, collect = built["Analysis"], built["EXE"], built["COLLECT"]
    assert [Path(s).resolve() for s in analysis.args[0]] == [REPO / "launcher.py"]
    assert exe.kwargs["name"] == collect.kwargs["name"] == "lsdm-dashboard"
    assert exe.kwargs["exclude_binaries"] is True  # one folder: the binaries go to COLLECT
    assert exe.kwargs["console"] is True
    assert ("u", None, "OPTION") in exe.args[2], "unbuffered, so that the ready line reaches a pipe at once"
    assert analysis.kwargs["module_collection_mode"] == {"app": "py"}


def test_every_page_of_the_navigation_and_every_app_file_is_bundled_as_a_file_and_analysed(built):
    tree = ast.parse((REPO / "app" / "main.py").read_text())
    pages = {
        node.right.value
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Div)
        and isinstance(node.right, ast.Constant)
        and str(node.right.value).endswith(".py")
    }
    assert len(pages) >= 7, pages
    views = REPO / "app" / "views"
    assert {p.name for p in views.glob("*.py")} >= pages, "a page in st.navigation has no file in app/views"
    data, hidden = _data(built), _hidden(built)
    for path in sorted((REPO / "app").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(REPO)
        assert (str(path), str(relative.parent)) in data, f"{relative} is not copied into the bundle"
        assert ".".join(relative.with_suffix("").parts) in hidden, f"the analyser never sees {relative}'s imports"


def test_every_module_the_app_imports_is_importable_and_reaches_the_bundle(built):
    hidden = _hidden(built)
    excluded = set(built["Analysis"].kwargs["excludes"])
    for path in (REPO / "app").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        modules, maybe = _imports(path)
        for name in sorted(modules | {m for m in maybe if _is_project_module(m)}):
            where = f"{path.relative_to(REPO)} imports {name}"
            top = name.split(".")[0]
            if top in contents.PROJECT_PACKAGES:  # namespace package ``app`` itself has no file
                assert name == "app" or name in hidden, f"{where}, which is not a hidden import"
                continue
            assert top not in excluded, f"{where}, but the spec excludes {top}"
            # importable here, so the analyser, following the app module (a hidden import), finds it
            assert top in STDLIB or importlib.util.find_spec(name) is not None, f"{where}: not importable"


def test_engine_db_cli_and_desktop_are_collected_whole_since_the_command_line_imports_lazily(built):
    hidden = _hidden(built)
    for package in ("engine", "db", "cli", "desktop"):
        for path in (REPO / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            assert contents.module_name(path) in hidden, path
    assert "engine.jobs.kinds" in hidden


def test_the_shipped_model_mappings_and_theme_are_data_at_their_own_paths(built):
    data = _data(built)
    wanted = [
        REPO / ".streamlit" / "config.toml",
        REPO / "assets" / "default" / "manifest.json",
        *(REPO / "assets" / "mappings").glob("*.json"),
    ]
    for folder in ("clip", "lsdm"):
        files = [p for p in (REPO / "assets" / "default" / folder).iterdir() if p.is_file()]
        assert files, f"assets/default/{folder} is empty"
        wanted += files
    for path in wanted:
        assert (str(path), str(path.parent.relative_to(REPO))) in data, f"{path.relative_to(REPO)} is not bundled"


def test_streamlit_sqlalchemy_and_arima_needs_that_the_analyser_cannot_see_are_listed(built):
    hidden = _hidden(built)
    for name in (
        "streamlit.runtime.scriptrunner.magic_funcs",
        "sqlalchemy.dialects.sqlite",
        "statsmodels.tsa.statespace.sarimax",
        "scipy.stats",
    ):
        assert name in hidden
        assert importlib.util.find_spec(name) is not None, name
    calls = built["hooks"]
    assert ("copy_metadata", ("streamlit",), {}) in calls
    collected = {args[0] for kind, args, _ in calls if kind == "collect_data_files"}
    assert {"streamlit", "open_clip", "pydeck"} <= collected


def test_test_programs_and_cuda_libraries_are_dropped_but_what_torch_loads_stays():
    cpu = contents.excluded_file_patterns(cpu_torch=True)
    for dest in (
        "torch/bin/test_api",
        "torch/bin/protoc",
        "torch/test/atest",
        "torch/include/ATen/ATen.h",
        "torchvision.libs/libcudart.faf08d9a.so.13",
        "torchvision/_C.so",
        "pyarrow/libarrow_flight.so.2600",
        "nvidia/cublas/lib/libcublas.so.12",
    ):
        assert contents.is_excluded(dest, cpu), dest
    for dest in (
        "torch/bin/torch_shm_manager",
        "torch/lib/libtorch_cpu.so",
        "torch/lib/libc10.so",
        "torch/lib/libgomp.so.1",
        "pyarrow/libparquet.so.2600",
        "app/views/map.py",
        "assets/default/manifest.json",
    ):
        assert not contents.is_excluded(dest, cpu), dest
    assert not contents.is_excluded("torchvision/_C.so", contents.excluded_file_patterns(cpu_torch=False))


def test_nothing_the_product_imports_is_excluded():
    excluded = set(contents.EXCLUDED_MODULES)
    for package in contents.PROJECT_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            clash = {name for name in contents.imports_of(path) if name in excluded or name.split(".")[0] in excluded}
            assert not clash, f"{path.relative_to(REPO)} imports {clash}, which packaging/bundle_contents.py excludes"
    for name in ("launcher.py",):
        assert not {n.split(".")[0] for n in contents.imports_of(REPO / name)} & excluded


def test_the_bundle_extra_pins_pyinstaller():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "pyinstaller==6.22.3" in extras["bundle"]
