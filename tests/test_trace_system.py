"""Replaying traces through the system's allocators in a subprocess."""

from __future__ import annotations

import ctypes
import mmap
import shutil
import subprocess
from pathlib import Path

import pytest

from pyalloc.trace import _system_replayer, system
from pyalloc.trace.bench import FOOTPRINT_MALLINFO2, FOOTPRINT_RESIDENT, row_from_system, tiny_peak
from pyalloc.trace.generate import generate
from pyalloc.trace.rep import Op, Trace
from pyalloc.trace.system import (
    FOOTPRINT_METHOD,
    FOOTPRINT_METHOD_MALLINFO2,
    FOOTPRINT_METHOD_NO_MALLINFO2,
    PRELOAD_LIBRARIES,
    SYSTEM_ALLOCATORS,
    SystemResult,
    glibc_has_mallinfo2,
    replay_system,
    system_available,
)


def _available_or_skip(allocator: str) -> None:
    reason = system_available(allocator)
    if reason is not None:
        pytest.skip(reason)


def _mallinfo2_or_skip() -> None:
    _available_or_skip("glibc")
    if not glibc_has_mallinfo2():
        pytest.skip("this glibc has no mallinfo2 (added in 2.33)")


def _expected_method(allocator: str) -> str:
    if allocator != "glibc":
        return FOOTPRINT_METHOD
    return FOOTPRINT_METHOD_MALLINFO2 if glibc_has_mallinfo2() else FOOTPRINT_METHOD_NO_MALLINFO2


def _peak_payload(trace: Trace) -> int:
    """Peak live payload under the .rep replay semantics, computed independently."""
    live: dict[int, int] = {}
    peak = 0
    for kind, block_id, size in trace.ops:
        if kind == "f" or (kind == "r" and size == 0):
            live.pop(block_id, None)
        else:
            live[block_id] = size
        peak = max(peak, sum(live.values()))
    return peak


def test_allocator_names_and_availability() -> None:
    assert SYSTEM_ALLOCATORS == ("glibc", "jemalloc", "mimalloc", "tcmalloc")
    reason = system_available("hoard")
    assert reason is not None and "unknown allocator" in reason
    for name in SYSTEM_ALLOCATORS:
        reason = system_available(name)
        if reason is not None and name in PRELOAD_LIBRARIES:
            assert PRELOAD_LIBRARIES[name][1] in reason  # names the package to install


@pytest.mark.parametrize("allocator", SYSTEM_ALLOCATORS)
@pytest.mark.parametrize("kind", ["realistic", "realloc_growth"])
def test_replay_measures_a_valid_trace(allocator: str, kind: str) -> None:
    _available_or_skip(allocator)
    trace = generate(kind, 1500, seed=7)
    trace.ops.append(Op("f", 0, 0))  # a free of an id no longer live is free(NULL)
    result = replay_system(trace, allocator, timed_repeats=2)
    assert isinstance(result, SystemResult)
    assert result.valid, result.error
    assert result.error is None
    assert result.allocator == allocator and result.trace == trace.name
    assert result.ops == len(trace.ops)
    assert result.peak_payload == _peak_payload(trace)
    assert result.peak_footprint > 0
    assert result.util == pytest.approx(result.peak_payload / result.peak_footprint)
    assert result.seconds > 0
    assert result.footprint_method == _expected_method(allocator)
    if result.footprint_method != FOOTPRINT_METHOD_MALLINFO2:
        assert result.peak_footprint % mmap.PAGESIZE == 0  # resident pages


@pytest.mark.parametrize("allocator", SYSTEM_ALLOCATORS)
def test_footprint_covers_the_touched_blocks(allocator: str) -> None:
    _available_or_skip(allocator)
    blocks, size = 64, 64 << 10  # 4 MiB live at the peak
    ops = [Op("a", i, size) for i in range(blocks)] + [Op("f", i, 0) for i in range(blocks)]
    result = replay_system(Trace(ops=ops, num_ids=blocks, name="wide"), allocator)
    assert result.valid, result.error
    # Every byte was written, so the peak cannot be below the payload's pages
    # (less a little slack for pages the allocator had touched before the trace).
    assert result.peak_footprint >= blocks * size - (64 << 10)


@pytest.mark.parametrize("allocator", SYSTEM_ALLOCATORS)
def test_impossible_size_fails_validation(allocator: str) -> None:
    _available_or_skip(allocator)
    trace = Trace(ops=[Op("a", 0, 100), Op("a", 1, 1 << 62), Op("f", 0, 0)], num_ids=2, name="huge")
    result = replay_system(trace, allocator)
    assert not result.valid
    assert result.error is not None
    assert result.error.startswith("op 2 (a 1 4611686018427387904)")
    assert "NULL" in result.error
    assert result.util == 0.0 and result.seconds == 0.0


def test_impossible_realloc_fails_validation() -> None:
    _available_or_skip("glibc")
    trace = Trace(ops=[Op("a", 0, 100), Op("r", 0, 1 << 62)], num_ids=1, name="huge")
    result = replay_system(trace, "glibc")
    assert not result.valid and result.error is not None
    assert "op 2" in result.error and "realloc" in result.error


def test_zero_timed_repeats() -> None:
    _available_or_skip("glibc")
    result = replay_system(generate("uniform", 200, seed=1), "glibc", timed_repeats=0)
    assert result.valid and result.seconds == 0.0
    with pytest.raises(ValueError, match="timed_repeats"):
        replay_system(generate("uniform", 200, seed=1), "glibc", timed_repeats=-1)


def test_invalid_trace_object_is_reported() -> None:
    trace = Trace(ops=[Op("a", 5, 10)], num_ids=1, name="bad")
    result = replay_system(trace, "glibc")
    assert not result.valid
    assert result.error is not None and "invalid trace" in result.error


def test_unknown_and_missing_allocators_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = generate("uniform", 100, seed=3)
    unknown = replay_system(trace, "hoard")
    assert not unknown.valid and unknown.error is not None
    assert "unknown allocator" in unknown.error
    monkeypatch.setattr(system, "find_allocator_library", lambda allocator: None)
    for allocator in PRELOAD_LIBRARIES:
        missing = replay_system(trace, allocator)
        assert not missing.valid and missing.error is not None
        assert PRELOAD_LIBRARIES[allocator][0] in missing.error
        assert f"apt-get install {PRELOAD_LIBRARIES[allocator][1]}" in missing.error


def test_a_library_that_does_not_preload_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _available_or_skip("glibc")
    not_a_library = tmp_path / "libfake.so.2"
    not_a_library.write_bytes(b"not an ELF file")
    monkeypatch.setattr(system, "find_allocator_library", lambda allocator: str(not_a_library))
    monkeypatch.setattr(system, "system_available", lambda allocator: None)
    result = replay_system(generate("uniform", 100, seed=3), "jemalloc")
    assert not result.valid
    assert result.error is not None and "libfake.so.2" in result.error


def test_bundled_traces_replay_through_glibc() -> None:
    from pyalloc.trace.rep import read_trace
    from pyalloc.workloads import bundled_traces

    _available_or_skip("glibc")
    for path in bundled_traces():
        trace = read_trace(path)
        result = replay_system(trace, "glibc", timed_repeats=0)
        assert result.valid, result.error
        assert result.peak_payload == trace.heap_hint
        assert result.peak_footprint >= trace.heap_hint - (64 << 10)


def test_a_size_beyond_size_t_fails_that_trace_only() -> None:
    from pyalloc.trace.rep import parse_trace
    from pyalloc.trace.system import replay_system

    trace = parse_trace("1\n1\n2\n1\na 0 18446744073709551616\nf 0\n", "huge")
    result = replay_system(trace, "glibc")
    assert not result.valid and result.error is not None and "size_t" in result.error


BUMP = r"""
#include <stddef.h>
#include <string.h>
static char arena[16 << 20];
static size_t top;
void *malloc(size_t n) {
    size_t at = (top + 15) & ~(size_t)15;
    if (at + n + 16 > sizeof arena) return NULL;
    top = at + n + 16;
    *(size_t *)(arena + at) = n;
    return arena + at + 16;
}
void free(void *p) { (void)p; }
void *realloc(void *p, size_t n) {
    void *q = malloc(n);
    if (q && p) { size_t old = *(size_t *)((char *)p - 16); memcpy(q, p, old < n ? old : n); }
    return q;
}
"""

# Hands every request the same block: the second live block overlaps the first.
OVERLAPPING = r"""
#include <stddef.h>
static char arena[1 << 20];
void *malloc(size_t n) { (void)n; return arena + 16; }
void free(void *p) { (void)p; }
void *realloc(void *p, size_t n) { (void)n; return p ? p : arena + 16; }
"""

CRASHING = r"""
#include <stddef.h>
void *malloc(size_t n) { (void)n; return (void *)8; }
void free(void *p) { *(volatile char *)p = 0; }
void *realloc(void *p, size_t n) { (void)p; (void)n; return 0; }
"""


def build_library(tmp_path: Path, name: str, source: str) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler on this machine")
    c_file = tmp_path / f"{name}.c"
    c_file.write_text(source)
    library = tmp_path / f"{name}.so"
    subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-o", str(library), str(c_file)], check=True
    )
    return str(library)


def test_any_shared_object_is_replayed_and_validated(tmp_path: Path) -> None:
    from pyalloc.trace.generate import generate
    from pyalloc.trace.system import replay_system

    trace = generate("uniform", ops=400, seed=4)
    good = replay_system(trace, build_library(tmp_path, "bump", BUMP))
    assert good.valid, good.error
    assert good.peak_payload > 0
    bad = replay_system(trace, build_library(tmp_path, "overlapping", OVERLAPPING))
    assert not bad.valid and bad.error is not None
    assert "overlap" in bad.error or "bytes changed" in bad.error
    crash = replay_system(trace, build_library(tmp_path, "crashing", CRASHING))
    assert not crash.valid and crash.error is not None
    missing = replay_system(trace, str(tmp_path / "absent.so"))
    assert not missing.valid and "no such shared object" in (missing.error or "")


# -- glibc's footprint by mallinfo2 ---------------------------------------------------------


def _one_block(size: int) -> Trace:
    return Trace(ops=[Op("a", 0, size), Op("f", 0, 0)], num_ids=1, name=f"one-{size}")


def test_mallinfo2_counts_a_mapped_block_to_the_page() -> None:
    _mallinfo2_or_skip()
    # 1 MiB is above glibc's mmap threshold: the block is mapped on its own
    # (hblkhd), its size and glibc's 8-byte size field rounded up to a page.
    # The trace of one byte gives what the trace's arena held anyway.
    large = replay_system(_one_block(1 << 20), "glibc", timed_repeats=0)
    small = replay_system(_one_block(1), "glibc", timed_repeats=0)
    assert large.valid and small.valid, (large.error, small.error)
    assert large.footprint_method == small.footprint_method == FOOTPRINT_METHOD_MALLINFO2
    grown = large.peak_footprint - small.peak_footprint
    assert (1 << 20) < grown <= (1 << 20) + mmap.PAGESIZE
    # The same trace twice: the same bytes (no page noise).
    again = replay_system(_one_block(1 << 20), "glibc", timed_repeats=0)
    assert again.peak_footprint == large.peak_footprint


@pytest.mark.parametrize("kind", ["realistic", "realloc_growth", "fragmenter", "coalesce"])
def test_mallinfo2_peak_covers_the_peak_payload(kind: str) -> None:
    _mallinfo2_or_skip()
    trace = generate(kind, 3000, seed=5)
    result = replay_system(trace, "glibc", timed_repeats=0)
    assert result.valid, result.error
    assert result.footprint_method == FOOTPRINT_METHOD_MALLINFO2
    assert result.peak_payload == _peak_payload(trace)
    # Every live byte is in a block glibc took from the system during the
    # trace or in the room its arena had for the trace at the baseline.
    assert result.peak_footprint >= result.peak_payload
    assert 0 < result.util <= 1.0


def test_mallinfo2_and_resident_pages_agree_on_a_large_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _mallinfo2_or_skip()
    blocks, size = 200, 20_000  # 4 MB live at the peak, in the arena (below the mmap threshold)
    ops = [Op("a", i, size) for i in range(blocks)] + [Op("f", i, 0) for i in range(blocks)]
    trace = Trace(ops=ops, num_ids=blocks, name="arena")
    exact = replay_system(trace, "glibc", timed_repeats=0)
    monkeypatch.setattr(system, "glibc_has_mallinfo2", lambda: False)
    pages = replay_system(trace, "glibc", timed_repeats=0)
    assert exact.valid and pages.valid, (exact.error, pages.error)
    assert exact.footprint_method == FOOTPRINT_METHOD_MALLINFO2
    assert pages.footprint_method == FOOTPRINT_METHOD_NO_MALLINFO2
    assert exact.peak_footprint >= blocks * size
    # Every byte written, so the arena's pages are resident: the two measures
    # differ by the rounding and the interpreter's few pages.
    assert abs(exact.peak_footprint - pages.peak_footprint) <= 16 * mmap.PAGESIZE


def test_a_glibc_without_mallinfo2_is_measured_by_resident_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _available_or_skip("glibc")
    monkeypatch.setattr(system, "glibc_has_mallinfo2", lambda: False)
    result = replay_system(generate("realistic", 1500, seed=2), "glibc", timed_repeats=0)
    assert result.valid, result.error
    assert result.footprint_method == FOOTPRINT_METHOD_NO_MALLINFO2
    assert "no mallinfo2" in result.footprint_method
    assert result.peak_footprint > 0 and result.peak_footprint % mmap.PAGESIZE == 0
    row = row_from_system(result)
    assert row["footprint"] == FOOTPRINT_RESIDENT


def test_the_replayer_falls_back_without_mallinfo2() -> None:
    # A C library without the two functions: no reader, no spare room.
    assert _system_replayer.mallinfo2_reader(object()) is None
    assert _system_replayer.spare_in_thread_arenas(object()) == 0
    if not glibc_has_mallinfo2():
        pytest.skip("this glibc has no mallinfo2 (added in 2.33)")
    libc = ctypes.CDLL(None)
    held = _system_replayer.mallinfo2_reader(libc)
    assert held is not None
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # Above the largest mmap threshold glibc sets itself (32 MiB): always
    # mapped on its own, whatever this process freed before; never touched.
    size = 64 << 20
    before = held()
    block = libc.malloc(size)
    assert block
    try:
        assert size < held() - before <= size + mmap.PAGESIZE
    finally:
        libc.free(block)


def test_a_mallinfo2_row_is_exact_not_resident() -> None:
    _mallinfo2_or_skip()
    result = replay_system(_one_block(100), "glibc", timed_repeats=0)
    assert result.valid, result.error
    row = row_from_system(result)
    assert row["footprint"] == FOOTPRINT_MALLINFO2
    assert not tiny_peak(row)  # a small peak in bytes is still exact
    resident = SystemResult("mimalloc", "t", True, 2, 100, 4096, 100 / 4096, 0.0, None)
    assert row_from_system(resident)["footprint"] == FOOTPRINT_RESIDENT
    assert tiny_peak(row_from_system(resident))
