"""What a program holding pointers into a heap expects of it.

``LiveBlocks`` records each live pointer with the size asked, the usable size
the heap reported and the bytes written into the payload, and checks the
heap's answers against that record: alignment, blocks inside the footprint,
no two blocks overlapping, payloads unchanged, stats matching.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


def heap_policies() -> list[str]:
    """Every allocator ``pyalloc.allocators.make_heap`` builds: the engine's
    policies and the buddy system; the engine's alone, or the default alone,
    while those modules are missing."""
    try:
        from pyalloc.allocators import ALL_POLICIES
    except ImportError:
        pass
    else:
        return list(ALL_POLICIES)
    try:
        from pyalloc.heap import POLICIES
    except ImportError:
        return ["segregated"]
    return list(POLICIES)


SLABS = "default"  # the default Heap: segregated placement, small objects in slabs


def build_heap(policy: str, capacity: int, **options: Any) -> Any:
    """A heap of any name ``heap_policies`` lists.

    The engine's policies are built with slabs off (``small=False``): they
    differ in how they place blocks with headers, which is what their tests
    look at. SLABS is the default ``Heap``.
    """
    try:
        from pyalloc.allocators import make_heap
    except ImportError:
        from pyalloc.heap import Heap

        return Heap(capacity, policy=policy, **options)
    return make_heap(policy, capacity, **options)


def has_free_list_links(policy: str) -> bool:
    """Whether the policy threads links through free blocks (all but implicit)."""
    if policy == "buddy":
        return True
    if policy == SLABS:
        policy = "segregated"
    from pyalloc.policies import policy_class
    from pyalloc.policies.base import LinkedLists

    return issubclass(policy_class(policy), LinkedLists)


ALIGNMENT = 16
HEADER = 8
MIN_BLOCK = 32


def write_random(heap: Any, p: int, n: int, rng: random.Random) -> bytes:
    """Fill ``n`` payload bytes at ``p`` with random bytes; return them."""
    data = rng.randbytes(n)
    heap.region.buf[p : p + n] = data
    return data


def read(heap: Any, p: int, n: int) -> bytes:
    return bytes(heap.region.buf[p : p + n])


def overlaps(spans: list[tuple[int, int]]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Pairs of neighbouring ``[start, end)`` spans that intersect, after sorting."""
    ordered = sorted(spans)
    return [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if a[1] > b[0]]


@dataclass
class Block:
    asked: int  # the size passed to malloc/calloc/realloc
    usable: int  # usable_size() when the block was handed out
    data: bytes  # what the payload must still hold (the first len(data) bytes)
    in_slab: bool = False  # an object with no header, counted by its usable size


def in_slab(heap: Any, p: int) -> bool:
    """Whether ``p`` is an object of one of the heap's slabs."""
    return bool(getattr(heap, "in_slab", None) and heap.in_slab(p))


def counted(heap: Any, p: int, asked: int) -> int:
    """What ``stats()["live_bytes"]`` counts for the live block ``p``: the
    bytes asked, or the usable bytes of an object in a slab."""
    return heap.usable_size(p) if in_slab(heap, p) else asked


class LiveBlocks:
    """The live pointers of one heap and what each must still contain."""

    def __init__(self, heap: Any) -> None:
        self.heap = heap
        self.blocks: dict[int, Block] = {}

    def __len__(self) -> int:
        return len(self.blocks)

    def __contains__(self, p: int) -> bool:
        return p in self.blocks

    def pointers(self) -> list[int]:
        return sorted(self.blocks)

    def add(self, p: int, asked: int, rng: random.Random | None, fill: bool = True) -> Block:
        """Record a pointer just returned; stamp its whole usable size if ``rng``."""
        assert p not in self.blocks, f"pointer {p} handed out twice"
        usable = self.heap.usable_size(p)
        data = write_random(self.heap, p, usable, rng) if rng is not None and fill else b""
        block = Block(asked, usable, data, in_slab(self.heap, p))
        self.blocks[p] = block
        return block

    def remove(self, p: int) -> Block:
        return self.blocks.pop(p)

    def spans(self) -> list[tuple[int, int]]:
        """Each live block as ``[header, end of usable bytes)`` (a slab object
        has no header)."""
        return [(p - (0 if b.in_slab else HEADER), p + b.usable) for p, b in self.blocks.items()]

    def assert_layout(self, footprint: int | None = None) -> None:
        """Alignment, bounds and disjointness of every live block."""
        size = self.heap.region.size
        for p, b in self.blocks.items():
            assert p > 0 and p % ALIGNMENT == 0, f"misaligned pointer {p}"
            assert b.usable >= b.asked, f"block {p}: usable {b.usable} < asked {b.asked}"
            assert p - HEADER >= 0 and p + b.usable <= size, f"block {p} outside the region"
            if footprint is not None:
                assert p + b.usable <= footprint, f"block {p} beyond the footprint {footprint}"
        bad = overlaps(self.spans())
        assert not bad, f"overlapping live blocks: {bad[:3]}"

    def assert_contents(self) -> None:
        for p, b in self.blocks.items():
            got = read(self.heap, p, len(b.data))
            assert got == b.data, f"payload of block {p} changed"

    def assert_stats(self) -> None:
        stats = self.heap.stats()
        assert stats["live_blocks"] == len(self.blocks)
        assert stats["live_bytes"] == sum(
            b.usable if b.in_slab else b.asked for b in self.blocks.values()
        )
        assert stats["heap_bytes"] <= stats["peak_heap_bytes"]
        assert 0 <= stats["largest_free"] <= stats["free_bytes"]

    def assert_all(self) -> None:
        self.heap.check()
        self.assert_layout(self.heap.stats()["heap_bytes"])
        self.assert_contents()
        self.assert_stats()
