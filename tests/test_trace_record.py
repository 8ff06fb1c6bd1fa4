"""Recording programs through the LD_PRELOAD interposer, and converting its logs."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from pyalloc.trace.record import (
    LOG_HEADER,
    LOG_MAGIC,
    LOG_RECORD,
    LOG_VERSION,
    RECORD_ALIGNED,
    RECORD_CALLOC,
    RECORD_FREE,
    RECORD_MALLOC,
    RECORD_REALLOC,
    CompilerNotFoundError,
    RawRecord,
    RecordError,
    build_interposer,
    convert_records,
    find_compiler,
    read_log,
    record,
)
from pyalloc.trace.rep import Op, read_trace

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="LD_PRELOAD recording needs Linux"
)

# One C program, several behaviours chosen by argv[1]. Pointers go through
# volatile variables so the compiler keeps every call.
PROGRAM = r"""
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile sink;

static void *churn(void *arg)
{
    (void)arg;
    for (int i = 0; i < 500; i++) {
        void *volatile p = malloc(16 + (size_t)i % 64);
        void *volatile q = malloc(48);
        memset(p, 1, 16);
        free(p);
        q = realloc(q, 96);
        free(q);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "basic";
    if (strcmp(mode, "basic") == 0) {
        void *volatile a = malloc(100);
        void *volatile b = calloc(4, 25);
        a = realloc(a, 200);
        free(b);
        void *volatile c = malloc(0);
        b = realloc(NULL, 50);
        b = realloc(b, 0);
        free(a);
        free(c);
        free(NULL);
        void *d = NULL;
        if (posix_memalign(&d, 64, 128) == 0)
            free(d);
        return 3;
    }
    if (strcmp(mode, "many") == 0) {
        for (int i = 0; i < 3000; i++) {
            sink = malloc(32);
            free(sink);
        }
        return 0;
    }
    if (strcmp(mode, "fork") == 0) {
        void *volatile before = malloc(111);
        pid_t child = fork();
        if (child == 0) {
            void *volatile in_child = malloc(222);
            free(in_child);
            _exit(0);
        }
        int status;
        waitpid(child, &status, 0);
        void *volatile after = malloc(333);
        free(before);
        free(after);
        return 0;
    }
    if (strcmp(mode, "threads") == 0) {
        pthread_t threads[4];
        for (int i = 0; i < 4; i++)
            pthread_create(&threads[i], NULL, churn, NULL);
        for (int i = 0; i < 4; i++)
            pthread_join(threads[i], NULL);
        return 0;
    }
    return 2;
}
"""


def _compiler() -> list[str] | None:
    """The compiler the interposer is built with, or None without one."""
    try:
        return find_compiler()
    except CompilerNotFoundError:
        return None


@pytest.fixture(scope="module")
def interposer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _compiler() is None:
        pytest.skip("no C compiler")
    cache = tmp_path_factory.mktemp("cache")
    build_interposer(cache)
    return cache


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    directory = tmp_path_factory.mktemp("program")
    source = directory / "program.c"
    source.write_text(PROGRAM)
    binary = directory / "program"
    subprocess.run(
        [*compiler, "-O0", "-pthread", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
    )
    return binary


# ---- recording real processes ---------------------------------------------------


@linux_only
def test_records_the_exact_calls_of_a_program(
    program: Path, interposer_cache: Path, tmp_path: Path
) -> None:
    output = tmp_path / "basic.rep"
    result = record([str(program), "basic"], output, cache_dir=interposer_cache)
    assert result.returncode == 3  # the program's status is passed through
    trace = read_trace(output)
    assert trace.ops == [
        Op("a", 0, 100),  # malloc(100)
        Op("a", 1, 100),  # calloc(4, 25)
        Op("r", 0, 200),  # realloc(a, 200)
        Op("f", 1, 0),  # free(b)
        Op("a", 1, 0),  # malloc(0): the freed id 1 is reused
        Op("a", 2, 50),  # realloc(NULL, 50)
        Op("f", 2, 0),  # realloc(b, 0) frees
        Op("f", 0, 0),  # free(a)
        Op("f", 1, 0),  # free(c); free(NULL) leaves no op
        Op("a", 0, 128),  # posix_memalign(&d, 64, 128)
        Op("f", 0, 0),
    ]
    assert trace.num_ids == 3
    assert trace.heap_hint == result.peak_payload == 300
    assert result.stats.unknown_frees == 0
    assert result.stats.live_at_end == 0
    assert result.processes == 1


@linux_only
def test_gzip_output_and_max_ops(program: Path, interposer_cache: Path, tmp_path: Path) -> None:
    output = tmp_path / "basic.rep.gz"
    result = record([str(program), "basic"], output, max_ops=3, cache_dir=interposer_cache)
    assert output.read_bytes()[:2] == b"\x1f\x8b"
    trace = read_trace(output)
    # three ops from the program, then the closing free of each block still live
    assert trace.ops[:3] == [Op("a", 0, 100), Op("a", 1, 100), Op("r", 0, 200)]
    assert sorted(trace.ops[3:]) == [Op("f", 0, 0), Op("f", 1, 0)]
    assert result.stats.truncated
    assert result.stats.live_at_end == 2

    left = tmp_path / "left.rep"
    record([str(program), "basic"], left, max_ops=3, free_at_end=False, cache_dir=interposer_cache)
    assert len(read_trace(left).ops) == 3


@linux_only
def test_threads_give_a_consistent_trace(
    program: Path, interposer_cache: Path, tmp_path: Path
) -> None:
    output = tmp_path / "threads.rep"
    result = record([str(program), "threads"], output, cache_dir=interposer_cache)
    trace = read_trace(output)
    counts = {kind: sum(op.kind == kind for op in trace.ops) for kind in "afr"}
    # 4 threads x 500 rounds of 2 mallocs, 1 realloc, 2 frees, give or take
    # what thread creation itself allocates
    assert counts["r"] >= 2000 and counts["a"] >= 4000 and counts["f"] >= 4000
    assert result.stats.implicit_frees == 0  # the log's order matches each pointer's life
    assert result.stats.unknown_frees == 0
    live: set[int] = set()
    for op in trace.ops:
        if op.kind == "a":
            assert op.id not in live
            live.add(op.id)
        elif op.kind == "f":
            live.remove(op.id)
        else:
            assert op.id in live
    assert not live


@linux_only
def test_forked_child_is_not_recorded(
    program: Path, interposer_cache: Path, tmp_path: Path
) -> None:
    output = tmp_path / "fork.rep"
    result = record([str(program), "fork"], output, cache_dir=interposer_cache)
    assert result.returncode == 0
    sizes = [op.size for op in read_trace(output).ops if op.kind == "a"]
    assert 111 in sizes and 333 in sizes
    assert 222 not in sizes


@linux_only
def test_exec_children_and_the_largest_process(
    program: Path, interposer_cache: Path, tmp_path: Path
) -> None:
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no sh")
    command = [shell, "-c", f"'{program}' many; exit 7"]
    main = record(command, tmp_path / "main.rep", cache_dir=interposer_cache)
    assert main.returncode == 7
    assert main.processes == 1  # without follow_exec the program is not recorded
    largest = record(
        command,
        tmp_path / "largest.rep",
        follow_exec=True,
        process="largest",
        cache_dir=interposer_cache,
    )
    assert largest.processes == 2
    assert largest.pid != main.pid
    ops = read_trace(tmp_path / "largest.rep").ops
    assert sum(op == Op("a", 0, 32) for op in ops) >= 3000


@linux_only
def test_statically_linked_program_is_an_error(interposer_cache: Path, tmp_path: Path) -> None:
    compiler = _compiler()
    assert compiler is not None
    source = tmp_path / "static.c"
    source.write_text("#include <stdlib.h>\nint main(void) { free(malloc(8)); return 0; }\n")
    binary = tmp_path / "static"
    built = subprocess.run(
        [*compiler, "-static", "-o", str(binary), str(source)], capture_output=True
    )
    if built.returncode != 0:
        pytest.skip("no static C library to link against")
    with pytest.raises(RecordError, match="did not load the interposer"):
        record([str(binary)], tmp_path / "static.rep", cache_dir=interposer_cache)


def test_missing_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(CompilerNotFoundError, match="needs a C compiler") as caught:
        build_interposer(tmp_path / "cache")
    assert "cc, gcc, clang" in str(caught.value)
    monkeypatch.setenv("CC", "/nonexistent/cc -O1")
    with pytest.raises(CompilerNotFoundError, match=r"\$CC='/nonexistent/cc -O1'"):
        build_interposer(tmp_path / "cache")
    # record() fails the same way before it starts the command
    with pytest.raises(CompilerNotFoundError):
        record(["true"], tmp_path / "x.rep", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "x.rep").exists()


def test_interposer_is_cached_by_source_hash(
    interposer_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_interposer(interposer_cache)
    assert first.parent == interposer_cache and first.name.startswith("librecord-")
    # a cached build needs no compiler
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CC", raising=False)
    assert build_interposer(interposer_cache) == first


def test_record_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a command"):
        record([], tmp_path / "x.rep")
    with pytest.raises(ValueError, match="process must be"):
        record(["true"], tmp_path / "x.rep", process="first")


# ---- converting logs ------------------------------------------------------------------


def _convert(records: Iterable[tuple[int, int, int, int]], **options: object) -> list[Op]:
    raw = [RawRecord(kind, 0, ptr, size, result) for kind, ptr, size, result in records]
    trace, _ = convert_records(raw, **options)  # type: ignore[arg-type]
    trace.validate()
    return trace.ops


def test_convert_realloc_cases() -> None:
    stats_trace, stats = convert_records(
        [
            RawRecord(RECORD_REALLOC, 0, 0, 40, 0x1000),  # realloc(NULL, 40) = malloc
            RawRecord(RECORD_REALLOC, 0, 0x1000, 80, 0x2000),  # moves
            RawRecord(RECORD_REALLOC, 0, 0x2000, 0, 0),  # glibc's realloc(p, 0) frees
            RawRecord(RECORD_MALLOC, 0, 0, 8, 0x3000),
            RawRecord(RECORD_REALLOC, 0, 0x3000, 0, 0x4000),  # another libc keeps a block
            RawRecord(RECORD_REALLOC, 0, 0x4000, 16, 0),  # failed: the block stays
            RawRecord(RECORD_REALLOC, 0, 0x9000, 24, 0x5000),  # never seen: an 'a'
        ],
        free_at_end=False,
    )
    assert stats_trace.ops == [
        Op("a", 0, 40),
        Op("r", 0, 80),
        Op("f", 0, 0),
        Op("a", 0, 8),
        Op("f", 0, 0),
        Op("a", 0, 0),
        Op("a", 1, 24),
    ]
    assert stats.failed_calls == 1
    assert stats.unknown_reallocs == 1
    assert stats.live_at_end == 2
    assert stats.peak_payload == 80


def test_convert_drops_unknown_frees_and_failed_calls() -> None:
    trace, stats = convert_records(
        [
            RawRecord(RECORD_FREE, 0, 0x7000, 0, 0),  # allocated before recording
            RawRecord(RECORD_MALLOC, 0, 0, 1 << 60, 0),  # failed
            RawRecord(RECORD_CALLOC, 0, 0, 2**64 - 1, 0),  # calloc overflow
            RawRecord(RECORD_MALLOC, 0, 0, 0, 0),  # malloc(0) may return NULL: not a failure
            RawRecord(RECORD_ALIGNED, 64, 0, 64, 0x1000),
            RawRecord(RECORD_FREE, 0, 0x1000, 0, 0),
            RawRecord(RECORD_FREE, 0, 0x1000, 0, 0),  # a second free of the same address
        ]
    )
    assert trace.ops == [Op("a", 0, 64), Op("f", 0, 0)]
    assert stats.unknown_frees == 2
    assert stats.failed_calls == 2
    assert stats.records == 7


def test_convert_reuses_the_smallest_free_id() -> None:
    ops = _convert(
        [
            (RECORD_MALLOC, 0, 1, 0x10),
            (RECORD_MALLOC, 0, 2, 0x20),
            (RECORD_MALLOC, 0, 3, 0x30),
            (RECORD_FREE, 0x30, 0, 0),
            (RECORD_FREE, 0x10, 0, 0),
            (RECORD_MALLOC, 0, 4, 0x40),
            (RECORD_MALLOC, 0, 5, 0x50),
        ],
        free_at_end=False,
    )
    assert ops[-2:] == [Op("a", 0, 4), Op("a", 2, 5)]


def test_convert_inserts_a_missed_free() -> None:
    trace, stats = convert_records(
        [
            RawRecord(RECORD_MALLOC, 0, 0, 10, 0x100),
            RawRecord(RECORD_MALLOC, 0, 0, 20, 0x100),  # 0x100 handed out again
            RawRecord(RECORD_MALLOC, 0, 0, 30, 0x200),
            RawRecord(RECORD_REALLOC, 0, 0x200, 40, 0x100),  # onto the live 0x100
        ]
    )
    assert trace.ops == [
        Op("a", 0, 10),
        Op("f", 0, 0),
        Op("a", 0, 20),
        Op("a", 1, 30),
        Op("f", 0, 0),
        Op("r", 1, 40),
        Op("f", 1, 0),  # closing free
    ]
    assert stats.implicit_frees == 2


def test_convert_max_ops_never_splits_a_record() -> None:
    records = [
        RawRecord(RECORD_MALLOC, 0, 0, 10, 0x100),
        RawRecord(RECORD_MALLOC, 0, 0, 20, 0x100),  # needs two ops: f, then a
    ]
    trace, stats = convert_records(records, max_ops=2, free_at_end=False)
    assert trace.ops == [Op("a", 0, 10), Op("f", 0, 0)]
    assert stats.truncated
    trace.validate()
    trace, stats = convert_records(records, max_ops=3)
    assert trace.ops == [Op("a", 0, 10), Op("f", 0, 0), Op("a", 0, 20), Op("f", 0, 0)]
    assert not stats.truncated
    with pytest.raises(ValueError, match="max_ops"):
        convert_records(records, max_ops=-1)


def test_convert_rejects_an_unknown_kind() -> None:
    with pytest.raises(RecordError, match="unknown kind 9"):
        convert_records([RawRecord(9, 0, 0, 0, 0)])


def test_read_log(tmp_path: Path) -> None:
    path = tmp_path / "calls.log"
    body = LOG_RECORD.pack(RECORD_MALLOC, 0, 0, 24, 0x1000) + LOG_RECORD.pack(
        RECORD_FREE, 0, 0x1000, 0, 0
    )
    path.write_bytes(LOG_HEADER.pack(LOG_MAGIC, LOG_VERSION, 4242) + body + b"\x01\x02")
    pid, records = read_log(path)
    assert pid == 4242
    assert records == [
        RawRecord(RECORD_MALLOC, 0, 0, 24, 0x1000),
        RawRecord(RECORD_FREE, 0, 0x1000, 0, 0),
    ]  # the partial record at the end is dropped
    path.write_bytes(struct.pack("=8sII", b"NOTALOG!", 1, 1))
    with pytest.raises(RecordError, match="not an allocation log"):
        read_log(path)
    path.write_bytes(b"short")
    with pytest.raises(RecordError, match="too short"):
        read_log(path)


@linux_only
def test_interposer_without_a_log_path_only_forwards(program: Path, interposer_cache: Path) -> None:
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(build_interposer(interposer_cache))
    env.pop("PYALLOC_TRACE_FILE", None)
    done = subprocess.run([str(program), "threads"], env=env)
    assert done.returncode == 0


# ---- the bundled workloads ----------------------------------------------------------


def test_bundled_traces_are_balanced_recordings() -> None:
    from pyalloc.workloads import bundled_traces
    from pyalloc.workloads.recipes import RECIPES

    paths = bundled_traces()
    assert [path.name for path in paths] == sorted(f"{name}.rep.gz" for name in RECIPES)
    for path in paths:
        trace = read_trace(path)
        assert 1_000 <= len(trace.ops) <= 60_000, path.name  # small enough to replay in CI
        live: dict[int, int] = {}
        payload = peak = 0
        for kind, block_id, size in trace.ops:
            if kind == "a":
                assert block_id not in live
                live[block_id] = size
                payload += size
            elif kind == "r":
                payload += size - live[block_id]
                live[block_id] = size
            else:
                payload -= live.pop(block_id)
            peak = max(peak, payload)
        assert not live, path.name  # closing frees make every trace balanced
        assert trace.heap_hint == peak  # the header carries the peak live payload
