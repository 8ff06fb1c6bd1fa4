"""Shared heaps: one heap in POSIX shared memory, used by many processes at once.

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
lock        a process-shared robust pthread mutex in the segment's lock area
            (``lock.py`` here, ``SharedLock`` in the engine's ``lock.py``),
            for processes and threads alike. The next locker after a holder
            dies is told so (EOWNERDEAD) and undoes its transaction, so a
            process killed holding the lock blocks no one; the attach table
            (``attach.py``) lets the only live attacher re-initialize a
            mutex whose holder died on another boot.
journal     the undo journal of ``journal.py``: every metadata word an
            operation overwrites is saved first, so a killed operation is
            undone by the next process to take the lock.
transaction everything done under one hold of the lock; it ends in commit
            (journal emptied) or, if the operation raised, in undo.
recovery    undoing a dead holder's transaction; counted in the control record.
directory   ``names``: str -> pointer, kept in one heap block whose offset is
            a control word, so every process sees the same names.

Modules
-------
segment      the file: control words of a shared heap, checking and describing it
lock         the lock around each operation: a transaction's begin, commit, undo
transaction  the payload bytes as the engine of a shared heap writes them
names        the directory of names
ndarrays     numpy arrays over blocks
fork         a forked child's own lock on each attached heap
heap         ``SharedHeap``, which puts them together
"""

from __future__ import annotations

from .heap import SharedHeap
from .names import SharedNames
from .segment import (
    SHARED_MAGIC,
    SHARED_VERSION,
    W_ARRAYS,
    W_ARRAYS_NEXT,
    W_JOURNAL,
    W_JOURNAL_COUNT,
    W_JOURNAL_SLOTS,
    W_NAMES,
    W_NAMES_NEXT,
    W_RECOVERIES,
    W_SHARED_MAGIC,
    W_SHARED_VERSION,
    describe_file,
    describe_segment,
    list_heaps,
)

__all__ = [
    "SHARED_MAGIC",
    "SHARED_VERSION",
    "W_ARRAYS",
    "W_ARRAYS_NEXT",
    "W_JOURNAL",
    "W_JOURNAL_COUNT",
    "W_JOURNAL_SLOTS",
    "W_NAMES",
    "W_NAMES_NEXT",
    "W_RECOVERIES",
    "W_SHARED_MAGIC",
    "W_SHARED_VERSION",
    "SharedHeap",
    "SharedNames",
    "describe_file",
    "describe_segment",
    "list_heaps",
]
