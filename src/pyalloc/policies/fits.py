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

from ..control import W_BRK
from ..errors import HeapCorruptionError
from ..layout import MIN_BLOCK
from .base import NEXT, LinkedLists

HEAD: Final = 0  # control words, from base
ROVER: Final = 1
globals().update(HEAD=HEAD, ROVER=ROVER)  # for Python importers of the compiled module


class ExplicitList(LinkedLists):
    """One LIFO free list; subclasses choose how a request searches it."""

    @classmethod
    def words_needed(cls, capacity: int) -> int:
        return 1

    def insert(self, b: int, size: int) -> None:
        self.push(self.base + HEAD, b)

    def insert_validated(self, b: int, size: int) -> None:
        self.push_validated(self.base + HEAD, b)

    def validate_insert(self, size: int) -> None:
        self.check_head(self.base + HEAD)

    def validate(self, b: int, size: int) -> None:
        self.neighbours(self.base + HEAD, b)

    def remove(self, b: int, size: int) -> None:
        self.unlink(self.base + HEAD, b)

    def walk_limit(self) -> int:
        """More steps than any list in this heap can have: a cycle's bound."""
        return (self.words[W_BRK] - self.heap_start) // MIN_BLOCK + 1

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
        return self.scan_first(self.words[self.base + HEAD], 0, need, self.walk_limit())


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
            return self.scan_first(first, 0, need, budget)
        b = self.scan_first(rover, 0, need, budget)
        if b:
            return b
        return self.scan_first(first, rover, need, self.steps_left)

    def take(self, need: int) -> tuple[int, int]:
        b = self.find(need)
        if not b:
            return 0, 0
        size = self.free_size(b)
        after = self._read_link(b, NEXT)
        self.unlink(self.base + HEAD, b)  # checks both neighbours before writing
        self.meta.store(self.base + ROVER, after)
        return b, size

    def remove(self, b: int, size: int) -> None:
        rover = self.base + ROVER
        if self.words[rover] != b:
            self.unlink(self.base + HEAD, b)
            return
        after = self._read_link(b, NEXT)
        self.unlink(self.base + HEAD, b)
        self.meta.store(rover, after)

    def check(self, free_blocks: dict[int, int]) -> None:
        super().check(free_blocks)
        rover = self.words[self.base + ROVER]
        if rover and rover not in free_blocks:
            raise HeapCorruptionError(f"the next-fit rover {rover:#x} is not on the free list")


class BestFit(ExplicitList):
    name = "best-fit"
    policy_id = 5

    def find(self, need: int) -> int:
        return self.scan_best(self.words[self.base + HEAD], need, self.walk_limit(), True)
