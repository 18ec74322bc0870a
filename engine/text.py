"""Words for counts in messages and pages: "1 user", "2 users", "12,000 windows"."""

from __future__ import annotations

IRREGULAR = {"entity": "entities", "category": "categories", "city": "cities", "hour": "hours"}


def plural(count: float | int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun`` agreeing in number, the count with thousands separators (whole when it is)."""
    whole = float(count).is_integer()
    shown = f"{int(count):,}" if whole else f"{count:,.1f}"
    if whole and abs(int(count)) == 1:
        return f"{shown} {noun}"
    return f"{shown} {many or IRREGULAR.get(noun) or noun + 's'}"
