"""What goes into the PyInstaller bundle, computed from the tree (read by packaging/lsdm.spec and by
tests/test_packaging.py; needs no PyInstaller).

Streamlit runs the dashboard's page files as scripts, so PyInstaller's analysis of launcher.py never
sees them or their imports. Two things make them work inside the bundle, both derived from the files
on disk so that a new page or a new import is picked up without editing the spec:

- every ``app/**/*.py`` is copied as a data file to the same place under ``_internal/`` (Streamlit
  opens ``app/main.py`` and the pages by path; ``desktop.appserver.ROOT`` is ``sys._MEIPASS``);
- every one of those files is also named as a hidden import (``app.views.map`` ...; ``app`` is a
  namespace package, no ``__init__.py`` needed), collected as source only (``module_collection_mode``
  ``py``), so the analyser follows every import a page makes exactly as it does for normal code.

The same holds for ``engine``, ``db``, ``cli`` and ``desktop`` (the command line imports its
torch-heavy engine modules lazily, see cli/main.py). ``assets/`` (the shipped encoder and forecaster,
column mappings) and ``.streamlit/config.toml`` (the theme; read from the working directory, which
launcher.py sets to ROOT) are data.

What is left out keeps the bundle small: test programs and headers shipped inside torch, CUDA
libraries (torch here is the CPU build; torchvision's CUDA extension cannot load next to it and
torchvision falls back to Python), test and browser-automation packages.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "lsdm-dashboard"
ENTRY_SCRIPT = ROOT / "launcher.py"

# Project packages whose every module is collected (the app as source files, see above).
PROJECT_PACKAGES = ("app", "engine", "db", "cli", "desktop")
# Data folders and files, relative to ROOT, copied with the same layout under _internal/.
DATA_FOLDERS = ("app", "assets")
DATA_FILES = (".streamlit/config.toml",)

# Imports PyInstaller cannot see even in analysed code.
EXTRA_HIDDEN_IMPORTS = (
    # Streamlit imports it by name when it rewrites a page script (else the page shows
    # "ModuleNotFoundError: No module named 'streamlit.runtime.scriptrunner.magic_funcs'" behind HTTP 200).
    "streamlit.runtime.scriptrunner.magic_funcs",
    # SQLAlchemy loads dialects from the URL's name.
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.sqlite.pysqlite",
    # The ARIMA baseline (engine/evaluation/baselines.py) and its Gaussian intervals.
    "statsmodels.tsa.statespace.sarimax",
    "statsmodels.tsa.statespace._filters",
    "statsmodels.tsa.statespace._smoothers",
    "statsmodels.tsa.statespace._kalman_filter",
    "statsmodels.tsa.statespace._kalman_smoother",
    "scipy.stats",
    "scipy.optimize",
    "scipy.special.cython_special",
    # pandas' Parquet export (Forecast page) goes through pyarrow, imported on first use.
    "pyarrow.parquet",
)

# Package data that is read at run time (PyInstaller's hooks do not collect it).
COLLECT_DATA = {
    "streamlit": None,  # the web front end, config schema
    "open_clip": None,  # model configs and the BPE vocabulary of the tokenizer
    "pydeck": ["io/templates/*"],  # its Jupyter extension (23 MB of JavaScript) is not needed
}
# Distributions whose metadata is read with importlib.metadata at run time.
COPY_METADATA = (
    "streamlit",
    "torch",
    "torchvision",
    "open_clip_torch",
    "timm",
    "huggingface_hub",
    "safetensors",
    "pandas",
    "numpy",
    "pyarrow",
    "altair",
    "pydeck",
    "SQLAlchemy",
)

# Modules never needed by the application; some are pulled in through optional imports.
EXCLUDED_MODULES = (
    "pytest",
    "_pytest",
    "pytest_timeout",
    "playwright",
    "PyInstaller",
    "pip",
    "tkinter",
    "_tkinter",
    "IPython",
    "jupyter_client",
    "ipykernel",
    "notebook",
    "tests",
    "benchmarks",
    "hf_xet",  # huggingface_hub's download accelerator (optional there); nothing is downloaded
    "pyarrow.flight",
    "pyarrow._flight",
    "pyarrow._s3fs",  # Arrow Flight RPC and S3: 50 MB, optional in pyarrow
)

# Collected files (destination paths inside _internal/) that are dropped after the analysis.
EXCLUDED_FILES = (
    "torch/bin/*Test",  # C++ test programs and protoc; torch_shm_manager stays (torch needs it at import)
    "torch/bin/test_*",
    "torch/bin/protoc*",
    "torch/bin/*.pt",
    "torch/bin/*.ptl",
    "torch/bin/upgrader_models/*",
    "torch/test/*",  # C++ test programs
    "torch/include/*",  # headers for building extensions
    "torch/share/*",  # CMake files
    "torch/lib/libjitbackend_test.so",
    "torch/lib/libtorchbind_test.so",
    "torch/lib/libbackend_with_compiler.so",
    "torch/lib/libaoti_custom_ops.so",
    "pyarrow/include/*",  # headers
    "pyarrow/src/*",
    "pyarrow/tests/*",
    "pyarrow/libarrow_flight*",
    "pyarrow/libarrow_python_flight*",
    "pyarrow/libarrow_s3*",
    "*.pyi",
    "*/__pycache__/*",
)
# CUDA libraries, dropped when the bundled torch is a CPU build.
CUDA_FILES = (
    "nvidia/*",
    "*/libcudart*",
    "*/libnvjpeg*",
    "*/libcublas*",
    "*/libcudnn*",
    "*/libnccl*",
    "*/libcufft*",
    "*/libcurand*",
    "*/libcusolver*",
    "*/libcusparse*",
    "*/libnvrtc*",
    "*/libnvToolsExt*",
    "libcu*",
    "libnv*",
    "torchvision/_C.so",  # torchvision's CUDA-built ops: need libtorch_cuda.so, never load with CPU torch
    "torchvision/image.so",  # same (links libnvjpeg and libtorch_cuda); torchvision falls back to Python
)


def _files(folder: Path, suffix: str | None = None) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and (suffix is None or p.suffix == suffix)
    )


def app_files() -> list[Path]:
    """Every Python file of the dashboard: the entry, its helpers and every page."""
    return _files(ROOT / "app", ".py")


def module_name(path: Path) -> str:
    """``app/views/map.py`` -> ``app.views.map``; ``engine/env/__init__.py`` -> ``engine.env``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> list[str]:
    return sorted({module_name(p) for package in PROJECT_PACKAGES for p in _files(ROOT / package, ".py")})


def hidden_imports() -> list[str]:
    return [*project_modules(), *EXTRA_HIDDEN_IMPORTS]


def data_entries() -> list[tuple[str, str]]:
    """(source file, destination folder inside the bundle) for every data file, one per file so that
    the test can check the list."""
    files = [p for folder in DATA_FOLDERS for p in _files(ROOT / folder)] + [ROOT / f for f in DATA_FILES]
    return [(str(p), str(p.parent.relative_to(ROOT))) for p in files]


def imports_of(path: Path) -> set[str]:
    """The absolute module names a file imports (``from a.b import c`` gives ``a.b``), at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def torch_is_cpu_build() -> bool:
    import torch

    return torch.version.cuda is None


def excluded_file_patterns(cpu_torch: bool) -> tuple[str, ...]:
    return EXCLUDED_FILES + (CUDA_FILES if cpu_torch else ())


def is_excluded(dest: str, patterns: tuple[str, ...]) -> bool:
    dest = dest.replace("\\", "/")
    return any(fnmatch.fnmatch(dest, pattern) for pattern in patterns)
