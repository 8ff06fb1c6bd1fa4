"""Fork: a child forked with shared heaps attached gets a lock of its own on each."""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .heap import SharedHeap

_open_heaps: weakref.WeakSet[SharedHeap] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for heap in list(_open_heaps):
        heap._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
