"""Corruption fuzzing: random bytes written into a heap's metadata, then use.

Each trial builds a heap with live and free blocks, overwrites a few bytes of
one metadata word chosen at random (a block header, a free block's footer or
links, a list head or bitmap word of the policy or a slab list's head or
count, a word of the control record), then makes random malloc, free,
realloc and check calls. Whatever was hit, the heap must:

- raise nothing but HeapError subclasses (a refused call; the program goes on);
- never hand out a block that overlaps a live one, or lies outside the heap;
- never change the bytes of a live block it did not hand out or move.

The process not crashing is part of the test: the compiled engine reads the
region without bounds checks, so every index it uses must be range-checked.
Trials are seeded: a failure names its seed and replays alone.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from heap_model import SLABS, build_heap, heap_policies

from pyalloc import HeapError
from pyalloc import control as C

TRIALS = 1500
CAPACITY = 1 << 18
OPS = 12


def stamp(heap: Any, p: int, n: int, rng: random.Random) -> bytes:
    data = rng.randbytes(n)
    heap.region.buf[p : p + n] = data
    return data


class Model:
    """The blocks the program holds: pointer -> bytes written."""

    def __init__(self, heap: Any, seed: int) -> None:
        self.heap = heap
        self.rng = random.Random(seed)
        self.live: dict[int, bytes] = {}

    def add(self, p: int, n: int) -> None:
        assert p % 16 == 0 and 0 < p and p + n <= self.heap.capacity, (p, n)
        for q, data in self.live.items():
            assert p + max(n, 1) <= q or q + max(len(data), 1) <= p, f"{p}+{n} overlaps {q}"
        self.live[p] = stamp(self.heap, p, n, self.rng)

    def verify(self) -> None:
        buf = self.heap.region.buf
        for p, data in self.live.items():
            assert bytes(buf[p : p + len(data)]) == data, f"block {p} changed"


def metadata_words(heap: Any, model: Model, rng: random.Random) -> int:
    """The byte offset of a metadata word chosen at random."""
    blocks = heap.blocks()
    kind = rng.randrange(4)
    if kind == 0:  # a block header
        p, _, _ = rng.choice(blocks)
        return p - 8
    if kind == 1:  # a free block's links or footer
        free = [(p, size) for p, size, allocated in blocks if not allocated]
        if free:
            p, size = rng.choice(free)
            return rng.choice([p, p + 8, p - 8 + size - 8])
    if kind == 2:  # the policy's words: list heads, bitmaps
        start = C.CONTROL_WORDS * 8
        return start + 8 * rng.randrange(max(1, (heap.heap_start - start) // 8))
    return 8 * rng.randrange(C.CONTROL_WORDS)  # the control record


def trial(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    heap = build_heap(policy, CAPACITY, cache=False)
    if policy == SLABS and seed % 2:
        heap._slab_demand = 0  # small objects in slabs from the first (else blocks)
    model = Model(heap, seed)
    try:
        for _ in range(24):
            n = rng.choice([rng.randrange(0, 128), rng.randrange(128, 3000)])
            model.add(heap.malloc(n), n)
        for p in rng.sample(sorted(model.live), 10):
            del model.live[p]
            heap.free(p)
        offset = metadata_words(heap, model, rng)
        width = rng.randrange(1, 9)
        heap.region.buf[offset : offset + width] = rng.randbytes(width)
        for _ in range(OPS):
            roll = rng.random()
            try:
                if roll < 0.3 and model.live:
                    p = rng.choice(sorted(model.live))
                    heap.free(p)
                    del model.live[p]
                elif roll < 0.45 and model.live:
                    p = rng.choice(sorted(model.live))
                    n = rng.randrange(1, 4000)
                    q = heap.realloc(p, n)
                    kept = model.live.pop(p)
                    keep = min(len(kept), n)
                    assert bytes(heap.region.buf[q : q + keep]) == kept[:keep], "realloc lost bytes"
                    model.add(q, n)
                elif roll < 0.55:
                    heap.check()
                else:
                    n = rng.choice([rng.randrange(0, 128), rng.randrange(128, 3000)])
                    model.add(heap.malloc(n), n)
            except HeapError:
                pass
            model.verify()
    finally:
        try:
            heap.close()
        except BufferError:
            pass


@pytest.mark.parametrize("policy", heap_policies())
def test_corrupted_metadata_is_refused_never_followed(policy: str) -> None:
    for seed in range(TRIALS):
        try:
            trial(policy, seed)
        except AssertionError as e:
            raise AssertionError(f"{policy}, seed {seed}: {e}") from None
        except Exception as e:
            raise AssertionError(f"{policy}, seed {seed}: {type(e).__name__}: {e}") from e
