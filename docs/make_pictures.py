"""Draw the pictures the README shows, one for each command of ``pyalloc viz`` and ``top``.

    python docs/make_pictures.py            # into docs/pictures/
    python docs/make_pictures.py --out DIR

Needs the ``lab`` extra.  Every input is in the package or generated with a
fixed seed, so the pictures come out the same on any machine (the ``top``
view and the shared heap's map carry the time they were taken).  The shared
heap is created as ``pictures-demo`` and removed at the end.  Takes
under a minute.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

from pyalloc import SharedHeap
from pyalloc.cli import main as pyalloc
from pyalloc.trace.generate import generate
from pyalloc.trace.rep import write_trace
from pyalloc.workloads import bundled_traces

HERE = Path(__file__).resolve().parent
DEMO_HEAP = "pictures-demo"  # the shared heap drawn by viz --shm and top, removed after


def run(*argv: str) -> None:
    print("pyalloc", " ".join(argv))
    status = pyalloc(list(argv))
    if status:
        raise SystemExit(f"make_pictures: pyalloc {argv[0]} failed with status {status}")


def bundled(name: str) -> str:
    for path in bundled_traces():
        if path.name.startswith(name):
            return str(path)
    raise SystemExit(f"make_pictures: no bundled workload {name!r}")


def fill(heap: SharedHeap, seed: int) -> None:
    """Blocks of many sizes, a third freed, and a few named ones: a heap in use."""
    rng = random.Random(seed)
    pointers = [heap.malloc(rng.choice((48, 200, 1500, 6000, 24000))) for _ in range(400)]
    heap.names["results"] = pointers[7]
    heap.names["matrix"] = pointers[40]
    heap.names["log"] = pointers[99]
    keep = {pointers[7], pointers[40], pointers[99]}
    for p in pointers[::3]:
        if p not in keep:
            heap.free(p)


def save_top(name: str, path: Path) -> None:
    """The terminal view of ``top --once``, saved as an SVG of the terminal."""
    from rich.console import Console

    from pyalloc.viz.live import run_top

    print(f"pyalloc top {name} --once  (as {path.name})")
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=100, force_terminal=True, file=sink)
        run_top(name, once=True, rows=12, console=console)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".svg")
    os.close(fd)
    try:
        console.save_svg(temporary, title=f"pyalloc top {name}")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "pictures", help="where to write")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    run("viz", bundled("python-script"), "-o", str(out / "viz-map.png"))

    with tempfile.TemporaryDirectory() as work:
        fragmenter = Path(work) / "fragmenter.rep"
        write_trace(generate("fragmenter", 20_000, 1), fragmenter)
        run(
            "viz",
            str(fragmenter),
            "--compare",
            "segregated,best-fit,buddy",
            "-o",
            str(out / "viz-compare.png"),
        )
        growth = Path(work) / "realloc_growth.rep"
        write_trace(generate("realloc_growth", 4_000, 1), growth)
        run(
            "viz",
            str(growth),
            "--animate",
            "--frames",
            "24",
            "--width",
            "720",
            "--rows",
            "40",
            "-o",
            str(out / "viz-animate.gif"),
        )

    try:
        heap = SharedHeap.create(DEMO_HEAP, 16 << 20)
    except FileExistsError:
        raise SystemExit(
            f"make_pictures: a shared heap {DEMO_HEAP!r} exists; remove it with "
            f"`pyalloc shm rm {DEMO_HEAP}` if it is a leftover"
        ) from None
    try:
        fill(heap, seed=1)
        run("viz", "--shm", heap.name, "-o", str(out / "viz-shm.png"))
        save_top(heap.name, out / "top.svg")
    finally:
        heap.close()
        heap.unlink()


if __name__ == "__main__":
    sys.exit(main())
