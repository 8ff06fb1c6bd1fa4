"""The pool's magazines: an exact available(), blocks taken from other processes'
magazines before MemoryError, a killed process's magazine recovered, processes
of both engine modes on one pool, and the format version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("atomicshm")

from test_engine_mode import needs_compiled, run_in_mode  # noqa: E402

from pyalloc.pool import MAGAZINE, REFILL, SLOTS, VERSION, Pool  # noqa: E402
from pyalloc.regions import SharedRegion  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def pool_name() -> Iterator[str]:
    """A fresh shared-memory name, unlinked at teardown if it was made."""
    name = f"pyalloc-test-mag-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    if SharedRegion.exists(name):
        os.unlink(f"/dev/shm/{name}")


# A child that attaches, leaves blocks in its magazine, holds two blocks, says how
# many its magazine caches and which pointers it holds, then waits to be told or killed.
HOLDER = r"""
import sys
from pyalloc.pool import Pool
pool = Pool.attach(sys.argv[1])
held = [pool.alloc(), pool.alloc()]
for _ in range(10):
    pool.free(pool.alloc())
before = pool.check().cached
print(before, *held, flush=True)
sys.stdin.readline()
for p in held:
    pool.free(p)
pool.close()
print("closed", flush=True)
"""


def start_holder(name: str) -> tuple[subprocess.Popen[str], int, list[int]]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    words = child.stdout.readline().split()
    assert words, "the holder child printed nothing"
    return child, int(words[0]), [int(w) for w in words[1:]]


def test_available_counts_the_magazine_exactly() -> None:
    with Pool(32, 40) as pool:
        held = [pool.alloc() for _ in range(5)]
        report = pool.check()
        assert report.cached > 0  # the first alloc took a batch into the magazine
        assert pool.available() == 35 == report.free
        pool.free(held.pop())
        assert pool.available() == 36 == pool.check().free
        for p in held:
            pool.free(p)
        assert pool.available() == 40
        assert pool.check() == pool.check()  # nothing moved in a quiescent pool


def test_a_batch_of_allocs_fills_then_uses_the_magazine() -> None:
    with Pool(32, 40) as pool:
        pool.alloc()
        assert pool.check().cached == REFILL - 1
        for _ in range(REFILL - 1):
            pool.alloc()
        assert pool.check().cached == 0
        pool.alloc()  # empty again: the next batch
        assert pool.check().cached == REFILL - 1


def test_a_full_magazine_gives_half_back_to_the_stack() -> None:
    with Pool(32, 40) as pool:
        held = [pool.alloc() for _ in range(MAGAZINE + 1)]
        for p in held:
            pool.free(p)
        report = pool.check()
        assert report.free == 40
        assert 0 < report.cached <= MAGAZINE


def test_double_free_of_a_block_in_the_magazine_is_detected() -> None:
    with Pool(32, 40) as pool:
        p = pool.alloc()
        pool.free(p)
        assert pool.check().cached >= 1
        with pytest.raises(Exception, match="already free"):
            pool.free(p)
        assert pool.available() == 40


def test_alloc_takes_another_process_magazine_before_memory_error(pool_name: str) -> None:
    count = 30
    pool = Pool.create(pool_name, 64, count)
    try:
        child, cached, held = start_holder(pool_name)
        with child:
            assert cached > 0
            assert pool.check().cached == cached
            assert pool.available() == count - 2
            mine = [pool.alloc() for _ in range(count - 2)]  # the child's magazine included
            assert len(set(mine) | set(held)) == count
            with pytest.raises(MemoryError):
                pool.alloc()
            assert pool.check().cached == 0
            for p in mine:
                pool.free(p)
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "closed"
        report = pool.check()
        assert (report.free, report.allocated, report.stranded) == (count, 0, 0)
        assert pool.attached() == [os.getpid()]
    finally:
        pool.close()


def test_a_killed_process_magazine_is_recovered(pool_name: str) -> None:
    count = 50
    pool = Pool.create(pool_name, 64, count)
    try:
        child, cached, held = start_holder(pool_name)
        with child:
            assert sorted(pool.attached()) == sorted([os.getpid(), child.pid])
            child.send_signal(signal.SIGKILL)
        assert cached > 0
        # Before anyone notices, the dead magazine is still counted.
        assert pool.check().cached == cached
        assert pool.available() == count - 2
        assert pool.reap() == 1
        assert pool.attached() == [os.getpid()]
        report = pool.check()
        # Its magazine is back on the stack; its two blocks stay held (nobody may free them).
        assert (report.free, report.allocated, report.stranded) == (count - 2, 2, 0)
        assert report.cached == 0
        assert pool.reap() == 0
        mine = [pool.alloc() for _ in range(count - 2)]
        assert not set(mine) & set(held)
        for p in mine:
            pool.free(p)
    finally:
        pool.close()


def test_attach_recovers_a_killed_process_magazine(pool_name: str) -> None:
    pool = Pool.create(pool_name, 64, 50)
    try:
        child, cached, _held = start_holder(pool_name)
        with child:
            child.send_signal(signal.SIGKILL)
        assert pool.check().cached == cached
        with Pool.attach(pool_name) as other:
            # Attaching reaped the dead slot: what it cached is on the stack now.
            assert other.check().cached == 0
            assert other.reap() == 0
        assert pool.available() == 48
    finally:
        pool.close()


def test_close_gives_the_magazine_back_and_frees_the_slot(pool_name: str) -> None:
    pool = Pool.create(pool_name, 64, 50)
    try:
        other = Pool.attach(pool_name)
        other.free(other.alloc())
        assert pool.check().cached > 0
        assert pool.attached() == [os.getpid(), os.getpid()]
        other.close()
        assert pool.attached() == [os.getpid()]
        assert pool.check().cached == 0
        assert pool.available() == 50
    finally:
        pool.close()


def test_with_the_attach_table_full_a_process_works_without_a_magazine(pool_name: str) -> None:
    pool = Pool.create(pool_name, 64, 20)
    others = [Pool.attach(pool_name) for _ in range(SLOTS - 1)]  # every slot taken
    try:
        late = Pool.attach(pool_name)
        try:
            p = late.alloc()
            late.free(p)
            assert late.check().cached == 0  # straight back onto the stack
            assert late.available() == 20
            assert late.alloc() == p
        finally:
            late.close()
        assert len(pool.attached()) == SLOTS
    finally:
        for other in others:
            other.close()
        pool.close()
    assert pool.closed


def test_shm_info_lists_the_processes_attached(
    pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyalloc.cli import main

    pool = Pool.create(pool_name, 64, 50)
    try:
        child, _cached, _held = start_holder(pool_name)
        with child:
            assert main(["shm", "info", pool_name, "--json"]) == 0
            info = json.loads(capsys.readouterr().out)
            # This process runs the command: it is not listed.
            assert info["processes_attached"] == [child.pid]
            assert info["available"] == 48
            child.send_signal(signal.SIGKILL)
        assert main(["shm", "info", pool_name]) == 0
        # The dead one is not listed (and looking reaped it).
        assert "processes_attached: none" in capsys.readouterr().out.splitlines()
        assert pool.check().cached == 0
    finally:
        pool.close()


def test_a_pool_of_the_previous_format_is_refused_naming_both_versions(pool_name: str) -> None:
    pool = Pool.create(pool_name, 64, 8)
    try:
        pool._region.words[1] = VERSION - 1
        with pytest.raises(
            ValueError, match=rf"format version {VERSION - 1}; this pyalloc reads version {VERSION}"
        ):
            Pool.attach(pool_name)
    finally:
        pool.close()


# --- Both engine modes on one pool, at the same time ---------------------------------

# Each child waits at a barrier (a counter in a block of the pool) for the other,
# then allocates and frees at random as test_pool's threads and processes do,
# stamping each block it gets: a block handed to two owners at once is seen.
SHARER = r"""
import sys
from atomicshm import AtomicView
import pyalloc
from pyalloc.pool import Pool
name, barrier, worker, tests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, tests)
from test_pool import stamped_rounds
pool = Pool.attach(name)
view = AtomicView(pool._region.buf)
view.fetch_add_u64(barrier, 1)
while view.load_u64(barrier) < 2:
    pass
ops, faults = stamped_rounds(pool, view.exchange_u64, worker, 30000, worker)
view.close()
pool.close()
print(faults, ops > 15000, pyalloc.COMPILED)
"""


def test_processes_of_either_mode_share_one_pool_at_once(pool_name: str) -> None:
    needs_compiled()
    count = 12  # two workers holding up to 8 each, magazines included: exhaustion happens
    pool = Pool.create(pool_name, 64, count)
    try:
        barrier = pool.alloc()
        outputs: dict[bool, list[str]] = {}
        errors: list[BaseException] = []

        def run(pure: bool, worker: int) -> None:
            try:
                outputs[pure] = run_in_mode(
                    pure, SHARER, pool_name, str(barrier), str(worker), TESTS
                )
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        children = [
            threading.Thread(target=run, args=(pure, w)) for w, pure in ((1, True), (2, False))
        ]
        for t in children:
            t.start()
        for t in children:
            t.join()
        assert not errors, errors
        assert outputs == {True: ["0", "True", "False"], False: ["0", "True", "True"]}
        pool.free(barrier)
        report = pool.check()
        assert (report.free, report.allocated, report.stranded) == (count, 0, 0)
    finally:
        pool.close()
