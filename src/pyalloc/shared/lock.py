"""The lock of a shared heap: the mutex in the segment, and who may reset it.

The mutex and the transaction around each hold are the engine's
``lock.SharedLock`` (compiled with the engine). This module places it: the
mutex is the first ``MUTEX_BYTES`` of the segment's lock area, followed by
the attach table (``attach.py``), where each attachment claims a slot.

A robust mutex whose holder died is handed to the next locker with
``EOWNERDEAD``, but only if the holder died on this boot: a heap file
reopened after a crash of the machine, or a segment copied while locked,
holds a mutex locked "forever". So whoever attaches while no other live
process is attached (the table says so) initializes the mutex again; no one
can hold it then. The re-check and the reset are made under the table's own
lock, so an attachment racing in cannot take the mutex in between.

Invariants, whenever no process holds the lock::

    journal count == 0  or  its holder is dead (and the next lock undoes it)
    names next == 0     or  its holder is dead
    the heap walks (check() passes) once the journal is undone
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Final

from .. import control as C
from ..attach import AttachTable
from ..lock import ClosedLock, SharedLock, init_shared_mutex
from .segment import W_ARRAYS_NEXT, W_JOURNAL_COUNT, W_LOCK, W_NAMES_NEXT, attach_table

if TYPE_CHECKING:
    from .heap import SharedHeap


def segment_lock(heap: SharedHeap) -> SharedLock:
    """The lock of ``heap``: the mutex of its segment's lock area."""
    segment = heap._segment
    lock = SharedLock(
        segment.words,
        heap._base_address + heap._raw[W_LOCK],
        heap,
        W_JOURNAL_COUNT,
        (W_NAMES_NEXT, W_ARRAYS_NEXT),
        C.W_BRK,
        segment.deferred,
    )
    segment.lock = lock
    return lock


def claim_slot(heap: SharedHeap) -> tuple[AttachTable, int]:
    """Claim this attachment's slot in the table; reset the mutex if no one else is attached."""
    table = _table(heap)
    slot, alone = table.claim()
    if alone:
        with table.locked():  # no attachment can claim a slot, hence lock, meanwhile
            if len(table.attached()) == 1:
                init_shared_mutex(heap._base_address + heap._raw[W_LOCK])
    return table, slot


def _table(heap: SharedHeap) -> AttachTable:
    return attach_table(heap._raw, heap._raw[W_LOCK], heap._segment.reserve_fd)


class _ClosedLock(ClosedLock):
    """The lock of a detached shared heap: every use says the heap is closed."""

    owner = 0


_FUTEX_TID_MASK: Final = 0x3FFFFFFF


def lock_holder(heap: SharedHeap) -> int:
    """The thread id (a pid, for a process of one thread) holding the heap's lock; 0 if none.

    Read without locking, for diagnostics and tests: a robust mutex's first
    32-bit word is the kernel's futex word, the holder's thread id in its low
    30 bits (with a "waiters" and an "owner died" bit above them).
    """
    at = heap._raw[W_LOCK]
    return int.from_bytes(heap.buf[at : at + 4], "little") & _FUTEX_TID_MASK


LOCK_NOTICE_SECONDS: Final = 0.5  # a hold this long is worth telling a waiting user of


def long_holder(heap: SharedHeap, patience: float = LOCK_NOTICE_SECONDS) -> int:
    """The process holding ``heap``'s lock if another thread holds it for
    ``patience`` seconds from now (polled, without waiting for the lock); else 0.

    For the command line, which then says why it waits: a hold that ends
    within ``patience`` (an operation) is not worth a word.
    """
    holder = lock_holder(heap)
    if not holder or holder == threading.get_native_id():
        return 0
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        time.sleep(patience / 20)
        if lock_holder(heap) != holder:
            return 0
    return _process_of(holder)


def lock_notice(heap: SharedHeap, name: str) -> str | None:
    """What the command line says before it waits for a long hold of ``heap``'s lock."""
    holder = long_holder(heap)
    if not holder:
        return None
    return f"pyalloc: {name}: waiting for its lock, held by process {holder} (Ctrl-C to give up)"


def _process_of(thread_id: int) -> int:
    """The process of thread ``thread_id`` (its thread group), or the id itself if unknown."""
    try:
        with open(f"/proc/{thread_id}/status") as status:
            for line in status:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return thread_id
