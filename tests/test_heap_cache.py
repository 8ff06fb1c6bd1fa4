"""The cache of freed small blocks: reuse, refusal of stale pointers, flushing."""

from __future__ import annotations

import pytest

from pyalloc import DoubleFreeError, Heap, HeapCorruptionError
from pyalloc.heap import (
    CACHE_LIMIT,
    CACHE_MAX_BLOCK,
    FLUSH_BEFORE_SPLIT,
    SMALL_BLOCK_MAX,
    TOP_PAD,
    TRIM_THRESHOLD,
)

# Sizes above SMALL_BLOCK_MAX are cut from the low end of free space, so the
# blocks of these tests lie in address order.
MEDIUM = 2 * SMALL_BLOCK_MAX
assert MEDIUM + 8 < CACHE_MAX_BLOCK


@pytest.fixture
def heap():
    with Heap(1 << 20, small=False) as h:
        yield h


def test_a_freed_block_is_handed_out_again_for_the_same_size(heap: Heap) -> None:
    keep = heap.malloc(64)
    p = heap.malloc(64)
    heap.free(p)
    assert heap.stats()["cached_blocks"] == 1
    assert heap.malloc(60) == p  # same block size: 60 and 64 both need 80 bytes
    assert heap.stats()["cached_blocks"] == 0
    heap.free(keep)
    heap.check()


def test_cached_blocks_count_as_free_in_stats(heap: Heap) -> None:
    ps = [heap.malloc(100) for _ in range(4)]
    heap.free(ps[1])
    s = heap.stats()
    assert s["live_blocks"] == 3
    assert s["live_bytes"] == 300
    assert s["cached_blocks"] == 1
    assert s["free_blocks"] >= 1
    assert s["free_bytes"] >= heap.usable_size(ps[0]) + 8


@pytest.mark.parametrize("op", ["free", "realloc", "usable_size", "view"])
def test_a_cached_pointer_is_refused_as_already_free(heap: Heap, op: str) -> None:
    p = heap.malloc(32)
    heap.malloc(32)
    heap.free(p)
    with pytest.raises(DoubleFreeError):
        if op == "realloc":
            heap.realloc(p, 64)
        else:
            getattr(heap, op)(p)
    heap.check()
    assert heap.stats()["cached_blocks"] == 1


def test_a_corrupted_cached_header_is_detected_on_reuse(heap: Heap) -> None:
    p = heap.malloc(48)
    heap.malloc(48)
    heap.free(p)
    heap.region.buf[p - 8] ^= 0x40  # a bit of the size field
    with pytest.raises(HeapCorruptionError):
        heap.check()
    with pytest.raises(HeapCorruptionError):
        heap.malloc(48)


def test_the_cache_holds_at_most_its_limit_per_size(heap: Heap) -> None:
    ps = [heap.malloc(16) for _ in range(CACHE_LIMIT + 5)]
    for p in ps:
        heap.free(p)
    assert heap.stats()["cached_blocks"] == CACHE_LIMIT
    heap.check()


def test_large_blocks_are_never_cached(heap: Heap) -> None:
    p = heap.malloc(CACHE_MAX_BLOCK)
    heap.malloc(16)
    heap.free(p)
    assert heap.stats()["cached_blocks"] == 0


def test_cached_blocks_are_coalesced_before_the_heap_grows(heap: Heap) -> None:
    small = [heap.malloc(MEDIUM) for _ in range(CACHE_LIMIT)]
    fence = heap.malloc(MEDIUM)
    before = heap.stats()["heap_bytes"]
    for p in small:
        heap.free(p)
    assert heap.stats()["cached_blocks"] == CACHE_LIMIT
    # Too big for any single cached block, small enough for them merged.
    big = heap.malloc(MEDIUM * CACHE_LIMIT)
    assert heap.stats()["heap_bytes"] == before
    assert big < fence
    heap.check()


def test_cached_blocks_are_coalesced_before_a_large_block_is_split(heap: Heap) -> None:
    a, b = heap.malloc(MEDIUM), heap.malloc(MEDIUM)
    heap.malloc(MEDIUM)  # keeps a and b apart from the large block
    large = heap.malloc(2 * FLUSH_BEFORE_SPLIT)
    heap.malloc(MEDIUM)  # and the large block off the top of the heap
    heap.free(large)
    heap.free(a)
    heap.free(b)
    assert heap.stats()["cached_blocks"] == 2
    before = heap.stats()["heap_bytes"]
    # No cached block has this size; a and b merged hold it, the large block too.
    p = heap.malloc(2 * MEDIUM)
    assert p == a
    assert heap.stats()["cached_blocks"] == 0
    # The large block is whole: the same request gets it back without growth.
    assert heap.malloc(2 * FLUSH_BEFORE_SPLIT) == large
    assert heap.stats()["heap_bytes"] == before
    heap.check()


def test_a_flush_that_trims_the_block_it_was_for_grows_the_heap() -> None:
    # The large free block merges with a cached block into the top of the
    # heap, which the flush then trims: the request is served by growth.
    with Heap(1 << 23, small=False) as heap:
        large = heap.malloc(TRIM_THRESHOLD * 2)
        last = heap.malloc(MEDIUM)  # the last block, next to the large one
        heap.free(large)
        heap.free(last)
        assert heap.stats()["cached_blocks"] == 1
        need = TOP_PAD + FLUSH_BEFORE_SPLIT  # more than the trim leaves
        p = heap.malloc(need)
        assert heap.stats()["cached_blocks"] == 0
        assert heap.usable_size(p) >= need
        heap.check()


def test_a_small_split_keeps_the_cache(heap: Heap) -> None:
    a = heap.malloc(64)
    spare = heap.malloc(FLUSH_BEFORE_SPLIT // 2)
    heap.malloc(16)
    heap.free(spare)
    heap.free(a)
    heap.malloc(120)  # cut from the spare block, which leaves less than the limit
    assert heap.stats()["cached_blocks"] == 1
    heap.check()


def test_without_the_cache_a_free_coalesces_at_once() -> None:
    with Heap(1 << 20, cache=False, small=False) as heap:
        a, b, c = (heap.malloc(MEDIUM) for _ in range(3))
        heap.malloc(MEDIUM)
        for p in (a, b, c):
            heap.free(p)
        s = heap.stats()
        assert s["cached_blocks"] == 0
        assert s["free_blocks"] == 1
        assert s["largest_free"] == 3 * (MEDIUM + 16)


def test_realloc_grows_into_a_cached_successor_instead_of_moving(heap: Heap) -> None:
    a = heap.malloc(MEDIUM)
    b = heap.malloc(MEDIUM)
    keep = heap.malloc(MEDIUM)  # b is not the top block
    assert a < b < keep
    heap.free(b)
    assert heap.stats()["cached_blocks"] == 1
    footprint = heap.stats()["heap_bytes"]
    heap.bytes[a : a + MEDIUM] = bytes(range(256)) * (MEDIUM // 256)
    assert heap.realloc(a, 2 * MEDIUM) == a  # b's space, coalesced from the cache
    assert heap.bytes[a : a + MEDIUM] == bytes(range(256)) * (MEDIUM // 256)
    assert heap.stats()["cached_blocks"] == 0 and heap.stats()["heap_bytes"] == footprint
    heap.check()


def test_realloc_slides_into_a_cached_predecessor_instead_of_moving(heap: Heap) -> None:
    keep = heap.malloc(MEDIUM)
    b = heap.malloc(MEDIUM)
    a = heap.malloc(MEDIUM)
    heap.malloc(MEDIUM)  # a is not the top block
    assert keep < b < a
    heap.free(b)
    footprint = heap.stats()["heap_bytes"]
    heap.bytes[a : a + MEDIUM] = bytes(range(256)) * (MEDIUM // 256)
    assert heap.realloc(a, 2 * MEDIUM - 64) == b  # slid down into b's space
    assert heap.bytes[b : b + MEDIUM] == bytes(range(256)) * (MEDIUM // 256)
    assert heap.stats()["heap_bytes"] == footprint
    heap.check()
