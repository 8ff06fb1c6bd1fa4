"""A process's shared heaps: a forked child gets a lock of its own on each,
and an exiting process closes each (one it holds the lock of stays mapped:
see ``SharedHeap.close``)."""

from __future__ import annotations

import atexit
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .heap import SharedHeap

_open_heaps: weakref.WeakSet[SharedHeap] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for heap in list(_open_heaps):
        heap._after_fork_in_child()


def _close_at_exit() -> None:
    # Before the interpreter frees the mappings in no particular order.
    for heap in list(_open_heaps):
        heap.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
