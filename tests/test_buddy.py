"""The buddy system's own promises: power-of-two orders, splitting, merging.

The Heap API, hardening, stateful and thread tests run on ``BuddyHeap`` too
(``conftest.py`` parametrizes them over ``ALL_POLICIES``); these tests pin
what only a buddy system does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from heap_model import HEADER, LiveBlocks, read, write_random

from pyalloc import ALL_POLICIES, POLICIES, BuddyHeap, Heap, HeapCorruptionError, make_heap
from pyalloc.buddy import BASE, MIN_ORDER, W_BITMAP, order_for


@pytest.fixture
def heap() -> Iterator[BuddyHeap]:
    with BuddyHeap(1 << 20) as h:
        yield h


def _arena_top(heap: BuddyHeap) -> int:
    return heap.stats()["heap_bytes"] - HEADER - BASE


@pytest.mark.parametrize(
    ("size", "order"),
    [(0, 5), (24, 5), (25, 6), (56, 6), (57, 7), (1000, 10), (1016, 10), (1017, 11)],
)
def test_a_request_takes_the_order_of_its_size_plus_header(size: int, order: int) -> None:
    assert order_for(size) == order


def test_usable_sizes_are_powers_of_two_less_the_header(heap: BuddyHeap) -> None:
    for n in [0, 1, 24, 25, 100, 1000, 5000, 70_000]:
        p = heap.malloc(n)
        assert heap.usable_size(p) == (1 << order_for(n)) - HEADER
        assert p % 16 == 0
        assert (p - HEADER - BASE) % (1 << order_for(n)) == 0  # aligned to its size


def test_growth_fills_the_gap_below_an_aligned_block_with_free_blocks(heap: BuddyHeap) -> None:
    small = heap.malloc(0)  # order 5 at offset 0
    big = heap.malloc(1000)  # order 10: offsets 32..1023 become free blocks of 32 .. 512 bytes
    assert big - HEADER - BASE == 1024
    free = sorted(size for _, size, allocated in heap.blocks() if not allocated)
    assert free == [32, 64, 128, 256, 512]
    # The smallest free block that fits is split, never a larger one.
    assert heap.malloc(20) - HEADER - BASE == 32
    assert heap.malloc(100) - HEADER - BASE == 128
    heap.check()
    heap.free(small)
    heap.free(big)
    heap.check()


def test_freeing_everything_merges_back_to_the_fewest_blocks(heap: BuddyHeap) -> None:
    rng = random.Random(51)
    live = LiveBlocks(heap)
    for _ in range(600):
        if len(live) and rng.random() < 0.45:
            p = rng.choice(live.pointers())
            live.remove(p)
            heap.free(p)
        else:
            n = rng.choice([rng.randrange(0, 200), rng.randrange(0, 6000)])
            live.add(heap.malloc(n), n, rng)
    live.assert_all()
    for p in live.pointers():
        heap.free(p)
    heap.check()
    # [0, top) is tiled by the largest aligned blocks: one per set bit of top.
    top = _arena_top(heap)
    assert heap.stats()["free_blocks"] == bin(top).count("1")
    assert heap.stats()["free_bytes"] == top


def test_realloc_shrinks_in_place_and_frees_the_upper_halves(heap: BuddyHeap) -> None:
    rng = random.Random(52)
    p = heap.malloc(4000)  # order 12
    data = write_random(heap, p, 4000, rng)
    heap.malloc(16)
    before = heap.stats()["free_bytes"]
    assert heap.realloc(p, 100) == p  # order 7
    assert heap.usable_size(p) == 128 - HEADER
    assert read(heap, p, 100) == data[:100]
    assert heap.stats()["free_bytes"] == before + 4096 - 128
    heap.check()


def test_realloc_grows_in_place_into_free_buddies(heap: BuddyHeap) -> None:
    rng = random.Random(53)
    p = heap.malloc(100)  # order 7 at offset 0
    q = heap.malloc(100)  # its buddy, at 128
    guard = heap.malloc(200)  # order 8 at 256
    data = write_random(heap, p, 100, rng)
    heap.free(q)
    assert heap.realloc(p, 200) == p  # order 8 = p and its free buddy
    assert read(heap, p, 100) == data
    # The next order's buddy is the live guard: now p has to move.
    moved = heap.realloc(p, 400)
    assert moved != p
    assert read(heap, moved, 100) == data
    assert heap.usable_size(guard) >= 200
    heap.check()


def test_a_moving_realloc_beside_a_corrupted_free_buddy_changes_nothing(heap: BuddyHeap) -> None:
    buddy = heap.malloc(100)  # order 7 at offset 0
    p = heap.malloc(100)  # its buddy, at 128: the two merge when p is released
    heap.malloc(200)  # keeps p from growing in place
    heap.free(buddy)
    heap.region.buf[buddy + 2] ^= 0x5A  # an overflow reaches the free buddy's link
    before = bytes(heap.region.buf)
    with pytest.raises(HeapCorruptionError):
        heap.realloc(p, 3000)  # refused before a new block is taken
    assert bytes(heap.region.buf) == before
    heap.region.buf[buddy + 2] ^= 0x5A
    heap.check()


def test_a_request_above_the_largest_power_of_two_is_refused() -> None:
    with BuddyHeap(1 << 20) as heap:
        largest = 1 << 19  # 2**20 would not fit beside the control record
        p = heap.malloc(largest - HEADER)
        assert heap.usable_size(p) == largest - HEADER
        heap.free(p)
        before = heap.stats()
        with pytest.raises(MemoryError):
            heap.malloc(largest - HEADER + 1)
        assert heap.stats() == before
        heap.check()


def test_an_overflow_past_the_last_block_is_caught_at_the_epilogue(heap: BuddyHeap) -> None:
    p = heap.malloc(100)
    heap.region.buf[p + heap.usable_size(p)] ^= 0x55  # the first byte past the arena
    with pytest.raises(HeapCorruptionError):
        heap.check()
    with pytest.raises(HeapCorruptionError):
        heap.malloc(5000)  # the arena would grow over it
    heap.region.buf[p + heap.usable_size(p)] ^= 0x55
    heap.malloc(5000)
    heap.check()


@pytest.mark.parametrize("bit", [MIN_ORDER, MIN_ORDER + 3, 0, 63])
def test_check_verifies_the_order_bitmap(heap: BuddyHeap, bit: int) -> None:
    heap.malloc(0)
    heap.malloc(1000)  # free blocks of orders 5 to 9
    heap.words[W_BITMAP] ^= 1 << bit
    with pytest.raises(HeapCorruptionError):
        heap.check()
    heap.words[W_BITMAP] ^= 1 << bit
    heap.check()


def test_make_heap_builds_every_allocator() -> None:
    assert ALL_POLICIES == ("default", *POLICIES, "buddy")
    for name in ALL_POLICIES:
        with make_heap(name, 1 << 20, lock=False) as heap:
            assert isinstance(heap, BuddyHeap if name == "buddy" else Heap)
            assert heap.policy_name == ("segregated" if name == "default" else name)
            p = heap.malloc(10)
            assert (name == "default") == (isinstance(heap, Heap) and heap._slabs == 1)
            heap.free(p)
            heap.check()


def test_make_heap_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="cache"):
        make_heap("buddy", 1 << 20, cache=True)
    with pytest.raises(ValueError, match="unknown policy"):
        make_heap("worst-fit", 1 << 20)
    with pytest.raises(ValueError):
        BuddyHeap(100)
