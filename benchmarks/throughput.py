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
the best time is kept.  pyalloc and multiprocessing.heap get a fresh heap for
every measurement; glibc keeps the process's heap.

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

Traces: the classic malloc-lab traces in ``shared/traces/classic`` beside the
repository when present, else generated workloads (``--generated`` forces
them).  Traces with fewer than 100 ops are shown but left out of averages:
they are too short to time and too small to judge utilization.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
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
    make: Callable[[], Any]  # a fresh allocator (or the shared one)
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

        def make_pyalloc() -> Any:
            return heap_class(**options)

        def release_pyalloc(heap: Any, pointers: list[int]) -> None:
            heap.close()

        peers.append(Peer(PYALLOC, make_pyalloc, release_pyalloc))

    libc = GlibcMalloc()

    def release_libc(allocator: Any, pointers: list[int]) -> None:
        for pointer in pointers:
            allocator.free(pointer)

    peers.append(Peer(GLIBC, lambda: libc, release_libc))

    def release_multiprocessing(allocator: Any, pointers: list[int]) -> None:
        allocator.close()

    peers.append(Peer(MULTIPROCESSING, MultiprocessingHeap, release_multiprocessing))
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
                allocator = peer.make()
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
        heap = pyalloc_peer.make()
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
    notes: list[str]


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def summarize(workloads: list[Workload], results: dict[str, Result]) -> Summary:
    rows: list[list[str]] = []
    totals = {PYALLOC: 0, GLIBC: 0, MULTIPROCESSING: 0}
    complete_ops = 0  # ops of the averaged traces every allocator ran
    glibc_ratios: list[float] = []
    mp_ratios: list[float] = []
    utilizations: list[tuple[float, int]] = []
    notes: list[str] = []
    for workload in workloads:
        result = results[workload.name]
        count = len(workload.ops)
        times = {label: ns_per_op(result, label, count) for label in totals}
        vs_glibc = ratio(times[PYALLOC], times[GLIBC])
        mp_speedup = ratio(times[MULTIPROCESSING], times[PYALLOC])
        utilization = result.utilization
        marker = "" if workload.averaged else " *"
        rows.append(
            [
                workload.name + marker,
                str(count),
                fmt(times[PYALLOC], ".0f"),
                fmt(times[GLIBC], ".0f"),
                fmt(times[MULTIPROCESSING], ".0f"),
                fmt(vs_glibc, ".2f", "x"),
                fmt(mp_speedup, ".1f", "x"),
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
        if utilization is not None:
            utilizations.append((utilization, workload.weight))

    averaged = [workload for workload in workloads if workload.averaged]
    all_ran = complete_ops == sum(len(workload.ops) for workload in averaged) and complete_ops
    overall = {label: (totals[label] / complete_ops if all_ran else None) for label in totals}
    overall_vs_glibc = ratio(overall[PYALLOC], overall[GLIBC])
    overall_mp = ratio(overall[MULTIPROCESSING], overall[PYALLOC])
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
        fmt(overall_vs_glibc, ".2f", "x"),
        fmt(overall_mp, ".1f", "x"),
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
    short = [workload.name for workload in workloads if not workload.averaged]
    if short:
        notes.insert(
            0,
            f"* fewer than {MIN_OPS_TO_AVERAGE} ops, not averaged: {', '.join(short)}",
        )
    return Summary(rows, average_row, targets, notes)


HEADERS = [
    "trace",
    "ops",
    "pyalloc ns/op",
    "glibc ns/op",
    "mp.heap ns/op",
    "pyalloc/glibc",
    "mp/pyalloc",
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
        console = Console(width=120)  # a file or pipe gets the whole table
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
        (peer.make().name for peer in peers if peer.label == GLIBC), "glibc unavailable"
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
