"""The segment: the heap's file, its control words, and reading them without a lock.

Region::

    0                control record (control.py), words 11-18 as below
    heap_start       blocks (layout.py)
    capacity         end of the heap; the engine never touches what follows
    journal          page-aligned: ``slots`` entries of 16 bytes
    lock             page-aligned (journal + its pages): the mutex
                     (``lock.MUTEX_BYTES``), then the attach table
                     (``attach.py``, ``ATTACH_SLOTS`` slots of no payload)
    lock + lock_area_bytes()

Control words of a shared heap (the engine reserves 10-23)::

    10  lock                byte offset of the lock area

    11  SHARED_MAGIC        b"pyashare": a heap made by SharedHeap.create
    12  SHARED_VERSION      layout version of words 10-18, the journal and the
                            lock area (2: the mutex and the attach table)
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
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Any, Final

from .. import control as C
from ..attach import AttachTable, table_words
from ..errors import HeapError
from ..journal import ENTRY_BYTES
from ..layout import HEADER
from ..lock import MUTEX_BYTES
from ..policies import policy_by_id
from ..regions import BUILDING_SUFFIX, FileRegion, _shm_path, list_shared, page_round_up

SHARED_MAGIC: Final = int.from_bytes(b"pyashare", "little")
SHARED_VERSION: Final = 2
ATTACH_SLOTS: Final = 256  # processes (or attachments) at once

W_LOCK: Final = C.W_LOCK

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


def lock_area_bytes() -> int:
    """Bytes of the lock area: the mutex, then the attach table, in whole pages."""
    return page_round_up(MUTEX_BYTES + 8 * table_words(ATTACH_SLOTS, 0))


def attach_table(words: Any, lock: int, fd: int) -> AttachTable:
    """The attach table of the lock area at byte ``lock`` of ``words``."""
    return AttachTable(words, (lock + MUTEX_BYTES) >> 3, ATTACH_SLOTS, 0, fd)


# -- the segment -------------------------------------------------------------------


class _Segment(FileRegion):
    """The heap's file. Inside a transaction, pages to give back are only noted.

    A trim gives back the pages above the new break; if the transaction were
    then undone, the old break would come back over zeroed pages. So pages are
    given back only once the transaction has committed.
    """

    def __init__(self, path: str, buf: Any, name: str, fd: int) -> None:
        super().__init__(path, buf, name)
        self.lock: Any = None  # the heap's SharedLock: inside its transactions, pages wait
        self.deferred: list[tuple[int, int]] = []
        # An open file of its own (not a duplicate of the caller's descriptor)
        # for reserving blocks and for the attach table's record lock.
        self.reserve_fd = _reopen(fd)

    def close(self) -> None:
        super().close()
        if self.reserve_fd >= 0:
            os.close(self.reserve_fd)
            self.reserve_fd = -1

    def _discard(self, start: int, length: int) -> None:
        lock = self.lock
        if lock is not None and lock.in_transaction:
            self.deferred.append((start, length))
        else:
            super()._discard(start, length)

    def keep_mapped(self) -> None:
        """Never unmap, for the rest of the process: a thread of it may hold
        the robust mutex in this mapping (or wait for it), and at the
        process's exit the kernel must find the mutex there to mark its
        owner dead. A reference that is never given back keeps the mapping;
        the kernel unmaps it with the process."""
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.buf))

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
    lock = words[W_LOCK]
    if (
        size % 8
        or not words[C.W_HEAP_START] < capacity <= journal
        or journal % 8
        or not 0 < slots <= (lock - journal) // ENTRY_BYTES
        or lock % MUTEX_BYTES
        or lock + lock_area_bytes() > size
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
        attached = len(_read_attached(fd, words[W_LOCK]))
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
        "attached": attached,
    }


def _read_attached(fd: int, lock: int) -> list[int]:
    """The pids of the live processes in the attach table, read from the file ``fd``."""
    data = os.pread(fd, 8 * table_words(ATTACH_SLOTS, 0), lock + MUTEX_BYTES)
    words = list(struct.unpack(f"={len(data) // 8}Q", data))
    return AttachTable(words, 0, ATTACH_SLOTS, 0, fd).attached()


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


# -- files -------------------------------------------------------------------------


def _address_of(buf: Any) -> int:
    """The address of the first byte of a mapping, keeping no export of it."""
    first = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(first)
    finally:
        del first


def _reopen(fd: int) -> int:
    """A new open file (not a duplicate descriptor) on the file open at ``fd``.

    What is done through an open file (a record lock, a reservation) should
    not depend on a descriptor the caller may close, nor on the duplicate
    ``mmap`` keeps of the descriptor it maps.
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)


def _map(fd: int, size: int) -> Any:
    import mmap

    if size <= 0:
        raise HeapError("the heap's file is empty")
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
