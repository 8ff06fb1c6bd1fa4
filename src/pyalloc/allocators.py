"""Every allocator of the lab by one name: the default heap, the engine's
policies and the buddy system.

``default`` is ``Heap()`` as a program gets it: segregated placement with
small objects in slabs (``slab.py``). The engine's free-block indexes
(``POLICIES``) are built with slabs off, so that they differ only in how
they place blocks, which is what comparing them is for. The buddy system has
a layout of its own and is a class of its own, ``BuddyHeap``, with the same
API. ``make_heap(NAME, capacity, **options)`` builds any of them, so that
tests, benchmarks and the replay driver can treat ``ALL_POLICIES`` alike.
"""

from __future__ import annotations

from typing import Any, Final

from .buddy import BuddyHeap
from .heap import DEFAULT_CAPACITY, POLICIES, Heap

BUDDY: Final = "buddy"
DEFAULT: Final = "default"
ALL_POLICIES: Final[tuple[str, ...]] = (DEFAULT, *POLICIES, BUDDY)


def make_heap(policy: str, capacity: int = DEFAULT_CAPACITY, **options: Any) -> Heap | BuddyHeap:
    """A fresh private heap of ``policy`` (any name in ALL_POLICIES).

    ``options`` are Heap's keyword arguments (``lock``, ``cache``, ``small``);
    ``small`` is on for ``default`` and off for the engine's policies unless
    given. The buddy system keeps no cache of freed blocks and no slabs:
    ``cache=True`` or ``small=True`` is refused for it rather than ignored.
    """
    if policy == BUDDY:
        if options.pop("cache", False):
            raise ValueError("the buddy system has no cache of freed blocks (use cache=False)")
        if options.pop("small", False):
            raise ValueError("the buddy system has no slabs (use small=False)")
        return BuddyHeap(capacity, **options)
    if policy == DEFAULT:
        return Heap(capacity, **options)
    options.setdefault("small", False)
    return Heap(capacity, policy=policy, **options)


__all__ = ["ALL_POLICIES", "BUDDY", "DEFAULT", "BuddyHeap", "make_heap"]
