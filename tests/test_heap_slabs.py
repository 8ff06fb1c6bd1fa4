"""Slabs: small objects without headers, their checks and their metadata.

Objects of at most ``slab.SMALL_MAX`` bytes live in slabs (``slab.py``):
found by arithmetic, validated against an out-of-band descriptor, so that a
second free or a pointer inside an object is refused exactly, and an
overflow out of an object reaches no metadata.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from heap_model import read

from pyalloc import DoubleFreeError, Heap, HeapCorruptionError, InvalidPointerError
from pyalloc import control as C
from pyalloc.layout import ALLOCATED, HEADER, INTERNAL, PREV_ALLOCATED, decode, encode
from pyalloc.slab import (
    D_BITMAP,
    D_NEXT,
    D_STATE,
    GUARD,
    NCLASSES,
    SLAB_BYTES,
    SLAB_DEMAND,
    SLABS_ON,
    SLOT_SPAN,
    SLOTS_AT,
    SMALL_MAX,
    STATE_CLASS_MASK,
    STATE_USED_SHIFT,
    class_size,
    has_slab_room,
    size_class,
    slots_of,
)

POLICIES = ["segregated", "tlsf", "best-fit"]


@pytest.fixture(params=POLICIES)
def heap(request: pytest.FixtureRequest) -> Any:
    h = Heap(4 << 20, policy=request.param)
    h._slab_demand = 0  # every class has slabs from its first object
    yield h
    h.close()


def slab_of(p: int) -> int:
    return p & -SLAB_BYTES


def descriptor_words(heap: Any, p: int) -> int:
    """Word index of the descriptor of the slab holding ``p``."""
    s = slab_of(p)
    d = decode(heap.words[s >> 3], s, heap.tag_secret, heap.header_key)
    assert d > 0
    return d >> 3


def internal_blocks(heap: Any) -> list[tuple[int, int]]:
    """(payload, size) of every block the heap holds for itself."""
    out = []
    for p, size, allocated in heap.blocks():
        body = decode(heap.words[(p - HEADER) >> 3], p - HEADER, heap.tag_secret, heap.header_key)
        if allocated and body & INTERNAL:
            out.append((p, size))
    return out


# -- size classes ------------------------------------------------------------------


def test_size_classes_step_by_16_then_four_per_doubling() -> None:
    # the rule, past the limit too (a larger SMALL_MAX would use it)
    assert [class_size(c) for c in range(16)] == [
        *(16 * (i + 1) for i in range(8)),
        *(160, 192, 224, 256, 320, 384, 448, 512),
    ]
    assert class_size(NCLASSES - 1) == SMALL_MAX
    for n in range(SMALL_MAX + 1):
        c = size_class(n)
        assert class_size(c) >= n
        assert c == 0 or class_size(c - 1) < n  # the smallest class that fits
    for c in range(NCLASSES):
        assert slots_of(c) * class_size(c) <= SLOT_SPAN
        assert (slots_of(c) + 1) * class_size(c) > SLOT_SPAN


# -- layout --------------------------------------------------------------------------


def test_small_objects_have_no_header_and_sit_in_an_aligned_slab(heap: Any) -> None:
    ps = [heap.malloc(24) for _ in range(10)]
    assert all(p % 16 == 0 for p in ps)
    assert {slab_of(p) for p in ps} == {slab_of(ps[0])}
    offsets = sorted(p - slab_of(p) for p in ps)
    assert offsets == [SLOTS_AT + 32 * i for i in range(10)]  # 32-byte slots, end to end
    assert heap.usable_size(ps[0]) == 32
    s = slab_of(ps[0])
    assert [(p, size) for p, size in internal_blocks(heap) if p == s] == [(s, SLAB_BYTES)]
    heap.check()


def test_a_class_gets_its_first_slab_once_enough_of_its_blocks_are_live() -> None:
    with Heap(4 << 20) as h:
        blocks = [h.malloc(40) for _ in range(SLAB_DEMAND)]
        assert not any(h.in_slab(p) for p in blocks)
        for p in blocks[: SLAB_DEMAND // 2]:  # freed blocks no longer count
            h.free(p)
        more = [h.malloc(40) for _ in range(SLAB_DEMAND // 2)]
        assert not any(h.in_slab(p) for p in more)
        first = h.malloc(40)  # SLAB_DEMAND blocks of this size live: a slab
        assert h.in_slab(first)
        assert not h.in_slab(h.malloc(100))  # another class: its own count
        h.check()
        for p in [*blocks[SLAB_DEMAND // 2 :], *more]:
            h.free(p)
        assert h.in_slab(h.malloc(40))  # once a class has a slab, it keeps slabs
        h.check()


def test_a_class_with_more_slots_than_the_demand_waits_for_a_slabs_worth() -> None:
    c = size_class(16)
    assert slots_of(c) > SLAB_DEMAND  # the smallest class: a slab holds more
    with Heap(4 << 20) as h:
        blocks = [h.malloc(16) for _ in range(slots_of(c))]
        assert not any(h.in_slab(p) for p in blocks)  # SLAB_DEMAND passed, not a slab's worth
        assert h.in_slab(h.malloc(16))
        h.check()


def test_a_few_small_objects_never_cost_a_slab() -> None:
    with Heap(4 << 20) as h:
        for _ in range(10 * SLAB_DEMAND):
            h.free(h.malloc(16))
        p = h.malloc(16)
        assert not h.in_slab(p)
        assert internal_blocks(h) == []  # no slab, nor the slab lists' heads
        assert h.words[C.W_SLABS] == SLABS_ON
        h.check()


def test_small_false_serves_every_size_from_blocks() -> None:
    with Heap(1 << 20, small=False) as h:
        p = h.malloc(24)
        assert h.usable_size(p) == 24  # a 32-byte block: 8 of header
        assert h.words[C.W_SLABS] == 0
        assert internal_blocks(h) == []
        h.check()


def test_the_last_slot_leaves_a_guard_before_the_next_header(heap: Any) -> None:
    for c in range(NCLASSES):
        size = class_size(c)
        ps = [heap.malloc(size) for _ in range(slots_of(c))]
        s = slab_of(ps[0])
        assert {slab_of(p) for p in ps} == {s}
        last_end = max(ps) + size
        assert s - HEADER + SLAB_BYTES - last_end >= GUARD


def test_usable_bytes_are_the_slot_and_realloc_stays_in_place_within_it(heap: Any) -> None:
    p = heap.malloc(100)
    assert heap.usable_size(p) == 112
    heap.view(p)[:] = bytes(range(112))
    assert heap.realloc(p, 112) == p
    assert heap.realloc(p, 50) == p
    q = heap.realloc(p, 3000)  # out of the slabs: copied
    assert q != p
    assert bytes(heap.view(q)[:112]) == bytes(range(112))
    with pytest.raises(DoubleFreeError):
        heap.free(p)
    r = heap.realloc(q, 200)
    assert heap.usable_size(r) >= 200
    heap.free(r)
    heap.check()


def test_stats_count_objects_and_their_slot_bytes(heap: Any) -> None:
    before = heap.stats()
    ps = [heap.malloc(n) for n in (1, 16, 17, 100, SMALL_MAX)]
    big = heap.malloc(1000)
    st = heap.stats()
    assert st["live_blocks"] == before["live_blocks"] + 6
    assert st["live_bytes"] == before["live_bytes"] + 16 + 16 + 32 + 112 + SMALL_MAX + 1000
    for p in [*ps, big]:
        heap.free(p)
    assert heap.stats()["live_blocks"] == before["live_blocks"]
    assert heap.stats()["live_bytes"] == before["live_bytes"]


def test_calloc_zeroes_a_reused_slot(heap: Any) -> None:
    p = heap.malloc(48)
    heap.view(p)[:] = b"\xff" * 48
    heap.free(p)
    q = heap.calloc(3, 16)
    assert q == p  # the freed slot is the first free one
    assert bytes(heap.view(q)) == bytes(48)


# -- the cache and the slabs -----------------------------------------------------------


def test_the_cache_keeps_only_blocks_above_the_slab_limit() -> None:
    with Heap(1 << 20, cache=True) as h:
        h._slab_demand = 0  # every small request an object in a slab
        rng = random.Random(3)
        live: list[int] = []
        for _ in range(3000):
            if live and rng.random() < 0.5:
                h.free(live.pop(rng.randrange(len(live))))
            else:
                live.append(h.malloc(rng.choice([8, 64, 200, 256, 300, 600, 900])))
        assert h.stats()["cached_blocks"] > 0
        for i in range(len(h._cache_counts)):
            if h._cache_counts[i]:
                assert (i << 4) - HEADER > SMALL_MAX
        h.check()


# -- empty slabs go back -----------------------------------------------------------------


def test_empty_slabs_go_back_to_the_heap_and_coalesce(heap: Any) -> None:
    start = heap.stats()
    c = size_class(64)
    ps = [heap.malloc(64) for _ in range(slots_of(c) * 6)]
    assert len({slab_of(p) for p in ps}) == 6
    heap.check()
    for p in ps:
        heap.free(p)
    heap.check()
    slabs = [p for p, size in internal_blocks(heap) if size >= SLAB_BYTES]
    assert len(slabs) == 1  # one empty slab kept per class, the rest given back
    st = heap.stats()
    assert st["live_blocks"] == start["live_blocks"] == 0
    # What was given back coalesced: the heap is one slab, its descriptor and free space.
    assert st["free_blocks"] <= 3


def test_a_kept_empty_slab_serves_again_without_growing(heap: Any) -> None:
    c = size_class(100)
    ps = [heap.malloc(100) for _ in range(slots_of(c))]
    for p in ps:
        heap.free(p)
    footprint = heap.stats()["heap_bytes"]
    again = [heap.malloc(100) for _ in range(slots_of(c))]
    assert all(heap.in_slab(p) for p in again)
    assert sorted(again) == sorted(ps)
    assert heap.stats()["heap_bytes"] == footprint


def test_a_new_slab_fills_the_smallest_hole_with_room_for_it() -> None:
    with Heap(4 << 20, cache=False) as h:
        h._slab_demand = 0
        h.malloc(16)  # the slab lists' heads and a first slab, made before the holes
        holes = []
        for size in (40_000, 4_500, 7_000, 12_000):
            holes.append(h.malloc(size))
            h.malloc(3_000)  # a separator: the holes cannot merge
        for p in holes:
            h.free(p)
        free = sorted((size, p - HEADER) for p, size, allocated in h.blocks() if not allocated)
        fits = [(size, b) for size, b in free if size >= SLAB_BYTES]
        roomy = [(size, b) for size, b in fits if has_slab_room(b, size)]
        # The smallest hole of a slab's size lies wrong for one; a larger one
        # has room, and two larger still.
        assert fits[0] not in roomy and len(roomy) == 3
        size, b = roomy[0]
        brk = h.brk
        s = slab_of(h.malloc(100))  # a class without a slab: a new one
        assert b < s < b + size
        assert h.brk == brk  # the heap did not grow for it
        h.check()


def test_every_policy_puts_a_new_slab_in_a_hole_before_growing(heap: Any) -> None:
    heap.malloc(16)
    big = heap.malloc(3 * SLAB_BYTES)
    heap.malloc(200)  # the hole stays a hole
    heap.free(big)
    brk = heap.brk
    s = slab_of(heap.malloc(100))
    assert big <= s < big + 3 * SLAB_BYTES
    assert heap.brk == brk
    heap.check()


def test_a_slab_cut_from_the_top_leaves_the_break_aligned_for_the_next(heap: Any) -> None:
    heap.malloc(16)
    # A block whose header lies where a slab's would, then one of a slab and
    # 16 bytes at the top; freed, it is the free top block.
    filler = SLAB_BYTES - HEADER - heap.brk % SLAB_BYTES
    if filler < 256:
        filler += SLAB_BYTES
    heap.malloc(filler - HEADER)
    assert (heap.brk + HEADER) % SLAB_BYTES == 0
    top = heap.malloc(SLAB_BYTES + 16 - HEADER)
    heap.free(top)
    s = slab_of(heap.malloc(100))  # a class without a slab: the top block has room
    assert s == top
    # The 16 bytes past the slab went back: the break is the slab's end,
    # and the next slab follows it with no gap.
    assert heap.brk == s - HEADER + SLAB_BYTES
    assert slab_of(heap.malloc(48)) == s + SLAB_BYTES
    assert heap.brk == s - HEADER + 2 * SLAB_BYTES
    heap.check()


# -- double free and interior pointers: every trial --------------------------------------


def populated(heap: Any, rng: random.Random) -> list[int]:
    live = [heap.malloc(rng.randrange(0, SMALL_MAX + 1)) for _ in range(400)]
    for p in rng.sample(live, 150):
        heap.free(p)
        live.remove(p)
    return live


def test_double_free_of_a_slab_object_is_detected_every_time(heap: Any) -> None:
    rng = random.Random(5)
    live = populated(heap, rng)
    end = heap.stats()["heap_bytes"]
    for _ in range(300):
        p = heap.malloc(rng.randrange(0, SMALL_MAX + 1))
        heap.free(p)
        before = read(heap, 0, end)
        with pytest.raises(DoubleFreeError):
            heap.free(p)
        with pytest.raises(DoubleFreeError):
            heap.realloc(p, 10)
        with pytest.raises(DoubleFreeError):
            heap.usable_size(p)
        assert read(heap, 0, end) == before
    heap.check()
    for p in live:
        heap.free(p)
    heap.check()


def test_a_pointer_inside_a_slab_object_is_refused_every_time(heap: Any) -> None:
    rng = random.Random(6)
    live = populated(heap, rng)
    end = heap.stats()["heap_bytes"]
    trials = 0
    for p in live:
        size = heap.usable_size(p)
        s = slab_of(p)
        inside = [p + rng.randrange(1, size)]
        inside.append(s + rng.randrange(0, SLOTS_AT))  # the slab's index word
        inside.append(s - HEADER + SLAB_BYTES - rng.randrange(1, GUARD + 1))  # the guard
        for q in inside:
            before = read(heap, 0, end)
            with pytest.raises(InvalidPointerError):
                heap.free(q)
            with pytest.raises(InvalidPointerError):
                heap.realloc(q, 8)
            assert read(heap, 0, end) == before
            trials += 1
    assert trials == 3 * len(live)
    heap.check()


def test_a_slab_or_its_descriptor_cannot_be_freed_as_a_block(heap: Any) -> None:
    heap.malloc(40)
    for p, _ in internal_blocks(heap):
        if p % SLAB_BYTES:  # the descriptor (the slab's payload is its first slot's home)
            with pytest.raises(InvalidPointerError):
                heap.free(p)
            with pytest.raises(InvalidPointerError):
                heap.usable_size(p)
    heap.check()


# -- overflow out of a slab object ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_overflow_out_of_slab_objects_corrupts_no_metadata(heap: Any, seed: int) -> None:
    """Up to 16 bytes past an object's usable size: other objects may change
    (as in C), metadata never does: check() passes and the heap serves on."""
    rng = random.Random(seed)
    live: dict[int, int] = {}
    for trial in range(300):
        for _ in range(rng.randrange(1, 6)):
            n = rng.randrange(0, SMALL_MAX + 1)
            live[heap.malloc(n)] = n
        victim = rng.choice(sorted(live))
        end = victim + heap.usable_size(victim)
        k = rng.randrange(1, 17)
        heap.region.buf[end : end + k] = rng.randbytes(k)
        heap.check()  # never HeapCorruptionError
        for p in rng.sample(sorted(live), len(live) // 3):
            heap.free(p)
            del live[p]
        if trial % 50 == 0:
            heap.check()
    for p in live:
        heap.free(p)
    heap.check()


# -- check() catches damaged slab metadata --------------------------------------------------


def test_check_catches_a_flipped_bitmap_bit(heap: Any) -> None:
    ps = [heap.malloc(32) for _ in range(5)]
    heap.check()
    D = descriptor_words(heap, ps[0])
    heap.words[D + D_BITMAP] ^= 1 << 40  # a free slot marked allocated
    with pytest.raises(HeapCorruptionError, match="bitmap"):
        heap.check()
    heap.words[D + D_BITMAP] ^= 1 << 40
    heap.check()
    heap.words[D + D_BITMAP + 3] &= ~(1 << 63)  # a slot past the last one marked free
    with pytest.raises(HeapCorruptionError, match="bitmap"):
        heap.check()


def test_check_catches_a_wrong_count(heap: Any) -> None:
    p = heap.malloc(32)
    D = descriptor_words(heap, p)
    heap.words[D + D_STATE] += 1 << STATE_USED_SHIFT
    with pytest.raises(HeapCorruptionError):
        heap.check()


def test_a_refused_realloc_out_of_a_slab_leaves_no_block_behind(heap: Any) -> None:
    p = heap.malloc(32)
    q = heap.malloc(32)
    D = descriptor_words(heap, p)
    before = heap.stats()
    heap.words[D + D_STATE] &= STATE_CLASS_MASK  # two objects counted as none
    with pytest.raises(HeapCorruptionError, match="impossible count"):
        heap.realloc(p, 1000)  # a block for 1000 bytes is taken before p's slot is freed
    heap.words[D + D_STATE] |= 2 << STATE_USED_SHIFT
    after = heap.stats()  # ... and given back: freed, or kept in the cache
    for key in ("live_blocks", "live_bytes"):
        assert after[key] == before[key]
    heap.free(q)
    heap.check()


def test_check_catches_a_broken_slab_list(heap: Any) -> None:
    c = size_class(32)
    ps = [heap.malloc(32) for _ in range(slots_of(c) * 3)]
    heap.free(ps[0])
    heap.free(ps[-1])
    heap.check()
    D = descriptor_words(heap, ps[-1])
    saved = heap.words[D + D_NEXT]
    heap.words[D + D_NEXT] = saved ^ (1 << 20)
    with pytest.raises(HeapCorruptionError, match="slab list"):
        heap.check()


def test_a_corrupted_list_head_is_refused_not_followed(heap: Any) -> None:
    p = heap.malloc(32)
    q = heap.malloc(3000)
    heap.view(q)[:] = b"\x5a" * 3000
    c = size_class(32)
    head = (heap.words[C.W_SLABS] >> 3) + c
    heap.words[head] = q  # a live block's payload
    with pytest.raises(HeapCorruptionError):
        heap.malloc(32)
    assert bytes(heap.view(q)) == b"\x5a" * 3000
    del p


def test_a_corrupted_index_word_is_reported(heap: Any) -> None:
    p = heap.malloc(32)
    heap.words[slab_of(p) >> 3] ^= 1 << 50
    with pytest.raises(HeapCorruptionError):
        heap.free(p)
    with pytest.raises(HeapCorruptionError):
        heap.check()


def test_a_payload_that_mimics_a_slab_header_does_not_make_its_neighbour_a_slab_object() -> None:
    # The word before a block's aligned address is often another block's
    # payload; random bytes there pass for a slab's header about once in
    # 2**22. Written on purpose here: the block after it must stay a block.
    with Heap(1 << 22) as h:
        h._slab_demand = 0
        h.malloc(32)  # a slab, so that free and usable_size look for slabs
        a = h.malloc(8000)
        b = h.malloc(5000)  # after a, its aligned address inside a's payload
        s = slab_of(b)
        assert a <= s - HEADER and s <= a + h.usable_size(a) and s != b
        mimic = encode(
            SLAB_BYTES | ALLOCATED | INTERNAL | PREV_ALLOCATED,
            s - HEADER,
            h.tag_secret,
            h.header_key,
        )
        h.region.buf[s - HEADER : s] = mimic.to_bytes(8, "little")
        assert not h.in_slab(b)
        assert h.usable_size(b) >= 5000
        assert h.realloc(b, 4500) == b
        h.free(b)
        h.check()


# -- model run ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_random_mixed_workload_keeps_every_payload(heap: Any, seed: int) -> None:
    rng = random.Random(seed)
    live: dict[int, bytes] = {}
    for i in range(4000):
        roll = rng.random()
        if live and roll < 0.4:
            p = rng.choice(sorted(live))
            assert read(heap, p, len(live[p])) == live.pop(p)
            heap.free(p)
        elif live and roll < 0.5:
            p = rng.choice(sorted(live))
            data = live.pop(p)
            n = rng.choice([rng.randrange(0, 300), rng.randrange(0, 3000)])
            q = heap.realloc(p, n)
            keep = min(n, len(data))
            assert read(heap, q, keep) == data[:keep]
            live[q] = rng.randbytes(n)
            heap.region.buf[q : q + n] = live[q]
        else:
            n = rng.choice([rng.randrange(0, 64), rng.randrange(0, SMALL_MAX + 1), 2000])
            p = heap.malloc(n)
            assert heap.usable_size(p) >= n
            live[p] = rng.randbytes(n)
            heap.region.buf[p : p + n] = live[p]
        if i % 500 == 0:
            heap.check()
    spans = sorted((p, p + max(len(d), 1)) for p, d in live.items())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    for p, data in live.items():
        assert read(heap, p, len(data)) == data
    heap.check()


@pytest.mark.parametrize("size", [16, 100])
def test_a_full_heap_names_the_small_request_that_failed(size: int) -> None:
    heap = Heap(capacity=1 << 16, cache=False)
    live = []
    with pytest.raises(MemoryError, match=rf"^cannot allocate {size} bytes: a new slab"):
        while True:
            live.append(heap.malloc(size))
    assert len(live) > 100  # slabs served most of them
    heap.check()
    for p in live:
        heap.free(p)
    assert heap.stats()["live_blocks"] == 0
    heap.close()
