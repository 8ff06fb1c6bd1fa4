"""The lock-free Pool: what its atomics cost, the pool against Heap, and scaling.

Three measurements, each printed with the ratio against its peer from the
same run:

1. atomicshm's operations against plain ``memoryview`` word access, with and
   without an explicit memory-order argument, through a view and through a
   cell (the numbers behind the choices in ARCHITECTURE.md, "Pool");
2. one block size, allocated and freed by ``Pool`` and by ``Heap`` (with and
   without its lock): an alloc/free pair, and a batch of 1000 allocs then
   1000 frees;
3. one shared pool used by 1 and by 2 processes at once, each doing alloc/free
   pairs: total ops/s and the scaling ratio (2 processes / 1). The machine's
   other load shows up here; the ratio cannot exceed the number of idle cores.

Times are the best of ``--repeat`` runs with the garbage collector off.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import multiprocessing
import os
import sys
import time
import timeit
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

try:
    import pyalloc  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pyalloc.pool import Pool

Heap: Any
try:
    from pyalloc import Heap
except ImportError:  # the heap engine is not there yet
    Heap = None

BLOCK = 256


def best(fn: Callable[[], float], repeat: int) -> float:
    gc.disable()
    try:
        return min(fn() for _ in range(repeat))
    finally:
        gc.enable()


# --- 1. atomics ----------------------------------------------------------------


def atomics_costs(repeat: int) -> None:
    import atomicshm

    buf = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    words = memoryview(buf).cast("Q")
    view = atomicshm.AtomicView(buf)
    cell = view.cell_u64(64)
    names: dict[str, Any] = {
        "words": words,
        "load": view.load_u64,
        "store": view.store_u64,
        "cas": view.cas_u64,
        "cas8": view.cas_u8,
        "fetch_add": view.fetch_add_u64,
        "cell_load": cell.load,
        "cell_cas": cell.cas,
        "ACQUIRE": atomicshm.ACQUIRE,
        "RELEASE": atomicshm.RELEASE,
        "SEQ_CST": atomicshm.SEQ_CST,
    }
    number = 200_000
    empty = min(timeit.repeat("pass", globals=names, number=number, repeat=repeat)) / number
    rows = [
        ("memoryview word read", "words[8]"),
        ("memoryview word write", "words[8] = 3"),
        ("view.load_u64(off)", "load(64)"),
        ("view.load_u64(off, ACQUIRE)", "load(64, ACQUIRE)"),
        ("view.store_u64(off, v)", "store(64, 3)"),
        ("view.store_u64(off, v, RELEASE)", "store(64, 3, RELEASE)"),
        ("view.cas_u64(off, e, d)", "cas(64, 3, 3)"),
        ("view.cas_u64(off, e, d, SEQ_CST)", "cas(64, 3, 3, SEQ_CST)"),
        ("view.cas_u8(off, e, d)", "cas8(128, 0, 0)"),
        ("view.fetch_add_u64(off, 1)", "fetch_add(72, 1)"),
        ("cell.load()", "cell_load()"),
        ("cell.cas(e, d)", "cell_cas(3, 3)"),
    ]
    print("1. atomic operations (ns per call, loop overhead subtracted)")
    baseline = None
    for label, stmt in rows:
        t = min(timeit.repeat(stmt, globals=names, number=number, repeat=repeat)) / number
        ns = (t - empty) * 1e9
        baseline = baseline or ns
        print(f"   {label:34s} {ns:6.1f} ns   x{ns / baseline:4.2f} of a memoryview read")
    view.close()
    words.release()
    buf.close()


# --- 2. Pool against Heap ---------------------------------------------------------


def pair_loop(alloc: Callable[[], int], free: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        free(alloc())
    return time.perf_counter() - start


def batch_loop(alloc: Callable[[], int], free: Callable[[int], None], n: int) -> float:
    rounds = n // 1000
    start = time.perf_counter()
    for _ in range(rounds):
        pointers = [alloc() for _ in range(1000)]
        for p in pointers:
            free(p)
    return time.perf_counter() - start


def pool_against_heap(pairs: int, repeat: int) -> None:
    pool = Pool(BLOCK, 2000)
    contenders: list[tuple[str, Callable[[], int], Callable[[int], None]]] = [
        ("Pool", pool.alloc, pool.free)
    ]
    heaps: list[Any] = []
    if Heap is not None:
        for lock in (True, False):
            heap = Heap(8 << 20, lock=lock)
            heaps.append(heap)
            contenders.append(
                (f"Heap(lock={lock}) malloc({BLOCK})", partial(heap.malloc, BLOCK), heap.free)
            )
    print(f"\n2. {BLOCK}-byte blocks, {pairs} ops of each kind (ns per alloc+free pair)")
    if Heap is None:
        print("   (pyalloc.Heap is not available: the pool alone)")
    for kind, loop in (("alloc/free pair", pair_loop), ("1000 allocs, 1000 frees", batch_loop)):
        results = []
        for label, alloc, free in contenders:
            seconds = best(partial(loop, alloc, free, pairs), repeat)
            results.append((label, seconds / pairs * 1e9))
        pool_ns = results[0][1]
        print(f"   {kind}:")
        for label, ns in results:
            print(f"     {label:32s} {ns:7.0f} ns   x{ns / pool_ns:4.2f} of Pool")
    pool.check()
    pool.close()
    for heap in heaps:
        heap.close()


# --- 3. scaling over processes ----------------------------------------------------


def worker(name: str | None, pairs: int, start: Any, results: Any) -> None:
    with Pool.attach(name) if name is not None else Pool(BLOCK, 2000) as pool:
        alloc, free = pool.alloc, pool.free
        for _ in range(1000):  # warm up
            free(alloc())
        start.wait()
        gc.disable()
        began = time.perf_counter()
        for _ in range(pairs):
            free(alloc())
        results.put((began, time.perf_counter()))


def run_processes(name: str | None, processes: int, pairs: int) -> float:
    """Total alloc+free ops per second of ``processes`` workers on one pool.

    With ``name`` None every worker uses a private pool of its own instead:
    the same work with nothing shared, which shows what the machine's free
    cores allow.
    """
    context = multiprocessing.get_context("fork")
    start = context.Event()
    results = context.Queue()
    workers = [
        context.Process(target=worker, args=(name, pairs, start, results)) for _ in range(processes)
    ]
    for w in workers:
        w.start()
    time.sleep(0.2)  # let every worker reach the start line
    start.set()
    spans: list[tuple[float, float]] = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    elapsed = max(end for _, end in spans) - min(began for began, _ in spans)
    return float(2 * pairs * processes / elapsed)


def scaling(pairs: int, repeat: int) -> None:
    name = f"pyalloc-bench-pool-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pool = Pool.create(name, BLOCK, 2000)
    try:
        print(
            f"\n3. one shared pool, {pairs} alloc/free pairs per process (cores: {os.cpu_count()})"
        )
        rates = {}
        for shared in (name, None):
            for processes in (1, 2):
                rates[shared, processes] = max(
                    run_processes(shared, processes, pairs) for _ in range(repeat)
                )
        one, two = rates[name, 1], rates[name, 2]
        alone = rates[None, 2] / rates[None, 1]
        print(f"   1 process    {one / 1e6:6.2f} M ops/s")
        print(f"   2 processes  {two / 1e6:6.2f} M ops/s total")
        print(f"   scaling      x{two / one:4.2f} (2 processes / 1; 2.00 is perfect)")
        print(
            f"   unshared     x{alone:4.2f} (each process on a private pool: the machine's limit)"
        )
        print(f"   shared/unshared scaling  x{two / one / alone:4.2f}")
        report = pool.check()
        assert report.free == pool.count, report
    finally:
        pool.close()
        pool.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000, help="alloc/free pairs per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; best kept")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    atomics_costs(args.repeat)
    pool_against_heap(args.pairs, args.repeat)
    scaling(args.pairs, args.repeat)


if __name__ == "__main__":
    main()
