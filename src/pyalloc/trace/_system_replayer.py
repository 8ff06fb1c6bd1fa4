"""Replay a trace through the C allocator this process runs on (a subprocess of
:mod:`pyalloc.trace.system`).

Run as ``python -I -S _system_replayer.py OPS_FILE ALLOCATOR_LIBRARY REPEATS [MODE]``
with the allocator under test in ``LD_PRELOAD`` (none for glibc).  MODE:
``preload`` (the default), ``glibc`` (glibc's own malloc, measured by
``mallinfo2``), ``local`` or ``mm`` (see :func:`replay`).  Standard
library only and no pyalloc import, so that the interpreter is as small as it
can be when the baseline is taken.  Writes one JSON object to the file
named by ``PYALLOC_REPLAY_REPORT`` (not to stdout, which the allocator
shares), and dies with the process named by ``PYALLOC_REPLAY_PARENT``.

OPS_FILE layout (native byte order)::

    uint64 num_ids, uint64 num_ops
    uint64 kind[num_ops]       0 = a, 1 = f, 2 = r
    uint64 id[num_ops]
    uint64 size[num_ops]

The file is mapped, not read, and the per-id tables are anonymous mappings:
nothing the replayer needs passes through the allocator under test, so no
block it freed during setup is left for the trace to reuse.

Passes
------

1. Setup, in the main thread: bind the functions, check that ``malloc`` is
   ALLOCATOR_LIBRARY's own (a preload that did not take effect would
   otherwise measure glibc under another name), and ask the allocator to
   return its free pages to the system (``malloc_trim``, jemalloc's
   ``arena.<all>.purge``, ``mi_collect``, tcmalloc's ``ReleaseFreeMemory``:
   whichever exist).  Every ctypes object the replay uses is made here
   (``Bound``) and files are opened without Python buffers: an object of
   over 512 bytes made in the trace's thread lands in the arena or heap
   whose footprint is measured, and moves where the allocator puts the
   trace's blocks (a 568-byte dict that ctypes grew there once moved
   glibc's peak on random-bal by 37 KB).  Then a new thread maps the ops
   and the tables and reads the baseline.  The trace runs in that thread because glibc and
   jemalloc give a new thread an arena of its own, mimalloc a heap of its
   own and tcmalloc a thread cache of its own: its blocks do not land in
   pages that the interpreter's objects, or the free blocks they left, keep
   resident, which would hide part of the footprint (up to a hundred KiB
   with mimalloc when the trace ran in the main thread).  There is no
   warm-up: whatever the allocator sets up for the trace is part of its
   footprint.
2. The measured, validating pass: every block's bytes are set (memset), a
   stamp of up to 8 bytes is written at its start (and, from 16 bytes, at
   its end), and before each free and realloc every byte is checked: the
   stamps, and the bytes between them still FILL_BYTE (one ``memcmp`` of
   the run against itself shifted by a byte, which allocates nothing that
   the footprint would count); a realloc must keep the old block's bytes
   up to the smaller size, and every pointer must be non-NULL (except for size 0)
   and aligned to ``min(16, largest power of two <= size)``, the fundamental
   alignment an object of that size can need. A malloc-lab package's blocks
   must also lie inside its heap and overlap no live block, checked at the
   call that returns them, as mdriver does (``MallocLab.claim``; other
   allocators are not checked so: their footprint is the process's pages,
   which the list of live blocks would add to).
3. Every block still live is freed, then REPEATS timed passes make the same
   calls with no touching or checking; the fastest is reported.

Footprint
---------

Resident pages, for every allocator but glibc::

    anonymous(t)   = resident - shared      (/proc/self/statm, in pages)
    peak_footprint = (max over the pass of anonymous(t) - anonymous(baseline)) * page size

``anonymous(t)`` is read after every op that allocates or grows a block (the
only ops that can raise it) and after the last op.  Because every byte of
every block is written, a live block's pages are resident, so this counts
the blocks, their headers, the allocator's metadata and the free memory it
keeps touched: what the allocator costs the machine in private pages.
File-backed pages (the allocator's code) are left out by construction.

Why not VmHWM: the kernel updates the peak only when pages are unmapped and
then from its approximate per-CPU counters, off by up to a few hundred KiB;
statm's counters are summed exactly (Linux 6.16 and later; earlier kernels
give approximate values, still the same way for every allocator).  A read
costs a few microseconds, which only the measured pass pays.  The
interpreter's own use during the pass is small and steady (the tables are
mapped in advance, the temporaries are recycled by pymalloc), a few pages of
noise that matters only for traces of a few hundred KiB.

glibc's bytes (MODE ``glibc``), exact to the byte::

    held(t)        = arena + hblkhd         (mallinfo2(), glibc 2.33 and later)
    spare          = free bytes of the arenas other than the main one, at the baseline
    peak_footprint = max over the pass of held(t) - (held(baseline) - spare)

``arena`` is what every arena holds from the system (sbrk'ed or mapped and
made writable), ``hblkhd`` what blocks mapped on their own hold: together,
the bytes glibc has taken from the kernel and not given back, whether the
pages are resident or not.  Read at the same points as the pages (no op but
an allocating one can raise it).  The trace's thread has its arena before
the baseline (the interpreter allocates a lock in the thread it starts), with the
room glibc sets up in a new arena (``M_TOP_PAD``, 128 KiB, beyond what it
first serves): ``spare`` counts that room as the trace's, as the resident
pages would count its pages once the trace touched them.  Without it a
trace of less than that room would cost glibc nothing, and a larger one
less than its own payload.  The main arena's free bytes (the interpreter's
holes) are not the trace's: its thread never allocates there.  ``spare``
comes from ``malloc_stats`` (read once, its stderr captured), which gives
each arena's bytes, where ``mallinfo2`` gives only their sums.

``mallinfo2`` walks every free list of every arena, so a read costs more as
the trace leaves more free blocks; only the measured pass pays it.  Without
``mallinfo2`` the pages are read instead and the report says so.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

KIND_ALLOC, KIND_FREE, KIND_REALLOC = 0, 1, 2
STAMP_BYTES = 8
STAMP_MULTIPLIER = 0x9E3779B97F4A7C15  # odd: distinct op indexes give distinct stamps
WORD_MASK = (1 << 64) - 1
FILL_BYTE = 0xA5
REPORT_VARIABLE = "PYALLOC_REPLAY_REPORT"  # the file the report is written to
PARENT_VARIABLE = "PYALLOC_REPLAY_PARENT"  # the pid that started this process
PR_SET_PDEATHSIG = 1
SIGKILL = 9  # signal.SIGKILL: the signal module's import costs pages that the footprint counts
WORDS_PER_PAGE = mmap.PAGESIZE // 8


class ValidationError(Exception):
    pass


def statm_reader() -> Callable[[], int]:
    """A function returning the process's resident anonymous pages now."""
    descriptor = os.open("/proc/self/statm", os.O_RDONLY)  # kept open: one pread a sample

    def anonymous_pages() -> int:
        fields = os.pread(descriptor, 256, 0).split()
        return int(fields[1]) - int(fields[2])  # resident - shared (file and shmem)

    return anonymous_pages


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``: every field a size_t, in this order."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes the arenas hold from the system (not counting hblkhd)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes of blocks mapped on their own
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo2_reader(process: Any) -> Callable[[], int] | None:
    """A function returning the bytes glibc holds from the system now, or None
    when the C library has no ``mallinfo2`` (glibc before 2.33)."""
    mallinfo2 = getattr(process, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.argtypes = []
    mallinfo2.restype = MallInfo2

    def held_bytes() -> int:
        info = mallinfo2()
        return int(info.arena + info.hblkhd)

    return held_bytes


def spare_in_thread_arenas(process: Any) -> int:
    """Free bytes in every arena but the main one (arena 0), from ``malloc_stats``.

    ``malloc_stats`` prints to the C library's stderr: fd 2 is pointed at a
    memory file for the call and put back.  0 if it cannot be read.
    """
    malloc_stats = getattr(process, "malloc_stats", None)
    if malloc_stats is None:
        return 0
    malloc_stats.argtypes = []
    malloc_stats.restype = None
    capture = os.memfd_create("malloc-stats")
    saved = os.dup(2)
    try:
        os.dup2(capture, 2)
        malloc_stats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    size = os.fstat(capture).st_size
    text = os.pread(capture, size, 0).decode("ascii", "replace")
    os.close(capture)
    spare = 0
    arena = None  # the number of the arena whose lines follow; None after the total
    system_bytes = 0
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if line.startswith("Arena "):
            arena = int(line[6:].rstrip(":"))
        elif line.startswith("Total"):
            arena = None
        elif arena is None or not value.strip().isdigit():
            continue
        elif name.startswith("system bytes"):
            system_bytes = int(value)
        elif name.startswith("in use bytes") and arena != 0:
            spare += system_bytes - int(value)
    return spare


def release_free_memory(process: ctypes.CDLL) -> None:
    """Ask whichever allocator is present to return its free pages."""
    trim = getattr(process, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)
    mallctl = getattr(process, "mallctl", None)
    if mallctl is not None:
        mallctl.argtypes = [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        mallctl(b"arena.4096.purge", None, None, None, 0)  # 4096: MALLCTL_ARENAS_ALL
    collect = getattr(process, "mi_collect", None)
    if collect is not None:
        collect.argtypes = [ctypes.c_bool]
        collect(True)
    release = getattr(process, "MallocExtension_ReleaseFreeMemory", None)
    if release is not None:
        release.argtypes = []
        release()


def map_ops(path: str) -> tuple[int, memoryview, memoryview, memoryview]:
    """num_ids and the kind, id and size columns of OPS_FILE, as mapped views."""
    words = map_file(path, 0, writable=False)
    num_ids, num_ops = words[0], words[1]
    touch_pages(words)
    return (
        num_ids,
        words[2 : 2 + num_ops],
        words[2 + num_ops : 2 + 2 * num_ops],
        words[2 + 2 * num_ops : 2 + 3 * num_ops],
    )


def progress_word() -> memoryview:
    """A word the parent reads if this process dies: the op the measured pass is at.

    The file named by PYALLOC_REPLAY_PROGRESS, mapped shared; a private word
    when there is none.
    """
    path = os.environ.get("PYALLOC_REPLAY_PROGRESS")
    if not path:
        return word_table(1)
    return map_file(path, 8, writable=True)


def map_file(path: str, length: int, writable: bool) -> memoryview:
    """The file mapped (shared if ``writable``, read-only and private
    otherwise) as 8-byte words. Opened with ``os.open``: a Python file
    object's buffer would be an object of the trace's thread in the
    measured arena."""
    descriptor = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        if writable:
            mapping = mmap.mmap(descriptor, length, flags=mmap.MAP_SHARED)
        else:
            mapping = mmap.mmap(descriptor, length, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    finally:
        os.close(descriptor)
    return memoryview(mapping).cast("Q")


def libc_memcmp() -> Any:
    """The C library's memcmp, taking addresses."""
    memcmp = PROCESS.memcmp
    memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    memcmp.restype = ctypes.c_int
    return memcmp


# The process's own functions (the C library's, or a preloaded allocator's),
# and memcmp: bound here, in the main thread, as every ctypes object the
# replay uses (see "Passes").
PROCESS = ctypes.CDLL(None)
MEMCMP = libc_memcmp()


def word_table(length: int) -> memoryview:
    """``length`` zeroed 8-byte words in an anonymous mapping, already resident."""
    mapping = mmap.mmap(-1, max(length, 1) * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    words = memoryview(mapping).cast("Q")
    for index in range(0, len(words), WORDS_PER_PAGE):
        words[index] = 0
    return words


def touch_pages(words: memoryview) -> None:
    total = 0
    for index in range(0, len(words), WORDS_PER_PAGE):
        total += words[index]


def alignment_for(size: int) -> int:
    return min(16, 1 << (size.bit_length() - 1)) if size else 1


def bind_allocator(library: str, local: bool) -> tuple[Any, Any, Any]:
    """malloc, free and realloc as foreign functions; ValueError if not ``library``'s.

    ``local``: the library is loaded with ``dlopen(RTLD_LOCAL)`` and its own
    three functions are called, while the interpreter keeps the C library's
    (a library that exports only these three would not run an interpreter
    if it were preloaded). Otherwise the library was preloaded and the
    process's functions must be its.
    """
    process = PROCESS
    if local:
        own = ctypes.CDLL(library, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        for name in ("malloc", "free", "realloc"):
            if not hasattr(own, name):
                raise ValueError(f"{library} does not export {name}")
            if (
                ctypes.cast(getattr(own, name), ctypes.c_void_p).value
                == ctypes.cast(getattr(process, name), ctypes.c_void_p).value
            ):
                raise ValueError(f"{library} does not define {name}: it is the C library's")
        process = own
    else:
        expected = ctypes.CDLL(library)
        if (
            ctypes.cast(process.malloc, ctypes.c_void_p).value
            != ctypes.cast(expected.malloc, ctypes.c_void_p).value
        ):
            raise ValueError(f"malloc is not {library}'s: LD_PRELOAD did not take effect")
    malloc = process.malloc
    malloc.argtypes = [ctypes.c_size_t]
    malloc.restype = ctypes.c_size_t  # NULL comes back as 0, not None
    free = process.free
    free.argtypes = [ctypes.c_size_t]
    free.restype = None
    realloc = process.realloc
    realloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    realloc.restype = ctypes.c_size_t
    return malloc, free, realloc


class MallocLab:
    """A malloc-lab package (mm.c over pyalloc's memlib), built into ``library``.

    Its footprint is the peak of ``mem_heapsize()``, read after every op, as
    mdriver computes it; every payload must lie inside
    ``[mem_heap_lo(), mem_heap_hi()]``.
    """

    def __init__(self, library: str) -> None:
        lib = ctypes.CDLL(library, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        self.init = lib.mm_init
        self.init.restype = ctypes.c_int
        self.reset = lib.mem_reset_brk
        self.lo = lib.mem_heap_lo
        self.lo.restype = ctypes.c_size_t
        self.heapsize = lib.mem_heapsize
        self.heapsize.restype = ctypes.c_size_t
        self.functions = []
        for name, args in (
            ("mm_malloc", [ctypes.c_size_t]),
            ("mm_free", [ctypes.c_size_t]),
            ("mm_realloc", [ctypes.c_size_t, ctypes.c_size_t]),
        ):
            function = getattr(lib, name)
            function.argtypes = args
            function.restype = None if name == "mm_free" else ctypes.c_size_t
            self.functions.append(function)

        # The live payloads: their sorted starts, and each one's end.
        self.starts: list[int] = []
        self.ends: dict[int, int] = {}

    def start(self) -> None:
        """An empty heap and mm_init, before every pass; ValidationError if mm_init fails."""
        self.reset()
        if self.init() < 0:
            raise ValidationError("mm_init failed (returned -1)")
        self.starts.clear()
        self.ends.clear()

    def claim(self, pointer: int, size: int, call: str) -> None:
        """Record a new payload; ValidationError if it overlaps a live one (as mdriver)."""
        if not size:
            return
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(starts, pointer)
        if i and ends[starts[i - 1]] > pointer:
            below = starts[i - 1]
            raise ValidationError(
                f"{call} returned {pointer:#x}, inside the live block"
                f" [{below:#x}, {ends[below]:#x})"
            )
        if i < len(starts) and starts[i] < pointer + size:
            raise ValidationError(
                f"{call} returned [{pointer:#x}, {pointer + size:#x}), over the live block"
                f" at {starts[i]:#x}"
            )
        starts.insert(i, pointer)
        ends[pointer] = pointer + size

    def release(self, pointer: int) -> None:
        """Forget a payload freed or moved by realloc."""
        if self.ends.pop(pointer, None) is not None:
            del self.starts[bisect.bisect_left(self.starts, pointer)]


class Bound:
    """The allocator's functions and the footprint's readers, bound before
    the trace's thread starts: ctypes objects made there (a library's
    function type, a dict it grows) would sit in the arena whose footprint
    is measured, and move glibc's placement of the trace's blocks.

    ``mode``: "preload" (the library is the process's allocator), "glibc"
    (the same, with glibc's ``mallinfo2`` as the footprint), "local" (a
    shared object's own malloc, free and realloc) or "mm" (a malloc-lab
    package). Raises ValueError, AttributeError or OSError for a library
    that cannot serve.
    """

    def __init__(self, library: str, mode: str) -> None:
        self.lab: MallocLab | None = None
        if mode == "mm":
            self.lab = MallocLab(library)
            self.functions = tuple(self.lab.functions)
        else:
            self.functions = bind_allocator(library, mode == "local")
        self.process = PROCESS
        self.held_bytes = mallinfo2_reader(self.process) if mode == "glibc" else None
        getattr(self.process, "malloc_stats", None)  # bound now, read at the baseline


def replay(ops_path: str, bound: Bound, repeats: int) -> dict[str, object]:
    """The measured pass and the timed passes; the report as a dict.

    Runs in a thread of its own (see "Passes" in the module docstring).
    """
    num_ids, kinds, ids, sizes = map_ops(ops_path)
    num_ops = len(kinds)
    lab = bound.lab
    malloc, free, realloc = bound.functions
    if lab is not None:
        try:
            lab.start()
        except ValidationError as exc:
            return {"error": f"op 0: {exc}"}
    memset = ctypes.memset
    memmove = ctypes.memmove
    string_at = ctypes.string_at
    memcmp = MEMCMP
    physical_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    pointers = word_table(num_ids)
    block_sizes = word_table(num_ids)
    stamps = word_table(num_ids)

    # footprint_now() in units of `unit` bytes, read after every op that can raise it
    process = bound.process
    held_bytes = bound.held_bytes
    if lab is not None:  # mdriver's footprint: the peak of mem_heapsize(), in bytes
        heap_lo = lab.lo()
        heapsize = lab.heapsize

        def footprint_now() -> int:
            return int(heapsize())

        method, unit = "mem_heapsize", 1
    elif held_bytes is not None:
        footprint_now, method, unit = held_bytes, "mallinfo2", 1
    else:
        footprint_now, method, unit = statm_reader(), "resident", mmap.PAGESIZE
    spare = spare_in_thread_arenas(process) if method == "mallinfo2" else 0
    baseline = peak = footprint_now()
    baseline -= spare  # the room of the trace's arena is the trace's (see "Footprint")
    if lab is not None:
        baseline = 0  # mdriver divides by the whole heap, what mm_init took included

    error = None
    payload = 0
    peak_payload = 0
    index = 0

    def changed_bytes(block: int, pointer: int, size: int, kept: int) -> str:
        """Which of the first ``kept`` bytes at ``pointer`` differ from what
        block ``block`` of ``size`` bytes was given (its stamps, FILL_BYTE
        between them); "" if none."""
        stamp = stamps[block].to_bytes(8, "little")
        head = min(STAMP_BYTES, size, kept)
        if head and string_at(pointer, head) != stamp[:head]:
            return "first bytes"
        tail = size - STAMP_BYTES if size >= 2 * STAMP_BYTES else size  # the tail stamp's start
        fill = min(kept, tail) - STAMP_BYTES
        if fill > 0 and (
            string_at(pointer + STAMP_BYTES, 1)[0] != FILL_BYTE
            or memcmp(pointer + STAMP_BYTES, pointer + STAMP_BYTES + 1, fill - 1)
        ):
            return "bytes between the stamps"
        if kept > tail and string_at(pointer + tail, kept - tail) != stamp[: kept - tail]:
            return "last bytes"
        return ""

    def check_stamp(block: int, pointer: int, size: int, what: str) -> None:
        """Check the block's bytes before it is freed or reallocated (and let a
        package's overlap check forget it: it leaves)."""
        if lab is not None:
            lab.release(pointer)
        where = changed_bytes(block, pointer, size, size)
        if where:
            raise ValidationError(f"block {block} at {pointer:#x}: {where} changed {what}")

    def write_stamp(block: int, pointer: int, size: int) -> None:
        count = min(STAMP_BYTES, size)
        if count:
            stamp_bytes = stamps[block].to_bytes(8, "little")[:count]
            memmove(pointer, stamp_bytes, count)
            if size >= 2 * STAMP_BYTES:  # the tail stamp must not overlap the head's
                memmove(pointer + size - count, stamp_bytes, count)

    def check_pointer(pointer: int, size: int, call: str) -> None:
        if not pointer:
            raise ValidationError(f"{call} returned NULL")
        if pointer % alignment_for(size):
            alignment = alignment_for(size)
            raise ValidationError(f"{call} returned {pointer:#x}, not {alignment}-aligned")
        if lab is not None:
            if not heap_lo <= pointer <= pointer + size <= heap_lo + heapsize():
                raise ValidationError(
                    f"{call} returned {pointer:#x}: the payload is not inside the heap"
                    f" [{heap_lo:#x}, {heap_lo + heapsize():#x})"
                )
            lab.claim(pointer, size, call)

    def check_touchable(size: int) -> None:
        if size > physical_bytes:
            raise ValidationError(
                f"the block of {size} bytes is larger than physical memory: it cannot be touched"
            )

    progress = progress_word()
    try:
        for index in range(num_ops):
            progress[0] = index + 1  # the parent names this op if the process dies in it
            kind = kinds[index]
            block = ids[index]
            size = sizes[index]
            pointer = pointers[block]
            if kind == KIND_FREE or (kind == KIND_REALLOC and size == 0):
                if pointer:
                    check_stamp(block, pointer, block_sizes[block], "before free")
                    free(pointer)
                    pointers[block] = 0
                    payload -= block_sizes[block]
                continue
            if kind == KIND_REALLOC and pointer:
                old_size = block_sizes[block]
                check_stamp(block, pointer, old_size, "before realloc")
                moved = realloc(pointer, size)
                check_pointer(moved, size, f"realloc({pointer:#x}, {size})")
                check_touchable(size)
                where = changed_bytes(block, moved, old_size, min(old_size, size))
                if where:
                    raise ValidationError(
                        f"realloc to {size} did not keep block {block}'s bytes ({where})"
                    )
                memset(moved, FILL_BYTE, size)  # as a new block: the old tail stamp goes too
                pointers[block] = moved
                block_sizes[block] = size
                payload += size - old_size
                write_stamp(block, moved, size)
            else:
                if pointer:  # 'a' of a live id: the old block is leaked, as in C
                    payload -= block_sizes[block]
                pointer = malloc(size)
                if size or pointer:
                    check_pointer(pointer, size, f"malloc({size})")
                    check_touchable(size)
                    memset(pointer, FILL_BYTE, size)
                pointers[block] = pointer
                block_sizes[block] = size
                stamps[block] = ((index + 1) * STAMP_MULTIPLIER) & WORD_MASK
                write_stamp(block, pointer, size)
                payload += size
            now = footprint_now()
            if now > peak:
                peak = now
            if payload > peak_payload:
                peak_payload = payload
                if peak_payload > physical_bytes:
                    raise ValidationError("the live payload exceeds physical memory")
    except ValidationError as exc:
        kind, block = kinds[index], ids[index]
        op = f"f {block}" if kind == KIND_FREE else f"{'afr'[kind]} {block} {sizes[index]}"
        error = f"op {index + 1} ({op}): {exc}"

    peak = max(peak, footprint_now())
    result: dict[str, object] = {
        "error": error,
        "peak_payload": peak_payload,
        "peak_footprint": (peak - baseline) * unit,
        "baseline_footprint": baseline * unit,
        "spare": spare,
        "footprint_method": method,
        "seconds": 0.0,
    }
    if error is not None:
        return result

    # From here on the word is past the ops: num_ops + 1 while the blocks the
    # checked pass left are freed, num_ops + 1 + k in timed pass k.
    progress[0] = num_ops + 1
    for block in range(num_ids):
        if pointers[block]:
            free(pointers[block])
            pointers[block] = 0

    best = float("inf")
    clock = time.perf_counter
    for timed_pass in range(1, repeats + 1):
        progress[0] = num_ops + 1 + timed_pass
        if lab is not None:
            lab.start()
        started = clock()
        for kind, block, size in zip(kinds, ids, sizes, strict=True):
            if kind == KIND_ALLOC:
                pointers[block] = malloc(size)
            elif kind == KIND_FREE or not size:
                free(pointers[block])
                pointers[block] = 0
            elif pointers[block]:
                pointers[block] = realloc(pointers[block], size)
            else:  # as the checked pass: a realloc of no block is a malloc
                pointers[block] = malloc(size)
        best = min(best, clock() - started)
        for block in range(num_ids):
            if pointers[block]:
                free(pointers[block])
                pointers[block] = 0
    result["seconds"] = best if repeats else 0.0
    return result


def die_with_parent() -> None:
    """Be killed when the parent dies: its timeout stops a hung allocator, and
    a parent killed outright would leave one spinning."""
    PROCESS.prctl(PR_SET_PDEATHSIG, SIGKILL)
    if os.getppid() != int(os.environ[PARENT_VARIABLE]):
        os._exit(1)  # it died before the request


def main() -> None:
    die_with_parent()
    ops_path, library, repeats_text = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "preload"
    reports: list[dict[str, object]] = []

    try:
        bound = Bound(library, mode)
    except (ValueError, AttributeError, OSError) as exc:
        bound = None
        reports.append({"error": str(exc)})

    def run() -> None:
        assert bound is not None
        try:
            reports.append(replay(ops_path, bound, int(repeats_text)))
        except ValidationError as exc:  # outside the checked pass: mm_init, mostly
            reports.append({"error": str(exc)})
        except Exception as exc:  # reported to the parent as the replay's error
            reports.append({"error": f"{type(exc).__name__}: {exc}"})

    release_free_memory(PROCESS)
    if bound is not None:
        worker = threading.Thread(target=run, name="replay")
        worker.start()
        worker.join()
    if not reports:
        sys.exit("the replay thread ended without a report")
    # Not on stdout, which the allocator writes to as well.
    with open(os.environ[REPORT_VARIABLE], "w") as report:
        report.write(json.dumps(reports[0]))


if __name__ == "__main__":
    main()
