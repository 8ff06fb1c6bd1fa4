"""A free-block index written in Python and plugged into pyalloc's engine.

Worst fit: one LIFO list of every free block; a request takes the largest
one (the textbook's foil: its big remainders stay usable, its big blocks
do not last). Run it as a built-in policy is run::

    pyalloc replay --policy examples/worst_fit.py:WorstFit TRACE...
    pyalloc bench TRACES --policies segregated,examples/worst_fit.py:WorstFit

or ``pyalloc.Heap(policy="examples/worst_fit.py:WorstFit")``. The engine
owns the blocks (headers, splitting, coalescing); the index only keeps the
free ones. ``LinkedLists`` gives the list operations, every one checking
the links it follows before it writes.
"""

from __future__ import annotations

from pyalloc.policies.base import LinkedLists


class WorstFit(LinkedLists):
    name = "worst-fit"

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        return 1  # the list's head, in the heap's control record

    def insert(self, b: int, size: int) -> None:
        self.push(self.base, b)

    def remove(self, b: int, size: int) -> None:
        self.unlink(self.base, b)

    def validate(self, b: int, size: int) -> None:
        self.neighbours(self.base, b)

    def validate_insert(self, size: int) -> None:
        self.check_head(self.base)

    def find(self, need: int) -> int:
        best = best_size = 0
        for b in self.blocks():
            size = self.free_size(b)
            if size >= need and size > best_size:
                best, best_size = b, size
        return best

    def check(self, free_blocks: dict[int, int]) -> None:
        self.check_count(self.check_list(self.base, free_blocks), free_blocks)

    def blocks(self) -> list[int]:
        return self.walk(self.base, 1 << 40)
