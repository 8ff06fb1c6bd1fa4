"""``pyalloc replay | bench | gen | record``: outputs, exit statuses, bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import signal
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyalloc.cli import main
from pyalloc.trace.bench import JSON_KEYS, ROW_KEYS
from pyalloc.trace.generate import generate
from pyalloc.trace.rep import Trace, read_trace, write_trace

BROKEN_TRACE = "0\n1\n2\n1\na 0 1\nq 0\n"  # line 6 is not an op


def write(path: Path, trace: Trace) -> Path:
    write_trace(trace, path)
    return path


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    """A directory of two small generated traces."""
    folder = tmp_path / "traces"
    folder.mkdir()
    write(folder / "uniform.rep", generate("uniform", 400, seed=1))
    write(folder / "realistic.rep.gz", generate("realistic", 400, seed=2))
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- replay ---------------------------------------------------------------------------


def test_replay_json_has_exactly_the_documented_keys(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "replay", "--json", "--repeat", "1", str(traces))
    assert status == 0
    results = json.loads(out)
    assert [Path(r["trace"]).name for r in results] == ["realistic.rep.gz", "uniform.rep"]
    for result in results:
        assert tuple(result) == JSON_KEYS
        assert result["valid"] is True and result["error"] is None
        assert (result["allocator"], result["policy"]) == ("pyalloc", "segregated")
        assert result["ops"] == len(read_trace(result["trace"]).ops)
        assert 0 < result["util"] <= 1
        assert result["util"] == pytest.approx(result["peak_payload"] / result["peak_heap"])
        assert result["ops_per_sec"] == pytest.approx(result["ops"] / result["seconds"])


def test_invalid_traces_fail_and_the_others_still_run(
    tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    malformed = tmp_path / "malformed.rep"
    malformed.write_text("100\n2\n2\n1\na 0 10\nx 1\n")
    huge = tmp_path / "huge.rep"
    huge.write_text("0\n1\n2\n1\na 0 1000000\nf 0\n")
    good = traces / "uniform.rep"
    missing = tmp_path / "missing.rep"
    status, out, err = run(
        capsys,
        "replay",
        "--json",
        "--repeat",
        "0",
        "--capacity",
        str(1 << 16),  # too small for huge.rep's block
        str(huge),
        str(malformed),
        str(missing),
    )
    assert status == 1
    results = {Path(r["trace"]).name: r for r in json.loads(out)}
    assert set(results) == {"huge.rep", "malformed.rep", "missing.rep"}
    assert all(not r["valid"] for r in results.values())
    assert "malformed.rep:6" in results["malformed.rep"]["error"]
    assert "No such file" in results["missing.rep"]["error"]
    assert results["huge.rep"]["error"].startswith("op 1 (a 0 1000000): MemoryError")
    assert "malformed.rep" in err  # the failures are also named on stderr

    status, out, _ = run(
        capsys, "replay", "--json", "--repeat", "0", str(malformed), str(good), str(missing)
    )
    assert status == 1
    results = {Path(r["trace"]).name: r for r in json.loads(out)}
    assert results["uniform.rep"]["valid"] is True
    assert not results["malformed.rep"]["valid"] and not results["missing.rep"]["valid"]


def test_replay_prints_a_plain_table_when_not_on_a_terminal(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "replay", "--repeat", "1", "--policy", "best-fit", str(traces))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["trace", "allocator", "valid"]
    assert lines[-1].startswith("Totals: 2 of 2 valid")  # mdriver's totals line
    assert {line.split()[0] for line in lines[1:-1]} == {"uniform", "realistic"}
    assert all("best-fit" in line for line in lines[1:-1])
    header = lines[0].split()
    assert {"valid", "util", "ops", "secs", "kops/s"} <= set(header)  # mdriver's columns
    secs = header.index("secs") - len(header)  # counted from the right: names hold spaces
    assert all(float(line.split()[secs]) > 0 for line in lines[1:-1])
    total = re.search(r" ([0-9.]+) s, ", lines[-1])
    assert total and float(total[1]) > 0  # with mdriver's six decimals, never "0.000 s"
    assert "\x1b[" not in out  # no terminal escapes


def test_replay_csv(traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "replay", "--csv", "--repeat", "0", str(traces / "uniform.rep"))
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and tuple(rows[0]) == ROW_KEYS
    assert rows[0]["valid"] == "True" and rows[0]["error"] == ""


# -- unknown names and bad input -------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "listed"),
    [
        (["replay", "--policy", "worst-fit", "TRACE"], "segregated"),
        (["replay", "--allocator", "hoard", "TRACE"], "jemalloc"),
        (["bench", "--policies", "segregated,worst-fit", "TRACE"], "tlsf"),
        (["bench", "--allocators", "glibc,hoard", "TRACE"], "mimalloc"),
    ],
)
def test_unknown_names_are_refused_with_the_valid_ones(
    argv: list[str], listed: str, traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(traces) if a == "TRACE" else a for a in argv]
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert "unknown" in err and listed in err
    assert ("worst-fit" in err) or ("hoard" in err)


def test_unknown_generator_kind_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["gen", "nonsense", "-o", str(tmp_path / "x.rep")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "realistic" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--plot", "", "--allocators", "none"],
        ["gen", "uniform", "-o", ""],
        ["viz", "t.rep", "-o", ""],
        ["record", "-o", "", "--", "true"],
    ],
    ids=["bench", "gen", "viz", "record"],
)
def test_an_empty_output_name_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("expected a file name, got an empty one\n")


def test_bench_on_a_missing_path_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    status, out, err = run(capsys, "bench", "--allocators", "none", str(missing))
    assert status == 1 and out == ""
    # as replay says it
    assert err == f"pyalloc: {missing}: cannot read: No such file or directory\n"


def test_replay_on_a_system_allocator_without_the_system_module(
    traces: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyalloc.trace.system", None)  # import fails
    status, _, err = run(capsys, "replay", "--allocator", "glibc", str(traces))
    assert status == 1
    assert "--allocator glibc" in err and "not available" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["top", "--interval", "nan", "x"],
        ["top", "--interval", "-1", "x"],
        ["top", "--interval", "inf", "x"],
        ["top", "--interval", "0", "x"],
        ["gen", "uniform", "--ops", "1e9", "-o", "x.rep"],
        ["gen", "uniform", "--seed", "-1", "-o", "x.rep"],
        ["gen", "uniform", "--seed", str(1 << 41), "-o", "x.rep"],
        ["viz", "t.rep", "--scale", str(10**23)],
        ["replay", "t.rep", "--repeat", "-1"],
    ],
    ids=" ".join,
)
def test_an_option_value_that_cannot_be_used_is_refused_up_front(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.search(r"error: argument --\w+: expected (an integer|seconds)", last), last


# -- gen ------------------------------------------------------------------------------


def _interrupt() -> None:
    raise KeyboardInterrupt


def _terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # main's handler raises at the next bytecode


@pytest.mark.parametrize(
    "stop, status, said",
    [(_interrupt, 130, "\npyalloc: interrupted\n"), (_terminate, 143, "pyalloc: terminated\n")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stopped_command_says_so_and_leaves_the_old_output(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop: Callable[[], None],
    status: int,
    said: str,
) -> None:
    out_path = tmp_path / "t.rep.gz"
    out_path.write_bytes(b"the old file")
    real_write = gzip.GzipFile.write

    def stopped(self: gzip.GzipFile, data: Any) -> int:
        real_write(self, bytes(data)[: len(data) // 2])
        stop()
        return len(data)

    monkeypatch.setattr(gzip.GzipFile, "write", stopped)
    before = signal.getsignal(signal.SIGTERM)
    got, out, err = run(capsys, "gen", "uniform", "--ops", "200", "-o", str(out_path))
    assert got == status and err == said and out == ""
    assert out_path.read_bytes() == b"the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["t.rep.gz"]  # no temporary left
    assert signal.getsignal(signal.SIGTERM) == before  # main gives the handler back


@pytest.mark.parametrize("suffix", [".rep", ".rep.gz"])
def test_gen_is_deterministic(
    suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [tmp_path / f"{name}{suffix}" for name in ("a", "b", "c")]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        status, _, err = run(
            capsys, "gen", "realistic", "--ops", "300", "--seed", seed, "-o", str(path)
        )
        assert status == 0 and str(path) in err
    first, second, other = (p.read_bytes() for p in paths)
    assert first == second
    assert first != other
    trace = read_trace(paths[0])
    assert trace.ops == generate("realistic", 300, 7).ops
    if suffix == ".rep.gz":
        assert first[:2] == b"\x1f\x8b"


def test_gen_out_of_memory_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr("pyalloc.cli.generate", exhausted)
    out = tmp_path / "g.rep"
    status, stdout, err = run(capsys, "gen", "uniform", "--ops", "5000000000", "-o", str(out))
    assert status == 1 and stdout == ""
    assert (
        err
        == "pyalloc: gen: not enough memory to build 5,000,000,000 ops (a trace is built whole)\n"
    )
    assert not out.exists()


# -- bench ----------------------------------------------------------------------------


def test_bench_csv_and_plot(
    traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    picture = tmp_path / "bench.png"
    status, out, err = run(
        capsys,
        "bench",
        str(traces),
        "--policies",
        "segregated,first-fit",
        "--allocators",
        "none",
        "--repeat",
        "1",
        "--csv",
        "--plot",
        str(picture),
    )
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4  # two traces x two policies
    assert {(Path(r["trace"]).name, r["policy"]) for r in rows} == {
        (name, policy)
        for name in ("uniform.rep", "realistic.rep.gz")
        for policy in ("segregated", "first-fit")
    }
    assert all(r["valid"] == "True" and float(r["util"]) > 0 for r in rows)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size > 10_000


def test_bench_table_has_a_row_per_trace_and_averages_last(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys,
        "bench",
        str(traces),
        "--policies",
        "segregated,tlsf",
        "--allocators",
        "none",
        "--repeat",
        "1",
    )
    assert status == 0
    tables = out.split("\n\n")
    assert tables[0].startswith("Utilization") and tables[1].startswith("Throughput")
    for table in tables[:2]:
        lines = table.strip().splitlines()
        assert lines[1].split() == ["trace", "segregated", "tlsf"]
        assert [line.split()[0] for line in lines[2:]] == ["realistic", "uniform", "average"]


@dataclass
class FakeSystemResult:
    allocator: str
    trace: str
    valid: bool
    ops: int
    peak_payload: int
    peak_footprint: int
    util: float
    seconds: float
    error: str | None
    footprint_method: str = "fake"


def fake_system_module() -> types.ModuleType:
    """Stands for pyalloc.trace.system: glibc works, jemalloc is missing."""
    module = types.ModuleType("pyalloc.trace.system")
    names = ("glibc", "jemalloc", "mimalloc", "tcmalloc")

    def system_available(name: str) -> str | None:
        return None if name == "glibc" else f"lib{name}.so not found"

    def replay_system(trace: Trace, allocator: str, *, timed_repeats: int = 1) -> FakeSystemResult:
        assert allocator == "glibc"
        return FakeSystemResult(
            allocator, trace.name, True, len(trace.ops), 1000, 2000, 0.5, 0.01, None
        )

    module.SYSTEM_ALLOCATORS = names  # type: ignore[attr-defined]
    module.system_available = system_available  # type: ignore[attr-defined]
    module.replay_system = replay_system  # type: ignore[attr-defined]
    return module


def test_bench_skips_a_missing_system_library_with_a_note(
    traces: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyalloc.trace.system", fake_system_module())
    status, out, err = run(
        capsys,
        "bench",
        str(traces),
        "--policies",
        "segregated",
        "--allocators",
        "glibc,jemalloc",
        "--repeat",
        "0",
        "--json",
    )
    assert status == 0
    rows = json.loads(out)
    assert {(r["allocator"], r["policy"]) for r in rows} == {
        ("pyalloc", "segregated"),
        ("glibc", None),
    }
    glibc = [r for r in rows if r["allocator"] == "glibc"]
    assert all(r["util"] == 0.5 and r["peak_heap"] == 2000 for r in glibc)
    assert all(r["ops_per_sec"] == pytest.approx(r["ops"] / 0.01) for r in glibc)
    assert "jemalloc" in err and "not found" in err

    status, out, _ = run(
        capsys,
        "bench",
        str(traces),
        "--policies",
        "segregated",
        "--allocators",
        "glibc,jemalloc",
        "--repeat",
        "0",
    )
    assert status == 0
    assert "note: jemalloc: skipped: libjemalloc.so not found" in out
    # glibc's footprint is resident pages, said in its column and under the table;
    # the fake's peaks of 2000 bytes are flagged as too small to judge by.
    assert out.splitlines()[1].split() == ["trace", "segregated", "glibc", "(rss)"]
    assert "(rss): the footprint is resident pages" in out
    assert "50.0%~" in out
    assert all(r["footprint"] == "resident pages" for r in glibc)


def test_bench_without_traces_and_without_bundled_ones_uses_generated_workloads(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyalloc.workloads", None)
    monkeypatch.setattr("pyalloc.trace.bench.GENERATED_OPS", 200)
    status, out, _ = run(
        capsys, "bench", "--policies", "segregated", "--allocators", "none", "--repeat", "0"
    )
    assert status == 0
    assert "using generated ones" in out
    assert "realistic" in out


def test_bench_reports_a_bad_trace_and_exits_non_zero(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (traces / "broken.rep").write_text(BROKEN_TRACE)
    status, out, _ = run(
        capsys,
        "bench",
        str(traces),
        "--policies",
        "segregated,tlsf",
        "--allocators",
        "none",
        "--repeat",
        "0",
    )
    assert status == 1
    assert "FAIL" in out
    failed = [line for line in out.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1  # once, not once per column
    assert "broken.rep on every column:" in failed[0]
    assert "broken.rep:6: expected an op" in failed[0]


def test_bench_of_only_unreadable_traces_says_why_once_each_and_prints_no_table(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = traces / "broken.rep"
    bad.write_text(BROKEN_TRACE)
    status, out, err = run(capsys, "bench", str(bad), "--allocators", "none", "--repeat", "0")
    assert status == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pyalloc: invalid trace: {bad}:6: expected an op")


def test_replay_of_only_unreadable_traces_says_why_once_each_and_prints_no_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.rep"
    bad.write_text(BROKEN_TRACE)
    missing = tmp_path / "missing.rep"
    status, out, err = run(capsys, "replay", str(bad), str(missing))
    assert status == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"pyalloc: invalid trace: {bad}:6: expected an op")
    assert lines[1] == f"pyalloc: {missing}: cannot read: No such file or directory"


# -- record ---------------------------------------------------------------------------


def test_record_needs_a_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "record", "-o", str(tmp_path / "t.rep"), "--")
    assert status == 1 and "give the command" in err


def test_record_without_the_recorder_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyalloc.trace.record", None)
    status, _, err = run(capsys, "record", "-o", str(tmp_path / "t.rep"), "--", "true")
    assert status == 1 and "not available" in err


@pytest.fixture
def interposer() -> None:
    """Skip unless the recorder's interposer can be built here."""
    record = pytest.importorskip("pyalloc.trace.record")
    try:
        record.build_interposer()
    except Exception as e:  # no compiler here: nothing to record with
        pytest.skip(f"the interposer cannot be built: {e}")


@pytest.mark.usefixtures("interposer")
def test_record_exits_with_the_status_of_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "t.rep"
    status, _, err = run(capsys, "record", "-o", str(output), "--", "sh", "-c", "exit 3")
    assert status == 3
    assert "status 3" in err
    assert output.exists()


@pytest.mark.usefixtures("interposer")
def test_record_of_a_program_that_cannot_run_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "t.rep"
    missing = str(tmp_path / "no-such-program")
    status, _, err = run(capsys, "record", "-o", str(output), "--", missing)
    assert status == 1
    assert err == f"pyalloc: record: cannot run {missing}: No such file or directory\n"
    assert not output.exists()


def test_help_texts_explain_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("replay", "bench", "gen", "record"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: ")
        assert len(out) > 400


def test_replay_on_a_system_allocator(
    traces: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyalloc.trace.system", fake_system_module())
    status, out, _ = run(capsys, "replay", "--allocator", "glibc", "--json", str(traces))
    assert status == 0
    results = json.loads(out)
    assert len(results) == 2
    for result in results:
        assert tuple(result) == JSON_KEYS
        assert (result["allocator"], result["policy"], result["peak_heap"]) == ("glibc", None, 2000)
    status, _, err = run(capsys, "replay", "--allocator", "jemalloc", str(traces))
    assert status == 1 and "libjemalloc.so not found" in err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tables_use_rich_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rich")
    from pyalloc.cli import print_table

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    print_table(["trace", "util"], [["a", "50.0%"], ["average", "50.0%"]], summary_last=True)
    drawn = screen.getvalue()
    assert drawn.startswith("┏") and "trace" in drawn and "│ a " in drawn
    assert "├" in drawn  # the rule above the averages


def test_bench_with_the_real_system_replayer(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = pytest.importorskip("pyalloc.trace.system")
    reason = system.system_available("glibc")
    if reason is not None:
        pytest.skip(reason)
    status, out, err = run(
        capsys,
        "bench",
        str(traces),
        "--policies",
        "segregated",
        "--allocators",
        "glibc",
        "--repeat",
        "1",
        "--json",
    )
    assert status == 0, err
    glibc = [r for r in json.loads(out) if r["allocator"] == "glibc"]
    assert len(glibc) == 2
    assert all(r["valid"] and r["peak_heap"] > 0 and r["ops_per_sec"] > 0 for r in glibc)


def test_version_names_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    import pyalloc

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("pyalloc ") and ("compiled" if pyalloc.COMPILED else "interpreted") in out


def test_implicit_runs_only_when_asked_for(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", str(traces), "--allocators", "none", "--repeat", "0", "--json"]
    status, out, _ = run(capsys, *args)
    assert status == 0 and "implicit" not in {row["policy"] for row in json.loads(out)}
    status, out, _ = run(capsys, *args, "--policies", "all")
    assert status == 0 and "implicit" in {row["policy"] for row in json.loads(out)}


def test_record_prints_leaks_drops_truncation_and_the_python_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = pytest.importorskip("pyalloc.trace.record")
    try:
        record.build_interposer()
    except Exception as e:  # no compiler: nothing to record with
        pytest.skip(f"the interposer cannot be built: {e}")
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    out = tmp_path / "py.rep"
    status = main(["record", "--max-ops", "5", "-o", str(out), "--", sys.executable, "-c", "pass"])
    err = capsys.readouterr().err
    assert status == 0
    assert "blocks still live at exit" in err and "never seen allocated" in err
    assert "cut at --max-ops 5" in err and "PYTHONMALLOC=malloc" in err


def test_record_refuses_an_output_it_cannot_write_before_running_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    program = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    status = main(["record", "-o", str(tmp_path / "no" / "t.rep"), "--", *program])
    err = capsys.readouterr().err
    assert status == 1 and err == f"pyalloc: record: {tmp_path / 'no'}: no such directory\n"
    assert not marker.exists()
    # A directory no file can be made in, whatever its permission bits say.
    status = main(["record", "-o", "/proc/t.rep", "--", *program])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("pyalloc: record: /proc: cannot create files there (")
    assert not marker.exists()


def test_allocators_none_stands_alone(traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "bench", str(traces), "--allocators", "none,glibc")
    assert (status, out) == (1, "")
    assert err == "pyalloc: --allocators none stands alone (it means no system allocator)\n"


def test_the_performance_index_needs_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.rep"
    write_trace(generate("uniform", ops=100, seed=1), trace)
    status, out, err = run(capsys, "replay", str(trace), "--index", "--repeat", "0")
    assert status == 2 and out == ""
    assert err == "pyalloc: --index weighs throughput, which --repeat 0 does not measure\n"


def test_progress_reaches_the_whole_work() -> None:
    from pyalloc.progress import ProgressBar

    class Bar:
        def __init__(self) -> None:
            self.completed = 0

        def update(self, task: object, advance: int = 0, description: str = "") -> None:
            self.completed += advance

        def refresh(self) -> None:
            pass

        def stop(self) -> None:
            pass

    progress = ProgressBar(1000)
    bar = Bar()
    progress.bar = bar
    progress.start("pyalloc on a", 400)
    progress.advance(150)  # a replay that reports part of its ops
    progress.start("glibc on a", 600)  # a subprocess that reports none
    progress.__exit__(None, None, None)
    assert bar.completed == 1000
