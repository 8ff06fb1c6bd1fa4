"""Replaying a trace through the system's allocators: glibc, jemalloc, mimalloc, tcmalloc.

Every allocator runs the same replayer (``_system_replayer.py``) in a fresh
subprocess of the current interpreter, started with ``-I -S`` so that the
process is small and the same each time::

    allocator   LD_PRELOAD                   Debian package
    glibc       (none: the C library's own)  libc6
    jemalloc    libjemalloc.so.2             libjemalloc2
    mimalloc    libmimalloc.so.2             libmimalloc2.0
    tcmalloc    libtcmalloc_minimal.so.4     libtcmalloc-minimal4

The replayer calls ``malloc``, ``free`` and ``realloc`` through ctypes; with
the library preloaded those names resolve to it, and the replayer refuses to
run (an error, not a glibc measurement under another name) when they do not.
glibc runs in a subprocess too, rather than in this process through ctypes,
so that the trace meets the same fresh process as the others do.

What is measured
----------------

peak_payload     the largest sum of requested sizes of live blocks, under the
                 replay semantics of :mod:`pyalloc.trace.rep`.
peak_footprint   glibc: the largest number of bytes glibc holds from the
                 system, ``arena + hblkhd`` of ``mallinfo2()`` (glibc 2.33
                 and later), read after every op that allocates, above a
                 baseline taken just before the first op, less the free
                 room of the trace's new arena (which is the trace's: the
                 replayer's docstring says why).  Exact to the byte, and
                 what glibc itself says it has taken: the allocator's own
                 account, where the others' footprint is the kernel's.  A
                 glibc without ``mallinfo2`` is measured as the others
                 are, and ``footprint_method`` says so.
                 The others: resident memory, the largest number of
                 private resident pages of the replayer
                 (``/proc/self/statm``: resident - shared, read after every
                 op that allocates) above a baseline taken just before the
                 first op, in bytes, with every byte of every block written
                 so that live blocks are resident.  The trace runs in a thread of its own, which
                 gets an arena (glibc, jemalloc), heap (mimalloc) or thread
                 cache (tcmalloc) of its own, away from the interpreter's
                 blocks.  Details in the replayer's docstring.
                 Chosen over each allocator's own statistics because those
                 count different things (mapped, committed, resident, with
                 or without metadata) and report the present, not the peak;
                 resident pages are what each allocator costs the machine
                 and are read the same way for all of them (glibc's own
                 count, read after every op, is exact, hence its use).  The
                 interpreter adds a page or two of noise, and an allocator
                 may still hand the trace a few pages it had already
                 touched, so utilization of a trace whose peak is below a
                 few hundred KiB says little.  Footprints are multiples of
                 the page size.
footprint_method which of these a result used: FOOTPRINT_METHOD (resident
                 pages), FOOTPRINT_METHOD_MALLINFO2,
                 FOOTPRINT_METHOD_NO_MALLINFO2 (glibc measured by resident
                 pages, since it has no mallinfo2) or
                 FOOTPRINT_METHOD_MEM_HEAPSIZE (a malloc-lab package); each
                 starts with the short name a table shows.
util             peak_payload / peak_footprint (0.0 when the footprint is 0).
seconds          the fastest of ``timed_repeats`` passes that make the same
                 calls with no touching or checking; each includes the
                 ctypes cost of a call (a few hundred ns), as pyalloc's
                 measured calls include Python's.

Validation (in the measured pass): pointers non-NULL and aligned to
``min(16, largest power of two <= size)``, a stamp at both ends of every block
intact at free and realloc, and realloc keeping the prefix.  A failure gives
``valid=False`` with the op and the reason.  So does a missing library, an
allocator the platform cannot run, and a replayer that crashes or times out:
:func:`replay_system` never raises for those.
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ._system_replayer import PARENT_VARIABLE, REPORT_VARIABLE
from .rep import Trace

__all__ = [
    "FOOTPRINT_METHOD",
    "FOOTPRINT_METHOD_MALLINFO2",
    "FOOTPRINT_METHOD_MEM_HEAPSIZE",
    "FOOTPRINT_METHOD_NO_MALLINFO2",
    "SYSTEM_ALLOCATORS",
    "SystemResult",
    "find_allocator_library",
    "glibc_has_mallinfo2",
    "is_library_path",
    "replay_system",
    "system_available",
]

SYSTEM_ALLOCATORS: tuple[str, ...] = ("glibc", "jemalloc", "mimalloc", "tcmalloc")

FOOTPRINT_METHOD = (
    "resident pages: peak resident anonymous memory (statm resident - shared, sampled after "
    "every allocating op) above a baseline taken before the first op, every block byte written"
)
FOOTPRINT_METHOD_MALLINFO2 = (
    "mallinfo2: peak of glibc's arena + hblkhd (bytes held from the system, exact; sampled "
    "after every allocating op) above a baseline taken before the first op, less the free "
    "room of the trace's arena"
)
FOOTPRINT_METHOD_NO_MALLINFO2 = (
    FOOTPRINT_METHOD + "; this glibc has no mallinfo2 (added in 2.33), so its bytes cannot be read"
)
FOOTPRINT_METHOD_MEM_HEAPSIZE = (
    "mem_heapsize: peak of the malloc-lab package's mem_heapsize() (mdriver's footprint), "
    "sampled after every allocating op"
)

# allocator -> (shared object to preload, Debian package that ships it)
PRELOAD_LIBRARIES: dict[str, tuple[str, str]] = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc2"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc2.0"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}
GLIBC_LIBRARY = "libc.so.6"

# Searched when the dynamic linker's cache does not list a library.
LIBRARY_DIRECTORIES = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/local/lib",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/lib",
)

_KIND_CODES = {"a": 0, "f": 1, "r": 2}
_REPLAYER = Path(__file__).with_name("_system_replayer.py")
REPLAY_TIMEOUT = -1.0  # a replay's timeout: replay_timeout() of its size


def replay_timeout(ops: int, timed_repeats: int) -> float:
    """Seconds a replay of ``ops`` ops may take before it counts as hung: a
    minute, and a millisecond an op of each pass (the slowest allocator the
    lab meets, a textbook implicit list on a long trace, stays far within)."""
    return 60.0 + 0.001 * ops * (1 + timed_repeats)


ERRORS_KEPT = 4096  # bytes of the replayer's stderr kept, its end: what explains a crash


def _run_replayer(
    command: list[str], env: dict[str, str], timeout: float | None
) -> tuple[int, str]:
    """Run the replayer in a process group of its own; its exit status and
    the end of its stderr (read as it comes, so an allocator that prints
    without end costs neither memory nor disk). Whatever the group still
    holds when it ends (a process the allocator forked) is killed with it.
    TimeoutExpired after ``timeout`` seconds."""
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    tail = bytearray()

    def drain() -> None:
        for chunk in iter(lambda: process.stderr.read1(65536), b""):  # type: ignore[union-attr]
            tail.extend(chunk)
            del tail[:-ERRORS_KEPT]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        reader.join(timeout=5)
        process.stderr.close()
    return returncode, tail.decode(errors="replace").strip()


def trace_peak_payload(trace: Trace) -> int:
    """The most bytes the trace's live blocks ask for at once, as the replayer counts them."""
    sizes: dict[int, int] = {}
    payload = peak = 0
    for kind, block, size in trace.ops:
        if kind == "f" or (kind == "r" and not size):
            payload -= sizes.pop(block, 0)
        else:
            payload += size - sizes.get(block, 0)
            sizes[block] = size
            peak = max(peak, payload)
    return peak


@dataclass
class SystemResult:
    """One trace replayed through one system allocator."""

    allocator: str
    trace: str
    valid: bool
    ops: int
    peak_payload: int  # bytes
    peak_footprint: int  # bytes, measured as FOOTPRINT_METHOD says
    util: float  # peak_payload / peak_footprint
    seconds: float  # fastest timed pass
    error: str | None
    footprint_method: str = FOOTPRINT_METHOD


def _ldconfig_paths() -> dict[str, str]:
    """soname -> path from the dynamic linker's cache (empty if unreadable)."""
    ldconfig = shutil.which("ldconfig") or next(
        (path for path in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(path)),
        None,
    )
    if ldconfig is None:
        return {}
    try:
        listing = subprocess.run(
            [ldconfig, "-p"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    machine = platform.machine()
    paths: dict[str, str] = {}
    for line in listing.splitlines():
        name, arrow, path = line.strip().partition(" => ")
        if not arrow:
            continue
        soname = name.split(" ", 1)[0]
        # Prefer this machine's word size when both are listed.
        if soname not in paths or ("x86-64" in name and machine == "x86_64"):
            paths[soname] = path.strip()
    return paths


def _python_package_directories() -> list[str]:
    """``lib`` directories of pip packages that ship C libraries (cmeel's prefix)."""
    found = []
    for entry in sys.path:
        candidate = os.path.join(entry, "cmeel.prefix", "lib")
        if os.path.isdir(candidate):
            found.append(candidate)
    return found


def find_allocator_library(allocator: str) -> str | None:
    """Path of the shared object to preload for ``allocator``, or None if not found.

    The system's libraries first, then those a pip package ships (``pip
    install cmeel-mimalloc`` puts mimalloc under ``cmeel.prefix/lib``).
    """
    soname, _package = PRELOAD_LIBRARIES[allocator]
    cached = _ldconfig_paths().get(soname)
    if cached and os.path.exists(cached):
        return cached
    for directory in LIBRARY_DIRECTORIES:
        candidate = os.path.join(directory, soname)
        if os.path.exists(candidate):
            return candidate
    unversioned = soname.partition(".so")[0] + ".so"  # a pip package's may be a newer major
    for directory in _python_package_directories():
        for name in (soname, unversioned):
            candidate = os.path.join(directory, name)
            if os.path.exists(candidate):
                return candidate
    return None


def glibc_has_mallinfo2() -> bool:
    """Whether this process's C library has ``mallinfo2`` (glibc 2.33 and later).

    The replayer runs on the same C library, so this says how glibc's
    footprint will be measured there.
    """
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


def is_library_path(name: str) -> bool:
    """Whether an allocator name is the path of a shared object (``./my.so``)."""
    return "/" in name or name.endswith(".so")


def system_available(name: str) -> str | None:
    """None when ``name`` can be replayed here, else the reason it cannot."""
    if is_library_path(name):
        if not os.path.isfile(name):
            return f"{name}: no such shared object"
        return None
    if name not in SYSTEM_ALLOCATORS:
        return f"unknown allocator {name!r}; choose from {', '.join(SYSTEM_ALLOCATORS)}"
    if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/status"):
        return "system allocators are measured through /proc/self/status: Linux only"
    if name == "glibc":
        if platform.libc_ver()[0] != "glibc":
            return "the C library is not glibc"
        return None
    soname, package = PRELOAD_LIBRARIES[name]
    if find_allocator_library(name) is None:
        return f"{soname} not found; apt-get install {package}"
    return None


SIZE_T_LIMIT = 1 << 64  # malloc's argument is a size_t


def _write_ops(trace: Trace, path: Path) -> None:
    ops = trace.ops
    header = array.array("Q", [trace.num_ids, len(ops)])
    kinds = array.array("Q", [_KIND_CODES[op[0]] for op in ops])
    ids = array.array("Q", [op[1] for op in ops])
    sizes = array.array("Q", [op[2] for op in ops])
    with open(path, "wb") as out:
        for part in (header, kinds, ids, sizes):
            part.tofile(out)


def replay_system(
    trace: Trace,
    allocator: str,
    *,
    timed_repeats: int = 1,
    timeout: float | None = REPLAY_TIMEOUT,
    malloc_lab: str | None = None,
) -> SystemResult:
    """Replay ``trace`` through ``allocator`` in a subprocess; see the module docstring.

    Never raises for a missing library, an invalid trace, a failed
    validation, a crash or a timeout: the result has ``valid=False`` and
    ``error`` says why.  ``timeout`` (seconds, None for none; by default
    ``replay_timeout`` of the trace) bounds the whole subprocess.
    ``malloc_lab``: the shared object built from a malloc-lab package
    (``trace.mm``), replayed through its mm_* functions with mdriver's
    footprint (the peak of ``mem_heapsize()``); ``allocator`` is then only
    its name in the result.
    """
    name = trace.name or "<trace>"

    def failed(error: str, peak_payload: int = 0, peak_footprint: int = 0) -> SystemResult:
        return SystemResult(
            allocator=allocator,
            trace=name,
            valid=False,
            ops=len(trace.ops),
            peak_payload=peak_payload,
            peak_footprint=peak_footprint,
            util=0.0,
            seconds=0.0,
            error=error,
        )

    if timed_repeats < 0:
        raise ValueError(f"timed_repeats must be >= 0, got {timed_repeats}")
    reason = None if malloc_lab is not None else system_available(allocator)
    if reason is not None:
        return failed(reason)
    try:
        trace.validate()
    except ValueError as exc:
        return failed(f"invalid trace: {exc}")
    for index, op in enumerate(trace.ops):
        if op[2] >= SIZE_T_LIMIT:
            return failed(f"op {index + 1} asks for {op[2]} bytes, more than a C size_t can hold")

    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    mode = []
    if malloc_lab is not None:
        library = malloc_lab
        mode = ["mm"]
    elif is_library_path(allocator):
        library = os.path.abspath(allocator)
        mode = ["local"]  # dlopen'ed and called directly, not preloaded
    elif allocator == "glibc":
        library = GLIBC_LIBRARY
        if glibc_has_mallinfo2():
            mode = ["glibc"]  # preloaded (it is the process's), measured by mallinfo2
    else:
        found = find_allocator_library(allocator)
        if found is None:  # removed since system_available looked
            return failed(f"{PRELOAD_LIBRARIES[allocator][0]} not found")
        library = found
        env["LD_PRELOAD"] = library

    with tempfile.TemporaryDirectory(prefix="pyalloc-system-", ignore_cleanup_errors=True) as work:
        ops_path = Path(work) / "ops.bin"
        _write_ops(trace, ops_path)
        command = [
            sys.executable,
            "-I",
            "-S",
            str(_REPLAYER),
            str(ops_path),
            library,
            str(timed_repeats),
            *mode,
        ]
        progress_path = Path(work) / "progress"
        progress_path.write_bytes(bytes(8))
        env["PYALLOC_REPLAY_PROGRESS"] = str(progress_path)

        def at_op() -> str:
            """Where the replayer was, from the word it keeps: an op of the
            checked pass, or a timed pass past them."""
            try:
                index = int.from_bytes(progress_path.read_bytes()[:8], sys.byteorder)
            except OSError:  # the allocator removed it
                return ""
            if index == len(trace.ops) + 1:
                return " freeing the blocks the checked pass left (which had passed)"
            if index > len(trace.ops):
                timed = index - len(trace.ops) - 1
                return f" in timed pass {timed} (the checked pass had passed)"
            if not index:
                return " before op 1 (loading the allocator, or in mm_init)"
            kind, block, size = trace.ops[index - 1]
            return f" at op {index} ({kind} {block}{'' if kind == 'f' else f' {size}'})"

        # The report comes in a file of its own: stdout is the allocator's too
        # (dropped), and the end of stderr says why a crash was.
        report_path = Path(work) / "report.json"
        env[REPORT_VARIABLE] = str(report_path)
        env[PARENT_VARIABLE] = str(os.getpid())
        if timeout == REPLAY_TIMEOUT:
            timeout = replay_timeout(len(trace.ops), timed_repeats)
        try:
            returncode, errors = _run_replayer(command, env, timeout)
        except subprocess.TimeoutExpired:
            hung = f"did not finish within {timeout:.0f} s"
            return failed(f"the {allocator} replayer {hung}{at_op()}")
        except OSError as exc:
            return failed(f"the {allocator} replayer could not start: {exc}")
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError):
            report = None
        if returncode != 0 or not isinstance(report, dict):
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
            )
            if returncode == 0:
                how += " without a report"
            detail = " / ".join(errors.splitlines()[-3:])
            return failed(
                f"the {allocator} replayer {how}{at_op()}" + (f": {detail}" if detail else "")
            )

    peak_payload = int(report.get("peak_payload", 0))
    peak_footprint = int(report.get("peak_footprint", 0))
    if report.get("error"):
        return failed(str(report["error"]), peak_payload, peak_footprint)
    expected = trace_peak_payload(trace)
    if peak_payload != expected:  # the report was written by something else than the replayer
        return failed(
            f"the {allocator} replayer's report gives a peak payload of {peak_payload:,} bytes;"
            f" the trace's is {expected:,}"
        )
    method = FOOTPRINT_METHOD
    if malloc_lab is not None:
        method = FOOTPRINT_METHOD_MEM_HEAPSIZE
    elif report.get("footprint_method") == "mallinfo2":
        method = FOOTPRINT_METHOD_MALLINFO2
    elif allocator == "glibc":
        method = FOOTPRINT_METHOD_NO_MALLINFO2
    return SystemResult(
        allocator=allocator,
        trace=name,
        valid=True,
        ops=len(trace.ops),
        peak_payload=peak_payload,
        peak_footprint=peak_footprint,
        util=peak_payload / peak_footprint if peak_footprint else 0.0,
        seconds=float(report["seconds"]),
        error=None,
        footprint_method=method,
    )
