"""SharedHeap: its speed against glibc, throughput across processes, handing arrays over.

Part 0, against glibc (compiled engine, one process, ratios of one run):
a malloc(100)+free pair on a SharedHeap against glibc's through ctypes
(target at most 0.6x), and the time per op replaying the classic traces
(``/work/shared/traces/classic``, skipped when absent) on a SharedHeap
against glibc (target at most 0.8x). Both use ``throughput.py``'s loops.
With ``--before SRC`` (the ``src`` directory of an older tree, e.g. from
``git archive 475615b src | tar -x -C /tmp/old``), the interpreted engine's
SharedHeap pair of this tree and of that one, in children taking turns
(target: this one no slower).

Part 1, throughput. One fixed list of malloc/free operations (sizes 16 B to
4 KiB, at most 256 blocks live) is run by

- one process on a private ``Heap`` (the engine without sharing),
- one process on a ``SharedHeap``,
- two processes at once on the same ``SharedHeap``, each its own copy of the
  list (total ops / wall time of the slower one).

Every run is in a forked child, the garbage collector off, best of
``--repeat``. Printed: ops/s, and the ratios shared/private (the price of
the process lock and the journal) and two processes/one (what a second
process adds; both contend for one lock, so near 1.0 means the lock
serializes them, as it must).

Part 2, handing a numpy array (float64) of 1 KiB, 1 MiB and 100 MiB to
another process, which reads it and acknowledges. Three ways:

- heap:    ``ndarray`` in a SharedHeap, the offset through a
           ``multiprocessing.Queue``, ``ndarray_at`` on the other side, which
           frees the block when done;
- pickle:  the array itself through a ``multiprocessing.Queue``;
- shm:     a fresh ``multiprocessing.shared_memory.SharedMemory`` per array,
           its name through the queue; the other side attaches, then unlinks
           (the receiver is forked, so both share one resource tracker: the
           segment is registered once, by its creator, and unregistered once,
           by the unlink).

Each is timed as a round trip (send, the receiver opens the array, ack) in
two variants: "touch", where the producer writes and the receiver reads only
the first and last element (the cost of the hand-over itself), and "full",
where the producer fills the whole array and the receiver sums it (what a
program that uses the data pays). Printed: microseconds per round trip and
the ratios pickle/heap and shm/heap (above 1: the shared heap is faster).

Add ``--chaos N`` to run the chaos driver of ``tests/test_shared_chaos.py``
with N kills after the measurements.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import pyalloc  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from replay_loop import time_warm  # noqa: E402
from throughput import CLASSIC_DIR, time_pairs, workloads_of  # noqa: E402

from pyalloc import COMPILED, Heap, SharedHeap  # noqa: E402
from pyalloc.trace.reference import GlibcMalloc  # noqa: E402
from pyalloc.trace.rep import read_trace  # noqa: E402

TARGET_PAIR = 0.6
TARGET_TRACES = 0.8


# -- part 0: against glibc ------------------------------------------------------------------


def _verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}x (target at most {target}x: {'PASS' if ratio <= target else 'FAIL'})"


def against_glibc(pairs: int, repeat: int) -> None:
    name = f"pyalloc-bench-{uuid.uuid4().hex}"
    heap = SharedHeap.create(name, 256 << 20)
    libc = GlibcMalloc()
    try:
        print(f"Against glibc through ctypes, engine {'compiled' if COMPILED else 'interpreted'}")
        glibc_ns = time_pairs(libc, pairs, repeat)
        shared_ns = time_pairs(heap, pairs, repeat)
        print(f"  malloc(100)+free pair: glibc {glibc_ns:.0f} ns, SharedHeap {shared_ns:.0f} ns")
        print(f"  SharedHeap / glibc, pair:        {_verdict(shared_ns / glibc_ns, TARGET_PAIR)}")
        paths = sorted(CLASSIC_DIR.glob("*.rep")) if CLASSIC_DIR.is_dir() else []
        paths = [p for p in paths if "short" not in p.name]
        if not paths:
            print(f"  classic traces: skipped ({CLASSIC_DIR} is absent)")
            return
        shared_total = glibc_total = ops = 0
        for workload in workloads_of([read_trace(p) for p in paths]):
            glibc_total += time_warm(libc, workload, repeat)
            shared_total += time_warm(heap, workload, repeat)
            ops += len(workload[1])
        print(
            f"  classic traces, {ops} ops: glibc {glibc_total / ops:.0f} ns/op, "
            f"SharedHeap {shared_total / ops:.0f} ns/op"
        )
        ratio = shared_total / glibc_total
        print(f"  SharedHeap / glibc, traces:      {_verdict(ratio, TARGET_TRACES)}")
    finally:
        heap.close()
        heap.unlink()


FORK = multiprocessing.get_context("fork")
SIZES = (16, 24, 40, 64, 100, 200, 400, 1000, 2000, 4096)
MAX_LIVE = 256


_PAIR_CHILD = """
import sys, time, uuid
from pyalloc import SharedHeap
heap = SharedHeap.create("pyalloc-bench-" + uuid.uuid4().hex, 1 << 24)
try:
    best = 1e18
    for _ in range(3):
        start = time.perf_counter_ns()
        for _ in range(5000):
            heap.free(heap.malloc(100))
        best = min(best, time.perf_counter_ns() - start)
finally:
    heap.close()
    heap.unlink()
print(best / 5000)
"""


def interpreted_before(before: Path, turns: int) -> None:
    """The interpreted SharedHeap pair of this tree and of the one at ``before``."""
    import subprocess

    def run(src: Path) -> float:
        env = {**os.environ, "PYALLOC_PURE_PYTHON": "1", "PYTHONPATH": str(src)}
        out = subprocess.run(
            [sys.executable, "-c", _PAIR_CHILD], env=env, capture_output=True, text=True, check=True
        )
        return float(out.stdout)

    now = min(run(ROOT / "src") for _ in range(turns))
    old = min(run(before) for _ in range(turns))
    ratio = now / old
    print(f"Interpreted engine, SharedHeap malloc(100)+free pair, best of {turns} children each")
    print(f"  this tree {now:.0f} ns, {before} {old:.0f} ns")
    verdict = "PASS" if ratio <= 1.0 else "FAIL"
    print(f"  this / before: {ratio:.2f}x (target at most 1.0x: {verdict})")


# -- part 1: throughput -------------------------------------------------------------------


def make_ops(count: int, seed: int) -> list[tuple[int, int]]:
    """(slot, size): size > 0 allocates into an empty slot, 0 frees the slot."""
    rng = random.Random(seed)
    live: list[int] = []
    free_slots = list(range(MAX_LIVE))
    ops: list[tuple[int, int]] = []
    while len(ops) < count:
        if free_slots and (not live or rng.random() < 0.5):
            slot = free_slots.pop()
            live.append(slot)
            ops.append((slot, rng.choice(SIZES)))
        else:
            slot = live.pop(rng.randrange(len(live)))
            free_slots.append(slot)
            ops.append((slot, 0))
    for slot in live:
        ops.append((slot, 0))
    return ops


def replay(heap: Any, ops: list[tuple[int, int]]) -> float:
    malloc = heap.malloc
    free = heap.free
    slots = [0] * MAX_LIVE
    gc.disable()
    start = time.perf_counter()
    for slot, size in ops:
        if size:
            slots[slot] = malloc(size)
        else:
            free(slots[slot])
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed


def _replay_child(
    make: Callable[[], Any], ops: list[tuple[int, int]], barrier: Any, out: Any
) -> None:
    heap = make()
    barrier.wait()
    out.send(replay(heap, ops))
    heap.check()
    os._exit(0)


def timed_children(make: Callable[[], Any], ops: list[tuple[int, int]], processes: int) -> float:
    """Wall time of ``processes`` forked children replaying ``ops`` at once."""
    barrier = FORK.Barrier(processes)
    pipes = [FORK.Pipe(duplex=False) for _ in range(processes)]
    children = [FORK.Process(target=_replay_child, args=(make, ops, barrier, w)) for _, w in pipes]
    for c in children:
        c.start()
    times = [r.recv() for r, _ in pipes]
    for c in children:
        c.join()
        if c.exitcode != 0:
            raise RuntimeError("a benchmark child failed")
    return max(times)


def throughput(ops_count: int, repeat: int) -> None:
    ops = make_ops(ops_count, seed=1)
    name = f"pyalloc-bench-{uuid.uuid4().hex}"
    SharedHeap.create(name, 64 << 20).close()
    try:
        best = {"private": 1e9, "shared x1": 1e9, "shared x2": 1e9}
        for _ in range(repeat):
            best["private"] = min(best["private"], timed_children(lambda: Heap(64 << 20), ops, 1))
            attach = lambda: SharedHeap.attach(name)  # noqa: E731
            best["shared x1"] = min(best["shared x1"], timed_children(attach, ops, 1))
            best["shared x2"] = min(best["shared x2"], timed_children(attach, ops, 2))
    finally:
        os.unlink(f"/dev/shm/{name}")
    rate = {
        "private": len(ops) / best["private"],
        "shared x1": len(ops) / best["shared x1"],
        "shared x2": 2 * len(ops) / best["shared x2"],
    }
    print(f"Throughput: {len(ops)} malloc/free ops per process, best of {repeat}")
    print(f"  {'':28s} {'ops/s':>10s} {'us/op':>8s}")
    labels = {
        "private": "Heap, 1 process",
        "shared x1": "SharedHeap, 1 process",
        "shared x2": "SharedHeap, 2 processes",
    }
    for key, label in labels.items():
        print(f"  {label:28s} {rate[key]:10.0f} {1e6 / rate[key]:8.2f}")
    print(f"  shared / private (1 process):     {rate['shared x1'] / rate['private']:.2f}")
    print(f"  2 processes / 1 process (shared): {rate['shared x2'] / rate['shared x1']:.2f}")


# -- part 2: handing arrays over ----------------------------------------------------------


def _receiver(heap_name: str, inbox: Any, outbox: Any) -> None:
    heap = SharedHeap.attach(heap_name)
    while True:
        msg = inbox.get()
        if msg is None:
            break
        kind, full, payload, count = msg[0], msg[1], msg[2], msg[3]
        if kind == "heap":
            a = heap.ndarray_at(payload, count, "float64")
            value = float(a.sum()) if full else float(a[0] + a[-1])
            del a
            heap.free(payload)
        elif kind == "pickle":
            value = float(payload.sum()) if full else float(payload[0] + payload[-1])
        else:
            shm = shared_memory.SharedMemory(name=payload)
            a = np.ndarray(count, dtype="float64", buffer=shm.buf)
            value = float(a.sum()) if full else float(a[0] + a[-1])
            del a
            shm.close()
            shm.unlink()
        outbox.put(value)
    heap.close()


def _fill(a: Any, i: int, full: bool) -> float:
    if full:
        a.fill(i)
        return float(i) * a.size
    a[0] = i
    a[-1] = i
    return 2.0 * i


def handoff(sizes: list[int], reps: dict[int, int]) -> None:
    name = f"pyalloc-bench-{uuid.uuid4().hex}"
    heap = SharedHeap.create(name, max(sizes) * 2 + (64 << 20))
    inbox, outbox = FORK.Queue(), FORK.Queue()
    resource_tracker.ensure_running()  # before the fork, so that the receiver shares it
    receiver = FORK.Process(target=_receiver, args=(name, inbox, outbox), daemon=True)
    receiver.start()

    def round_trip(kind: str, nbytes: int, full: bool, i: int) -> float:
        count = nbytes // 8
        start = time.perf_counter()
        if kind == "heap":
            a = heap.ndarray(count, "float64")
            expect = _fill(a, i, full)
            off = heap.offset_of(a)
            del a
            inbox.put(("heap", full, off, count))
        elif kind == "pickle":
            a = np.empty(count, "float64")
            expect = _fill(a, i, full)
            inbox.put(("pickle", full, a, count))
        else:
            shm = shared_memory.SharedMemory(create=True, size=nbytes)
            a = np.ndarray(count, dtype="float64", buffer=shm.buf)
            expect = _fill(a, i, full)
            del a
            shm.close()
            inbox.put(("shm", full, shm.name, count))
        got = outbox.get()
        elapsed = time.perf_counter() - start
        if got != expect:
            raise AssertionError(f"{kind}: the receiver read {got}, expected {expect}")
        return elapsed

    kinds = ("heap", "pickle", "shm")
    try:
        for full in (False, True):
            variant = "full: fill, then sum" if full else "touch: first and last element"
            print(f"\nHanding a float64 array to another process ({variant}), us per round trip")
            print(
                f"  {'size':>8s} {'heap':>10s} {'pickle':>10s} {'shm':>10s}   pickle/heap  shm/heap"
            )
            for nbytes in sizes:
                n = reps[nbytes]
                best = dict.fromkeys(kinds, 1e9)
                for i in range(n):
                    for kind in kinds if i % 2 else reversed(kinds):
                        best[kind] = min(best[kind], round_trip(kind, nbytes, full, i + 1))
                us = {k: v * 1e6 for k, v in best.items()}
                print(
                    f"  {label(nbytes):>8s} {us['heap']:10.1f} {us['pickle']:10.1f} "
                    f"{us['shm']:10.1f}   {us['pickle'] / us['heap']:11.1f} "
                    f"{us['shm'] / us['heap']:9.1f}"
                )
        heap.check()
        leaked = heap.stats()["live_blocks"]
        if leaked:
            raise AssertionError(f"{leaked} blocks were not freed by the receiver")
    finally:
        inbox.put(None)
        receiver.join(30)
        heap.close()
        os.unlink(f"/dev/shm/{name}")


def label(nbytes: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=40_000, help="operations per process")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer ops and round trips")
    parser.add_argument("--chaos", type=int, default=0, metavar="KILLS")
    parser.add_argument("--before", type=Path, metavar="SRC", help="src of an older tree")
    args = parser.parse_args()
    sizes = [1 << 10, 1 << 20, 100 << 20]
    reps = {1 << 10: 300, 1 << 20: 60, 100 << 20: 4}
    if args.quick:
        args.ops, args.repeat = 5000, 1
        reps = {1 << 10: 30, 1 << 20: 6, 100 << 20: 1}
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    against_glibc(20_000 if args.quick else 200_000, max(args.repeat, 3))
    print()
    if args.before is not None:
        if not (args.before / "pyalloc").is_dir():
            parser.error(f"--before: no pyalloc package in {args.before}")
        interpreted_before(args.before, 3)
        print()
    throughput(args.ops, args.repeat)
    handoff(sizes, reps)
    if args.chaos:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_shared_chaos import main as chaos_main

        print()
        chaos_main(["--kills", str(args.chaos)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
