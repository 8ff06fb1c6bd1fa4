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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ..errors import HeapCorruptionError
from ..layout import ALLOCATED, SIZE_MASK, mangle
from ..regions import Words

if TYPE_CHECKING:
    from ..heap import Heap

NEXT: int = 8  # link offsets inside a free block
PREV: int = 16


class FreeIndex:
    """A policy: the index of a heap's free blocks."""

    name: ClassVar[str]
    policy_id: ClassVar[int]

    def __init__(self, heap: Heap, base: int) -> None:
        self.heap = heap
        self.base = base  # first control word of this policy
        self.words: Words = heap.words

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        raise NotImplementedError

    def insert(self, b: int, size: int) -> None:
        raise NotImplementedError

    def validate(self, b: int, size: int) -> None:
        """Raise HeapCorruptionError if removing ``b`` would follow a bad link."""
        raise NotImplementedError

    def remove(self, b: int, size: int) -> None:
        raise NotImplementedError

    def take(self, need: int) -> tuple[int, int] | None:
        """Find a free block of at least ``need`` bytes, remove it, return (b, size).

        Everything is checked before the block is unlinked. Policies may
        override this with a faster path that does find and remove at once.
        """
        b = self.find(need)
        if not b:
            return None
        size = self.heap.free_block_size(b)
        self.remove(b, size)
        return b, size

    def find(self, need: int) -> int:
        """A free block of at least ``need`` bytes, or 0; the engine removes it."""
        raise NotImplementedError

    def check(self, free_blocks: dict[int, int]) -> None:
        """Verify the index holds exactly ``free_blocks`` (offset -> size)."""
        raise NotImplementedError

    def blocks(self) -> list[int]:
        """Every block the index holds, for diagnostics."""
        raise NotImplementedError


class LinkedLists(FreeIndex):
    """Helpers for policies made of doubly linked free lists."""

    def __init__(self, heap: Heap, base: int) -> None:
        super().__init__(heap, base)
        self.link_key = heap.link_key

    def read_link(self, b: int, field: int) -> int:
        at = b + field
        return mangle(self.words[at >> 3], at, self.link_key)

    def write_link(self, b: int, field: int, link: int) -> None:
        at = b + field
        self.words[at >> 3] = mangle(link, at, self.link_key)

    def push(self, head: int, b: int) -> bool:
        """Put ``b`` first on the list at ``head``; True if the list was empty.

        The old head is checked before anything is written: it must be a free
        block (range, alignment, tag, allocated bit) that has no predecessor,
        or a corrupted head word would have ``b``'s link written into a live
        block's payload.
        """
        words = self.words
        key = self.link_key
        first = words[head]
        if first:
            heap = self.heap
            if not (heap.heap_start <= first < heap.brk and first & 15 == 8):
                raise HeapCorruptionError(f"free-list head at control word {head} is invalid")
            body = heap._header(first)
            at = first + PREV
            if body < 0 or body & ALLOCATED or mangle(words[at >> 3], at, key):
                raise HeapCorruptionError(
                    f"free-list head at control word {head} is not a free block"
                )
            words[at >> 3] = mangle(b, at, key)
        at = b + NEXT
        words[at >> 3] = mangle(first, at, key)
        at += 8
        words[at >> 3] = mangle(0, at, key)  # prev = 0
        words[head] = b
        return not first

    def neighbours(self, head: int, b: int) -> tuple[int, int]:
        """``b``'s (prev, next) on the list at ``head``, checked both ways."""
        words = self.words
        key = self.link_key
        at = b + NEXT
        nxt = mangle(words[at >> 3], at, key)
        at = b + PREV
        prv = mangle(words[at >> 3], at, key)
        heap = self.heap
        lo = heap.heap_start
        hi = heap.brk
        if nxt:
            if not (lo <= nxt < hi and nxt & 15 == 8):
                raise HeapCorruptionError(f"free block {b + 8}: next link {nxt:#x} is invalid")
            at = nxt + PREV
            if mangle(words[at >> 3], at, key) != b:
                raise HeapCorruptionError(f"free block {b + 8}: next block's prev link is broken")
        if prv:
            if not (lo <= prv < hi and prv & 15 == 8):
                raise HeapCorruptionError(f"free block {b + 8}: prev link {prv:#x} is invalid")
            at = prv + NEXT
            if mangle(words[at >> 3], at, key) != b:
                raise HeapCorruptionError(f"free block {b + 8}: prev block's next link is broken")
        elif words[head] != b:
            raise HeapCorruptionError(f"free block {b + 8} has no prev link but is not first")
        return prv, nxt

    def unlink(self, head: int, b: int) -> None:
        """Take ``b`` off the list at ``head``; links are checked first."""
        prv, nxt = self.neighbours(head, b)
        words = self.words
        key = self.link_key
        if prv:
            at = prv + NEXT
            words[at >> 3] = mangle(nxt, at, key)
        else:
            words[head] = nxt
        if nxt:
            at = nxt + PREV
            words[at >> 3] = mangle(prv, at, key)

    def pop_head(self, head: int, need: int, lowest: int, limit: int) -> tuple[int, int]:
        """Unlink the first block of the list at ``head`` and return (b, size).

        The block must be free, fit ``need`` and lie in the list's size range
        ``[lowest, limit)``; all is checked before the first write. This is
        the hot path of ``take``: ``heap.free_block_size`` and ``unlink``
        specialised to a list head. The caller marks the list empty in its
        bitmaps when ``words[head]`` is 0 afterwards.
        """
        words = self.words
        heap = self.heap
        b = words[head]
        brk = heap.brk
        lo = heap.heap_start
        if not (lo <= b < brk and b & 15 == 8):
            raise HeapCorruptionError(f"free-list head at control word {head} is invalid")
        body = heap._header(b)
        if body < 0 or body & ALLOCATED:
            raise HeapCorruptionError(f"header of free block {b + 8} is corrupted")
        size = body & SIZE_MASK
        if size < need or not lowest <= size < limit:
            raise HeapCorruptionError(f"free block {b + 8} of {size} bytes is on the wrong list")
        key = self.link_key
        at = b + NEXT
        nxt = mangle(words[at >> 3], at, key)
        at += 8
        if mangle(words[at >> 3], at, key):
            raise HeapCorruptionError(f"free block {b + 8} heads its list but has a prev link")
        if nxt:
            at = nxt + PREV
            if (
                not (lo <= nxt < brk and nxt & 15 == 8)
                or mangle(words[at >> 3], at, key) != b
            ):
                raise HeapCorruptionError(f"free block {b + 8}: next link is broken")
            words[at >> 3] = mangle(0, at, key)  # its prev = 0
        words[head] = nxt
        return b, size

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
        heap = self.heap
        found: list[int] = []
        prv = 0
        b = self.words[head]
        while b:
            if len(found) >= limit:
                raise HeapCorruptionError(f"free list at control word {head} has a cycle")
            heap.free_block_size(b)
            if self.read_link(b, PREV) != prv:
                raise HeapCorruptionError(f"free block {b + 8}: prev link disagrees with its list")
            found.append(b)
            prv = b
            b = self.read_link(b, NEXT)
        return found
