"""Throughput: pyalloc compiled and interpreted, against glibc malloc and multiprocessing.heap.

Every trace is replayed by one loop (``replay_loop.py``), identical for
every allocator, with the C semantics of ``pyalloc.trace.rep``: a
measurement is the loop plus the allocator's calls, and the loop's own cost
is in every column.

Peers, all measured in the same run:

- **pyalloc**: the default ``Heap`` (lock and cache on) of the engine this
  process runs, normally the compiled one (the header says which);
- **interpreted**: the same, measured by a child process of this script with
  ``PYALLOC_PURE_PYTHON=1`` (the same ``.py`` files, interpreted);
- **glibc**: the C library's malloc through ctypes;
- **mp.heap**: the standard library's ``multiprocessing.heap.Heap``;
- **no slabs**: ``Heap(small=False)``, the default heap with every request a
  block with a header, as before slabs (per trace, and its ratio to pyalloc).

Each (trace, peer) is replayed once untimed (its pages touched), then timed
``--repeat`` times on the same allocator, what a replay leaves live freed
between runs, and the best kept: every peer is measured warm. The compiled
peers take turns, run by run, so that a passing disturbance of the machine
falls on one run of each, not on every run of one. Per-op
averages are total time over total ops of a trace set. A second section
times ``malloc(100)`` + ``free`` pairs, and a third pairs of small objects
only (16 to 128 bytes: slab objects), of blocks only (200 to 4000 bytes) and
of both mixed, with slabs and without, each allocator holding RESIDENT
objects of every size of the row live meanwhile (a program's heap is not
empty, and a class gets slabs only once SLAB_DEMAND of its objects live,
and at least as many as a slab has slots).
Utilization (default ``Heap``) is peak live payload /
``stats()['peak_heap_bytes']``.

Targets (issue: the compiled engine), printed with pass/fail at the end:

    pyalloc ns/op on each trace set      <= 0.5 x glibc
    pyalloc malloc(100)+free pair        <= 0.3 x glibc
    (slabs) per op on each trace set     <= 1.0 x no slabs
    (slabs) small-only pair              fastest of the pyalloc pair rows
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLASSIC_DIR = ROOT.parent / "shared" / "traces" / "classic"

try:
    import pyalloc
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))
    import pyalloc

from replay_loop import Workload, time_in_turns, time_warm  # noqa: E402

from pyalloc import Heap  # noqa: E402
from pyalloc.slab import SLAB_DEMAND, SLOTS  # noqa: E402
from pyalloc.trace.reference import GlibcMalloc, MultiprocessingHeap  # noqa: E402
from pyalloc.trace.rep import Trace, read_trace  # noqa: E402
from pyalloc.workloads import bundled_traces  # noqa: E402

TARGET_TRACE_RATIO = 0.5
TARGET_PAIR_RATIO = 0.3
PAIR_SIZE = 100
PYALLOC, INTERPRETED, GLIBC, MP = "pyalloc", "interpreted", "glibc", "mp.heap"
PEERS = (PYALLOC, INTERPRETED, GLIBC, MP)
NO_SLABS = "no slabs"
# Objects of each size of a pair row kept live while it runs: enough for
# every class to have its slabs.
RESIDENT = max(2 * SLAB_DEMAND, max(SLOTS))
PAIR_MIXES = {  # sizes a pair row cycles through
    "small only": (16, 32, 48, 64, 100, 128),
    "blocks only": (200, 500, 1000, 4000),
    "mixed": (16, 200, 48, 1000, 100, 4000),
}


def workloads_of(traces: Sequence[Trace]) -> list[Workload]:
    return [(t.name, [(op.kind, op.id, op.size) for op in t.ops], t.num_ids) for t in traces]


def time_peers(libc: GlibcMalloc, workload: Workload, repeat: int, policy: str) -> dict[str, int]:
    """ns of a replay of ``workload`` on each compiled peer, measured in turns."""
    with contextlib.ExitStack() as made:  # whatever was made is closed, even on a failure
        peers = {PYALLOC: Heap(policy=policy), GLIBC: libc}
        made.callback(peers[PYALLOC].close)
        peers[MP] = MultiprocessingHeap()
        made.callback(peers[MP].close)
        peers[NO_SLABS] = Heap(policy=policy, small=False)
        made.callback(peers[NO_SLABS].close)
        return time_in_turns(peers, workload, repeat)


def time_pairs(allocator: Any, pairs: int, repeat: int) -> float:
    """ns per malloc(PAIR_SIZE) + free pair, best of ``repeat``."""
    plan = [PAIR_SIZE] * pairs
    return min(time_plan(allocator.malloc, allocator.free, plan) for _ in range(repeat)) / pairs


def time_mixed_pairs(allocator: Any, sizes: Sequence[int], pairs: int, repeat: int) -> float:
    """ns per malloc + free pair cycling through ``sizes``, best of ``repeat``,
    with RESIDENT objects of each size live throughout."""
    malloc, free = allocator.malloc, allocator.free
    plan = [sizes[i % len(sizes)] for i in range(pairs)]
    resident = [malloc(size) for size in sizes for _ in range(RESIDENT)]
    try:
        return min(time_plan(malloc, free, plan) for _ in range(repeat)) / pairs
    finally:
        for pointer in resident:
            free(pointer)


def time_plan(malloc: Any, free: Any, plan: list[int]) -> int:
    """Nanoseconds of one malloc + free per size in ``plan``."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for size in plan:
            free(malloc(size))
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def utilization(workload: Workload, policy: str, small: bool = True) -> float:
    """Peak live payload / peak footprint of the default heap on ``workload``."""
    _, ops, num_ids = workload
    heap = Heap(policy=policy, small=small)
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
            live -= sizes[block_id] if old else 0
            pointers[block_id] = sizes[block_id] = 0
        else:
            new = heap.realloc(old, size)
            live += (size if new else 0) - (sizes[block_id] if old else 0)
            pointers[block_id] = new
            sizes[block_id] = size if new else 0
        peak = max(peak, live)
    heap.check()
    footprint = heap.stats()["peak_heap_bytes"]
    heap.close()
    return peak / footprint


# -- the interpreted engine, in a child process -----------------------------------------


def child_main(args: argparse.Namespace) -> int:
    """Time the traces and pairs with this process's engine; print JSON."""
    sets = load_sets(args.traces)
    out: dict[str, Any] = {"compiled": pyalloc.COMPILED, "traces": {}}
    for _, workloads in sets:
        for workload in workloads:
            with Heap(policy=args.policy) as heap:
                out["traces"][workload[0]] = time_warm(heap, workload, args.repeat)
    out["pair"] = time_pairs(Heap(policy=args.policy), args.pairs // 10, args.repeat)
    print(json.dumps(out))
    return 0


def run_interpreted(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYALLOC_PURE_PYTHON="1")
    command = [sys.executable, __file__, "--child", "--repeat", str(args.repeat)]
    command += ["--pairs", str(args.pairs), "--policy", args.policy]
    if args.traces:
        command += ["--traces", str(args.traces)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- trace sets -----------------------------------------------------------------------


def load_sets(trace_dir: Path | None) -> list[tuple[str, list[Workload]]]:
    """(label, workloads): the classic traces when present, and the bundled ones."""
    sets = []
    if trace_dir is not None:
        paths = sorted(trace_dir.glob("*.rep")) + sorted(trace_dir.glob("*.rep.gz"))
        if not paths:
            raise SystemExit(f"no .rep traces in {trace_dir}")
        return [(str(trace_dir), workloads_of([read_trace(p) for p in paths]))]
    if CLASSIC_DIR.is_dir():
        paths = [p for p in sorted(CLASSIC_DIR.glob("*.rep")) if "short" not in p.name]
        sets.append(
            ("classic (without the two short ones)", workloads_of([read_trace(p) for p in paths]))
        )
    sets.append(
        ("bundled (recorded programs)", workloads_of([read_trace(p) for p in bundled_traces()]))
    )
    return sets


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and pairs")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs, best kept")
    parser.add_argument("--pairs", type=int, default=200_000, help="malloc+free pairs timed")
    parser.add_argument("--policy", default="segregated", help="the heap's free-block policy")
    parser.add_argument("--traces", type=Path, help="a directory of .rep traces instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 1
        args.pairs = 50_000
    if args.child:
        return child_main(args)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"pyalloc engine in this process: {pyalloc.ENGINE} (pyalloc.COMPILED = {pyalloc.COMPILED})"
    )
    print(f"heap: Heap(policy={args.policy!r}), lock and cache on; best of {args.repeat} runs\n")
    sets = load_sets(args.traces)
    print("interpreted engine: measuring in a child process ...", file=sys.stderr)
    interpreted = run_interpreted(args)
    libc = GlibcMalloc()
    verdicts: list[tuple[str, str, bool]] = []
    for label, workloads in sets:
        print(f"== {label}")
        header = (
            "trace",
            "ops",
            *[f"{p} ns/op" for p in (*PEERS, NO_SLABS)],
            "pyalloc/glibc",
            "slabs/no slabs",
            "util",
            "util no slabs",
        )
        rows = [header]
        totals = dict.fromkeys((*PEERS, NO_SLABS), 0)
        ops_total = 0
        for workload in workloads:
            name, ops, _ = workload
            print(f"  {name} ...", file=sys.stderr)
            times = time_peers(libc, workload, args.repeat, args.policy)
            times[INTERPRETED] = interpreted["traces"][name]
            for peer in totals:
                totals[peer] += times[peer]
            ops_total += len(ops)
            rows.append(
                (
                    name,
                    str(len(ops)),
                    *[f"{times[p] / len(ops):,.0f}" for p in (*PEERS, NO_SLABS)],
                    fmt_ratio(times[PYALLOC] / times[GLIBC]),
                    fmt_ratio(times[PYALLOC] / times[NO_SLABS]),
                    f"{utilization(workload, args.policy):.1%}",
                    f"{utilization(workload, args.policy, small=False):.1%}",
                )
            )
        per_op = {p: totals[p] / ops_total for p in totals}
        ratio = per_op[PYALLOC] / per_op[GLIBC]
        slab_ratio = per_op[PYALLOC] / per_op[NO_SLABS]
        rows.append(
            (
                "per op",
                str(ops_total),
                *[f"{per_op[p]:,.0f}" for p in (*PEERS, NO_SLABS)],
                fmt_ratio(ratio),
                fmt_ratio(slab_ratio),
                "",
                "",
            )
        )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)
            ]
            print("  ".join(cells).rstrip())
        print(
            f"interpreted / compiled: {per_op[INTERPRETED] / per_op[PYALLOC]:.1f}x;"
            f" mp.heap / pyalloc: {per_op[MP] / per_op[PYALLOC]:.1f}x\n"
        )
        verdicts.append(
            (
                f"{label}: pyalloc per op <= {TARGET_TRACE_RATIO} x glibc",
                fmt_ratio(ratio),
                ratio <= TARGET_TRACE_RATIO,
            )
        )
        verdicts.append(
            (
                f"{label}: slabs per op <= 1.0 x no slabs",
                fmt_ratio(slab_ratio),
                slab_ratio <= 1.0,
            )
        )

    print(f"== malloc({PAIR_SIZE}) + free pairs")
    pairs = {
        PYALLOC: time_pairs(Heap(policy=args.policy), args.pairs, args.repeat),
        INTERPRETED: interpreted["pair"],
        GLIBC: time_pairs(libc, args.pairs, args.repeat),
        MP: time_pairs(MultiprocessingHeap(), args.pairs // 10, args.repeat),
    }
    for peer in PEERS:
        print(f"  {peer:12} {pairs[peer]:8,.0f} ns   {pairs[peer] / pairs[GLIBC]:.2f}x glibc")
    pair_ratio = pairs[PYALLOC] / pairs[GLIBC]
    verdicts.append(
        (
            f"malloc+free pair <= {TARGET_PAIR_RATIO} x glibc",
            fmt_ratio(pair_ratio),
            pair_ratio <= TARGET_PAIR_RATIO,
        )
    )
    print("\n== pairs by size (malloc + free of sizes cycled through)")
    mixes: dict[str, dict[str, float]] = {}
    for mix, sizes in PAIR_MIXES.items():
        mixes[mix] = {
            PYALLOC: time_mixed_pairs(Heap(policy=args.policy), sizes, args.pairs, args.repeat),
            NO_SLABS: time_mixed_pairs(
                Heap(policy=args.policy, small=False), sizes, args.pairs, args.repeat
            ),
            GLIBC: time_mixed_pairs(libc, sizes, args.pairs, args.repeat),
        }
        timed = mixes[mix]
        print(
            f"  {mix:12} sizes {','.join(map(str, sizes)):24} pyalloc {timed[PYALLOC]:6,.0f} ns"
            f"   no slabs {timed[NO_SLABS]:6,.0f} ns   glibc {timed[GLIBC]:6,.0f} ns"
            f"   pyalloc/glibc {timed[PYALLOC] / timed[GLIBC]:.2f}x"
        )
    small = mixes["small only"][PYALLOC]
    fastest = min(timed[PYALLOC] for timed in mixes.values())
    verdicts.append(
        (
            "small-object pairs are the heap's fastest (small only, against blocks only, mixed)",
            f"{small:,.0f} ns",
            small <= fastest,
        )
    )

    print("\n== targets")
    for what, measured, passed in verdicts:
        print(f"  {'PASS' if passed else 'MISS'}  {what}: {measured}")
    if not pyalloc.COMPILED:
        print("  (this process ran the interpreted engine: the targets are for the compiled one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
