"""The interpreted engine against itself before the compiled engine existed.

The engine's source became accessors the compiler inlines (one spelling of
each rule of the block format); interpreted, every accessor is a Python
call. The target: interpreted, the engine costs at most 1.5 times what the
last interpreted-only engine cost (commit ``BEFORE``).

The script extracts that commit's ``src`` with ``git archive`` into a
temporary directory, then times both trees' default ``Heap`` with
``PYALLOC_PURE_PYTHON=1``, each in child processes of its own, taking turns
(old, new, old, new, ...) so that whatever else runs on the machine slows
both alike, and keeps each tree's best run. The traces are the classic ones
when ``../shared/traces/classic`` is there (without the two short ones),
else the bundled recordings; both trees replay the same op tuples through
``replay_loop.replay``.

Run: ``python benchmarks/interpreted_before.py`` from a git checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "b2bce02"  # the last commit whose engine ran interpreted only
TARGET_RATIO = 1.5


def child_main(source: str, workloads_file: str) -> int:
    """Time ``source``'s interpreted Heap on the pickled workloads; print JSON."""
    sys.path.insert(0, source)
    from replay_loop import time_warm

    from pyalloc import Heap  # the tree under test, not the installed package

    with open(workloads_file, "rb") as f:
        workloads = pickle.load(f)
    total = ops = 0
    for workload in workloads:
        heap = Heap()
        total += time_warm(heap, workload, 1)
        ops += len(workload[1])
    print(json.dumps({"ns_per_op": total / ops}))
    return 0


def load_workloads() -> tuple[str, list[Any]]:
    """The first of throughput.py's trace sets: the classic traces when present."""
    sys.path.insert(0, str(ROOT / "src"))
    from throughput import load_sets

    label, workloads = load_sets(None)[0]
    return label, workloads


def extract(rev: str, into: str) -> str:
    """``rev``'s src directory, extracted under ``into``; SystemExit if git cannot."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=False
    )
    if archive.returncode:
        message = archive.stderr.decode(errors="replace").strip().splitlines()
        raise SystemExit(f"cannot read commit {rev}: {message[-1] if message else 'git failed'}")
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return os.path.join(into, "src")


def time_tree(source: str, workloads_file: str) -> float:
    env = dict(os.environ, PYALLOC_PURE_PYTHON="1")
    command = [sys.executable, __file__, "--child", source, workloads_file]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the child timing {source} failed:\n{done.stderr.strip()}")
    value: float = json.loads(done.stdout)["ns_per_op"]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rev", default=BEFORE, help=f"the commit before (default {BEFORE})")
    parser.add_argument("--rounds", type=int, default=3, help="turns each tree takes")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(*args.child)

    label, workloads = load_workloads()
    with tempfile.TemporaryDirectory(prefix="pyalloc-before-") as tmp:
        old_src = extract(args.rev, tmp)
        workloads_file = os.path.join(tmp, "workloads.pickle")
        with open(workloads_file, "wb") as f:
            pickle.dump(workloads, f)
        trees = {f"before ({args.rev})": old_src, "now": str(ROOT / "src")}
        best = dict.fromkeys(trees, float("inf"))
        for turn in range(args.rounds):
            for name, source in trees.items():
                best[name] = min(best[name], time_tree(source, workloads_file))
            print(f"  round {turn + 1}/{args.rounds} done", file=sys.stderr)
    ops = sum(len(w[1]) for w in workloads)
    print(f"interpreted engine, default Heap, {label} ({ops:,} ops), best of {args.rounds}")
    for name, value in best.items():
        print(f"  {name:20} {value:8,.0f} ns/op")
    ratio = best["now"] / best[f"before ({args.rev})"]
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    print(f"{verdict}  interpreted now / before: {ratio:.2f}x (target: at most {TARGET_RATIO}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
