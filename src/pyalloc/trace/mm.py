"""Malloc-lab packages: a student's ``mm.c`` built against pyalloc's memlib and replayed.

A CS:APP malloc-lab package defines ``mm_init``, ``mm_malloc``, ``mm_free``
and ``mm_realloc`` (and often ``mm_checkheap``) over the memlib interface
(``mem_sbrk``, ``mem_heap_lo``, ``mem_heap_hi``, ``mem_heapsize``,
``mem_pagesize``, ``mem_reset_brk``). ``build(mm.c)`` compiles it with the
system compiler together with the memlib of ``mmlab/`` (a 4 GiB area
reserved up front, grown like sbrk) into a shared object, kept in the user
cache directory under a digest of everything that went into it (so an
unchanged package is not compiled twice); the replay runs in
a subprocess (``trace.system``), so that a crash, an abort or a hang is that
trace's result, never the end of the run. Utilization is peak live payload /
peak ``mem_heapsize()``, as mdriver computes it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .record import CompilerNotFoundError, build_cached, find_compiler, user_cache_dir
from .rep import Trace
from .system import REPLAY_TIMEOUT, SystemResult, replay_system

MMLAB = Path(__file__).with_name("mmlab")
# -z defs: a function the package calls but never defines (a missing
# mm_realloc, a typo) fails the build, not every replay that loads it.
CFLAGS = ("-O2", "-g", "-fPIC", "-shared", "-std=gnu11", "-Wl,-z,defs")
# memlib, and a table of the four entry points (a package missing one fails to link).
LAB_SOURCES = (MMLAB / "memlib.c", MMLAB / "entry.c")
COMPILE_TIMEOUT = 300.0  # seconds: a compiler stuck on an #include of a pipe is stopped


class BuildError(Exception):
    """The package could not be built.

    ``compiler_output`` is what the compiler printed when it ran and failed,
    and empty when it never ran (no such source, no compiler): then the
    message alone says why.
    """

    def __init__(self, message: str, compiler_output: str = "") -> None:
        super().__init__(message)
        self.compiler_output = compiler_output

    def report(self, source: object) -> str:
        """What a command says: one line naming ``source``, then what the compiler printed."""
        if self.compiler_output:
            return f"--mm {source}: the package did not compile:\n{self.compiler_output}"
        return f"--mm: {self}"


def compiler() -> list[str] | None:
    """The C compiler command packages are built with, or None without one."""
    try:
        return find_compiler()
    except CompilerNotFoundError:
        return None


@dataclass
class Package:
    source: Path  # the mm.c
    library: str  # the shared object built from it

    @property
    def name(self) -> str:
        return self.source.name


def build(source: str | os.PathLike[str], directory: str | None = None) -> Package:
    """Compile ``source`` (an mm.c) with the lab's memlib into a shared object.

    The object goes to ``directory`` (default: the user cache directory), named
    by a digest of the compiler command, the lab's memlib and the package's
    source and headers, so a change to any of them builds afresh.
    """
    path = Path(source)
    if not path.is_file():
        raise BuildError(
            f"{path}: {'a directory, not an mm.c' if path.is_dir() else 'no such file'}"
        )
    try:
        cc = find_compiler("building a malloc-lab package needs a C compiler")
    except CompilerNotFoundError as e:
        raise BuildError(str(e)) from None
    flags = [*CFLAGS, f"-I{MMLAB}", f"-I{path.parent}"]
    # The headers beside the package, as the compiler may include them: regular
    # files only (a directory, a broken link or a pipe named *.h is none).
    headers = [h for h in sorted(path.parent.glob("*.h")) if h.is_file()]
    inputs = [path, *LAB_SOURCES, *sorted(MMLAB.glob("*.h")), *headers]
    digest = hashlib.sha256(shlex.join([*cc, *flags]).encode())
    for each in inputs:
        try:
            digest.update(each.name.encode() + b"\0" + each.read_bytes())
        except OSError as e:
            raise BuildError(f"{each}: cannot read: {e.strerror}") from None
    out_dir = Path(directory) if directory is not None else user_cache_dir("mm")
    library = out_dir / f"{path.stem}-{digest.hexdigest()[:16]}.so"

    def compile_into(built: Path) -> None:
        command = [*cc, *flags, str(path), *map(str, LAB_SOURCES), "-o", str(built)]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise BuildError(
                f"{path}: the compiler did not finish within {COMPILE_TIMEOUT:.0f} s"
            ) from None
        if done.returncode != 0:
            status = f"{cc[0]} exited with status {done.returncode}"
            raise BuildError(status, done.stderr.strip() or status)

    return Package(path, str(build_cached(library, compile_into)))


def replay_package(
    package: Package,
    trace: Trace,
    *,
    timed_repeats: int = 1,
    timeout: float | None = REPLAY_TIMEOUT,
) -> SystemResult:
    """Replay ``trace`` through the package, validated as any allocator is."""
    return replay_system(
        trace,
        package.name,
        timed_repeats=timed_repeats,
        timeout=timeout,
        malloc_lab=package.library,
    )
