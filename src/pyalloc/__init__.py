"""pyalloc: malloc, free, realloc and calloc in Python over real memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .allocators import ALL_POLICIES, make_heap
from .buddy import BuddyHeap
from .errors import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError
from .heap import POLICIES, Heap
from .mapped import MappedHeap
from .shared import SharedHeap

if TYPE_CHECKING:
    from .pool import Pool

__all__ = [
    "ALL_POLICIES",
    "POLICIES",
    "BuddyHeap",
    "DoubleFreeError",
    "HeapCorruptionError",
    "Heap",
    "HeapError",
    "InvalidPointerError",
    "MappedHeap",
    "Pool",
    "SharedHeap",
    "make_heap",
]


def __getattr__(name: str) -> object:
    # Pool needs the optional atomicshm package: import it only when asked for.
    if name == "Pool":
        from .pool import Pool

        return Pool
    raise AttributeError(f"module 'pyalloc' has no attribute {name!r}")
