"""Where the engine puts blocks: small ones high, the rest low (see heap.py).

Every engine policy, without the cache (a cached block keeps its place and
would hide where a request is served from).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from heap_model import HEADER

from pyalloc.heap import POLICIES, SMALL_BLOCK_MAX, SMALL_CHUNK, Heap

LARGE = 4 * SMALL_BLOCK_MAX  # payload bytes of a block well above SMALL_BLOCK_MAX


@pytest.fixture(params=POLICIES)
def heap(request: pytest.FixtureRequest) -> Iterator[Heap]:
    with Heap(8 << 20, policy=request.param, cache=False) as h:
        yield h


def block_size(heap: Heap, p: int) -> int:
    return heap.usable_size(p) + HEADER


def test_growth_for_a_small_block_takes_a_chunk_and_serves_its_high_end(heap: Heap) -> None:
    before = heap.stats()["heap_bytes"]
    p = heap.malloc(SMALL_BLOCK_MAX - HEADER)
    assert block_size(heap, p) == SMALL_BLOCK_MAX
    s = heap.stats()
    assert s["heap_bytes"] == before + SMALL_CHUNK
    # The block ends where the chunk ends; below it, the rest of the chunk is free.
    assert p - HEADER + SMALL_BLOCK_MAX == heap.brk
    assert s["free_blocks"] == 1 and s["largest_free"] == SMALL_CHUNK - SMALL_BLOCK_MAX
    heap.check()


def test_growth_for_a_larger_block_is_exact(heap: Heap) -> None:
    before = heap.stats()["heap_bytes"]
    p = heap.malloc(SMALL_BLOCK_MAX)  # one granule above a small block
    assert block_size(heap, p) == SMALL_BLOCK_MAX + 16
    assert heap.stats()["heap_bytes"] == before + SMALL_BLOCK_MAX + 16
    assert heap.stats()["free_blocks"] == 0


def test_small_and_larger_blocks_fill_a_free_block_from_opposite_ends(heap: Heap) -> None:
    hole = heap.malloc(16 * LARGE)
    heap.malloc(LARGE)  # keeps the hole off the top
    start, end = hole - HEADER, hole - HEADER + block_size(heap, hole)
    heap.free(hole)
    larges = [heap.malloc(LARGE) for _ in range(3)]
    smalls = [heap.malloc(16) for _ in range(3)]
    # Larger blocks go up from the hole's start, small ones down from its end.
    assert [p - HEADER for p in larges] == [
        start + i * block_size(heap, larges[0]) for i in range(3)
    ]
    assert [p - HEADER + block_size(heap, p) for p in smalls] == [
        end - i * block_size(heap, smalls[0]) for i in range(3)
    ]
    heap.check()


def test_larger_blocks_that_die_together_leave_one_hole(heap: Heap) -> None:
    """Small survivors interleaved in time with larger blocks are not interleaved in space."""
    count = 40
    small = SMALL_BLOCK_MAX // 2
    larges = []
    for _ in range(count):
        heap.malloc(small)  # lives on
        larges.append(heap.malloc(LARGE))
    for p in larges:
        heap.free(p)
    s = heap.stats()
    # A hole between two small survivors would hold one large block; here
    # the freed blocks of each stretch merged.
    assert s["largest_free"] >= 4 * (LARGE + 16)
    footprint = s["heap_bytes"]
    # Blocks a little larger than those freed fit in the holes they left.
    for _ in range(count // 2):
        heap.malloc(LARGE + 64)
    assert heap.stats()["heap_bytes"] < footprint + count // 2 * (LARGE + 80) // 2
    heap.check()


def test_growth_near_the_capacity_falls_back_to_exact() -> None:
    with Heap(64 << 10, cache=False) as heap:
        count = 0
        while True:
            try:
                heap.malloc(SMALL_BLOCK_MAX - HEADER)
            except MemoryError:
                break
            count += 1
        # Where a whole chunk no longer fits, small blocks come one at a time,
        # until not even one fits.
        assert heap.stats()["heap_bytes"] + SMALL_BLOCK_MAX > heap.capacity
        assert heap.stats()["free_blocks"] == 0
        assert count * SMALL_BLOCK_MAX == heap.stats()["heap_bytes"] - heap.heap_start - HEADER
        heap.check()
