# The compiled branch below names store_barrier, a C function of journal.pxd:
# mypy: disable-error-code="name-defined"
# ruff: noqa: F821
"""An undo journal for the metadata words of a heap shared between processes.

A shared heap's operation writes a handful of metadata words (headers,
footers, free-list links, bin heads, bitmap words, the break). A process
killed between two of those writes would leave the heap half-changed. The
journal makes every operation all-or-nothing: before a metadata word is
overwritten, its index and old value are appended to the journal; when the
operation is done the journal is emptied (commit). Whoever takes the lock
next and finds the journal non-empty knows its previous holder died inside
an operation, and restores the old values, newest first (undo).

Glossary
--------
word        an 8-byte metadata word of the region, named by its index
            (byte offset / 8), as the engine indexes ``region.words``.
entry       two words of the journal: the index of a word, then the value
            that word held before the operation first wrote it.
count       the number of valid entries: a control word of the heap. An
            entry exists iff its number is below the count.
commit      count = 0: the operation's writes stand.
undo        for each entry, newest first, word[index] = old; then count = 0.

Layout (after the heap's capacity, page-aligned)::

    journal + 16 * i        index of the word entry i saved
    journal + 16 * i + 8    its value before the operation
    ...                     ``slots`` entries

One journaled write, in this order::

    1. entry[count] = (index, words[index])
    2. count += 1
    3. words[index] = value

A kill before 2 leaves an entry beyond the count: invisible, and the word is
unchanged. A kill between 2 and 3 leaves an entry whose old value is the
word's current value: undoing it writes what is already there. A kill after 3
leaves an entry that undo reverts. So at every instant::

    words now, with every entry below count undone newest first
        == words as they were when the operation took the lock

Undo is idempotent: a process killed while undoing leaves the entries and
the count in place, and the next one undoes them all again, which ends in
the same words. Each entry is checked (an index inside the heap's metadata,
never the count itself) before anything is written, so a corrupted journal
is reported rather than followed.

Stores of 8-byte aligned words are single instructions, so another process
never sees half of one; the lock (a system call on both sides) orders the
dead holder's stores before the next holder's reads.
"""

from __future__ import annotations

from functools import partial
from operator import setitem
from typing import Any, Final

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from . import _cython as cython

from .errors import HeapCorruptionError, HeapError
from .regions import Words

ENTRY_BYTES: Final = 16
DEFAULT_SLOTS: Final = 1024  # entries; an operation writes a few dozen words at most
MAX_SLOTS: Final = 1 << 24  # far past any operation: bounds the journal's bytes

__all__ = ["DEFAULT_SLOTS", "ENTRY_BYTES", "Journal", "JournalFullError", "MetadataStore"]


class JournalFullError(HeapError):
    """An operation wrote more metadata words than the journal can hold."""


class Journal:
    """The undo journal of one region, read and written through ``raw``.

    ``raw`` is the region as 8-byte words (``region.words``); ``first`` is the
    word index of entry 0, ``slots`` the number of entries, ``count_word``
    the index of the count, and ``limit`` the number of words that may be
    journaled (the heap's capacity / 8: metadata never lies beyond it).
    """

    def __init__(self, raw: Words, first: int, slots: int, count_word: int, limit: int) -> None:
        if not 0 <= count_word < limit <= first:
            raise HeapError("the journal overlaps the words it protects")
        self.raw = raw
        self.first = first
        self.slots = slots
        self.count_word = count_word
        self.limit = limit

    @property
    def count(self) -> int:
        return self.raw[self.count_word]

    def entries(self) -> list[tuple[int, int]]:
        """The live entries, oldest first, each checked; HeapCorruptionError if bad."""
        raw = self.raw
        count = raw[self.count_word]
        if count > self.slots:
            raise HeapCorruptionError(f"the journal claims {count} entries; it has {self.slots}")
        out: list[tuple[int, int]] = []
        for i in range(count):
            e = self.first + 2 * i
            index = raw[e]
            if index >= self.limit or index == self.count_word:
                raise HeapCorruptionError(f"journal entry {i} names word {index}, outside the heap")
            out.append((index, raw[e + 1]))
        return out

    def undo(self) -> int:
        """Restore every journaled word, newest first; return how many entries."""
        entries = self.entries()  # all checked before the first write
        raw = self.raw
        for index, old in reversed(entries):
            raw[index] = old
        if entries:
            raw[self.count_word] = 0
        return len(entries)

    def commit(self) -> None:
        """Keep the operation's writes: forget the entries."""
        if self.raw[self.count_word]:
            self.raw[self.count_word] = 0


class MetadataStore:
    """Where the engine writes a metadata word: the one store of the engine.

    Every header, footer, link, list head, bitmap word and the break is
    written through ``store(index, value)``. Without a journal that is a
    plain store into the region's words. With one attached (shared and
    mapped heaps) it is the journaled write described above: entry, count,
    then the word.

    ``stores`` counts the region stores of journaled writes, and when it
    reaches ``fault_at`` the store raises ``fault`` instead: the crash tests
    cut an operation before each of its stores this way.
    """

    def __init__(self, words: Any) -> None:
        self.words = words
        self.journal = 0  # word index of entry 0; 0 while stores are not journaled
        self.slots = 0
        self.count_word = 0
        self.stores = 0
        self.fault_at = -1
        self.fault: Any = None
        if not cython.compiled:
            # Interpreted, an unjournaled store is a C call: no Python frame.
            # operator.setitem through partial is called faster than the
            # words' own __setitem__ (a slot wrapper, which takes a tuple).
            self.store = partial(setitem, words)  # type: ignore[method-assign,assignment]

    def attach(self, first: int, slots: int, count_word: int) -> None:
        """Journal every store from now on, into ``slots`` entries from word ``first``."""
        self.slots = slots
        self.count_word = count_word
        self.journal = first
        if not cython.compiled:
            del self.store  # back to the method, which journals

    def store(self, index: int, value: int) -> int:
        if self.journal:
            self._journaled(index, value)
        else:
            self.words[index] = value
        return 0

    def _journaled(self, index: int, value: int) -> None:
        # self.words each time, not a local copy: compiled, copying a memoryview
        # takes a reference with an atomic instruction, the cost of the whole store.
        n = self.words[self.count_word]
        if n >= self.slots:
            raise JournalFullError(
                f"an operation wrote more than {self.slots} metadata words; it is undone"
            )
        e = self.journal + 2 * n
        if self.fault_at >= 0:
            self._journaled_armed(e, n, index, value)
        else:
            # The order of these stores is the journal's guarantee (a kill between
            # any two is undone right): compiled, a compiler barrier keeps each in
            # its place (the CPU keeps a thread's stores in order for its own signals).
            self.words[e] = index
            self.words[e + 1] = self.words[index]
            if cython.compiled:
                store_barrier()
            self.words[self.count_word] = n + 1
            if cython.compiled:
                store_barrier()
            self.words[index] = value
            self.stores += 4

    def _journaled_armed(self, e: int, n: int, index: int, value: int) -> None:
        """The journaled write with a fault armed (tests): each store may raise instead."""
        self._raw(e, index)
        self._raw(e + 1, self.words[index])
        self._raw(self.count_word, n + 1)
        self._raw(index, value)

    def _raw(self, index: int, value: int) -> None:
        if self.stores == self.fault_at:
            raise self.fault(f"store {self.stores}")
        self.stores += 1
        self.words[index] = value

    def arm(self, k: int, fault: Any) -> None:
        """Make the ``k``-th journaled store from now raise ``fault`` (tests)."""
        self.fault_at = self.stores + k
        self.fault = fault

    def release(self) -> None:
        """Drop the view of the region, so that it can be unmapped."""
        self.words = None
        if not cython.compiled and "store" in self.__dict__:
            del self.store
