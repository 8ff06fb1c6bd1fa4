"""The validating replay driver: faults it must catch, numbers it must get right."""

from __future__ import annotations

from typing import Any

import pytest

from pyalloc.trace.generate import GENERATORS, generate
from pyalloc.trace.rep import Trace, parse_trace
from pyalloc.trace.replay import (
    ALIGNMENT,
    ReplayResult,
    default_capacity,
    make_pyalloc,
    policy_names,
    replay,
)

CAPACITY = 1 << 16


def rep(body: str, num_ids: int = 8) -> Trace:
    lines = [line.strip() for line in body.strip().splitlines()]
    text = f"0\n{num_ids}\n{len(lines)}\n1\n" + "\n".join(lines) + "\n"
    return parse_trace(text, "hand")


class BumpAllocator:
    """Never reuses memory: block after block, each rounded up to 16 bytes.

    The footprint is the break; usable sizes are the rounded sizes.
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.buf = bytearray(capacity)
        self.brk = ALIGNMENT
        self.sizes: dict[int, int] = {}
        self.calls: list[tuple[str, int, int]] = []

    @staticmethod
    def rounded(n: int) -> int:
        return max(ALIGNMENT, (n + ALIGNMENT - 1) & -ALIGNMENT)

    def _take(self, n: int) -> int:
        p = self.brk
        if p + self.rounded(n) > len(self.buf):
            raise MemoryError("bump allocator is full")
        self.brk += self.rounded(n)
        self.sizes[p] = n
        return p

    def malloc(self, n: int) -> int:
        self.calls.append(("malloc", 0, n))
        return self._take(n)

    def free(self, p: int) -> None:
        self.calls.append(("free", p, 0))
        if p:
            del self.sizes[p]

    def realloc(self, p: int, n: int) -> int:
        self.calls.append(("realloc", p, n))
        if not p:
            return self._take(n)
        if not n:
            del self.sizes[p]
            return 0
        q = self._take(n)
        keep = min(n, self.sizes.pop(p))
        self.buf[q : q + keep] = self.buf[p : p + keep]
        return q

    def usable_size(self, p: int) -> int:
        return self.rounded(self.sizes[p])

    def check(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"heap_bytes": self.brk, "peak_heap_bytes": self.brk}


def run_fake(trace: Trace, cls: type[BumpAllocator]) -> tuple[ReplayResult, list[BumpAllocator]]:
    made: list[BumpAllocator] = []

    def factory(capacity: int) -> Any:
        made.append(cls())
        return made[-1]

    result = replay(trace, factory=factory, allocator=cls.__name__, timed_repeats=1)
    return result, made


MIXED = rep(
    """
    a 0 100
    a 1 200
    r 0 300
    a 2 17
    f 1
    r 2 5
    f 0
    r 2 0
    """
)


def test_a_correct_allocator_passes() -> None:
    result, made = run_fake(MIXED, BumpAllocator)
    assert result.valid, result.error
    assert result.error is None
    assert result.allocator == "BumpAllocator" and result.policy is None
    assert result.ops == len(MIXED)
    assert result.seconds > 0 and result.ops_per_sec == pytest.approx(result.ops / result.seconds)
    assert len(made) == 2  # one validated pass, one timed pass, each on a fresh allocator


def test_utilization_on_a_hand_computed_trace() -> None:
    trace = rep(
        """
        a 0 100
        a 1 200
        f 0
        a 2 50
        f 1
        f 2
        """
    )
    result, _ = run_fake(trace, BumpAllocator)
    assert result.valid, result.error
    # Live payload: 100, 300, 200, 250, 50, 0; its peak is 300, after op 2.
    assert result.peak_payload == 300
    # Blocks at 16 (112 bytes), 128 (208 bytes), 336 (64 bytes): the break ends at 400.
    assert result.peak_heap == 400
    assert result.util == pytest.approx(300 / 400)
    # At the peak the break was 336 and the usable sizes 112 + 208 = 320 held 300 bytes.
    assert result.internal_frag == pytest.approx(20 / 336)
    assert result.external_frag == 0.0


def test_external_fragmentation_reads_the_free_bytes_at_the_peak() -> None:
    class WithFreeBytes(BumpAllocator):
        def stats(self) -> dict[str, int]:
            freed = sorted(
                (self.rounded(n) for n in self.freed),
                reverse=True,
            )
            return {
                **super().stats(),
                "free_bytes": sum(freed),
                "largest_free": freed[0] if freed else 0,
            }

        def __init__(self) -> None:
            super().__init__()
            self.freed: list[int] = []

        def free(self, p: int) -> None:
            if p:
                self.freed.append(self.sizes[p])
            super().free(p)

    trace = rep(
        """
        a 0 48
        a 1 16
        a 2 16
        a 3 64
        f 1
        f 2
        a 4 100
        f 0
        f 3
        f 4
        """
    )
    result, _ = run_fake(trace, WithFreeBytes)
    assert result.valid, result.error
    # The payload peaks at 160 after op 7 (48 + 64 + 100 - the two 16s); then the
    # free bytes are two 16-byte pieces: the largest serves half of them.
    assert result.peak_payload == 48 + 64 + 100
    assert result.external_frag == pytest.approx(0.5)


def test_replay_semantics_of_ids_that_are_not_live() -> None:
    trace = rep(
        """
        f 3
        r 1 40
        r 2 0
        r 1 0
        a 0 8
        """
    )
    result, made = run_fake(trace, BumpAllocator)
    assert result.valid, result.error
    calls = made[0].calls
    # f of a dead id is free(NULL); r of a dead id is malloc; r ID 0 on a dead id
    # makes no call; r ID 0 on a live id is realloc(p, 0).
    assert [name for name, _, _ in calls] == ["free", "malloc", "realloc", "malloc"]
    assert calls[0][1] == 0
    assert calls[2][2] == 0 and calls[2][1] != 0
    assert result.peak_payload == 40


def test_a_leaked_block_stays_live_and_counted() -> None:
    trace = rep(
        """
        a 0 100
        a 0 200
        f 0
        """
    )
    result, _ = run_fake(trace, BumpAllocator)
    assert result.valid, result.error
    assert result.peak_payload == 300


class Misaligned(BumpAllocator):
    def malloc(self, n: int) -> int:
        return super().malloc(n + 8) + 8


class Overlapping(BumpAllocator):
    """Advances the break by 16 bytes whatever the size."""

    @staticmethod
    def rounded(n: int) -> int:
        return ALIGNMENT


class Corrupting(BumpAllocator):
    """Free writes a word into the block that follows the freed one."""

    def free(self, p: int) -> None:
        if p:
            end = p + self.rounded(self.sizes[p])
            self.buf[end : end + 8] = b"\xa5" * 8
        super().free(p)


class ForgetfulRealloc(BumpAllocator):
    """Realloc moves the block without copying its bytes."""

    def realloc(self, p: int, n: int) -> int:
        if p and n:
            del self.sizes[p]
            return self._take(n)
        return super().realloc(p, n)


class Outside(BumpAllocator):
    """Hands out memory above the footprint it reports."""

    def stats(self) -> dict[str, int]:
        return {"heap_bytes": ALIGNMENT, "peak_heap_bytes": ALIGNMENT}


class ZeroRealloc(BumpAllocator):
    def realloc(self, p: int, n: int) -> int:
        return super().realloc(p, n) or self._take(0)


class Raising(BumpAllocator):
    def free(self, p: int) -> None:
        raise RuntimeError("free is broken")


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (Misaligned, "not 16-byte aligned"),
        (Overlapping, "overlaps live block"),
        (Corrupting, "lost its bytes"),
        (ForgetfulRealloc, "bytes it had to keep"),
        (Outside, "beyond the heap"),
        (ZeroRealloc, "realloc(672, 0) returned"),
        (Raising, "RuntimeError: free is broken"),
    ],
)
def test_a_faulty_allocator_is_caught(cls: type[BumpAllocator], message: str) -> None:
    result, made = run_fake(MIXED, cls)
    assert not result.valid
    assert result.error is not None and message in result.error
    assert result.error.startswith("op ") or result.error.startswith("after the last op")
    assert result.seconds == 0.0 and result.ops_per_sec == 0.0
    assert len(made) == 1  # not timed


def test_the_faulty_op_is_named() -> None:
    result, _ = run_fake(MIXED, Corrupting)
    # The realloc of op 3 moves block 0 right after block 1; freeing block 1
    # (op 5) overwrites the start of block 0, which is found when block 0 is
    # next touched: when it is freed, by op 7.
    assert result.error is not None
    assert result.error.startswith("op 7 (f 0): block #0 at 336 lost its bytes")


def test_a_block_beyond_the_memory_is_caught() -> None:
    class Beyond(BumpAllocator):
        def malloc(self, n: int) -> int:
            return len(self.buf) - ALIGNMENT

    result, _ = run_fake(rep("a 0 100"), Beyond)
    assert not result.valid and result.error is not None and "beyond the" in result.error


def test_check_every_runs_the_allocators_check() -> None:
    checks: list[int] = []

    class Counting(BumpAllocator):
        def check(self) -> None:
            checks.append(len(self.calls))

    def factory(capacity: int) -> Any:
        return Counting()

    result = replay(MIXED, factory=factory, check_every=3, timed_repeats=0)
    assert result.valid, result.error
    assert checks == [3, 6, 8]  # after ops 3 and 6, and at the end
    assert result.seconds == 0.0


# -- pyalloc heaps ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_generated_traces_replay_validly_on_the_default_heap(kind: str) -> None:
    trace = generate(kind, 1500, seed=3)
    result = replay(trace, timed_repeats=1, check_every=500)
    assert result.valid, result.error
    assert (result.allocator, result.policy) == ("pyalloc", "segregated")
    assert result.peak_payload == trace.heap_hint  # the generators record it there
    assert 0 < result.util <= 1
    assert result.util == pytest.approx(result.peak_payload / result.peak_heap)
    assert 0 <= result.internal_frag < 1 and 0 <= result.external_frag < 1


@pytest.mark.parametrize("policy", policy_names())
def test_every_policy_replays_validly(policy: str) -> None:
    result = replay(generate("realistic", 1000, seed=5), policy=policy, timed_repeats=0)
    assert result.valid, result.error
    assert result.policy == policy


def test_a_capacity_too_small_is_an_invalid_result_not_an_exception() -> None:
    trace = rep("a 0 1000000")
    result = replay(trace, capacity=1 << 16)
    assert not result.valid
    assert result.error is not None and "MemoryError" in result.error
    assert result.error.startswith("op 1 (a 0 1000000)")


def test_an_unknown_policy_raises() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_pyalloc("no-such-policy")


def test_default_capacity_fits_the_trace() -> None:
    small = rep("a 0 10")
    assert default_capacity(small) == 64 << 20
    big = rep("a 0 100000000\nr 0 200000000")
    assert default_capacity(big) >= 2 * 300_000_000
    assert default_capacity(big) % (1 << 20) == 0


def test_progress_adds_up_to_every_op_of_every_pass() -> None:
    trace = generate("uniform", 20_000, seed=2)
    reported: list[int] = []
    result = replay(trace, timed_repeats=2, progress=reported.append)
    assert result.valid, result.error
    assert sum(reported) == 3 * len(trace)
    assert len(reported) > 3  # the validating pass reports as it goes


def test_timed_passes_stop_once_they_used_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pyalloc.trace.replay.TIMING_BUDGET", 0.0)
    reported: list[int] = []
    result, made = run_fake_with_progress(MIXED, reported)
    assert result.valid and result.seconds > 0
    assert len(made) == 2  # the validating pass and one timed pass of the three asked for
    assert sum(reported) == 4 * len(MIXED)


def run_fake_with_progress(
    trace: Trace, reported: list[int]
) -> tuple[ReplayResult, list[BumpAllocator]]:
    made: list[BumpAllocator] = []

    def factory(capacity: int) -> Any:
        made.append(BumpAllocator())
        return made[-1]

    result = replay(trace, factory=factory, timed_repeats=3, progress=reported.append)
    return result, made
