"""The implicit free list: no index at all, the blocks themselves are the list.

Glossary
--------
walk        a pass over every block from ``heap_start`` to ``brk``, each
            header giving the size of its block and so the next header.
first fit   the walk stops at the first free block of at least ``need``
            bytes.

This is the textbook baseline (the malloc lab's first allocator): a free
block is known only by the allocated bit in its header, so a request costs a
walk over the blocks in front of the first fit, live ones included. Its cost
per request grows with the number of blocks in the heap, which the other
policies exist to avoid; ``benchmarks/policy_scaling.py`` measures by how
much.

Invariants::

    a block is free  <=>  its header's allocated bit is clear
    control words used == 0

insert, remove and validate do nothing: the engine has already written (or
is about to write) the header that puts a block in or out of this "index".
The walk checks each header's tag before trusting its size, so a corrupted
header it passes is reported rather than followed; ``check`` has nothing to
add to the engine's own walk.
"""

from __future__ import annotations

from ..control import W_BRK
from ..errors import HeapCorruptionError
from ..layout import ALLOCATED, MIN_BLOCK, SIZE_MASK
from .base import FreeIndex

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from .. import _cython as cython

if not cython.compiled:  # compiled, inline C functions: _accessors.pxd (_inline.py)
    from ..layout import decode


class Implicit(FreeIndex):
    """First fit by walking every block's header from the start of the heap."""

    name = "implicit"
    policy_id = 2

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        return 0

    def insert(self, b: int, size: int) -> None:
        pass

    def validate(self, b: int, size: int) -> None:
        pass

    def remove(self, b: int, size: int) -> None:
        pass

    def take(self, need: int) -> tuple[int, int]:
        # find has checked the block's header in full: nothing left to check.
        b = self.find(need)
        if not b:
            return 0, 0
        return b, self.free_size(b)

    def find(self, need: int) -> int:
        return self.first_free(self.heap_start, need)

    def first_free(self, b: int, need: int) -> int:
        """The first free block of at least ``need`` bytes at or after block ``b``, or 0.

        Every header on the way is checked: this walk is the whole cost of malloc.
        """
        brk = self.words[W_BRK]
        while b < brk:
            body = decode(self.words[b >> 3], b, self.tag_secret, self.header_key)
            if body < 0:
                raise HeapCorruptionError(f"header of block {b + 8} is corrupted")
            size = body & SIZE_MASK
            if size < MIN_BLOCK or b + size > brk:
                raise HeapCorruptionError(f"block {b + 8} holds an impossible size {size}")
            if size >= need and not body & ALLOCATED:
                return b
            b += size
        return 0

    def check(self, free_blocks: dict[int, int]) -> None:
        # The engine's walk has verified every header; the "index" is those headers.
        pass

    def blocks(self) -> list[int]:
        out: list[int] = []
        b = self.first_free(self.heap_start, 0)
        while b:
            out.append(b)
            b = self.first_free(b + self.free_size(b), 0)
        return out
