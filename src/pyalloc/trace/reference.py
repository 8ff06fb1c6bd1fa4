"""Reference allocators: the peers pyalloc is measured against.

Interface
---------

Every reference allocator is an object with::

    name                  short label for tables
    malloc(n) -> int      a non-zero pointer to at least n bytes; malloc(0) too
    free(p)               p == 0 does nothing
    realloc(p, n) -> int  realloc(0, n) == malloc(n); realloc(p, 0) frees p, returns 0

which is also the part of :class:`pyalloc.Heap`'s interface a replay loop
needs, so one loop drives them all.  A pointer is an opaque non-zero int; 0 is
NULL.

These are *benchmark peers*, not validated replay targets: they check nothing
about the pointers they are given (glibc may crash on a bad one) and report
no footprint, so they serve to measure speed, not to test a trace.

The peers
---------

GlibcMalloc          the C library's malloc/free/realloc called through ctypes.
                     The foreign functions themselves are the methods (no Python
                     wrapper in between), so a measured op is one ctypes call:
                     the cheapest way Python code can reach a C allocator, and
                     so the fair floor for an allocator written in Python.
                     Return types are ``c_size_t`` (pointer-sized on every
                     supported platform) rather than ``c_void_p`` so that NULL
                     comes back as 0, never None.
MultiprocessingHeap  the standard library's ``multiprocessing.heap.Heap``, a
                     pure-Python best-fit allocator over mmap arenas.  Its
                     blocks are ``(arena, start, stop)`` tuples; this wrapper
                     hands out integer handles for them and implements realloc
                     as malloc + copy + free, since the stdlib has none.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing.heap
from typing import Any, Protocol

__all__ = ["GlibcMalloc", "MultiprocessingHeap", "ReferenceAllocator"]


class ReferenceAllocator(Protocol):
    """The calls a replay loop makes; :class:`pyalloc.Heap` has them too."""

    name: str

    def malloc(self, size: int, /) -> int: ...

    def free(self, pointer: int, /) -> None: ...

    def realloc(self, pointer: int, size: int, /) -> int: ...


assert ctypes.sizeof(ctypes.c_size_t) == ctypes.sizeof(ctypes.c_void_p)


def _load_libc() -> ctypes.CDLL:
    path = ctypes.util.find_library("c")
    # With no library found, the process's own symbols still include malloc.
    return ctypes.CDLL(path)


class GlibcMalloc:
    """The C library's allocator through ctypes (glibc on Linux).

    ``malloc``, ``free`` and ``realloc`` are ctypes foreign functions with
    ``argtypes``/``restype`` set, bound on the instance.  NULL is 0.  A C
    library whose ``malloc(0)`` returns NULL gets a small wrapper that asks
    for 1 byte instead, so that ``malloc(0)`` is a unique pointer here as in
    pyalloc.  Blocks not freed are leaked, as in C: free what you allocate.
    """

    name: str
    malloc: Any
    free: Any
    realloc: Any

    def __init__(self) -> None:
        libc = _load_libc()
        malloc = libc.malloc
        malloc.argtypes = [ctypes.c_size_t]
        malloc.restype = ctypes.c_size_t
        free = libc.free
        free.argtypes = [ctypes.c_void_p]
        free.restype = None
        realloc = libc.realloc
        realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        realloc.restype = ctypes.c_size_t
        self.free = free
        self.realloc = realloc
        probe = malloc(0)
        free(probe)
        if probe:
            self.malloc = malloc
        else:

            def malloc_nonzero(size: int) -> int:
                return int(malloc(size or 1))

            self.malloc = malloc_nonzero
        try:
            version_of = libc.gnu_get_libc_version
        except AttributeError:
            self.name = "libc malloc"
        else:
            version_of.argtypes = []
            version_of.restype = ctypes.c_char_p
            self.name = f"glibc {version_of().decode('ascii')}"
        usable = getattr(libc, "malloc_usable_size", None)
        if usable is not None:
            usable.argtypes = [ctypes.c_void_p]
            usable.restype = ctypes.c_size_t
        self._usable_size = usable

    def usable_size(self, pointer: int) -> int:
        """Bytes usable at ``pointer`` (``malloc_usable_size``; glibc only)."""
        if self._usable_size is None:
            raise NotImplementedError("this C library has no malloc_usable_size")
        return int(self._usable_size(pointer))

    def view(self, pointer: int, size: int) -> memoryview:
        """A writable memoryview of ``size`` bytes at ``pointer`` (unchecked)."""
        return memoryview((ctypes.c_char * size).from_address(pointer)).cast("B")


Block = tuple[Any, int, int]  # (arena, start, stop) as multiprocessing.heap hands out


class MultiprocessingHeap:
    """``multiprocessing.heap.Heap`` behind the integer-pointer interface.

    Handles are multiples of 16 starting at 16, never reused while this
    object lives.  ``realloc`` copies ``min(old, new)`` bytes into a fresh
    block and keeps the handle.  ``free`` of a handle this object did not
    hand out (or already freed) raises ``ValueError``.

    The stdlib's ``Heap.free`` only *tries* its lock: when the lock is held
    (another thread inside malloc, or a finalizer that ran during one), the
    block is parked on a pending list and merged by a later malloc or free.
    This wrapper flushes that list itself after a free whenever the lock can
    be taken without waiting, so a freed block is reusable as soon as the
    stdlib allows, and :meth:`close` flushes it for good.  Like the stdlib
    heap, an instance must not be used across ``fork``.
    """

    name = "multiprocessing.heap"

    def __init__(self) -> None:
        # Typed Any: the pending-free machinery used below is not in the stubs.
        self.heap: Any = multiprocessing.heap.Heap()
        self._blocks: dict[int, Block] = {}
        self._next_handle = 16

    def malloc(self, size: int) -> int:
        block = self.heap.malloc(size)
        handle = self._next_handle
        self._next_handle = handle + 16
        self._blocks[handle] = block
        return handle

    def free(self, pointer: int) -> None:
        if not pointer:
            return
        try:
            block = self._blocks.pop(pointer)
        except KeyError:
            raise ValueError(f"{pointer:#x} is not a live block of this heap") from None
        heap = self.heap
        heap.free(block)
        if heap._pending_free_blocks:
            self._flush_pending(wait=False)

    def realloc(self, pointer: int, size: int) -> int:
        if not pointer:
            return self.malloc(size)
        if size == 0:
            self.free(pointer)
            return 0
        try:
            old = self._blocks[pointer]
        except KeyError:
            raise ValueError(f"{pointer:#x} is not a live block of this heap") from None
        new = self.heap.malloc(size)
        old_arena, old_start, old_stop = old
        new_arena, new_start, _ = new
        count = min(old_stop - old_start, size)
        new_arena.buffer[new_start : new_start + count] = old_arena.buffer[
            old_start : old_start + count
        ]
        self._blocks[pointer] = new
        self.heap.free(old)
        return pointer

    def view(self, pointer: int) -> memoryview:
        """A writable memoryview of the block's bytes."""
        arena, start, stop = self._blocks[pointer]
        return memoryview(arena.buffer)[start:stop]

    @property
    def live_blocks(self) -> int:
        return len(self._blocks)

    def close(self) -> None:
        """Free every live block and merge anything still pending."""
        for block in self._blocks.values():
            self.heap.free(block)
        self._blocks.clear()
        self._flush_pending(wait=True)

    def _flush_pending(self, *, wait: bool) -> None:
        heap = self.heap
        if not heap._lock.acquire(wait):
            return  # the holder's next malloc/free will merge the pending blocks
        try:
            heap._free_pending_blocks()
        finally:
            heap._lock.release()
