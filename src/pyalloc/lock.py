# The compiled branches below name the C functions and fields of lock.pxd:
# mypy: disable-error-code="name-defined,attr-defined"
# ruff: noqa: F821
"""The per-heap lock of a private heap, taken in C when the engine is compiled.

Compiled, ``HeapLock`` is a ``pthread`` mutex inside the object, and an
uncontended acquire/release pair is two C calls and no system call (the
``PyThread`` lock reads the clock even when asked not to wait). Interpreted, it wraps a
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
    from . import _cython as cython

from .errors import HeapError


class HeapLock:
    """A non-reentrant lock: ``acquire``/``release`` or ``with``."""

    # The names used only when compiled come from lock.pxd.

    def __cinit__(self) -> None:
        if cython.compiled:
            pthread_mutex_init(cython.address(self._mutex), cython.NULL)

    def __init__(self) -> None:
        if not cython.compiled:
            self._lock = threading.Lock()
            if type(self) is HeapLock:
                # Interpreted, the lock's own methods: one Python call less per use.
                self.acquire = self._lock.acquire  # type: ignore[method-assign]
                self.release = self._lock.release  # type: ignore[method-assign]

    def __dealloc__(self) -> None:
        if cython.compiled:
            pthread_mutex_destroy(cython.address(self._mutex))

    def acquire(self) -> bool:
        if cython.compiled:
            if pthread_mutex_trylock(cython.address(self._mutex)):
                with cython.nogil:
                    pthread_mutex_lock(cython.address(self._mutex))
        else:
            self._lock.acquire()
        return True

    def release(self) -> None:
        if cython.compiled:
            pthread_mutex_unlock(cython.address(self._mutex))
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
