"""Crash consistency of slab operations in a SharedHeap, one store at a time.

The machinery of ``test_shared_crash.py`` (a process "dies" before the k-th
store of an operation, for every k; the next one to lock must find a heap
that walks, every held block's bytes intact and, short of a mid-way commit,
the heap's bytes as they were) applied to what slabs add: a malloc that
makes the heads block, a slab and its descriptor; a malloc from a slab; a
free that puts a full slab back on its list; a free that gives an empty
slab back to the heap; a realloc that moves an object out of its slot (one that stays in its
slot writes nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from test_shared_crash import (
    Operation,
    Scene,
    Setup,
    assert_survivors,
    count_stores,
    die_before_store,
    fresh,
    prepare,
    raise_before_store,
)

from pyalloc import control as C
from pyalloc.shared import SharedHeap
from pyalloc.slab import SLABS_ON, size_class, slots_of

__all__ = ["fresh"]  # the fixture, used by name


def setup_block_only(s: Scene) -> None:
    s.alloc("A", 3000)


def setup_one_object(s: Scene) -> None:
    s.alloc("A", 3000)
    s.alloc("x", 40)


def setup_full_slab(s: Scene) -> None:
    for i in range(slots_of(size_class(128))):
        s.alloc(f"o{i}", 128)
    s.alloc("A", 3000)


def setup_two_slabs_one_emptying(s: Scene) -> None:
    """Two slabs of one class; the second holds one object only."""
    n = slots_of(size_class(96))
    for i in range(n + 1):
        s.alloc(f"o{i}", 96)
    s.free("o0")  # the first slab has room again: both are listed


SCENARIOS: dict[str, tuple[Setup, Operation, bool]] = {
    # name: (setup, operation under the lock, whether it commits mid-way)
    "first-slab": (setup_block_only, lambda h, s: h._malloc(24), False),
    "slab-take": (setup_one_object, lambda h, s: h._malloc(40), False),
    "slab-new-class": (setup_one_object, lambda h, s: h._malloc(100), False),
    "free-from-full": (setup_full_slab, lambda h, s: h._free(s.ptr["o3"]), False),
    "free-last-object": (setup_one_object, lambda h, s: h._free(s.ptr["x"]), False),
    "give-back": (
        setup_two_slabs_one_emptying,
        lambda h, s: h._free(s.ptr[f"o{slots_of(size_class(96))}"]),
        False,
    ),
    "realloc-out-of-slot": (setup_one_object, lambda h, s: h._realloc(s.ptr["x"], 2000), True),
}


def test_the_scenarios_do_what_they_say(fresh: Callable[[], str]) -> None:
    name = fresh()
    heap = SharedHeap.attach(name)
    try:
        assert heap.words[C.W_SLABS] == SLABS_ON  # a shared heap has slabs, none made yet
        scene = Scene(heap)
        setup_one_object(scene)
        assert heap.in_slab(scene.ptr["x"]) and not heap.in_slab(scene.ptr["A"])
        setup_two_slabs_one_emptying(scene)
        slabs_before = {p & -4096 for label, p in scene.ptr.items() if label.startswith("o")}
        assert len(slabs_before) == 2
        last = scene.ptr[f"o{slots_of(size_class(96))}"]
        footprint_free = heap.stats()["free_bytes"]
        heap.free(last)
        assert heap.stats()["free_bytes"] > footprint_free  # the emptied slab went back
        heap.check()
    finally:
        heap.close()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_killed_between_any_two_stores_of_a_slab_operation(
    scenario: str, fresh: Callable[[], str]
) -> None:
    setup, op, mid_commit = SCENARIOS[scenario]
    total = count_stores(fresh(), setup, op)
    assert total >= 4
    for k in range(total):
        name = fresh()
        scene, before, names_before = prepare(name, setup)
        live_before = scene.heap.stats()["live_blocks"]
        journaled = die_before_store(name, scene, op, k)
        assert_survivors(scene, before, names_before, mid_commit)
        stats = scene.heap.stats()
        assert stats["recoveries"] == (1 if journaled else 0)
        # A kill after the realloc's commit leaks the new object, never more.
        leak = stats["live_blocks"] - live_before
        assert leak in ((0, 1) if mid_commit else (0,))
        scene.heap.close()
        os.unlink(f"/dev/shm/{name}")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_exception_between_stores_of_a_slab_operation_is_undone(
    scenario: str, fresh: Callable[[], str]
) -> None:
    setup, op, mid_commit = SCENARIOS[scenario]
    total = count_stores(fresh(), setup, op)
    for k in range(0, total, 2):
        name = fresh()
        scene, before, names_before = prepare(name, setup)
        worker = raise_before_store(name, scene, op, k)
        assert_survivors(scene, before, names_before, mid_commit)
        worker.check()
        worker.close()
        scene.heap.close()
        os.unlink(f"/dev/shm/{name}")
