"""What each free-block index promises beyond the common API.

The API, hardening, stateful and thread tests run on every policy already
(see ``conftest.py``); these tests pin what tells the policies apart: which
free block a request takes, the next-fit rover, TLSF's size mapping and
bitmaps, and that a corrupted index is reported rather than followed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from heap_model import HEADER

from pyalloc import HeapCorruptionError
from pyalloc.heap import POLICIES, SMALL_BLOCK_MAX, Heap
from pyalloc.policies import policy_by_id, policy_class
from pyalloc.policies.base import NEXT
from pyalloc.policies.fits import ROVER
from pyalloc.policies.tlsf import (
    SL_COUNT,
    SMALL_BLOCK,
    list_floor,
    list_index,
    search_index,
)

LINKED = ["first-fit", "next-fit", "best-fit"]


@pytest.fixture
def heaps() -> Iterator[list[Heap]]:
    made: list[Heap] = []
    yield made
    for heap in made:
        heap.close()


def _heap(made: list[Heap], policy: str, capacity: int = 1 << 20) -> Heap:
    # No cache: every free must reach the policy.
    heap = Heap(capacity, policy=policy, cache=False, small=False)
    made.append(heap)
    return heap


def _holes(heap: Heap, sizes: list[int]) -> list[tuple[int, int]]:
    """Blocks of ``sizes``, each followed by a live guard, freed in order.

    Returns each hole as (block offset, block size), in the order freed.
    """
    pointers = []
    for n in sizes:
        pointers.append(heap.malloc(n))
        # A guard, so the hole cannot coalesce; too large to be a small block,
        # it is cut from the low end like the holes (see heap.py).
        heap.malloc(SMALL_BLOCK_MAX)
    spans = [(p - HEADER, heap.usable_size(p) + HEADER) for p in pointers]
    for p in pointers:
        heap.free(p)
    return spans


def _free_blocks(heap: Heap) -> dict[int, int]:
    return {p - HEADER: size for p, size, allocated in heap.blocks() if not allocated}


def _block_holding(q: int, blocks: dict[int, int]) -> int:
    b = q - HEADER
    return next(start for start, size in blocks.items() if start <= b < start + size)


def _need(n: int) -> int:
    return max((n + HEADER + 15) & ~15, 32)


def test_policies_are_listed_from_no_index_to_o1_good_fit() -> None:
    assert POLICIES == ("implicit", "first-fit", "next-fit", "best-fit", "segregated", "tlsf")
    ids = [policy_class(name).policy_id for name in POLICIES]
    assert len(set(ids)) == len(ids)
    for name in POLICIES:
        assert policy_by_id(policy_class(name).policy_id).name == name


@pytest.mark.parametrize("policy", POLICIES)
def test_the_index_holds_exactly_the_free_blocks(heaps: list[Heap], policy: str) -> None:
    heap = _heap(heaps, policy)
    rng = random.Random(31)
    live: list[int] = []
    for _ in range(400):
        if live and rng.random() < 0.45:
            heap.free(live.pop(rng.randrange(len(live))))
        else:
            live.append(heap.malloc(rng.choice([rng.randrange(0, 100), rng.randrange(0, 3000)])))
    assert sorted(heap.policy.blocks()) == sorted(_free_blocks(heap))
    heap.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_which_hole_a_request_takes(heaps: list[Heap], policy: str) -> None:
    heap = _heap(heaps, policy)
    holes = _holes(heap, [1000, 300, 600, 320, 2000])
    n = 290
    need = _need(n)
    free = _free_blocks(heap)
    fitting = {b: size for b, size in free.items() if size >= need}
    q = heap.malloc(n)
    taken = _block_holding(q, free)
    assert taken in fitting
    if policy == "implicit":  # first fit in address order
        assert taken == min(fitting)
    elif policy == "first-fit":  # first fit on a LIFO list: the hole freed last that fits
        assert taken == holes[-1][0]
    elif policy == "best-fit":
        assert fitting[taken] == min(fitting.values())
    elif policy == "tlsf":  # good fit: from the first list whose every block fits
        floor = list_floor(search_index(need))
        assert fitting[taken] >= floor
        assert list_index(fitting[taken]) == min(
            list_index(size) for size in fitting.values() if size >= floor
        )
    heap.check()


@pytest.mark.parametrize("policy", ["first-fit", "next-fit"])
def test_next_fit_moves_on_where_first_fit_returns_to_the_head(
    heaps: list[Heap], policy: str
) -> None:
    heap = _heap(heaps, policy)
    _holes(heap, [200, 200, 200, 200])
    if policy == "next-fit":
        heap.words[heap.policy.base + ROVER] = 0  # start from the head, as a fresh heap does
    free = _free_blocks(heap)
    first = _block_holding(heap.malloc(40), free)
    second = _block_holding(heap.malloc(40), free)
    if policy == "first-fit":
        assert second == first  # the split-off rest went first on the list
    else:
        assert second != first
    heap.check()


def test_next_fit_rover_moves_off_a_block_that_is_merged(heaps: list[Heap]) -> None:
    heap = _heap(heaps, "next-fit")
    _holes(heap, [200, 200, 200, 200])
    rover_word = heap.policy.base + ROVER
    heap.words[rover_word] = 0
    heap.malloc(40)  # takes the head; the rover moves to the next block on the list
    rover = heap.words[rover_word]
    assert rover and rover in _free_blocks(heap)
    # Free the live block after the rover's: the rover's block merges and leaves the list.
    blocks = heap.blocks()
    at = next(i for i, (p, _, _) in enumerate(blocks) if p - HEADER == rover)
    following, _, allocated = blocks[at + 1]
    assert allocated
    heap.free(following)
    assert heap.words[rover_word] != rover
    heap.check()  # which verifies the rover is on the list
    heap.malloc(150)
    heap.check()


def test_a_corrupted_rover_is_reported(heaps: list[Heap]) -> None:
    heap = _heap(heaps, "next-fit")
    live = heap.malloc(100)
    _holes(heap, [300, 300])
    rover_word = heap.policy.base + ROVER
    saved = heap.words[rover_word]
    heap.words[rover_word] = live - HEADER  # an allocated block
    with pytest.raises(HeapCorruptionError):
        heap.check()
    with pytest.raises(HeapCorruptionError):
        heap.malloc(250)
    heap.words[rover_word] = saved
    heap.check()


@pytest.mark.parametrize("policy", LINKED + ["tlsf"])
def test_a_cycle_in_the_free_list_is_reported_not_followed(heaps: list[Heap], policy: str) -> None:
    heap = _heap(heaps, policy)
    holes = _holes(heap, [600, 600])
    # On a LIFO list the hole freed last comes first; the other one points back to it.
    last, first = holes[1][0], holes[0][0]
    policy_index: Any = heap.policy
    assert policy_index.read_link(first, NEXT) == 0
    policy_index.write_link(first, NEXT, last)
    with pytest.raises(HeapCorruptionError):
        heap.check()
    if policy != "tlsf":  # TLSF's O(1) take never walks the list it takes from
        with pytest.raises(HeapCorruptionError):
            heap.malloc(60_000)
    policy_index.write_link(first, NEXT, 0)
    heap.check()


def test_the_implicit_walk_checks_every_header_it_passes(heaps: list[Heap]) -> None:
    heap = _heap(heaps, "implicit")
    for n in (100, 200, 100):
        heap.malloc(n)
    hole = heap.malloc(20_000)  # larger than any other free block can be
    heap.malloc(16)
    heap.free(hole)
    assert heap.policy.words_needed(heap.capacity) == 0
    passed = [p for p, _, allocated in heap.blocks() if allocated and p < hole]
    assert passed
    victim = passed[len(passed) // 2]
    heap.region.buf[victim - HEADER + 2] ^= 0x10
    with pytest.raises(HeapCorruptionError):
        heap.malloc(15_000)  # the walk passes the corrupted header on its way to the hole
    heap.region.buf[victim - HEADER + 2] ^= 0x10
    free = _free_blocks(heap)
    assert _block_holding(heap.malloc(15_000), free) == _block_holding(hole, free)
    heap.check()


# --- TLSF -------------------------------------------------------------------


def _sizes() -> list[int]:
    rng = random.Random(41)
    small = list(range(32, 4 * SMALL_BLOCK, 16))
    return small + [rng.randrange(2, 1 << 26) * 16 for _ in range(3000)]


def test_tlsf_lists_partition_the_sizes_in_order() -> None:
    for size in _sizes():
        i = list_index(size)
        assert list_floor(i) <= size < list_floor(i + 1), size
    for i in range(2, 20 * SL_COUNT):
        assert list_floor(i) < list_floor(i + 1)
        if list_floor(i) >= SMALL_BLOCK:  # a slice is under 1/SL_COUNT of its floor
            assert (list_floor(i + 1) - list_floor(i)) * SL_COUNT <= list_floor(i)


def test_tlsf_search_rounds_up_to_a_list_whose_every_block_fits() -> None:
    for need in _sizes():
        i = search_index(need)
        assert list_floor(i) >= need
        assert i - list_index(need) in (0, 1)
        assert i == list_index(need) or list_floor(list_index(need)) < need


def test_tlsf_uses_a_block_of_its_own_list_before_growing(heaps: list[Heap]) -> None:
    heap = _heap(heaps, "tlsf")
    p = heap.malloc(1032)  # a 1040-byte block: on the list of [1024, 1056)
    heap.malloc(16)
    left_by_growth = [size for _, size, allocated in heap.blocks() if not allocated]
    for size in left_by_growth:  # take whatever free space growth left
        heap.malloc(size - HEADER)
    heap.free(p)
    assert list(_free_blocks(heap).values()) == [1040]
    assert search_index(1040) > list_index(1040)  # the O(1) search skips this list
    before = heap.stats()["heap_bytes"]
    assert heap.malloc(1032) == p
    assert heap.stats()["heap_bytes"] == before
    heap.check()


@pytest.mark.parametrize("where", ["empty-list-bit", "full-list-bit", "first-level-bit"])
def test_tlsf_check_verifies_the_bitmaps(heaps: list[Heap], where: str) -> None:
    heap = _heap(heaps, "tlsf")
    _holes(heap, [300, 5000])
    index: Any = heap.policy
    i = list_index(_need(300))
    fl = i // SL_COUNT
    assert heap.words[index.base + i]
    empty = next(
        j for j in range(fl * SL_COUNT, (fl + 1) * SL_COUNT) if not heap.words[index.base + j]
    )
    word = {
        "empty-list-bit": index.sl_base + fl,
        "full-list-bit": index.sl_base + fl,
        "first-level-bit": index.fl_word,
    }[where]
    mask = {
        "empty-list-bit": 1 << (empty % SL_COUNT),
        "full-list-bit": 1 << (i % SL_COUNT),
        "first-level-bit": 1 << (index.fl_count - 1),  # set or clear, it disagrees
    }[where]
    heap.words[word] ^= mask
    with pytest.raises(HeapCorruptionError):
        heap.check()
    heap.words[word] ^= mask
    heap.check()


def test_segregated_class_floors_bound_their_classes() -> None:
    from pyalloc.policies.segregated import class_floor, size_class

    for c in range(2, 150):
        lowest, limit = class_floor(c), class_floor(c + 1)
        assert lowest < limit
        assert size_class(lowest) == c
        assert size_class(limit - 16) == c
        assert size_class(limit) == c + 1
