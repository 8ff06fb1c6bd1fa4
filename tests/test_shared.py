"""SharedHeap: the Heap API over shared memory, between processes.

Each test makes its own segments under unique names and unlinks them at
teardown. Processes are forked unless a test is about spawn.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyalloc import (
    DoubleFreeError,
    HeapCorruptionError,
    HeapError,
    InvalidPointerError,
    SharedHeap,
)
from pyalloc import control as C
from pyalloc.shared import (
    SHARED_VERSION,
    W_SHARED_MAGIC,
    W_SHARED_VERSION,
    describe_segment,
    list_heaps,
)

try:
    import numpy as np
except ImportError:  # the array tests need it; the rest do not
    np = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")

CAPACITY = 8 << 20
SHM = "/dev/shm"


def unique_name() -> str:
    return f"pyalloc-test-{uuid.uuid4().hex}"


@pytest.fixture
def names() -> Iterator[Callable[[], str]]:
    """Unique segment names; whatever exists under them is unlinked at teardown."""
    made: list[str] = []

    def make() -> str:
        made.append(unique_name())
        return made[-1]

    yield make
    for name in made:
        try:
            os.unlink(os.path.join(SHM, name))
        except FileNotFoundError:
            pass


@pytest.fixture
def heap(names: Callable[[], str]) -> Iterator[SharedHeap]:
    h = SharedHeap.create(names(), CAPACITY)
    yield h
    h.close()


def pattern(key: int, n: int) -> bytes:
    unit = key.to_bytes(8, "little")
    return (unit * (n // 8 + 1))[:n]


def file_digest(name: str) -> str:
    with open(os.path.join(SHM, name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -- the Heap API ---------------------------------------------------------------------


def test_two_attachments_see_the_same_blocks(heap: SharedHeap) -> None:
    other = SharedHeap.attach(heap.name)
    try:
        sizes = [0, 1, 24, 100, 1000, 5000, 70_000, 300_000]
        ptrs = [heap.malloc(n) for n in sizes]
        for i, p in enumerate(ptrs):
            heap.view(p)[:8] = pattern(i + 1, 8)
        for i, p in enumerate(ptrs):
            assert bytes(other.view(p)[:8]) == pattern(i + 1, 8)
            assert other.usable_size(p) == heap.usable_size(p) >= sizes[i]
        for p in ptrs:  # freed by the other attachment
            other.free(p)
        heap.check()
        assert heap.stats()["live_blocks"] == 0
        assert other.stats()["live_blocks"] == 0
    finally:
        other.close()


def test_heap_api_edge_cases(heap: SharedHeap) -> None:
    p = heap.malloc(0)
    q = heap.malloc(0)
    assert p != q and p % 16 == 0
    heap.free(0)
    r = heap.realloc(0, 50)
    assert heap.usable_size(r) >= 50
    assert heap.realloc(r, 0) == 0
    with pytest.raises(DoubleFreeError):
        heap.free(r)
    with pytest.raises(InvalidPointerError):
        heap.free(p + 8)
    with pytest.raises(TypeError):
        heap.malloc(True)
    with pytest.raises(ValueError):
        heap.malloc(-1)
    with pytest.raises(MemoryError):
        heap.malloc(CAPACITY)
    with pytest.raises(MemoryError):
        heap.calloc(CAPACITY, 2)
    heap.free(p)
    heap.free(q)
    heap.check()


def test_calloc_zeroes_reused_memory(heap: SharedHeap) -> None:
    p = heap.malloc(4000)
    heap.view(p)[:] = b"\xff" * heap.usable_size(p)
    heap.free(p)
    z = heap.calloc(100, 40)
    assert bytes(heap.view(z)) == bytes(heap.usable_size(z))
    heap.free(z)


def test_realloc_keeps_contents_whichever_way_it_goes(heap: SharedHeap) -> None:
    rng = random.Random(5)
    blocks: dict[int, bytes] = {}
    for i in range(300):
        if blocks and rng.random() < 0.5:
            p = rng.choice(list(blocks))
            data = blocks.pop(p)
            n = rng.choice([8, 100, 3000, 20_000])
            q = heap.realloc(p, n)
            keep = min(n, len(data))
            assert bytes(heap.view(q)[:keep]) == data[:keep]
            blocks[q] = pattern(i, n)
            heap.view(q)[:n] = blocks[q]
        else:
            n = rng.randrange(1, 5000)
            p = heap.malloc(n)
            blocks[p] = pattern(i, n)
            heap.view(p)[:n] = blocks[p]
    heap.check()
    for p, data in blocks.items():
        assert bytes(heap.view(p)[: len(data)]) == data
        heap.free(p)
    heap.check()


def test_stats_report_the_shared_parts(heap: SharedHeap) -> None:
    p = heap.malloc(100)
    heap.names["x"] = p
    stats = heap.stats()
    assert stats["live_blocks"] == 2  # p and the directory's block
    assert stats["names"] == 1 and stats["recoveries"] == 0
    assert stats["journal_slots"] >= 64
    info = describe_segment(heap.name)
    assert info is not None
    assert info["capacity"] == CAPACITY and info["policy"] == "segregated"
    assert info["journal_entries"] == 0 and info["has_names"]
    assert heap.name in [h["name"] for h in list_heaps()]


def test_threads_share_one_attachment(heap: SharedHeap) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            rng = random.Random(seed)
            mine: dict[int, bytes] = {}
            for i in range(400):
                if mine and rng.random() < 0.45:
                    p, data = mine.popitem()
                    assert bytes(heap.view(p)[: len(data)]) == data
                    heap.free(p)
                else:
                    n = rng.randrange(1, 3000)
                    p = heap.malloc(n)
                    mine[p] = pattern(seed << 16 | i, n)
                    heap.view(p)[:n] = mine[p]
            for p in mine:
                heap.free(p)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    heap.check()
    assert heap.stats()["live_blocks"] == 0


# -- making, attaching and refusing -------------------------------------------------


def test_create_refuses_an_existing_name(heap: SharedHeap) -> None:
    with pytest.raises(FileExistsError):
        SharedHeap.create(heap.name, CAPACITY)
    heap.check()


def test_attach_to_a_missing_name() -> None:
    with pytest.raises(FileNotFoundError):
        SharedHeap.attach(unique_name())


def test_bad_names_and_arguments(names: Callable[[], str]) -> None:
    with pytest.raises(ValueError):
        SharedHeap.create("no/slash", CAPACITY)
    with pytest.raises(ValueError):
        SharedHeap.create(names(), 100)  # too small for a heap
    for slots in (63, 1 << 48, 1 << 63):
        with pytest.raises(ValueError, match="journal_slots must be between"):
            SharedHeap.create(names(), CAPACITY, journal_slots=slots)
    with pytest.raises(ValueError):
        SharedHeap.create(names(), CAPACITY, policy="no-such-policy")
    with pytest.raises(TypeError):
        SharedHeap(CAPACITY)


@pytest.mark.parametrize("size", [0, 13, 100, 4096, 1 << 20])
def test_attach_refuses_a_segment_that_is_not_a_heap(names: Callable[[], str], size: int) -> None:
    name = names()
    with open(os.path.join(SHM, name), "wb") as f:
        f.write(random.Random(size).randbytes(size))
    before = file_digest(name)
    with pytest.raises(HeapError, match="not a pyalloc heap|too small|empty"):
        SharedHeap.attach(name)
    assert file_digest(name) == before
    assert describe_segment(name) is None


@pytest.mark.parametrize(
    "word, value, message",
    [
        (C.W_MAGIC, C.MAGIC ^ 1, "bad magic"),
        (C.W_FORMAT, C.FORMAT_VERSION + 1, "format version"),
        (W_SHARED_MAGIC, 0, "not made by SharedHeap"),
        (W_SHARED_VERSION, SHARED_VERSION + 1, "layout version"),
        (C.W_CAPACITY, 1 << 40, "does not fit"),
    ],
)
def test_attach_refuses_a_corrupted_or_newer_heap(
    names: Callable[[], str], word: int, value: int, message: str
) -> None:
    name = names()
    SharedHeap.create(name, 1 << 20).close()
    with open(os.path.join(SHM, name), "r+b") as f:
        f.seek(word * 8)
        f.write(value.to_bytes(8, "little"))
    before = file_digest(name)
    with pytest.raises(HeapError, match=message):
        SharedHeap.attach(name)
    assert file_digest(name) == before
    assert describe_segment(name) is None


@pytest.mark.parametrize("brk", [(1 << 20) + 4096, 1 << 63])  # the second beyond a C integer
def test_attach_refuses_a_break_outside_the_heap(names: Callable[[], str], brk: int) -> None:
    name = names()
    SharedHeap.create(name, 1 << 20).close()
    with open(os.path.join(SHM, name), "r+b") as f:
        f.seek(C.W_BRK * 8)
        f.write(brk.to_bytes(8, "little"))
    before = file_digest(name)
    with pytest.raises(HeapError, match="inconsistent with its region"):
        SharedHeap.attach(name)
    assert file_digest(name) == before


def test_a_private_heap_cannot_be_attached(names: Callable[[], str]) -> None:
    # The engine's heap written into a segment, without the shared words.
    from pyalloc.heap import Heap
    from pyalloc.policies import policy_class
    from pyalloc.regions import SharedRegion

    name = names()
    region = SharedRegion.create(name, 1 << 20)
    Heap._format(region, 1 << 20, policy_class("segregated"))
    region.close()
    before = file_digest(name)
    with pytest.raises(HeapError, match="not made by SharedHeap"):
        SharedHeap.attach(name)
    assert file_digest(name) == before


def test_unlink_removes_the_name_not_the_memory(heap: SharedHeap) -> None:
    other = SharedHeap.attach(heap.name)
    p = heap.malloc(100)
    heap.view(p)[:5] = b"still"
    heap.unlink()
    with pytest.raises(FileNotFoundError):
        SharedHeap.attach(heap.name)
    assert bytes(other.view(p)[:5]) == b"still"
    other.free(p)
    other.check()
    other.close()
    with pytest.raises(FileNotFoundError):
        heap.unlink()


def test_close_detaches_and_the_context_manager_closes(names: Callable[[], str]) -> None:
    name = names()
    with SharedHeap.create(name, CAPACITY) as h:
        p = h.malloc(10)
    with pytest.raises(HeapError, match="the heap is closed"):
        h.malloc(10)
    h.close()  # twice is fine
    assert "closed" in repr(h)
    with SharedHeap.attach(name) as again:
        assert again.usable_size(p) >= 10


@needs_numpy
def test_arrays_outlive_close(names: Callable[[], str]) -> None:
    h = SharedHeap.create(names(), CAPACITY)
    a = h.ndarray(1000, "int64")
    a[:] = np.arange(1000)
    view = h.view(h.offset_of(a))
    h.close()  # does not raise: the mapping stays while the array and view live
    assert int(a.sum()) == 999 * 1000 // 2
    assert len(view) >= 8000
    view.release()
    del a


# -- names ----------------------------------------------------------------------------


def test_names_are_shared_between_attachments(heap: SharedHeap) -> None:
    other = SharedHeap.attach(heap.name)
    try:
        p = heap.malloc(64)
        q = heap.malloc(64)
        heap.names["results"] = p
        heap.names["résumé ✓"] = q
        assert other.names["results"] == p
        assert dict(other.names) == {"results": p, "résumé ✓": q}
        assert len(other.names) == 2 and "results" in other.names
        other.names["results"] = q
        assert heap.names["results"] == q
        del heap.names["results"]
        with pytest.raises(KeyError):
            other.names["results"]
        assert other.names.pop("résumé ✓") == q
        assert other.names.pop("résumé ✓", 7) == 7
        with pytest.raises(KeyError):
            other.names.pop("résumé ✓")
        assert len(heap.names) == 0
        heap.free(p)
        heap.free(q)
        heap.check()
        assert heap.stats()["live_blocks"] == 0  # the directory's block is gone too
    finally:
        other.close()


def test_names_refuse_bad_keys_and_pointers(heap: SharedHeap) -> None:
    p = heap.malloc(10)
    with pytest.raises(TypeError):
        heap.names[3] = p  # type: ignore[index]
    with pytest.raises(ValueError):
        heap.names[""] = p
    with pytest.raises(ValueError):
        heap.names["x" * 256] = p
    with pytest.raises(TypeError):
        heap.names["x"] = "p"  # type: ignore[assignment]
    with pytest.raises(InvalidPointerError):
        heap.names["x"] = p + 16
    for far in (-1, 1 << 63, 1 << 70):  # past any offset: refused alike in both modes
        with pytest.raises(InvalidPointerError):
            heap.names["x"] = far
    heap.free(p)
    with pytest.raises(DoubleFreeError):
        heap.names["x"] = p
    assert len(heap.names) == 0
    heap.check()


def test_names_take_a_slab_object_whatever_the_bytes_before_it(heap: SharedHeap) -> None:
    # A slab object has no header: the word before it is the previous object's
    # data (or a stale header of what the slab's pages held before). Naming
    # must look the pointer up in its slab, never read that word as a header.
    from pyalloc.layout import ALLOCATED, encode

    a = heap.malloc(16)
    b = heap.malloc(16)
    assert heap.in_slab(a) and heap.in_slab(b) and b == a + 16
    forged = encode(ALLOCATED | (1 << 36), b - 8, heap.tag_secret, heap.header_key)
    heap.buf[b - 8 : b] = forged.to_bytes(8, "little")  # a's own bytes
    heap.names["b"] = b
    assert heap.names["b"] == b
    del heap.names["b"]
    heap.free(a)
    heap.free(b)
    heap.check()


def test_names_persist_across_attachments(names: Callable[[], str]) -> None:
    name = names()
    with SharedHeap.create(name, CAPACITY) as h:
        for i in range(50):
            h.names[f"block-{i}"] = h.malloc(i + 1)
    with SharedHeap.attach(name) as h:
        table = h.names.copy()
        assert sorted(table) == sorted(f"block-{i}" for i in range(50))
        for key, p in table.items():
            assert h.usable_size(p) >= int(key.split("-")[1]) + 1
        h.check()


# -- numpy ----------------------------------------------------------------------------


@needs_numpy
def test_ndarray_is_zero_copy_between_attachments(heap: SharedHeap) -> None:
    other = SharedHeap.attach(heap.name)
    a = heap.ndarray((1000, 3), "float64")
    a[:] = 1.5
    off = heap.offset_of(a)
    b = other.ndarray_at(off, (1000, 3), "float64")
    assert b.shape == (1000, 3) and float(b.sum()) == 4500.0
    b[0, 0] = -1.0
    assert a[0, 0] == -1.0
    assert other.offset_of(b) == off
    assert heap.offset_of(a[:10]) == off  # a prefix starts at the block too
    with pytest.raises(InvalidPointerError):
        heap.offset_of(a[1:])  # inside the block, not at its start
    with pytest.raises(ValueError):
        heap.offset_of(b)  # another mapping's memory
    with pytest.raises(ValueError):
        heap.offset_of(np.zeros(3))
    with pytest.raises(TypeError):
        heap.offset_of([1, 2, 3])
    with pytest.raises(ValueError):
        other.ndarray_at(off, (2000, 3), "float64")  # larger than the block
    del a, b
    other.free(off)
    heap.check()
    other.close()


@needs_numpy
def test_ndarray_options(heap: SharedHeap) -> None:
    junk = heap.malloc(8000)
    heap.view(junk)[:] = b"\x01" * heap.usable_size(junk)
    heap.free(junk)
    z = heap.ndarray((10, 10), np.int32, zero=True)
    assert z.dtype == np.int32 and not z.any()
    e = heap.ndarray(0, "uint8")
    assert e.size == 0
    with pytest.raises(TypeError):
        heap.ndarray(3, object)
    with pytest.raises(ValueError):
        heap.ndarray((-1, 2))
    with pytest.raises(TypeError):
        heap.ndarray((2.5,))  # type: ignore[arg-type]
    ptrs = [heap.offset_of(z), heap.offset_of(e)]
    del z, e
    for p in ptrs:
        heap.free(p)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


@needs_numpy
def test_ndarray_with_a_subarray_dtype_has_numpy_shape(heap: SharedHeap) -> None:
    # A (3,)-float64 element is an inner dimension of float64, as np.zeros makes it.
    kind = np.dtype(("f8", (3,)))
    a = heap.ndarray((4,), kind, zero=True)
    assert a.shape == np.zeros(4, kind).shape == (4, 3) and a.dtype == np.float64
    a[:] = np.arange(12.0).reshape(4, 3)
    p = heap.offset_of(a)
    b = heap.ndarray_at(p, 4, kind)
    assert b.shape == (4, 3) and (b == a).all()
    del a, b
    heap.free(p)
    heap.check()


def test_ndarray_without_numpy_names_the_extra(
    heap: SharedHeap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImportError, match=r"pyalloc\[numpy\]"):
        heap.ndarray(3)


# -- processes ------------------------------------------------------------------------

FORK = multiprocessing.get_context("fork")


def _ring_worker(
    heap: SharedHeap, wid: int, nworkers: int, ops: int, inbox: Any, outbox: Any
) -> None:
    """Allocate, stamp, verify, realloc and free; hand blocks to the next worker."""
    rng = random.Random(wid)
    mine: dict[int, tuple[int, int]] = {}  # pointer -> (key, size)
    predecessor_done = False  # its sentinel (None) came: nothing more will

    def verify(p: int, key: int, n: int) -> None:
        if bytes(heap.view(p)[:n]) != pattern(key, n):
            raise AssertionError(f"worker {wid}: block {p} lost its bytes")

    def take(item: tuple[int, int, int]) -> None:
        p, key, n = item
        verify(p, key, n)
        heap.free(p)  # freed by a process other than its allocator

    for i in range(ops):
        key = wid << 32 | i
        r = rng.random()
        if not mine or (r < 0.45 and len(mine) < 64):
            n = rng.choice([rng.randrange(1, 200), rng.randrange(200, 5000), 40_000])
            p = heap.malloc(n)
            heap.view(p)[:n] = pattern(key, n)
            mine[p] = (key, n)
        elif r < 0.65:
            p = rng.choice(list(mine))
            old_key, old_n = mine.pop(p)
            verify(p, old_key, old_n)
            n = rng.randrange(1, 8000)
            q = heap.realloc(p, n)
            keep = min(n, old_n)
            assert bytes(heap.view(q)[:keep]) == pattern(old_key, keep)
            heap.view(q)[:n] = pattern(key, n)
            mine[q] = (key, n)
        elif r < 0.85:
            p = rng.choice(list(mine))
            key, n = mine.pop(p)
            verify(p, key, n)
            heap.free(p)
        else:
            p = rng.choice(list(mine))
            key, n = mine.pop(p)
            outbox.put((p, key, n))
        while not predecessor_done and not inbox.empty():
            item = inbox.get()
            if item is None:
                predecessor_done = True
            else:
                take(item)
    outbox.put(None)
    for p, (key, n) in mine.items():
        verify(p, key, n)
        heap.free(p)
    while not predecessor_done:
        item = inbox.get()
        if item is None:
            predecessor_done = True
        else:
            take(item)


def test_processes_pass_blocks_through_queues(heap: SharedHeap) -> None:
    nworkers = 3
    queues = [FORK.Queue() for _ in range(nworkers)]
    workers = [
        FORK.Process(
            target=_ring_worker,
            args=(heap, w, nworkers, 3000, queues[w], queues[(w + 1) % nworkers]),
            daemon=True,
        )
        for w in range(nworkers)
    ]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in workers] == [0] * nworkers
    heap.check()
    stats = heap.stats()
    assert stats["live_blocks"] == 0 and stats["recoveries"] == 0


def _spawned_task(heap: SharedHeap, p: int, n: int) -> tuple[str, int]:
    # Runs in a process that imported pyalloc afresh; ``heap`` came by name.
    data = bytes(heap.view(p)[:n])
    heap.free(p)
    q = heap.malloc(n)
    heap.view(q)[:n] = data[::-1]
    heap.close()
    return hashlib.sha256(data).hexdigest(), q


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_receives_the_heap_by_name(heap: SharedHeap, method: str) -> None:
    assert pickle.loads(pickle.dumps(heap)).name == heap.name
    jobs = []
    for i in range(6):
        n = 1000 + i
        p = heap.malloc(n)
        heap.view(p)[:n] = pattern(i, n)
        jobs.append((p, n, pattern(i, n)))
    context = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        futures = [pool.submit(_spawned_task, heap, p, n) for p, n, _ in jobs]
        results = [f.result(timeout=60) for f in futures]
    for (_, n, data), (digest, q) in zip(jobs, results, strict=True):
        assert digest == hashlib.sha256(data).hexdigest()
        assert bytes(heap.view(q)[:n]) == data[::-1]
        heap.free(q)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


def _hold_then_report(heap: SharedHeap, conn: Any) -> None:
    conn.send(heap.names["ready"])
    conn.close()


def test_spawned_process_attaches_through_pickle(heap: SharedHeap) -> None:
    heap.names["ready"] = heap.malloc(1)
    spawn = multiprocessing.get_context("spawn")
    reader, writer = spawn.Pipe(duplex=False)
    proc = spawn.Process(target=_hold_then_report, args=(heap, writer))
    proc.start()
    writer.close()
    assert reader.recv() == heap.names["ready"]
    proc.join(60)
    assert proc.exitcode == 0


def test_forked_child_has_a_lock_of_its_own(heap: SharedHeap) -> None:
    r, w = os.pipe()
    heap._lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                # Wrong if it gets it: the parent holds the lock.
                os.write(w, b"got it" if heap._lock.try_acquire() else b"blocked")
            finally:
                os._exit(0)
        assert os.read(r, 16) == b"blocked"
        os.waitpid(pid, 0)
    finally:
        heap._lock.release()
        os.close(r)
        os.close(w)
    heap.check()


def test_a_dead_holder_does_not_block_through_its_children(heap: SharedHeap) -> None:
    # A holder's forked child inherits its descriptors; the lock must still
    # be released when the holder dies while that child lives on.
    r, w = os.pipe()
    forked_r, forked_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            grandchild = os.fork()
            if grandchild == 0:
                # fork() returns here once the child's fork handlers have run:
                # its copy of the holder's lock descriptor is closed by now.
                os.write(forked_w, b"k")
                time.sleep(30)
                os._exit(0)
            os.write(w, str(grandchild).encode())
            os.read(forked_r, 1)  # under load the child may not have run yet
            heap._lock.acquire()
            heap.meta.store(C.W_PEAK, heap.words[C.W_PEAK])  # a journaled store
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    grandchild = int(os.read(r, 32))
    _, status = os.waitpid(pid, 0)
    try:
        assert os.WIFSIGNALED(status)
        probe = SharedHeap.attach(heap.name)
        try:
            assert probe._lock.try_acquire()  # not held by the dead
            probe._lock.release()
            probe.check()
            assert probe.stats()["recoveries"] == 1
        finally:
            probe.close()
    finally:
        os.kill(grandchild, signal.SIGKILL)
        for fd in (r, w, forked_r, forked_w):
            os.close(fd)


def test_a_corrupted_journal_is_reported_not_followed(heap: SharedHeap) -> None:
    from pyalloc.shared import W_JOURNAL, W_JOURNAL_COUNT

    p = heap.malloc(100)
    raw = heap._raw
    first = raw[W_JOURNAL] >> 3
    raw[first] = heap.capacity  # entry 0 names a word beyond the heap ...
    raw[first + 1] = 12345
    raw[W_JOURNAL_COUNT] = 1  # ... as if its writer had died
    other = SharedHeap.attach(heap.name)
    before = file_digest(heap.name)  # after the attach, which claims a slot
    try:
        for h in (heap, other, heap):  # each time: refused, and the lock is free again
            with pytest.raises(HeapCorruptionError, match="journal entry 0"):
                h.malloc(10)
        assert file_digest(heap.name) == before
        raw[W_JOURNAL_COUNT] = 10**6  # more entries than the journal has
        with pytest.raises(HeapCorruptionError, match="claims"):
            other.check()
        raw[W_JOURNAL_COUNT] = 0
        other.free(p)
        heap.check()
    finally:
        other.close()


def test_a_stray_draft_or_break_word_is_refused_not_followed(heap: SharedHeap) -> None:
    from pyalloc.shared import W_ARRAYS_NEXT, W_NAMES_NEXT

    p = heap.malloc(100)
    raw = heap._raw
    blocks = heap.blocks()
    # A draft word names a block the recovery frees; one that names none is forgotten.
    for word in (W_NAMES_NEXT, W_ARRAYS_NEXT):
        for value in (1 << 63, heap.capacity + 16, p + 8):
            raw[word] = value
            q = heap.malloc(1000)
            assert raw[word] == 0
            heap.free(q)
    assert heap.blocks() == blocks
    brk = raw[C.W_BRK]
    for value in (1 << 63, heap.capacity, heap.heap_start - 16):
        raw[C.W_BRK] = value  # as if another process had moved the break there
        with pytest.raises(HeapCorruptionError, match="break word is corrupted"):
            heap.malloc(10)
    raw[C.W_BRK] = brk
    heap.free(p)
    heap.check()


HOLDER = (
    "import sys\n"
    "from pyalloc import SharedHeap\n"
    "h = SharedHeap.attach(sys.argv[1])\n"
    "h._lock.acquire()  # as a thread inside an operation holds it\n"
    "print('held', flush=True)\n"
    "if sys.stdin.readline():\n"
    "    h._lock.release()\n"
)


def test_a_process_that_exits_holding_the_lock_leaves_a_recoverable_heap(
    heap: SharedHeap,
) -> None:
    # The interpreter exits in the middle of an operation (here: with the
    # lock taken): the mapping must outlive it, or the robust mutex is never
    # marked "owner died" and every later locker waits for good.
    p = heap.malloc(100)
    done = subprocess.run(
        [sys.executable, "-c", HOLDER, heap.name],
        input="",  # end of input at once: exit holding the lock
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout == "held\n"
    assert heap._lock.try_acquire()  # "owner died": the lock is ours at once
    heap._lock.release()
    heap.free(p)
    heap.check()


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted


def test_a_wait_for_the_lock_ends_on_a_signal(heap: SharedHeap) -> None:
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        with held_by_another_process(heap.name) as holder:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(_Interrupted):
                heap.malloc(10)  # waits for the holder, who never lets go by itself
            assert holder.poll() is None  # the signal ended the wait, not a release
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    heap.free(heap.malloc(10))
    heap.check()


@contextlib.contextmanager
def held_by_another_process(name: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the heap's lock for the block, then lets go."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdin.close()
        holder.stdout.close()


def test_close_while_another_thread_waits_for_the_lock(names: Callable[[], str]) -> None:
    # close() must not unmap the segment under a thread that waits for the
    # lock (or holds it): that thread finishes its call, later calls are refused.
    heap = SharedHeap.create(names(), CAPACITY)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(heap.malloc(100)))
    with held_by_another_process(heap.name):
        waiter.start()
        while heap._lock.users == 0:  # the waiter is in acquire
            time.sleep(0.001)
        heap.close()
    waiter.join(timeout=60)
    assert not waiter.is_alive() and len(got) == 1 and got[0] > 0
    with pytest.raises(HeapError, match="closed"):
        heap.malloc(10)
    other = SharedHeap.attach(heap.name)  # the block the waiter got is there
    try:
        assert other.usable_size(got[0]) >= 100
        other.check()
    finally:
        other.close()


def test_processes_attached_counts_live_processes(heap: SharedHeap) -> None:
    assert heap.stats()["processes_attached"] == 1
    other = SharedHeap.attach(heap.name)  # a second attachment of this process
    assert heap.stats()["processes_attached"] == 1
    other.close()
    r, w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork handler claims the child's own slot
        os.write(w, b"k")
        os.read(done_r, 1)
        os._exit(0)
    try:
        os.read(r, 1)
        assert heap.stats()["processes_attached"] == 2
        assert describe_segment(heap.name)["attached"] == 2  # type: ignore[index]
    finally:
        os.write(done_w, b"k")
        os.waitpid(pid, 0)
        for fd in (r, w, done_r, done_w):
            os.close(fd)
    assert heap.stats()["processes_attached"] == 1  # the dead child's slot does not count


def test_the_only_attacher_resets_a_lock_left_held(heap: SharedHeap) -> None:
    # As after a reboot: the mutex says "held" by a thread that no live process has.
    from pyalloc.shared.lock import lock_holder

    heap.close()
    with open(f"/dev/shm/{heap.name}", "r+b") as f:
        f.seek(8 * 10)
        lock = int.from_bytes(f.read(8), "little")
        f.seek(lock)
        f.write((4_000_000).to_bytes(4, "little"))  # a futex word naming a thread
    reopened = SharedHeap.attach(heap.name)
    try:
        assert lock_holder(reopened) == 0
        reopened.free(reopened.malloc(10))
        reopened.check()
    finally:
        reopened.close()


def test_small_objects_are_slabbed_from_the_first_and_reused_by_another_process(
    heap: SharedHeap,
) -> None:
    # A shared heap has no per-process cache: a class's slab comes with its
    # first object, and a slot freed by one process serves the next malloc of
    # another (the slab is in the segment, not in a process).
    p = heap.malloc(100)
    assert heap.in_slab(p)
    heap.free(p)
    pid = os.fork()
    if pid == 0:  # the child: the same heap, by name
        code = 1
        try:
            child = SharedHeap.attach(heap.name)
            q = child.malloc(100)
            code = 0 if q == p and child.in_slab(q) else 2
            child.free(q)
            child.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    heap.check()
