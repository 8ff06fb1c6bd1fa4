"""SharedHeap: one heap in POSIX shared memory, used by many processes at once.

The heap (``SharedHeap``) puts together the segment, its lock and
journal, the directory of names and the numpy helpers of this package.

Invariants, whenever no process holds the lock::

    journal count == 0  or  its holder is dead (and the next lock undoes it)
    names next == 0     or  its holder is dead
    the heap walks (check() passes) once the journal is undone

The engine's per-process cache of freed small blocks stays off in a shared
heap: a block freed by one process must be usable by all, and a process that
dies must not take freed memory with it. ``Heap._bind`` leaves it off; only
the private ``Heap`` constructor turns it on. Small objects are recycled by
their slabs instead, which a shared heap makes with a class's first object.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from .. import control as C
from ..allocator import check_size
from ..attach import AttachTable
from ..errors import HeapCorruptionError, HeapError, InvalidPointerError
from ..heap import DEFAULT_CAPACITY, Heap
from ..journal import DEFAULT_SLOTS, ENTRY_BYTES, MAX_SLOTS, Journal
from ..layout import HEADER
from ..lock import SharedLock, init_shared_mutex
from ..policies import is_builtin, policy_class
from ..regions import (
    Words,
    _shm_path,
    allocate_blocks,
    build_then_link,
    fsync_directory,
    page_round_up,
)
from .fork import _open_heaps
from .lock import _ClosedLock, claim_slot, segment_lock
from .names import _NAME_ENTRY, _NAMES_HEAD, NAME_MAX_BYTES, NAMES_MAGIC, SharedNames, _encode_names
from .ndarrays import _array_spec, _numpy
from .segment import (
    DRAFT_WORDS,
    SHARED_MAGIC,
    SHARED_VERSION,
    W_JOURNAL,
    W_JOURNAL_COUNT,
    W_JOURNAL_SLOTS,
    W_LOCK,
    W_NAMES,
    W_NAMES_NEXT,
    W_RECOVERIES,
    W_SHARED_MAGIC,
    W_SHARED_VERSION,
    _address_of,
    _check_control,
    _map,
    _read_control,
    _Segment,
    attach_table,
    lock_area_bytes,
)
from .transaction import _PayloadBytes

if TYPE_CHECKING:
    from ..arrays import SharedArrays


class SharedHeap(Heap):
    """A heap in a named POSIX shared-memory segment, shared by processes.

    Make one with ``SharedHeap.create(name, capacity)`` and attach to it from
    any process with ``SharedHeap.attach(name)``. It has the whole API of
    ``Heap``; a block may be freed by any process. Each operation holds a
    lock across processes; an operation cut short by the death of its process
    is undone by the next process that takes the lock.

    Pickling sends the name: unpickling attaches. ``close()`` detaches this
    process; ``unlink()`` removes the name (the memory goes when the last
    process detaches). Arrays and views handed out keep the mapping alive
    after ``close()`` until they are released.
    """

    name: str
    names: SharedNames
    arrays: SharedArrays  # from arrays.py
    _lock: Any  # a _SegmentLock, or a _ClosedLock once closed
    # Sliding a block down overwrites its old bytes; an undone transaction
    # would then give back a block whose bytes have moved.
    realloc_slides_down = False
    _table: AttachTable
    _slot: int
    _raw: Words
    _journal: Journal
    _segment: _Segment
    _base_address: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use SharedHeap.create(name, capacity) or SharedHeap.attach(name)")

    # -- making and attaching ------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        *,
        policy: str = "segregated",
        journal_slots: int = DEFAULT_SLOTS,
    ) -> Self:
        """Make a new shared heap named ``name``; FileExistsError if the name is taken.

        The heap is built under a temporary name and linked to ``name`` only
        when complete, so no process can attach to a half-made heap.
        """
        return cls._create_file(_shm_path(name), name, capacity, policy, journal_slots)

    @classmethod
    def attach(cls, name: str) -> Self:
        """Attach to the shared heap ``name``.

        FileNotFoundError if there is no such segment; HeapError if it is not
        a shared heap this version can use. A refused segment is not written.
        """
        return cls._open_file(_shm_path(name), name)

    # A /dev/shm segment is a file on tmpfs: everything below works on any
    # file path. ``_KIND`` names the file in messages, ``_DURABLE`` asks create
    # to sync the new file and its directory entry to the disk.
    _KIND = "shared-memory segment"
    _DURABLE = False

    @classmethod
    def _create_file(
        cls, path: str, name: str, capacity: int, policy: str, journal_slots: int
    ) -> Self:
        """Make the heap file ``path``, reported as ``name``; refuse an existing one."""
        capacity = check_size(capacity, "capacity")
        journal_slots = check_size(journal_slots, "journal_slots")
        if not 64 <= journal_slots <= MAX_SLOTS:
            raise ValueError(
                f"journal_slots must be between 64 and {MAX_SLOTS}, got {journal_slots}"
            )
        policy_cls = policy_class(policy)
        if not is_builtin(policy_cls):
            raise ValueError(
                f"policy {policy!r} runs on private heaps only: a shared heap stores its"
                " policy's id for every process to find, which only the built-in ones have"
            )
        cls.layout_size(capacity, policy_cls)
        journal = page_round_up(capacity)
        lock = journal + page_round_up(journal_slots * ENTRY_BYTES)
        size = lock + lock_area_bytes()

        def build(fd: int) -> _Segment:
            region = _Segment(path, _map(fd, size), name, fd)
            try:
                # The file is sparse: its first pages (control record, policy
                # words, the epilogue) and the journal get their blocks now,
                # before the format writes there (a store to a page without a
                # block is a SIGBUS); the rest as the break reaches them
                # (Heap._grow_to).
                committed = page_round_up(cls.control_bytes(capacity, policy_cls) + 2 * HEADER)
                what = f"make {cls._KIND} {name!r}"
                allocate_blocks(fd, 0, committed, path, what)
                allocate_blocks(fd, journal, size, path, what)
                cls._format(region, capacity, policy_cls)
                words = region.words
                words[C.W_COMMITTED] = committed
                words[W_SHARED_VERSION] = SHARED_VERSION
                words[W_JOURNAL] = journal
                words[W_JOURNAL_SLOTS] = journal_slots
                words[W_LOCK] = lock
                init_shared_mutex(_address_of(region.buf) + lock)
                attach_table(words, lock, fd).format()
                words[W_SHARED_MAGIC] = SHARED_MAGIC
            except BaseException:
                region.close()
                raise
            return region

        def sync(region: _Segment, fd: int) -> None:
            region.flush()
            os.fsync(fd)

        durable = cls._DURABLE
        region = build_then_link(
            path, size, build, f"{cls._KIND} {name!r}", sync if durable else None
        )
        try:
            if durable:
                fsync_directory(os.path.dirname(path))
        except BaseException:
            region.close()
            raise
        return cls._from_segment(region)

    @classmethod
    def _open_file(cls, path: str, name: str) -> Self:
        """Attach to the heap file ``path``, reported as ``name``; write nothing if refused."""
        what = f"{cls._KIND} {name!r}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(f"no {cls._KIND} named {name!r}") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{what} is a directory, not a heap") from None
        try:
            words, size = _read_control(fd, what)
            _check_control(words, size, what)
            region = _Segment(path, _map(fd, size), name, fd)
        finally:
            os.close(fd)
        return cls._from_segment(region)

    @classmethod
    def _from_segment(cls, region: _Segment) -> Self:
        heap = cls.__new__(cls)
        heap.name = region.name or ""
        heap._slot = -1
        try:
            raw = region.words
            heap._raw = raw
            heap._journal = Journal(
                raw,
                first=raw[W_JOURNAL] >> 3,
                slots=raw[W_JOURNAL_SLOTS],
                count_word=W_JOURNAL_COUNT,
                limit=raw[C.W_CAPACITY] >> 3,
            )
            heap._segment = region
            heap._base_address = _address_of(region.buf)
            heap._bind(region, True)
            # No per-process cache here: a class's slab comes with its first
            # object, and recycles small objects for every process.
            heap._slab_demand = 0
            heap.meta.attach(raw[W_JOURNAL] >> 3, raw[W_JOURNAL_SLOTS], W_JOURNAL_COUNT)
            heap._table, heap._slot = claim_slot(heap)
        except BaseException:
            lock = getattr(heap, "_lock", None)
            if isinstance(lock, SharedLock):
                lock.close()
            if getattr(heap, "meta", None) is not None:
                heap._release_views()
            heap.__dict__.clear()
            try:
                region.close()
            except BufferError:
                pass  # the traceback still holds the words; the mapping goes with it
            raise
        engine_bytes = heap.bytes
        heap.bytes = _PayloadBytes(memoryview(region.buf), heap._before_payload_store)  # type: ignore[assignment]
        engine_bytes.release()
        heap.names = SharedNames(heap)
        from ..arrays import SharedArrays  # arrays.py builds on this module

        heap.arrays = SharedArrays(heap)
        _open_heaps.add(heap)
        return heap

    # -- engine hooks --------------------------------------------------------------

    def _make_lock(self) -> Any:
        return segment_lock(self)

    def _undo(self) -> None:
        self._journal.undo()
        self._segment.deferred.clear()
        self.brk = self._shared_brk()

    def _sync_brk(self) -> None:
        self.brk = self._shared_brk()

    def _shared_brk(self) -> int:
        """The break as the control record holds it, checked: any process can
        write the record, and a stray word must not steer the engine."""
        brk = int(self._raw[C.W_BRK])
        if not self.heap_start <= brk < self.capacity:
            raise HeapCorruptionError(f"the heap's break word is corrupted ({brk:#x})")
        return brk

    def _discard_deferred(self) -> None:
        self._segment.discard_deferred()

    def _recover(self) -> None:
        """Undo the transaction of a holder that died, then free its drafts
        (a directory block, an array block) that no directory names."""
        raw = self._raw
        if raw[W_JOURNAL_COUNT]:
            self._journal.undo()
            raw[W_RECOVERIES] += 1
        for word in DRAFT_WORDS:
            draft = int(raw[word])
            if not draft:
                continue
            self.brk = self._shared_brk()
            lock = self._lock
            lock.in_transaction = True
            try:
                self._free(self._pointer(draft))
                self.meta.store(word, 0)
            except HeapError:
                self._undo()
                raw[word] = 0  # not a block: forget it rather than fail every lock
                continue
            finally:
                lock.in_transaction = False
            self._journal.commit()
            self._segment.discard_deferred()
        self.brk = self._shared_brk()

    def _checkpoint(self) -> None:
        """Commit in the middle of a transaction, at a point where the heap is consistent."""
        self._journal.commit()
        self._segment.discard_deferred()

    def _before_payload_store(self) -> None:
        if self._lock.owner == threading.get_ident():
            self._checkpoint()

    def _after_fork_in_child(self) -> None:
        """A forked child is an attachment of its own: its own slot in the table."""
        if self._closed:
            return
        self._lock.after_fork_in_child()
        try:
            self._table, self._slot = claim_slot(self)
        except HeapError:
            self._die()  # the table is full: this copy cannot be used in the child

    # -- checking and statistics ---------------------------------------------------

    def check(self) -> None:
        """Walk every block, free list and directory; HeapCorruptionError on a fault."""
        with self._lock:
            self._walk()
            self._read_names()
            self.arrays._check_all()

    def stats(self) -> dict[str, int]:
        out = super().stats()
        raw = self._raw
        out["recoveries"] = raw[W_RECOVERIES]
        out["journal_slots"] = raw[W_JOURNAL_SLOTS]
        out["names"] = len(self.names)
        # Processes, not attachments: one process may attach twice (this one counts).
        out["processes_attached"] = len(set(self._table.attached()))
        return out

    # -- the directory -------------------------------------------------------------

    def _read_names(self, word: int = W_NAMES) -> dict[str, int]:
        """The directory at control word ``word`` (names, or arrays), read and
        checked; the lock must be held."""
        q = self._raw[word]
        if not q:
            return {}
        try:
            usable = self._usable(q)
        except InvalidPointerError:
            raise HeapCorruptionError(
                f"the directory of names points to {q}, which is not a block"
            ) from None
        data = bytes(self.buf[q : q + usable])
        try:
            magic, count = _NAMES_HEAD.unpack_from(data, 0)
            if magic != NAMES_MAGIC:
                raise ValueError("bad magic number")
            table: dict[str, int] = {}
            at = _NAMES_HEAD.size
            for _ in range(count):
                pointer, length = _NAME_ENTRY.unpack_from(data, at)
                at += _NAME_ENTRY.size
                if length > NAME_MAX_BYTES or at + length > len(data):
                    raise ValueError("bad entry")
                table[data[at : at + length].decode()] = pointer
                at += (length + 7) & ~7
        except (ValueError, struct.error) as e:
            raise HeapCorruptionError(f"the directory of names is corrupted ({e})") from None
        return table

    def _write_names(self, table: dict[str, int], word: int = W_NAMES) -> None:
        """Replace the directory at control word ``word`` by ``table``; the lock
        must be held.

        The new block is allocated and committed first, with its offset in
        "names next", then filled, then swapped in; a process killed before
        the swap commits leaves "names next" for recovery to free.
        """
        old = self._raw[word]
        store = self.meta.store
        if table:
            data = _encode_names(table)
            q = self._malloc(len(data))
            store(W_NAMES_NEXT, q)
            self._checkpoint()
            self.buf[q : q + len(data)] = data
            store(word, q)
            store(W_NAMES_NEXT, 0)
        else:
            store(word, 0)
        if old:
            self._free(old)

    # -- numpy ---------------------------------------------------------------------

    def ndarray(
        self, shape: int | tuple[int, ...], dtype: Any = "float64", *, zero: bool = False
    ) -> Any:
        """Allocate a block and return a numpy array over it, without copying.

        The array's memory is the block's: every process that makes an array
        at ``offset_of(array)`` (``ndarray_at``) sees the same elements. The
        elements are uninitialized unless ``zero``. Free the block with
        ``free(offset_of(array))`` once no process uses it.
        """
        np = _numpy()
        dt, shape_t, nbytes = _array_spec(np, shape, dtype)
        p = self.calloc(nbytes, 1) if zero else self.malloc(nbytes)
        try:
            return self._array_over(np, p, shape_t, dt, nbytes)
        except BaseException:
            self.free(p)
            raise

    def ndarray_at(self, offset: int, shape: int | tuple[int, ...], dtype: Any = "float64") -> Any:
        """The numpy array of ``shape`` and ``dtype`` over the live block at ``offset``."""
        np = _numpy()
        dt, shape_t, nbytes = _array_spec(np, shape, dtype)
        usable = self.usable_size(offset)
        if nbytes > usable:
            raise ValueError(
                f"an array of {nbytes} bytes does not fit the block at {offset} ({usable} bytes)"
            )
        return self._array_over(np, offset, shape_t, dt, nbytes)

    def _array_over(self, np: Any, p: int, shape: tuple[int, ...], dt: Any, nbytes: int) -> Any:
        """A numpy array over ``nbytes`` at ``p``, holding the mapping alive.

        Made from a memoryview of the mapping, the array keeps an export of
        it, so close() leaves the mapping in place until the array (and every
        view made from it) is gone. An array made with ``buffer=`` the mmap
        itself would keep no export: close() would unmap it under the array.
        """
        return np.frombuffer(memoryview(self.buf)[p : p + nbytes], dtype=dt).reshape(shape)

    def offset_of(self, array: Any) -> int:
        """The pointer of the block that ``array`` (made by this heap) starts at."""
        np = _numpy()
        if not isinstance(array, np.ndarray):
            raise TypeError(f"expected a numpy array, not {type(array).__name__}")
        offset = int(array.__array_interface__["data"][0]) - self._base_address
        if not 0 < offset < self.capacity:
            raise ValueError("the array's memory is not in this shared heap's mapping")
        try:
            usable = self.usable_size(offset)
        except InvalidPointerError:
            raise InvalidPointerError(
                f"the array starts at offset {offset}, which is not the start of a live block"
            ) from None
        if array.flags.c_contiguous and array.nbytes > usable:
            raise ValueError(f"the array extends past the end of the block at {offset}")
        return offset

    # -- lifetime ------------------------------------------------------------------

    def unlink(self) -> None:
        """Remove the segment's name; attached processes keep their mapping."""
        path = self._segment.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no {self._KIND} named {self.name!r}") from None
        if not self._closed:
            mine = os.fstat(self._segment.reserve_fd)
            if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
                raise FileNotFoundError(f"the name {self.name!r} now belongs to another file")
        os.unlink(path)

    def close(self) -> None:
        """Detach: unmap once no array or view made from this heap is still alive."""
        if self._closed:
            return
        self._closed = True
        _open_heaps.discard(self)
        lock = self._lock
        self._lock = _ClosedLock()
        if isinstance(lock, SharedLock) and lock.users:
            # Another thread of this process holds the mutex or waits for it:
            # it goes on with this mapping, which therefore stays, for good
            # (if that thread never lets go, as when the interpreter exits
            # under it, the kernel can only mark a mapped mutex owner-dead).
            # The slot is reaped with the process.
            self._segment.keep_mapped()
            return
        lock.close()
        self._table.release(self._slot)
        self.bytes.release()
        self._release_views()
        try:
            self.region.close()
        except BufferError:
            pass  # arrays or views are alive; the mapping goes with the last of them

    def __reduce__(self) -> tuple[Callable[[str], Self], tuple[str]]:
        return (type(self).attach, (self.name,))

    def __repr__(self) -> str:
        if self._closed:
            return f"<{type(self).__name__} {self.name!r}, closed>"
        return (
            f"<{type(self).__name__} {self.name!r} {self.policy.name}, "
            f"{self._raw[C.W_BRK] + HEADER} of {self.capacity} bytes>"
        )

    # -- test support --------------------------------------------------------------

    def _die(self) -> None:
        """Leave this object as a killed process leaves the heap: lock dropped, nothing undone."""
        lock = self._lock
        if isinstance(lock, SharedLock):
            lock.abandon()
        # Its slot is freed as the next attachment would reap a dead one.
        self._table.release(self._slot)
        self._closed = True
        _open_heaps.discard(self)
        self._lock = _ClosedLock()
