"""TLSF: two-level segregated fit, O(1) good fit with two levels of bitmaps.

Glossary
--------
first level (fl)   the power of two a block size falls in
second level (sl)  one of SL_COUNT equal slices of that power of two
list i             ``i = fl * SL_COUNT + sl``: the doubly linked free list
                   (``LinkedLists``) of the sizes in slice (fl, sl)

Size classes (block sizes, all multiples of 16)::

    fl == 0        sizes below SMALL_BLOCK (256): list i holds exactly 16 * i
                   bytes, one list per size
    fl >= 1        sizes in [2**f, 2**(f+1)), f = fl + FL_SHIFT - 1, cut into
                   SL_COUNT (16) slices of 2**(f - SL_SHIFT) bytes: exact
                   below 512, above a list's sizes differ by less than 1/16
                   of its lower bound

so ``list_index(size)`` increases with size, and every size of list i is at
least ``list_floor(i)``.

Bitmaps::

    bit sl of sl_bitmap[fl] is set  <=>  list fl * SL_COUNT + sl is non-empty
    bit fl of fl_bitmap     is set  <=>  sl_bitmap[fl] != 0

take(need), O(1):
    1. round need up to the next list boundary: every block of list
       ``search_index(need)`` and above is large enough;
    2. the first non-empty list at or above it: a lowest-set-bit in
       sl_bitmap[fl], else in fl_bitmap above fl, then in that sl_bitmap;
    3. unlink that list's head.
Rounding up is what makes step 3 need no search ("good fit": the block
taken is at most one slice, 1/16, larger than the best fit would be, and
its rest is split off and listed again). When steps 1-2 find nothing, the request's own list
may still hold a larger block: it is scanned (first fit) before the heap
grows, so a block that fits is never left unused for want of rounding.

Control words, from base: FL_COUNT * SL_COUNT list heads, then fl_bitmap,
then FL_COUNT sl_bitmap words (FL_COUNT from the heap's capacity: 20 for
64 MiB, so 341 words). Why 16 slices, not 32: the heads are control words,
which every heap's footprint carries; 32 slices doubled them (5 KiB at 64
MiB) and cost 2 points of average utilization on the classic traces (83.4%
against 85.2%), where the finer good fit gained nothing measurable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..control import W_BRK
from ..errors import HeapCorruptionError
from ..layout import ALIGN_SHIFT, MAX_BLOCK, MIN_BLOCK, WORD_MASK
from .base import LinkedLists

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from .. import _cython as cython

if not cython.compiled:  # compiled, inline C functions: _accessors.pxd (_inline.py)
    from ..layout import bit, bit_length, lowest_bit

if TYPE_CHECKING:
    from ..heap import Heap

SL_SHIFT: Final = 4
SL_COUNT: Final = bit(SL_SHIFT)  # second-level lists per first level
SL_MASK: Final = SL_COUNT - 1
FL_SHIFT: Final = SL_SHIFT + ALIGN_SHIFT  # log2 of the first size with fl >= 1
SMALL_BLOCK: Final = bit(FL_SHIFT)  # sizes below: one exact list each

assert SMALL_BLOCK >> ALIGN_SHIFT == SL_COUNT  # fl 0 is exactly one row of exact lists
assert SL_COUNT <= 64  # an sl_bitmap is one word


def list_index(size: int) -> int:
    """The list a free block of ``size`` bytes belongs on."""
    if size < SMALL_BLOCK:
        return size >> ALIGN_SHIFT
    f = bit_length(size) - 1
    return ((f - FL_SHIFT + 1) << SL_SHIFT) | ((size >> (f - SL_SHIFT)) & SL_MASK)


def search_index(need: int) -> int:
    """The first list whose every block has at least ``need`` bytes."""
    if need < SMALL_BLOCK:
        return need >> ALIGN_SHIFT
    return list_index(need + (bit(bit_length(need) - 1 - SL_SHIFT)) - 1)


def list_floor(i: int) -> int:
    """The smallest size list ``i`` holds."""
    fl, sl = i >> SL_SHIFT, i & SL_MASK
    if not fl:
        return sl << ALIGN_SHIFT
    f = fl + FL_SHIFT - 1
    return bit(f) | (sl << (f - SL_SHIFT))


FL_MAX: Final = list_index(MAX_BLOCK) >> SL_SHIFT
assert FL_MAX < 64  # fl_bitmap is one word
assert list_floor(list_index(SMALL_BLOCK)) == SMALL_BLOCK
assert search_index(MIN_BLOCK) == list_index(MIN_BLOCK)


class TLSF(LinkedLists):
    name = "tlsf"
    policy_id = 6

    def __init__(self, heap: Heap, base: int) -> None:
        super().__init__(heap, base)
        self.fl_count = (list_index(heap.capacity) >> SL_SHIFT) + 1
        self.lists = self.fl_count << SL_SHIFT
        self.fl_word = base + self.lists
        self.sl_base = self.fl_word + 1

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        fl_count = (list_index(capacity) >> SL_SHIFT) + 1
        return (fl_count << SL_SHIFT) + 1 + fl_count

    def _first_from(self, i: int) -> int:
        """The first non-empty list at or above ``i``, or -1 (two bit scans)."""
        fl = i >> SL_SHIFT
        if fl >= self.fl_count:
            return -1
        words = self.words
        bits = words[self.sl_base + fl] >> (i & SL_MASK) << (i & SL_MASK)
        if not bits:
            above = words[self.fl_word] >> (fl + 1) << (fl + 1)
            if not above:
                return -1
            fl = lowest_bit(above)
            bits = words[self.sl_base + fl]
        return (fl << SL_SHIFT) | lowest_bit(bits)

    def insert(self, b: int, size: int) -> None:
        self.validate_insert(size)
        self.insert_validated(b, size)

    def insert_validated(self, b: int, size: int) -> None:
        i = size >> ALIGN_SHIFT if size < SMALL_BLOCK else list_index(size)
        if self.push_validated(self.base + i, b):
            fl = i >> SL_SHIFT
            words = self.words
            self.meta.store(self.sl_base + fl, words[self.sl_base + fl] | bit(i & SL_MASK))
            self.meta.store(self.fl_word, words[self.fl_word] | bit(fl))

    def validate_insert(self, size: int) -> None:
        self.check_head(self.base + list_index(size))

    def validate(self, b: int, size: int) -> None:
        self.neighbours(self.base + list_index(size), b)

    def remove(self, b: int, size: int) -> None:
        i = size >> ALIGN_SHIFT if size < SMALL_BLOCK else list_index(size)
        head = self.base + i
        self.unlink(head, b)
        if not self.words[head]:
            self._mark_empty(i)

    def _mark_empty(self, i: int) -> None:
        words = self.words
        fl = i >> SL_SHIFT
        at = self.sl_base + fl
        bits = words[at] & ~bit(i & SL_MASK) & WORD_MASK
        self.meta.store(at, bits)
        if not bits:
            self.meta.store(self.fl_word, words[self.fl_word] & ~bit(fl) & WORD_MASK)

    def take(self, need: int) -> tuple[int, int]:
        if need < SMALL_BLOCK:
            i = need >> ALIGN_SHIFT  # search_index, inlined: an exact list
            if self.words[self.base + i]:
                return self._pop(i, need)
        else:
            i = search_index(need)
        i = self._first_from(i)
        if i >= 0:
            return self._pop(i, need)
        # Nothing at or above the rounded request: try the request's own list.
        own = list_index(need)
        if own >= self.lists or not self.words[self.base + own]:
            return 0, 0
        b = self._scan(own, need)
        if not b:
            return 0, 0
        size = self.free_size(b)
        self.remove(b, size)
        return b, size

    def _pop(self, i: int, need: int) -> tuple[int, int]:
        """Unlink the head of list ``i``, all of whose blocks fit ``need``."""
        head = self.base + i
        found = self.pop_head(head, need, list_floor(i), list_floor(i + 1))
        if not self.words[head]:
            self._mark_empty(i)
        return found

    def _scan(self, i: int, need: int) -> int:
        """First block of at least ``need`` bytes on list ``i``, or 0."""
        budget = (self.words[W_BRK] - self.heap_start) // MIN_BLOCK + 1
        return self.scan_first(self.words[self.base + i], 0, need, budget)

    def find(self, need: int) -> int:
        i = self._first_from(search_index(need))
        if i >= 0:
            return self.words[self.base + i]
        own = list_index(need)
        return self._scan(own, need) if own < self.lists else 0

    def check(self, free_blocks: dict[int, int]) -> None:
        words = self.words
        seen = 0
        fl_bits = words[self.fl_word]
        if fl_bits >> self.fl_count:
            raise HeapCorruptionError("the first-level bitmap has bits beyond the last level")
        for fl in range(self.fl_count):
            sl_bits = words[self.sl_base + fl]
            if sl_bits >> SL_COUNT:
                raise HeapCorruptionError(f"second-level bitmap {fl} has bits beyond its lists")
            if bool(sl_bits) != bool(fl_bits >> fl & 1):
                raise HeapCorruptionError(f"first-level bit {fl} disagrees with its bitmap")
            for sl in range(SL_COUNT):
                i = (fl << SL_SHIFT) | sl
                if not words[self.base + i]:
                    if sl_bits >> sl & 1:
                        raise HeapCorruptionError(f"second-level bit ({fl}, {sl}) set, list empty")
                    continue
                if not sl_bits >> sl & 1:
                    raise HeapCorruptionError(
                        f"second-level bit ({fl}, {sl}) clear, list not empty"
                    )
                seen += self.check_list(self.base + i, free_blocks, list_index, i)
        self.check_count(seen, free_blocks)

    def blocks(self) -> list[int]:
        out: list[int] = []
        for i in range(self.lists):
            out.extend(self.walk(self.base + i, 1 << 40))
        return out


# Compiled, the constants above are C variables (tlsf.pxd); this gives Python
# importers the same names and values. Interpreted, it changes nothing.
globals().update(
    SL_SHIFT=SL_SHIFT, SL_COUNT=SL_COUNT, SL_MASK=SL_MASK, FL_SHIFT=FL_SHIFT,
    SMALL_BLOCK=SMALL_BLOCK, FL_MAX=FL_MAX,
)  # fmt: skip
