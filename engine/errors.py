"""Errors meant for people: which file, which line and field, what was expected; `plural`: counts in words."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path


class InputError(ValueError):
    """Bad input data or options. ``str()`` is the whole message shown to the user.

    ``line`` is the 1-based physical line of a text file (the header is line 1 when there is one),
    or the 1-based row for Parquet.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        also: dict[str, str] | None = None,
    ) -> None:
        self.message = message
        self.also = dict(also or {})  # the other fields' problems, {field: message}
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.hint = hint
        where = ""
        if self.file:
            where = self.file + (f":{line}" if line is not None else "")
        parts = [where] if where else []
        if field:
            parts.append(f"field {field!r}")
        text = ": ".join([*parts, message])
        if self.also:
            text += f" (also {'; '.join(f'{name}: {problem}' for name, problem in self.also.items())})"
        if hint:
            text += f" ({hint})"
        super().__init__(text)

    def with_field(self, field: str | None, names: Mapping[str, str] | None = None) -> InputError:
        """The same error naming ``field`` instead, and the other fields by ``names`` where it has them
        (the command line names its flags at its edge)."""
        also = {(names or {}).get(name, name): problem for name, problem in self.also.items()}
        return InputError(self.message, file=self.file, line=self.line, field=field, hint=self.hint, also=also)


# --- words for counts in messages and pages ---------------------------------------------------------
IRREGULAR = {"entity": "entities", "category": "categories", "city": "cities", "hour": "hours"}


def plural(count: float | int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun`` agreeing in number, the count with thousands separators (whole when it is)."""
    whole = float(count).is_integer()
    shown = f"{int(count):,}" if whole else f"{count:,.1f}"
    if whole and abs(int(count)) == 1:
        return f"{shown} {noun}"
    return f"{shown} {many or IRREGULAR.get(noun) or noun + 's'}"


# --- files a command writes ----------------------------------------------------------------------------------


def check_output_file(
    path: str | Path, suffixes: tuple[str, ...], *, replace: bool = False, field: str = "out"
) -> Path:
    """A file a command is about to write: a file name (not a folder) with one of ``suffixes``, in a folder
    that exists, and not one the user already has unless ``replace`` (nothing they made is replaced unasked).
    Writers then write beside it and rename, so the file appears whole or not at all."""
    path = Path(path)
    kinds = " or ".join(suffixes)
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a {kinds} file name in it", field=field)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"expected a {kinds} file name, got {path.name!r}", field=field)
    if not path.parent.is_dir():
        raise InputError(f"no such folder: {path.parent}", field=field)
    if path.exists() and not replace:
        raise InputError(f"{path} exists already", field=field, hint="choose another name, or pass --replace")
    return path


# --- interrupting long work ----------------------------------------------------------------------------------

_INTERRUPT = threading.local()


def set_interrupt_check(check: Callable[[], None] | None) -> None:
    """In this thread, have long loops call ``check`` (a job's cancellation check, which raises to stop): the
    sampler calls it before every denoising step, so a cancelled forecast stops within one step instead of at
    the end of a forecast hour (58 s for the whole city on 2 cores). None removes it."""
    _INTERRUPT.check = check


def interrupt_check() -> None:
    """Call this thread's check (``set_interrupt_check``), if any."""
    check = getattr(_INTERRUPT, "check", None)
    if check is not None:
        check()
