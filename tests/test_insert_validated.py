"""An insert after validate_insert trusts the list head that check made (insert_validated):
a free into a list whose head was corrupted is still refused before any write."""

from __future__ import annotations

import pytest

from pyalloc import Heap
from pyalloc.control import CONTROL_WORDS
from pyalloc.errors import HeapCorruptionError
from pyalloc.heap import POLICIES
from pyalloc.layout import HEADER

LISTED = [name for name in POLICIES if name != "implicit"]  # implicit keeps no lists


def head_word(heap: Heap, block: int) -> int:
    """The control word that holds ``block`` (a list's first block)."""
    words = heap.words
    end = CONTROL_WORDS + type(heap.policy).words_needed(heap.capacity)
    found = [i for i in range(CONTROL_WORDS, end) if words[i] == block]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("policy", LISTED)
def test_a_corrupted_head_refuses_the_free_and_changes_nothing(policy: str) -> None:
    heap = Heap(1 << 20, policy=policy, cache=False, small=False)
    a = heap.malloc(1000)
    live = heap.malloc(1000)
    b = heap.malloc(1000)
    heap.malloc(1000)  # b's successor stays allocated: b is free on its own
    heap.free(b)
    heap.bytes[live : live + 1000] = b"\x5a" * 1000
    # b heads the list a's block will join; point that head at the live block.
    heap.words[head_word(heap, b - HEADER)] = live - HEADER
    before = bytes(heap.bytes)
    with pytest.raises(HeapCorruptionError):
        heap.free(a)  # its neighbours are allocated: one insert into that list
    assert bytes(heap.bytes) == before
    heap.close()


@pytest.mark.parametrize("policy", LISTED)
def test_inserts_after_validation_keep_the_index_whole(policy: str) -> None:
    heap = Heap(1 << 20, policy=policy, cache=False, small=False)
    blocks = [heap.malloc(48 + 40 * (i % 7)) for i in range(200)]
    for p in blocks[::2]:  # holes between live blocks: inserts without coalescing
        heap.free(p)
    for p in blocks[1::2]:  # each free merges with both neighbours
        heap.free(p)
    heap.check()
    assert heap.stats()["live_blocks"] == 0
    heap.close()
