"""The lock-free Pool against C's malloc, over processes and threads, and interpreted
against the pool before magazines and compiled atomics.

Four measurements, each printed with the ratio against its peer from the same
run and, where the pool has a target, a PASS or MISS line:

1. an alloc+free pair of a 256-byte block: ``Pool`` (private, shared, and a
   private one without its magazine) against glibc's ``malloc`` + ``free``
   called through ``ctypes``, both from the same Python loop. Target: the
   shared pool at most 0.3x glibc;
2. one shared pool used by 1 and by 2 processes at once, each doing alloc/free
   pairs for a fixed time: total ops/s and the ratio. Target: at least 1.6x.
   The same work on two private pools shows what the machine gave (the ratio
   cannot exceed the idle cores), and the ops per CPU second show whether the
   processes slow each other down, whatever the machine's load;
3. one shared pool used by 2 threads of one process against 1 thread, for a
   fixed time: total ops. Target: no slower (at least 1.0x). A control does
   the same with two builtin calls in place of the pool's: what the
   interpreter's thread switching costs by itself;
4. interpreted (``PYALLOC_PURE_PYTHON=1``): this tree against commit
   ``BEFORE`` (extracted with ``git archive``), a private and a shared pool,
   each in child processes taking turns (old, new, old, new, ...) so that the
   machine's other load slows both alike. Target: at most 1.0x.

Parts 1 to 3 run in the engine mode of this process: compiled when the engine
is built (the targets are for the compiled engine). Times are the best of
``--repeat`` runs with the garbage collector off.

Run: ``python benchmarks/pool_bench.py`` from a git checkout (part 4 needs git).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interpreted_before import extract

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and "--child" not in sys.argv:
    try:
        import pyalloc  # noqa: F401
    except ImportError:  # running from a checkout without an install
        sys.path.insert(0, str(ROOT / "src"))

BLOCK = 256
COUNT = 2000
BEFORE = "475615b"  # the last commit with the interpreted-only pool, without magazines
PAIR_TARGET = 0.3  # shared Pool pair / glibc pair, at most
PROCESS_TARGET = 1.6  # 2 processes / 1, at least
THREAD_TARGET = 1.0  # 2 threads / 1, at least
INTERPRETED_TARGET = 1.0  # interpreted now / before, at most


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def best(fn: Callable[[], float], repeat: int) -> float:
    gc.disable()
    try:
        return min(fn() for _ in range(repeat))
    finally:
        gc.enable()


def pair_loop(alloc: Callable[[], int], free: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        free(alloc())
    return time.perf_counter() - start


def glibc_pair_loop(n: int) -> float:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    malloc, free = libc.malloc, libc.free
    malloc.restype = ctypes.c_void_p
    malloc.argtypes = [ctypes.c_size_t]
    free.argtypes = [ctypes.c_void_p]
    free.restype = None
    start = time.perf_counter()
    for _ in range(n):
        free(malloc(BLOCK))
    return time.perf_counter() - start


def shm_name() -> str:
    return f"pyalloc-bench-pool-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --- 1. the pair against glibc ---------------------------------------------------


def pair_against_glibc(pairs: int, repeat: int, name: str) -> bool:
    import pyalloc
    from pyalloc.pool import Pool

    private = Pool(BLOCK, COUNT)
    shared = Pool.attach(name)
    bare = Pool(BLOCK, COUNT)
    bare._slot = -1  # as a process without a slot: every alloc pops, every free pushes
    bare._bind()
    glibc = best(lambda: glibc_pair_loop(pairs), repeat) / pairs * 1e9
    rows = [("glibc malloc+free (ctypes)", glibc)]
    for label, pool in (
        ("Pool, shared", shared),
        ("Pool, private", private),
        ("Pool, private, no magazine", bare),
    ):
        rows.append(
            (label, best(lambda p=pool: pair_loop(p.alloc, p.free, pairs), repeat) / pairs * 1e9)
        )
        pool.check()
    for pool in (private, shared, bare):
        pool.close()
    mode = "compiled" if pyalloc.COMPILED else "interpreted"
    print(f"1. alloc+free pair of a {BLOCK}-byte block, {pairs:,} pairs, {mode} engine")
    for label, ns in rows:
        print(f"   {label:30s} {ns:7.1f} ns   {ns / glibc:5.2f}x glibc")
    ratio = rows[1][1] / glibc
    ok = ratio <= PAIR_TARGET
    print(
        f"{verdict(ok)}  shared Pool pair / glibc pair: {ratio:.2f}x "
        f"(target: at most {PAIR_TARGET}x)"
    )
    return ok


# --- 2. processes --------------------------------------------------------------


def process_worker(name: str | None, seconds: float, start: Any, results: Any) -> None:
    from pyalloc.pool import Pool

    with Pool.attach(name) if name is not None else Pool(BLOCK, COUNT) as pool:
        alloc, free = pool.alloc, pool.free
        for _ in range(1000):  # warm up: the magazine filled, the code paged in
            free(alloc())
        start.wait()
        gc.disable()
        ops = 0
        cpu = time.process_time()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(1000):
                free(alloc())
            ops += 2000
        results.put((ops, time.process_time() - cpu))


def run_processes(name: str | None, processes: int, seconds: float) -> tuple[float, float]:
    """(ops per second, ops per CPU second) of ``processes`` workers on one pool, in total.

    With ``name`` None every worker uses a private pool of its own: the same
    work with nothing shared. Ops per CPU second do not depend on how much of
    the machine other programs take: they fall only when the workers slow
    each other down (a cache line moving between cores).
    """
    context = multiprocessing.get_context("fork")
    start = context.Event()
    results = context.Queue()
    workers = [
        context.Process(target=process_worker, args=(name, seconds, start, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    time.sleep(0.3)  # let every worker reach the start line
    start.set()
    done = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    ops = sum(n for n, _ in done)
    return ops / seconds, ops / sum(cpu for _, cpu in done)


def scaling_over_processes(seconds: float, repeat: int, name: str) -> bool:
    runs = [(shared, processes) for shared in (name, None) for processes in (1, 2)]
    wall = dict.fromkeys(runs, 0.0)
    per_cpu = dict.fromkeys(runs, 0.0)
    for _ in range(repeat):  # in turns, so that the machine's load falls on all alike
        for run in runs:
            rate, cpu_rate = run_processes(*run, seconds)
            wall[run] = max(wall[run], rate)
            per_cpu[run] = max(per_cpu[run], cpu_rate)
    ratio = wall[name, 2] / wall[name, 1]
    alone = wall[None, 2] / wall[None, 1]
    cpu_ratio = 2 * per_cpu[name, 2] / per_cpu[name, 1]
    print(f"\n2. one shared pool, alloc/free pairs for {seconds} s (cores: {os.cpu_count()})")
    print(f"   1 process    {wall[name, 1] / 1e6:6.2f} M ops/s")
    print(f"   2 processes  {wall[name, 2] / 1e6:6.2f} M ops/s total")
    print(f"   unshared     {alone:4.2f}x (each process on a private pool: what the machine gave)")
    print(
        f"   per CPU second: 2 processes do {cpu_ratio / 2:4.2f}x the ops of 1, "
        f"so {cpu_ratio:4.2f}x on two idle cores"
    )
    ok = ratio >= PROCESS_TARGET
    print(f"{verdict(ok)}  2 processes / 1: {ratio:.2f}x (target: at least {PROCESS_TARGET}x)")
    return ok


# --- 3. threads ----------------------------------------------------------------


def run_threads(
    pair: tuple[Callable[[], int], Callable[[int], None]], threads: int, seconds: float
) -> tuple[float, float]:
    """(ops per second, ops per CPU second of the process) of ``threads`` threads
    calling ``free(alloc())`` with the ``(alloc, free)`` of ``pair``."""
    alloc, free = pair
    counts = [0] * threads
    go = threading.Barrier(threads + 1)

    def work(slot: int) -> None:
        go.wait()
        deadline = time.perf_counter() + seconds
        ops = 0
        while time.perf_counter() < deadline:
            for _ in range(200):
                free(alloc())
            ops += 400
        counts[slot] = ops

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    gc.disable()
    try:
        go.wait()
        cpu = time.process_time()
        for w in workers:
            w.join()
        cpu = time.process_time() - cpu
    finally:
        gc.enable()
    return sum(counts) / seconds, sum(counts) / cpu


def scaling_over_threads(seconds: float, repeat: int, name: str) -> bool:
    from pyalloc.pool import Pool

    pool = Pool.attach(name)
    # The control: two C calls in place of the pool's, sharing nothing but the
    # interpreter. Its ratio is what switching threads costs by itself.
    control = (itertools.count().__next__, set().discard)
    contenders = {"pool": (pool.alloc, pool.free), "control": control}
    wall = {(kind, n): 0.0 for kind in contenders for n in (1, 2)}
    per_cpu = dict(wall)
    for _ in range(repeat):  # in turns
        for kind, pair in contenders.items():
            for threads in (1, 2):
                rate, cpu_rate = run_threads(pair, threads, seconds)
                wall[kind, threads] = max(wall[kind, threads], rate)
                per_cpu[kind, threads] = max(per_cpu[kind, threads], cpu_rate)
    pool.check()
    pool.close()
    ratio = wall["pool", 2] / wall["pool", 1]
    control_ratio = wall["control", 2] / wall["control", 1]
    print(f"\n3. one shared pool, threads of one process, alloc/free pairs for {seconds} s")
    print(f"   1 thread     {wall['pool', 1] / 1e6:6.2f} M ops/s")
    print(f"   2 threads    {wall['pool', 2] / 1e6:6.2f} M ops/s total")
    cpu_ratio = per_cpu["pool", 2] / per_cpu["pool", 1]
    print(f"   per CPU second: 2 threads do {cpu_ratio:4.2f}x the ops of 1")
    print(
        f"   control      {control_ratio:4.2f}x (2 threads / 1 calling two builtins instead: "
        "the interpreter's switching alone)"
    )
    ok = ratio >= THREAD_TARGET
    print(f"{verdict(ok)}  2 threads / 1: {ratio:.3f}x (target: at least {THREAD_TARGET}x)")
    return ok


# --- 4. interpreted, now against before ------------------------------------------


def child_main(source: str, pairs: int, repeat: int) -> int:
    """Time ``source``'s interpreted pools (private, then shared); print JSON."""
    sys.path.insert(0, source)
    import pyalloc
    from pyalloc.pool import Pool

    assert not pyalloc.COMPILED, "the child must run interpreted"
    assert pyalloc.__file__ is not None and pyalloc.__file__.startswith(source)
    name = shm_name()
    shared = Pool.create(name, BLOCK, COUNT)
    private = Pool(BLOCK, COUNT)
    try:
        times = {
            label: best(lambda p=pool: pair_loop(p.alloc, p.free, pairs), repeat) / pairs * 1e9
            for label, pool in (("private", private), ("shared", shared))
        }
    finally:
        private.close()
        shared.close()
        shared.unlink()
    print(json.dumps(times))
    return 0


def time_tree(source: str, pairs: int, repeat: int) -> dict[str, float]:
    env = dict(os.environ, PYALLOC_PURE_PYTHON="1")
    command = [sys.executable, __file__, "--child", source, str(pairs), str(repeat)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the child timing {source} failed:\n{done.stderr.strip()}")
    times: dict[str, float] = json.loads(done.stdout)
    return times


def interpreted_against_before(pairs: int, repeat: int, rounds: int, rev: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="pyalloc-pool-before-") as tmp:
        trees = {"before": extract(rev, tmp), "now": str(ROOT / "src")}
        best_of: dict[str, dict[str, float]] = {tree: {} for tree in trees}
        for _ in range(rounds):
            for tree, source in trees.items():
                for label, ns in time_tree(source, pairs, repeat).items():
                    best_of[tree][label] = min(best_of[tree].get(label, ns), ns)
    print(f"\n4. interpreted engine, alloc+free pair, this tree against {rev}, best of {rounds}")
    ok = True
    for label in ("private", "shared"):
        before, now = best_of["before"][label], best_of["now"][label]
        ratio = now / before
        ok = ok and ratio <= INTERPRETED_TARGET
        print(f"   Pool, {label:8s} before {before:7.0f} ns   now {now:7.0f} ns   {ratio:5.2f}x")
    worst = max(best_of["now"][k] / best_of["before"][k] for k in ("private", "shared"))
    print(
        f"{verdict(ok)}  interpreted now / before: at worst {worst:.2f}x "
        f"(target: at most {INTERPRETED_TARGET}x)"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=300_000, help="pairs per timed loop")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of a scaling run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, the best kept")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each tree in part 4")
    parser.add_argument("--rev", default=BEFORE, help=f"the commit before (default {BEFORE})")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        source, pairs, repeat = args.child
        return child_main(source, int(pairs), int(repeat))

    from pyalloc.pool import Pool

    name = shm_name()
    pool = Pool.create(name, BLOCK, COUNT)
    try:
        results = [
            pair_against_glibc(args.pairs, args.repeat, name),
            scaling_over_processes(args.seconds, args.repeat, name),
            scaling_over_threads(args.seconds, args.repeat, name),
        ]
        pool.check()
    finally:
        pool.close()
        pool.unlink()
    results.append(interpreted_against_before(args.pairs // 3, args.repeat, args.rounds, args.rev))
    print(f"\n{sum(results)} of {len(results)} targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
