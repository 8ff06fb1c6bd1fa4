"""pyalloc: malloc, free, realloc and calloc in Python over real memory."""

from __future__ import annotations

from .errors import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError
from .heap import POLICIES, Heap

__all__ = [
    "POLICIES",
    "DoubleFreeError",
    "HeapCorruptionError",
    "Heap",
    "HeapError",
    "InvalidPointerError",
]
