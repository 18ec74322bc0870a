"""Build the one-folder bundle dist/lsdm-dashboard/ from packaging/lsdm.spec and record the build in
dist/lsdm-dashboard-build.json (seconds, size, versions); what `make bundle` runs.

Usage: python packaging/build.py [--dist DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_process import NAME, build_record_path, executable, folder_size

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "lsdm.spec"
VERSIONS_OF = (
    "pyinstaller",
    "pyinstaller-hooks-contrib",
    "torch",
    "torchvision",
    "open_clip_torch",
    "streamlit",
    "pydeck",
    "altair",
    "SQLAlchemy",
    "statsmodels",
    "scipy",
    "pandas",
    "numpy",
    "pyarrow",
)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONS_OF:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--work", type=Path, default=ROOT / "build")
    args = parser.parse_args()
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level",
        "WARN",
        "--distpath",
        str(args.dist),
        "--workpath",
        str(args.work),
        str(SPEC),
    ]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    started = time.perf_counter()
    status = subprocess.call(command, cwd=ROOT)
    seconds = time.perf_counter() - started
    bundle = args.dist / NAME
    if status != 0 or not executable(bundle).is_file():
        print(
            f"error: PyInstaller failed (status {status}) after {seconds:.0f} s; no {executable(bundle)}",
            file=sys.stderr,
        )
        return status or 1
    size, files = folder_size(bundle)
    record = {
        "bundle": str(bundle),
        "executable": str(executable(bundle)),
        "build_s": round(seconds, 1),
        "size_mb": round(size / 2**20, 1),
        "files": files,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions(),
    }
    build_record_path(bundle).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    print(
        f"Bundle: {executable(bundle)} ({record['size_mb']:.0f} MB, {files} files) built in {seconds:.0f} s; "
        f"record in {build_record_path(bundle)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
