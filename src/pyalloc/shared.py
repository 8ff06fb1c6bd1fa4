"""SharedHeap: one heap in POSIX shared memory, used by many processes at once.

A shared heap is the engine of ``heap.py`` over a named segment of
``/dev/shm``; every process that attaches maps the same bytes, so a pointer
(a payload offset) means the same block everywhere and can be passed through
a queue, a pipe or the heap's own directory of names.

A segment is a file on tmpfs, and nothing below depends on that: making and
attaching (``_create_file``, ``_open_file``) take any path, and
``mapped.MappedHeap`` is this class over a file the caller names.

Glossary
--------
segment     the ``/dev/shm`` file holding the heap; its name is the heap's.
lock        ``flock`` on the segment's file, plus a ``threading.Lock`` for the
            threads of one process. The kernel drops a ``flock`` when the
            last descriptor of its open file is closed, which death does, so
            a process killed holding the lock blocks no one. Each attachment
            opens the file once for the lock alone: the mapping's own
            descriptor (mmap keeps a duplicate) and a forked child's copies
            must not share it, or they would keep a dead holder's lock.
journal     the undo journal of ``journal.py``: every metadata word an
            operation overwrites is saved first, so a killed operation is
            undone by the next process to take the lock.
transaction everything done under one hold of the lock; it ends in commit
            (journal emptied) or, if the operation raised, in undo.
recovery    undoing a dead holder's transaction; counted in the control record.
directory   ``names``: str -> pointer, kept in one heap block whose offset is
            a control word, so every process sees the same names.

Region::

    0                control record (control.py), words 11-18 as below
    heap_start       blocks (layout.py)
    capacity         end of the heap; the engine never touches what follows
    journal          page-aligned: ``slots`` entries of 16 bytes
    journal + 16 * slots

Control words of a shared heap (the engine reserves 10-23)::

    11  SHARED_MAGIC        b"pyashare": a heap made by SharedHeap.create
    12  SHARED_VERSION      layout version of words 11-18 and the journal
    13  journal             byte offset of the journal
    14  journal slots       entries it can hold
    15  journal count       live entries: non-zero only inside a transaction,
                            or after its holder died
    16  names               payload offset of the directory block, 0 if none
    17  names next          a directory block being written, 0 otherwise
    18  recoveries          transactions undone after their holder died
    (19 is the engine's: committed bytes, control.py)
    20  arrays              the directory of named arrays, 0 if none
    21  arrays next         an array block being written, 0 otherwise

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

Payload bytes are not journaled. The one place an operation writes payload
(realloc copying a block to its new place) first commits, at a point where
the heap is consistent: the new block is allocated, the old one intact. A
process killed during the copy leaks the new block and keeps the old; no
other process's block is touched.

The engine's per-process cache of freed small blocks stays off in a shared
heap: a block freed by one process must be usable by all, and a process that
dies must not take freed memory with it. ``Heap._bind`` leaves it off; only
the private ``Heap`` constructor turns it on.
"""

from __future__ import annotations

import ctypes
import fcntl
import math
import os
import struct
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from . import control as C
from .allocator import check_size
from .errors import HeapCorruptionError, HeapError, InvalidPointerError
from .heap import DEFAULT_CAPACITY, Heap
from .journal import DEFAULT_SLOTS, ENTRY_BYTES, Journal
from .layout import HEADER
from .lock import ClosedLock, HeapLock
from .policies import is_builtin, policy_by_id, policy_class
from .regions import (
    BUILDING_SUFFIX,
    FileRegion,
    Words,
    _shm_path,
    allocate_blocks,
    building_path,
    list_shared,
    page_round_up,
    remove_abandoned_builds,
)

if TYPE_CHECKING:
    from .arrays import SharedArrays

__all__ = ["SharedHeap", "SharedNames", "describe_file", "describe_segment", "list_heaps"]

SHARED_MAGIC: Final = int.from_bytes(b"pyashare", "little")
SHARED_VERSION: Final = 1

W_SHARED_MAGIC: Final = C.W_RESERVED
W_SHARED_VERSION: Final = C.W_RESERVED + 1
W_JOURNAL: Final = C.W_RESERVED + 2
W_JOURNAL_SLOTS: Final = C.W_RESERVED + 3
W_JOURNAL_COUNT: Final = C.W_RESERVED + 4
W_NAMES: Final = C.W_RESERVED + 5
W_NAMES_NEXT: Final = C.W_RESERVED + 6
W_RECOVERIES: Final = C.W_RESERVED + 7
W_ARRAYS: Final = C.W_COMMITTED + 1  # the directory of named arrays (arrays.py), 0 if none
W_ARRAYS_NEXT: Final = C.W_COMMITTED + 2  # an array block being written, 0 otherwise
DRAFT_WORDS: Final = (W_NAMES_NEXT, W_ARRAYS_NEXT)  # blocks recovery frees when a holder died

assert W_RECOVERIES < C.W_COMMITTED < W_ARRAYS_NEXT < C.CONTROL_WORDS

NAMES_MAGIC: Final = int.from_bytes(b"pyanames", "little")
NAME_MAX_BYTES: Final = 255
_NAMES_HEAD = struct.Struct("<QQ")  # magic, number of entries
_NAME_ENTRY = struct.Struct("<QQ")  # pointer, key length; then the key, padded to 8


# -- the segment -------------------------------------------------------------------


class _Segment(FileRegion):
    """The heap's file. Inside a transaction, pages to give back are only noted.

    A trim gives back the pages above the new break; if the transaction were
    then undone, the old break would come back over zeroed pages. So pages are
    given back only once the transaction has committed.
    """

    def __init__(self, path: str, buf: Any, name: str, fd: int) -> None:
        super().__init__(path, buf, name)
        self.in_transaction = False
        self.deferred: list[tuple[int, int]] = []
        # An open file of its own for reserving blocks (not the lock's, which
        # a forked child replaces; not a duplicate of it, which would share its flock).
        self.reserve_fd = _reopen(fd)

    def close(self) -> None:
        super().close()
        if self.reserve_fd >= 0:
            os.close(self.reserve_fd)
            self.reserve_fd = -1

    def _discard(self, start: int, length: int) -> None:
        if self.in_transaction:
            self.deferred.append((start, length))
        else:
            super()._discard(start, length)

    def discard_deferred(self) -> None:
        deferred = self.deferred
        while deferred:
            start, length = deferred.pop()
            FileRegion._discard(self, start, length)


def _read_control(fd: int, what: str) -> tuple[list[int], int]:
    """The control words and the size of the open file ``fd``, read without mapping.

    ``what`` names the file in messages ("shared-memory segment 'jobs'").
    """
    size = os.fstat(fd).st_size
    data = os.pread(fd, C.CONTROL_WORDS * 8, 0)
    if len(data) < C.CONTROL_WORDS * 8:
        raise HeapError(f"{what} is not a pyalloc heap (too small)")
    return list(struct.unpack(f"={C.CONTROL_WORDS}Q", data)), size


def _check_control(words: list[int], size: int, what: str) -> None:
    """Refuse a file that is not a shared heap this version can use."""
    if words[C.W_MAGIC] != C.MAGIC:
        raise HeapError(f"{what} is not a pyalloc heap (bad magic number)")
    version = words[C.W_FORMAT] & 0xFFFF
    if version != C.FORMAT_VERSION:
        raise HeapError(
            f"{what} holds a heap of format version {version}; "
            f"this pyalloc reads version {C.FORMAT_VERSION}"
        )
    if words[W_SHARED_MAGIC] != SHARED_MAGIC:
        raise HeapError(
            f"{what} holds a pyalloc heap that was not made by SharedHeap.create "
            "or MappedHeap.create"
        )
    if words[W_SHARED_VERSION] != SHARED_VERSION:
        raise HeapError(
            f"{what} holds a shared heap of layout version {words[W_SHARED_VERSION]}; "
            f"this pyalloc reads version {SHARED_VERSION}"
        )
    try:
        policy_by_id(words[C.W_FORMAT] >> 16)
    except ValueError as e:
        raise HeapError(f"{what}: {e}") from None
    capacity = words[C.W_CAPACITY]
    journal = words[W_JOURNAL]
    slots = words[W_JOURNAL_SLOTS]
    if (
        size % 8
        or not words[C.W_HEAP_START] < capacity <= journal
        or journal % 8
        or not 0 < slots <= (size - journal) // ENTRY_BYTES
    ):
        raise HeapError(f"{what}: its control record does not fit its size ({size} bytes)")


def describe_segment(name: str) -> dict[str, Any] | None:
    """What the control record of segment ``name`` says, or None if it is no shared heap.

    Reads the first bytes of the file only: it takes no lock, maps nothing
    and writes nothing, so it is safe on any segment.
    """
    try:
        path = _shm_path(name)
    except ValueError:
        return None
    return describe_file(path, name)


def describe_file(path: str, name: str | None = None) -> dict[str, Any] | None:
    """``describe_segment`` of the file at ``path`` (a heap file or a segment).

    ``name`` is the ``"name"`` reported; the path unless given.
    """
    if name is None:
        name = path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        words, size = _read_control(fd, repr(name))
        _check_control(words, size, repr(name))
    except (HeapError, OSError):
        return None
    finally:
        os.close(fd)
    return {
        "name": name,
        "segment_bytes": size,
        "capacity": words[C.W_CAPACITY],
        "heap_bytes": words[C.W_BRK] + HEADER,
        "peak_heap_bytes": words[C.W_PEAK],
        "policy": policy_by_id(words[C.W_FORMAT] >> 16).name,
        "journal_entries": words[W_JOURNAL_COUNT],
        "recoveries": words[W_RECOVERIES],
        "has_names": bool(words[W_NAMES]),
    }


def list_heaps() -> list[dict[str, Any]]:
    """``describe_segment`` of every shared heap in ``/dev/shm``."""
    found = []
    for name in list_shared():
        if name.endswith(BUILDING_SUFFIX):
            continue  # a heap being made by SharedHeap.create
        info = describe_segment(name)
        if info is not None:
            found.append(info)
    return found


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


class _PayloadBytes:
    """The region's bytes as the engine sees them (``self.bytes``).

    Reads and slices are the memoryview's. A store made by the thread inside
    a transaction (realloc moving a block) commits the transaction first, so
    the payload it overwrites is never needed by an undo.
    """

    __slots__ = ("_before_store", "_view")

    def __init__(self, view: memoryview, before_store: Callable[[], None]) -> None:
        self._view = view
        self._before_store = before_store

    def __getitem__(self, key: Any) -> Any:
        return self._view[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._before_store()
        self._view[key] = value

    def __len__(self) -> int:
        return len(self._view)

    def release(self) -> None:
        self._view.release()


# -- fork --------------------------------------------------------------------------

_open_heaps: weakref.WeakSet[SharedHeap] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for heap in list(_open_heaps):
        heap._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the heap ----------------------------------------------------------------------


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
    _lock_fd: int
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
        if journal_slots < 64:
            raise ValueError(f"journal_slots must be at least 64, got {journal_slots}")
        policy_cls = policy_class(policy)
        if not is_builtin(policy_cls):
            raise ValueError(
                f"policy {policy!r} runs on private heaps only: a shared heap stores its"
                " policy's id for every process to find, which only the built-in ones have"
            )
        cls.layout_size(capacity, policy_cls)
        journal = page_round_up(capacity)
        size = journal + page_round_up(journal_slots * ENTRY_BYTES)
        directory = os.path.dirname(path)
        remove_abandoned_builds(directory)
        building = building_path(path)
        fd = os.open(building, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        region: _Segment | None = None
        lock_fd = -1
        try:
            os.ftruncate(fd, size)
            region = _Segment(path, _map(fd, size), name, fd)
            # The file is sparse: its first pages (control record, policy words,
            # the epilogue) and the journal get their blocks now, before the
            # format writes there (a store to a page without a block is a
            # SIGBUS); the rest as the break reaches them (Heap._grow_to).
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
            words[W_SHARED_MAGIC] = SHARED_MAGIC
            if cls._DURABLE:
                region.flush()
                os.fsync(fd)
            lock_fd = _reopen(fd)
            try:
                os.link(building, path)  # atomic, and refuses an existing name
            except FileExistsError:
                raise FileExistsError(f"{cls._KIND} {name!r} already exists") from None
            if cls._DURABLE:
                _fsync_directory(directory)
        except BaseException:
            if lock_fd >= 0:
                os.close(lock_fd)
            if region is not None:
                region.close()
            raise
        finally:
            os.close(fd)
            os.unlink(building)
        return cls._from_segment(region, lock_fd)

    @classmethod
    def _open_file(cls, path: str, name: str) -> Self:
        """Attach to the heap file ``path``, reported as ``name``; write nothing if refused."""
        what = f"{cls._KIND} {name!r}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(f"no {cls._KIND} named {name!r}") from None
        try:
            words, size = _read_control(fd, what)
            _check_control(words, size, what)
            region = _Segment(path, _map(fd, size), name, fd)
            try:
                lock_fd = _reopen(fd)
            except BaseException:
                region.close()
                raise
        finally:
            os.close(fd)
        return cls._from_segment(region, lock_fd)

    @classmethod
    def _from_segment(cls, region: _Segment, fd: int) -> Self:
        heap = cls.__new__(cls)
        heap.name = region.name or ""
        heap._lock_fd = fd
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
            heap._bind(region, True)
            heap.meta.attach(raw[W_JOURNAL] >> 3, raw[W_JOURNAL_SLOTS], W_JOURNAL_COUNT)
        except BaseException:
            lock = getattr(heap, "_lock", None)
            if isinstance(lock, _SegmentLock):
                lock.close()
            else:
                os.close(fd)
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
        heap._base_address = _address_of(region.buf)
        heap.names = SharedNames(heap)
        from .arrays import SharedArrays  # arrays.py builds on this module

        heap.arrays = SharedArrays(heap)
        _open_heaps.add(heap)
        return heap

    # -- engine hooks --------------------------------------------------------------

    def _make_lock(self) -> Any:
        return _SegmentLock(self._lock_fd, self)

    def _undo(self) -> None:
        segment = self._segment
        self._journal.undo()
        segment.in_transaction = False
        segment.deferred.clear()
        self.brk = self._raw[C.W_BRK]

    def _recover(self) -> None:
        """Undo the transaction of a holder that died, then free its drafts
        (a directory block, an array block) that no directory names."""
        raw = self._raw
        if raw[W_JOURNAL_COUNT]:
            self._journal.undo()
            raw[W_RECOVERIES] += 1
        for word in DRAFT_WORDS:
            draft = raw[word]
            if not draft:
                continue
            self.brk = raw[C.W_BRK]
            segment = self._segment
            segment.in_transaction = True
            try:
                self._free(draft)
                self.meta.store(word, 0)
            except HeapError:
                self._undo()
                raw[word] = 0  # not a block: forget it rather than fail every lock
                continue
            self._journal.commit()
            segment.in_transaction = False
            segment.discard_deferred()

    def _checkpoint(self) -> None:
        """Commit in the middle of a transaction, at a point where the heap is consistent."""
        self._journal.commit()
        self._segment.discard_deferred()

    def _before_payload_store(self) -> None:
        if self._lock.owner == threading.get_ident():
            self._checkpoint()

    def _after_fork_in_child(self) -> None:
        if self._closed:
            return
        self._lock.reopen_after_fork()
        self._segment.in_transaction = False
        self._segment.deferred.clear()

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
            mine = os.fstat(self._lock.fd)
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
        lock.close()
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
        if isinstance(lock, _SegmentLock):
            lock.abandon()
        self._closed = True
        _open_heaps.discard(self)
        self._lock = _ClosedLock()


class SharedNames(MutableMapping[str, int]):
    """The heap's directory: names (str) of blocks (pointers), seen by every process.

    A name does not own its block: freeing the block leaves the name
    pointing at it, and deleting the name does not free the block. Each
    call is one transaction; ``pop`` takes a name atomically, so processes
    may use the directory to hand blocks to each other.
    """

    def __init__(self, heap: SharedHeap) -> None:
        self._heap: SharedHeap = weakref.proxy(heap)

    def __getitem__(self, key: str) -> int:
        with self._heap._lock:
            return self._heap._read_names()[key]

    def __setitem__(self, key: str, pointer: int) -> None:
        _check_name(key)
        if pointer.__class__ is not int:
            if isinstance(pointer, bool) or not isinstance(pointer, int):
                raise TypeError(f"a name maps to a pointer (int), not {type(pointer).__name__}")
            pointer = int(pointer)
        heap = self._heap
        with heap._lock:
            heap._live_header(pointer)
            table = heap._read_names()
            if table.get(key) != pointer:
                table[key] = pointer
                heap._write_names(table)

    def __delitem__(self, key: str) -> None:
        heap = self._heap
        with heap._lock:
            table = heap._read_names()
            del table[key]
            heap._write_names(table)

    _MISSING: Final = object()

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its pointer, in one transaction."""
        heap = self._heap
        with heap._lock:
            table = heap._read_names()
            if key not in table:
                if default is self._MISSING:
                    raise KeyError(key)
                return default
            pointer = table.pop(key)
            heap._write_names(table)
            return pointer

    def __iter__(self) -> Iterator[str]:
        return iter(self.copy())

    def __len__(self) -> int:
        return len(self.copy())

    def copy(self) -> dict[str, int]:
        """A snapshot of the directory as a dict."""
        with self._heap._lock:
            return self._heap._read_names()

    def __repr__(self) -> str:
        return f"SharedNames({self.copy()!r})"


# -- helpers -----------------------------------------------------------------------


def _address_of(buf: Any) -> int:
    """The address of the first byte of a mapping, keeping no export of it."""
    first = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(first)
    finally:
        del first


def _reopen(fd: int) -> int:
    """A new open file (not a duplicate descriptor) on the file open at ``fd``.

    The lock needs an open file of its own: ``flock`` belongs to the open
    file, and ``mmap`` keeps a duplicate of the descriptor it maps, which
    would otherwise hold the lock for as long as the mapping exists, in this
    process and in any child forked from it.
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)


def _map(fd: int, size: int) -> Any:
    import mmap

    if size <= 0:
        raise HeapError("the heap's file is empty")
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED)


def _fsync_directory(directory: str) -> None:
    """Make a new name in ``directory`` durable."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_name(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"a name must be a str, not {type(key).__name__}")
    n = len(key.encode())
    if not 0 < n <= NAME_MAX_BYTES:
        raise ValueError(f"a name must be 1 to {NAME_MAX_BYTES} bytes of UTF-8, got {n}")


def _encode_names(table: dict[str, int]) -> bytes:
    parts = [_NAMES_HEAD.pack(NAMES_MAGIC, len(table))]
    for key, pointer in sorted(table.items()):
        raw = key.encode()
        parts.append(_NAME_ENTRY.pack(pointer, len(raw)))
        parts.append(raw + bytes(-len(raw) % 8))
    return b"".join(parts)


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as e:
        raise ImportError(
            "SharedHeap arrays need numpy; install it with: pip install 'pyalloc[numpy]'"
        ) from e
    return numpy


def _array_spec(
    np: Any, shape: int | tuple[int, ...], dtype: Any
) -> tuple[Any, tuple[int, ...], int]:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError("arrays of Python objects cannot live in shared memory")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"array dimensions must be ints, got {d!r}")
        if d < 0:
            raise ValueError(f"array dimensions must be >= 0, got {d}")
    if dt.subdtype is not None:
        # As numpy does: a (3,)-float64 element makes the array one dimension
        # more, of float64 (a descriptor of the element would lose the 3).
        dt, inner = dt.subdtype
        dims += inner
    return dt, dims, math.prod(dims) * dt.itemsize
