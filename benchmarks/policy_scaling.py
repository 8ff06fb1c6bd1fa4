"""Cost per operation of each policy as the number of live blocks grows.

For every allocator in ``pyalloc.ALL_POLICIES``, and glibc's malloc through
ctypes as the peer, and every heap size N (10**3 and 10**6 live blocks by
default):

1. fill: a fresh heap (``lock=False, cache=False``: every free reaches the
   policy) receives N mallocs of sizes drawn uniformly from SIZES;
2. time: PAIRS random (free a random live block, malloc a new random size)
   pairs, the live count staying N; the random choices are drawn before the
   clock starts and the garbage collector is off while it runs.

The pairs run in segments (SEGMENT pairs, or fewer once they take
SEGMENT_SECONDS), the heaps of the different sizes taking turns, so that
whatever else runs on the machine slows every size alike. The clock is the
process's CPU time (``time.process_time``) and the figure kept the median over
a heap's segments of ns per operation (a pair is two operations).

It prints ns per operation at each size and the ratio of the largest to the
smallest: an index whose cost does not depend on
the heap's size keeps the ratio near 1. Compiled code meets the cache misses
of a large heap that the interpreter hid, and so does glibc: the target is
that ``segregated`` and ``tlsf`` grow no more than glibc does in the same run.

The loop grows too: reading a random slot of a list of N pointers, and the
int object it holds, misses the cache at 10**6 whatever the allocator. The
row ``loop`` runs the same loop with two builtins that do nothing with the
memory in place of free and malloc (``set().discard`` and ``operator.neg``),
and the column ``net`` gives each allocator's ratio with the loop's ns/op
taken off at both sizes: the growth of the allocator's own work.
An allocator whose free reads the block it is handed (glibc and pyalloc
read its header) cannot cost less than the loop plus that one read: the row
``touch`` is that floor, the loop with ``free`` reading one word of a
block-sized stretch of a real, resident region. Its growth is what a random
read of a large heap costs on this machine; the closing lines say how many
ns per operation each target would allow at the largest size, against that
floor.
``implicit`` is the slowest and grows with N (a malloc walks the blocks in
front of the first fit).

Two shortcuts keep the run short, both printed with the results:

- the fill lays the blocks end to end without searching: engine heaps are
  asked to grow directly, by exactly each block (for ``implicit`` a search
  is a walk of every block, and filling 10**6 blocks through it would take
  hours). Without the shortcut, a small block's growth would take a 1 KiB
  chunk whose free rest the next small blocks fill; with it, every policy
  starts from the same heap with nothing free.
- each timed run stops after BUDGET seconds (``--budget``); a run that stops
  early reports ns/op over the pairs it completed, marked with ``*``. At
  10**6 blocks that is ``implicit`` (and best fit on a slow machine), whose
  every malloc costs milliseconds.

Run: ``python benchmarks/policy_scaling.py`` (about two minutes on a 2-core
machine; ``--quick`` for a smaller second size and fewer pairs).
"""

from __future__ import annotations

import argparse
import gc
import mmap
import operator
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:
    import pyalloc
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))
    import pyalloc

from pyalloc.allocators import ALL_POLICIES, make_heap  # noqa: E402
from pyalloc.layout import HEADER, block_size_for  # noqa: E402
from pyalloc.trace.reference import GlibcMalloc  # noqa: E402

SIZES = (16, 256)  # request sizes, uniform, inclusive
PAIRS = 20_000
BUDGET = 8.0  # CPU seconds per timed run
SEGMENT = 1000  # pairs per timed segment ...
SEGMENT_SECONDS = 0.05  # ... or fewer, once a segment has taken this long
CAPACITY_PER_BLOCK = 512  # generous: the buddy system rounds up to powers of two
MIN_CAPACITY = 16 << 20


@dataclass
class Run:
    policy: str
    live: int
    pairs: int  # pairs completed
    seconds: float  # CPU seconds of the timed pairs
    ns_per_op: float  # median over the segments
    fill_seconds: float
    capped: bool  # stopped by the budget before all pairs ran


GLIBC = "glibc"  # the C library's malloc through ctypes, measured alike
LOOP = "loop"  # the timed loop with builtins that touch no heap: its own cost
TOUCH = "touch"  # the loop, with free reading one word of the block: the floor
BLOCK_SPAN = 144  # bytes between the touch row's blocks: a 16-256 byte block's mean size


class LoopHeap:
    """Free and malloc that do nothing with memory, called as a heap's are."""

    policy = None

    def __init__(self) -> None:
        self.free = set().discard
        self.malloc = operator.neg  # a new int object, as a malloc returns

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


class TouchHeap(LoopHeap):
    """The loop's heap, whose free reads one word of the block it is handed.

    Its pointers are word indices into a resident anonymous mapping, the
    blocks BLOCK_SPAN bytes apart, so that ``free`` is the memoryview's own
    item read: nothing but the read is added to the loop.
    """

    def __init__(self, live: int) -> None:
        super().__init__()
        self.region = mmap.mmap(-1, (live + 1) * BLOCK_SPAN)
        self.region.write(b"\x01" * len(self.region))  # resident, as a heap's blocks are
        self.words = memoryview(self.region).cast("Q")
        self.free = self.words.__getitem__

    def close(self) -> None:
        self.free = set().discard
        self.words.release()
        self.region.close()


class GlibcHeap(GlibcMalloc):
    """glibc behind the same calls as a pyalloc heap (check and close free everything)."""

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def fill(heap: Any, sizes: list[int]) -> list[int]:
    """Malloc every size; engine heaps grow by exactly each block, without searching."""
    if isinstance(heap, TouchHeap):  # word indices, a block apart
        return [(i + 1) * (BLOCK_SPAN // 8) for i in range(len(sizes))]
    if isinstance(heap, LoopHeap):  # pointers as far apart as the blocks would be
        return [(i + 1) << 8 for i in range(len(sizes))]
    if getattr(heap, "policy", None) is None:  # the buddy system, glibc: their own malloc
        malloc = heap.malloc
        return [malloc(n) for n in sizes]
    extend = heap._extend
    return [extend(block_size_for(n), n, False) + HEADER for n in sizes]


class Subject:
    """One filled heap and the pairs still to run on it, timed segment by segment."""

    def __init__(self, policy: str, live: int, pairs: int, seed: int) -> None:
        rng = random.Random(seed * 1_000_003 + live)
        lo, hi = SIZES
        fill_sizes = [rng.randint(lo, hi) for _ in range(live)]
        self.victims = [rng.randrange(live) for _ in range(pairs)]
        self.sizes = [rng.randint(lo, hi) for _ in range(pairs)]
        self.policy = policy
        self.live = live
        capacity = max(MIN_CAPACITY, live * CAPACITY_PER_BLOCK)
        self.heap: Any
        if policy == GLIBC:
            self.heap = GlibcHeap()
        elif policy == LOOP:
            self.heap = LoopHeap()
        elif policy == TOUCH:
            self.heap = TouchHeap(live)
        else:
            self.heap = make_heap(policy, capacity, lock=False, cache=False)
        started = time.perf_counter()
        self.pointers = fill(self.heap, fill_sizes)
        self.fill_seconds = time.perf_counter() - started
        self.done = 0
        self.cpu = 0.0
        self.segments: list[float] = []  # ns per operation
        self.step = 1  # pairs between clock reads, doubled while they are fast

    def finished(self, budget: float) -> bool:
        return self.done >= len(self.victims) or self.cpu > budget

    def segment(self) -> None:
        """Run up to SEGMENT pairs (fewer if they take over SEGMENT_SECONDS)."""
        heap_free = self.heap.free
        malloc = self.heap.malloc
        pointers, victims, sizes = self.pointers, self.victims, self.sizes
        clock = time.process_time
        total = len(victims)
        done = self.done
        pairs = 0
        start = now = clock()
        while done < total and pairs < SEGMENT:
            stop = min(done + self.step, total)
            for i in range(done, stop):
                slot = victims[i]
                heap_free(pointers[slot])
                pointers[slot] = malloc(sizes[i])
            pairs += stop - done
            done = stop
            now = clock()
            if now - start > SEGMENT_SECONDS:
                break
            self.step = min(self.step * 2, 64)
        self.done = done
        self.cpu += now - start
        self.segments.append((now - start) * 1e9 / (2 * pairs))

    def result(self) -> Run:
        return Run(
            self.policy,
            self.live,
            self.done,
            self.cpu,
            statistics.median(self.segments),
            self.fill_seconds,
            self.done < len(self.victims),
        )

    def close(self) -> None:
        if self.live <= 10_000:
            self.heap.check()  # a full walk: affordable at the small size only
        if isinstance(self.heap, GlibcHeap):
            for pointer in self.pointers:
                self.heap.free(pointer)
        self.heap.close()


def measure(policy: str, lives: list[int], pairs: int, budget: float, seed: int) -> list[Run]:
    """Fill a heap per size, then time their segments in turn.

    Alternating keeps the sizes comparable on a busy machine: whatever else
    runs slows the segments of every size alike.
    """
    subjects: list[Subject] = []
    try:
        for live in lives:
            subjects.append(Subject(policy, live, pairs, seed))
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            while True:
                running = [s for s in subjects if not s.finished(budget)]
                if not running:
                    break
                for subject in running:
                    subject.segment()
        finally:
            if gc_was_enabled:
                gc.enable()
        return [subject.result() for subject in subjects]
    finally:
        for subject in subjects:
            subject.close()


def _fmt_ns(run: Run) -> str:
    mark = "*" if run.capped else " "
    return f"{run.ns_per_op:>11,.0f}{mark}"


def net_ratio(results: dict[tuple[str, int], Run], policy: str, small: int, large: int) -> float:
    """``policy``'s ratio from ``small`` to ``large`` net of the loop's own cost."""
    loop_small, loop_large = results[LOOP, small].ns_per_op, results[LOOP, large].ns_per_op
    return (results[policy, large].ns_per_op - loop_large) / max(
        results[policy, small].ns_per_op - loop_small, 1.0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policies",
        default=",".join(ALL_POLICIES),
        help=f"comma-separated (default: {','.join(ALL_POLICIES)})",
    )
    parser.add_argument(
        "--sizes", default="1000,1000000", help="live block counts (default: 1000,1000000)"
    )
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"timed pairs (default {PAIRS})")
    parser.add_argument(
        "--budget", type=float, default=BUDGET, help=f"CPU seconds per timed run (default {BUDGET})"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="sizes 1000,100000 and 5000 pairs, budget 3 s"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.pairs, args.budget = "1000,100000", 5000, 3.0
    policies = [name.strip() for name in args.policies.split(",") if name.strip()]
    if GLIBC not in policies:
        policies.append(GLIBC)  # the peer of the targets
    for control in (LOOP, TOUCH):
        if control not in policies:
            policies.append(control)
    unknown = [name for name in policies if name not in (*ALL_POLICIES, GLIBC, LOOP, TOUCH)]
    if unknown:
        parser.error(f"unknown policy {unknown[0]!r}; choose from {', '.join(ALL_POLICIES)}")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) < 2 or sizes[0] < 1:
        parser.error("--sizes needs at least two positive counts")

    print(f"engine: {pyalloc.ENGINE} (pyalloc.COMPILED = {pyalloc.COMPILED})")
    print(
        f"policy scaling: {args.pairs} free+malloc pairs after filling N blocks of "
        f"{SIZES[0]}-{SIZES[1]} bytes; lock=False, cache=False; "
        f"budget {args.budget:g} CPU s per run",
        flush=True,
    )
    results: dict[tuple[str, int], Run] = {}
    wall = time.perf_counter()
    for step, policy in enumerate(policies, 1):
        print(f"  [{step}/{len(policies)}] {policy:<10} ...", end=" ", flush=True)
        runs = measure(policy, sizes, args.pairs, args.budget, args.seed)
        notes = []
        for run in runs:
            results[policy, run.live] = run
            capped = f" (stopped after {run.pairs} pairs)" if run.capped else ""
            notes.append(
                f"N={run.live:,}: fill {run.fill_seconds:.1f} s, "
                f"{run.seconds:.2f} CPU s{capped}, {run.ns_per_op:,.0f} ns/op"
            )
        print("; ".join(notes), flush=True)

    small, large = sizes[0], sizes[-1]
    header = (
        f"{'policy':<11}" + "".join(f"{f'N={n:,}':>13}" for n in sizes) + f"{'ratio':>9}{'net':>8}"
    )
    print()
    print("ns per operation (malloc or free; median of segments, CPU time), at N live blocks")
    print(header)
    print("-" * len(header))
    for policy in policies:
        row = [results[policy, n] for n in sizes]
        ratio = results[policy, large].ns_per_op / results[policy, small].ns_per_op
        net = "" if policy == LOOP else f"{net_ratio(results, policy, small, large):>7.1f}x"
        print(
            f"{policy:<11}" + "".join(f"{_fmt_ns(run):>13}" for run in row) + f"{ratio:>8.1f}x{net}"
        )
    print("net: the ratio with the loop's own ns/op taken off at both sizes")
    if any(run.capped for run in results.values()):
        print(
            f"* stopped by the {args.budget:g} s budget: median over the segments completed "
            "(the first pairs of a run, before free blocks pile up, are the cheapest)"
        )

    slowest = max(
        (name for name in policies if name not in (LOOP, TOUCH)),
        key=lambda name: results[name, large].ns_per_op,
    )
    print()
    print(f"slowest at N={large:,}: {slowest}")
    glibc = results[GLIBC, large].ns_per_op / results[GLIBC, small].ns_per_op
    print(f"glibc: {glibc:.2f}x from N={small:,} to N={large:,} (the peer of the target)")
    loop = results[LOOP, small].ns_per_op, results[LOOP, large].ns_per_op
    print(
        f"the loop alone: {loop[0]:,.0f} -> {loop[1]:,.0f} ns/op; net of it, glibc grows "
        f"{net_ratio(results, GLIBC, small, large):.2f}x"
    )
    floor = results[TOUCH, large].ns_per_op
    print(
        f"the floor (the loop and one read of the freed block): "
        f"{results[TOUCH, small].ns_per_op:,.0f} -> {floor:,.0f} ns/op"
    )
    for name in ("segregated", "tlsf"):
        if name in policies:
            ratio = results[name, large].ns_per_op / results[name, small].ns_per_op
            verdict = "PASS" if ratio <= glibc else "MISS"
            allowed = glibc * results[name, small].ns_per_op
            print(
                f"{verdict}  {name}: {ratio:.2f}x from N={small:,} to N={large:,}"
                f" (target: no more than glibc's {glibc:.2f}x);"
                f" net of the loop {net_ratio(results, name, small, large):.2f}x"
            )
            print(
                f"      the target allows {allowed:,.0f} ns/op at N={large:,}: "
                + ("below" if allowed < floor else "above")
                + f" the floor's {floor:,.0f}"
            )
    print(f"total {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
