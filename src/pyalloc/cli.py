"""The ``pyalloc`` command.

Subcommands::

    pyalloc shm list [--all]          shared heaps in /dev/shm
    pyalloc shm info NAME [--json]    statistics and named blocks of one heap
    pyalloc shm check NAME            walk a heap; exit status 1 if it is corrupted
    pyalloc shm rm NAME [--force]     remove a heap's segment

Each command is one function, ``add_<command>(subcommands)``, that adds its
parser and sets ``run`` on it: a function of the parsed arguments that
returns the exit status. ``COMMANDS`` lists them; adding a command is writing
one such function and listing it there.

Exit status: 0 success, 1 the command found a problem (no such segment, not
a heap, corruption), 2 bad usage (from argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import HeapCorruptionError, HeapError
from .regions import list_shared, unlink_shared
from .shared import SharedHeap, describe_segment, list_heaps

Subcommands = Any  # argparse's private _SubParsersAction


def human_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _fail(message: str) -> int:
    print(f"pyalloc: {message}", file=sys.stderr)
    return 1


# -- pyalloc shm ------------------------------------------------------------------------


def shm_list(args: argparse.Namespace) -> int:
    heaps = {info["name"]: info for info in list_heaps()}
    names = list_shared() if args.all else sorted(heaps)
    names = [n for n in names if not n.startswith(".")]
    if not names:
        print("no shared heaps in /dev/shm")
        return 0
    rows = [("NAME", "CAPACITY", "IN USE", "PEAK", "POLICY", "STATE")]
    for name in names:
        info = heaps.get(name)
        if info is None:
            rows.append((name, "-", "-", "-", "-", "not a pyalloc heap"))
            continue
        state = "recovery pending" if info["journal_entries"] else "ok"
        rows.append(
            (
                name,
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
    return 0


def _attach(name: str) -> SharedHeap | str:
    try:
        return SharedHeap.attach(name)
    except (HeapError, OSError, ValueError) as e:
        return str(e)


def shm_info(args: argparse.Namespace) -> int:
    heap = _attach(args.name)
    if isinstance(heap, str):
        return _fail(heap)
    with heap:
        try:
            stats = heap.stats()
            names = heap.names.copy()
        except HeapCorruptionError as e:
            return _fail(f"{args.name}: corrupted: {e}")
        policy = heap.policy_name
    if args.json:
        print(json.dumps({"name": args.name, "policy": policy, "stats": stats, "names": names}))
        return 0
    print(f"name: {args.name}")
    print(f"policy: {policy}")
    for key, value in stats.items():
        shown = (
            f"{value} ({human_bytes(value)})"
            if key.endswith("bytes")
            or key
            in (
                "capacity",
                "largest_free",
            )
            else str(value)
        )
        print(f"{key}: {shown}")
    if names:
        print("named blocks:")
        width = max(len(k) for k in names)
        for key in sorted(names):
            print(f"  {key.ljust(width)}  {names[key]}")
    return 0


def shm_check(args: argparse.Namespace) -> int:
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
    if describe_segment(args.name) is None and not args.force:
        return _fail(f"{args.name} is not a pyalloc shared heap; use --force to remove it anyway")
    try:
        unlink_shared(args.name)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    return 0


def add_shm(subcommands: Subcommands) -> None:
    shm = subcommands.add_parser("shm", help="inspect and remove shared heaps")
    actions = shm.add_subparsers(dest="shm_command", required=True, metavar="ACTION")

    p = actions.add_parser("list", help="list the shared heaps in /dev/shm")
    p.add_argument("--all", action="store_true", help="also list segments that are not heaps")
    p.set_defaults(run=shm_list)

    p = actions.add_parser("info", help="statistics and named blocks of a shared heap")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=shm_info)

    p = actions.add_parser("check", help="walk a shared heap; exit status 1 if corrupted")
    p.add_argument("name")
    p.set_defaults(run=shm_check)

    p = actions.add_parser("rm", help="remove a shared heap's segment")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="remove it even if it is not a heap")
    p.set_defaults(run=shm_rm)


# -- the command ------------------------------------------------------------------------

COMMANDS: list[Callable[[Subcommands], None]] = [add_shm]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyalloc", description="pyalloc: a dynamic memory allocator in Python"
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
