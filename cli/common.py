"""What the command groups share: the flags of a request type, the argparse value types and how a
command prints its result.

A command that runs an operation takes the flags of its request type (engine/requests.py):
``add_request_flags`` makes one flag per field, named after the field (``path_users`` ->
``--path-users``) unless the command renames it, with the request's help and default; the command
builds the request with ``request_of(args)`` and the request checks the values (bounds, choices,
files), so the command line, the jobs and the forms accept the same values. A few flags stand for
several fields in a text form (``--entity user:A,user:B`` -> ``entity_kind``, ``entities``): those
are ``Compound`` flags. Errors name fields; ``flag_of`` turns a field into the flag that set it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.requests import Request

Commands = argparse._SubParsersAction  # what ``add_subparsers`` returns; each group adds its commands to it


@dataclass(frozen=True)
class Compound:
    """One flag whose text stands for several request fields; ``read`` turns the text into them."""

    flag: str
    fields: tuple[str, ...]
    read: Callable[[str], dict[str, Any]]
    metavar: str
    help: str


def add_request_flags(
    parser: argparse.ArgumentParser,
    request_type: type[Request],
    *,
    flags: Mapping[str, str | tuple[str, str]] | None = None,
    compounds: Sequence[Compound] = (),
) -> None:
    """One flag per field of ``request_type`` (internal fields have none), in the fields' order.

    ``flags`` renames fields' flags ({"model_id": "--model"}), optionally with the flag's own help
    ({"activate": ("--no-activate", "...")}); a bool field that is true by default gets a flag that
    turns it off (``--no-...``). Absent flags leave the request's default."""
    renamed = {name: flag if isinstance(flag, str) else flag[0] for name, flag in (flags or {}).items()}
    own_help = {name: flag[1] for name, flag in (flags or {}).items() if not isinstance(flag, str)}
    by_field = {name: compound for compound in compounds for name in compound.fields}
    field_flags: dict[str, str] = {}
    added: set[str] = set()
    for name, found in request_type.field_specs().items():
        if found["internal"]:
            continue
        compound = by_field.get(name)
        if compound is not None:
            if compound.flag not in added:
                added.add(compound.flag)
                required = any(request_type.field_specs()[f]["required"] for f in compound.fields)
                parser.add_argument(
                    compound.flag,
                    dest=_text_dest(compound),
                    metavar=compound.metavar,
                    required=required,
                    default=argparse.SUPPRESS,
                    help=compound.help,
                )
            field_flags[name] = compound.flag
            continue
        default, kind = found["default"], found["kind"]
        if kind is bool:
            flag = renamed.get(name, f"--no-{_dashed(name)}" if default else f"--{_dashed(name)}")
            parser.add_argument(
                flag,
                dest=name,
                action="store_false" if default else "store_true",
                default=argparse.SUPPRESS,
                help=own_help.get(name, f"not: {found['help']}" if default else found["help"]),
            )
        else:
            flag = renamed.get(name, f"--{_dashed(name)}")
            shown = f" (default {default})" if default not in (None, {}) and "default" not in found["help"] else ""
            metavar = "|".join(found["choices"]) if found["choices"] else flag[2:].upper().replace("-", "_")
            if kind is dict:
                metavar, shown = "JSON|@FILE", " (a JSON object, inline or @FILE)"
            if kind in ("source", "sources"):
                metavar = "FILE[:KEY]"
            parser.add_argument(
                flag,
                dest=name,
                type=_ARGUMENT_TYPES[kind],
                metavar=metavar,
                required=found["required"],
                default=argparse.SUPPRESS,
                help=found["help"] + shown,
                **({"action": "append"} if kind == "sources" else {}),  # the flag once per file
            )
        field_flags[name] = flag
    parser.set_defaults(request_type=request_type, field_flags=field_flags, compounds=tuple(compounds))


def request_of(args: argparse.Namespace) -> Request:
    """The request the flags describe (checked: the first bad field is an InputError)."""
    values = {name: getattr(args, name) for name in args.request_type.field_specs() if hasattr(args, name)}
    for compound in args.compounds:
        text = getattr(args, _text_dest(compound), None)
        if text is not None:
            values.update(compound.read(text))
    return args.request_type.from_params(values).checked()


def flag_of(args: argparse.Namespace, error: InputError) -> InputError:
    """The error naming the flag that set its field (unchanged when no flag did)."""
    flags = getattr(args, "field_flags", {})
    return error.with_field(flags.get(error.field, error.field), flags)


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _text_dest(compound: Compound) -> str:
    return "text_" + compound.flag.lstrip("-").replace("-", "_")


def _keys(text: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in text.split(",") if key.strip())


def _json_object(text: str) -> dict:
    """A JSON object given inline or as @FILE; an unreadable one is argparse's error naming the flag."""
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {error.strerror}") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


# argparse reads a flag's text as its field's kind; bounds, choices and files are the request's checks.
_ARGUMENT_TYPES: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    "file": str,
    "source": str,
    "sources": str,
    "keys": _keys,
    dict: _json_object,
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def bounded_int(flag: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (the message names the range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {value}")
        return value

    parse.__name__ = flag
    return parse


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def lat_lon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON such as 31.2304,121.4737, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise argparse.ArgumentTypeError(f"latitude must be in [-90, 90] and longitude in [-180, 180], got {text!r}")
    return lat, lon


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def emit(args: argparse.Namespace, payload: dict, lines: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("\n".join(lines))


def stderr_progress(enabled: bool) -> Callable[[str], None]:
    def report(message: str) -> None:
        if enabled:
            print(f"  {message}", file=sys.stderr, flush=True)

    return report
