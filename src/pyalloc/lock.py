# The compiled branches below name the C functions and fields of lock.pxd:
# mypy: disable-error-code="name-defined,attr-defined"
# ruff: noqa: F821
"""The per-heap locks: a private heap's, and the shared heaps' mutex in their segment.

Compiled, ``HeapLock`` is a held flag and a semaphore inside the object.
Every caller holds the GIL (it is called from Python), so testing and setting
the flag is exclusive: an uncontended acquire/release pair is two C stores,
with no atomic instruction and no library call. A thread that finds the flag
set counts itself a waiter and sleeps on the semaphore with the GIL released;
``release`` posts the semaphore when someone waits, and the woken thread
tests the flag again. The semaphore counts posts, so a wake-up that comes
before the sleep is not lost. Interpreted, the lock wraps a
``threading.Lock``. Either way the lock never blocks while holding the GIL:
a thread that waited holding it would deadlock with a holder that needs the
GIL to finish, and the code under the lock does run Python (a Python policy,
``madvise`` through the region, building an exception). A build without a
GIL is refused at compile time (lock.pxd): the flag would not be exclusive.

``HeapLock`` is also the type of every heap's lock slot: the shared heap's
lock and the lock of a closed heap are subclasses that override
``acquire`` and ``release`` (``ccall`` methods, so a Python override is
honoured).

``SharedLock`` is the lock of a shared or mapped heap: a process-shared,
robust ``pthread`` mutex stored in the segment itself, so every process
(and every thread) that maps the segment locks the same bytes. Uncontended,
taking it is one atomic instruction in C, with no system call; a holder that
dies makes the kernel hand the next locker ``EOWNERDEAD``. Compiled, the
mutex is reached through its address in C; interpreted, through ``ctypes``
(libc's functions, which ``ctypes`` calls with the GIL released). Both use
the same mutex, so both engine modes can share one heap at once.

Around each hold it runs the transaction of the heap's undo journal
(``journal.py``)::

    lock:    trylock, else lock with the GIL released, in slices (a signal
             ends the wait)
             EOWNERDEAD (the holder died): recover, then mark consistent
             journal count or a draft word non-zero: recover
             the break moved (another process): reload it
    work:    the engine's operation; each metadata store is journaled,
             pages a trim gives back are only noted
    unlock:  commit (count = 0) if the operation returned, undo if it
             raised; give back the noted pages; unlock

Recovery is marked consistent only once done: a locker killed while
recovering leaves the mutex still "owner died" for the next one.
"""

from __future__ import annotations

import ctypes
import errno
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from . import _cython as cython

from .errors import HeapError


class HeapLock:
    """A non-reentrant lock: ``acquire``/``release`` or ``with``."""

    # The names used only when compiled come from lock.pxd.
    _held: bool
    _waiters: int

    def __cinit__(self) -> None:
        if cython.compiled:
            sem_init(cython.address(self._wake), 0, 0)

    def __init__(self) -> None:
        if not cython.compiled:
            self._lock = threading.Lock()
            if type(self) is HeapLock:
                # Interpreted, the lock's own methods: one Python call less per use.
                self.acquire = self._lock.acquire  # type: ignore[method-assign]
                self.release = self._lock.release  # type: ignore[method-assign]

    def __dealloc__(self) -> None:
        if cython.compiled:
            sem_destroy(cython.address(self._wake))

    def acquire(self) -> bool:
        if cython.compiled:
            if self._held:
                return self._wait()
            self._held = True
        else:
            self._lock.acquire()
        return True

    def _wait(self) -> bool:
        """Compiled: sleep, the GIL released, until the holder lets go; then hold."""
        self._waiters += 1
        while self._held:
            with cython.nogil:
                sem_wait(cython.address(self._wake))
        self._waiters -= 1
        self._held = True
        return True

    def release(self) -> None:
        if cython.compiled:
            self._held = False
            if self._waiters:
                sem_post(cython.address(self._wake))
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


# -- the shared lock ---------------------------------------------------------------

MUTEX_BYTES: Final = 64
"""Bytes reserved for the mutex in a segment (a glibc ``pthread_mutex_t`` takes 40)."""

NO_BRK: Final = (1 << 64) - 1  # no break is ever this
EBUSY: Final = errno.EBUSY  # a C int when compiled (lock.pxd)
ETIMEDOUT: Final = errno.ETIMEDOUT
WAIT_SLICE_NS: Final = 100_000_000  # a waiter looks for a signal (Ctrl-C) this often
NS_PER_SECOND: Final = 1_000_000_000
_PTHREAD_PROCESS_SHARED: Final = 1  # glibc's values of the two attributes
_PTHREAD_MUTEX_ROBUST: Final = 1
_ATTR_BYTES: Final = 64  # room for a pthread_mutexattr_t (4 bytes in glibc)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Pthread:
    """libc's mutex functions through ctypes: the interpreted engine's way to the mutex."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=False)
        ptr = [ctypes.c_void_p]
        for name in (
            "pthread_mutex_trylock",
            "pthread_mutex_unlock",
            "pthread_mutex_consistent",
            "pthread_mutexattr_init",
            "pthread_mutexattr_destroy",
        ):
            fn = getattr(lib, name)
            fn.argtypes = ptr
            fn.restype = ctypes.c_int
        for name in ("pthread_mutexattr_setpshared", "pthread_mutexattr_setrobust"):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int]
            fn.restype = ctypes.c_int
        lib.pthread_mutex_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pthread_mutex_init.restype = ctypes.c_int
        lib.pthread_mutex_timedlock.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pthread_mutex_timedlock.restype = ctypes.c_int
        self.timedlock = lib.pthread_mutex_timedlock
        self.trylock = lib.pthread_mutex_trylock
        self.unlock = lib.pthread_mutex_unlock
        self.consistent = lib.pthread_mutex_consistent
        self.lib = lib


_pthread_lib: _Pthread | None = None


def _pthread() -> _Pthread:
    global _pthread_lib
    if _pthread_lib is None:
        _pthread_lib = _Pthread()
    return _pthread_lib


def init_shared_mutex(address: int) -> None:
    """Make the ``MUTEX_BYTES`` at ``address`` an unlocked process-shared robust mutex.

    Only where no live process can be using it: when the segment is made, or
    attached by the only live process (a mutex whose owner died on another
    boot is never reported dead, and would stay locked).
    """
    lib = _pthread().lib
    attr = ctypes.create_string_buffer(_ATTR_BYTES)
    ctypes.memset(address, 0, MUTEX_BYTES)
    _check(lib.pthread_mutexattr_init(attr), "pthread_mutexattr_init")
    try:
        _check(
            lib.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED),
            "pthread_mutexattr_setpshared",
        )
        _check(
            lib.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST),
            "pthread_mutexattr_setrobust",
        )
        _check(lib.pthread_mutex_init(address, attr), "pthread_mutex_init")
    finally:
        lib.pthread_mutexattr_destroy(attr)


def _check(result: int, call: str) -> None:
    if result:
        raise HeapError(f"{call} failed: {errno.errorcode.get(result, result)}")


class SharedLock(HeapLock):
    """The mutex at ``address`` in a shared region, with a transaction around each hold.

    ``words`` is the region as 8-byte words; ``count_word`` the journal's
    count, ``draft_words`` two words naming blocks being written (freed by a
    recovery), ``brk_word`` the break. ``heap`` provides the slow paths:
    ``_recover()`` (undo a dead holder's work), ``_undo()`` (of an operation
    that raised), ``_sync_brk()`` and ``_discard_deferred()``. ``deferred`` is
    the list of pages to give back once committed (the segment appends to it).

    ``release`` tells a successful operation from one that raised by
    comparing the exception being handled with the one handled at
    ``acquire``: the engine's hot paths call it from a ``finally`` clause.
    """

    def __init__(
        self,
        words: Any,
        address: int,
        heap: Any,
        count_word: int,
        draft_words: tuple[int, int],
        brk_word: int,
        deferred: list[tuple[int, int]],
    ) -> None:
        self._words = words
        self._address = address
        self._heap = heap
        self._count_word = count_word
        self._draft_a, self._draft_b = draft_words
        self._brk_word = brk_word
        # The break as of this lock's last release; none yet, so the first acquire
        # reloads it (read now, without the lock, it might be a holder's passing value).
        self._brk_seen = NO_BRK
        self._deferred = deferred
        self._entry_exc: BaseException | None = None
        self.in_transaction = False
        self.owner = 0  # ident of the thread inside a transaction, 0 if none
        # Threads of this process between acquire and the unlock: while any
        # is, the segment must stay mapped (SharedHeap.close).
        self.users = 0
        if not cython.compiled:
            self._lib = _pthread()

    def acquire(self) -> bool:
        self.users += 1
        if cython.compiled:
            r = pthread_mutex_trylock(cython.cast(mutex_ptr, self._address))
        else:
            r = self._lib.trylock(self._address)
        if r == EBUSY:  # not EOWNERDEAD: that one is held already, by this thread
            r = self._wait_for_holder()
        if r:
            self._locked_with(r)
        self._begin()
        return True

    def _wait_for_holder(self) -> int:
        """Lock the mutex another holds, the GIL released, in slices of
        WAIT_SLICE_NS: between them the signal handlers run, so Ctrl-C ends
        a wait on a holder that never lets go. The lock call's result."""
        try:
            return self._wait_in_slices()
        except BaseException:  # a signal's exception: this thread never held the lock
            self.users -= 1
            raise

    def _wait_in_slices(self) -> int:
        if cython.compiled:
            m = cython.cast(mutex_ptr, self._address)
            while True:
                with cython.nogil:
                    clock_gettime(CLOCK_REALTIME, cython.address(t))
                    t.tv_nsec += WAIT_SLICE_NS
                    if t.tv_nsec >= NS_PER_SECOND:
                        t.tv_sec += 1
                        t.tv_nsec -= NS_PER_SECOND
                    r = pthread_mutex_timedlock(m, cython.address(t))
                if r != ETIMEDOUT:
                    return int(r)
                PyErr_CheckSignals()
        lib = self._lib
        deadline = _Timespec()
        while True:  # ctypes releases the GIL during the call; handlers run after it
            at = time.clock_gettime_ns(time.CLOCK_REALTIME) + WAIT_SLICE_NS
            deadline.tv_sec, deadline.tv_nsec = divmod(at, NS_PER_SECOND)
            r = lib.timedlock(self._address, ctypes.byref(deadline))
            if r != ETIMEDOUT:
                return int(r)

    def try_acquire(self) -> bool:
        """``acquire`` if no one holds the lock; False at once otherwise."""
        self.users += 1
        if cython.compiled:
            r = pthread_mutex_trylock(cython.cast(mutex_ptr, self._address))
        else:
            r = self._lib.trylock(self._address)
        if r == EBUSY:
            self.users -= 1
            return False
        if r:
            self._locked_with(r)
        self._begin()
        return True

    def _begin(self) -> None:
        """The transaction's start, the mutex held."""
        # self._words each time, not a local copy: compiled, copying a memoryview
        # takes a reference with an atomic instruction.
        if (
            self._words[self._count_word]
            or self._words[self._draft_a]
            or self._words[self._draft_b]
        ):
            self._slow_begin(self._heap._recover)
        if self._words[self._brk_word] != self._brk_seen:
            self._slow_begin(self._heap._sync_brk)  # another process moved the break
        self.in_transaction = True
        if cython.compiled:
            self._entry_exc = handled_exception()
            self.owner = PyThread_get_thread_ident()
        else:
            self._entry_exc = sys.exception()
            self.owner = threading.get_ident()

    def _locked_with(self, r: int) -> None:
        """The lock call returned ``r``, not 0: the holder died (the lock is ours), or a fault."""
        if r != errno.EOWNERDEAD:
            self.users -= 1  # not held
            raise HeapError(f"the shared heap's lock failed: {errno.errorcode.get(r, r)}")
        self._slow_begin(self._heap._recover)
        if cython.compiled:
            r = pthread_mutex_consistent(cython.cast(mutex_ptr, self._address))
        else:
            r = self._lib.consistent(self._address)
        if r:
            self._unlock()
            raise HeapError(f"the shared heap's lock failed: {errno.errorcode.get(r, r)}")

    def _slow_begin(self, step: Callable[[], None]) -> None:
        """Run ``step`` holding the mutex; unlock if it raises (the caller's try has not begun)."""
        try:
            step()
            self._brk_seen = self._words[self._brk_word]  # step left the heap's break in step
        except BaseException:
            self._unlock()
            raise

    def release(self) -> None:
        if cython.compiled:
            failed = handled_exception() is not self._entry_exc
        else:
            failed = sys.exception() is not self._entry_exc
        self._finish(failed)

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
                if self._words[self._count_word]:
                    self._words[self._count_word] = 0  # commit
                self.in_transaction = False
                if self._deferred:
                    self._heap._discard_deferred()
            self._brk_seen = self._words[self._brk_word]
        finally:
            self.in_transaction = False
            self._unlock()

    def _unlock(self) -> None:
        if cython.compiled:
            pthread_mutex_unlock(cython.cast(mutex_ptr, self._address))
        else:
            self._lib.unlock(self._address)
        self.users -= 1

    def abandon(self) -> None:
        """Let go as a killed holder would: nothing committed or undone (tests)."""
        self.owner = 0
        self.in_transaction = False
        self._unlock()

    def after_fork_in_child(self) -> None:
        """A forked child is inside no transaction, whatever its parent was doing."""
        self.owner = 0
        self.users = 0
        self.in_transaction = False
        self._entry_exc = None
        del self._deferred[:]

    def close(self) -> None:
        """Drop the view of the region, so that it can be unmapped."""
        self._words = None
        self._heap = None
