"""Creates killed at random moments leave nothing behind.

A heap or pool file is built under a temporary name and linked to its real
name only when complete. For each kind, 100 children start a create and are
killed with SIGKILL at a random moment; then one normal create runs in the
same directory. Afterwards every name a child used is either absent or a
complete heap or pool (never a half-made one under the real name), and no
temporary is left: the normal create removed those of dead creators.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyalloc import MappedHeap, SharedHeap
from pyalloc.regions import BUILDING_SUFFIX, abandoned_builds

KILLS = 100
SHM = "/dev/shm"
JOURNAL = 1 << 19  # entries: 8 MiB of journal to reserve


def kill_creates(create: Callable[[int], Any], directory: str, seed: int) -> int:
    """Kill KILLS children at random moments of ``create``; return how many of
    the kills cut a build in the middle (left a temporary behind, which the
    next child's create then removes)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    create(KILLS)  # one in this process, to learn how long a create takes
    window = time.perf_counter() - started
    cut = 0
    for i in range(KILLS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, b"go")
            try:
                create(i)
            finally:
                os._exit(0)
        os.close(w)
        os.read(r, 2)  # the child is about to create
        os.close(r)
        time.sleep(rng.uniform(0, window * 1.5))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        cut += any(f".{pid}." in e for e in leftovers(directory, ""))
    return cut


def leftovers(directory: str, stem: str) -> list[str]:
    return sorted(e for e in os.listdir(directory) if stem in e and e.endswith(BUILDING_SUFFIX))


def remove_names(stem: str) -> None:
    for entry in os.listdir(SHM):
        if stem in entry:
            os.unlink(os.path.join(SHM, entry))


def test_killed_shared_heap_creates_leave_nothing_behind() -> None:
    stem = f"pyalloc-kill-{uuid.uuid4().hex[:8]}"
    try:
        # A large journal makes the build long enough to be cut in the middle.
        cut = kill_creates(
            lambda i: SharedHeap.create(f"{stem}-{i}", 4 << 20, journal_slots=JOURNAL), SHM, 1
        )
        assert cut > 0
        SharedHeap.create(f"{stem}-last", 1 << 20).close()
        assert leftovers(SHM, stem) == []
        for entry in sorted(os.listdir(SHM)):
            if entry.startswith(stem):
                heap = SharedHeap.attach(entry)  # complete, or attach would refuse
                heap.check()
                heap.close()
    finally:
        remove_names(stem)


def test_killed_mapped_heap_creates_leave_nothing_behind(tmp_path: Path) -> None:
    def create(i: int) -> None:
        MappedHeap.create(tmp_path / f"h{i}.heap", 4 << 20, journal_slots=JOURNAL).close()

    assert kill_creates(create, str(tmp_path), 2) > 0
    MappedHeap.create(tmp_path / "last.heap", 1 << 20).close()
    assert leftovers(str(tmp_path), "") == []
    for path in tmp_path.iterdir():
        heap = MappedHeap.open(path)
        heap.check()
        heap.close()


def test_killed_pool_creates_leave_nothing_behind() -> None:
    pytest.importorskip("atomicshm")
    from pyalloc.pool import Pool

    stem = f"pyalloc-kill-{uuid.uuid4().hex[:8]}"
    try:
        assert kill_creates(lambda i: Pool.create(f"{stem}-{i}", 64, 200_000), SHM, 3) > 0
        Pool.create(f"{stem}-last", 64, 100).close()
        assert leftovers(SHM, stem) == []
        for entry in sorted(os.listdir(SHM)):
            if entry.startswith(stem):
                pool = Pool.attach(entry)  # a half-made pool would be refused here
                pool.check()
                pool.close()
    finally:
        remove_names(stem)


def test_a_live_creators_temporary_is_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / f".x.heap.{os.getpid()}.abcd1234{BUILDING_SUFFIX}"
    mine.write_bytes(b"")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = tmp_path / f".y.heap.{pid}.abcd1234{BUILDING_SUFFIX}"
    dead.write_bytes(b"")
    assert abandoned_builds(str(tmp_path)) == [str(dead)]
