"""pyalloc: malloc, free, realloc and calloc in Python over real memory."""

from __future__ import annotations

from .errors import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError

__all__ = [
    "DoubleFreeError",
    "HeapCorruptionError",
    "HeapError",
    "InvalidPointerError",
]
