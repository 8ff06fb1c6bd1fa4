"""Utilization against the system's allocators: pyalloc's default heap, glibc, mimalloc.

For every trace of three sets:

- **classic**: the malloc-lab traces in ``../shared/traces/classic`` (next
  to the checkout), without the two short ones, when that directory exists;
- **bundled**: the recorded programs that ship with pyalloc
  (``pyalloc.workloads``);
- **generated**: the workloads ``pyalloc bench`` generates when no recording
  is installed (every generator, GENERATED_OPS ops, seed GENERATED_SEED);
- **recorded here**, with ``--record``: common programs of this machine
  recorded as it runs (``recorded_here.py``): real programs that no
  constant of the heap was chosen on. Not a target set: its verdicts print
  apart;

it replays the trace with the lab's machinery (``pyalloc.trace.bench``,
what ``pyalloc bench`` runs) on three columns and prints each one's
utilization, peak live payload / peak footprint:

- **pyalloc**: ``Heap()`` as ``pyalloc bench`` runs it (its ``default``
  column: slabs on, the cache of freed blocks off, so that every free
  reaches the placement); footprint: the heap's peak bytes;
- **glibc**: footprint ``arena + hblkhd`` of ``mallinfo2`` (the bytes glibc
  holds from the system, exact; resident pages on a glibc older than 2.33,
  which the header then says);
- **mimalloc**: footprint in resident pages, the only measure the lab has
  that means the same for every allocator. Its utilization is judged only
  where its peak footprint is at least THRESHOLD (see below);
- **no slabs**: the same heap with slabs off (the lab's ``segregated``
  column): the heap as it was before slabs, for the set's average;
- **slab room**: the most that headerless slots could save on the trace,
  with no slab's cost counted: the largest sum, at any moment, of what the
  header and the rounding of each live small object (at most SMALL_MAX
  bytes) take beyond its class's slot, as a share of the peak payload.
  Where the room of every class is below one slab (SLAB_BYTES), no slab
  can pay for itself, and the slab rule makes none: the generated verdict
  prints the largest room of one class.

Targets (the small-objects issue), a verdict per row and PASS/MISS per set:

    pyalloc util >= glibc util                      on every trace
    pyalloc util >= mimalloc util                   where mimalloc's util beats glibc's
                                                    and its peak footprint >= THRESHOLD
    pyalloc average > no slabs average              on the generated workloads

THRESHOLD: a resident-page footprint is off by up to a page: the rounding
to pages, and the interpreter's own noise, which measured smaller (on every
trace of these sets whose glibc footprint is beyond the room of a new glibc
arena, glibc's resident peak is within a page of its mallinfo2 peak, and
mimalloc's resident peak is the same from run to run).  THRESHOLD is the
footprint at which one page is 1% of it: 100 pages (400 KiB with 4 KiB
pages).  Below it the cell is still printed, marked ``~``.

Run: ``python benchmarks/utilization_vs_system.py`` (a few seconds: no
timed passes, utilization only; ``--record`` adds about a minute).
"""

from __future__ import annotations

import argparse
import mmap
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLASSIC_DIR = ROOT.parent / "shared" / "traces" / "classic"

try:
    import pyalloc  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from recorded_here import record_programs  # noqa: E402

from pyalloc.layout import block_size_for  # noqa: E402
from pyalloc.progress import ProgressBar  # noqa: E402
from pyalloc.slab import NCLASSES, SLAB_BYTES, SMALL_MAX, class_size, size_class  # noqa: E402
from pyalloc.trace.bench import (  # noqa: E402
    DEFAULT_HEAP,
    FOOTPRINT_MALLINFO2,
    GENERATED_OPS,
    GENERATED_SEED,
    Comparison,
    Source,
    load_source,
    run_comparison,
)
from pyalloc.trace.generate import GENERATORS, generate  # noqa: E402
from pyalloc.trace.rep import Trace  # noqa: E402
from pyalloc.workloads import bundled_traces  # noqa: E402

GLIBC, MIMALLOC = "glibc", "mimalloc"
NO_SLABS = "segregated"  # the lab's column of the default policy with slabs off
RECORDED = "recorded here (programs of this machine, not a target)"
THRESHOLD = 100 * mmap.PAGESIZE  # one page of error is 1% of it


def trace_sets() -> list[tuple[str, list[Source]]]:
    """(label, sources) of every set this machine has."""
    sets = []
    if CLASSIC_DIR.is_dir():
        paths = [p for p in sorted(CLASSIC_DIR.glob("*.rep")) if "short" not in p.name]
        sets.append(("classic (without the two short ones)", [load_source(p) for p in paths]))
    bundled = [load_source(Path(p)) for p in bundled_traces()]
    sets.append(("bundled (recorded programs)", bundled))
    generated = []
    for kind in sorted(GENERATORS):
        trace = generate(kind, GENERATED_OPS, GENERATED_SEED)
        generated.append(Source(trace.name, trace.name, trace=trace))
    sets.append((f"generated ({GENERATED_OPS} ops, seed {GENERATED_SEED})", generated))
    return sets


def slab_room(trace: Trace) -> tuple[int, int]:
    """The most bytes, at any moment of ``trace``, that the headers and the
    rounding of its live small objects take beyond their classes' slots:
    of all classes together, and of the one class where that is most."""
    live: dict[int, tuple[int, int]] = {}  # id: (class, room)
    rooms = [0] * NCLASSES
    room = most = most_of_one = 0
    for op in trace.ops:
        if op.kind in "fr" and op.id in live:
            c, r = live.pop(op.id)
            rooms[c] -= r
            room -= r
        if op.kind in "ar" and op.size is not None and 0 < op.size <= SMALL_MAX:
            c = size_class(op.size)
            r = block_size_for(op.size) - class_size(c)
            live[op.id] = (c, r)
            rooms[c] += r
            room += r
            most_of_one = max(most_of_one, rooms[c])
        most = max(most, room)
    return most, most_of_one


def percent(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{row['util']:.2%}" if row["valid"] else "FAIL"


def judged(mimalloc: dict[str, Any] | None) -> bool:
    """Whether mimalloc's resident footprint is large enough to judge by."""
    return mimalloc is not None and mimalloc["valid"] and mimalloc["peak_heap"] >= THRESHOLD


def print_set(label: str, comparison: Comparison) -> list[tuple[str, str, bool]]:
    """The set's table; its verdicts as (what, measured, passed)."""
    header = (
        "trace",
        "peak payload",
        "pyalloc",
        "no slabs",
        "slab room",
        "glibc",
        "mimalloc",
        ">= glibc",
        ">= mimalloc",
    )
    rows = [header]
    glibc_misses: list[str] = []
    mimalloc_misses: list[str] = []
    mimalloc_judged = 0
    most_room = 0
    for i, source in enumerate(comparison.sources):
        ours = comparison.cells.get((i, DEFAULT_HEAP))
        glibc = comparison.cells.get((i, GLIBC))
        mimalloc = comparison.cells.get((i, MIMALLOC))
        versus_glibc = versus_mimalloc = "-"
        if ours is not None and ours["valid"] and glibc is not None and glibc["valid"]:
            versus_glibc = "yes" if ours["util"] >= glibc["util"] else "NO"
            if versus_glibc == "NO":
                glibc_misses.append(source.label)
            if judged(mimalloc) and mimalloc is not None and mimalloc["util"] > glibc["util"]:
                mimalloc_judged += 1
                versus_mimalloc = "yes" if ours["util"] >= mimalloc["util"] else "NO"
                if versus_mimalloc == "NO":
                    mimalloc_misses.append(source.label)
        else:  # a failed replay, or no glibc, cannot meet the target
            glibc_misses.append(source.label)
        mimalloc_cell = percent(mimalloc)
        if mimalloc is not None and mimalloc["valid"] and not judged(mimalloc):
            mimalloc_cell += "~"
        payload = ours["peak_payload"] if ours is not None else 0
        room, of_one_class = slab_room(source.trace) if source.trace is not None else (0, 0)
        most_room = max(most_room, of_one_class)
        rows.append(
            (
                source.label,
                f"{payload:,}",
                percent(ours),
                percent(comparison.cells.get((i, NO_SLABS))),
                f"{room / payload:.2%}" if payload else "-",
                percent(glibc),
                mimalloc_cell,
                versus_glibc,
                versus_mimalloc,
            )
        )
    print(f"== {label}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip())
    averages = [comparison.average_util(column) for column in (DEFAULT_HEAP, NO_SLABS)]
    if None not in averages:
        print(f"average: pyalloc {averages[0]:.2%}, no slabs {averages[1]:.2%}")
    print()
    total = len(comparison.sources)
    verdicts = [
        (
            f"{label}: pyalloc util >= glibc's on every trace",
            f"{total - len(glibc_misses)} of {total}" + miss_list(glibc_misses),
            not glibc_misses,
        )
    ]
    if any(column.name == MIMALLOC for column in comparison.columns):
        verdicts.append(
            (
                f"{label}: pyalloc util >= mimalloc's where mimalloc beats glibc"
                f" with a peak >= {THRESHOLD >> 10} KiB",
                f"{mimalloc_judged - len(mimalloc_misses)} of {mimalloc_judged}"
                + miss_list(mimalloc_misses),
                not mimalloc_misses,
            )
        )
    if label.startswith("generated") and None not in averages:
        verdicts.append(
            (
                f"{label}: pyalloc average util > without slabs",
                f"{averages[0]:.2%} against {averages[1]:.2%} (slab room of one"
                f" class at most {most_room:,} bytes, a slab {SLAB_BYTES:,})",
                averages[0] > averages[1],  # type: ignore[operator]
            )
        )
    return verdicts


def miss_list(names: list[str]) -> str:
    return f" (missed: {', '.join(names)})" if names else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--record", action="store_true", help="also record and compare programs of this machine"
    )
    args = parser.parse_args(argv)
    sets = trace_sets()
    if not CLASSIC_DIR.is_dir():
        print(f"note: {CLASSIC_DIR} not found: no classic traces")
    if not args.record:
        return compare(sets)
    with tempfile.TemporaryDirectory(prefix="pyalloc-recorded-") as directory:
        recorded = record_programs(Path(directory), lambda why: print(f"note: {why}"))
        sets.append((RECORDED, [load_source(path) for path in recorded]))
        return compare(sets)


def compare(sets: list[tuple[str, list[Source]]]) -> int:
    """Print every set's table, then the verdicts; 0."""
    print(
        f"pyalloc: Heap(cache=False), the default column of pyalloc bench;"
        f" glibc: mallinfo2 (arena + hblkhd);"
        f" mimalloc: resident pages, judged from a peak of {THRESHOLD >> 10} KiB"
        f" (~: below, not judged)\n"
    )
    verdicts: list[tuple[str, str, bool]] = []
    information: list[tuple[str, str, bool]] = []
    for label, sources in sets:
        work = sum(source.ops for source in sources) * 4
        with ProgressBar(work) as progress:
            comparison = run_comparison(
                sources,
                [DEFAULT_HEAP, NO_SLABS],
                [GLIBC, MIMALLOC],
                timed_repeats=0,
                progress=progress,
            )
        for note in comparison.notes:
            if note.startswith(f"{MIMALLOC}: skipped"):
                print(f"note: the mimalloc column is skipped: {note.partition(': skipped: ')[2]}")
            elif note.startswith(f"{GLIBC}: skipped"):
                print(f"note: {note}")
        methods = {row["footprint"] for _, row in comparison.valid_rows(GLIBC)}
        if methods - {FOOTPRINT_MALLINFO2}:
            print("note: glibc has no mallinfo2 here (2.33 or later): measured by resident pages")
        if label == RECORDED:
            information = print_set(label, comparison)
        else:
            verdicts.extend(print_set(label, comparison))
        for row in comparison.failures():
            print(f"failed: {row['trace']} on {row['policy'] or row['allocator']}: {row['error']}")

    print("== targets")
    for what, measured, passed in verdicts:
        print(f"  {'PASS' if passed else 'MISS'}  {what}: {measured}")
    for what, measured, passed in information:
        print(f"  {'yes ' if passed else 'no  '}  {what}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
