"""A free-block index of the caller's, written in Python, plugged into the engine."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pyalloc import Heap, SharedHeap

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "worst_fit.py"
SPEC = f"{EXAMPLE}:WorstFit"


def test_the_example_policy_serves_a_heap_and_picks_the_largest_block() -> None:
    heap = Heap(1 << 20, policy=SPEC, cache=False, small=False)
    assert heap.policy_name == "worst-fit"
    small, fence1, large, fence2 = (heap.malloc(n) for n in (200, 16, 2000, 16))
    heap.free(small)
    heap.free(large)
    p = heap.malloc(100)  # worst fit: cut from the 2000-byte hole, not the 200-byte one
    assert large - 8 <= p < large + 2000
    rng = random.Random(3)
    live = [fence1, fence2, p]
    for _ in range(3000):
        if live and rng.random() < 0.45:
            heap.free(live.pop(rng.randrange(len(live))))
        else:
            live.append(heap.malloc(rng.randrange(0, 3000)))
    heap.check()
    assert heap.stats()["live_blocks"] == len(live)
    heap.close()


def test_a_policy_of_ones_own_is_refused_for_a_shared_heap() -> None:
    with pytest.raises(ValueError, match="private heaps only"):
        SharedHeap.create("pyalloc-test-plugin", 1 << 20, policy=SPEC)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_here:X", "cannot import 'no_such_module_here'"),
        (f"{EXAMPLE}:Missing", "is not a subclass"),
        ("pyalloc.heap:Heap", "is not a subclass"),
    ],
)
def test_a_bad_policy_name_is_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Heap(1 << 20, policy=spec)
