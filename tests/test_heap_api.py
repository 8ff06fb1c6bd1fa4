"""The Heap API contract, one edge case per test, for every policy."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from heap_model import (
    ALIGNMENT,
    HEADER,
    MIN_BLOCK,
    LiveBlocks,
    build_heap,
    counted,
    in_slab,
    read,
    write_random,
)

from pyalloc import InvalidPointerError

STATS_KEYS = {
    "heap_bytes",
    "peak_heap_bytes",
    "live_bytes",
    "live_blocks",
    "free_bytes",
    "free_blocks",
    "largest_free",
}

NOT_INTS = [1.0, 16.0, "16", b"16", True, False, None, [16]]


# --- malloc ---------------------------------------------------------------


def test_malloc_zero_returns_unique_valid_pointers(heap: Any) -> None:
    pointers = [heap.malloc(0) for _ in range(8)]
    assert all(p > 0 and p % ALIGNMENT == 0 for p in pointers)
    assert len(set(pointers)) == len(pointers)
    for p in pointers:
        assert heap.usable_size(p) >= 0
    heap.check()
    assert heap.stats()["live_blocks"] == len(pointers)
    assert heap.stats()["live_bytes"] == sum(counted(heap, p, 0) for p in pointers)
    for p in pointers:
        heap.free(p)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


def test_malloc_returns_aligned_disjoint_blocks(heap: Any) -> None:
    rng = random.Random(1)
    live = LiveBlocks(heap)
    for size in [1, 7, 8, 15, 16, 17, 24, 25, 31, 32, 33, 100, 1000, 4096, 65536]:
        live.add(heap.malloc(size), size, rng)
    live.assert_all()


@pytest.mark.parametrize("size", [0, 1, 8, 23, 24, 25, 40, 41, 255, 4095, 4096, 100_000])
def test_usable_size_covers_the_request(heap: Any, size: int) -> None:
    p = heap.malloc(size)
    usable = heap.usable_size(p)
    assert usable >= size
    if in_slab(heap, p):  # a slot of a size class: a multiple of 16
        assert usable % ALIGNMENT == 0 and usable - size <= max(ALIGNMENT, usable // 4)
    else:  # usable = block size - header, and block sizes are multiples of 16.
        assert usable >= MIN_BLOCK - HEADER
        assert (usable + HEADER) % ALIGNMENT == 0
    heap.free(p)


@pytest.mark.parametrize("size", NOT_INTS, ids=repr)
def test_malloc_rejects_non_int_sizes(heap: Any, size: object) -> None:
    with pytest.raises(TypeError):
        heap.malloc(size)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


@pytest.mark.parametrize("size", [-1, -16, -(1 << 70)])
def test_malloc_rejects_negative_sizes(heap: Any, size: int) -> None:
    with pytest.raises(ValueError):
        heap.malloc(size)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


def test_malloc_accepts_int_subclasses_that_are_not_bool(heap: Any) -> None:
    class Size(int):
        pass

    p = heap.malloc(Size(40))
    assert heap.usable_size(p) >= 40
    heap.free(p)


class Index:
    """An integer that is not an int, as numpy's are: it has ``__index__``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_sizes_and_pointers_may_be_integers_that_are_not_ints(heap: Any) -> None:
    p = heap.malloc(Index(40))
    assert heap.usable_size(Index(p)) >= 40
    heap.bytes[p : p + 40] = b"x" * 40
    q = heap.realloc(Index(p), Index(200))
    assert bytes(heap.bytes[q : q + 40]) == b"x" * 40
    r = heap.calloc(Index(3), Index(10))
    assert bytes(heap.bytes[r : r + 30]) == bytes(30)
    heap.free(Index(q))
    heap.free(Index(r))
    assert heap.stats()["live_blocks"] == 0
    heap.check()


# --- free -----------------------------------------------------------------


def test_free_null_does_nothing(heap: Any) -> None:
    p = heap.malloc(64)
    before = heap.stats()
    heap.free(0)
    assert heap.stats() == before
    heap.check()
    heap.free(p)


def test_free_returns_memory_for_reuse(make_heap: Any) -> None:
    heap = make_heap(1 << 20)
    # Far more than the capacity in total, so it only fits if frees are reused.
    for _ in range(200):
        p = heap.malloc(64 << 10)
        heap.free(p)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


# --- calloc ---------------------------------------------------------------


def test_calloc_zero_fills_fresh_memory(heap: Any) -> None:
    p = heap.calloc(100, 8)
    assert heap.usable_size(p) >= 800
    assert read(heap, p, 800) == bytes(800)
    assert heap.stats()["live_bytes"] == 800
    heap.free(p)


def test_calloc_zero_fills_reused_dirty_memory(heap: Any) -> None:
    sizes = [24, 40, 100, 250, 1000, 3000, 24, 40]
    dirty = [heap.malloc(n) for n in sizes]
    for p in dirty:
        heap.region.buf[p : p + heap.usable_size(p)] = b"\xff" * heap.usable_size(p)
    for p in dirty:
        heap.free(p)
    for n in sizes:
        q = heap.calloc(1, n)
        assert read(heap, q, n) == bytes(n), f"calloc({n}) returned dirty bytes"
        # Dirty again, so the next calloc cannot profit from zeros left here.
        heap.region.buf[q : q + n] = b"\xee" * n
        heap.free(q)
    for n in sizes:
        q = heap.calloc(n, 1)
        assert read(heap, q, n) == bytes(n)
    heap.check()


def test_calloc_zero_count_or_size_returns_a_valid_pointer(heap: Any) -> None:
    p = heap.calloc(0, 16)
    q = heap.calloc(16, 0)
    assert p > 0 and q > 0 and p != q
    assert p % ALIGNMENT == 0 and q % ALIGNMENT == 0
    heap.free(p)
    heap.free(q)
    heap.check()


@pytest.mark.parametrize(
    ("count", "size"), [(1 << 40, 1 << 40), (1 << 32, 1 << 32), (1 << 62, 4), (2, 1 << 63)]
)
def test_calloc_overflow_raises_memory_error(heap: Any, count: int, size: int) -> None:
    with pytest.raises(MemoryError):
        heap.calloc(count, size)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


def test_calloc_beyond_capacity_raises_memory_error(make_heap: Any) -> None:
    heap = make_heap(1 << 20)
    with pytest.raises(MemoryError):
        heap.calloc(1 << 10, 1 << 11)
    heap.check()


@pytest.mark.parametrize("bad", NOT_INTS, ids=repr)
def test_calloc_rejects_non_int_arguments(heap: Any, bad: object) -> None:
    with pytest.raises(TypeError):
        heap.calloc(bad, 8)
    with pytest.raises(TypeError):
        heap.calloc(8, bad)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


@pytest.mark.parametrize(("count", "size"), [(-1, 8), (8, -1), (-1, -1)])
def test_calloc_rejects_negative_arguments(heap: Any, count: int, size: int) -> None:
    with pytest.raises(ValueError):
        heap.calloc(count, size)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


# --- realloc --------------------------------------------------------------


def test_realloc_null_is_malloc(heap: Any) -> None:
    p = heap.realloc(0, 100)
    assert p > 0 and p % ALIGNMENT == 0
    assert heap.usable_size(p) >= 100
    assert heap.stats()["live_blocks"] == 1
    assert heap.stats()["live_bytes"] == counted(heap, p, 100)
    heap.free(p)
    heap.check()


def test_realloc_to_zero_frees_and_returns_null(heap: Any) -> None:
    keep = heap.malloc(32)
    p = heap.malloc(100)
    assert heap.realloc(p, 0) == 0
    assert heap.stats()["live_blocks"] == 1
    assert heap.stats()["live_bytes"] == 32
    heap.check()
    with pytest.raises(InvalidPointerError):
        heap.free(p)
    heap.check()
    heap.free(keep)


@pytest.mark.parametrize(("old", "new"), [(1000, 10), (1000, 500), (200, 199), (64, 24)])
def test_realloc_shrink_preserves_prefix(heap: Any, old: int, new: int) -> None:
    rng = random.Random(old * 7 + new)
    p = heap.malloc(old)
    after = heap.malloc(64)  # a live neighbour that must stay untouched
    data = write_random(heap, p, old, rng)
    neighbour = write_random(heap, after, 64, rng)
    q = heap.realloc(p, new)
    assert q > 0 and q % ALIGNMENT == 0
    assert heap.usable_size(q) >= new
    assert read(heap, q, new) == data[:new]
    assert read(heap, after, 64) == neighbour
    assert heap.stats()["live_bytes"] == counted(heap, q, new) + counted(heap, after, 64)
    heap.check()


@pytest.mark.parametrize(("old", "new"), [(10, 1000), (24, 25), (100, 5000), (3000, 70_000)])
def test_realloc_grow_preserves_contents(heap: Any, old: int, new: int) -> None:
    rng = random.Random(old * 7 + new)
    p = heap.malloc(old)
    # Neighbours on both sides, so growing in place is not always possible.
    after = heap.malloc(64)
    data = write_random(heap, p, old, rng)
    neighbour = write_random(heap, after, 64, rng)
    q = heap.realloc(p, new)
    assert heap.usable_size(q) >= new
    assert read(heap, q, old) == data
    assert read(heap, after, 64) == neighbour
    assert heap.stats()["live_blocks"] == 2
    assert heap.stats()["live_bytes"] == counted(heap, q, new) + counted(heap, after, 64)
    heap.check()


@pytest.mark.engine_format
def test_realloc_grows_in_place_at_the_top(heap: Any) -> None:
    rng = random.Random(3)
    heap.malloc(64)
    last = heap.malloc(2000)  # the last block of a fresh heap: too big for the small chunk
    data = write_random(heap, last, 100, rng)
    grown = heap.realloc(last, 20_000)
    assert grown == last
    assert heap.usable_size(grown) >= 20_000
    assert read(heap, grown, 100) == data
    heap.check()


@pytest.mark.engine_format
def test_realloc_grows_in_place_into_a_free_successor(heap: Any) -> None:
    rng = random.Random(4)
    p = heap.malloc(100)
    successor = heap.malloc(4000)
    guard = heap.malloc(64)  # keeps the successor from being the top
    guard_data = write_random(heap, guard, 64, rng)
    data = write_random(heap, p, 100, rng)
    assert successor > p
    heap.free(successor)
    grown = heap.realloc(p, 2000)
    assert grown == p
    assert heap.usable_size(grown) >= 2000
    assert read(heap, grown, 100) == data
    assert read(heap, guard, 64) == guard_data
    heap.check()


def test_failed_realloc_leaves_the_block_intact(make_heap: Any) -> None:
    heap = make_heap(1 << 20)
    rng = random.Random(5)
    p = heap.malloc(300)
    data = write_random(heap, p, 300, rng)
    usable = heap.usable_size(p)
    before = heap.stats()
    for too_big in [2 << 20, 1 << 40]:
        with pytest.raises(MemoryError):
            heap.realloc(p, too_big)
        assert heap.usable_size(p) == usable
        assert read(heap, p, 300) == data
        assert heap.stats()["live_blocks"] == before["live_blocks"]
        assert heap.stats()["live_bytes"] == before["live_bytes"]
        heap.check()
    heap.free(p)
    heap.check()


@pytest.mark.parametrize("size", NOT_INTS, ids=repr)
def test_realloc_rejects_non_int_sizes(heap: Any, size: object) -> None:
    p = heap.malloc(40)
    with pytest.raises(TypeError):
        heap.realloc(p, size)
    heap.check()
    heap.free(p)


def test_realloc_rejects_negative_size_and_keeps_the_block(heap: Any) -> None:
    rng = random.Random(6)
    p = heap.malloc(40)
    data = write_random(heap, p, 40, rng)
    with pytest.raises(ValueError):
        heap.realloc(p, -1)
    assert read(heap, p, 40) == data
    heap.check()
    heap.free(p)


# --- capacity -------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1 << 40, 1 << 63, 1 << 70])
def test_a_capacity_beyond_the_largest_heap_is_a_value_error(make_heap: Any, capacity: int) -> None:
    with pytest.raises(ValueError, match="exceeds the largest (buddy )?heap"):
        make_heap(capacity)


def test_a_capacity_too_small_names_the_least_that_works(make_heap: Any) -> None:
    # The control record grows with the capacity (more size classes), so the
    # figure is found from the capacity asked for, not from a fixed minimum.
    refused = 0
    for capacity in range(0, 1024, 8):
        try:
            make_heap(capacity)
        except ValueError as e:
            refused += 1
            least = int(re.fullmatch(r".* \(at least (\d+)\)", str(e)).group(1))  # type: ignore[union-attr]
            assert least > capacity
            make_heap(least)
            for between in range(capacity, least, 8):
                with pytest.raises(ValueError, match="too small"):
                    make_heap(between)
    assert refused


def test_exhausting_the_capacity_raises_memory_error_and_heap_stays_usable(
    make_heap: Any,
) -> None:
    capacity = 1 << 20
    heap = make_heap(capacity)
    rng = random.Random(7)
    live = LiveBlocks(heap)
    with pytest.raises(MemoryError):
        for _ in range(capacity // 1000 + 1):
            live.add(heap.malloc(1000), 1000, rng)
    assert len(live) > (capacity // 1000) // 2
    live.assert_all()
    assert heap.stats()["heap_bytes"] <= capacity
    # Small requests may still fit somewhere; a request of the whole capacity cannot.
    with pytest.raises(MemoryError):
        heap.malloc(capacity)
    live.assert_all()
    for p in live.pointers()[::2]:
        live.remove(p)
        heap.free(p)
    for _ in range(10):
        live.add(heap.malloc(1000), 1000, rng)
    live.assert_all()


@pytest.mark.engine_format
def test_a_request_of_most_of_the_capacity_fits(make_heap: Any) -> None:
    capacity = 1 << 20
    heap = make_heap(capacity)
    n = capacity - (64 << 10)
    p = heap.malloc(n)
    assert heap.usable_size(p) >= n
    heap.region.buf[p + n - 1] = 0x7F  # the last byte asked is inside the region
    assert heap.stats()["heap_bytes"] <= capacity
    heap.check()
    heap.free(p)
    q = heap.malloc(n)  # and again after it was freed
    heap.free(q)
    heap.check()


@pytest.mark.parametrize("size", [1 << 40, 1 << 63, 1 << 100])
def test_huge_malloc_raises_memory_error(heap: Any, size: int) -> None:
    with pytest.raises(MemoryError):
        heap.malloc(size)
    heap.check()
    p = heap.malloc(10)
    heap.free(p)


# --- view -----------------------------------------------------------------


def test_view_is_writable_zero_copy_and_covers_usable_size(heap: Any) -> None:
    p = heap.malloc(50)
    with heap.view(p) as mv:
        assert not mv.readonly
        assert mv.format == "B"
        assert len(mv) == mv.nbytes == heap.usable_size(p)
        mv[:5] = b"hello"
        mv[len(mv) - 1] = 0xAB
        assert read(heap, p, 5) == b"hello"
        assert heap.region.buf[p + len(mv) - 1] == 0xAB
        heap.region.buf[p + 10 : p + 13] = b"xyz"
        assert bytes(mv[10:13]) == b"xyz"
    heap.check()
    heap.free(p)


def test_view_of_zero_sized_block(heap: Any) -> None:
    p = heap.malloc(0)
    with heap.view(p) as mv:
        assert len(mv) == heap.usable_size(p)
    heap.free(p)


# --- alignment, context manager, stats ------------------------------------


def test_every_pointer_is_16_byte_aligned(heap: Any) -> None:
    rng = random.Random(8)
    pointers = []
    for _ in range(300):
        n = rng.choice([rng.randrange(0, 64), rng.randrange(0, 2000)])
        pointers.append(heap.malloc(n))
        if rng.random() < 0.3:
            heap.free(pointers.pop(rng.randrange(len(pointers))))
    assert all(p % ALIGNMENT == 0 for p in pointers)


def test_context_manager_closes_the_heap(policy: str) -> None:

    with build_heap(policy, 1 << 20) as heap:
        p = heap.malloc(100)
        heap.free(p)
        region = heap.region
        assert not region.closed
    assert region.closed


def test_close_is_idempotent(policy: str) -> None:
    heap = build_heap(policy, 1 << 20)
    heap.malloc(10)
    heap.close()
    heap.close()
    assert heap.region.closed


def test_stats_has_the_documented_keys(heap: Any) -> None:
    stats = heap.stats()
    assert STATS_KEYS <= set(stats)
    for key in STATS_KEYS:
        assert isinstance(stats[key], int) and stats[key] >= 0, key


def test_stats_follow_the_live_blocks(make_heap: Any) -> None:
    capacity = 4 << 20
    heap = make_heap(capacity)
    rng = random.Random(9)
    live = LiveBlocks(heap)
    peak = heap.stats()["peak_heap_bytes"]
    for step in range(600):
        roll = rng.random()
        if live and roll < 0.35:
            p = rng.choice(live.pointers())
            live.remove(p)
            heap.free(p)
        elif live and roll < 0.5:
            p = rng.choice(live.pointers())
            n = rng.randrange(0, 3000)
            live.remove(p)
            q = heap.realloc(p, n)
            if n == 0:
                assert q == 0
            else:
                live.add(q, n, None)
        elif roll < 0.6:
            count, size = rng.randrange(0, 20), rng.randrange(0, 100)
            live.add(heap.calloc(count, size), count * size, None)
        else:
            n = rng.choice([rng.randrange(0, 100), rng.randrange(0, 10_000)])
            live.add(heap.malloc(n), n, None)
        stats = heap.stats()
        assert stats["live_blocks"] == len(live), step
        assert stats["live_bytes"] == sum(
            b.usable if b.in_slab else b.asked for b in live.blocks.values()
        ), step
        assert stats["heap_bytes"] <= capacity
        assert stats["peak_heap_bytes"] >= stats["heap_bytes"]
        assert stats["peak_heap_bytes"] >= peak  # the peak never goes down
        peak = stats["peak_heap_bytes"]
        assert 0 <= stats["largest_free"] <= stats["free_bytes"]
        assert (stats["free_blocks"] == 0) == (stats["free_bytes"] == 0)
        # Live and free blocks (with their headers) fit in the footprint.
        used = sum(b.usable + HEADER for b in live.blocks.values())
        assert used + stats["free_bytes"] <= stats["heap_bytes"]
    live.assert_all()
    for p in live.pointers():
        heap.free(p)
    stats = heap.stats()
    assert stats["live_blocks"] == 0 and stats["live_bytes"] == 0
    assert stats["peak_heap_bytes"] >= peak
    heap.check()


def test_heap_is_exported_from_the_package() -> None:
    import pyalloc
    from pyalloc import heap as heap_module

    assert pyalloc.Heap is heap_module.Heap
    assert "Heap" in pyalloc.__all__
