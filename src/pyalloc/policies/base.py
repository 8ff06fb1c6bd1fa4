"""The interface between the engine and a free-block index.

The engine owns the block format, splitting, coalescing and growth. A policy
only indexes the free blocks: ``insert`` a free block, ``remove`` one, and
``find`` a free block of at least ``need`` bytes. Its state (list heads,
bitmaps, a roving pointer) lives in ``words_needed`` words of the control
record, from word ``base`` on, so that every process sees the same index.

``LinkedLists`` gives policies doubly linked lists threaded through the free
blocks themselves: the next link at ``b + 8`` and the prev link at
``b + 16``, both mangled (see ``layout.py``). A list head is one control word
holding the first block's offset, 0 when empty. Unlinking validates both
neighbours' links first (``next.prev == b`` and ``prev.next == b``), so a
corrupted link is reported before anything is written.

The protocol the engine calls (every method below raises HeapCorruptionError
on metadata it cannot trust, before it writes)::

    insert(b, size)      b is a free block (header and footer written or about
                         to be); put it in the index
    insert_validated(b, size)
                         insert, after validate_insert(size) in the same
                         operation: what that checked may be trusted
    remove(b, size)      take the free block b out of the index
    validate(b, size)    raise if remove(b, size) would follow a bad link
    validate_insert(size)
                         raise if insert of a block of size would; the engine
                         calls both before an operation's first write
    take(need)           remove and return (b, size) of a free block of at
                         least need bytes, or (0, 0) (a pair of C integers
                         when compiled: no tuple is built)
    find(need)           such a block without removing it, or 0
    take_slab_room()     remove and return (b, size) of a free block that
                         can be carved into a slab and free blocks around it
                         (``slab.has_slab_room``), or (0, 0)
    check(free_blocks)   the index holds exactly free_blocks (offset -> size)
    blocks()             every block the index holds
    words_needed(cap)    (class method) control words the index needs

A policy reads the region's words directly and writes them only through the
heap's ``MetadataStore`` (``self.meta.store``), so that a shared heap's
journal sees every write. The break is read from the control record
(``words[W_BRK]``), which is where the engine keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final

from ..control import W_BRK
from ..errors import HeapCorruptionError
from ..layout import ALLOCATED, SIZE_MASK
from ..slab import ROOM_SURE, SLAB_BYTES, has_slab_room

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from .. import _cython as cython

if not cython.compiled:  # compiled, inline C functions: _accessors.pxd (_inline.py)
    from ..layout import decode, mangle, stored_size

if TYPE_CHECKING:
    from ..heap import Heap

NEXT: Final = 8  # link offsets inside a free block
PREV: Final = 16
globals().update(NEXT=NEXT, PREV=PREV)  # for Python importers of the compiled module


class FreeIndex:
    """A policy: the index of a heap's free blocks."""

    name: ClassVar[str] = ""  # set by each policy
    policy_id: ClassVar[int] = -1  # stored in a heap's format word; unique

    def __init__(self, heap: Heap, base: int) -> None:
        self.heap = heap
        self.base = base  # first control word of this policy
        self.meta = heap.meta
        self.words: memoryview = heap.words
        self.heap_start = heap.heap_start
        self.header_key = heap.header_key
        self.tag_secret = heap.tag_secret
        self.link_key = heap.link_key

    def release(self) -> None:
        """Drop the views of the region, so that it can be unmapped."""
        self.words = None  # type: ignore[assignment]
        self.meta = None  # type: ignore[assignment]

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        raise NotImplementedError

    def insert(self, b: int, size: int) -> None:
        raise NotImplementedError

    def insert_validated(self, b: int, size: int) -> None:
        """``insert``, which this operation's ``validate_insert(size)`` has
        checked; a policy may skip those checks (between the two, the engine
        writes only the blocks it unlinks and merges, and an unlink checks
        the block it leaves at a list's head)."""
        self.insert(b, size)

    def validate(self, b: int, size: int) -> None:
        """Raise HeapCorruptionError if removing ``b`` would follow a bad link."""
        raise NotImplementedError

    def remove(self, b: int, size: int) -> None:
        raise NotImplementedError

    def validate_insert(self, size: int) -> None:
        """Raise HeapCorruptionError if ``insert`` of a block of ``size`` would
        follow bad metadata: the engine calls it before an operation's first
        write, so that a refused operation changes nothing."""

    def take(self, need: int) -> tuple[int, int]:
        """Find a free block of at least ``need`` bytes, remove it, return (b, size).

        Everything is checked before the block is unlinked. Policies may
        override this with a faster path that does find and remove at once.
        """
        b = self.find(need)
        if not b:
            return 0, 0
        size = self.free_size(b)
        self.remove(b, size)
        return b, size

    def find(self, need: int) -> int:
        """A free block of at least ``need`` bytes, or 0; the engine removes it."""
        raise NotImplementedError

    def take_slab_room(self) -> tuple[int, int]:
        """Remove and return (b, size) of a free block with room for a slab, or (0, 0).

        This one looks at two blocks: the one ``take`` gives for a slab's
        size, and if that one has no aligned room, the one it gives for
        ROOM_SURE. Policies with size classes can look further.
        """
        b, size = self.take(SLAB_BYTES)
        if b:
            if has_slab_room(b, size):
                return b, size
            self.insert(b, size)
        return self.take(ROOM_SURE)

    def check(self, free_blocks: dict[int, int]) -> None:
        """Verify the index holds exactly ``free_blocks`` (offset -> size)."""
        raise NotImplementedError

    def blocks(self) -> list[int]:
        """Every block the index holds, for diagnostics."""
        raise NotImplementedError

    # -- what every policy reads --------------------------------------------------

    def in_heap(self, b: int) -> bool:
        """``b`` may be a block: inside the heap, at a block's alignment."""
        return self._in_heap(b)

    def _in_heap(self, b: int) -> bool:
        return self.heap_start <= b < self.words[W_BRK] and b & 15 == 8

    def free_size(self, b: int) -> int:
        """Size of the free block at ``b``; HeapCorruptionError if it is not one."""
        if not self._in_heap(b):
            raise HeapCorruptionError(f"free-list link to offset {b:#x} is outside the heap")
        return self._free_body(b) & SIZE_MASK

    def _free_body(self, b: int) -> int:
        """The header body of the free block at ``b`` (in the heap), checked: its
        tag, and the allocated bit clear; HeapCorruptionError otherwise."""
        body = decode(self.words[b >> 3], b, self.tag_secret, self.header_key)
        if body < 0 or body & ALLOCATED:
            raise HeapCorruptionError(f"free-list block {b + 8} is not a free block")
        return body


class LinkedLists(FreeIndex):
    """Helpers for policies made of doubly linked free lists."""

    # The helpers' bodies are inline C methods when compiled (the underscored
    # names, which the engine's policies call); the plain names are for Python.

    def read_link(self, b: int, field: int) -> int:
        """The link at ``b + field`` (``NEXT`` or ``PREV``), unmangled."""
        return self._read_link(b, field)

    def write_link(self, b: int, field: int, link: int) -> None:
        """Store ``link`` at ``b + field``, mangled, through the metadata store."""
        self._write_link(b, field, link)

    def _read_link(self, b: int, field: int) -> int:
        at = b + field
        return mangle(self.words[at >> 3], at, self.link_key)

    def _write_link(self, b: int, field: int, link: int) -> None:
        at = b + field
        self.meta.store(at >> 3, mangle(link, at, self.link_key))

    def check_head(self, head: int) -> int:
        """The first block of the list at ``head`` (0 if empty), checked as one.

        It must be a free block (range, alignment, tag, allocated bit) with no
        predecessor: a corrupted head word would otherwise have the next push
        write a link into a live block's payload.
        """
        first = self.words[head]
        if first:
            if not self._in_heap(first):
                raise HeapCorruptionError(f"free-list head at control word {head} is invalid")
            if self._read_link(first, PREV):
                raise HeapCorruptionError(f"free-list head at control word {head} has a prev link")
            self._free_body(first)
        return first

    def check_free(self, b: int) -> int:
        """HeapCorruptionError unless the header at ``b`` (in the heap) is a free block's."""
        self._free_body(b)
        return 0

    def push(self, head: int, b: int) -> bool:
        """Put ``b`` first on the list at ``head``; True if the list was empty.

        The old head is checked (``check_head``) before anything is written.
        """
        self.check_head(head)
        return self.push_validated(head, b)

    def push_validated(self, head: int, b: int) -> bool:
        """``push`` to a list whose head passed ``check_head`` earlier in this
        operation (see ``insert_validated``)."""
        first = self.words[head]
        if first:
            self._write_link(first, PREV, b)
        self._write_link(b, NEXT, first)
        self._write_link(b, PREV, 0)
        self.meta.store(head, b)
        return not first

    def neighbours(self, head: int, b: int) -> tuple[int, int]:
        """``b``'s (prev, next) on the list at ``head``, checked both ways.

        When ``b`` is first, its successor will head the list: it is checked
        as ``check_head`` would, so that the next push can trust it.
        """
        nxt = self._read_link(b, NEXT)
        prv = self._read_link(b, PREV)
        if nxt:
            if not self._in_heap(nxt):
                raise HeapCorruptionError(f"free block {b + 8}: next link {nxt:#x} is invalid")
            if self._read_link(nxt, PREV) != b:
                raise HeapCorruptionError(f"free block {b + 8}: next block's prev link is broken")
            if not prv:
                self._free_body(nxt)
        if prv:
            if not self._in_heap(prv):
                raise HeapCorruptionError(f"free block {b + 8}: prev link {prv:#x} is invalid")
            if self._read_link(prv, NEXT) != b:
                raise HeapCorruptionError(f"free block {b + 8}: prev block's next link is broken")
        elif self.words[head] != b:
            raise HeapCorruptionError(f"free block {b + 8} has no prev link but is not first")
        return prv, nxt

    def unlink(self, head: int, b: int) -> None:
        """Take ``b`` off the list at ``head``; links are checked first."""
        prv, nxt = self.neighbours(head, b)
        if prv:
            self._write_link(prv, NEXT, nxt)
        else:
            self.meta.store(head, nxt)
        if nxt:
            self._write_link(nxt, PREV, prv)

    def pop_head(self, head: int, need: int, lowest: int, limit: int) -> tuple[int, int]:
        """Unlink the first block of the list at ``head`` and return (b, size).

        The block must be free, fit ``need`` and lie in the list's size range
        ``[lowest, limit)``; all is checked before the first write. This is
        the hot path of ``take``: ``free_size`` and ``unlink`` specialised to
        a list head. The caller marks the list empty in its bitmaps when
        ``words[head]`` is 0 afterwards.
        """
        b = self.words[head]
        if not self._in_heap(b):
            raise HeapCorruptionError(f"free-list head at control word {head} is invalid")
        size = self._free_body(b) & SIZE_MASK
        if size < need or not lowest <= size < limit:
            raise HeapCorruptionError(f"free block {b + 8} of {size} bytes is on the wrong list")
        nxt = self._read_link(b, NEXT)
        if self._read_link(b, PREV):
            raise HeapCorruptionError(f"free block {b + 8} heads its list but has a prev link")
        if nxt:
            if not self._in_heap(nxt) or self._read_link(nxt, PREV) != b:
                raise HeapCorruptionError(f"free block {b + 8}: next link is broken")
            self._free_body(nxt)  # the list's next head
            self._write_link(nxt, PREV, 0)
        self.meta.store(head, nxt)
        return b, size

    def scan_first(self, b: int, stop: int, need: int, budget: int) -> int:
        """First block of at least ``need`` bytes from ``b`` up to ``stop`` (0: the end).

        At most ``budget`` steps: more is a cycle. ``steps_left`` keeps what
        remains, for a search that goes on from elsewhere. Sizes are read
        without their tag checked (``stored_size``): the block a search picks
        is checked in full before it is used.
        """
        while b != stop:
            if not self._in_heap(b):
                if not b:
                    raise HeapCorruptionError("the search's starting block is not on the list")
                raise HeapCorruptionError(f"free-list link {b:#x} is outside the heap")
            if stored_size(self.words[b >> 3], self.header_key) >= need:
                self.steps_left = budget
                return b
            budget -= 1
            if budget <= 0:
                raise HeapCorruptionError("a free list has a cycle")
            b = self._read_link(b, NEXT)
        self.steps_left = budget
        return 0

    def scan_best(self, b: int, need: int, steps: int, whole: bool) -> int:
        """The smallest block of at least ``need`` bytes among ``steps`` from ``b``, or 0.

        With ``whole``, the list must end within ``steps`` (more is a cycle);
        otherwise the search stops there. Sizes are read as in ``scan_first``.
        """
        best = 0
        best_size = 0
        while b:
            if not self._in_heap(b):
                raise HeapCorruptionError(f"free-list link {b:#x} is outside the heap")
            size = stored_size(self.words[b >> 3], self.header_key)
            if size >= need and (not best or size < best_size):
                best = b
                best_size = size
                if size == need:
                    break
            steps -= 1
            if steps <= 0:
                if whole:
                    raise HeapCorruptionError("a free list has a cycle")
                break
            b = self._read_link(b, NEXT)
        return best

    def check_list(
        self,
        head: int,
        free_blocks: dict[int, int],
        index_of: Callable[[int], int] | None = None,
        index: int = 0,
    ) -> int:
        """Walk the list at ``head``; return how many blocks it holds.

        Every member must be one of ``free_blocks`` (offset -> size) and, with
        ``index_of``, of a size that maps to this list's ``index``.
        """
        members = self.walk(head, len(free_blocks) + 1)
        for b in members:
            size = free_blocks.get(b)
            if size is None:
                raise HeapCorruptionError(f"a free list holds {b + 8}, which is not a free block")
            if index_of is not None and index_of(size) != index:
                raise HeapCorruptionError(f"free block {b + 8} of {size} bytes is on list {index}")
        return len(members)

    @staticmethod
    def check_count(seen: int, free_blocks: dict[int, int]) -> None:
        """The lists hold as many blocks as the heap's walk found free."""
        if seen != len(free_blocks):
            raise HeapCorruptionError(
                f"{len(free_blocks)} free blocks in the heap, {seen} in the free lists"
            )

    def walk(self, head: int, limit: int) -> list[int]:
        """The blocks on the list at ``head``; corruption and cycles raise."""
        found: list[int] = []
        prv = 0
        b = self.words[head]
        while b:
            if len(found) >= limit:
                raise HeapCorruptionError(f"free list at control word {head} has a cycle")
            if not self._in_heap(b):
                raise HeapCorruptionError(f"free-list link {b:#x} is outside the heap")
            self.free_size(b)
            if self._read_link(b, PREV) != prv:
                raise HeapCorruptionError(f"free block {b + 8}: prev link disagrees with its list")
            found.append(b)
            prv = b
            b = self._read_link(b, NEXT)
        return found
