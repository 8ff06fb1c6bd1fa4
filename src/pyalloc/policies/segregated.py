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

take(need):
    1. list class(need): for an exact class its head; above, the best fit
       among its first BEST_FIT_SCAN blocks;
    2. else the head of the first non-empty list above, whose every block fits.
Step 1 scans at most one list's first blocks; step 2 is O(1).

take_slab_room():
    the smallest block with room for a slab among the first SLAB_ROOM_SCAN
    blocks of each class from SLAB_BYTES's up to ROOM_SURE's (where a block
    has room or not by where it lies), else the head of the first non-empty
    class above, whose every block has room. A slab thus fills a hole of its
    own size where one lies, and the heap is cut or grown for it only when
    none does.

Control words: ``classes`` list heads, then the bitmap words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..errors import HeapCorruptionError
from ..layout import WORD_MASK
from ..slab import ROOM_SURE, SLAB_BYTES, has_slab_room
from .base import NEXT, LinkedLists

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from .. import _cython as cython

if not cython.compiled:  # compiled, inline C functions: _accessors.pxd (_inline.py)
    from ..layout import bit, bit_length, lowest_bit

if TYPE_CHECKING:
    from ..heap import Heap

EXACT_SHIFT: Final = 9
EXACT_LIMIT: Final = bit(EXACT_SHIFT)  # block sizes below: exact classes
EXACT_CLASSES: Final = EXACT_LIMIT >> 4  # 32 classes of 16 bytes
SUB_SHIFT: Final = 2  # 4 classes per power of two above
SUB_MASK: Final = bit(SUB_SHIFT) - 1
BEST_FIT_SCAN: Final = 32  # blocks examined in the request's own class
SLAB_ROOM_SCAN: Final = 4  # blocks examined in each class that may hold a slab

assert EXACT_CLASSES << 4 == EXACT_LIMIT


def class_floor(c: int) -> int:
    """The smallest block size of class ``c``."""
    if c < EXACT_CLASSES:
        return c << 4
    f = EXACT_SHIFT + ((c - EXACT_CLASSES) >> SUB_SHIFT)
    return bit(f) + ((c - EXACT_CLASSES) & SUB_MASK) * bit(f - SUB_SHIFT)


def size_class(size: int) -> int:
    if size < EXACT_LIMIT:
        return size >> 4
    f = bit_length(size) - 1
    return EXACT_CLASSES + ((f - EXACT_SHIFT) << SUB_SHIFT) + ((size >> (f - SUB_SHIFT)) & SUB_MASK)


# size_class of every block size below TABLE_LIMIT, indexed by size >> 4: the
# hot paths look a class up here instead of calling size_class.
TABLE_LIMIT: Final = 1 << 16
CLASS_OF: Final = bytes(size_class(s << 4) for s in range(TABLE_LIMIT >> 4))


class Segregated(LinkedLists):
    name = "segregated"
    policy_id = 1

    def __init__(self, heap: Heap, base: int) -> None:
        super().__init__(heap, base)
        self.classes = size_class(heap.capacity) + 1
        # Class c holds the sizes in [floors[c], floors[c + 1]).
        self.floors = [class_floor(c) for c in range(self.classes + 1)]
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
            bits |= int(words[base + i]) << (i << 6)  # a Python int: wider than a word
        return bits

    def _first_class_from(self, c: int) -> int:
        """The first non-empty class >= c, or -1."""
        if c >= self.classes:
            return -1
        words = self.words
        i = c >> 6
        above = words[self.bitmap_base + i] >> (c & 63)
        while not above:
            i += 1
            if i >= self.bitmap_words:
                return -1
            above = words[self.bitmap_base + i]
            c = i << 6
        return c + lowest_bit(above)

    def class_of(self, size: int) -> int:
        return CLASS_OF[size >> 4] if size < TABLE_LIMIT else size_class(size)

    def insert(self, b: int, size: int) -> None:
        self.validate_insert(size)
        self.insert_validated(b, size)

    def insert_validated(self, b: int, size: int) -> None:
        c = self.class_of(size)
        if self.push_validated(self.base + c, b):
            at = self.bitmap_base + (c >> 6)
            self.meta.store(at, self.words[at] | bit(c & 63))

    def validate_insert(self, size: int) -> None:
        self.check_head(self.base + self.class_of(size))

    def validate(self, b: int, size: int) -> None:
        c = self.class_of(size)
        self.neighbours(self.base + c, b)

    def remove(self, b: int, size: int) -> None:
        c = self.class_of(size)
        head = self.base + c
        self.unlink(head, b)
        if not self.words[head]:
            self._mark_empty(c)

    def take(self, need: int) -> tuple[int, int]:
        words = self.words
        if need < EXACT_LIMIT:
            c = need >> 4
            if words[self.base + c]:  # an exact fit
                return self._pop(c, need)
        else:
            c = self.class_of(need)
            if words[self.base + c]:
                b = self.best_in_class(need, c)
                if b:
                    size = self.free_size(b)
                    self.remove(b, size)
                    return b, size
        return self._pop_above(c, need)

    def _pop_above(self, c: int, need: int) -> tuple[int, int]:
        """Unlink the first block of the first non-empty class above ``c``
        (each of whose blocks fits ``need``); (0, 0) if there is none."""
        c = self._first_class_from(c + 1)
        if c < 0:
            return 0, 0
        return self._pop(c, need)

    def _pop(self, c: int, need: int) -> tuple[int, int]:
        """Unlink the first block of class ``c``, which must fit ``need``."""
        head = self.base + c
        found = self.pop_head(head, need, self.floors[c], self.floors[c + 1])
        if not self.words[head]:
            self._mark_empty(c)
        return found

    def _mark_empty(self, c: int) -> None:
        at = self.bitmap_base + (c >> 6)
        self.meta.store(at, self.words[at] & ~bit(c & 63) & WORD_MASK)

    def find(self, need: int) -> int:
        return self.best_in_class(need, self.class_of(need))

    def take_slab_room(self) -> tuple[int, int]:
        words = self.words
        last = self.class_of(ROOM_SURE)
        best = best_size = 0
        for c in range(self.class_of(SLAB_BYTES), last + 1):
            b = words[self.base + c]
            for _ in range(SLAB_ROOM_SCAN):
                if not b:
                    break
                size = self.free_size(b)
                if (not best or size < best_size) and has_slab_room(b, size):
                    best = b
                    best_size = size
                b = self._read_link(b, NEXT)
            if best:  # classes ascend: no later one has a smaller block
                self.remove(best, best_size)
                return best, best_size
        return self._pop_above(last, ROOM_SURE)

    def best_in_class(self, need: int, c: int) -> int:
        """Best fit among the first BEST_FIT_SCAN blocks of class ``c``."""
        return self.scan_best(self.words[self.base + c], need, BEST_FIT_SCAN, False)

    def check(self, free_blocks: dict[int, int]) -> None:
        bitmap = self._bitmap()
        seen = 0
        for c in range(self.classes):
            count = self.check_list(self.base + c, free_blocks, size_class, c)
            if bool(count) != bool(bitmap >> c & 1):
                raise HeapCorruptionError(f"bitmap bit {c} disagrees with its list")
            seen += count
        if bitmap >> self.classes:
            raise HeapCorruptionError("bitmap has bits beyond the last size class")
        self.check_count(seen, free_blocks)

    def blocks(self) -> list[int]:
        out: list[int] = []
        for c in range(self.classes):
            out.extend(self.walk(self.base + c, 1 << 40))
        return out


# Compiled, the constants above are C variables (segregated.pxd); this gives
# Python importers the same names and values. Interpreted, it changes nothing.
globals().update(
    EXACT_SHIFT=EXACT_SHIFT, EXACT_LIMIT=EXACT_LIMIT, EXACT_CLASSES=EXACT_CLASSES,
    SUB_SHIFT=SUB_SHIFT, SUB_MASK=SUB_MASK, BEST_FIT_SCAN=BEST_FIT_SCAN, TABLE_LIMIT=TABLE_LIMIT,
    SLAB_ROOM_SCAN=SLAB_ROOM_SCAN,
    CLASS_OF=CLASS_OF,
)  # fmt: skip
