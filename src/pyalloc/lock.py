"""The per-heap lock of a private heap, taken in C when the engine is compiled.

Compiled, ``HeapLock`` is a ``PyThread`` lock, and an uncontended
acquire/release pair is two C calls. Interpreted, it wraps a
``threading.Lock``. Either way the lock never blocks while holding the GIL:
compiled, ``acquire`` first tries without waiting and only then waits with
the GIL released, as ``threading.Lock`` does. A thread that waited holding
the GIL would deadlock with a holder that needs the GIL to finish, and the
code under the lock does run Python (a Python policy, ``madvise`` through
the region, building an exception).

``HeapLock`` is also the type of every heap's lock slot: the shared heap's
lock and the lock of a closed heap are subclasses that override
``acquire`` and ``release`` (``ccall`` methods, so a Python override is
honoured).
"""

from __future__ import annotations

import threading
from types import TracebackType

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from . import _cython as cython  # type: ignore[no-redef]

from .errors import HeapError


class HeapLock:
    """A non-reentrant lock: ``acquire``/``release`` or ``with``."""

    def __init__(self) -> None:
        if cython.compiled:
            self._handle = PyThread_allocate_lock()  # type: ignore[name-defined]  # noqa: F821
            if not self._handle:
                raise MemoryError("cannot allocate a lock")
        else:
            self._lock = threading.Lock()

    def __dealloc__(self) -> None:
        if cython.compiled:
            if self._handle:
                PyThread_free_lock(self._handle)  # type: ignore[name-defined]  # noqa: F821

    def acquire(self) -> bool:
        if cython.compiled:
            if not PyThread_acquire_lock(self._handle, NOWAIT_LOCK):  # type: ignore[name-defined]  # noqa: F821
                with cython.nogil:
                    PyThread_acquire_lock(self._handle, WAIT_LOCK)  # type: ignore[name-defined]  # noqa: F821
        else:
            self._lock.acquire()
        return True

    def release(self) -> None:
        if cython.compiled:
            PyThread_release_lock(self._handle)  # type: ignore[name-defined]  # noqa: F821
        else:
            self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ClosedLock(HeapLock):
    """The lock of a closed heap: every use says so."""

    def acquire(self) -> bool:
        raise HeapError("the heap is closed")

    def release(self) -> None:
        pass


CLOSED = ClosedLock()
