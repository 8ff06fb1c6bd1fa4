"""Where the engine puts blocks: small ones high, the rest low, and realloc
sliding a block down into free space before it (see heap.py).

Every engine policy, without the cache (a cached block keeps its place and
would hide where a request is served from).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from heap_model import HEADER

from pyalloc import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError
from pyalloc.heap import POLICIES, SMALL_BLOCK_MAX, SMALL_CHUNK, Heap
from pyalloc.mapped import MappedHeap

LARGE = 4 * SMALL_BLOCK_MAX  # payload bytes of a block well above SMALL_BLOCK_MAX


@pytest.fixture(params=POLICIES)
def heap(request: pytest.FixtureRequest) -> Iterator[Heap]:
    with Heap(8 << 20, policy=request.param, cache=False, small=False) as h:
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
    with Heap(64 << 10, cache=False, small=False) as heap:
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


def boxed_in(heap: Heap, before: int, after: int) -> tuple[int, int, bytes]:
    """A live block with a free block of ``before`` bytes below it and one of
    ``after`` above (0: none), fenced by live blocks; returns (pointer, fence, bytes)."""
    heap.malloc(LARGE)
    below = heap.malloc(before - HEADER) if before else 0
    p = heap.malloc(LARGE)
    above = heap.malloc(after - HEADER) if after else 0
    fence = heap.malloc(LARGE)
    data = bytes(range(256)) * (LARGE // 256)
    heap.view(p)[:LARGE] = data
    heap.view(fence)[:LARGE] = data[::-1]
    for q in (below, above):
        if q:
            heap.free(q)
    return p, fence, data


# Too big for the 2048-byte hole alone, small enough for the hole and the block.
BEYOND_HOLE = 2048 + LARGE // 2


@pytest.mark.parametrize("after", [0, 1024])
def test_realloc_slides_down_into_a_free_predecessor(heap: Heap, after: int) -> None:
    p, fence, data = boxed_in(heap, 2048, after)
    footprint = heap.stats()["heap_bytes"]
    q = heap.realloc(p, BEYOND_HOLE)
    assert q < p  # moved down, into the predecessor
    assert bytes(heap.view(q)[:LARGE]) == data
    assert bytes(heap.view(fence)[:LARGE]) == data[::-1]
    assert heap.stats()["heap_bytes"] == footprint
    heap.check()


def test_realloc_slides_down_across_both_neighbours_to_an_exact_fit(heap: Heap) -> None:
    p, fence, data = boxed_in(heap, 256, 256)
    whole = 256 + LARGE + 16 + 256
    q = heap.realloc(p, whole - HEADER)
    assert heap.usable_size(q) == whole - HEADER
    assert q + whole - HEADER == fence - HEADER  # the block reaches the fence
    assert bytes(heap.view(q)[:LARGE]) == data
    heap.check()  # the fence's prev-allocated bit is set again
    heap.free(fence)
    heap.check()


@pytest.mark.parametrize(
    ("before", "after", "size", "error"),
    [
        # The moved bytes end below the old header, which stays: it is marked free.
        (2048, 0, BEYOND_HOLE, DoubleFreeError),
        # The moved bytes cover the old header: what lies there is data.
        (256, 256, 256 + LARGE + 16 + 256 - HEADER, InvalidPointerError),
    ],
)
def test_the_pointer_a_slide_left_is_refused(
    heap: Heap, before: int, after: int, size: int, error: type[HeapError]
) -> None:
    p, fence, data = boxed_in(heap, before, after)
    q = heap.realloc(p, size)
    assert q < p
    image = bytes(heap.buf[: heap.brk + HEADER])
    with pytest.raises(error):
        heap.free(p)
    assert bytes(heap.buf[: heap.brk + HEADER]) == image
    assert bytes(heap.view(q)[:LARGE]) == data
    heap.check()


def test_realloc_does_not_slide_when_the_space_is_too_small(heap: Heap) -> None:
    p, fence, data = boxed_in(heap, 256, 0)
    q = heap.realloc(p, 4 * LARGE)
    assert q > fence  # copied to the top
    assert bytes(heap.view(q)[:LARGE]) == data
    assert heap.stats()["largest_free"] >= 256 + LARGE + 16  # the old block merged below
    heap.check()


def test_a_corrupted_predecessor_refuses_the_slide_and_changes_nothing(heap: Heap) -> None:
    p, fence, data = boxed_in(heap, 2048, 0)
    footer = (p - HEADER - 8) >> 3
    heap.words[footer] ^= 1 << 60  # the predecessor's footer, which the slide reads first
    footprint = heap.brk + HEADER
    before = bytes(heap.buf[:footprint])
    with pytest.raises(HeapCorruptionError):
        heap.realloc(p, BEYOND_HOLE)
    assert heap.brk + HEADER == footprint
    assert bytes(heap.buf[:footprint]) == before
    heap.words[footer] ^= 1 << 60
    heap.check()
    assert bytes(heap.view(p)[:LARGE]) == data


def test_a_shared_heap_copies_rather_than_slides(tmp_path: Any) -> None:
    with MappedHeap.create(tmp_path / "heap", 1 << 20) as heap:
        p, fence, data = boxed_in(heap, 2048, 0)
        q = heap.realloc(p, BEYOND_HOLE)
        assert q > fence
        assert bytes(heap.view(q)[:LARGE]) == data
        heap.check()
