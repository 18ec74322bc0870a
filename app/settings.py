"""The dashboard's own settings: where satellite tiles come from and which describer writes the cell
descriptions (used when the Data page builds the environment).

Stored as JSON in the data directory (``<data dir>/settings.json``, see db/session.py), validated
before they are written, written atomically (a temporary file in the same folder, then a rename) so a
crash never leaves half a file. A missing file means the defaults, which need no imagery and no
network: synthetic tiles for synthetic cities (none for real data) and the offline template describer.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from db import data_dir
from engine.env.describe import make_describer
from engine.env.tiles import open_tile_source
from engine.errors import InputError

SETTINGS_FILE = "settings.json"
TILE_KINDS = ("automatic", "synthetic", "dir", "mbtiles", "xyz")  # automatic = the engine's default
DESCRIBERS = ("template", "openai")


@dataclass(frozen=True)
class AppSettings:
    """Environment-build settings; the defaults work offline on any data set."""

    # None: synthetic tiles for synthetic cities, none for real data; else a spec for
    # engine.env.tiles.open_tile_source: synthetic | dir:PATH | mbtiles:PATH | xyz:URL_TEMPLATE.
    tile_source: str | None = None
    describer: str = "template"  # template | openai (any OpenAI-compatible endpoint)
    llm_base_url: str | None = None  # e.g. http://localhost:11434/v1 (Ollama)
    llm_model: str | None = None  # e.g. llama3.1:8b

    def describer_options(self) -> dict:
        """Keyword options for engine.env.describe.make_describer."""
        if self.describer == "openai":
            return {"base_url": self.llm_base_url, "model": self.llm_model}
        return {}


def tile_spec(kind: str, location: str) -> str | None:
    """The tile-source spec for the form's two fields (kind and path or URL template)."""
    if kind == "automatic":
        return None
    if kind == "synthetic":
        return "synthetic"
    return f"{kind}:{location.strip()}"


def tile_kind_and_location(spec: str | None) -> tuple[str, str]:
    """The inverse of :func:`tile_spec`, to fill the form from stored settings."""
    if spec is None:
        return "automatic", ""
    kind, _, rest = spec.partition(":")
    return (kind, rest) if kind in TILE_KINDS else ("automatic", "")


def validate_settings(settings: AppSettings) -> dict[str, str]:
    """Every problem, by field name (empty when the settings are usable). Opens the tile source the
    way the environment build will, so a missing folder or a malformed template is caught now."""
    problems: dict[str, str] = {}
    if settings.tile_source is not None:
        try:
            source = open_tile_source(settings.tile_source)
        except InputError as error:
            problems["tile_source"] = str(error)
        else:
            close = getattr(source, "close", None)
            if close:
                close()  # an MBTiles source holds an open SQLite connection
    if settings.describer not in DESCRIBERS:
        problems["describer"] = f"expected one of {', '.join(DESCRIBERS)}, got {settings.describer!r}"
    elif settings.describer == "openai":
        try:
            make_describer("openai", **settings.describer_options())  # checks the URL and model; no request
        except InputError as error:
            problems["llm_model" if error.field == "model" else "llm_base_url"] = str(error)
    return problems


def settings_path() -> Path:
    return data_dir() / SETTINGS_FILE


def load_settings(path: Path | None = None) -> AppSettings:
    """The stored settings, or the defaults when none were saved; a damaged file -> InputError."""
    path = path or settings_path()
    if not path.is_file():
        return AppSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(
            f"not valid JSON: {error.msg}",
            file=path,
            line=error.lineno,
            hint="save the settings again on the Data page, or delete the file",
        ) from None
    known = sorted(f.name for f in fields(AppSettings))
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object with keys {', '.join(known)}", file=path)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}", file=path)
    return AppSettings(**data)


def save_settings(settings: AppSettings, path: Path | None = None) -> Path:
    """Validate and write the settings atomically; the first problem -> InputError."""
    problems = validate_settings(settings)
    if problems:
        raise InputError(next(iter(problems.values())))  # the message names the field already
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".settings-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(asdict(settings), stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
