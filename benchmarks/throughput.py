"""Throughput and utilization: pyalloc against glibc malloc and multiprocessing.heap.

Every trace is replayed by one loop, identical for every allocator::

    a ID SIZE  ->  pointers[ID] = malloc(SIZE)
    f ID       ->  free(pointers[ID]); pointers[ID] = 0
    r ID SIZE  ->  pointers[ID] = realloc(pointers[ID], SIZE)

(the C semantics documented in ``pyalloc.trace.rep``: freeing a NULL does
nothing, realloc of NULL allocates, realloc to 0 frees).  Ops are converted
to tuples beforehand and the garbage collector is off while a loop runs, so
a measurement is the loop plus the allocator's calls.  The loop's own cost is
in every column; the ratios therefore understate differences a little.

Each (trace, allocator) pair is timed ``--repeat`` times, the allocators in a
rotating order within each round so that none is always measured first, and
the best time is kept.  pyalloc, multiprocessing.heap and the floors get a
fresh heap for every measurement; glibc keeps the process's heap.

Utilization (pyalloc only) comes from a separate, untimed replay on a fresh
heap that also tracks the live payload: peak live payload divided by
``stats()['peak_heap_bytes']``, as the malloc lab defines it.  That replay
ends with ``check()``.

Averages: "per op" is the sum of the best times over the sum of ops of the
averaged traces (so long traces weigh more); the geometric mean of the
per-trace ratios, which weighs every trace alike, is printed beside it.
Utilization is averaged with the traces' header weights.  The targets are
judged on the per-op figures:

    pyalloc ns/op            <= 2 x glibc ns/op
    multiprocessing ns/op    >= 4 x pyalloc ns/op
    average utilization      >= 85 %

The floor: a fourth peer, defined here, that does only what every pyalloc
call must do and nothing more: hold a per-heap ``threading.Lock``, check the
size's type, bump a break (no reuse, no free lists), write one header word
tagged and keyed as pyalloc's are per malloc, and check one per free.  Its
ns/op is a lower bound for any allocator that keeps pyalloc's lock and
header checks on this interpreter, so ``floor/glibc`` shows how far the
glibc target can be reached at all.  The same run also times the floor
without the tag and without the lock (the "floor breakdown").

Traces: the classic malloc-lab traces in ``shared/traces/classic`` beside the
repository when present, else generated workloads (``--generated`` forces
them).  Traces with fewer than 100 ops are shown but left out of averages:
they are too short to time and too small to judge utilization.
"""

from __future__ import annotations

import argparse
import gc
import math
import mmap
import platform
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLASSIC_DIR = ROOT.parent / "shared" / "traces" / "classic"

try:
    import pyalloc  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from pyalloc.allocator import Allocator, check_size  # noqa: E402
from pyalloc.trace.generate import GENERATORS  # noqa: E402
from pyalloc.trace.reference import GlibcMalloc, MultiprocessingHeap  # noqa: E402
from pyalloc.trace.rep import Trace, read_trace  # noqa: E402

try:
    from pyalloc import heap as pyalloc_heap
except ImportError:
    pyalloc_heap = None  # type: ignore[assignment]

# Targets; see the summary printed at the end.
TARGET_GLIBC_RATIO = 2.0  # pyalloc ns/op <= this x glibc through ctypes
TARGET_MP_SPEEDUP = 4.0  # multiprocessing.heap ns/op >= this x pyalloc
TARGET_UTILIZATION = 0.85  # average over the averaged traces
MIN_OPS_TO_AVERAGE = 100
GENERATED_OPS = 12_000
GENERATED_SEED = 1

PYALLOC = "pyalloc"
GLIBC = "glibc"
MULTIPROCESSING = "multiprocessing"
FLOOR = "floor"
FLOOR_UNTAGGED = "floor, no tag"
FLOOR_UNLOCKED = "floor, no lock"

OpTuple = tuple[str, int, int]


@dataclass
class Workload:
    name: str
    ops: list[OpTuple]
    num_ids: int
    weight: int

    @property
    def averaged(self) -> bool:
        return len(self.ops) >= MIN_OPS_TO_AVERAGE


@dataclass
class Peer:
    label: str
    make: Callable[[Workload], Any]  # a fresh allocator for a workload (or the shared one)
    release: Callable[[Any, list[int]], None]  # frees what a replay left live


@dataclass
class Result:
    best_ns: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    peak_payload: int = 0
    peak_heap: int = 0

    @property
    def utilization(self) -> float | None:
        return self.peak_payload / self.peak_heap if self.peak_heap else None


def replay(allocator: Any, ops: list[OpTuple], num_ids: int) -> tuple[int, list[int]]:
    """Run ``ops`` through ``allocator``; return (nanoseconds, pointers left)."""
    malloc = allocator.malloc
    free = allocator.free
    realloc = allocator.realloc
    pointers = [0] * num_ids
    gc_was_enabled = gc.isenabled()
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
        if gc_was_enabled:
            gc.enable()
    return elapsed, pointers


def measure_utilization(heap: Any, ops: list[OpTuple], num_ids: int) -> tuple[int, int]:
    """Replay with live-payload tracking; return (peak payload, peak heap bytes).

    An ``a`` on an id that is still live leaks the old block, as in C; its
    payload stays counted as live.
    """
    pointers = [0] * num_ids
    sizes = [0] * num_ids
    live = peak = 0
    for kind, block_id, size in ops:
        old = pointers[block_id]
        if kind == "a":
            pointers[block_id] = heap.malloc(size)
            sizes[block_id] = size
            live += size
        elif kind == "f":
            heap.free(old)
            if old:
                live -= sizes[block_id]
            pointers[block_id] = sizes[block_id] = 0
        else:
            new = heap.realloc(old, size)
            if old:
                live -= sizes[block_id]
            if new:
                live += size
            pointers[block_id] = new
            sizes[block_id] = size if new else 0
        if live > peak:
            peak = live
    heap.check()
    peak_heap = int(heap.stats()["peak_heap_bytes"])
    for pointer in pointers:
        heap.free(pointer)
    heap.check()
    return peak, peak_heap


# -- the floor ------------------------------------------------------------------
# Header word as in pyalloc.layout: allocated bit 0, size in bits 4-37, tag in
# bits 44-63; the constants are written out in the hot paths (a global costs a
# dictionary lookup per use).
FLOOR_HEAP_START = 8  # the first header: payloads are 16-byte aligned, never 0


def floor_block_sizes(workload: Workload) -> list[int]:
    """The blocks a bump allocator takes replaying ``workload``, in order.

    ``a`` takes a block; ``r`` takes one unless it frees a live block
    (``realloc(p, 0)``); ``realloc(0, 0)`` is ``malloc(0)``, as in pyalloc.
    """
    live = [False] * workload.num_ids
    sizes: list[int] = []
    for kind, block_id, size in workload.ops:
        if kind == "a" or (kind == "r" and (size or not live[block_id])):
            sizes.append(max((size + 23) & ~15, 32))
            live[block_id] = True
        else:
            live[block_id] = False
    return sizes


def floor_header_error(p: int) -> Exception:
    return ValueError(f"block {p} is not live: freed already, or its header is corrupted")


class Floor(Allocator):
    """The least a pyalloc call can do: a locked bump allocator with checked headers.

    Its entry points are pyalloc's own (``pyalloc.allocator.Allocator``):
    every call holds a per-heap ``threading.Lock`` around a call of the
    primitive, as pyalloc's default heap does.  malloc
    checks the size's type, rounds it up to a block as pyalloc does, bumps
    the break and writes one header word:
    ``(body | tag << 44) ^ header_key`` with pyalloc's tag,
    ``hash((body, b ^ secret)) & 0xFFFFF``.  Nothing is reused: there are no
    free lists, no splitting, no coalescing.  free checks that word's tag and
    allocated bit and stores it back with the bit cleared; the tag is left
    as it was, so the freed header no longer verifies and a second free
    fails the check (re-tagging it would cost one more hash, and a bump
    allocator never reads a freed header otherwise).  The tag check is the
    only validation of a pointer (pyalloc checks range and alignment first).

    The region holds every block the trace takes, so the break never wraps
    and every free checks the header its malloc wrote.  It is address space
    only (1.4 GiB for realloc-bal): the words the headers land in are touched
    here, before timing, so the replay takes no page faults for them
    (pyalloc, reusing its blocks, takes few).
    """

    def __init__(self, block_sizes: Sequence[int]) -> None:
        self.capacity = FLOOR_HEAP_START + sum(block_sizes)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        self._map = mmap.mmap(-1, self.capacity, flags=flags)
        self._words = memoryview(self._map).cast("Q")
        header = FLOOR_HEAP_START
        for size in block_sizes:
            self._words[header >> 3] = 0
            header += size
        self._brk = FLOOR_HEAP_START
        self._header_key = secrets.randbits(64)
        self._tag_secret = secrets.randbits(64)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._words.release()
        self._map.close()

    def _malloc(self, size: int) -> int:
        if size.__class__ is not int or size < 0:
            size = check_size(size)
        need = (size + 23) & ~15
        if need < 32:
            need = 32
        b = self._brk
        if b + need > self.capacity:
            raise MemoryError(f"cannot allocate {size} bytes: the floor's region is full")
        self._brk = b + need
        body = need | 1
        self._words[b >> 3] = (
            body | (hash((body, b ^ self._tag_secret)) & 0xFFFFF) << 44
        ) ^ self._header_key
        return b + 8

    def _free(self, p: int) -> None:
        if not p:
            return
        b = p - 8
        word = self._words[b >> 3]
        plain = word ^ self._header_key
        body = plain & 0xFFFFFFFFFFF
        if plain >> 44 != hash((body, b ^ self._tag_secret)) & 0xFFFFF or not body & 1:
            raise floor_header_error(p)
        self._words[b >> 3] = word ^ 1

    def _resize(self, p: int, size: int) -> int:
        """realloc of a live ``p``, without copying any bytes.

        ``realloc(p, 0)`` frees ``p`` and returns 0, else a new block is taken
        and ``p`` freed (no resizing in place; the new block first, so that a
        refused request leaves ``p`` live, as in C).  The payload is not
        copied: the copy is the caller's data, not the bookkeeping this floor
        measures.
        """
        if not size:
            self._free(p)
            return 0
        q = self._malloc(size)
        self._free(p)
        return q


class FloorWithoutTag(Floor):
    """The floor with a plain header word: no key, no tag; the same lock."""

    def _malloc(self, size: int) -> int:
        if size.__class__ is not int or size < 0:
            size = check_size(size)
        need = (size + 23) & ~15
        if need < 32:
            need = 32
        b = self._brk
        if b + need > self.capacity:
            raise MemoryError(f"cannot allocate {size} bytes: the floor's region is full")
        self._brk = b + need
        self._words[b >> 3] = need | 1
        return b + 8

    def _free(self, p: int) -> None:
        if not p:
            return
        b = p - 8
        body = self._words[b >> 3]
        if not body & 1:
            raise floor_header_error(p)
        self._words[b >> 3] = body ^ 1


class FloorWithoutLock(Floor):
    """The floor with its tagged headers and no lock (one thread only), as
    pyalloc's ``lock=False``: the primitives are the entry points."""

    def __init__(self, block_sizes: Sequence[int]) -> None:
        super().__init__(block_sizes)
        self._unlocked_entry_points()


def load_workloads(generated: bool, trace_dir: Path | None) -> tuple[str, list[Workload]]:
    traces: list[Trace]
    directory = trace_dir if trace_dir is not None else CLASSIC_DIR
    if not generated and directory.is_dir() and any(directory.glob("*.rep*")):
        paths = sorted(directory.glob("*.rep")) + sorted(directory.glob("*.rep.gz"))
        traces = [read_trace(path) for path in paths]
        source = str(directory)
    else:
        if trace_dir is not None and not generated:
            raise SystemExit(f"no .rep traces in {trace_dir}")
        traces = [
            generator(GENERATED_OPS, GENERATED_SEED) for _, generator in sorted(GENERATORS.items())
        ]
        source = f"generated ({GENERATED_OPS} ops, seed {GENERATED_SEED})"
    workloads = [
        Workload(
            name=trace.name,
            ops=[(op.kind, op.id, op.size) for op in trace.ops],
            num_ids=trace.num_ids,
            weight=trace.weight,
        )
        for trace in traces
    ]
    return source, workloads


def make_peers(policy: str | None, lock: bool | None) -> tuple[list[Peer], str | None]:
    """The allocators to compare; the second item says why pyalloc is missing."""
    peers: list[Peer] = []
    missing: str | None = None
    heap_class = getattr(pyalloc_heap, "Heap", None)
    if heap_class is None:
        missing = "pyalloc.heap.Heap is not available"
    else:
        options: dict[str, Any] = {}
        if policy is not None:
            options["policy"] = policy
        if lock is not None:
            options["lock"] = lock

        def make_pyalloc(workload: Workload) -> Any:
            return heap_class(**options)

        def release_pyalloc(heap: Any, pointers: list[int]) -> None:
            heap.close()

        peers.append(Peer(PYALLOC, make_pyalloc, release_pyalloc))

    libc = GlibcMalloc()

    def release_libc(allocator: Any, pointers: list[int]) -> None:
        for pointer in pointers:
            allocator.free(pointer)

    peers.append(Peer(GLIBC, lambda workload: libc, release_libc))

    def release_multiprocessing(allocator: Any, pointers: list[int]) -> None:
        allocator.close()

    peers.append(
        Peer(MULTIPROCESSING, lambda workload: MultiprocessingHeap(), release_multiprocessing)
    )

    block_sizes: dict[str, list[int]] = {}  # by workload name, computed once

    def floor_maker(floor_class: type[Floor]) -> Callable[[Workload], Floor]:
        def make_floor(workload: Workload) -> Floor:
            sizes = block_sizes.get(workload.name)
            if sizes is None:
                sizes = block_sizes[workload.name] = floor_block_sizes(workload)
            return floor_class(sizes)

        return make_floor

    def release_floor(allocator: Any, pointers: list[int]) -> None:
        allocator.close()

    peers.append(Peer(FLOOR, floor_maker(Floor), release_floor))
    peers.append(Peer(FLOOR_UNTAGGED, floor_maker(FloorWithoutTag), release_floor))
    peers.append(Peer(FLOOR_UNLOCKED, floor_maker(FloorWithoutLock), release_floor))
    return peers, missing


class Progress:
    """Rich progress bar when rich is installed, dots on stderr otherwise.

    The rich bar is refreshed by hand between measurements (no refresh
    thread competing with the timed loops for the GIL).
    """

    def __init__(self, total: int, plain: bool = False) -> None:
        self.total = total
        self.done = 0
        self._rich: Any = None
        if plain:
            return
        try:
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        self._rich = RichProgress(auto_refresh=False, transient=True)
        self._task = self._rich.add_task("replaying", total=total)

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.total:
            print(file=sys.stderr)

    def step(self, description: str) -> None:
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, advance=1, description=description)
            self._rich.refresh()
        elif self.done % 10 == 0 or self.done == self.total:
            print(f"\r{self.done}/{self.total} {description:<40}", end="", file=sys.stderr)


def run(
    workloads: list[Workload], peers: list[Peer], repeats: int, progress: Progress
) -> dict[str, Result]:
    results = {workload.name: Result() for workload in workloads}
    for round_index in range(repeats):
        for trace_index, workload in enumerate(workloads):
            result = results[workload.name]
            shift = (round_index + trace_index) % len(peers)
            for peer in peers[shift:] + peers[:shift]:
                progress.step(f"{workload.name} / {peer.label}")
                if peer.label in result.errors:
                    continue
                allocator = peer.make(workload)
                try:
                    elapsed, left = replay(allocator, workload.ops, workload.num_ids)
                except Exception as exc:  # report, do not hide, a failing allocator
                    result.errors[peer.label] = f"{type(exc).__name__}: {exc}"
                    continue
                peer.release(allocator, left)
                best = result.best_ns.get(peer.label)
                if best is None or elapsed < best:
                    result.best_ns[peer.label] = elapsed
    return results


def add_utilization(
    workloads: list[Workload], peers: list[Peer], results: dict[str, Result]
) -> None:
    pyalloc_peer = next((peer for peer in peers if peer.label == PYALLOC), None)
    if pyalloc_peer is None:
        return
    for workload in workloads:
        result = results[workload.name]
        if PYALLOC in result.errors:
            continue
        heap = pyalloc_peer.make(workload)
        try:
            result.peak_payload, result.peak_heap = measure_utilization(
                heap, workload.ops, workload.num_ids
            )
        except Exception as exc:
            result.errors[PYALLOC] = f"{type(exc).__name__}: {exc}"
        finally:
            heap.close()


def ns_per_op(result: Result, label: str, ops: int) -> float | None:
    best = result.best_ns.get(label)
    return best / ops if best is not None and ops else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def geometric_mean(values: Sequence[float]) -> float | None:
    if not values:
        return None
    return math.exp(sum(math.log(value) for value in values) / len(values))


@dataclass
class Summary:
    rows: list[list[str]]
    average_row: list[str]
    targets: list[tuple[str, str, bool | None]]  # (what, measured, passed)
    floor_lines: list[str]
    notes: list[str]


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def summarize(workloads: list[Workload], results: dict[str, Result]) -> Summary:
    rows: list[list[str]] = []
    totals = {PYALLOC: 0, GLIBC: 0, MULTIPROCESSING: 0, FLOOR: 0}
    complete_ops = 0  # ops of the averaged traces every allocator ran
    glibc_ratios: list[float] = []
    mp_ratios: list[float] = []
    floor_ratios: list[float] = []
    utilizations: list[tuple[float, int]] = []
    notes: list[str] = []
    for workload in workloads:
        result = results[workload.name]
        count = len(workload.ops)
        times = {label: ns_per_op(result, label, count) for label in totals}
        vs_glibc = ratio(times[PYALLOC], times[GLIBC])
        mp_speedup = ratio(times[MULTIPROCESSING], times[PYALLOC])
        floor_vs_glibc = ratio(times[FLOOR], times[GLIBC])
        utilization = result.utilization
        marker = "" if workload.averaged else " *"
        rows.append(
            [
                workload.name + marker,
                str(count),
                fmt(times[PYALLOC], ".0f"),
                fmt(times[GLIBC], ".0f"),
                fmt(times[MULTIPROCESSING], ".0f"),
                fmt(times[FLOOR], ".0f"),
                fmt(vs_glibc, ".2f", "x"),
                fmt(mp_speedup, ".1f", "x"),
                fmt(floor_vs_glibc, ".2f", "x"),
                fmt(None if utilization is None else 100 * utilization, ".1f", "%"),
            ]
        )
        for label, message in sorted(result.errors.items()):
            notes.append(f"{workload.name}: {label} failed: {message}")
        if not workload.averaged:
            continue
        if all(label in result.best_ns for label in totals):
            complete_ops += count
            for label in totals:
                totals[label] += result.best_ns[label]
        if vs_glibc is not None:
            glibc_ratios.append(vs_glibc)
        if mp_speedup is not None:
            mp_ratios.append(mp_speedup)
        if floor_vs_glibc is not None:
            floor_ratios.append(floor_vs_glibc)
        if utilization is not None:
            utilizations.append((utilization, workload.weight))

    averaged = [workload for workload in workloads if workload.averaged]
    all_ran = complete_ops == sum(len(workload.ops) for workload in averaged) and complete_ops
    overall = {label: (totals[label] / complete_ops if all_ran else None) for label in totals}
    overall_vs_glibc = ratio(overall[PYALLOC], overall[GLIBC])
    overall_mp = ratio(overall[MULTIPROCESSING], overall[PYALLOC])
    overall_floor = ratio(overall[FLOOR], overall[GLIBC])
    weight_sum = sum(weight for _, weight in utilizations)
    mean_utilization = (
        sum(value * weight for value, weight in utilizations) / weight_sum
        if weight_sum and len(utilizations) == len(averaged)
        else None
    )
    average_row = [
        f"all {len(averaged)} (per op)",
        str(complete_ops),
        fmt(overall[PYALLOC], ".0f"),
        fmt(overall[GLIBC], ".0f"),
        fmt(overall[MULTIPROCESSING], ".0f"),
        fmt(overall[FLOOR], ".0f"),
        fmt(overall_vs_glibc, ".2f", "x"),
        fmt(overall_mp, ".1f", "x"),
        fmt(overall_floor, ".2f", "x"),
        fmt(None if mean_utilization is None else 100 * mean_utilization, ".1f", "%"),
    ]
    geo_glibc = geometric_mean(glibc_ratios)
    geo_mp = geometric_mean(mp_ratios)
    targets: list[tuple[str, str, bool | None]] = [
        (
            f"pyalloc <= {TARGET_GLIBC_RATIO:g}x glibc through ctypes, per op",
            f"{fmt(overall_vs_glibc, '.2f', 'x')} (geometric mean of traces "
            f"{fmt(geo_glibc, '.2f', 'x')})",
            None if overall_vs_glibc is None else overall_vs_glibc <= TARGET_GLIBC_RATIO,
        ),
        (
            f"pyalloc >= {TARGET_MP_SPEEDUP:g}x faster than multiprocessing.heap.Heap",
            f"{fmt(overall_mp, '.1f', 'x')} (geometric mean of traces {fmt(geo_mp, '.1f', 'x')})",
            None if overall_mp is None else overall_mp >= TARGET_MP_SPEEDUP,
        ),
        (
            f"average utilization >= {100 * TARGET_UTILIZATION:.0f}% "
            f"over the {len(averaged)} averaged traces",
            fmt(None if mean_utilization is None else 100 * mean_utilization, ".1f", "%"),
            None if mean_utilization is None else mean_utilization >= TARGET_UTILIZATION,
        ),
    ]
    floor_lines = [
        f"floor: the lock + one keyed header write per malloc + one checked header per free, "
        f"no free lists; floor/glibc above {TARGET_GLIBC_RATIO:g}x means the "
        f"{TARGET_GLIBC_RATIO:g}x-glibc target is below what any allocator with pyalloc's "
        f"lock and header checks can reach on this interpreter.",
        *floor_breakdown(workloads, results, len(averaged), geometric_mean(floor_ratios)),
    ]
    short = [workload.name for workload in workloads if not workload.averaged]
    if short:
        notes.insert(
            0,
            f"* fewer than {MIN_OPS_TO_AVERAGE} ops, not averaged: {', '.join(short)}",
        )
    return Summary(rows, average_row, targets, floor_lines, notes)


def per_op_over_averaged(
    workloads: list[Workload], results: dict[str, Result], label: str
) -> float | None:
    """Sum of best times over sum of ops of the averaged traces; None if one is missing."""
    total_ns = total_ops = 0
    for workload in workloads:
        if not workload.averaged:
            continue
        best = results[workload.name].best_ns.get(label)
        if best is None:
            return None
        total_ns += best
        total_ops += len(workload.ops)
    return total_ns / total_ops if total_ops else None


def floor_breakdown(
    workloads: list[Workload],
    results: dict[str, Result],
    averaged: int,
    floor_geometric_mean: float | None,
) -> list[str]:
    """What the tag and the lock each cost, from the floor and its two reductions."""
    glibc = per_op_over_averaged(workloads, results, GLIBC)
    floor = per_op_over_averaged(workloads, results, FLOOR)
    lines = [f"floor breakdown, per op over the {averaged} averaged traces:"]
    for label, what, dropped in (
        (FLOOR, "lock + tagged header (the floor)", ""),
        (FLOOR_UNTAGGED, "lock + plain header", "the tag"),
        (FLOOR_UNLOCKED, "tagged header, no lock", "the lock"),
    ):
        time_ns = per_op_over_averaged(workloads, results, label)
        if not dropped:
            cost = f"  (geometric mean of traces {fmt(floor_geometric_mean, '.2f', 'x')})"
        elif time_ns is not None and floor is not None:
            cost = f"  ({dropped} costs {floor - time_ns:.0f} ns/op)"
        else:
            cost = ""
        lines.append(
            f"  {what:<32} {fmt(time_ns, '6.0f', ' ns/op')}  "
            f"{fmt(ratio(time_ns, glibc), '.2f', 'x')} glibc{cost}"
        )
    return lines


HEADERS = [
    "trace",
    "ops",
    "pyalloc ns/op",
    "glibc ns/op",
    "mp.heap ns/op",
    "floor ns/op",
    "pyalloc/glibc",
    "mp/pyalloc",
    "floor/glibc",
    "pyalloc util",
]


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def print_report(summary: Summary, preamble: list[str], plain: bool) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        plain = True
    if plain:
        print_plain(summary, preamble)
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a file or pipe gets the whole table
    for line in preamble:
        console.print(line, highlight=False)
    table = Table(show_footer=False)
    for index, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=True)
    for row in summary.rows:
        table.add_row(*row)
    table.add_section()
    table.add_row(*summary.average_row, style="bold")
    console.print(table)
    for what, measured, passed in summary.targets:
        colour = {True: "green", False: "red", None: "yellow"}[passed]
        console.print(
            f"[{colour}]{verdict(passed):>4}[/{colour}]  {what}: {measured}", highlight=False
        )
    for line in summary.floor_lines:
        console.print(line, highlight=False, markup=False)
    for note in summary.notes:
        console.print(note, highlight=False, markup=False)


def print_plain(summary: Summary, preamble: list[str]) -> None:
    for line in preamble:
        print(line)
    rows = [HEADERS, *summary.rows, summary.average_row]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADERS))]

    def format_row(row: list[str]) -> str:
        cells = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells)

    print(format_row(HEADERS))
    print("  ".join("-" * width for width in widths))
    for row in summary.rows:
        print(format_row(row))
    print("  ".join("-" * width for width in widths))
    print(format_row(summary.average_row))
    print()
    for what, measured, passed in summary.targets:
        print(f"{verdict(passed):>4}  {what}: {measured}")
    for line in summary.floor_lines:
        print(line)
    for note in summary.notes:
        print(note)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="2 repeats instead of the default (a rough look)"
    )
    parser.add_argument("--repeat", type=int, help="timed repeats per trace and allocator")
    parser.add_argument("--policy", help="pyalloc free-block policy (Heap(policy=...))")
    parser.add_argument(
        "--no-lock", action="store_true", help="pyalloc heap without its lock (Heap(lock=False))"
    )
    parser.add_argument(
        "--generated", action="store_true", help="use generated workloads, not .rep traces"
    )
    parser.add_argument("--traces", type=Path, help="directory of .rep traces to replay")
    parser.add_argument("--plain", action="store_true", help="plain text output, even with rich")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeat if args.repeat is not None else (2 if args.quick else 5)
    if repeats < 1:
        raise SystemExit("--repeat must be at least 1")
    policies = getattr(pyalloc_heap, "POLICIES", None)
    if args.policy is not None and policies is not None and args.policy not in policies:
        raise SystemExit(f"unknown policy {args.policy!r}; choose one of: {', '.join(policies)}")

    started = time.perf_counter()
    source, workloads = load_workloads(args.generated, args.traces)
    peers, missing = make_peers(args.policy, False if args.no_lock else None)
    with Progress(repeats * len(workloads) * len(peers), plain=args.plain) as progress:
        results = run(workloads, peers, repeats, progress)
    add_utilization(workloads, peers, results)
    summary = summarize(workloads, results)

    glibc_name = next(
        (peer.make(workloads[0]).name for peer in peers if peer.label == GLIBC),
        "glibc unavailable",
    )
    options = [f"policy={args.policy or 'default'}"]
    if args.no_lock:
        options.append("lock=False")
    preamble = [
        f"traces: {source}",
        f"python {platform.python_version()} ({platform.machine()}), {glibc_name} via ctypes, "
        f"pyalloc {', '.join(options)}; best of {repeats}",
    ]
    if missing:
        preamble.append(f"pyalloc column empty: {missing}")
    print_report(summary, preamble, args.plain)
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
