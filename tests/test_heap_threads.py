"""One heap shared by several threads; and a heap without its lock, used by one.

The threads switch far more often than usual (``sys.setswitchinterval``) so
that their calls interleave inside the allocator; each thread verifies the
bytes it wrote before freeing them, so a block handed to two threads at once
shows up as a changed payload.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from heap_model import ALIGNMENT, HEADER, LiveBlocks, counted, in_slab, overlaps, read

THREADS = 6
ROUNDS = 1500


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _worker(
    heap: Any, seed: int, kept: dict[int, tuple[int, bytes]], errors: list[BaseException]
) -> None:
    rng = random.Random(seed)
    mine: dict[int, tuple[int, bytes]] = {}
    try:
        for _ in range(ROUNDS):
            if mine and (len(mine) > 24 or rng.random() < 0.45):
                p = rng.choice(list(mine))
                asked, data = mine.pop(p)
                assert read(heap, p, len(data)) == data, f"block {p} changed under its owner"
                if rng.random() < 0.2:
                    n = rng.randrange(0, 3000)
                    q = heap.realloc(p, n)
                    kept_bytes = min(asked, n)
                    if n:
                        assert read(heap, q, kept_bytes) == data[:kept_bytes]
                        mine[q] = (n, _stamp(heap, q, n, rng))
                else:
                    heap.free(p)
            else:
                n = rng.choice(
                    [rng.randrange(0, 64), rng.randrange(0, 600), rng.randrange(0, 5000)]
                )
                p = heap.calloc(1, n) if rng.random() < 0.1 else heap.malloc(n)
                assert p % ALIGNMENT == 0
                mine[p] = (n, _stamp(heap, p, n, rng))
        for p, (_, data) in mine.items():
            assert read(heap, p, len(data)) == data, f"block {p} changed under its owner"
        kept.update(mine)
    except BaseException as error:  # reported by the main thread
        errors.append(error)


def _stamp(heap: Any, p: int, n: int, rng: random.Random) -> bytes:
    data = rng.randbytes(n)
    heap.region.buf[p : p + n] = data
    return data


def test_threads_share_one_heap(make_heap: Any, fast_switching: None) -> None:
    heap = make_heap(32 << 20)
    kept: dict[int, tuple[int, bytes]] = {}
    errors: list[BaseException] = []
    workers = [
        threading.Thread(target=_worker, args=(heap, 1000 + i, kept, errors), name=f"worker-{i}")
        for i in range(THREADS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]

    heap.check()
    stats = heap.stats()
    assert stats["live_blocks"] == len(kept)
    assert stats["live_bytes"] == sum(counted(heap, p, asked) for p, (asked, _) in kept.items())
    spans = [(p - (0 if in_slab(heap, p) else HEADER), p + heap.usable_size(p)) for p in kept]
    assert not overlaps(spans)
    for p, (_, data) in kept.items():
        assert read(heap, p, len(data)) == data
    for p in kept:
        heap.free(p)
    heap.check()
    assert heap.stats()["live_blocks"] == 0


def test_heap_without_lock_works_in_one_thread(make_heap: Any) -> None:
    heap = make_heap(4 << 20, lock=False)
    rng = random.Random(21)
    live = LiveBlocks(heap)
    for _ in range(2000):
        if live and rng.random() < 0.45:
            p = rng.choice(live.pointers())
            block = live.remove(p)
            assert read(heap, p, len(block.data)) == block.data
            heap.free(p)
        else:
            n = rng.randrange(0, 2000)
            live.add(heap.malloc(n), n, rng)
    live.assert_all()
    p = live.pointers()[0]
    live.remove(p)
    q = heap.realloc(p, 10_000)
    live.add(q, 10_000, rng)
    live.assert_all()


def test_a_waiting_thread_lets_the_holder_run_python() -> None:
    # The holder runs Python under the lock while another thread waits for
    # it: a waiter that kept the GIL would deadlock here (the join times out).
    from pyalloc import Heap

    heap = Heap(1 << 20)
    entered = threading.Event()
    done: list[int] = []

    def waiter() -> None:
        entered.wait()
        done.append(heap.malloc(64))

    t = threading.Thread(target=waiter)
    t.start()
    with heap._lock:
        entered.set()
        total = 0
        for i in range(200_000):  # Python work, with switch points, inside the lock
            total += i
        assert not done  # the waiter is blocked on the lock
    t.join(timeout=30)
    assert not t.is_alive() and len(done) == 1 and total > 0
    heap.free(done[0])
    heap.check()
    heap.close()


def test_every_waiter_gets_the_lock_in_turn() -> None:
    # Several threads wait at once for a held lock; each release must wake one
    # of them (none left asleep with the lock free) and never two at once.
    from pyalloc import Heap

    heap = Heap(1 << 20)
    lock = heap._lock
    inside = [0]
    most_inside = [0]
    passed: list[int] = []
    started = threading.Barrier(5)

    def waiter(i: int) -> None:
        started.wait()
        for _ in range(50):
            with lock:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
                for _ in range(200):  # switch points while holding the lock
                    pass
                inside[0] -= 1
        passed.append(i)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(4)]
    with lock:
        for t in threads:
            t.start()
        started.wait()
        for _ in range(100_000):  # let them all reach the lock and wait
            pass
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(passed) == [0, 1, 2, 3]
    assert most_inside[0] == 1
    p = heap.malloc(10)  # the lock is free again
    heap.free(p)
    heap.close()
