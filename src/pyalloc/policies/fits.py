"""Explicit free lists: first fit, next fit and best fit over one list.

Glossary
--------
list        one doubly linked list threaded through every free block
            (``LinkedLists``: the next link at ``b + 8``, the prev link at
            ``b + 16``, both mangled); its head is control word ``base``.
rover       next fit only: control word ``base + 1``, the block the next
            search starts from (0: the head).

Insertion order is LIFO: a freed or split-off block goes first on the list,
so free stays O(1). Address order would make first fit place blocks better
(it then behaves much like best fit) but costs a walk per free; the three
searches below differ only in how they read the same LIFO list, which is the
comparison these policies exist for.

Searches, each O(free blocks) per malloc::

    first-fit   the first block on the list with size >= need
    next-fit    the same, from the rover to the tail, then from the head back
                to the rover; the rover moves on to the block after the one
                taken, so successive searches spread over the list
    best-fit    the smallest block on the whole list with size >= need; an
                exact fit ends the search

Invariants::

    block is on the list  <=>  block is free
    rover == 0  or  rover is on the list           (remove moves it on)
    list length <= (brk - heap_start) / MIN_BLOCK  (a longer walk is a cycle)

Searches read sizes without checking tags (a range and alignment check keeps
them inside the heap); the block a search picks has its header checked in
full, and both neighbours' links, before it is unlinked.
"""

from __future__ import annotations

from typing import Final

from ..errors import HeapCorruptionError
from ..layout import MIN_BLOCK, mangle, stored_size
from .base import NEXT, LinkedLists

HEAD: Final = 0  # control words, from base
ROVER: Final = 1


class ExplicitList(LinkedLists):
    """One LIFO free list; subclasses choose how a request searches it."""

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        return 1

    def insert(self, b: int, size: int) -> None:
        self.push(self.base + HEAD, b)

    def validate(self, b: int, size: int) -> None:
        self.neighbours(self.base + HEAD, b)

    def remove(self, b: int, size: int) -> None:
        self.unlink(self.base + HEAD, b)

    def walk_limit(self) -> int:
        """More steps than any list in this heap can have: a cycle's bound."""
        heap = self.heap
        return (heap.brk - heap.heap_start) // MIN_BLOCK + 1

    def scan(self, b: int, stop: int, need: int, budget: int) -> tuple[int, int]:
        """First block of at least ``need`` bytes from ``b`` up to ``stop`` (0: the tail).

        Returns (the block or 0, steps left of ``budget``).
        """
        heap = self.heap
        words = self.words
        lo = heap.heap_start
        hi = heap.brk
        header_key = heap.header_key
        link_key = self.link_key
        while b != stop:
            if not (lo <= b < hi and b & 15 == 8):
                if not b:
                    raise HeapCorruptionError("the next-fit rover is not on the free list")
                raise HeapCorruptionError(f"free-list link {b:#x} is outside the heap")
            if stored_size(words[b >> 3], header_key) >= need:  # layout.block_size, inlined
                return b, budget
            budget -= 1
            if budget <= 0:
                raise HeapCorruptionError("the free list has a cycle")
            at = b + NEXT
            b = mangle(words[at >> 3], at, link_key)
        return 0, budget

    def check(self, free_blocks: dict[int, int]) -> None:
        # walk() refuses a prev link that disagrees with the walk, so no block
        # can appear twice: same count and all members free means same set.
        self.check_count(self.check_list(self.base + HEAD, free_blocks), free_blocks)

    def blocks(self) -> list[int]:
        return self.walk(self.base + HEAD, self.walk_limit())


class FirstFit(ExplicitList):
    name = "first-fit"
    policy_id = 3

    def find(self, need: int) -> int:
        return self.scan(self.words[self.base + HEAD], 0, need, self.walk_limit())[0]


class NextFit(ExplicitList):
    name = "next-fit"
    policy_id = 4

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        return 2

    def find(self, need: int) -> int:
        words = self.words
        rover = words[self.base + ROVER]
        first = words[self.base + HEAD]
        budget = self.walk_limit()
        if not rover or rover == first:
            return self.scan(first, 0, need, budget)[0]
        b, budget = self.scan(rover, 0, need, budget)
        if b:
            return b
        return self.scan(first, rover, need, budget)[0]

    def take(self, need: int) -> tuple[int, int] | None:
        b = self.find(need)
        if not b:
            return None
        size = self.heap.free_block_size(b)
        after = self.read_link(b, NEXT)
        self.unlink(self.base + HEAD, b)  # checks both neighbours before writing
        self.words[self.base + ROVER] = after
        return b, size

    def remove(self, b: int, size: int) -> None:
        rover = self.base + ROVER
        if self.words[rover] != b:
            self.unlink(self.base + HEAD, b)
            return
        after = self.read_link(b, NEXT)
        self.unlink(self.base + HEAD, b)
        self.words[rover] = after

    def check(self, free_blocks: dict[int, int]) -> None:
        super().check(free_blocks)
        rover = self.words[self.base + ROVER]
        if rover and rover not in free_blocks:
            raise HeapCorruptionError(f"the next-fit rover {rover:#x} is not on the free list")


class BestFit(ExplicitList):
    name = "best-fit"
    policy_id = 5

    def find(self, need: int) -> int:
        heap = self.heap
        words = self.words
        lo = heap.heap_start
        hi = heap.brk
        header_key = heap.header_key
        link_key = self.link_key
        budget = self.walk_limit()
        best = 0
        best_size = 0
        b = words[self.base + HEAD]
        while b:
            if not (lo <= b < hi and b & 15 == 8):
                raise HeapCorruptionError(f"free-list link {b:#x} is outside the heap")
            size = stored_size(words[b >> 3], header_key)
            if size >= need and (not best or size < best_size):
                best, best_size = b, size
                if size == need:
                    break
            budget -= 1
            if budget <= 0:
                raise HeapCorruptionError("the free list has a cycle")
            at = b + NEXT
            b = mangle(words[at >> 3], at, link_key)
        return best
