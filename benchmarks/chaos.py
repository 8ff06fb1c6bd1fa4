"""SIGKILL shared-heap workers at random moments, many times, and check every survivor.

Runs the scenario of ``tests/test_shared_chaos.py`` (workers allocating,
filling, verifying and publishing blocks in one SharedHeap while the driver
kills one of them at random moments, half of the kills aimed at a worker
stopped inside an operation that writes) in rounds of ``--per-round`` kills,
each round on a fresh heap, until ``--kills`` kills are done. After every
kill the driver checks the whole heap and the bytes of every published
block; every survivor verifies its own blocks as it goes. Any failure stops
the run with its message and a non-zero exit.

    python benchmarks/chaos.py --kills 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
try:
    import pyalloc  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from test_shared_chaos import run_chaos  # noqa: E402

BAR = 40


def progress(done: int, total: int) -> None:
    filled = BAR * done // total
    print(f"\r[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} kills", end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=50, help="kills on one heap")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.kills <= 0 or args.per_round <= 0 or args.workers <= 0:
        parser.error("--kills, --per-round and --workers must be positive")
    done = aimed = recoveries = ops = checks = 0
    seconds = 0.0
    round_no = 0
    progress(0, args.kills)
    try:
        while done < args.kills:
            kills = min(args.per_round, args.kills - done)
            report = run_chaos(kills, args.workers, seed=args.seed + round_no)
            round_no += 1
            done += report.kills
            aimed += report.aimed_kills
            recoveries += report.recoveries
            ops += report.worker_ops
            checks += report.published_checks
            seconds += report.seconds
            progress(done, args.kills)
    except Exception as e:  # a failed check, a corrupted heap: the run's verdict
        print(f"\nFAIL after {done} kills: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print()
    print(
        f"{done} kills ({aimed} aimed mid-operation), {recoveries} recoveries, "
        f"{checks} published blocks verified after kills, {ops} operations by survivors, "
        f"{seconds:.1f} s"
    )
    print(f"target: every check passes after each of {args.kills} kills: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
