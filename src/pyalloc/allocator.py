"""What every heap class shares: the public API over its unlocked primitives.

A heap class (``Heap``, ``BuddyHeap``, ``SharedHeap``) provides

    _malloc(size) -> p      _free(p)      _resize(p, size) -> p
    _usable(p) -> bytes     usable bytes of the live block p, checked

(``_resize`` is realloc once ``p`` is known to be an int other than 0.)

plus ``region``, ``bytes`` (a memoryview of the region), ``capacity``,
``_lock`` (a ``lock.HeapLock``, or a subclass of it) and
``_closed``. ``Allocator`` turns those into the public ``malloc``, ``free``,
``realloc`` (each holding the lock), ``calloc``, ``usable_size``, ``view``,
``close`` and the context-manager protocol, so that their behaviour and
their errors are the same whatever the layout behind them.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, Self

from .errors import InvalidPointerError
from .lock import CLOSED, HeapLock
from .regions import Region
from .units import as_int


def check_size(size: object, what: str = "size") -> int:
    """``size`` as an int >= 0; TypeError or ValueError otherwise."""
    if size.__class__ is not int:
        size = as_int(size, what)
    if size < 0:
        raise ValueError(f"{what} must be >= 0, got {size}")
    return size


def check_pointer(p: object) -> int:
    """``p`` as an int; TypeError for anything else (bool included)."""
    if p.__class__ is not int:
        p = as_int(p, "pointer")
    return p


def stats_record(
    capacity: int,
    footprint: int,
    peak_footprint: int,
    live_bytes: int,
    live_blocks: int,
    free_sizes: list[int],
    cached_blocks: int = 0,
) -> dict[str, int]:
    """The ``stats()`` of every heap class: one set of keys, computed one way."""
    return {
        "capacity": capacity,
        "heap_bytes": footprint,
        "peak_heap_bytes": peak_footprint,
        "live_bytes": live_bytes,
        "live_blocks": live_blocks,
        "free_bytes": sum(free_sizes),
        "free_blocks": len(free_sizes),
        "largest_free": max(free_sizes, default=0),
        "cached_blocks": cached_blocks,
    }


ZERO_CHUNK: Final = 1 << 20


def zero_fill(view: Any, p: int, n: int) -> None:
    """Zero ``n`` bytes at ``p`` in place, a chunk at a time (no buffer of n bytes)."""
    zeros = bytes(min(n, ZERO_CHUNK))
    end = p + n
    while p < end:
        step = min(end - p, ZERO_CHUNK)
        view[p : p + step] = zeros[:step] if step < len(zeros) else zeros
        p += step


class Allocator:
    """The public API of a heap, built on the primitives its subclass provides."""

    region: Region
    bytes: memoryview
    capacity: int
    _lock: HeapLock
    _closed: bool

    # -- the primitives, called with the lock held -----------------------------

    def _malloc(self, size: int) -> int:
        raise NotImplementedError

    def _free(self, p: int) -> None:
        raise NotImplementedError

    def _realloc(self, p: int, size: int) -> int:
        if type(p) is not int or not 0 <= p <= 0x3FFF_FFFF_FFFF_FFFF:
            p = self._pointer(p)
        if type(size) is not int or not 0 <= size <= 0x3FFF_FFFF_FFFF_FFFF:
            size = self._request(size)
        if not p:
            return self._malloc(size)
        return self._resize(p, size)

    # -- arguments ---------------------------------------------------------------
    # The primitives take C integers when compiled: a value is checked here,
    # on the slow path, when it is not an int of a size that converts.

    def _request(self, size: object) -> int:
        """``size`` as a request; TypeError, ValueError, or MemoryError past the capacity."""
        size = check_size(size)
        if size > self.capacity:
            raise MemoryError(
                f"cannot allocate {size} bytes: the heap's capacity is {self.capacity}"
            )
        return size

    def _pointer(self, p: object) -> int:
        """``p`` as a pointer; TypeError, or InvalidPointerError for one out of range."""
        p = check_pointer(p)
        if not 0 <= p <= 0x3FFF_FFFF_FFFF_FFFF:
            raise InvalidPointerError(f"pointer {p} is not in this heap or not aligned")
        return p

    def _resize(self, p: int, size: int) -> int:
        """realloc of a non-NULL pointer; ``size == 0`` frees and returns 0."""
        raise NotImplementedError

    def _usable(self, p: int) -> int:
        raise NotImplementedError

    def _unlocked_entry_points(self) -> None:
        """For ``lock=False``: malloc, free and realloc call the primitives directly."""
        self._locking = False

    # -- malloc, free, realloc -------------------------------------------------
    # acquire/release rather than ``with``: half the cost on these paths. The
    # fast argument check bounds an int by 2**62 - 1 written as a literal:
    # compiled, a comparison with an int literal is inline, one with
    # ``1 << 62`` a generic call.

    def malloc(self, size: int) -> int:
        """Allocate ``size`` bytes; return the 16-byte-aligned payload offset.

        MemoryError when the heap cannot grow enough. ``malloc(0)`` returns a
        unique pointer to a minimum block.
        """
        if type(size) is not int or not 0 <= size <= 0x3FFF_FFFF_FFFF_FFFF:
            size = self._request(size)
        if not self._locking:
            return self._malloc(size)
        lock = self._lock
        lock.acquire()
        try:
            return self._malloc(size)
        finally:
            lock.release()

    def free(self, p: int) -> None:
        """Free the block at ``p``; ``free(0)`` does nothing."""
        if type(p) is not int or not 0 <= p <= 0x3FFF_FFFF_FFFF_FFFF:
            p = self._pointer(p)
        if not self._locking:
            self._free(p)
            return
        lock = self._lock
        lock.acquire()
        try:
            self._free(p)
        finally:
            lock.release()

    def realloc(self, p: int, size: int) -> int:
        """Resize the block at ``p`` to ``size`` bytes, in place when possible.

        ``realloc(0, n)`` is ``malloc(n)``; ``realloc(p, 0)`` frees ``p`` and
        returns 0. If the request cannot be served, MemoryError is raised and
        the block at ``p`` is left as it was.
        """
        if not self._locking:
            return self._realloc(p, size)
        lock = self._lock
        lock.acquire()
        try:
            return self._realloc(p, size)
        finally:
            lock.release()

    # -- calloc, sizes, views ----------------------------------------------------

    def calloc(self, count: int, size: int) -> int:
        """Allocate ``count * size`` zeroed bytes."""
        count = check_size(count, "count")
        size = check_size(size)
        total = count * size
        if total > self.capacity:
            raise MemoryError(
                f"cannot allocate {count} x {size} bytes: exceeds the heap's capacity"
            )
        with self._lock:
            p = self._malloc(total)
            usable = self._usable(p)
        try:
            zero_fill(self.bytes, p, usable)
        except BaseException:
            self.free(p)
            raise
        return p

    def usable_size(self, p: int) -> int:
        """Bytes usable at the live block ``p`` (at least the size asked)."""
        p = self._pointer(p)
        with self._lock:
            return self._usable(p)

    def view(self, p: int) -> memoryview:
        """A writable, zero-copy view of the usable bytes of the live block ``p``."""
        p = self._pointer(p)
        with self._lock:
            usable = self._usable(p)
        return self.bytes[p : p + usable]

    # -- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Unmap the region. Views handed out earlier must be released first.

        Every call after ``close()`` raises HeapError("the heap is closed").
        """
        if self._closed:
            return
        self.bytes.release()
        self._release_views()
        try:
            self.region.close()
        except BufferError:
            self._bind_views()
            self.bytes = memoryview(self.region.buf)
            raise BufferError(
                "the heap still has views in use; release them before close()"
            ) from None
        self._closed = True
        self._locking = True  # so that every entry point meets the closed lock
        self._lock = CLOSED

    def _release_views(self) -> None:
        """Drop the engine's views of the region before it is unmapped."""

    def _bind_views(self) -> None:
        """Take the views back when an unmap was refused."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> object:
        raise TypeError(f"a private {type(self).__name__} cannot be pickled; use SharedHeap")
