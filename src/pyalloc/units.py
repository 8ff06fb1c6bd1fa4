"""Byte counts as the API takes them and as people read them."""

from __future__ import annotations

import operator


def as_int(value: object, what: str) -> int:
    """``value`` as an int: an int, or an integer such as numpy's through
    ``__index__``; TypeError for anything else, bool included."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
