"""Every allocator of the lab by one name: the engine's policies and the buddy system.

``Heap(policy=NAME)`` serves the engine's free-block indexes (``POLICIES``);
the buddy system has a layout of its own and is a class of its own,
``BuddyHeap``, with the same API. ``make_heap(NAME, capacity, **options)``
builds either, so that tests, benchmarks and the replay driver can treat
``ALL_POLICIES`` alike.
"""

from __future__ import annotations

from typing import Any, Final

from .buddy import BuddyHeap
from .heap import DEFAULT_CAPACITY, POLICIES, Heap

BUDDY: Final = "buddy"
ALL_POLICIES: Final[tuple[str, ...]] = (*POLICIES, BUDDY)


def make_heap(policy: str, capacity: int = DEFAULT_CAPACITY, **options: Any) -> Heap | BuddyHeap:
    """A fresh private heap of ``policy`` (any name in ALL_POLICIES).

    ``options`` are Heap's keyword arguments (``lock``, ``cache``). The buddy
    system keeps no cache of freed blocks: ``cache=True`` is refused for it
    rather than ignored.
    """
    if policy == BUDDY:
        if options.pop("cache", False):
            raise ValueError("the buddy system has no cache of freed blocks (use cache=False)")
        return BuddyHeap(capacity, **options)
    return Heap(capacity, policy=policy, **options)


__all__ = ["ALL_POLICIES", "BUDDY", "BuddyHeap", "make_heap"]
