"""Malloc-lab packages: a student's mm.c compiled against the lab's memlib and graded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pyalloc.cli import main
from pyalloc.trace import mm
from pyalloc.trace.generate import generate
from pyalloc.trace.rep import parse_trace, write_trace
from pyalloc.trace.system import FOOTPRINT_METHOD_MEM_HEAPSIZE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mm_implicit.c"

if mm.compiler() is None:
    pytest.skip("no C compiler on this machine", allow_module_level=True)

# The example allocator, gone wrong on purpose, one fault per trigger size.
BROKEN = EXAMPLE.read_text().replace(
    "void *mm_malloc(size_t size) {",
    "void *mm_malloc_ok(size_t size);\nvoid *mm_malloc(size_t size) {\n"
    "    static char *last, *first;\n"
    "    if (size == 777) return (char *)mm_malloc_ok(size) + 8;   /* misaligned */\n"
    "    if (size == 555) { if (!last) last = mm_malloc_ok(size); return last; } /* overlap */\n"
    "    if (size == 48) return first - 16;            /* reaches into the first block */\n"
    "    if (size == 4242) return *(void **)16;                    /* crash */\n"
    "    if (size == 9999) for (;;) {}                              /* hang */\n"
    "    if (size == 4099) first[50] = 0;          /* a byte in the middle of block 0 */\n"
    "    char *p = mm_malloc_ok(size);\n"
    "    if (!first) first = p;\n"
    "    return p;\n}\n"
    "void *mm_malloc_ok(size_t size) {",
)


def trace_with(size: int) -> str:
    return f"1\n3\n5\n1\na 0 100\na 1 {size}\na 2 {size}\nf 0\nf 1\n"


def test_the_example_replays_validly() -> None:
    package = mm.build(EXAMPLE)
    for kind in ("uniform", "realistic"):
        result = mm.replay_package(package, generate(kind, ops=3000, seed=2))
        assert result.valid, result.error
        assert 0.5 < result.util <= 1.0 and result.peak_footprint >= result.peak_payload
        assert result.footprint_method == FOOTPRINT_METHOD_MEM_HEAPSIZE


@pytest.mark.parametrize(
    "size, fault",
    [
        (777, "op 2 (a 1 777): malloc(777) returned"),  # misaligned
        (555, "op 3 (a 2 555): malloc(555) returned 0x"),  # two live blocks at one address
        (555, ", inside the live block [0x"),
        (48, "op 2 (a 1 48): malloc(48) returned [0x"),  # from below into a live block
        (48, "), over the live block at 0x"),
        (4242, "killed by signal 11 at op 2 (a 1 4242)"),  # a segfault
        (4099, "op 4 (f 0): block 0 at 0x"),  # not at either end: every byte is checked
        (4099, ": bytes between the stamps changed before free"),
    ],
)
def test_each_fault_is_reported_for_its_trace(size: int, fault: str) -> None:
    package = mm.build(_write(BROKEN, "broken_mm.c"))
    good = mm.replay_package(package, parse_trace(trace_with(64), "ok"))
    assert good.valid, good.error
    bad = mm.replay_package(package, parse_trace(trace_with(size), "bad"))
    assert not bad.valid and bad.error is not None
    assert fault in bad.error, bad.error


def test_a_realloc_must_keep_every_byte() -> None:
    lossy = EXAMPLE.read_text().replace(
        "memcpy(newptr, ptr, old < size ? old : size);", "memcpy(newptr, ptr, 8);"
    )
    assert lossy != EXAMPLE.read_text()
    package = mm.build(_write(lossy, "lossy_mm.c"))
    result = mm.replay_package(package, parse_trace("1\n1\n3\n1\na 0 100\nr 0 5000\nf 0\n", "r"))
    assert not result.valid
    assert result.error == (
        "op 2 (r 0 5000): realloc to 5000 did not keep block 0's bytes (bytes between the stamps)"
    )


def test_what_a_package_prints_is_neither_a_fault_nor_its_report() -> None:
    # The report travels apart from stdout: a line that looks like one is ignored.
    fake = r"{\"error\": null, \"peak_payload\": 1, \"peak_footprint\": 1, \"seconds\": 1e-9}"
    headers = "#include <stdio.h>\n#include <stdlib.h>\n"
    chatty = EXAMPLE.read_text().replace(
        "int mm_init(void) {",
        f'int mm_init(void) {{\n    puts("mm_init called");\n    puts("{fake}");',
    )
    package = mm.build(_write(headers + chatty, "chatty_mm.c"))
    result = mm.replay_package(package, generate("uniform", ops=500, seed=3))
    assert result.valid, result.error
    assert result.peak_footprint > 1 and result.seconds > 1e-9
    quits = EXAMPLE.read_text().replace(
        "int mm_init(void) {", f'int mm_init(void) {{\n    puts("{fake}");\n    exit(0);'
    )
    package = mm.build(_write(headers + quits, "quits_mm.c"))
    result = mm.replay_package(package, generate("uniform", ops=500, seed=3))
    assert not result.valid
    assert result.error == (
        "the quits_mm.c replayer exited with status 0 without a report"
        " before op 1 (loading the allocator, or in mm_init)"
    )


def test_a_report_the_package_writes_itself_is_refused() -> None:
    forged = EXAMPLE.read_text().replace(
        "int mm_init(void) {",
        "int mm_init(void) {\n"
        '    FILE *f = fopen(getenv("PYALLOC_REPLAY_REPORT"), "w");\n'
        '    fputs("{\\"error\\": null, \\"peak_payload\\": 1000, \\"peak_footprint\\": 1000,'
        ' \\"seconds\\": 1e-9}", f);\n'
        "    fclose(f);\n"
        "    _exit(0);\n",
    )
    source = "#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n" + forged
    package = mm.build(_write(source, "forged_mm.c"))
    result = mm.replay_package(package, parse_trace(trace_with(64), "forged"))
    assert not result.valid
    assert result.error == (
        "the forged_mm.c replayer's report gives a peak payload of 1,000 bytes; the trace's is 228"
    )


def test_what_a_package_forks_ends_with_its_replay(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    forking = EXAMPLE.read_text().replace(
        "int mm_init(void) {",
        "int mm_init(void) {\n"
        "    static int forked;\n"
        "    if (!forked++) {\n"
        "        pid_t child = fork();\n"
        "        if (child == 0) { sleep(300); _exit(0); }\n"
        f'        FILE *f = fopen("{pid_file}", "w"); fprintf(f, "%d", (int)child); fclose(f);\n'
        "    }\n",
    )
    source = "#include <stdio.h>\n#include <unistd.h>\n" + forking
    package = mm.build(_write(source, "forking_mm.c"))
    result = mm.replay_package(package, parse_trace(trace_with(64), "fork"))
    assert result.valid, result.error
    child = int(pid_file.read_text())
    for _ in range(500):  # killed with the replayer's group; reaped by whoever adopted it
        if not _alive(child):
            break
        time.sleep(0.01)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_realloc_of_no_block_is_a_malloc_in_every_pass() -> None:
    # mm_realloc(NULL, n) is never called: the checked pass and the timed
    # passes make the same calls.
    strict = EXAMPLE.read_text().replace(
        "void *mm_realloc(void *ptr, size_t size) {",
        "void *mm_realloc(void *ptr, size_t size) {\n    if (!ptr) abort();",
    )
    package = mm.build(_write("#include <stdlib.h>\n" + strict, "strict_mm.c"))
    trace = parse_trace("1\n1\n2\n1\nr 0 100\nf 0\n", "r-null")
    result = mm.replay_package(package, trace, timed_repeats=2)
    assert result.valid, result.error


def test_a_hang_is_cut_by_the_timeout() -> None:
    package = mm.build(_write(BROKEN, "broken_mm.c"))
    result = mm.replay_package(package, parse_trace(trace_with(9999), "hang"), timeout=3)
    assert not result.valid and result.error is not None
    assert "did not finish within 3 s at op 2 (a 1 9999)" in result.error


def test_mm_init_failing_is_reported() -> None:
    source = EXAMPLE.read_text().replace(
        "int mm_init(void) {", "int mm_init(void) {\n    return -1;"
    )
    package = mm.build(_write(source, "failing_init.c"))
    result = mm.replay_package(package, parse_trace(trace_with(64), "init"))
    assert not result.valid and "mm_init failed" in (result.error or "")


def test_the_command_grades_every_trace_and_shows_compiler_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = tmp_path / "ok.rep"
    bad = tmp_path / "bad.rep"
    ok.write_text(trace_with(64))
    bad.write_text(trace_with(777))
    write_trace(generate("uniform", ops=500, seed=3), tmp_path / "gen.rep")
    broken = _write(BROKEN, "broken_mm.c")
    status = main(["replay", "--mm", str(broken), str(ok), str(bad), str(tmp_path / "gen.rep")])
    out = capsys.readouterr().out
    assert status == 1
    assert "NO" in out and out.count("yes") == 2 and "not 16-aligned" in out
    wrong = _write("int mm_init(void) { return oops; }\n", "wrong.c")
    assert main(["replay", "--mm", str(wrong), str(ok)]) == 1
    err = capsys.readouterr().err
    assert "'oops' undeclared" in err or "oops" in err
    assert err.startswith(f"pyalloc: --mm {wrong}: the package did not compile:\n")


def test_a_missing_package_is_said_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = tmp_path / "ok.rep"
    ok.write_text(trace_with(64))
    missing = tmp_path / "no_mm.c"
    assert main(["replay", "--mm", str(missing), str(ok)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"pyalloc: --mm: {missing}: no such file\n"
    assert captured.out == ""
    assert main(["replay", "--mm", str(tmp_path), str(ok)]) == 1
    assert capsys.readouterr().err == f"pyalloc: --mm: {tmp_path}: a directory, not an mm.c\n"


@pytest.mark.parametrize(
    "old, new, missing",
    [
        ("void *mm_realloc(", "void *mm_realloc_gone(", "mm_realloc"),  # one of the four
        ("void mm_free(void *bp) {", "void mm_free(void *bp) {\n    helper_gone();", "helper_gone"),
    ],
    ids=["an entry point", "a helper"],
)
def test_a_function_the_lab_or_the_package_needs_undefined_fails_the_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, missing: str
) -> None:
    source = "void helper_gone(void);\n" + EXAMPLE.read_text().replace(old, new)
    ok = tmp_path / "ok.rep"
    ok.write_text(trace_with(64))
    package = _write(source, f"no_{missing}.c")
    assert main(["replay", "--mm", str(package), str(ok)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyalloc: --mm {package}: the package did not compile:\n")
    assert missing in err


def test_odd_files_named_h_beside_a_package_are_not_its_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    source = package / "mm.c"
    source.write_text(EXAMPLE.read_text())
    (package / "config.h").mkdir()  # a directory
    (package / "gone.h").symlink_to(tmp_path / "nowhere")  # a broken link
    os.mkfifo(package / "pipe.h")  # reading it would wait for a writer
    ok = tmp_path / "ok.rep"
    ok.write_text(trace_with(64))
    assert main(["replay", "--mm", str(source), str(ok)]) == 0, capsys.readouterr().err
    assert "yes" in capsys.readouterr().out


def test_bench_refuses_two_packages_of_one_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "mm.c").write_text(EXAMPLE.read_text())
    ok = tmp_path / "ok.rep"
    ok.write_text(trace_with(64))
    argv = ["bench", str(ok), "--allocators", "none", "--policies", "segregated"]
    status = main([*argv, "--mm", str(tmp_path / "a/mm.c"), "--mm", str(tmp_path / "b/mm.c")])
    err = capsys.readouterr().err
    assert status == 1 and err == (
        f"pyalloc: --mm {tmp_path / 'b/mm.c'}: a column is named mm.c already"
        " (a package's column is its file name): rename one\n"
    )


_DIR: list[Path] = []


def _write(text: str, name: str) -> Path:
    if not _DIR:
        import tempfile

        _DIR.append(Path(tempfile.mkdtemp(prefix="pyalloc-mm-test-")))
    path = _DIR[0] / name
    path.write_text(text)
    return path


def test_bench_grades_a_package_beside_the_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    for seed in (1, 2):
        write_trace(generate("uniform", ops=400, seed=seed), tmp_path / f"g{seed}.rep")
    args = ["bench", str(tmp_path), "--policies", "segregated", "--allocators", "none"]
    status = main([*args, "--mm", str(EXAMPLE), "--repeat", "0", "--json"])
    rows = json.loads(capsys.readouterr().out)
    graded = [row for row in rows if row["allocator"] == "mm_implicit.c"]
    assert status == 0 and len(graded) == 2 and all(row["valid"] for row in graded)
    assert all(0.3 < row["util"] <= 1.0 for row in graded)


def test_the_summary_follows_mdriver() -> None:
    from pyalloc.trace.bench import mdriver_summary

    rows = [
        {"valid": True, "ops": 100, "seconds": 0.001, "util": 0.9},
        {"valid": True, "ops": 300, "seconds": 0.003, "util": 0.5},
    ]
    summary = mdriver_summary(rows, reference_ops_per_sec=200_000)
    assert summary["util"] == pytest.approx(0.7) and summary["kops"] == pytest.approx(100)
    assert summary["perf_index"] == pytest.approx(100 * (0.6 * 0.7 + 0.4 * 0.5))
    faster = mdriver_summary(rows, reference_ops_per_sec=50_000)  # throughput capped at 1
    assert faster["perf_index"] == pytest.approx(100 * (0.6 * 0.7 + 0.4))
    rows.append({"valid": False, "ops": 0, "seconds": 0.0, "util": 0.0})
    assert mdriver_summary(rows, 200_000)["perf_index"] is None


def test_replay_prints_totals_and_the_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in (1, 2):
        write_trace(generate("uniform", ops=300, seed=seed), tmp_path / f"g{seed}.rep")
    assert main(["replay", "--mm", str(EXAMPLE), str(tmp_path), "--index", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "Totals: 2 of 2 valid" in out and "Perf index = " in out and "/100" in out


def test_builds_are_cached_by_everything_that_goes_into_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    package_dir = tmp_path / "pkg"
    package_dir.mkdir()
    source = package_dir / "mm.c"
    source.write_text(EXAMPLE.read_text())
    first = mm.build(source)
    assert Path(first.library).parent == tmp_path / "cache" / "pyalloc" / "mm"
    built_at = Path(first.library).stat().st_mtime_ns
    again = mm.build(source)
    assert again.library == first.library  # not compiled twice
    assert Path(again.library).stat().st_mtime_ns == built_at
    (package_dir / "extra.h").write_text("/* a header beside mm.c may be included */\n")
    assert mm.build(source).library != first.library  # a changed header builds afresh

    # A cache directory that cannot be made: the build still works, uncached.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    elsewhere = mm.build(source)
    assert not Path(elsewhere.library).is_relative_to(blocker)
    result = mm.replay_package(elsewhere, generate("uniform", ops=300, seed=3))
    assert result.valid, result.error
