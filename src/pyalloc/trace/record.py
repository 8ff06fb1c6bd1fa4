"""Recording the allocations of a real program as a ``.rep`` trace.

How a recording is made
-----------------------

1. ``interpose.c`` (beside this file) is compiled once with the system C
   compiler into ``$XDG_CACHE_HOME/pyalloc`` (or ``~/.cache/pyalloc``), named
   after a hash of its source, so an edited source gets a fresh build and a
   stale one is never loaded.  ``$CC`` is used when set, else ``cc``, ``gcc``
   or ``clang`` from ``PATH``; with none of them :class:`CompilerNotFoundError`
   says so.
2. The command runs with the library in ``LD_PRELOAD`` and the log path in
   ``PYALLOC_TRACE_FILE``; its standard streams are the caller's and its exit
   status is returned, not raised.  The interposer appends one 32-byte record
   per malloc, calloc, realloc, free or aligned allocation (the log layout is
   described at the top of ``interpose.c``).
3. The log is converted to a trace (:func:`convert_records`) and written with
   :func:`~pyalloc.trace.rep.write_trace`.

Which process is recorded
-------------------------

The first process that loads the library (the command itself) writes the main
log.  Programs it starts with exec are recorded only with
``follow_exec=True``, each to a log of its own; ``process="largest"`` then
converts whichever log holds the most records (``gcc`` spends its allocations
in ``cc1``, not in the driver).  A child made by fork without exec is not
recorded.  A wrapper that execs without forking (``env``, a shell's
``exec``) keeps its pid but loads a fresh copy of the library, which finds
the main log taken: the program it starts is recorded only with
``follow_exec`` too.  One trace always describes one address space.

Conversion rules
----------------

Addresses become ids.  ``live`` maps each address the program holds to its
id and requested size; an id returns to a pool when its block is freed and
the smallest pooled id is handed out next, so ``num_ids`` is the largest
number of blocks live at once (plus any left live by a missed free)::

    record                         trace ops             notes
    malloc/calloc/aligned -> q     a ID SIZE             calloc size = n * m; the
                                                         alignment is dropped
    free(p), p live                f ID
    free(p), p unknown             (none)                ``unknown_frees`` += 1
    realloc(0, n) -> q             a ID n
    realloc(p, n) -> q, p live     r ID n                q takes p's id
    realloc(p, n) -> q, p unknown  a ID n                ``unknown_reallocs`` += 1
    realloc(p, 0) -> 0             f ID                  (glibc frees p); written as
                                                         ``f`` rather than ``r ID 0``
                                                         so every replayer agrees
    realloc(p, 0) -> q != 0        f ID, a ID' 0         an allocator that keeps a
                                                         minimal block
    any call that returned NULL    (none)                ``failed_calls`` += 1; a
      (size > 0)                                         failed realloc leaves p live
    allocation returning a live q  f OLD, then the op    ``implicit_frees`` += 1: a
                                                         free that was not seen

An unknown pointer is one allocated before recording began or by a function
the interposer does not cover.

``max_ops`` stops the conversion once that many ops are written (and asks the
interposer to stop after a matching number of records, which bounds the log).
Blocks still live at the end are freed by closing ``f`` ops when
``free_at_end`` is true (the default: balanced traces, as the classic lab
traces are; the peak is unchanged) and left live otherwise; the closing frees
do not count against ``max_ops``.  ``heap_hint`` is the peak live payload, as
for the generated traces.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any, NamedTuple

from .rep import Op, Trace, write_trace

__all__ = [
    "CompilerNotFoundError",
    "ConversionStats",
    "RawRecord",
    "RecordError",
    "RecordResult",
    "build_cached",
    "build_interposer",
    "convert_records",
    "find_compiler",
    "read_log",
    "record",
    "user_cache_dir",
]

INTERPOSER_SOURCE = "interpose.c"
LOG_MAGIC = b"PYALREC1"
LOG_VERSION = 1
LOG_HEADER = struct.Struct("=8sII")  # magic, version, pid
LOG_RECORD = struct.Struct("=IIQQQ")  # kind, aux, ptr, size, result

RECORD_MALLOC = 1
RECORD_CALLOC = 2
RECORD_REALLOC = 3
RECORD_FREE = 4
RECORD_ALIGNED = 5
RECORD_KINDS = (RECORD_MALLOC, RECORD_CALLOC, RECORD_REALLOC, RECORD_FREE, RECORD_ALIGNED)

assert LOG_HEADER.size == 16 and LOG_RECORD.size == 32  # as interpose.c asserts

# Compilers tried, in order, when $CC is not set.
COMPILER_NAMES = ("cc", "gcc", "clang")
COMPILE_FLAGS = ("-O2", "-shared", "-fPIC", "-pthread")
LINK_LIBS = ("-ldl",)

# Extra log records allowed per requested op when ``max_ops`` bounds the log:
# records that give no op (unknown frees, failed calls) are rare.
_LOG_SLACK_FACTOR = 2
_LOG_SLACK_RECORDS = 4096


class RecordError(RuntimeError):
    """A recording that could not be made (no log written, a bad log)."""


class CompilerNotFoundError(RecordError):
    """No C compiler to build the interposer with."""


class RawRecord(NamedTuple):
    """One call as the interposer logged it (see ``interpose.c``)."""

    kind: int  # RECORD_MALLOC ... RECORD_ALIGNED
    aux: int  # alignment for RECORD_ALIGNED, else 0
    ptr: int  # the pointer passed in (realloc, free), else 0
    size: int  # bytes asked for (calloc: count * size)
    result: int  # the pointer returned, 0 for NULL or for free


@dataclass
class ConversionStats:
    """What converting a log kept and dropped."""

    records: int = 0  # records read
    unknown_frees: int = 0  # frees of pointers never seen allocated (dropped)
    unknown_reallocs: int = 0  # reallocs of such pointers (written as 'a')
    failed_calls: int = 0  # calls that returned NULL for a size > 0 (dropped)
    implicit_frees: int = 0  # live addresses handed out again ('f' inserted)
    live_at_end: int = 0  # blocks live after the last converted op
    truncated: bool = False  # max_ops was reached
    peak_payload: int = 0  # peak live payload bytes over the trace


@dataclass
class RecordResult:
    """The outcome of :func:`record`."""

    output: Path  # the .rep (or .rep.gz) written
    returncode: int  # the command's exit status (negative: killed by that signal)
    ops: int  # ops in the trace, closing frees included
    num_ids: int
    pid: int  # the process whose log became the trace
    processes: int  # logs written (1 unless follow_exec)
    stats: ConversionStats

    @property
    def peak_payload(self) -> int:
        return self.stats.peak_payload


# ---- building the interposer ------------------------------------------------


def user_cache_dir(part: str = "") -> Path:
    """Where compiled helpers are kept: ``$XDG_CACHE_HOME/pyalloc`` (or ``~/.cache``).

    Created if missing; where it cannot be (a read-only home), a new private
    temporary directory serves instead, so a build still works, uncached.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = Path(base) / "pyalloc" / part
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path(tempfile.mkdtemp(prefix="pyalloc-cache-"))
    return directory


def find_compiler(
    purpose: str = "recording needs a C compiler to build the allocation interposer",
) -> list[str]:
    """The C compiler command: ``$CC`` (words split as a shell would) or the first of
    :data:`COMPILER_NAMES` on ``PATH``; :class:`CompilerNotFoundError` says ``purpose``."""
    tried: list[str] = []
    cc = os.environ.get("CC", "").strip()
    if cc:
        words = shlex.split(cc)
        found = shutil.which(words[0])
        if found:
            return [found, *words[1:]]
        tried.append(f"$CC={cc!r}")
    for name in COMPILER_NAMES:
        found = shutil.which(name)
        if found:
            return [found]
        tried.append(name)
    raise CompilerNotFoundError(
        f"{purpose}, but none was found (tried {', '.join(tried)} on PATH); install one "
        "(e.g. `apt-get install gcc`) or point $CC at it"
    )


def interposer_source() -> bytes:
    """The C source of the interposer, as shipped in the package."""
    return resources.files(__package__).joinpath(INTERPOSER_SOURCE).read_bytes()


def build_interposer(cache_dir: Path | None = None) -> Path:
    """Path of the compiled interposer, compiling it first if it is not cached.

    The library is ``librecord-HASH.so`` in ``cache_dir`` (default: the user
    cache directory), HASH being derived from the source.  A build goes to a
    temporary name that is renamed into place, so concurrent first uses do
    not see a half-written file.  Raises :class:`CompilerNotFoundError` with
    no compiler and :class:`RecordError` when compilation fails.
    """
    source = interposer_source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    directory = cache_dir if cache_dir is not None else user_cache_dir()
    library = directory / f"librecord-{digest}.so"

    def compile_into(built: Path) -> None:
        compiler = find_compiler()
        source_path = built.with_name(INTERPOSER_SOURCE)
        source_path.write_bytes(source)
        command = [*compiler, *COMPILE_FLAGS, "-o", str(built), str(source_path), *LINK_LIBS]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RecordError(
                f"compiling the interposer failed ({shlex.join(command)}):\n{done.stderr.strip()}"
            )

    return build_cached(library, compile_into)


def build_cached(library: Path, compile_into: Callable[[Path], None]) -> Path:
    """``library``, made by ``compile_into(path)`` unless it is already there.

    The build happens in a private directory beside ``library`` and is renamed
    into place, so concurrent first uses never load a half-written file and a
    failed build leaves nothing behind.
    """
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as work:
        built = Path(work) / library.name
        compile_into(built)
        os.replace(built, library)
    return library


# ---- reading and converting logs --------------------------------------------


def read_log(path: str | os.PathLike[str]) -> tuple[int, list[RawRecord]]:
    """The pid and the records of an interposer log.

    A log cut short inside a record (a process killed mid-write) loses only
    that last partial record.  Raises :class:`RecordError` for a file that is
    not a log.
    """
    data = Path(path).read_bytes()
    if len(data) < LOG_HEADER.size:
        raise RecordError(f"{path}: too short for an allocation log header")
    magic, version, pid = LOG_HEADER.unpack_from(data)
    if magic != LOG_MAGIC or version != LOG_VERSION:
        raise RecordError(f"{path}: not an allocation log (magic {magic!r}, version {version})")
    body = memoryview(data)[LOG_HEADER.size :]
    whole = len(body) - len(body) % LOG_RECORD.size
    records = [RawRecord._make(fields) for fields in LOG_RECORD.iter_unpack(body[:whole])]
    return pid, records


def convert_records(
    records: Iterable[RawRecord],
    *,
    max_ops: int | None = None,
    free_at_end: bool = True,
    name: str = "",
) -> tuple[Trace, ConversionStats]:
    """Turn logged calls into a trace by the rules in the module docstring."""
    if max_ops is not None and max_ops < 0:
        raise ValueError(f"max_ops must be >= 0, got {max_ops}")
    stats = ConversionStats()
    ops: list[Op] = []
    live: dict[int, tuple[int, int]] = {}  # address -> (id, size)
    pooled_ids: list[int] = []  # a heap of released ids
    next_id = 0
    payload = 0
    peak = 0

    def take_id() -> int:
        nonlocal next_id
        if pooled_ids:
            return heapq.heappop(pooled_ids)
        next_id += 1
        return next_id - 1

    def release(address: int) -> None:
        nonlocal payload
        block_id, size = live.pop(address)
        payload -= size
        heapq.heappush(pooled_ids, block_id)
        ops.append(Op("f", block_id, 0))

    def make_room(address: int) -> None:
        """Free the block the program must have freed if ``address`` is handed out."""
        if address in live:
            stats.implicit_frees += 1
            release(address)

    def hold(address: int, block_id: int, size: int) -> None:
        nonlocal payload, peak
        live[address] = (block_id, size)
        payload += size
        if payload > peak:
            peak = payload

    def allocate(address: int, size: int) -> None:
        block_id = take_id()
        hold(address, block_id, size)
        ops.append(Op("a", block_id, size))

    def full() -> bool:
        return max_ops is not None and len(ops) >= max_ops

    # Each record writes at most one op after full() said there was room; a
    # second op (an implicit free first, or realloc(p, 0)'s new block) checks
    # again, so the trace never exceeds max_ops and is consistent where cut.
    for kind, _aux, ptr, size, result in records:
        if full():
            stats.truncated = True
            break
        stats.records += 1
        if kind == RECORD_FREE:
            if ptr in live:
                release(ptr)
            elif ptr:
                stats.unknown_frees += 1
        elif kind == RECORD_REALLOC and ptr:
            if size == 0:
                if ptr in live:
                    release(ptr)
                else:
                    stats.unknown_frees += 1
                if result:
                    make_room(result)
                    if full():
                        stats.truncated = True
                        break
                    allocate(result, 0)
            elif not result:
                stats.failed_calls += 1
            elif ptr in live:
                if result != ptr:
                    make_room(result)
                    if full():
                        stats.truncated = True
                        break
                block_id, old_size = live.pop(ptr)
                payload -= old_size
                hold(result, block_id, size)
                ops.append(Op("r", block_id, size))
            else:
                stats.unknown_reallocs += 1
                make_room(result)
                if full():
                    stats.truncated = True
                    break
                allocate(result, size)
        elif kind in RECORD_KINDS:
            # malloc, calloc, aligned, and realloc of NULL
            if not result:
                if size:
                    stats.failed_calls += 1
                continue
            make_room(result)
            if full():
                stats.truncated = True
                break
            allocate(result, size)
        else:
            raise RecordError(f"record {stats.records}: unknown kind {kind}")
    stats.live_at_end = len(live)
    stats.peak_payload = peak
    if free_at_end:
        for address in list(live):
            release(address)
    trace = Trace(ops=ops, num_ids=next_id, weight=1, heap_hint=peak, name=name)
    return trace, stats


# ---- recording ----------------------------------------------------------------


def _find_logs(log_path: Path) -> dict[Path, int]:
    """Every log the run left (the main one and PATH.PID), with its size."""
    logs = {}
    for candidate in log_path.parent.iterdir():
        if candidate == log_path or (
            candidate.name.startswith(log_path.name + ".")
            and candidate.name[len(log_path.name) + 1 :].isdigit()
        ):
            logs[candidate] = candidate.stat().st_size
    return logs


def _trace_name(output: Path) -> str:
    name = output.name
    for suffix in (".gz", ".rep"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def record(
    command: Sequence[str],
    output: str | os.PathLike[str],
    *,
    max_ops: int | None = None,
    free_at_end: bool = True,
    follow_exec: bool = False,
    process: str = "main",
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    cache_dir: Path | None = None,
    stdout: int | IO[Any] | None = None,
) -> RecordResult:
    """Run ``command`` with the interposer and write its allocations to ``output``.

    ``output`` ending in ``.gz`` is compressed.  ``env`` replaces the
    environment (default: this process's); ``LD_PRELOAD`` and the recorder's
    variables are added to it.  ``process`` is ``"main"`` (the command's own
    process) or ``"largest"`` (the log with most records; needs
    ``follow_exec`` to see anything but the main one).  The exit status of
    the command is in the result, whatever it is.  Its standard streams are
    this process's, except ``stdout`` when given (as for ``subprocess.run``,
    e.g. ``subprocess.DEVNULL``).  A command that cannot be
    started raises ``OSError``, and :class:`RecordError` is raised when the
    chosen process left no log (a statically linked program never loads the
    interposer).
    """
    if not command:
        raise ValueError("record needs a command to run")
    if process not in ("main", "largest"):
        raise ValueError(f"process must be 'main' or 'largest', got {process!r}")
    library = build_interposer(cache_dir)
    output_path = Path(output)
    child_env = dict(os.environ if env is None else env)
    preload = child_env.get("LD_PRELOAD", "").strip()
    child_env["LD_PRELOAD"] = f"{library} {preload}".strip()
    child_env["PYALLOC_TRACE_CHILDREN"] = "1" if follow_exec else "0"
    if max_ops is not None:
        limit = max_ops * _LOG_SLACK_FACTOR + _LOG_SLACK_RECORDS
        child_env["PYALLOC_TRACE_LIMIT"] = str(limit)
    else:
        child_env.pop("PYALLOC_TRACE_LIMIT", None)
    with tempfile.TemporaryDirectory(prefix="pyalloc-record-") as work:
        log_path = Path(work) / "calls.log"
        child_env["PYALLOC_TRACE_FILE"] = str(log_path)
        try:
            done = subprocess.run(list(command), env=child_env, cwd=cwd, stdout=stdout)
        except OSError as e:
            raise OSError(f"cannot run {command[0]}: {e.strerror or e}") from None
        logs = _find_logs(log_path)
        if process == "main":
            chosen = log_path if log_path in logs else None
        else:
            chosen = max(logs, key=lambda path: logs[path]) if logs else None
        if chosen is None:
            raise RecordError(
                f"{command[0]} wrote no allocation log: it did not load the interposer "
                "(a statically linked or setuid program ignores LD_PRELOAD)"
            )
        pid, records = read_log(chosen)
    trace, stats = convert_records(
        records, max_ops=max_ops, free_at_end=free_at_end, name=_trace_name(output_path)
    )
    write_trace(trace, output_path)
    return RecordResult(
        output=output_path,
        returncode=done.returncode,
        ops=len(trace.ops),
        num_ids=trace.num_ids,
        pid=pid,
        processes=len(logs),
        stats=stats,
    )
