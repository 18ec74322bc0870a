"""One request type per operation: the fields, the one set of defaults and bounds, and the checks.

The command line (cli/), the job kinds (engine/jobs/kinds.py) and the dashboard's forms (app/) all
build the same frozen dataclass and hand it to the engine, so an option is added in one place
(docs/architecture.md#requests). Field names are the domain's (``horizon``, ``model_id``, ``entities``):
only the command line maps them to its flags, at its own edge.

- ``validate()`` returns every problem as ``{field: message}`` (empty when the request can run); the
  checks that need the data or the model (a start hour within the data, DDIM steps within the model's
  diffusion steps) are the engine's, which raises :class:`InputError` naming the same fields.
- ``checked()`` returns the request or raises one :class:`InputError` naming the first bad field and
  listing every problem.
- ``to_params()`` / ``from_params()`` are the job table's JSON. ``from_params`` also reads the text
  forms that job rows and stored runs were written in before requests existed (``entity`` =
  ``user:A,user:B``, ``sampler`` = ``ddim:10``, ``location`` = ``cell:KEY``), so old rows still run and
  old runs can be run again.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import zoneinfo
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from engine.errors import InputError
from engine.executors import check_executor_text

SEED_MAX = 2**32 - 1  # numpy's and torch's generators both take it; a larger one fails deep inside
MAX_HORIZON = 168  # a week: the length of the paper's traffic matrix
MAX_SAMPLES = 1024
MAX_GUIDANCE = 10.0
MAX_ENTITIES = 10_000
SAMPLERS = ("ddim", "ddpm")
NOISE_MODES = ("antithetic", "independent")
LOCATIONS = ("habitual", "sampled", "stay", "observed", "cells")  # where entities are during a forecast
EVALUATION_LOCATIONS = ("observed", "habitual")
EVALUATION_LEVELS = ("user", "cell")
MATRIX_STEPS = ("1h", "30min", "15min", "10min")
MATRIX_SERVICES = 20
LOAD_LOCATIONS = ("sampled", "habitual", "stay", "observed")  # a load run's users: where they will be
ENTITY_KINDS = ("user", "cell")
SPLITS = ("time", "users")
DESCRIBERS = ("template", "openai")
ENV_MODES = ("auto", "both", "image", "text", "none")


def spec(
    kind: Any,
    default: Any = MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    max_length: int | None = None,
    internal: bool = False,
    help: str = "",
) -> Any:
    """A request field with its kind (int, float, str, bool, "keys", "file", "source", "sources", dict), bounds
    and help. "source": ``FILE`` or ``FILE:KEY`` (an array in an archive); "sources": several of them.

    ``internal``: carried by jobs and forms but no command-line flag (e.g. the folder of uploaded files)."""
    metadata = {
        "kind": kind,
        "low": low,
        "high": high,
        "choices": choices,
        "max_length": max_length,
        "internal": internal,
        "help": help,
    }
    if isinstance(default, (tuple, dict)) and not default:
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _kind_problem(kind: Any, value: Any) -> str | None:
    """What is wrong with the type of ``value`` (None when it is of the field's kind)."""
    if kind is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {shown_value(value)}"
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected a whole number, got {shown_value(value)}"
        return None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {shown_value(value)}"
        return None if math.isfinite(value) else f"expected a finite number, got {shown_value(value)}"
    if kind in (str, "file", "source"):
        return None if isinstance(value, str) else f"expected text, got {shown_value(value)}"
    if kind == "sources":
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v.strip() for v in value):
            return f"expected a list of files, got {shown_value(value)}"
        return None
    if kind == "keys":
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v.strip() for v in value):
            return f"expected a list of names, got {shown_value(value)}"
        return None
    if kind is dict:
        return None if isinstance(value, dict) else f"expected an object, got {shown_value(value)}"
    raise TypeError(f"unknown field kind {kind!r}")


def is_file(path: Path | str) -> bool:
    """Whether ``path`` is a file; False for names no file can have (too long, a NUL byte), where
    ``Path.is_file`` raises."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _missing_file(path: Path | str) -> str:
    text = str(path)
    if "\x00" in text:
        return "a file name cannot hold a NUL byte"
    try:
        if Path(text).is_dir():
            return f"{text} is a folder; expected a file"
        Path(text).stat()
    except OSError as error:
        if error.strerror and error.errno != errno.ENOENT:  # too long, not a directory, no permission
            return f"{error.strerror.lower()}: {shown_value(text)}"
    except ValueError:
        pass
    return f"no such file: {text if len(text) <= 300 else shown_value(text, 300)}"


def split_source(text: str) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:KEY`` -> (path, key); a path that exists as it is has no key."""
    if ":" in text and not is_file(text):
        path, key = text.rsplit(":", 1)
        return Path(path), key or None
    return Path(text), None


def _absolute_source(text: str) -> str:
    path, key = split_source(text)
    return str(path.resolve()) + (f":{key}" if key else "")


def shown_value(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut to ``limit`` characters (a 10,000-item list
    pasted into a field is named, not printed)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]} ...{text[-1]}"


def shown_number(value: float) -> str:
    """A number as a message shows it: whole numbers in full, with thousands separators from 10,000 on
    ("4,294,967,295", not "4.29497e+09"); others in a short form ("0.5", "1e-09", "inf")."""
    if isinstance(value, (int, float)) and math.isfinite(value) and float(value).is_integer() and abs(value) < 1e18:
        whole = int(value)
        return f"{whole:,}" if abs(whole) >= 10_000 else str(whole)
    return f"{value:g}"


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"from {shown_number(low)} to {shown_number(high)}"
    return f">= {shown_number(low)}" if low is not None else f"<= {shown_number(high)}"  # type: ignore[arg-type]


@dataclass(frozen=True)
class Request:
    """What every request type shares: generic field checks from each field's ``spec``, the job
    table's JSON, and the error raised for the first bad field."""

    KIND: ClassVar[str] = ""  # the job kind that runs it
    TITLE: ClassVar[str] = ""

    # -- the fields' specs, for forms, the command line and tests --

    @classmethod
    def field_specs(cls) -> dict[str, dict]:
        """name -> {kind, default, low, high, choices, max_length, internal, help, required}."""
        out = {}
        for f in fields(cls):
            default = (
                f.default
                if f.default is not MISSING
                else (f.default_factory() if f.default_factory is not MISSING else MISSING)
            )
            out[f.name] = {
                **f.metadata,
                "default": None if default is MISSING else default,
                "required": default is MISSING,
            }
        return out

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.field_specs()[name]["default"]

    @classmethod
    def bounds(cls, name: str) -> tuple[Any, Any]:
        found = cls.field_specs()[name]
        return found["low"], found["high"]

    @classmethod
    def choices(cls, name: str) -> tuple[str, ...]:
        return cls.field_specs()[name]["choices"] or ()

    # -- checks --

    def validate(self) -> dict[str, str]:
        """Every problem as {field: message}; empty when the request can run."""
        errors: dict[str, str] = {}
        for name, found in self.field_specs().items():
            value = getattr(self, name)
            if value is None or (
                found["required"] and found["kind"] in (str, "file", "keys", "source", "sources") and not value
            ):
                if found["required"]:
                    errors[name] = "is required"
                continue
            problem = _kind_problem(found["kind"], value)
            if problem is None:
                problem = self._bounds_problem(found, value)
            if problem:
                errors[name] = problem
        for name, problem in self.relations(errors).items():
            errors.setdefault(name, problem)
        return errors

    @staticmethod
    def _bounds_problem(found: dict, value: Any) -> str | None:
        low, high, choices = found["low"], found["high"], found["choices"]
        if found["kind"] in (int, float) and ((low is not None and value < low) or (high is not None and value > high)):
            return f"expected a value {_range_text(low, high)}, got {shown_number(value)}"
        if choices and value not in choices:
            return f"expected one of {', '.join(choices)}, got {shown_value(value)}"
        limit = found["max_length"]
        if limit is not None and len(value) > limit:
            return f"has {len(value)} {'characters' if isinstance(value, str) else 'items'}; at most {limit}"
        if found["kind"] == "file" and not is_file(value):
            return _missing_file(value)
        if found["kind"] in ("source", "sources"):
            for source in (value,) if found["kind"] == "source" else value:
                path, _key = split_source(source)
                if not is_file(path):
                    return _missing_file(path)
        return None

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        """Checks across fields (a request type's own), given the per-field ``errors`` found so far."""
        return {}

    def checked(self) -> Self:
        """The request itself, or InputError naming the first bad field and listing every problem."""
        errors = self.validate()
        if errors:
            first, *others = errors
            raise InputError(errors[first], field=first, also={name: errors[name] for name in others})
        return self

    # -- the job table --

    def to_params(self) -> dict:
        """Plain JSON values (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def upgrade(cls, params: dict) -> dict:
        """Parameters written before this request type existed, in its fields (a type's own)."""
        return params

    RECORD_KEYS: ClassVar[tuple[str, ...]] = ()  # what a stored run records beside its request

    @classmethod
    def from_params(cls, params: dict | None) -> Self:
        """The request of a job row or a stored run (unchecked: call ``checked()``); unknown names are
        an error naming them."""
        if params is not None and not isinstance(params, dict):
            raise InputError(f"expected an object of parameters, got {shown_value(params)}", field="params")
        params = cls.upgrade(dict(params or {}))  # sees what a run recorded (an old run's model_sha256)
        params = {k: v for k, v in params.items() if k not in cls.RECORD_KEYS}
        specs = cls.field_specs()
        unknown = sorted(set(params) - set(specs))
        if unknown:
            raise InputError(f"unknown parameter; expected some of {', '.join(specs) or 'none'}", field=unknown[0])
        values: dict[str, Any] = {}
        for name, found in specs.items():
            if name not in params:
                if found["required"]:
                    values[name] = None  # validate() says it is required
                continue
            value = params[name]
            if found["kind"] in (str, "file", "source") and value == "":
                if found["required"]:
                    values[name] = None  # validate() says it is required
                continue  # an empty text box: the default (or "is required")
            if found["kind"] in ("keys", "sources") and isinstance(value, list):
                value = tuple(value)
            if found["kind"] is int and isinstance(value, float) and value.is_integer():
                value = int(value)  # 12.0 from a JSON writer that knows no integers
            values[name] = value
        return cls(**values)

    @classmethod
    def parse(cls, params: dict | None) -> Self:
        """``from_params`` then ``checked``: what a job kind does when a job is queued and run."""
        return cls.from_params(params).checked()

    def with_absolute_files(self) -> Self:
        """File fields as absolute paths: a job may run in another folder than the one that queued it."""
        changes: dict[str, Any] = {
            name: str(Path(getattr(self, name)).resolve())
            for name, found in self.field_specs().items()
            if found["kind"] == "file" and getattr(self, name)
        }
        for name, found in self.field_specs().items():
            value = getattr(self, name)
            if found["kind"] == "source" and value:
                changes[name] = _absolute_source(value)
            elif found["kind"] == "sources" and value:
                changes[name] = tuple(_absolute_source(v) for v in value)
        return dataclasses.replace(self, **changes)

    def with_changes(self, **changes: Any) -> Self:
        """The same request with some fields changed (``replace`` is a field of the data set requests)."""
        return dataclasses.replace(self, **changes)


# --- text forms shared by the command line and old job rows ------------------------------------------


def parse_entities_text(text: str) -> tuple[str, tuple[str, ...]]:
    """``user:A,user:B`` (or ``cell:X``) -> ("user", ("A", "B")); all items must be of one kind."""
    kinds, keys = set(), []
    for item in str(text).split(","):
        kind, _, key = item.strip().partition(":")
        if kind not in ENTITY_KINDS or not key.strip():
            raise InputError(f"expected user:ID or cell:ID, got {shown_value(item.strip())}", field="entities")
        kinds.add(kind)
        keys.append(key.strip())
    if len(kinds) > 1:
        raise InputError("expected entities of one kind (all user:... or all cell:...)", field="entities")
    return kinds.pop(), tuple(keys)


def parse_sampler_text(text: str) -> tuple[str, int]:
    """``ddpm`` | ``ddim`` | ``ddim:STEPS`` -> (sampler, DDIM steps); the steps are 10 for a bare ddim
    and unused by ddpm (which takes every diffusion step)."""
    text = str(text)
    if text in SAMPLERS:
        return text, ForecastRequest.default("sampler_steps")
    if text.startswith("ddim:"):
        try:
            return "ddim", int(text[5:])
        except ValueError:
            pass
    raise InputError(f"expected ddpm, ddim or ddim:STEPS, got {shown_value(text)}", field="sampler")


def parse_location_text(text: str) -> tuple[str, tuple[str, ...]]:
    """``habitual`` | ``sampled`` | ``stay`` | ``observed`` | ``cell:KEY[,KEY...]`` -> (location, cells)."""
    text = str(text)
    if text.startswith("cell:"):
        cells = tuple(key.strip() for key in text[5:].split(",") if key.strip())
        if not cells:
            raise InputError("expected cell:ID[,ID...] with at least one cell", field="cells")
        return "cells", cells
    if text in LOCATIONS and text != "cells":
        return text, ()
    raise InputError(
        f"expected habitual, sampled, stay, observed or cell:ID[,ID...], got {shown_value(text)}", field="location"
    )


def executor_problems(request: Any, errors: dict[str, str]) -> dict[str, str]:
    """The ``executor`` field's problem, if any, for a request's ``relations`` (engine/executors.py)."""
    text = getattr(request, "executor", None)
    if "executor" in errors or not isinstance(text, str):
        return {}
    message = check_executor_text(text)
    return {"executor": message} if message else {}


def parse_scope_text(text: str) -> tuple[str, tuple[str, ...], tuple[float, ...]]:
    """A load run's scope: ``cell:ID[,ID...]`` | ``area:all`` | ``box:SOUTH,WEST,NORTH,EAST`` (degrees)
    -> (kind, cell keys, box)."""
    text = str(text).strip()
    if text.startswith("cell:"):
        cells = tuple(dict.fromkeys(key.strip() for key in text[5:].split(",") if key.strip()))
        if not cells:
            raise InputError("expected cell:ID[,ID...] with at least one cell", field="scope")
        return "cells", cells, ()
    if text == "area:all":
        return "all", (), ()
    if text.startswith("box:"):
        try:
            box = tuple(float(v) for v in text[4:].split(","))
        except ValueError:
            box = ()
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise InputError(f"expected box:SOUTH,WEST,NORTH,EAST in degrees, got {shown_value(text)}", field="scope")
        south, west, north, east = box
        if not (-90 <= south < north <= 90 and -180 <= west < east <= 180):
            raise InputError(
                "expected a box with -90 <= south < north <= 90 and -180 <= west < east <= 180, "
                f"got {shown_value(text)}",
                field="scope",
            )
        return "box", (), box
    raise InputError(
        f"expected cell:ID[,ID...], area:all or box:SOUTH,WEST,NORTH,EAST, got {shown_value(text)}", field="scope"
    )


def sampler_text(sampler: str, steps: int) -> str:
    """The short label of a sampler: ``ddpm`` or ``ddim:STEPS``."""
    return "ddpm" if sampler == "ddpm" else f"ddim:{steps}"


def _upgrade_forecast_texts(params: dict) -> dict:
    """Job rows and stored runs written with the text forms (``entity``, ``sampler`` = ``ddim:10``,
    ``location`` = ``cell:KEY``) in today's fields."""
    if isinstance(params.get("entity"), str) and "entities" not in params:
        kind, keys = parse_entities_text(params.pop("entity"))
        params["entity_kind"], params["entities"] = kind, list(keys)
        if "noise" not in params and "model_sha256" in params:  # a run stored before the option: independent
            params["noise"] = "independent"
    if isinstance(params.get("sampler"), str) and "sampler_steps" not in params:
        params["sampler"], params["sampler_steps"] = parse_sampler_text(params["sampler"])
    if isinstance(params.get("location"), str) and params["location"].startswith("cell:") and "cells" not in params:
        params["location"], cells = parse_location_text(params["location"])
        params["cells"] = list(cells)
    return params


# --- data -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CityRequest(Request):
    """Generate a synthetic city (engine/data/city.py) and store it as a data set."""

    KIND: ClassVar[str] = "city.build"
    TITLE: ClassVar[str] = "Build a synthetic city"

    users: int = spec(int, 500, low=1, high=100_000, help="number of users")
    cells: int = spec(int, 400, low=8, high=20_000, help="number of cells")
    seed: int = spec(int, 0, low=0, high=SEED_MAX, help="random seed: another seed gives another city")
    days: int = spec(
        int,
        14,
        low=1,
        high=60,
        help="days of hourly data (two weeks, so that a weekend is in the training days; training says when "
        "a split needs more)",
    )
    env_effect: float = spec(
        float,
        1.0,
        low=0.0,
        high=5.0,
        help="strength of the environment's influence on service use; 0 removes it entirely",
    )
    center_lat: float = spec(float, 31.2304, low=-90.0, high=90.0, help="latitude of the city centre")
    center_lon: float = spec(float, 121.4737, low=-180.0, high=180.0, help="longitude of the city centre")
    radius_km: float = spec(float, 5.0, low=0.1, high=100.0, help="city radius in km")
    name: str | None = spec(str, None, max_length=200, help="data set name (default synthetic-seed<SEED>)")
    replace: bool = spec(bool, False, help="replace a data set of the same name")


@dataclass(frozen=True)
class AggregateRequest(Request):
    """A data set whose entities are cells, summed from a user-level one (engine/data/aggregate.py)."""

    KIND: ClassVar[str] = "data.aggregate"
    TITLE: ClassVar[str] = "Sum a data set to its cells"

    dataset: str | None = spec(str, None, max_length=200, help="the user-level data set (default: the active one)")
    to: str = spec(str, "cells", choices=("cells",), help="what to sum to: cells (each cell's users per hour)")
    name: str | None = spec(str, None, max_length=200, help="the new data set's name (default: <source>-cells)")
    replace: bool = spec(bool, False, help="replace a data set of the same name")


@dataclass(frozen=True)
class IngestTableRequest(Request):
    """Ingest the documented long format (docs/data-formats.md)."""

    KIND: ClassVar[str] = "ingest.table"
    TITLE: ClassVar[str] = "Ingest a traffic table"

    records: str = spec("file", help="records file (.csv or .parquet)")
    cells: str = spec("file", help="cells file (.csv or .parquet)")
    mapping: str | None = spec("file", None, help="JSON column mapping")
    entity_kind: str | None = spec(
        str, None, choices=ENTITY_KINDS, help="what the records' entity_id is (default: the mapping's, else user)"
    )
    timezone: str | None = spec(
        str, None, max_length=64, help="IANA time zone of naive timestamps (default: the mapping's, else UTC)"
    )
    name: str | None = spec(str, None, max_length=200, help="data set name (default: the records file's stem)")
    replace: bool = spec(bool, False, help="replace a data set of the same name")
    uploads_dir: str | None = spec(
        str, None, max_length=1000, internal=True, help="the folder of uploaded files, removed when the job ends"
    )
    names: dict = spec(dict, {}, internal=True, help="{uploaded path: the file's own name}, for messages")

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        return _upload_problems(self.names, self.timezone, errors)


@dataclass(frozen=True)
class IngestMatrixRequest(Request):
    """Ingest wide entity x time matrices, one per service, entities as cells (engine/data/ingest_matrix.py)."""

    KIND: ClassVar[str] = "ingest.matrix"
    TITLE: ClassVar[str] = "Ingest traffic matrices"

    values: tuple[str, ...] = spec(
        "sources",
        max_length=MATRIX_SERVICES,
        help="one entities x time steps matrix per service: FILE.npy, FILE.csv or FILE.npz[:KEY] "
        "(the flag once per service)",
    )
    start: str = spec(str, max_length=40, help="the time of the first column, ISO 8601 (e.g. 2024-03-04T00:00)")
    step: str = spec(str, "1h", choices=MATRIX_STEPS, help="the columns' time step; shorter steps are summed to hours")
    services: tuple[str, ...] = spec(
        "keys", (), max_length=MATRIX_SERVICES, help="the services' names, one per matrix (default: keys or file names)"
    )
    embeddings: str | None = spec(
        "source", None, help="environment vectors, one row per entity: FILE.npy, FILE.csv or FILE.npz[:KEY]"
    )
    unit_bytes: float = spec(float, 1.0, low=1e-9, high=1e15, help="bytes per unit of the values (e.g. 1000000 for MB)")
    timezone: str = spec(str, "UTC", max_length=64, help="IANA time zone of a start without an offset")
    name: str | None = spec(str, None, max_length=200, help="data set name (default: the first file's stem)")
    replace: bool = spec(bool, False, help="replace a data set of the same name")
    uploads_dir: str | None = spec(
        str, None, max_length=1000, internal=True, help="the folder of uploaded files, removed when the job ends"
    )
    names: dict = spec(dict, {}, internal=True, help="{uploaded path: the file's own name}, for messages")

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        problems = _upload_problems(self.names, self.timezone, errors)
        named = self.services and "services" not in errors and "values" not in errors
        if named and len(self.services) != len(self.values):
            problems["services"] = f"{len(self.services)} names for {len(self.values)} matrices; give one per matrix"
        return problems


@dataclass(frozen=True)
class IngestTsinghuaRequest(Request):
    """Ingest the Tsinghua App Usage data set's own files."""

    KIND: ClassVar[str] = "ingest.tsinghua"
    TITLE: ClassVar[str] = "Ingest the Tsinghua App Usage data"

    trace: str = spec("file", help="App_usage_trace.txt")
    app2category: str = spec("file", help="App2Category.txt")
    categories: str = spec("file", help="Categorys.txt")
    poi: str = spec("file", help="base_poi.txt")
    coords: str | None = spec(
        "file", None, help="optional CSV cell_id,lat,lon of base stations (the public release has none)"
    )
    all_services: bool = spec(bool, False, help="keep all 20 app categories instead of the paper's 10")
    name: str = spec(str, "tsinghua", max_length=200, help="data set name")
    replace: bool = spec(bool, False, help="replace a data set of the same name")
    uploads_dir: str | None = spec(
        str, None, max_length=1000, internal=True, help="the folder of uploaded files, removed when the job ends"
    )
    names: dict = spec(dict, {}, internal=True, help="{uploaded path: the file's own name}, for messages")

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        return _names_problem(self.names)


def _known_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _upload_problems(names: Any, timezone: str | None, errors: dict[str, str]) -> dict[str, str]:
    """An ingest's own checks: the uploaded files' names, and the time zone (when given) is an IANA one."""
    problems = _names_problem(names)
    if timezone and "timezone" not in errors and not _known_zone(timezone):
        problems["timezone"] = (
            f"unknown time zone {timezone!r}; expected an IANA name such as Asia/Shanghai, Europe/Berlin or UTC"
        )
    return problems


def _names_problem(names: Any) -> dict[str, str]:
    if isinstance(names, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        return {}
    return {"names": "expected an object {path: file name}"}


@dataclass(frozen=True)
class EnvRequest(Request):
    """Tiles, descriptions and CLIP embeddings of a data set's cells (engine/env/pipeline.py)."""

    KIND: ClassVar[str] = "env.build"
    TITLE: ClassVar[str] = "Build the environment (tiles, descriptions, CLIP)"

    dataset: str | None = spec(str, None, max_length=200, help="data set name (default: the active one)")
    tiles: str | None = spec(
        str,
        None,
        max_length=1000,
        help="synthetic | dir:PATH | mbtiles:PATH | xyz:URL_TEMPLATE (default: synthetic for "
        "synthetic cities, else keep the stored tiles)",
    )
    describer: str = spec(
        str, "template", choices=DESCRIBERS, help="template (offline, default) or an OpenAI-compatible chat endpoint"
    )
    llm_url: str = spec(
        str,
        "http://127.0.0.1:11434/v1",
        max_length=1000,
        help="base URL of the OpenAI-compatible endpoint (default: a local Ollama)",
    )
    llm_model: str = spec(str, "llama3.1", max_length=200, help="model name at that endpoint")
    regenerate: bool = spec(bool, False, help="re-render tiles and rewrite descriptions")
    clip_init: str | None = spec(
        str, None, max_length=1000, help="start from a local pretrained open_clip checkpoint (nothing is downloaded)"
    )
    clip_arch: str = spec(
        str,
        "auto",
        max_length=200,
        help="architecture: auto (default: lsdm-clip-d, the descriptor image tower, for data sets of fewer "
        "than 500 tiles, else lsdm-clip-s, the ViT), lsdm-clip-s, lsdm-clip-d, or an open_clip name for "
        "--clip-init",
    )
    train_encoder: bool = spec(
        bool, False, help="train a new encoder even on the default city (which otherwise uses the shipped one)"
    )
    frozen: bool = spec(bool, False, help="use the --clip-init checkpoint as is")
    encoder: str | None = spec(
        str,
        None,
        max_length=200,
        help="embed with this registered encoder as is (e.g. another city's, to evaluate its "
        "model here); default: the shipped one on the default city, else train one",
    )
    clip_epochs: int = spec(int, 40, low=0, high=1000, help="CLIP training epochs")
    seed: int = spec(int, 0, low=0, high=SEED_MAX, help="training seed")
    a: float = spec(float, 0.5, low=0.0, high=10.0, help="Eq. 9 weight of the image embedding")
    b: float = spec(float, 0.5, low=0.0, high=10.0, help="Eq. 9 weight of the text embedding")
    env_mode: str = spec(
        str,
        "auto",
        choices=ENV_MODES,
        help="which embeddings form z_env: auto (both, or the text embedding alone when the encoder's held-out "
        "retrieval is not clearly above chance), both, image, text or none (ablations)",
    )
    executor: str = spec(
        str,
        "local",
        max_length=300,
        help="where the cells are embedded: local (this process), ray (a Ray instance on this machine) or "
        "ray:ADDRESS (a Ray cluster)",
    )
    workers: int | None = spec(int, None, low=1, high=10_000, help="Ray actors (default: one per CPU of the cluster)")

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        found = executor_problems(self, errors)
        if self.encoder and (self.train_encoder or self.clip_init):
            found["encoder"] = (
                "embeds with a registered encoder as is: it cannot be combined with training a new encoder or a "
                "CLIP checkpoint"
            )
        return found

    def describer_options(self) -> dict:
        return {"base_url": self.llm_url, "model": self.llm_model} if self.describer == "openai" else {}


# --- models ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRequest(Request):
    """Train a forecaster (engine/train.py)."""

    KIND: ClassVar[str] = "train"
    TITLE: ClassVar[str] = "Train a forecaster"

    config: str = spec(
        str,
        "lsdm",
        max_length=1000,
        help="a configuration name: lsdm, tiny or one of the ablations in engine/model/config.py "
        "CONFIGS (docs/model.md#configurations), or a JSON file of model settings",
    )
    epochs: int | None = spec(int, None, low=1, high=10_000, help="maximum epochs (default: the config's)")
    seed: int | None = spec(int, None, low=0, high=SEED_MAX, help="seed (default: the config's)")
    split: str = spec(
        str,
        "time",
        choices=SPLITS,
        help="time: train on the first days, validate on the next, test on the last; "
        "users: also hold out a share of the users",
    )
    max_minutes: float | None = spec(float, None, low=0.1, high=10_000.0, help="stop after this training time")
    activate: bool = spec(bool, True, help="make it the active model")
    dataset: str | None = spec(str, None, max_length=200, help="data set name (default: the active one)")
    device: str | None = spec(str, None, max_length=20, help="cpu or cuda (default: cuda when present)")

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        if errors.keys() & {"config", "epochs", "seed"}:
            return {}
        try:  # the configuration's own checks (a name it knows, a file of settings it can read)
            self.model_config()
        except InputError as error:  # the file and the key it names stay in the message: "c.json: heads: ..."
            where = [str(part) for part in (error.file, error.field) if part]
            return {"config": ": ".join([*where, error.message])}
        return {}

    def model_config(self) -> tuple[str, Any]:
        """The configuration's name and its ModelConfig, with this request's epochs and seed."""
        # Imported here: the engine.model package imports torch (1.3 s of 1.7 s, `python -X importtime`),
        # and requests are read by every `lsdm` command, `lsdm --help` included, and every form.
        from engine.model.config import resolve_config

        return resolve_config(self.config, epochs=self.epochs, seed=self.seed)


@dataclass(frozen=True)
class EvaluateRequest(Request):
    """Score a model against its comparison models and the baselines (engine/evaluation/)."""

    KIND: ClassVar[str] = "evaluate"
    TITLE: ClassVar[str] = "Evaluate against the baselines"

    model_id: int | None = spec(int, None, low=1, help="model id (default: the active model)")
    samples: int = spec(int, 32, low=1, high=256, help="samples per test window, their mean is the point forecast")
    path_samples: int = spec(int, 16, low=1, high=256, help="sample paths per entity for the MSE by recursive step")
    steps: int = spec(int, 30, low=1, high=MAX_HORIZON, help="recursive steps for Fig. 8/9")
    path_users: int = spec(int, 100, low=1, high=100_000, help="entities in the recursive evaluation")
    location: str = spec(
        str,
        "observed",
        choices=EVALUATION_LOCATIONS,
        help="cells of the forecast hours: observed (those the data recorded, as in training and "
        "the paper) or habitual (each user's usual cell: the location forecast too)",
    )
    train_missing: bool = spec(bool, True, help="train missing comparison models")
    include_arima: bool = spec(bool, True, help="include ARIMA (it takes about 2 minutes)")
    include_learned: bool = spec(
        bool, True, help="include the learned baselines LightGBM and PatchTST (fitted first: a few minutes each)"
    )
    quick: bool = spec(
        bool,
        False,
        help="a quick evaluation (a few minutes): the test day of 50 fixed entities, fewer samples, no ARIMA, no "
        "learned baselines, no comparison model trained",
    )
    fracast_entities: int = spec(
        int,
        0,
        low=0,
        high=10_000,
        help="score the pretrained fracast model on the test day of this many entities, beside every row on the "
        "same windows (0: left out; about 0.1 s per entity, service and hour on 2 cores)",
    )
    dataset: str | None = spec(
        str, None, max_length=200, help="score on this data set's test day (default: the model's own)"
    )
    level: str = spec(
        str,
        "user",
        choices=EVALUATION_LEVELS,
        help="user: the paper's tables (each entity's next hour); cell: each cell's load summed bottom-up from "
        "the users' paths against a model trained on the cells' summed traffic and the cells' own baselines",
    )
    cells: int = spec(int, 20, low=1, high=100_000, help="cells scored at the cell level (the busiest ones)")


# --- forecasts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForecastRequest(Request):
    """A probabilistic recursive forecast of some entities (engine/forecast.py)."""

    KIND: ClassVar[str] = "forecast"
    TITLE: ClassVar[str] = "Forecast"
    # A stored run also records its model's checksum, a what-if's two runs their role and scenario, and an
    # every-entity run how many entities it forecast.
    RECORD_KEYS: ClassVar[tuple[str, ...]] = ("model_sha256", "role", "scenario", "entities_count")

    start: int = spec(int, low=0, help="first forecast hour (hours since the data set's origin)")
    entities: tuple[str, ...] = spec(
        "keys", (), max_length=MAX_ENTITIES, help="the keys of the entities to forecast (or every: all of them)"
    )
    entity_kind: str = spec(str, "user", choices=ENTITY_KINDS, help="what the entities are")
    horizon: int = spec(int, 24, low=1, high=MAX_HORIZON, help="hours to forecast")
    samples: int = spec(int, 32, low=1, high=MAX_SAMPLES, help="sample paths")
    sampler: str = spec(str, "ddim", choices=SAMPLERS, help="ddpm (faithful, all steps) or ddim")
    sampler_steps: int = spec(int, 10, low=1, high=1000, help="DDIM steps (at most the model's diffusion steps)")
    location: str = spec(
        str,
        "habitual",
        choices=LOCATIONS,
        help="where the entities are during the forecast: habitual (the most frequent cell at "
        "that hour), sampled (each path draws a cell per hour from the entity's history), stay, observed "
        "(the recorded cells, for backtests) or cells (given)",
    )
    cells: tuple[str, ...] = spec(
        "keys", (), max_length=MAX_HORIZON, help="the cells of location 'cells', one per hour (the last one repeated)"
    )
    guidance: float = spec(float, 1.0, low=0.0, high=MAX_GUIDANCE, help="classifier-free guidance scale")
    seed: int = spec(int, 0, low=0, high=SEED_MAX, help="seed")
    noise: str = spec(
        str,
        "antithetic",
        choices=NOISE_MODES,
        help="antithetic: each path paired with one driven by the opposite noise, for a steadier "
        "mean; independent: every path on its own noise",
    )
    model_id: int | None = spec(int, None, low=1, help="model id (default: the active model)")
    dataset: str | None = spec(str, None, max_length=200, help="data set name (default: the active one)")
    device: str | None = spec(str, None, max_length=20, help="cpu or cuda (default: cuda when present)")
    every: bool = spec(
        bool, False, help="forecast every entity of the data set (--entity all), written as Parquet parts"
    )
    out: str | None = spec(
        str,
        None,
        max_length=4096,
        help="with every: a new folder for the Parquet parts (default: <data dir>/runs/forecast-<time>)",
    )
    executor: str = spec(
        str,
        "local",
        max_length=300,
        help="with every: where the forecasts run: local, ray (a Ray instance on this machine) or ray:ADDRESS",
    )
    workers: int | None = spec(int, None, low=1, high=10_000, help="Ray actors (default: one per CPU of the cluster)")

    @classmethod
    def upgrade(cls, params: dict) -> dict:
        return _upgrade_forecast_texts(params)

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        found = errors
        errors = {}
        if "entities" not in found and "every" not in found:
            if self.every and self.entities:
                errors["entities"] = "give entities or all (every entity), not both"
            elif not self.every and not self.entities:
                errors["entities"] = "expected at least one entity (user:ID or cell:ID), or all"
        errors.update(executor_problems(self, found))
        if (self.out is not None or self.executor != "local" or self.workers is not None) and not self.every:
            name = "out" if self.out is not None else "executor" if self.executor != "local" else "workers"
            errors[name] = "only with every entity (--entity all): one run's few entities run in one process"
        if self.location == "cells" and not self.cells:
            errors["cells"] = "location 'cells' needs at least one cell"
        if self.location != "cells" and self.cells:
            errors["cells"] = f"cells are given only with location 'cells' (location is {self.location!r})"
        return errors

    @property
    def antithetic(self) -> bool:
        return self.noise == "antithetic"

    @property
    def sampler_label(self) -> str:
        return sampler_text(self.sampler, self.sampler_steps)


@dataclass(frozen=True)
class WhatIfRequest(Request):
    """Two forecasts of one entity with the same seed: as things are and as a scenario changes them
    (engine/whatif.py)."""

    KIND: ClassVar[str] = "whatif"
    TITLE: ClassVar[str] = "What-if"
    # A stored scenario also records its model, data set, and the descriptions and notes of its edits.
    RECORD_KEYS: ClassVar[tuple[str, ...]] = ("model_id", "model_sha256", "dataset", "descriptions", "notes")

    entity: str = spec(str, max_length=200, help="the key of the entity")
    start: int = spec(int, low=0, help="first forecast hour (hours since the data set's origin)")
    entity_kind: str = spec(str, "user", choices=ENTITY_KINDS, help="what the entity is")
    horizon: int = spec(int, 12, low=1, high=MAX_HORIZON, help="hours to forecast (two forecasts)")
    samples: int = spec(int, 32, low=1, high=MAX_SAMPLES, help="sample paths")
    sampler: str = spec(str, "ddim", choices=SAMPLERS, help="ddpm (faithful, all steps) or ddim")
    sampler_steps: int = spec(int, 10, low=1, high=1000, help="DDIM steps (at most the model's diffusion steps)")
    seed: int = spec(int, 0, low=0, high=SEED_MAX, help="seed (both runs draw the same noise)")
    scenario: dict = spec(
        dict, {}, help="what is different: location, cell_edits, a, b, guidance (engine/whatif.py Scenario)"
    )
    name: str | None = spec(str, None, max_length=200, help="the scenario's name (default: what it changes)")

    @classmethod
    def upgrade(cls, params: dict) -> dict:
        if isinstance(params.get("entity"), str) and ":" in params["entity"] and "entity_kind" not in params:
            kind, keys = parse_entities_text(params["entity"])
            if len(keys) != 1:
                raise InputError(f"a what-if compares forecasts of one entity, got {len(keys)}", field="entity")
            params["entity_kind"], params["entity"] = kind, keys[0]
        if isinstance(params.get("sampler"), str) and "sampler_steps" not in params:
            params["sampler"], params["sampler_steps"] = parse_sampler_text(params["sampler"])
        return params

    @property
    def sampler_label(self) -> str:
        return sampler_text(self.sampler, self.sampler_steps)


@dataclass(frozen=True)
class LoadRequest(Request):
    """The load of some cells (or an area, or the whole data set) summed from every user's sample paths,
    with its capacity risk (engine/load/core.py)."""

    KIND: ClassVar[str] = "load"
    TITLE: ClassVar[str] = "Cell and area load"
    RECORD_KEYS: ClassVar[tuple[str, ...]] = ("model_sha256", "model_id_used", "dataset_used")

    scope: str = spec(
        str,
        max_length=100_000,
        help="cell:ID[,ID...] (one or more cells), area:all (the whole data set) or box:SOUTH,WEST,NORTH,EAST "
        "(the cells inside, in degrees)",
    )
    start: int = spec(int, low=0, help="first forecast hour (hours since the data set's origin)")
    horizon: int = spec(int, 24, low=1, high=MAX_HORIZON, help="hours to forecast")
    samples: int = spec(int, 32, low=2, high=MAX_SAMPLES, help="sample paths (each user's and so each cell's)")
    location: str = spec(
        str,
        "sampled",
        choices=LOAD_LOCATIONS,
        help="where the users will be: sampled (each path draws a cell per hour from the user's history), "
        "habitual, stay or observed (the recorded cells, for backtests)",
    )
    sampler: str = spec(str, "ddim", choices=SAMPLERS, help="ddpm (faithful, all steps) or ddim")
    sampler_steps: int = spec(int, 10, low=1, high=1000, help="DDIM steps (at most the model's diffusion steps)")
    seed: int = spec(int, 0, low=0, high=SEED_MAX, help="seed")
    noise: str = spec(str, "antithetic", choices=NOISE_MODES, help="antithetic or independent noise (as forecasts)")
    risk_level: float = spec(
        float, 0.1, low=0.0, high=1.0, help="an hour is at risk when P(load > capacity) is at least this"
    )
    model_id: int | None = spec(int, None, low=1, help="model id (default: the active model)")
    dataset: str | None = spec(str, None, max_length=200, help="data set name (default: the active one)")
    device: str | None = spec(str, None, max_length=20, help="cpu or cuda (default: cuda when present)")
    name: str | None = spec(str, None, max_length=200, help="a name for the run (default: its scope)")
    executor: str = spec(
        str,
        "local",
        max_length=300,
        help="where the users' forecasts run: local (this process), ray (a Ray instance on this machine) or "
        "ray:ADDRESS (a Ray cluster: auto, HOST:PORT or ray://HOST:10001)",
    )
    workers: int | None = spec(int, None, low=1, high=10_000, help="Ray actors (default: one per CPU of the cluster)")

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        found = executor_problems(self, errors)
        if "scope" in errors or not isinstance(self.scope, str):
            return found
        try:
            parse_scope_text(self.scope)
        except InputError as error:
            found["scope"] = error.message
        return found

    @property
    def antithetic(self) -> bool:
        return self.noise == "antithetic"

    @property
    def sampler_label(self) -> str:
        return sampler_text(self.sampler, self.sampler_steps)


LOAD_EVENTS = ("outage", "event")


@dataclass(frozen=True)
class LoadWhatIfRequest(Request):
    """A cell goes down, or an event brings extra users to it: the neighbourhood's load and risk against
    the baseline, same seed, paired paths (engine/load/whatif.py)."""

    KIND: ClassVar[str] = "load.whatif"
    TITLE: ClassVar[str] = "Cell outage or event"
    RECORD_KEYS: ClassVar[tuple[str, ...]] = ("model_sha256", "model_id_used", "dataset_used", "rehomed_to")

    cell: str = spec(str, max_length=200, help="the cell that goes down, or where the event is")
    start: int = spec(int, low=0, help="first forecast hour (hours since the data set's origin)")
    what: str = spec(
        str,
        "outage",
        choices=LOAD_EVENTS,
        help="outage: the cell's users are re-homed to the nearest working cell; event: extra users are there",
    )
    at: int = spec(int, 0, low=0, high=MAX_HORIZON - 1, help="forecast hour it begins (0: the first)")
    duration: int = spec(int, 4, low=1, high=MAX_HORIZON, help="hours it lasts")
    visitors: int = spec(int, 100, low=1, high=5000, help="event: the extra users present")
    profile: str | None = spec(
        str,
        None,
        max_length=200,
        help="event: the user whose history the visitors copy (default: the user recorded most often at the cell)",
    )
    neighbours: int = spec(int, 6, low=1, high=50, help="the nearest cells compared with the cell itself")
    horizon: int = spec(int, 24, low=1, high=MAX_HORIZON, help="hours to forecast")
    samples: int = spec(int, 32, low=2, high=MAX_SAMPLES, help="sample paths")
    location: str = spec(str, "sampled", choices=LOAD_LOCATIONS, help="where the users will be (as lsdm load)")
    sampler: str = spec(str, "ddim", choices=SAMPLERS, help="ddpm (faithful, all steps) or ddim")
    sampler_steps: int = spec(int, 10, low=1, high=1000, help="DDIM steps (at most the model's diffusion steps)")
    seed: int = spec(int, 0, low=0, high=SEED_MAX, help="seed (the baseline and the scenario draw the same noise)")
    noise: str = spec(str, "antithetic", choices=NOISE_MODES, help="antithetic or independent noise (as forecasts)")
    risk_level: float = spec(
        float, 0.1, low=0.0, high=1.0, help="an hour is at risk when P(load > capacity) is at least this"
    )
    model_id: int | None = spec(int, None, low=1, help="model id (default: the active model)")
    dataset: str | None = spec(str, None, max_length=200, help="data set name (default: the active one)")
    device: str | None = spec(str, None, max_length=20, help="cpu or cuda (default: cuda when present)")
    name: str | None = spec(str, None, max_length=200, help="the scenario's name (default: what it changes)")

    def relations(self, errors: dict[str, str]) -> dict[str, str]:
        if errors.keys() & {"at", "duration", "horizon"}:
            return {}
        if self.at >= self.horizon:
            return {"at": f"begins at forecast hour {self.at}, beyond the {self.horizon} hours forecast"}
        if self.at + self.duration > self.horizon:
            return {
                "duration": f"hours {self.at} to {self.at + self.duration - 1} reach beyond the {self.horizon} hours "
                f"forecast; at most {self.horizon - self.at}"
            }
        return {}

    @property
    def antithetic(self) -> bool:
        return self.noise == "antithetic"

    @property
    def sampler_label(self) -> str:
        return sampler_text(self.sampler, self.sampler_steps)


REQUEST_TYPES: tuple[type[Request], ...] = (
    CityRequest,
    AggregateRequest,
    IngestTableRequest,
    IngestTsinghuaRequest,
    IngestMatrixRequest,
    EnvRequest,
    TrainRequest,
    EvaluateRequest,
    ForecastRequest,
    WhatIfRequest,
    LoadRequest,
    LoadWhatIfRequest,
)
