"""The verdicts of benchmarks/utilization_vs_system.py, on comparisons made up here."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from benchmark_module import load_benchmark

from pyalloc.trace.bench import DEFAULT_HEAP, Column, Comparison, Source
from pyalloc.trace.record import CompilerNotFoundError, find_compiler
from pyalloc.trace.rep import Op, Trace, read_trace


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return load_benchmark("utilization_vs_system")


def _row(util: float, peak_heap: int, valid: bool = True) -> dict[str, Any]:
    return {"valid": valid, "util": util, "peak_heap": peak_heap, "peak_payload": 1000}


def _comparison(cells: dict[str, tuple[dict[str, Any], ...]], mimalloc: bool = True) -> Comparison:
    """One source per name; each tuple is (pyalloc, glibc, mimalloc) rows."""
    trace = Trace(ops=[Op("a", 0, 1000), Op("f", 0, 0)], num_ids=1, name="t")
    names = [DEFAULT_HEAP, "glibc"] + (["mimalloc"] if mimalloc else [])
    comparison = Comparison(
        [Source(label, label, trace=trace) for label in cells],
        [Column(DEFAULT_HEAP, False), *(Column(name, True) for name in names[1:])],
    )
    for i, rows in enumerate(cells.values()):
        for name, row in zip(names, rows, strict=False):
            comparison.cells[i, name] = row
    return comparison


def test_verdicts_follow_the_rules(
    benchmark: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    large = benchmark.THRESHOLD
    small = benchmark.THRESHOLD - 1
    comparison = _comparison(
        {
            "beats-both": (_row(0.95, 1), _row(0.90, 1), _row(0.93, large)),
            "below-glibc": (_row(0.80, 1), _row(0.85, 1), _row(0.50, large)),
            "below-mimalloc": (_row(0.90, 1), _row(0.85, 1), _row(0.92, large)),
            # mimalloc's peak too small to judge by: its better util does not count
            "small-mimalloc": (_row(0.90, 1), _row(0.85, 1), _row(0.99, small)),
            # mimalloc below glibc: the mimalloc rule does not apply
            "mimalloc-worse": (_row(0.90, 1), _row(0.85, 1), _row(0.70, large)),
            "failed": (_row(0.0, 0, valid=False), _row(0.85, 1), _row(0.90, large)),
        }
    )
    verdicts = benchmark.print_set("made up", comparison)
    out = capsys.readouterr().out
    glibc, mimalloc = verdicts
    assert glibc[2] is False
    assert glibc[1] == "4 of 6 (missed: below-glibc, failed)"
    assert mimalloc[2] is False
    assert mimalloc[1] == "1 of 2 (missed: below-mimalloc)"
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line}
    assert lines["beats-both"][-2:] == ["yes", "yes"]
    assert lines["small-mimalloc"][-3:] == ["99.00%~", "yes", "-"]
    assert lines["mimalloc-worse"][-2:] == ["yes", "-"]
    assert lines["failed"][2] == "FAIL"


def test_without_mimalloc_only_glibc_is_judged(benchmark: ModuleType) -> None:
    comparison = _comparison(
        {"a": (_row(0.95, 1), _row(0.90, 1)), "b": (_row(0.91, 1), _row(0.90, 1))},
        mimalloc=False,
    )
    verdicts = benchmark.print_set("made up", comparison)
    assert verdicts == [("made up: pyalloc util >= glibc's on every trace", "2 of 2", True)]


def test_slab_room_counts_what_headers_and_rounding_take_beyond_a_slot(
    benchmark: ModuleType,
) -> None:
    from pyalloc.layout import block_size_for
    from pyalloc.slab import SMALL_MAX, class_size, size_class

    def room(size: int) -> int:
        return int(block_size_for(size) - class_size(size_class(size)))

    trace = Trace(
        ops=[
            Op("a", 0, 16),
            Op("a", 1, 16),
            Op("a", 2, 48),
            Op("f", 0, 0),
            Op("r", 1, 100),  # now of another class
            Op("a", 3, SMALL_MAX + 1),  # not a small object
            Op("a", 4, 0),  # malloc(0) takes no slot
        ],
        num_ids=5,
        name="t",
    )
    assert room(16) > 0 and room(48) > 0
    most, of_one_class = benchmark.slab_room(trace)
    assert most == 2 * room(16) + room(48)
    assert of_one_class == 2 * room(16)
    assert benchmark.slab_room(Trace(ops=[Op("a", 0, 4096)], num_ids=1, name="u")) == (0, 0)


def test_recorded_here_records_what_is_installed_and_says_what_is_not(tmp_path: Any) -> None:
    recorded_here = load_benchmark("recorded_here")
    try:
        find_compiler()
    except CompilerNotFoundError:
        pytest.skip("no C compiler to build the interposer")
    Program = recorded_here.Program
    said: list[str] = []
    traces = recorded_here.record_programs(
        tmp_path,
        said.append,
        [
            Program("sort", recorded_here._numbers),
            Program("absent", lambda _: ["pyalloc-test-no-such-program"]),
        ],
    )
    assert [path.name for path in traces] == ["sort.rep.gz"]
    assert said == ["absent: pyalloc-test-no-such-program is not installed, skipped"]
    trace = read_trace(traces[0])
    trace.validate()
    assert len(trace.ops) > 100  # sort reads 200,000 lines
