"""Replaying traces through the system's allocators in a subprocess."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyalloc.trace import system
from pyalloc.trace.generate import generate
from pyalloc.trace.rep import Op, Trace
from pyalloc.trace.system import (
    FOOTPRINT_METHOD,
    PRELOAD_LIBRARIES,
    SYSTEM_ALLOCATORS,
    SystemResult,
    replay_system,
    system_available,
)


def _available_or_skip(allocator: str) -> None:
    reason = system_available(allocator)
    if reason is not None:
        pytest.skip(reason)


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
    assert result.peak_footprint > 0 and result.peak_footprint % 4096 == 0
    assert result.util == pytest.approx(result.peak_payload / result.peak_footprint)
    assert result.seconds > 0
    assert result.footprint_method == FOOTPRINT_METHOD


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
