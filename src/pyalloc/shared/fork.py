"""A process's shared heaps: a forked child gets a lock of its own on each,
and an exiting process leaves each mapped until the kernel unmaps it."""

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


def _keep_mapped_at_exit() -> None:
    # The interpreter would unmap segments as it frees their objects, while
    # daemon threads may still be in operations on them (or frozen holding a
    # lock): the kernel unmaps them with the process instead.
    for heap in list(_open_heaps):
        heap._segment.keep_mapped()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_keep_mapped_at_exit)
