"""Malloc-lab packages: a student's ``mm.c`` built against pyalloc's memlib and replayed.

A CS:APP malloc-lab package defines ``mm_init``, ``mm_malloc``, ``mm_free``
and ``mm_realloc`` (and often ``mm_checkheap``) over the memlib interface
(``mem_sbrk``, ``mem_heap_lo``, ``mem_heap_hi``, ``mem_heapsize``,
``mem_pagesize``, ``mem_reset_brk``). ``build(mm.c)`` compiles it with the
system compiler together with the memlib of ``mmlab/`` (a 4 GiB area
reserved up front, grown like sbrk) into a shared object; the replay runs in
a subprocess (``trace.system``), so that a crash, an abort or a hang is that
trace's result, never the end of the run. Utilization is peak live payload /
peak ``mem_heapsize()``, as mdriver computes it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .rep import Trace
from .system import SystemResult, replay_system

MMLAB = Path(__file__).with_name("mmlab")
CFLAGS = ("-O2", "-g", "-fPIC", "-shared", "-std=gnu11")


class BuildError(Exception):
    """The package did not compile; the message is what the compiler printed."""


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@dataclass
class Package:
    source: Path  # the mm.c
    library: str  # the shared object built from it

    @property
    def name(self) -> str:
        return self.source.name


def build(source: str | os.PathLike[str], directory: str | None = None) -> Package:
    """Compile ``source`` (an mm.c) with the lab's memlib into a shared object."""
    path = Path(source)
    if not path.is_file():
        raise BuildError(f"{path}: no such file")
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC, or install gcc)")
    out_dir = Path(directory or tempfile.mkdtemp(prefix="pyalloc-mm-"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    library = out_dir / f"{path.stem}-{digest}.so"
    command = [
        cc, *CFLAGS, f"-I{MMLAB}", f"-I{path.parent}",
        str(path), str(MMLAB / "memlib.c"), "-o", str(library),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(done.stderr.strip() or f"{cc} exited with status {done.returncode}")
    return Package(path, str(library))


def replay_package(
    package: Package, trace: Trace, *, timed_repeats: int = 1, timeout: float | None = 60.0
) -> SystemResult:
    """Replay ``trace`` through the package, validated as any allocator is."""
    return replay_system(
        trace,
        package.name,
        timed_repeats=timed_repeats,
        timeout=timeout,
        malloc_lab=package.library,
    )
