"""pyalloc: malloc, free, realloc and calloc in Python over real memory."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING


def _runs_as_the_command() -> bool:
    """True when this process is the ``pyalloc`` command (its script, or
    ``python -m pyalloc.cli``) rather than a program importing the package."""
    if os.path.basename(sys.argv[0]) == "pyalloc":
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("pyalloc")


if not sys.platform.startswith("linux"):
    _why = (
        "pyalloc runs on Linux only (it uses /dev/shm, /proc, madvise(MADV_REMOVE)"
        f" and process-shared robust mutexes); this system is {sys.platform!r}"
    )
    if _runs_as_the_command():
        # A command's user gets the one line, not the traceback of an import.
        raise SystemExit(f"pyalloc: {_why}")
    raise ImportError(_why)

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
