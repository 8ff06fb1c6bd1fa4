"""A heap after close(), and calloc's zero-fill failing: refused cleanly, nothing leaked."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pyalloc.allocator
from pyalloc import BuddyHeap, Heap, HeapError, MappedHeap, SharedHeap

CAPACITY = 1 << 20


def shared() -> Any:
    name = f"pyalloc-test-{uuid.uuid4().hex[:12]}"
    heap = SharedHeap.create(name, CAPACITY)
    heap.unlink()
    return heap


MAKERS: dict[str, Callable[[Path], Any]] = {
    "Heap": lambda tmp: Heap(CAPACITY),
    "Heap-unlocked": lambda tmp: Heap(CAPACITY, lock=False),
    "BuddyHeap": lambda tmp: BuddyHeap(CAPACITY),
    "SharedHeap": lambda tmp: shared(),
    "MappedHeap": lambda tmp: MappedHeap.create(tmp / "h.heap", CAPACITY),
}

CALLS: dict[str, Callable[[Any, int], object]] = {
    "malloc": lambda h, p: h.malloc(10),
    "free": lambda h, p: h.free(p),
    "realloc": lambda h, p: h.realloc(p, 100),
    "calloc": lambda h, p: h.calloc(2, 8),
    "usable_size": lambda h, p: h.usable_size(p),
    "view": lambda h, p: h.view(p),
    "check": lambda h, p: h.check(),
    "stats": lambda h, p: h.stats(),
}


@pytest.mark.parametrize("kind", MAKERS)
def test_every_call_after_close_says_the_heap_is_closed(kind: str, tmp_path: Path) -> None:
    heap = MAKERS[kind](tmp_path)
    p = heap.malloc(64)
    heap.close()
    heap.close()  # a second close does nothing
    for call in CALLS.values():
        with pytest.raises(HeapError, match="the heap is closed"):
            call(heap, p)


@pytest.mark.parametrize("kind", ["Heap", "BuddyHeap", "SharedHeap"])
def test_calloc_frees_its_block_when_zeroing_fails(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap = MAKERS[kind](tmp_path)
    before = heap.stats()["live_blocks"]

    def fail(view: Any, p: int, n: int) -> None:
        raise MemoryError("no memory for the zeros")

    monkeypatch.setattr(pyalloc.allocator, "zero_fill", fail)
    with pytest.raises(MemoryError, match="zeros"):
        heap.calloc(100, 10)
    assert heap.stats()["live_blocks"] == before
    heap.check()
    heap.close()


def test_calloc_zeroes_a_reused_block_in_place() -> None:
    heap = Heap(CAPACITY, cache=False)
    p = heap.malloc(3 << 20 >> 4)
    heap.view(p)[:] = b"\xff" * heap.usable_size(p)
    heap.free(p)
    q = heap.calloc(1, 3 << 20 >> 4)
    assert q == p and not any(heap.view(q))
    heap.close()


ARRAY_AFTER_CLOSE = r"""
import os, sys, uuid
from pyalloc import MappedHeap, SharedHeap
if sys.argv[1] == "shared":
    h = SharedHeap.create("pyalloc-test-" + uuid.uuid4().hex[:12], 1 << 20)
else:
    h = MappedHeap.create(os.path.join(sys.argv[2], "a.heap"), 1 << 20)
a = h.ndarray((4, 5), "float64")
a[:] = 2.0
b = h.ndarray_at(h.offset_of(a), (4, 5), "float64")
h.unlink()
h.close()
del b
print(a.sum())
"""


@pytest.mark.parametrize("kind", ["shared", "mapped"])
def test_an_array_keeps_the_mapping_after_close(kind: str, tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", ARRAY_AFTER_CLOSE, kind, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-1000:])
    assert result.stdout.split() == ["40.0"]
