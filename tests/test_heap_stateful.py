"""Random sequences of malloc, calloc, realloc and free against a model.

The model is the set of live pointers, each with the size asked and the random
bytes written into its whole usable size. Payloads are verified before every
free and realloc and after every step, together with the layout invariants
(alignment, blocks inside the footprint, no overlap), ``check()`` and the
stats. One state machine runs per policy.
"""

from __future__ import annotations

import random
import re

from heap_model import ALIGNMENT, LiveBlocks, build_heap, heap_policies, read
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyalloc.heap import TRIM_THRESHOLD

CAPACITY = 4 << 20

# Mostly small requests, as programs make them, with some large ones.
sizes = st.one_of(
    st.integers(0, 64),
    st.integers(0, 64),
    st.integers(0, 512),
    st.integers(0, 5000),
)
seeds = st.integers(0, 2**32 - 1)
picks = st.integers(0, 1 << 16)


class HeapMachine(RuleBasedStateMachine):
    policy = "segregated"

    def __init__(self) -> None:
        super().__init__()
        self.heap = build_heap(self.policy, CAPACITY)
        self.live = LiveBlocks(self.heap)

    def teardown(self) -> None:
        self.heap.close()

    def _pick(self, index: int) -> int:
        pointers = self.live.pointers()
        return pointers[index % len(pointers)]

    def _verify(self, p: int) -> None:
        block = self.live.blocks[p]
        assert read(self.heap, p, len(block.data)) == block.data, f"payload of {p} changed"

    def _adopt(self, p: int, asked: int, seed: int) -> None:
        assert p > 0 and p % ALIGNMENT == 0
        self.live.add(p, asked, random.Random(seed))

    @rule(size=sizes, seed=seeds)
    def malloc(self, size: int, seed: int) -> None:
        self._adopt(self.heap.malloc(size), size, seed)

    # Large blocks move the top of the heap, which trims when they are freed;
    # only while a quarter of it is live, so that the other rules never find
    # the heap full.
    @precondition(lambda self: self.heap.stats()["live_bytes"] < CAPACITY // 4)
    @rule(size=st.integers(TRIM_THRESHOLD // 4, 2 * TRIM_THRESHOLD), seed=seeds)
    def malloc_large(self, size: int, seed: int) -> None:
        try:
            p = self.heap.malloc(size)
        except MemoryError:
            return  # the invariants check that nothing changed
        self._adopt(p, size, seed)

    @rule(count=st.integers(0, 40), size=st.integers(0, 128), seed=seeds)
    def calloc(self, count: int, size: int, seed: int) -> None:
        p = self.heap.calloc(count, size)
        assert read(self.heap, p, count * size) == bytes(count * size)
        self._adopt(p, count * size, seed)

    @precondition(lambda self: len(self.live) > 0)
    @rule(pick=picks)
    def free(self, pick: int) -> None:
        p = self._pick(pick)
        self._verify(p)
        self.live.remove(p)
        self.heap.free(p)

    @precondition(lambda self: len(self.live) > 0)
    @rule(pick=picks, size=sizes, seed=seeds)
    def realloc(self, pick: int, size: int, seed: int) -> None:
        p = self._pick(pick)
        self._verify(p)
        old = self.live.remove(p)
        q = self.heap.realloc(p, size)
        if size == 0:
            assert q == 0
            return
        kept = min(old.asked, size)
        assert read(self.heap, q, kept) == old.data[:kept], "realloc lost the payload"
        self._adopt(q, size, seed)

    @rule(size=st.integers(CAPACITY, CAPACITY * 4))
    def malloc_too_big(self, size: int) -> None:
        before = self.heap.stats()
        try:
            self.heap.malloc(size)
        except MemoryError:
            pass
        else:
            raise AssertionError(f"malloc({size}) succeeded in a heap of {CAPACITY} bytes")
        after = self.heap.stats()
        assert after["live_blocks"] == before["live_blocks"]

    @precondition(lambda self: len(self.live) > 0)
    @rule(pick=picks, size=st.integers(CAPACITY, CAPACITY * 4))
    def realloc_too_big(self, pick: int, size: int) -> None:
        p = self._pick(pick)
        usable = self.heap.usable_size(p)
        try:
            self.heap.realloc(p, size)
        except MemoryError:
            pass
        else:
            raise AssertionError(f"realloc to {size} succeeded in a heap of {CAPACITY} bytes")
        assert self.heap.usable_size(p) == usable
        self._verify(p)

    @invariant()
    def layout_and_contents(self) -> None:
        self.live.assert_layout(self.heap.stats()["heap_bytes"])
        self.live.assert_contents()

    @invariant()
    def heap_checks(self) -> None:
        self.heap.check()

    @invariant()
    def stats_match_the_model(self) -> None:
        self.live.assert_stats()
        assert self.heap.stats()["heap_bytes"] <= CAPACITY


STATEFUL_SETTINGS = settings(max_examples=80, stateful_step_count=50, deadline=None)

for _policy in heap_policies():
    _suffix = re.sub(r"\W", "_", _policy)
    _machine = type(f"HeapMachine_{_suffix}", (HeapMachine,), {"policy": _policy})
    _case = _machine.TestCase
    _case.settings = STATEFUL_SETTINGS
    globals()[f"TestHeapStateful_{_suffix}"] = _case
del _policy, _suffix, _machine, _case
