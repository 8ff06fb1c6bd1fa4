"""Segregated fits: one free list per size class and an occupancy bitmap.

Size classes (block sizes, all multiples of 16)::

    class c < EXACT_CLASSES     exactly 16 * c bytes                (32 .. 496)
    class c >= EXACT_CLASSES    [2**f + k * 2**(f-2), 2**f + (k+1) * 2**(f-2))
                                for f = log2(size) >= EXACT_SHIFT, k in 0..3

so a class's sizes differ by at most 25% above 512 bytes, and small blocks,
the most frequent, always fit exactly.

Bitmap: bit c of the occupancy bitmap is set  <=>  list c is non-empty. The
bitmap is ``ceil(classes / 64)`` control words; finding the first non-empty
class at or above c is a shift and a lowest-set-bit, never a scan of lists.

find(need):
    1. list class(need), searched for the best fit (exact classes: its head);
    2. else the head of the first non-empty list above, whose every block fits.
Step 1 scans one list only; step 2 is O(1).

Control words: ``classes`` list heads, then the bitmap words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..errors import HeapCorruptionError
from .base import NEXT, LinkedLists

if TYPE_CHECKING:
    from ..heap import Heap

EXACT_SHIFT: Final = 9
EXACT_CLASSES: Final = (1 << EXACT_SHIFT) >> 4  # 32 classes of 16 bytes
SUB_SHIFT: Final = 2  # 4 classes per power of two above
SUB_MASK: Final = (1 << SUB_SHIFT) - 1
BEST_FIT_SCAN: Final = 32  # blocks examined in the request's own class

assert EXACT_CLASSES << 4 == 1 << EXACT_SHIFT


def size_class(size: int) -> int:
    if size < 1 << EXACT_SHIFT:
        return size >> 4
    f = size.bit_length() - 1
    return EXACT_CLASSES + ((f - EXACT_SHIFT) << SUB_SHIFT) + ((size >> (f - SUB_SHIFT)) & SUB_MASK)


class Segregated(LinkedLists):
    name = "segregated"
    policy_id = 1

    def __init__(self, heap: Heap, base: int) -> None:
        super().__init__(heap, base)
        self.classes = size_class(heap.capacity) + 1
        self.bitmap_base = base + self.classes
        self.bitmap_words = (self.classes + 63) >> 6

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        classes = size_class(capacity) + 1
        return classes + ((classes + 63) >> 6)

    def _bitmap(self) -> int:
        words = self.words
        base = self.bitmap_base
        bits = 0
        for i in range(self.bitmap_words):
            bits |= words[base + i] << (i << 6)
        return bits

    def _set_bit(self, c: int) -> None:
        self.words[self.bitmap_base + (c >> 6)] |= 1 << (c & 63)

    def _clear_bit(self, c: int) -> None:
        self.words[self.bitmap_base + (c >> 6)] &= ~(1 << (c & 63)) & 0xFFFFFFFFFFFFFFFF

    def insert(self, b: int, size: int) -> None:
        c = size_class(size)
        head = self.base + c
        if not self.words[head]:
            self._set_bit(c)
        self.push(head, b)

    def validate(self, b: int, size: int) -> None:
        self.neighbours(self.base + size_class(size), b)

    def remove(self, b: int, size: int) -> None:
        c = size_class(size)
        head = self.base + c
        self.unlink(head, b)
        if not self.words[head]:
            self._clear_bit(c)

    def find(self, need: int) -> int:
        c = size_class(need)
        words = self.words
        heap = self.heap
        if c >= EXACT_CLASSES and words[self.base + c]:
            best = 0
            best_size = 0
            b = words[self.base + c]
            for _ in range(BEST_FIT_SCAN):
                size = heap.free_block_size(b)
                if size >= need and (not best or size < best_size):
                    best, best_size = b, size
                    if size == need:
                        break
                b = self.read_link(b, NEXT)
                if not b:
                    break
            if best:
                return best
            c += 1
        above = self._bitmap() >> c
        if not above:
            return 0
        c += (above & -above).bit_length() - 1
        b = words[self.base + c]
        if not b:
            raise HeapCorruptionError(f"bitmap marks empty size class {c} as occupied")
        size = heap.free_block_size(b)
        if size < need:
            raise HeapCorruptionError(f"free block {b + 8} of {size} bytes is in class {c}")
        return b

    def check(self, free_blocks: dict[int, int]) -> None:
        bitmap = self._bitmap()
        seen = 0
        limit = len(free_blocks) + 1
        for c in range(self.classes):
            members = self.walk(self.base + c, limit)
            if bool(members) != bool(bitmap >> c & 1):
                raise HeapCorruptionError(f"bitmap bit {c} disagrees with its list")
            for b in members:
                size = free_blocks.get(b)
                if size is None:
                    raise HeapCorruptionError(f"list {c} holds {b + 8}, which is not a free block")
                if size_class(size) != c:
                    raise HeapCorruptionError(f"free block {b + 8} of {size} bytes is in class {c}")
            seen += len(members)
        if bitmap >> self.classes:
            raise HeapCorruptionError("bitmap has bits beyond the last size class")
        if seen != len(free_blocks):
            raise HeapCorruptionError(
                f"{len(free_blocks)} free blocks in the heap, {seen} in the free lists"
            )

    def blocks(self) -> list[int]:
        out: list[int] = []
        for c in range(self.classes):
            out.extend(self.walk(self.base + c, 1 << 40))
        return out
