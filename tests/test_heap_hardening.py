"""Pointers the heap never returned, double frees and corrupted metadata.

Every refused call must leave the heap exactly as it was: the region's bytes,
the stats and every live payload unchanged, and ``check()`` passing. Corrupted
headers must be reported as ``HeapCorruptionError``, never trusted.

The overflow simulation at the end writes a few bytes past the end of a live
block, into the metadata of its neighbour, then keeps using the heap, and
counts how often the damage is detected; whatever happens, the heap must never
hand out two blocks that overlap. An object in a slab has no metadata after
it: an overflow out of one must reach none (no error, ``check()`` passing),
in every trial.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from heap_model import (
    ALIGNMENT,
    HEADER,
    SLABS,
    LiveBlocks,
    build_heap,
    has_free_list_links,
    overlaps,
    read,
    write_random,
)

from pyalloc import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError


@dataclass
class Populated:
    """A heap with stamped live blocks and a few free blocks between them."""

    heap: Any
    live: LiveBlocks
    freed: list[int]

    def snapshot(self) -> tuple[bytes, dict[str, int]]:
        end = self.heap.stats()["heap_bytes"]
        return read(self.heap, 0, end), self.heap.stats()

    def assert_unchanged(self, before: tuple[bytes, dict[str, int]]) -> None:
        after = self.snapshot()
        assert after[1] == before[1], "a refused call changed the stats"
        assert after[0] == before[0], "a refused call changed the region's bytes"
        self.live.assert_all()


@pytest.fixture
def populated(make_heap: Any) -> Populated:
    # Without the cache every freed block below is on a free list, links and all.
    heap = make_heap(1 << 20, cache=False)
    rng = random.Random(11)
    live = LiveBlocks(heap)
    sizes = [100, 24, 300, 40, 1000, 64, 200, 0, 500, 48, 2000, 80]
    for n in sizes:
        live.add(heap.malloc(n), n, rng)
    # Free every third block: each freed block has live neighbours on both sides.
    freed = live.pointers()[2:-1:3]
    for p in freed:
        live.remove(p)
        heap.free(p)
    live.assert_all()
    return Populated(heap, live, freed)


def _bad_pointers(state: Populated) -> dict[str, int]:
    heap, live = state.heap, state.live
    first, big = live.pointers()[0], max(live.blocks, key=lambda p: live.blocks[p].usable)
    assert live.blocks[big].usable > 512 + 16
    footprint = heap.stats()["heap_bytes"]
    freed_big = max(state.freed, key=lambda p: p)
    return {
        "negative": -16,
        "minus-one": -1,
        "control-area": 16,
        "past-the-region": heap.region.size + 16,
        "far-past-the-region": 1 << 40,
        "beyond-64-bits": 1 << 100,
        "past-the-footprint": (footprint + 64) & ~(ALIGNMENT - 1),
        "misaligned-by-1": first + 1,
        "misaligned-by-8": first + 8,
        "header-offset": first - HEADER,
        "interior+16": big + 16,
        "interior+32": big + 32,
        "interior+512": big + 512,
        "interior-last": big + ((live.blocks[big].usable - 1) & ~(ALIGNMENT - 1)),
        "into-free-block+16": freed_big + 16,
        "into-free-block+32": freed_big + 32,
    }


BAD_POINTER_KINDS = [
    "negative",
    "minus-one",
    "control-area",
    "past-the-region",
    "far-past-the-region",
    "beyond-64-bits",
    "past-the-footprint",
    "misaligned-by-1",
    "misaligned-by-8",
    "header-offset",
    "interior+16",
    "interior+32",
    "interior+512",
    "interior-last",
    "into-free-block+16",
    "into-free-block+32",
]


@pytest.mark.parametrize("kind", BAD_POINTER_KINDS)
def test_free_of_a_pointer_never_returned_is_refused(populated: Populated, kind: str) -> None:
    bad = _bad_pointers(populated)[kind]
    before = populated.snapshot()
    with pytest.raises(InvalidPointerError):
        populated.heap.free(bad)
    populated.assert_unchanged(before)


@pytest.mark.parametrize("kind", BAD_POINTER_KINDS)
def test_realloc_of_a_pointer_never_returned_is_refused(populated: Populated, kind: str) -> None:
    bad = _bad_pointers(populated)[kind]
    before = populated.snapshot()
    for size in (0, 10, 5000):
        with pytest.raises(InvalidPointerError):
            populated.heap.realloc(bad, size)
    populated.assert_unchanged(before)


@pytest.mark.parametrize("kind", BAD_POINTER_KINDS)
def test_usable_size_and_view_refuse_a_pointer_never_returned(
    populated: Populated, kind: str
) -> None:
    bad = _bad_pointers(populated)[kind]
    before = populated.snapshot()
    with pytest.raises(InvalidPointerError):
        populated.heap.usable_size(bad)
    with pytest.raises(InvalidPointerError):
        populated.heap.view(bad)
    populated.assert_unchanged(before)


@pytest.mark.parametrize("fill", ["zeros", "random", "ones"])
def test_interior_pointer_is_refused_whatever_the_payload_holds(make_heap: Any, fill: str) -> None:
    heap = make_heap(1 << 20)
    rng = random.Random(12)
    p = heap.malloc(4000)
    guard = heap.malloc(64)
    data = {"zeros": bytes(4000), "random": rng.randbytes(4000), "ones": b"\xff" * 4000}[fill]
    heap.region.buf[p : p + 4000] = data
    for offset in range(16, 4000 - 16, 16 * 7):
        with pytest.raises(InvalidPointerError):
            heap.free(p + offset)
    assert read(heap, p, 4000) == data
    heap.check()
    heap.free(p)
    heap.free(guard)
    heap.check()


def test_forged_header_copied_into_a_payload_is_refused(populated: Populated) -> None:
    heap, live = populated.heap, populated.live
    victim, source = live.pointers()[0], live.pointers()[1]
    assert live.blocks[victim].usable >= 64
    # Plant a copy of a real header word inside the victim's payload, and a
    # copy of the victim's own header, then try to free the fake pointers.
    for planted_from in (source, victim):
        word = read(heap, planted_from - HEADER, HEADER)
        heap.region.buf[victim + 24 : victim + 32] = word
        live.blocks[victim].data = read(heap, victim, live.blocks[victim].usable)
        before = populated.snapshot()
        with pytest.raises(InvalidPointerError):
            heap.free(victim + 32)
        populated.assert_unchanged(before)


@pytest.mark.parametrize("bad", [1.5, "64", b"64", None, [64], 64.0])
def test_non_int_pointer_raises_type_error(populated: Populated, bad: object) -> None:
    before = populated.snapshot()
    with pytest.raises(TypeError):
        populated.heap.free(bad)
    with pytest.raises(TypeError):
        populated.heap.realloc(bad, 10)
    populated.assert_unchanged(before)


@pytest.mark.parametrize("bad", [True, False])
def test_bool_pointer_is_refused(populated: Populated, bad: bool) -> None:
    before = populated.snapshot()
    with pytest.raises((TypeError, InvalidPointerError)):
        populated.heap.free(bad)
    populated.assert_unchanged(before)


def test_double_free_raises_double_free_error(populated: Populated) -> None:
    before = populated.snapshot()
    for p in populated.freed:
        with pytest.raises(DoubleFreeError):
            populated.heap.free(p)
    populated.assert_unchanged(before)


def test_double_free_of_the_newest_block(populated: Populated) -> None:
    heap = populated.heap
    p = heap.malloc(128)
    guard = heap.malloc(16)
    populated.live.add(guard, 16, random.Random(14))
    heap.free(p)
    before = populated.snapshot()
    with pytest.raises(DoubleFreeError):
        heap.free(p)
    populated.assert_unchanged(before)


@pytest.mark.parametrize("seed", range(2))
def test_a_pointer_left_behind_by_free_or_realloc_is_refused(make_heap: Any, seed: int) -> None:
    """Random mallocs, frees and reallocs; now and then a free of a pointer
    that a free or a moving realloc left behind, and that no malloc has
    returned since: refused every time, as a double free or an invalid
    pointer (its bytes may be another block's data by then), the heap
    unchanged."""
    heap = make_heap(1 << 23)
    rng = random.Random(seed)
    live = LiveBlocks(heap)
    left: set[int] = set()
    refused = 0
    for _ in range(1500):
        r = rng.random()
        size = rng.choice((rng.randint(1, 128), rng.randint(1, 2000), rng.randint(1, 20000)))
        if r < 0.45 or not live:
            p = heap.malloc(size)
            left.discard(p)
            live.add(p, size, rng)
        elif r < 0.75:
            p = rng.choice(live.pointers())
            live.remove(p)
            heap.free(p)
            left.add(p)
        elif r < 0.9:
            p = rng.choice(live.pointers())
            q = heap.realloc(p, size)
            live.remove(p)
            if q != p:
                left.add(p)
            left.discard(q)
            live.add(q, size, rng)
        elif left:
            p = rng.choice(sorted(left))
            end = heap.stats()["heap_bytes"]
            before = read(heap, 0, end), heap.stats()
            with pytest.raises((DoubleFreeError, InvalidPointerError)):
                heap.free(p)
            assert (read(heap, 0, end), heap.stats()) == before
            refused += 1
    assert refused >= 100
    live.assert_all()


def test_free_after_coalescing_is_refused(make_heap: Any) -> None:
    heap = make_heap(1 << 20)
    a, b, c, guard = heap.malloc(100), heap.malloc(100), heap.malloc(100), heap.malloc(100)
    heap.free(a)
    heap.free(c)
    heap.free(b)  # merges a, b and c into one free block
    heap.check()
    for p in (a, b, c):
        with pytest.raises(InvalidPointerError):
            heap.free(p)
        with pytest.raises(InvalidPointerError):
            heap.realloc(p, 50)
    heap.check()
    heap.free(guard)


def test_realloc_of_a_freed_block_is_refused(populated: Populated) -> None:
    before = populated.snapshot()
    for p in populated.freed:
        with pytest.raises(InvalidPointerError):
            populated.heap.realloc(p, 10)
    populated.assert_unchanged(before)


def test_refused_calls_leave_the_heap_usable(populated: Populated) -> None:
    heap, live = populated.heap, populated.live
    rng = random.Random(13)
    for bad in _bad_pointers(populated).values():
        with contextlib.suppress(HeapError):
            heap.free(bad)
    for p in populated.freed:
        with contextlib.suppress(HeapError):
            heap.free(p)
    for n in (10, 100, 1000, 10_000):
        live.add(heap.malloc(n), n, rng)
    live.assert_all()
    for p in live.pointers():
        live.remove(p)
        heap.free(p)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


def test_memory_error_changes_nothing(populated: Populated) -> None:
    heap, live = populated.heap, populated.live
    rng = random.Random(15)
    # Fill the heap up to a little below its capacity, so that requests of
    # moderate size fail after the heap has tried to grow.
    while True:
        try:
            live.add(heap.malloc(16 << 10), 16 << 10, rng)
        except MemoryError:
            break
    victim = live.pointers()[len(live) // 2]
    before = populated.snapshot()
    for call in (
        lambda: heap.malloc(64 << 10),
        lambda: heap.calloc(64, 1 << 10),
        lambda: heap.realloc(victim, 64 << 10),
        lambda: heap.malloc(heap.region.size),
        lambda: heap.realloc(victim, 1 << 50),
    ):
        with pytest.raises(MemoryError):
            call()
        populated.assert_unchanged(before)


def test_failed_realloc_with_free_neighbours_merges_nothing(make_heap: Any) -> None:
    heap = make_heap(1 << 20)
    rng = random.Random(16)
    live = LiveBlocks(heap)
    a, p, c = heap.malloc(1000), heap.malloc(1000), heap.malloc(1000)
    live.add(p, 1000, rng)
    live.add(heap.malloc(100), 100, rng)
    heap.free(a)
    heap.free(c)
    while True:  # leave less than 64 KiB anywhere
        try:
            live.add(heap.malloc(32 << 10), 32 << 10, None)
        except MemoryError:
            break
    state = Populated(heap, live, [a, c])
    before = state.snapshot()
    with pytest.raises(MemoryError):
        heap.realloc(p, 64 << 10)
    state.assert_unchanged(before)
    heap.free(p)
    live.remove(p)
    live.assert_all()


# --- corrupted metadata ---------------------------------------------------


def _flip(heap: Any, offset: int, mask: int = 0x5A) -> None:
    heap.region.buf[offset] ^= mask


@pytest.mark.block_headers
@pytest.mark.parametrize("byte", range(HEADER))
def test_corrupted_header_fails_check(populated: Populated, byte: int) -> None:
    heap = populated.heap
    p = populated.live.pointers()[3]
    _flip(heap, p - HEADER + byte)
    with pytest.raises(HeapCorruptionError):
        heap.check()
    _flip(heap, p - HEADER + byte)
    heap.check()


@pytest.mark.block_headers
@pytest.mark.parametrize("byte", range(HEADER))
def test_corrupted_header_fails_free(populated: Populated, byte: int) -> None:
    heap = populated.heap
    p = populated.live.pointers()[3]
    _flip(heap, p - HEADER + byte)
    with pytest.raises(HeapCorruptionError):
        heap.free(p)
    _flip(heap, p - HEADER + byte)
    populated.live.assert_all()


@pytest.mark.block_headers
@pytest.mark.parametrize("byte", range(HEADER))
def test_corrupted_header_fails_realloc(populated: Populated, byte: int) -> None:
    heap = populated.heap
    p = populated.live.pointers()[3]
    _flip(heap, p - HEADER + byte)
    with pytest.raises(HeapCorruptionError):
        heap.realloc(p, 5000)
    _flip(heap, p - HEADER + byte)
    populated.live.assert_all()


@pytest.mark.block_headers
@pytest.mark.parametrize("bit", [0, 1, 4, 5, 20, 37, 40, 44, 63])
def test_single_bit_flip_in_a_header_is_detected(populated: Populated, bit: int) -> None:
    heap = populated.heap
    p = populated.live.pointers()[4]
    offset = p - HEADER + bit // 8
    _flip(heap, offset, 1 << (bit % 8))
    with pytest.raises(HeapCorruptionError):
        heap.check()
    _flip(heap, offset, 1 << (bit % 8))
    heap.check()


def free_block_words(policy: str) -> list[str]:
    """The words of a free block an allocator has: the implicit list keeps no
    links, the buddy system no footer."""
    words = ["header"]
    if has_free_list_links(policy):
        words += ["next-link", "prev-link"]
    if policy != "buddy":
        words.append("footer")
    return words


@pytest.mark.block_headers
def test_corrupted_free_block_fails_check(populated: Populated, policy: str) -> None:
    heap = populated.heap
    f = max(populated.freed, key=lambda q: _free_block_size(populated, q))
    # A free block: header at f-8, links at f and f+8, footer in its last word.
    block_end = f - HEADER + _free_block_size(populated, f)
    offset = {"header": f - HEADER, "next-link": f, "prev-link": f + 8, "footer": block_end - 8}
    for word in free_block_words(policy):
        _flip(heap, offset[word] + 1)
        with pytest.raises(HeapCorruptionError):
            heap.check()
        _flip(heap, offset[word] + 1)
        heap.check()


@pytest.mark.engine_format  # a buddy system merges with its buddy, not with any neighbour
@pytest.mark.parametrize("call", ["free", "moving realloc"])
@pytest.mark.parametrize("side", ["before", "after"])
def test_coalescing_with_a_corrupted_free_block_is_refused(
    populated: Populated, policy: str, side: str, call: str
) -> None:
    # Freeing a live neighbour of f merges it with f, reading f's metadata; a
    # realloc that moves it must know that before it takes a new block, or a
    # block would be left that the program never got.
    heap, live = populated.heap, populated.live
    offset, neighbour = _beside_the_largest_free_block(populated, side)
    for word in free_block_words(policy):
        _flip(heap, offset[word] + 2)
        before = bytes(heap.region.buf)
        with pytest.raises(HeapCorruptionError):
            if call == "free":
                heap.free(neighbour)
            else:
                heap.realloc(neighbour, 64 << 10)
        assert bytes(heap.region.buf) == before, f"a refused {call} changed the heap"
        _flip(heap, offset[word] + 2)
        live.assert_all()
    heap.check()


def _beside_the_largest_free_block(populated: Populated, side: str) -> tuple[dict[str, int], int]:
    """The offsets of the largest free block's metadata words, and its live
    neighbour on ``side``."""
    f = max(populated.freed, key=lambda q: _free_block_size(populated, q))
    block_end = f - HEADER + _free_block_size(populated, f)
    offset = {"header": f - HEADER, "next-link": f, "prev-link": f + 8, "footer": block_end - 8}
    live = populated.live
    neighbour = max(p for p in live.blocks if p < f) if side == "before" else block_end + HEADER
    assert neighbour in live
    return offset, neighbour


@pytest.mark.block_headers
@pytest.mark.parametrize("fill", ["zeros", "random", "fake-footer"])
def test_prev_free_bit_set_on_a_live_predecessor_is_refused(make_heap: Any, fill: str) -> None:
    # The cache would keep the freed block aside without merging: test the merge.
    heap = make_heap(1 << 20, cache=False)
    rng = random.Random(17)
    live = LiveBlocks(heap)
    free_before = heap.malloc(200)
    victim = heap.malloc(100)
    live.add(victim, 100, rng)
    following = heap.malloc(100)
    live.add(following, 100, rng)
    live.add(heap.malloc(100), 100, rng)
    heap.free(free_before)
    usable = live.blocks[victim].usable
    if fill == "zeros":
        heap.region.buf[victim : victim + usable] = bytes(usable)
    elif fill == "fake-footer":
        # The victim's last word poses as a footer: a copy of a real free header.
        heap.region.buf[victim + usable - 8 : victim + usable] = read(
            heap, free_before - HEADER, HEADER
        )
    live.blocks[victim].data = read(heap, victim, usable)
    # Clear only the prev-allocated bit of the next header: it now claims
    # that the live victim is free, inviting a backward merge over it.
    _flip(heap, following - HEADER, 0x02)
    with pytest.raises(HeapCorruptionError):
        heap.free(following)
    with pytest.raises(HeapCorruptionError):
        heap.check()
    _flip(heap, following - HEADER, 0x02)
    live.assert_all()


def _free_block_size(state: Populated, f: int) -> int:
    """Size of the free block at payload ``f``: up to the next live block's header."""
    following = [p for p in state.live.blocks if p > f]
    return min(following) - HEADER - (f - HEADER)


@pytest.mark.block_headers
def test_two_heaps_have_different_secrets(make_heap: Any) -> None:
    first, second = make_heap(1 << 20), make_heap(1 << 20)
    sizes = [10, 100, 1000, 24]
    a = [first.malloc(n) for n in sizes]
    b = [second.malloc(n) for n in sizes]
    assert a == b, "the same calls should give the same layout"
    words_a = [read(first, p - HEADER, HEADER) for p in a]
    words_b = [read(second, p - HEADER, HEADER) for p in b]
    assert all(x != y for x, y in zip(words_a, words_b, strict=True))
    # A header copied from one heap into the other is refused.
    second.region.buf[b[1] - HEADER : b[1]] = words_a[1]
    with pytest.raises(HeapCorruptionError):
        second.check()
    second.region.buf[b[1] - HEADER : b[1]] = words_b[1]
    second.check()


# --- overflow simulation ----------------------------------------------------

OVERFLOW_TRIALS = 2000
OVERFLOW_SEED = 20_240_601


@dataclass
class OverflowTally:
    detected_in_ops: int = 0
    detected_by_final_check: int = 0
    silent: int = 0
    silent_payload_damage: int = 0
    unchanged: int = 0  # the junk equalled the bytes it overwrote: nothing to detect
    memory_errors: int = 0
    by_error: dict[str, int] = field(default_factory=dict)
    slab_contained: int = 0  # a slab object overflowed; no metadata reached
    slab_reached: int = 0  # a slab object overflowed and some metadata was hit

    @property
    def trials(self) -> int:
        return (
            self.detected_in_ops
            + self.detected_by_final_check
            + self.silent
            + self.unchanged
            + self.slab_contained
            + self.slab_reached
        )

    @property
    def detection_rate(self) -> float:
        """Detected among the trials whose overflow changed at least one byte."""
        detected = self.detected_in_ops + self.detected_by_final_check
        return detected / (detected + self.silent) if detected + self.silent else 1.0


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Turn a hang (a corrupted size walked forever) into a failure."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"overflow simulation still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _random_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.4:
        return rng.randrange(0, 64)
    if roll < 0.6:
        return 24 + 16 * rng.randrange(0, 20)  # usable size exactly as asked
    return rng.randrange(0, 700)


def _assert_disjoint(live: LiveBlocks) -> None:
    bad = overlaps(live.spans())
    assert not bad, f"the heap handed out overlapping blocks: {bad[:3]}"


def _overflow_trial(heap: Any, rng: random.Random, tally: OverflowTally) -> None:
    live = LiveBlocks(heap)
    for _ in range(rng.randrange(3, 7)):
        n = _random_size(rng)
        live.add(heap.malloc(n), n, rng)
    victim = rng.choice(live.pointers())
    slab_victim = live.blocks[victim].in_slab
    for p in live.pointers():
        if p != victim and rng.random() < 0.4:
            live.remove(p)
            heap.free(p)

    # The overflow: 1..16 bytes just past the victim's usable size, which is
    # the header of whatever follows it (and, past 8 bytes, its first word).
    start = victim + live.blocks[victim].usable
    junk = rng.randbytes(rng.randrange(1, 17))
    unchanged = bytes(heap.region.buf[start : start + len(junk)]) == junk
    heap.region.buf[start : start + len(junk)] = junk
    for p, b in live.blocks.items():  # keep the model of live payloads exact
        lo, hi = max(start, p), min(start + len(junk), p + len(b.data))
        if lo < hi:
            patched = bytearray(b.data)
            patched[lo - p : hi - p] = junk[lo - start : hi - start]
            b.data = bytes(patched)

    def neighbour() -> int | None:
        after = [p for p in live.blocks if p > victim]
        return min(after) if after else None

    damaged = False
    try:
        for step in range(rng.randrange(1, 9)):
            op = rng.choice(["free-neighbour", "free-victim", "free", "malloc", "realloc", "check"])
            if step == 0 and rng.random() < 0.5:
                op = "free-neighbour"
            try:
                if op == "check":
                    heap.check()
                elif op == "malloc" or not live:
                    n = _random_size(rng) * rng.choice([1, 1, 4])
                    q = heap.malloc(n)
                    live.add(q, n, None)
                    _assert_disjoint(live)
                    live.blocks[q].data = write_random(heap, q, live.blocks[q].usable, rng)
                elif op == "realloc":
                    p = (
                        victim
                        if victim in live and rng.random() < 0.5
                        else rng.choice(live.pointers())
                    )
                    old = live.remove(p)
                    n = _random_size(rng) * rng.choice([1, 4])
                    q = heap.realloc(p, n)
                    if q:
                        kept = min(old.asked, n, len(old.data))
                        live.add(q, n, None)
                        _assert_disjoint(live)
                        damaged |= read(heap, q, kept) != old.data[:kept]
                        live.blocks[q].data = write_random(heap, q, live.blocks[q].usable, rng)
                    if p == victim:
                        victim = q or victim
                else:
                    target = {
                        "free-neighbour": neighbour(),
                        "free-victim": victim if victim in live else None,
                    }.get(op) or rng.choice(live.pointers())
                    old = live.remove(target)
                    damaged |= read(heap, target, len(old.data)) != old.data
                    heap.free(target)
            except MemoryError:
                tally.memory_errors += 1
        _assert_disjoint(live)
        for p, b in live.blocks.items():
            damaged |= read(heap, p, len(b.data)) != b.data
    except HeapError as error:
        name = type(error).__name__
        tally.by_error[name] = tally.by_error.get(name, 0) + 1
        if slab_victim:
            tally.slab_reached += 1
        else:
            tally.detected_in_ops += 1
        return
    try:
        heap.check()
    except HeapError:
        if slab_victim:
            tally.slab_reached += 1
        else:
            tally.detected_by_final_check += 1
    else:
        if slab_victim:
            tally.slab_contained += 1
            return
        if unchanged:
            tally.unchanged += 1
        else:
            tally.silent += 1
        tally.silent_payload_damage += damaged


def test_overflow_into_neighbour_metadata_never_yields_overlapping_blocks(
    make_heap: Any, policy: str, record_property: Any
) -> None:
    rng = random.Random(OVERFLOW_SEED)
    tally = OverflowTally()
    with _time_limit(300):
        for _ in range(OVERFLOW_TRIALS):
            heap = build_heap(policy, 1 << 20)
            if policy == SLABS:
                heap._slab_demand = 0  # small objects in slabs from the first
            try:
                _overflow_trial(heap, random.Random(rng.getrandbits(64)), tally)
            finally:
                heap.close()
    summary = (
        f"overflow simulation [{policy}]: {tally.trials} trials, "
        f"detected {tally.detected_in_ops} during operations + "
        f"{tally.detected_by_final_check} by the final check "
        f"= {tally.detection_rate:.2%} of those that changed a byte; "
        f"silently accepted {tally.silent} (payload damage seen in "
        f"{tally.silent_payload_damage}); junk equal to the bytes it overwrote {tally.unchanged}; "
        f"MemoryError {tally.memory_errors}; errors {dict(sorted(tally.by_error.items()))}; "
        f"slab objects overflowed {tally.slab_contained + tally.slab_reached}, "
        f"metadata reached {tally.slab_reached}"
    )
    print(summary)
    record_property("overflow_detection_rate", round(tally.detection_rate, 4))
    record_property("overflow_summary", summary)
    assert tally.trials == OVERFLOW_TRIALS
    assert tally.detection_rate >= 0.9, summary
    assert tally.slab_reached == 0, summary
    if policy == SLABS:
        assert tally.slab_contained > OVERFLOW_TRIALS // 4, summary
