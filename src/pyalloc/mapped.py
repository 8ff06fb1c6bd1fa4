"""MappedHeap: a heap in a regular file, mapped shared, that outlives its processes.

A mapped heap is a ``SharedHeap`` whose file is one the caller names instead
of a segment of ``/dev/shm``: the same layout, lock, journal and directory of
names (the ``shared`` package has them all), so it is shared by processes at once in
exactly the same way. Because the file is on a disk, the heap also persists:
closed by every process, opened again later, it holds the same blocks at
the same offsets, their bytes and the names.

Glossary
--------
heap file   the file that holds the heap: control record, blocks, journal.
            It is sparse: pages never touched take no disk space, and pages
            a trim gives back are punched out of it again.
flush       ``msync`` of the whole mapping, then ``fsync``: the stores made so
            far are on the disk when it returns.

What survives what::

    process killed (SIGKILL, at any instruction)
        every store it made: they are in the page cache, which the kernel
        owns. An operation it had begun is undone from the journal by the
        next process to take the lock, now or after a reopen; the blocks it
        held are leaked, as in any shared heap.
    machine crash (power loss, kernel panic)
        if nothing was stored since the last completed flush(), the heap as
        flushed. Otherwise a mixture: the kernel writes dirty pages back
        when and in what order it likes, so any part of the later stores may
        be on the disk. The journal does not help (its pages are written
        back unordered too); check() finds a torn structure, not torn
        payload bytes.
        create() syncs the new file and its name: a crash right after it
        leaves an empty heap or no file, never a half-made heap.
        The lock in the file may be left held by a process of the old boot:
        the first process to open the file again finds no live process in
        its attach table and initializes the lock anew.

Limits: the file must be on a local filesystem that supports hard links
(create links the finished file into place), open-file-description record
locks (the attach table's) and shared writable mappings that a
process-shared mutex can live in (the heap's lock is one, in the file).
Truncating a heap file while a process has it mapped kills that process
(SIGBUS) when it next touches the lost pages. Header tags are integer
arithmetic that every build computes alike, compiled or interpreted; a file
of another pyalloc format version or byte order is refused with HeapError.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Self

from .heap import DEFAULT_CAPACITY
from .journal import DEFAULT_SLOTS
from .shared import SharedHeap
from .shared.lock import lock_notice

__all__ = ["MappedHeap", "names_a_file", "open_for_command"]


class MappedHeap(SharedHeap):
    """A heap in a regular file mapped shared: persistent, and shared by processes.

    Make one with ``MappedHeap.create(path, capacity)`` and open it, in this
    process or any other, now or later, with ``MappedHeap.open(path)``. It
    has the whole API of ``SharedHeap``: every operation is all-or-nothing
    for the processes that share it, and ``names`` is kept in the file.

    ``close()`` unmaps; the file stays. ``unlink()`` removes the file's name.
    ``flush()`` writes the heap to the disk. Pickling sends the absolute path:
    unpickling opens the file.
    """

    _KIND = "file"
    _DURABLE = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use MappedHeap.create(path, capacity) or MappedHeap.open(path)")

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        capacity: int = DEFAULT_CAPACITY,
        *,
        policy: str = "segregated",
        journal_slots: int = DEFAULT_SLOTS,
    ) -> Self:
        """Make a heap in the new file ``path``; FileExistsError if it exists.

        The file is built beside ``path`` under a temporary name and linked to
        ``path`` only when complete and synced: no process can open a
        half-made heap, and an existing file is never overwritten.
        """
        where = _absolute(path)
        return cls._create_file(where, where, capacity, policy, journal_slots)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open the heap in the file ``path``.

        FileNotFoundError if there is no such file; HeapError if it is not a
        heap this version can use (not a heap, truncated, another format).
        A refused file is not written.
        """
        where = _absolute(path)
        return cls._open_file(where, where)

    @classmethod
    def attach(cls, path: str | os.PathLike[str]) -> Self:
        """``open``: a mapped heap is named by its path."""
        return cls.open(path)

    @property
    def path(self) -> str:
        """The file's absolute path."""
        return self.name

    def flush(self) -> None:
        """Write the heap to its file on the disk and wait for it.

        Taken under the lock, so no operation of any process is half done in
        what is written; payload stores made through views outside the lock
        go in as they stand.
        """
        with self._lock:
            self._segment.flush()
            os.fsync(self._segment.reserve_fd)

    def __reduce__(self) -> tuple[Callable[[str], Self], tuple[str]]:
        return (type(self).open, (self.name,))


def _absolute(path: str | os.PathLike[str]) -> str:
    # Absolute, so that a pickle or a message names the same file from any
    # working directory.
    where = os.fspath(path)
    if not isinstance(where, str):
        raise TypeError(f"a heap file's path must be a str or os.PathLike[str], not {where!r}")
    if not where:
        raise ValueError("a heap file's path must not be empty")
    return os.path.abspath(where)


def names_a_file(name: str) -> bool:
    """Whether a command's ``name`` of a heap is a heap file's path (it holds
    a '/') rather than a shared-memory segment's name."""
    return "/" in name


def open_for_command(name: str) -> SharedHeap:
    """The heap a command names (``names_a_file``): the heap file at ``name``,
    else the shared-memory segment ``name``. When another process holds its
    lock long, says so on stderr: the command waits for it next."""
    heap = MappedHeap.open(name) if names_a_file(name) else SharedHeap.attach(name)
    notice = lock_notice(heap, name)
    if notice:
        print(notice, file=sys.stderr)
    return heap
