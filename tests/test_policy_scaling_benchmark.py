"""benchmarks/policy_scaling.py runs end to end, and its floor row reads memory."""

from __future__ import annotations

import re
from types import ModuleType

import pytest
from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return load_benchmark("policy_scaling")


def test_the_touch_rows_free_reads_the_block_it_is_handed(benchmark: ModuleType) -> None:
    heap = benchmark.TouchHeap(10)
    pointers = benchmark.fill(heap, [16] * 10)
    assert len(set(pointers)) == 10
    assert all(p * 8 + 8 <= len(heap.region) for p in pointers)
    heap.words[pointers[3]] = 12345
    assert heap.free(pointers[3]) == 12345
    assert heap.free(pointers[4]) == 0x0101010101010101  # resident: written at creation
    heap.close()


def test_a_small_run_prints_every_row_and_each_verdict_against_the_floor(
    benchmark: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--policies", "segregated,tlsf", "--sizes", "100,3000", "--pairs", "400"]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    for row in ("segregated", "tlsf", "glibc", "loop", "touch"):
        assert re.search(rf"^{row}\s+[\d,]+\s+[\d,]+\s", out, re.M), row
    floor = re.search(r"the floor \(.*\): [\d,]+ -> ([\d,]+) ns/op", out)
    assert floor is not None
    for name in ("segregated", "tlsf"):
        assert re.search(rf"^(PASS|MISS)  {name}: ", out, re.M)
    allows = re.findall(
        r"the target allows [\d,]+ ns/op at N=3,000: (below|above) the floor's ([\d,]+)", out
    )
    assert len(allows) == 2 and all(value == floor.group(1) for _, value in allows)
