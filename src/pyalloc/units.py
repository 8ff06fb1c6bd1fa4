"""Byte counts as people read them."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
