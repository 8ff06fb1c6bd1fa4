"""pyalloc: malloc, free, realloc and calloc in Python over real memory."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"pyalloc runs on Linux only (it uses /dev/shm, /proc, madvise(MADV_REMOVE) and flock);"
        f" this system is {sys.platform!r}"
    )

from . import _engine

COMPILED, ENGINE = _engine.install(os.path.dirname(os.path.abspath(__file__)))
"""``COMPILED``: True when the compiled engine runs; ``ENGINE`` says why either way."""

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
    "COMPILED",
    "ENGINE",
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
