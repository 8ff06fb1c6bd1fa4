"""The ``pyalloc`` command.

Subcommands::

    pyalloc shm list [--all]          shared heaps in /dev/shm
    pyalloc shm info NAME [--json]    statistics and named blocks of one heap
    pyalloc shm check NAME            walk a heap; exit status 1 if it is corrupted
    pyalloc shm rm NAME [--force]     remove a heap's segment

For info, check and rm, a NAME with a '/' in it (``./jobs.heap``,
``/var/lib/app/heap``) is the path of a heap file (``MappedHeap``); segment
names never hold one.

Each command is one function, ``add_<command>(subcommands)``, that adds its
parser and sets ``run`` on it: a function of the parsed arguments that
returns the exit status. ``COMMANDS`` lists them; adding a command is writing
one such function and listing it there.

The allocator lab::

    pyalloc replay TRACE... [--policy NAME | --allocator NAME] [--json | --csv]
    pyalloc bench [TRACE | DIR]... [--policies A,B] [--allocators A,B] [--plot F.png]
    pyalloc gen KIND --ops N --seed S -o FILE[.gz]
    pyalloc record -o FILE.rep -- COMMAND ARGS...

Pictures (the ``lab`` extra)::

    pyalloc viz TRACE [--policy NAME | --allocator NAME | --compare A,B] -o heap.png
    pyalloc viz TRACE --animate -o heap.gif      pyalloc viz --shm NAME -o map.png
    pyalloc top NAME                             a live terminal view of a shared heap

Tables are drawn with rich when it is installed and the output is a
terminal, as plain aligned text otherwise; progress bars go to stderr, and
only when it is a terminal.

Exit status: 0 success, 1 the command found a problem (no such segment, not
a heap, corruption, a trace that is invalid or fails validation), 2 bad usage
(from argparse, or an unknown policy or allocator name).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from .errors import HeapCorruptionError, HeapError
from .files import check_output_path
from .mapped import names_a_file, open_for_command
from .policies import load_policy
from .progress import ProgressBar, rich_for
from .regions import BUILDING_SUFFIX, SHM_DIR, abandoned_builds, list_shared, unlink_shared
from .shared import SharedHeap, describe_file, describe_segment, list_heaps
from .trace.bench import (
    FOOTPRINT_RESIDENT,
    JSON_KEYS,
    SYSTEM_ALLOCATORS,
    TINY_PEAK,
    UTIL_WEIGHT,
    Comparison,
    Source,
    default_sources,
    expand_paths,
    failed_row,
    load_source,
    mdriver_summary,
    plot_comparison,
    plot_format,
    row_from_replay,
    row_from_system,
    run_comparison,
    system_for,
    tiny_peak,
    write_csv,
)
from .trace.generate import GENERATORS, generate
from .trace.rep import write_trace
from .trace.replay import policy_names, replay
from .trace.system import is_library_path, system_available
from .units import human_bytes

Subcommands = Any  # argparse's private _SubParsersAction


def _fail(message: str, status: int = 1) -> int:
    print(f"pyalloc: {message}", file=sys.stderr)
    return status


# -- pyalloc shm ------------------------------------------------------------------------


def _natural_key(text: str) -> list[Any]:
    """Sort key that orders "block2" before "block10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _open_pool(name: str) -> Any:
    """The pool in segment ``name``, or None if it is none (or atomicshm is missing)."""
    try:
        from .pool import Pool
    except ImportError:
        return None
    try:
        return Pool.attach(name)
    except (ValueError, HeapError, OSError):
        return None


def shm_list(args: argparse.Namespace) -> int:
    heaps = {info["name"]: info for info in list_heaps()}
    names = list_shared() if args.all else sorted(heaps)
    abandoned = {os.path.basename(p) for p in abandoned_builds(SHM_DIR)}
    names = [n for n in names if not n.startswith(".") or n in abandoned]
    if not args.all:
        names += [
            n for n in list_shared() if n not in heaps and not n.startswith(".") and _is_pool(n)
        ]
    if not names:
        print("no shared heaps in /dev/shm")
        return 0
    rows = [("NAME", "KIND", "CAPACITY", "IN USE", "PEAK", "POLICY", "STATE")]
    for name in sorted(set(names), key=_natural_key):
        info = heaps.get(name)
        if name in abandoned:
            rows.append((name, "-", "-", "-", "-", "-", "left by a killed create"))
            continue
        if info is None:
            pool = _open_pool(name)
            if pool is None:
                rows.append((name, "-", "-", "-", "-", "-", "not a pyalloc heap"))
                continue
            with pool:
                state = "unchecked"
                if args.check:
                    try:
                        found = pool.check()
                        state = f"ok, {found.stranded} stranded" if found.stranded else "ok"
                    except HeapCorruptionError as e:
                        state = f"corrupted: {e}"
                rows.append(
                    (
                        name,
                        "pool",
                        human_bytes(pool.block_size * pool.count),
                        f"{pool.count - pool.available()} of {pool.count} blocks",
                        "-",
                        f"{pool.block_size} B blocks",
                        state,
                    )
                )
            continue
        state = "recovery pending" if info["journal_entries"] else "unchecked"
        if args.check:
            state = _check_state(name)
        rows.append(
            (
                name,
                "heap",
                human_bytes(info["capacity"]),
                human_bytes(info["heap_bytes"]),
                human_bytes(info["peak_heap_bytes"]),
                info["policy"],
                state,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    corrupted = [row[0] for row in rows[1:] if row[-1].startswith("corrupted")]
    if corrupted:  # as 'shm check' does, a corrupted heap fails the command
        return _fail(f"corrupted: {', '.join(corrupted)}")
    return 0


def _is_pool(name: str) -> bool:
    pool = _open_pool(name)
    if pool is None:
        return False
    pool.close()
    return True


def _check_state(name: str) -> str:
    heap = _attach(name)
    if isinstance(heap, str):
        return heap
    with heap:
        try:
            heap.check()
        except HeapCorruptionError as e:
            return f"corrupted: {e}"
    return "ok"


def _attach(name: str) -> SharedHeap | str:
    """The heap ``name`` attached (saying so on stderr if its lock is held
    long), or why it cannot be."""
    try:
        return open_for_command(name)
    except (HeapError, OSError, ValueError) as e:
        message = str(e)
        if not names_a_file(name) and os.path.isfile(name):  # ".." is no heap file
            message += f" (for the heap file in this directory, say ./{name})"
        return message


def _pool_info(args: argparse.Namespace) -> int | None:
    """``shm info`` of a pool; None if ``args.name`` is not one."""
    if names_a_file(args.name):
        return None
    pool = _open_pool(args.name)
    if pool is None:
        return None
    with pool:
        # Other than this process, which attached to look.
        attached = [pid for pid in pool.attached() if pid != os.getpid()]
        info = {
            "name": args.name,
            "kind": "pool",
            "block_size": pool.block_size,
            "count": pool.count,
            "available": pool.available(),
            "processes_attached": attached,
        }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            if key == "processes_attached":
                value = ", ".join(map(str, attached)) if attached else "none"
            print(f"{key}: {value}")
    return 0


def shm_info(args: argparse.Namespace) -> int:
    pool_status = _pool_info(args)
    if pool_status is not None:
        return pool_status
    heap = _attach(args.name)
    if isinstance(heap, str):
        return _fail(heap)
    with heap:
        policy = heap.policy_name
        try:
            stats = heap.stats()
            names = heap.names.copy()
            sizes = {key: heap.usable_size(p) for key, p in names.items()}
            arrays = heap.arrays.specs() if _has_numpy() else {}
        except HeapCorruptionError as e:
            # What the control record says is still worth showing.
            described = describe_file(heap._segment.path, args.name) or {}
            for key, value in described.items():
                print(f"{key}: {value}")
            return _fail(f"{args.name}: corrupted: {e}")
    if args.json:
        print(
            json.dumps(
                {
                    "name": args.name,
                    "policy": policy,
                    "stats": stats,
                    "names": names,
                    "sizes": sizes,
                    "arrays": {k: [list(v[0]), v[1]] for k, v in arrays.items()},
                }
            )
        )
        return 0
    print(f"name: {args.name}")
    print(f"policy: {policy}")
    for key, value in stats.items():
        shown = (
            f"{value} ({human_bytes(value)})"
            if key.endswith("bytes") or key in ("capacity", "largest_free")
            else str(value)
        )
        print(f"{key}: {shown}")
    if names:
        print("named blocks:")
        width = max(len(k) for k in names)
        for key in sorted(names, key=_natural_key):
            print(f"  {key.ljust(width)}  {names[key]:>12}  {human_bytes(sizes[key])}")
    if arrays:
        print("arrays:")
        width = max(len(k) for k in arrays)
        for key in sorted(arrays, key=_natural_key):
            shape, dtype = arrays[key]
            print(f"  {key.ljust(width)}  {dtype}  {shape}")
    return 0


def _has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def shm_check(args: argparse.Namespace) -> int:
    if not names_a_file(args.name):
        pool = _open_pool(args.name)
        if pool is not None:
            with pool:
                try:
                    found = pool.check()
                except HeapCorruptionError as e:
                    return _fail(f"{args.name}: corrupted: {e}")
            print(
                f"{args.name}: ok, pool of {pool.count} blocks, {found.free} free,"
                f" {found.stranded} stranded"
            )
            return 0
    heap = _attach(args.name)
    if isinstance(heap, str):
        return _fail(heap)
    with heap:
        try:
            heap.check()
            stats = heap.stats()
        except HeapCorruptionError as e:
            return _fail(f"{args.name}: corrupted: {e}")
    print(
        f"{args.name}: ok, {stats['live_blocks']} live blocks, "
        f"{human_bytes(stats['heap_bytes'])} of {human_bytes(stats['capacity'])} in use"
    )
    return 0


def shm_rm(args: argparse.Namespace) -> int:
    name = args.name
    path = names_a_file(name)
    kind = "file" if path else "shared-memory segment"
    target = name if path else os.path.join(SHM_DIR, name)
    if not name or not os.path.lexists(target):
        return _fail(f"no {kind} named {name!r}")
    if os.path.isdir(target) and not os.path.islink(target):
        return _fail(f"{kind} {name!r} is a directory, not a heap")
    if not path and name.endswith(BUILDING_SUFFIX):
        return _rm_temporary(target, args.force)
    info = describe_file(name) if path else describe_segment(name)
    is_pool = not path and _is_pool(name)
    if info is None and not is_pool and not args.force:
        return _fail(f"{name} is not a pyalloc heap or pool; use --force to remove it anyway")
    try:
        if path:
            os.unlink(name)
        else:
            unlink_shared(name)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    return 0


def _rm_temporary(target: str, force: bool) -> int:
    """Remove what a create left (``shm list --all`` shows them); one whose
    creator still runs is a build under way, removed only with --force."""
    if target not in abandoned_builds(os.path.dirname(target)) and not force:
        return _fail(
            f"{os.path.basename(target)} is being built by a running process;"
            " use --force to remove it anyway"
        )
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass  # a create in this directory removed it first
    except OSError as e:
        return _fail(str(e))
    return 0


def add_shm(subcommands: Subcommands) -> None:
    shm = subcommands.add_parser("shm", help="inspect and remove shared heaps")
    actions = shm.add_subparsers(dest="shm_command", required=True, metavar="ACTION")

    p = actions.add_parser("list", help="list the shared heaps in /dev/shm")
    p.add_argument(
        "--all",
        action="store_true",
        help="also list segments that are not heaps, and what killed creates left",
    )
    p.add_argument(
        "--check", action="store_true", help="walk each heap and pool to say if it is ok"
    )
    p.set_defaults(run=shm_list)

    p = actions.add_parser("info", help="statistics and named blocks of a shared heap")
    p.add_argument("name", help="a segment's name, or a heap file's path (with a '/')")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=shm_info)

    p = actions.add_parser("check", help="walk a shared heap; exit status 1 if corrupted")
    p.add_argument("name", help="a segment's name, or a heap file's path (with a '/')")
    p.set_defaults(run=shm_check)

    p = actions.add_parser("rm", help="remove a shared heap's segment or file")
    p.add_argument("name", help="a segment's name, or a heap file's path (with a '/')")
    p.add_argument("--force", action="store_true", help="remove it even if it is not a heap")
    p.set_defaults(run=shm_rm)


# -- output helpers ---------------------------------------------------------------------


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    left: int = 1,
    summary_last: bool = False,
) -> None:
    """Print ``rows`` under ``headers``; the first ``left`` columns align left, the rest right.

    ``summary_last`` sets the last row (averages) apart with a rule.
    """
    if rich_for(sys.stdout):
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", title_style="bold")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i < left else "right", no_wrap=i < left)
        for i, row in enumerate(rows):
            table.add_row(*row, end_section=summary_last and i == len(rows) - 2)
        Console().print(table)
        return
    if title:
        print(title)
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _thousands(ops_per_sec: float | None) -> str:
    """Thousands of ops per second, three significant figures or more."""
    if not ops_per_sec:
        return "-"
    k = ops_per_sec / 1e3
    return f"{k:,.0f}" if k >= 100 else f"{k:.3g}"


def _split_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _unknown(kind: str, names: Sequence[str], valid: Sequence[str]) -> int:
    print(
        f"pyalloc: unknown {kind} {', '.join(map(repr, names))}; choose from: {', '.join(valid)}",
        file=sys.stderr,
    )
    return 2


def _sources_of(paths: Sequence[str]) -> list[Source]:
    """A source per trace file; a directory gives its traces, a bad path an error source."""
    sources: list[Source] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            try:
                sources.extend(load_source(p) for p in expand_paths([path]))
            except FileNotFoundError as e:
                sources.append(Source(path.name, item, error=str(e)))
        else:
            sources.append(load_source(path))
    _report_warnings(sources)
    return sources


def _none_readable(sources: Sequence[Source]) -> bool:
    """Whether not one of ``sources`` could be read; then each says why on
    stderr, and the command prints no table of failures."""
    if not sources or any(source.trace is not None for source in sources):
        return False
    for source in sources:  # a parse error names its file and line already
        error = source.error or "no trace"
        _fail(error if source.path in error else f"{source.path}: {error}")
    return True


def _report_warnings(sources: Sequence[Source]) -> None:
    """What the parser accepted but the reader should know, one line each on stderr."""
    for source in sources:
        if source.trace is not None:
            for warning in source.trace.warnings:
                print(f"pyalloc: {warning}", file=sys.stderr)


def _emit_rows(rows: list[dict[str, Any]], as_json: bool, as_csv: bool) -> bool:
    """Print ``rows`` as JSON or CSV when asked; True if printed."""
    if as_json:
        print(json.dumps([{key: row[key] for key in JSON_KEYS} for row in rows], indent=2))
        return True
    if as_csv:
        write_csv(rows, sys.stdout)
        return True
    return False


# -- pyalloc replay -------------------------------------------------------------------


def _build_mm(source: str) -> Any:
    """The malloc-lab package built from ``source``, or an exit status (compiler errors shown)."""
    from .trace import mm

    try:
        return mm.build(source)
    except mm.BuildError as e:
        return _fail(e.report(source))


def replay_command(args: argparse.Namespace) -> int:
    if args.index and args.repeat == 0:
        return _fail("--index weighs throughput, which --repeat 0 does not measure", 2)
    package = None
    if args.mm is not None:
        package = _build_mm(args.mm)
        if isinstance(package, int):
            return package
    system_name = args.allocator if args.allocator not in (None, "pyalloc") else None
    if (
        system_name is not None
        and system_name not in SYSTEM_ALLOCATORS
        and not is_library_path(system_name)
    ):
        return _unknown("allocator", [system_name], ("pyalloc", *SYSTEM_ALLOCATORS, "PATH.so"))
    system = None
    if system_name is not None:
        system, reason = system_for(system_name)
        if system is None:
            return _fail(f"--allocator {system_name}: {reason}")
    else:
        policies = policy_names()
        if ":" in args.policy:
            try:
                load_policy(args.policy)
            except ValueError as e:
                return _fail(str(e))
        elif args.policy not in policies:
            return _unknown("policy", [args.policy], policies)
    sources = _sources_of(args.traces)
    if _none_readable(sources):
        return 1
    rows: list[dict[str, Any]] = []
    work_per_op = 1 + args.repeat
    with ProgressBar(sum(s.ops for s in sources) * work_per_op) as progress:
        for source in sources:
            progress.start(source.label, source.ops * work_per_op)
            trace = source.trace
            allocator = package.name if package else system_name or "pyalloc"
            policy = None if system_name or package else args.policy
            if trace is None:
                rows.append(failed_row(source.path, allocator, policy, source.error or ""))
            elif package is not None:
                from .trace.mm import replay_package

                result = replay_package(package, trace, timed_repeats=args.repeat)
                rows.append(row_from_system(result, source.path, malloc_lab=True))
            elif system is not None:
                result = system.replay_system(trace, system_name, timed_repeats=args.repeat)
                rows.append(row_from_system(result, source.path))
            else:
                replayed = replay(
                    trace,
                    policy=args.policy,
                    capacity=args.capacity,
                    cache=args.cache,
                    check_every=args.check_every,
                    timed_repeats=args.repeat,
                    progress=progress.advance,
                )
                rows.append(row_from_replay(replayed, source.path))
    failed = [row for row in rows if not row["valid"]]
    if not _emit_rows(rows, args.json, args.csv):
        table = []
        for row, source in zip(rows, sources, strict=True):
            name = row["allocator"] if row["policy"] is None else f"pyalloc {row['policy']}"
            frag = row["internal_frag"] is not None and row["valid"]
            table.append(
                [
                    source.label,
                    name,
                    "yes" if row["valid"] else "NO",
                    f"{row['ops']:,}",
                    _percent(row["util"]) if row["valid"] else "-",
                    human_bytes(row["peak_payload"]) if row["valid"] else "-",
                    human_bytes(row["peak_heap"]) if row["valid"] else "-",
                    _percent(row["internal_frag"]) if frag else "-",
                    _percent(row["external_frag"]) if frag else "-",
                    f"{row['seconds']:.6f}" if row["valid"] else "-",
                    _thousands(row["ops_per_sec"]) if row["valid"] else "-",
                ]
            )
        print_table(
            [
                "trace",
                "allocator",
                "valid",
                "ops",
                "util",
                "peak payload",
                "peak heap",
                "int frag",
                "ext frag",
                "secs",
                "kops/s",
            ],
            table,
            left=2,
        )
        for row in failed:
            print(f"{row['trace']}: {row['error']}")
        if len(rows) > 1 or args.index:
            _print_totals(rows, sources, args)
    for row in failed:
        if args.json or args.csv:
            print(f"pyalloc: {row['trace']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def _print_totals(
    rows: list[dict[str, Any]], sources: list[Source], args: argparse.Namespace
) -> None:
    """mdriver's totals line and, with --index, its performance index."""
    reference = None
    note = ""
    if args.index:
        system, reason = system_for("glibc")
        traces = [s.trace for s in sources if s.trace is not None]
        if system is None or not traces:
            note = f" (no index: glibc cannot be measured here: {reason or 'no trace was read'})"
        else:
            results = [
                system.replay_system(t, "glibc", timed_repeats=max(1, args.repeat)) for t in traces
            ]
            seconds = sum(r.seconds for r in results if r.valid)
            reference = sum(r.ops for r in results if r.valid) / seconds if seconds else None
    summary = mdriver_summary(rows, reference)
    print(
        f"Totals: {summary['valid']} of {summary['traces']} valid, util {summary['util']:.1%},"
        f" {summary['ops']:,} ops, {summary['seconds']:.6f} s, {summary['kops']:,.0f} Kops/s" + note
    )
    if summary["perf_index"] is not None and reference:
        print(
            f"Perf index = {summary['perf_index']:.0f}/100 (util {UTIL_WEIGHT:.0%},"
            f" throughput {1 - UTIL_WEIGHT:.0%} against glibc's {reference / 1000:,.0f} Kops/s"
            " through ctypes on the same traces, measured in this run; each part capped)"
        )
    elif args.index and not note:
        print("Perf index: none, since not every trace was valid (as mdriver gives none)")


def add_replay(subcommands: Subcommands) -> None:
    p = subcommands.add_parser(
        "replay",
        help="run traces on an allocator, checking every block and measuring it",
        description=(
            "Replay .rep traces (plain or .gz) on a pyalloc heap, checking every "
            "pointer returned (aligned to 16 bytes, or a request of fewer to the largest "
            "power of two within its size, as C asks; inside the heap; no overlap with a "
            "live block; every payload byte kept) and measuring utilization (peak live "
            "payload / peak heap footprint), fragmentation at the peak and "
            "throughput (a separate timed run without the checks). With --allocator, "
            "run them on a system allocator instead. A trace that cannot be read or "
            "fails a check is reported and the others still run; the exit status is "
            "then 1."
        ),
    )
    p.add_argument(
        "traces", nargs="+", metavar="TRACE", help=".rep or .rep.gz file, or a directory"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--policy",
        default="segregated",
        metavar="NAME",
        help="pyalloc free-block policy (default: segregated; see `pyalloc bench --help`)",
    )
    which.add_argument(
        "--allocator",
        metavar="NAME",
        help=f"a system allocator instead of pyalloc: {', '.join(SYSTEM_ALLOCATORS)}, or the"
        " path of a shared object that exports malloc, free and realloc (./my.so)",
    )
    p.add_argument(
        "--index",
        action="store_true",
        help="also mdriver's performance index: 60%% utilization, 40%% throughput against"
        " glibc's on the same traces, measured in the same run",
    )
    which.add_argument(
        "--mm",
        metavar="MM.C",
        help="a malloc-lab package (mm_init, mm_malloc, mm_free, mm_realloc over memlib):"
        " compiled with the system compiler and replayed in a subprocess; utilization is"
        " peak payload / peak mem_heapsize(), as mdriver computes it",
    )
    _add_output_options(p)
    p.add_argument(
        "--repeat",
        type=_non_negative,
        default=3,
        metavar="N",
        help="timed runs per trace, the best is kept (default 3, fewer once they "
        "took 2 s; 0: no timing)",
    )
    p.add_argument(
        "--check-every",
        type=_non_negative,
        default=0,
        metavar="N",
        help="also walk the heap and verify every live block every N ops",
    )
    p.add_argument(
        "--capacity",
        type=_positive,
        metavar="BYTES",
        help="heap capacity (default: enough for the trace, at least 64 MiB)",
    )
    p.add_argument(
        "--cache",
        action="store_true",
        help="keep the heap's cache of freed small blocks on (off by default, so "
        "that the policy sees every free)",
    )
    p.set_defaults(run=replay_command)


def _add_output_options(p: argparse.ArgumentParser) -> None:
    output = p.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list, one object per run, with the keys " + ", ".join(JSON_KEYS),
    )
    output.add_argument(
        "--csv",
        action="store_true",
        help="print CSV: the JSON keys plus internal_frag and external_frag",
    )


LARGEST_ARGUMENT: Final = 1 << 40  # beyond any count or size a command can use
MIN_INTERVAL: Final = 0.1  # seconds: the shortest refresh of a live view


def _integer_from(text: str, low: int) -> int:
    """An option's integer, ``low`` to LARGEST_ARGUMENT; ArgumentTypeError otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not low <= value <= LARGEST_ARGUMENT:
        raise argparse.ArgumentTypeError(
            f"expected an integer from {low} to {LARGEST_ARGUMENT:,}, got {text}"
        )
    return value


def _non_negative(text: str) -> int:
    return _integer_from(text, 0)


def _positive(text: str) -> int:
    return _integer_from(text, 1)


def _interval(text: str) -> float:
    """Seconds between refreshes: at least MIN_INTERVAL (a view redrawn without
    a pause would keep a core busy), at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not MIN_INTERVAL <= value <= 86_400:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"expected seconds from {MIN_INTERVAL} to 86400, got {text}"
        )
    return value


def _file_name(text: str) -> str:
    """An output file's name: anything but the empty string."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got an empty one")
    return text


# -- pyalloc bench --------------------------------------------------------------------


OPT_IN_POLICIES: Final = ("implicit",)  # walks every block per malloc: only when asked for


def bench_command(args: argparse.Namespace) -> int:
    known = policy_names()
    if args.policies is None:
        policies = [name for name in known if name not in OPT_IN_POLICIES]
    elif args.policies.strip().lower() == "all":
        policies = list(known)
    else:
        policies = _split_names(args.policies)
    for name in policies:
        if ":" in name:
            try:
                load_policy(name)
            except ValueError as e:
                return _fail(str(e))
    unknown = [name for name in policies if name not in known and ":" not in name]
    if unknown:
        return _unknown("policy", unknown, known)
    if args.allocators is None:
        allocators = list(SYSTEM_ALLOCATORS)
    elif args.allocators.strip().lower() == "none":
        allocators = []
    else:
        allocators = _split_names(args.allocators)
    if "none" in (n.lower() for n in allocators):
        return _fail("--allocators none stands alone (it means no system allocator)")
    unknown = [n for n in allocators if n not in SYSTEM_ALLOCATORS and not is_library_path(n)]
    if unknown:
        return _unknown("allocator", unknown, (*SYSTEM_ALLOCATORS, "none", "PATH.so"))
    packages: list[Any] = []
    for source in args.mm or []:
        package = _build_mm(source)
        if isinstance(package, int):
            return package
        if package.name in {*policies, *allocators, *(p.name for p in packages)}:
            return _fail(
                f"--mm {source}: a column is named {package.name} already"
                " (a package's column is its file name): rename one"
            )
        packages.append(package)
    if not policies and not allocators and not packages:
        return _fail("nothing to compare: give at least one policy or allocator")
    if args.plot:  # refused before the run, not after it
        try:
            check_output_path(args.plot)
            plot_format(args.plot)
        except ImportError:
            return _fail("--plot needs matplotlib: pip install 'pyalloc[lab]'")
        except (OSError, ValueError) as e:
            return _fail(f"--plot: {e}")
    notes: list[str] = []
    for name in allocators:  # said before the run, not after it
        reason = system_available(name)
        if reason is not None:
            print(f"pyalloc: {name} will be skipped: {reason}", file=sys.stderr)
    if args.traces:
        try:
            sources = [load_source(p) for p in expand_paths(args.traces)]
        except FileNotFoundError as e:
            return _fail(str(e))
        if _none_readable(sources):
            return 1
        _report_warnings(sources)
    else:
        sources, note = default_sources()
        if note:
            notes.append(note)
    columns = len(policies) + len(allocators) + len(packages)
    work = sum(s.ops for s in sources) * columns * (1 + args.repeat)
    with ProgressBar(work) as progress:
        comparison = run_comparison(
            sources,
            policies,
            allocators,
            timed_repeats=args.repeat,
            capacity=args.capacity,
            progress=progress,
            packages=packages,
        )
    notes.extend(comparison.notes)
    rows = comparison.rows()
    if not _emit_rows(rows, args.json, args.csv):
        _print_comparison(comparison)
        for note in notes:
            print(f"note: {note}")
        for trace, where, error in _grouped_failures(comparison):
            print(f"failed: {trace} on {where}: {error}")
    else:
        for note in notes:
            print(f"pyalloc: note: {note}", file=sys.stderr)
        for trace, _, error in _grouped_failures(comparison):
            print(f"pyalloc: {trace}: {error}", file=sys.stderr)
    if args.plot:
        if not any(comparison.valid_rows(column.name) for column in comparison.columns):
            return _fail(f"--plot: nothing to plot: no trace ran validly, {args.plot} not written")
        try:
            plot_comparison(comparison, args.plot)
        except ImportError:
            return _fail("--plot needs matplotlib: pip install 'pyalloc[lab]'")
        except OSError as e:
            return _fail(f"cannot write {args.plot}: {e.strerror or e}")
        print(f"pyalloc: plot written to {args.plot}", file=sys.stderr)
    return 1 if comparison.failures() else 0


def _grouped_failures(comparison: Comparison) -> list[tuple[str, str, str]]:
    """(trace, the columns it failed on, error) once per trace and error: a
    trace that cannot be read fails every column alike, and says so once."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in comparison.failures():
        column = row["policy"] or row["allocator"]
        groups.setdefault((row["trace"], row["error"]), []).append(column)
    every = len(comparison.columns)
    return [
        (trace, "every column" if len(names) == every > 1 else ", ".join(names), error)
        for (trace, error), names in groups.items()
    ]


def _print_comparison(comparison: Comparison) -> None:
    names = [column.name for column in comparison.columns]

    def table(
        cell: Callable[[dict[str, Any]], str], average: Callable[[str], str]
    ) -> list[list[str]]:
        rows = []
        for i, source in enumerate(comparison.sources):
            row = [source.label]
            for name in names:
                found = comparison.cells.get((i, name))
                row.append("-" if found is None else cell(found) if found["valid"] else "FAIL")
            rows.append(row)
        rows.append(["average", *(average(name) for name in names)])
        return rows

    def util(row: dict[str, Any]) -> str:
        return f"{_percent(row['util'])}~" if tiny_peak(row) else _percent(row["util"])

    resident = [c.name for c in comparison.columns if c.system and _resident(comparison, c.name)]
    print_table(
        ["trace", *(f"{n} (rss)" if n in resident else n for n in names)],
        table(util, lambda n: _percent(comparison.average_util(n))),
        title="Utilization: peak live payload / peak heap footprint",
        summary_last=True,
    )
    if resident:
        print(
            "(rss): the footprint is resident pages, page-granular; ~: a peak of less than"
            f" {TINY_PEAK >> 10} KiB, a few pages, says little"
        )
    print()
    print_table(
        ["trace", *names],
        table(
            lambda r: _thousands(r["ops_per_sec"]),
            lambda n: _thousands(comparison.average_ops_per_sec(n)),
        ),
        title="Throughput: thousand ops per second (best timed run, no checks)",
        summary_last=True,
    )


def _resident(comparison: Comparison, column: str) -> bool:
    """Whether a column's footprints are resident pages (a system allocator's)."""
    rows = [r for (_, name), r in comparison.cells.items() if name == column and r["footprint"]]
    return any(r["footprint"] == FOOTPRINT_RESIDENT for r in rows)


def add_bench(subcommands: Subcommands) -> None:
    policies = ", ".join(policy_names())
    p = subcommands.add_parser(
        "bench",
        help="compare policies and system allocators side by side on traces",
        description=(
            "Replay every trace on every pyalloc policy and every system allocator "
            "and print two tables, a row per trace and averages last: utilization "
            "(peak live payload / peak heap footprint; the average uses the traces' "
            "weights) and throughput (thousand ops per second; the average is total "
            "ops / total time). Without TRACE, the workloads recorded from real "
            "programs that ship with pyalloc are used. A system allocator whose "
            "library is missing is skipped with a note. Each pyalloc run is "
            "validated as by `pyalloc replay`; a failure is reported and makes the "
            "exit status 1."
        ),
    )
    p.add_argument(
        "traces",
        nargs="*",
        metavar="TRACE|DIR",
        help=".rep or .rep.gz files, or directories of them (default: the bundled workloads)",
    )
    p.add_argument(
        "--policies",
        metavar="A,B",
        help=f"pyalloc policies to compare, comma-separated, or all (default: all but "
        f"{', '.join(OPT_IN_POLICIES)}, which walks every block on each malloc: {policies})",
    )
    p.add_argument(
        "--allocators",
        metavar="A,B",
        help=f"system allocators to compare, comma-separated, or none "
        f"(default: all: {', '.join(SYSTEM_ALLOCATORS)})",
    )
    p.add_argument(
        "--mm",
        metavar="MM.C",
        action="append",
        help="also a malloc-lab package (mm.c), compiled and graded as `replay --mm` does;"
        " may be given more than once",
    )
    _add_output_options(p)
    p.add_argument(
        "--plot",
        type=_file_name,
        metavar="FILE.png",
        help="also draw grouped bar charts into FILE.png",
    )
    p.add_argument(
        "--repeat",
        type=_non_negative,
        default=3,
        metavar="N",
        help="timed runs per trace and allocator, the best is kept (default 3, "
        "fewer once they took 2 s)",
    )
    p.add_argument(
        "--capacity",
        type=_positive,
        metavar="BYTES",
        help="pyalloc heap capacity (default: enough for each trace)",
    )
    p.set_defaults(run=bench_command)


# -- pyalloc gen ----------------------------------------------------------------------


def gen_command(args: argparse.Namespace) -> int:
    trace = None
    try:
        with ProgressBar(args.ops) as progress:
            progress.start(f"generating {args.kind}", args.ops)
            trace = generate(args.kind, args.ops, args.seed, progress.advance)
    except MemoryError:
        pass  # reported below, once the handler has let go of the partial trace
    if trace is None:
        return _fail(f"gen: not enough memory to build {args.ops:,} ops (a trace is built whole)")
    try:
        write_trace(trace, args.output)
    except OSError as e:
        return _fail(f"cannot write {args.output}: {e.strerror or e}")
    print(
        f"{args.output}: {len(trace.ops)} ops on {trace.num_ids} ids, "
        f"peak live payload {human_bytes(trace.heap_hint)}",
        file=sys.stderr,
    )
    return 0


def add_gen(subcommands: Subcommands) -> None:
    kinds = sorted(GENERATORS)
    p = subcommands.add_parser(
        "gen",
        help="write a generated workload as a .rep trace",
        description=(
            "Generate a synthetic workload and write it as a .rep trace (gzip-"
            "compressed when FILE ends in .gz). The same kind, ops and seed always "
            "give the same file. Kinds: uniform (random sizes up to 4 KiB), "
            "fragmenter (small and large blocks interleaved, the large freed), "
            "coalesce (runs of neighbours freed in every order), realloc_growth "
            "(buffers grown by realloc), realistic (many small short-lived blocks, "
            "few large long-lived ones)."
        ),
    )
    p.add_argument("kind", choices=kinds, metavar="KIND", help=f"one of: {', '.join(kinds)}")
    p.add_argument(
        "--ops", type=_non_negative, default=10_000, metavar="N", help="ops (default 10000)"
    )
    p.add_argument(
        "--seed", type=_non_negative, default=0, metavar="S", help="random seed (default 0)"
    )
    p.add_argument(
        "-o", "--output", type=_file_name, required=True, metavar="FILE", help="where to write"
    )
    p.set_defaults(run=gen_command)


# -- pyalloc record -------------------------------------------------------------------


def record_command(args: argparse.Namespace) -> int:
    command = list(args.program)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return _fail("record: give the command to run after --, e.g. pyalloc record -o t.rep -- ls")
    try:
        record_module = importlib.import_module("pyalloc.trace.record")
    except ImportError as e:
        return _fail(f"recording is not available in this installation ({e})")
    try:
        check_output_path(args.output)  # before the command runs: it may have effects
    except OSError as e:
        return _fail(f"record: {e}")
    options: dict[str, Any] = {}
    if args.follow_exec:
        options.update(follow_exec=True, process="largest")
    if args.max_ops is not None:
        options["max_ops"] = args.max_ops
    try:
        result = record_module.record(command, args.output, **options)
    except (OSError, RuntimeError, ValueError) as e:
        return _fail(f"record: {e}")
    status: int = result.returncode
    stats = result.stats
    print(
        f"{result.output}: {result.ops:,} ops on {result.num_ids:,} ids, "
        f"peak live payload {human_bytes(result.peak_payload)}"
        + ("" if status == 0 else f" (the command exited with status {status})"),
        file=sys.stderr,
    )
    details = [
        f"{stats.live_at_end:,} blocks still live at exit (leaks, freed at the trace's end)",
        f"{stats.unknown_frees:,} frees of pointers never seen allocated (dropped)",
    ]
    if stats.unknown_reallocs:
        details.append(f"{stats.unknown_reallocs:,} reallocs of such pointers (written as 'a')")
    if stats.failed_calls:
        details.append(f"{stats.failed_calls:,} calls that returned NULL (dropped)")
    if stats.truncated:
        details.append(f"cut at --max-ops {args.max_ops:,}: the rest of the run is not in it")
    for line in details:
        print(f"  {line}", file=sys.stderr)
    if _is_python(command[0]) and os.environ.get("PYTHONMALLOC") != "malloc":
        print(
            "  hint: a Python interpreter allocates most objects from its own pools, which"
            " the trace does not see; run it with PYTHONMALLOC=malloc to record them",
            file=sys.stderr,
        )
    # The command's own status, as a shell reports it, so scripts see a failed run.
    return status if status >= 0 else 128 - status


def _is_python(program: str) -> bool:
    """Whether ``program`` names a Python interpreter (python, python3.11, ...)."""
    name = os.path.basename(program)
    return name.startswith("python") or name in ("pypy", "pypy3")


def add_record(subcommands: Subcommands) -> None:
    p = subcommands.add_parser(
        "record",
        help="record a program's malloc/free calls as a .rep trace",
        description=(
            "Run COMMAND with an interposer in LD_PRELOAD that logs its malloc, calloc, "
            "realloc and free calls, and write them as a .rep trace (gzip-compressed "
            "when FILE ends in .gz). The interposer is compiled on first use with the "
            "system's C compiler. Works for dynamically linked programs only; blocks "
            "still live when the program exits are freed at the end of the trace. "
            "The trace is written whatever the command's exit status, which pyalloc "
            "record then exits with. "
            "Example: pyalloc record -o git-log.rep.gz -- git log -n 100"
        ),
        usage="%(prog)s [-h] -o FILE.rep [--follow-exec] [--max-ops N] -- COMMAND [ARGS...]",
    )
    p.add_argument(
        "-o", "--output", type=_file_name, required=True, metavar="FILE.rep", help="where to write"
    )
    p.add_argument(
        "--follow-exec",
        action="store_true",
        help="also log the programs COMMAND starts, and keep the one that made the most "
        "calls (e.g. the compiler proper behind a compiler driver)",
    )
    p.add_argument(
        "--max-ops", type=_positive, metavar="N", help="keep at most N ops of the program"
    )
    p.add_argument(
        "program",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="the program and its arguments, after --",
    )
    p.set_defaults(run=record_command)


# -- the command ------------------------------------------------------------------------

# -- pyalloc viz, pyalloc top -----------------------------------------------------------


def _lab_command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of ``pyalloc.viz.commands`` called ``name``, imported when it runs.

    The pictures need numpy, matplotlib and rich (the ``lab`` extra); the
    other commands never load them.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            commands = importlib.import_module("pyalloc.viz.commands")
        except ImportError as e:
            return _fail(f"{args.command} needs the lab extra (pip install 'pyalloc[lab]'): {e}")
        status: int = getattr(commands, name)(args)
        return status

    return run


def add_viz(subcommands: Subcommands) -> None:
    p = subcommands.add_parser(
        "viz",
        help="draw the heap: a map of its bytes and a timeline of a trace, or a live heap",
        description=(
            "Replay TRACE and draw the heap at the moment of its peak footprint: its "
            "address space in rows of cells, each coloured by what most of its bytes "
            "are (payload, headers and padding, free), and under it the live payload "
            "and the footprint over the ops with the peak marked. System allocators, "
            "whose layout pyalloc cannot see, get the timeline alone with the peak "
            "footprint measured as resident pages. With --shm, the map of a shared "
            "heap or heap file in use, read under its lock."
        ),
    )
    p.add_argument("trace", nargs="?", metavar="TRACE", help=".rep or .rep.gz file")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--policy", default="segregated", metavar="NAME", help="pyalloc policy (default segregated)"
    )
    which.add_argument(
        "--allocator",
        metavar="NAME",
        help=f"a system allocator instead ({', '.join(SYSTEM_ALLOCATORS)}): the timeline alone",
    )
    which.add_argument(
        "--mm",
        metavar="MM.C",
        help="a malloc-lab package instead (compiled as `replay --mm` does): the timeline"
        " alone, its footprint the peak of mem_heapsize()",
    )
    which.add_argument(
        "--compare",
        metavar="A,B,...",
        help="several policies or allocators: maps one above another at one scale, "
        "timelines on one axis",
    )
    which.add_argument(
        "--shm",
        metavar="NAME",
        help="draw a live shared heap (or a heap file: a path with a '/') instead of a trace",
    )
    p.add_argument(
        "-o",
        "--output",
        type=_file_name,
        required=True,
        metavar="FILE",
        help="the picture: .png, "
        ".svg, .pdf ...; with --animate .gif, or .mp4 where ffmpeg is installed",
    )
    moment = p.add_mutually_exclusive_group()
    moment.add_argument(
        "--at",
        type=_non_negative,
        metavar="OP",
        help="draw the map after op OP (0: before the first) instead of at the peak",
    )
    moment.add_argument(
        "--animate", action="store_true", help="the map over time, one frame every ops/FRAMES ops"
    )
    p.add_argument(
        "--frames",
        type=_positive,
        metavar="N",
        help="frames of --animate (default 60, at most 400)",
    )
    p.add_argument(
        "--width", type=_positive, default=1000, metavar="PX", help="image width (default 1000)"
    )
    p.add_argument(
        "--cell", type=_positive, default=2, metavar="PX", help="a cell's side (default 2 pixels)"
    )
    p.add_argument(
        "--rows",
        type=_positive,
        default=100,
        metavar="N",
        help="map rows at most: the bytes a cell grows in powers of two to fit (default 100)",
    )
    p.add_argument(
        "--scale",
        type=_positive,
        default=0,
        metavar="BYTES",
        help="bytes a cell, instead of the smallest power of two that fits --rows",
    )
    p.add_argument(
        "--capacity", type=_positive, metavar="BYTES", help="heap capacity (as for replay)"
    )
    p.add_argument(
        "--cache", action="store_true", help="keep the heap's cache of freed small blocks on"
    )
    p.set_defaults(run=_lab_command("viz_command"))


def add_top(subcommands: Subcommands) -> None:
    p = subcommands.add_parser(
        "top",
        help="a live terminal view of a shared heap: statistics, a map, named blocks",
        description=(
            "Show a shared heap (or a heap file: a path with a '/') as other processes "
            "use it, refreshed until interrupted: its statistics, a map of one "
            "character a cell (# payload, + headers and padding, . free) and its "
            "named blocks."
        ),
    )
    p.add_argument("name", help="a segment's name, or a heap file's path (with a '/')")
    p.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        metavar="SECONDS",
        help=f"time between refreshes, at least {MIN_INTERVAL} (default 1)",
    )
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.add_argument("--rows", type=_positive, default=16, metavar="N", help="map rows (default 16)")
    p.set_defaults(run=_lab_command("top_command"))


COMMANDS: list[Callable[[Subcommands], None]] = [
    add_shm,
    add_replay,
    add_bench,
    add_gen,
    add_record,
    add_viz,
    add_top,
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyalloc")
    except PackageNotFoundError:
        return "(not installed)"


def pyalloc_engine() -> str:
    import pyalloc

    return "compiled" if pyalloc.COMPILED else f"interpreted ({pyalloc.ENGINE})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyalloc", description="pyalloc: a dynamic memory allocator in Python"
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"pyalloc {_version()}, {pyalloc_engine()} engine",
        help="print the version and which engine runs (compiled or interpreted)",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subcommands)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, unwound as Ctrl-C is: every ``finally`` runs, temporaries go."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        status: int = args.run(args)
        sys.stdout.flush()  # a full device or a closed pipe is found here, not at exit
    except BrokenPipeError:
        # The reader went away (| head -1): say so once, and write nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _fail("the output was closed before everything was written")
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
            raise
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return _fail(f"cannot write the output: {e.strerror}")
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM: output files are written whole or not at all (a
        # temporary renamed at the end, removed on the way out).
        if isinstance(e, _Terminated):
            print("pyalloc: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("\npyalloc: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
