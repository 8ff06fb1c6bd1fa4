"""Workload generators: deterministic by seed, valid, and everything freed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyalloc.trace.generate import GENERATORS, PROGRESS_MASK, generate, realistic
from pyalloc.trace.rep import Trace, read_trace, write_trace

OPS = 3000
NAMES = sorted(GENERATORS)


def replay_lifecycle(trace: Trace) -> int:
    """Check each id's life (one 'a', reallocs only while live, one 'f');
    return the peak live payload."""
    live: dict[int, int] = {}
    allocated: set[int] = set()
    live_bytes = peak = 0
    for index, (kind, block_id, size) in enumerate(trace.ops):
        if kind == "a":
            assert block_id not in allocated, f"op {index}: id {block_id} allocated twice"
            allocated.add(block_id)
            live[block_id] = size
            live_bytes += size
        elif kind == "r":
            assert block_id in live, f"op {index}: realloc of id {block_id} not live"
            assert size > 0, f"op {index}: realloc to 0 used as a free"
            live_bytes += size - live[block_id]
            live[block_id] = size
        else:
            assert block_id in live, f"op {index}: free of id {block_id} not live"
            live_bytes -= live.pop(block_id)
        peak = max(peak, live_bytes)
    assert not live, f"{len(live)} blocks still live at the end"
    assert allocated == set(range(trace.num_ids))
    return peak


def test_expected_generators_listed() -> None:
    assert set(GENERATORS) >= {"uniform", "fragmenter", "coalesce", "realloc_growth", "realistic"}


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed(name: str) -> None:
    first = GENERATORS[name](OPS, 7)
    second = GENERATORS[name](OPS, 7)
    assert first == second
    assert first.ops != GENERATORS[name](OPS, 8).ops


@pytest.mark.parametrize("name", NAMES)
def test_progress_is_told_of_the_ops_made_and_changes_nothing(name: str) -> None:
    told: list[int] = []
    ops = 3 * (PROGRESS_MASK + 1) + 100
    trace = generate(name, ops, 3, told.append)
    assert told == [PROGRESS_MASK + 1] * (len(trace.ops) // (PROGRESS_MASK + 1))
    assert len(told) >= 2  # the budget is most of the ops
    assert trace == generate(name, ops, 3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_valid_and_everything_freed(name: str, seed: int) -> None:
    trace = GENERATORS[name](OPS, seed)
    trace.validate()
    assert OPS - 1 <= len(trace.ops) <= OPS
    peak = replay_lifecycle(trace)
    assert trace.heap_hint == peak > 0
    assert trace.weight == 1
    assert name in trace.name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ops", [0, 1, 2, 3, 4, 5, 9, 64])
def test_small_op_counts(name: str, ops: int) -> None:
    trace = GENERATORS[name](ops, 3)
    assert max(0, ops - 1) <= len(trace.ops) <= ops
    replay_lifecycle(trace)


@pytest.mark.parametrize("name", NAMES)
def test_negative_op_count_refused(name: str) -> None:
    with pytest.raises(ValueError, match="ops"):
        GENERATORS[name](-1, 0)


@pytest.mark.parametrize("name", NAMES)
def test_generated_trace_survives_the_file_format(tmp_path: Path, name: str) -> None:
    trace = GENERATORS[name](500, 2)
    path = tmp_path / f"{name}.rep.gz"
    write_trace(trace, path)
    copy = read_trace(path)
    assert copy.ops == trace.ops
    assert copy.num_ids == trace.num_ids and copy.heap_hint == trace.heap_hint


def test_generate_by_name() -> None:
    assert generate("uniform", 100, 4) == GENERATORS["uniform"](100, 4)
    with pytest.raises(ValueError, match="unknown generator"):
        generate("no-such-workload", 100)


def test_realloc_workloads_realloc() -> None:
    for name in ("realloc_growth", "realistic"):
        trace = GENERATORS[name](OPS, 0)
        assert any(op.kind == "r" for op in trace.ops), name


def test_realistic_sizes_skew_small_with_long_tail() -> None:
    trace = realistic(20000, 5)
    sizes = [op.size for op in trace.ops if op.kind == "a"]
    small = sum(1 for size in sizes if 8 <= size <= 128)
    assert small / len(sizes) >= 0.8
    assert max(sizes) > 64 * 1024
    assert max(sizes) <= 1 << 20


def test_realistic_lifetimes_mostly_short() -> None:
    trace = realistic(20000, 6)
    born: dict[int, int] = {}
    lifetimes: list[int] = []
    for index, op in enumerate(trace.ops):
        if op.kind == "a":
            born[op.id] = index
        elif op.kind == "f":
            lifetimes.append(index - born[op.id])
    lifetimes.sort()
    assert lifetimes[len(lifetimes) // 2] < 100  # the median block dies young
    assert lifetimes[-1] > 2000  # while some live long


def test_fragmenter_requests_outgrow_the_holes() -> None:
    trace = GENERATORS["fragmenter"](OPS, 0)
    sizes = [op.size for op in trace.ops if op.kind == "a"]
    assert min(sizes) <= 64 and max(sizes) > 2 * 2048
