"""The lock of a shared heap: a transaction's begin, commit and undo around each operation.

A transaction::

    lock:    thread lock, then flock
             if count != 0: undo the journal, recoveries += 1,
                            free the blocks in "names next" and
                            "arrays next" if any
             brk = words[brk]            (other processes move the break)
    work:    the engine's operation; each metadata store goes through the
             journal; the pages a trim gives back are only noted
    unlock:  commit (count = 0) if the operation returned, undo if it raised;
             then give back the noted pages; then flock off, thread lock off

Invariants, whenever no process holds the lock::

    journal count == 0  or  its holder is dead (and the next lock undoes it)
    names next == 0     or  its holder is dead
    the heap walks (check() passes) once the journal is undone
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Final

from .. import control as C
from ..lock import ClosedLock, HeapLock
from .segment import W_ARRAYS_NEXT, W_JOURNAL_COUNT, W_NAMES_NEXT, _reopen

if TYPE_CHECKING:
    from .heap import SharedHeap

# -- the lock ----------------------------------------------------------------------


class _SegmentLock(HeapLock):
    """``flock`` on the segment's file for processes, a thread lock for threads.

    ``acquire``/``release`` and ``with`` both work. ``release`` tells a
    successful operation from one that raised by comparing the exception
    being handled with the one that was being handled at ``acquire``: the
    engine's hot paths call ``release`` from a ``finally`` clause.
    """

    __slots__ = (
        "_closer",
        "_entry_exc",
        "_fd",
        "_heap",
        "_raw",
        "_segment",
        "_thread",
        "owner",
    )

    def __init__(self, fd: int, heap: SharedHeap) -> None:
        self._heap = heap
        self._raw = heap._raw
        self._segment = heap._segment
        self._adopt(fd)

    def _adopt(self, fd: int) -> None:
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        self._thread = threading.Lock()
        self._entry_exc: BaseException | None = None
        self.owner = 0  # ident of the thread inside a transaction, 0 if none

    # The transaction's begin and commit are inlined here: this is every
    # operation's fixed cost. Recovery and undo are the heap's methods.

    def acquire(self) -> bool:
        self._thread.acquire()
        try:
            _flock(self._fd, _LOCK_EX)
            try:
                raw = self._raw
                if raw[W_JOURNAL_COUNT] or raw[W_NAMES_NEXT] or raw[W_ARRAYS_NEXT]:
                    self._heap._recover()
                self._heap.brk = raw[C.W_BRK]  # other processes move the break
                self._segment.in_transaction = True
                self._entry_exc = sys.exc_info()[1]
                self.owner = threading.get_ident()
            except BaseException:
                # Even a KeyboardInterrupt here must not leave the lock held:
                # the caller's try/finally has not begun.
                self._segment.in_transaction = False
                self.owner = 0
                _flock(self._fd, _LOCK_UN)
                raise
        except BaseException:
            self._thread.release()
            raise
        return True

    def release(self) -> None:
        self._finish(sys.exc_info()[1] is not self._entry_exc)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc_type is not None)

    def _finish(self, failed: bool) -> None:
        self.owner = 0
        self._entry_exc = None
        try:
            if failed:
                self._heap._undo()
            else:
                raw = self._raw
                if raw[W_JOURNAL_COUNT]:
                    raw[W_JOURNAL_COUNT] = 0  # commit
                segment = self._segment
                segment.in_transaction = False
                if segment.deferred:
                    segment.discard_deferred()
        finally:
            _flock(self._fd, _LOCK_UN)
            self._thread.release()

    def reopen_after_fork(self) -> None:
        """In a forked child: a lock of its own on the same file.

        The child's copy of the descriptor shares the parent's open file,
        hence its flock; reopening through /proc gives a new open file on the
        same segment even if its name was unlinked or reused meanwhile.
        """
        old = self._fd
        fd = _reopen(old)
        self._closer.detach()
        os.close(old)  # the parent's flock is not released by closing a copy
        self._adopt(fd)

    def close(self) -> None:
        self._closer()

    def abandon(self) -> None:
        """Give up the lock as a killed process does: no commit, no undo."""
        self.owner = 0
        self._closer()
        if self._thread.locked():
            self._thread.release()

    @property
    def fd(self) -> int:
        return self._fd


_flock = fcntl.flock
_LOCK_EX: Final = fcntl.LOCK_EX
_LOCK_UN: Final = fcntl.LOCK_UN


class _ClosedLock(ClosedLock):
    """The lock of a detached shared heap: every use says the heap is closed."""

    owner = 0
