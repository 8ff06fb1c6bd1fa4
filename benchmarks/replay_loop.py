"""The replay loop every throughput benchmark times, identical for every allocator.

It imports nothing of pyalloc, so that a child process may time another
tree's engine with it (``interpreted_before.py``)::

    a ID SIZE  ->  pointers[ID] = malloc(SIZE)
    f ID       ->  free(pointers[ID]); pointers[ID] = 0
    r ID SIZE  ->  pointers[ID] = realloc(pointers[ID], SIZE)

Ops are tuples made beforehand and the garbage collector is off while a loop
runs, so a measurement is the loop plus the allocator's calls.
"""

from __future__ import annotations

import gc
import time
from typing import Any

OpTuple = tuple[str, int, int]
Workload = tuple[str, list[OpTuple], int]  # name, ops, number of ids


def replay(allocator: Any, ops: list[OpTuple], num_ids: int) -> tuple[int, list[int]]:
    """Run ``ops`` through ``allocator``; return (nanoseconds, pointers left)."""
    malloc, free, realloc = allocator.malloc, allocator.free, allocator.realloc
    pointers = [0] * num_ids
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for kind, block_id, size in ops:
            if kind == "a":
                pointers[block_id] = malloc(size)
            elif kind == "f":
                free(pointers[block_id])
                pointers[block_id] = 0
            else:
                pointers[block_id] = realloc(pointers[block_id], size)
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed, pointers


def time_warm(allocator: Any, workload: Workload, repeat: int) -> int:
    """Best of ``repeat`` timed replays on ``allocator``, after one untimed replay.

    Every peer is measured warm: the first replay touches the pages the
    trace needs, and what a replay leaves live is freed before the next, so
    the timed runs measure the allocator, not the kernel's page faults (a
    program's heap lives long; glibc's, in this process, is warm anyway).
    """
    return time_in_turns({"": allocator}, workload, repeat)[""]


def time_in_turns(allocators: dict[str, Any], workload: Workload, repeat: int) -> dict[str, int]:
    """``time_warm`` of every allocator, the allocators taking turns run by run.

    A passing disturbance of the machine then falls on one run of each
    rather than on every run of whichever was being timed, and the best of
    each keeps out of it.
    """
    _, ops, num_ids = workload
    best: dict[str, int] = {}
    for index in range(repeat + 1):
        for name, allocator in allocators.items():
            elapsed, left = replay(allocator, ops, num_ids)
            for pointer in left:
                allocator.free(pointer)
            if index:
                best[name] = min(best.get(name, elapsed), elapsed)
    return best
