"""A trace replayed one op at a time, watched: timelines, the moment of the peak, frames.

The pictures need what the validating replay (``pyalloc.trace.replay``) does
not keep: the footprint over time and the heap's layout at a chosen op.  The
ops become calls exactly as there (the same plan, so the same semantics);
nothing is validated here, since ``pyalloc replay`` does that.

Reading the footprint costs a walk of the heap (``stats()``), so the
timeline reads it at SAMPLES evenly spaced ops, not after each op.  Between
two readings the heap may have grown and shrunk again; ``peak_heap_bytes``
still shows it, since the heap keeps its running maximum.  The op where the
footprint first reaches its peak is found in two passes: the first finds the
two readings it lies between, the second replays up to the earlier one and
reads the footprint after every op until it reaches the peak.  The second
pass also reads the footprint where the live payload peaks (the payload is
known after every op; it costs nothing to follow).  Both moments become
readings of their own, so that each line passes through its peak and the
two lines are read at the same ops: between readings neither is drawn.  A replay is
deterministic (the placement depends on the ops alone, not on the heap's
secrets), so the second pass meets the same peak; if it does not, that is
reported as an error rather than drawn.

    sample ops      0 = s_0 < s_1 < ... < s_S = ops     (op counts replayed)
    peak op         the least t with footprint(t) == max over all t
                    s_(k-1) < peak op <= s_k  where s_k is the first reading
                    whose running peak equals the final one
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ..trace.rep import Trace
from ..trace.replay import FREE, MALLOC, REALLOC, _plan, default_capacity, make_pyalloc
from .snapshot import Snapshot, snapshot_of

SAMPLES: Final = 500  # footprint readings along a timeline

FOOTPRINT_HEAP: Final = "heap footprint: bytes taken from the region, metadata included"
FOOTPRINT_RESIDENT: Final = "peak footprint measured as resident pages (layout not visible)"


class VizError(Exception):
    """A picture that cannot be drawn: the message is one line for the user."""


@dataclass
class Timeline:
    """Live payload and footprint of one allocator over a trace's ops."""

    trace: str
    allocator: str  # a policy's name, or a system allocator's
    ops: int
    sample_ops: list[int] = field(default_factory=list)  # ops replayed at each reading
    payload: list[int] = field(default_factory=list)  # live payload at each reading
    footprint: list[int] | None = None  # None when only the peak could be measured
    peak_payload: int = 0
    peak_payload_op: int = 0
    peak_footprint: int = 0
    peak_footprint_op: int | None = None  # None when the footprint was measured elsewhere
    measure: str = FOOTPRINT_HEAP
    measured_as: str = "resident pages"  # how a footprint measured elsewhere was measured

    @property
    def util(self) -> float:
        """Peak live payload / peak footprint, as the malloc lab defines utilization."""
        return self.peak_payload / self.peak_footprint if self.peak_footprint else 0.0

    @property
    def layout_visible(self) -> bool:
        return self.footprint is not None


class _Bump:
    """An allocator that only counts: every call gets fresh addresses, nothing is reused.

    It runs a trace when only the live payload is wanted (system allocators,
    whose layout is not visible).
    """

    def __init__(self) -> None:
        self.top = 16

    def malloc(self, size: int) -> int:
        p = self.top
        self.top += max(size, 1) + 15 & ~15
        return p

    def free(self, p: int) -> None:
        pass

    def realloc(self, p: int, size: int) -> int:
        return self.malloc(size) if size else 0


def _op_text(trace: Trace, index: int) -> str:
    kind, block_id, size = trace.ops[index]
    return f"f {block_id}" if kind == "f" else f"{kind} {block_id} {size}"


class Replayer:
    """One heap of ``policy`` stepping through ``trace``; ``done`` ops replayed so far.

    ``requests`` maps each live block's pointer to the bytes asked for it, so
    that a snapshot tells payload from padding; ``payload`` is their sum.
    """

    def __init__(
        self,
        trace: Trace,
        policy: str | None,
        *,
        capacity: int | None = None,
        cache: bool = False,
    ) -> None:
        self.trace = trace
        self.calls = _plan(trace).calls
        self.heap: Any
        if policy is None:
            self.heap = _Bump()
        else:
            try:
                factory = make_pyalloc(policy, cache=cache)
                self.heap = factory(capacity or default_capacity(trace))
            except (ValueError, MemoryError, OSError) as e:
                raise VizError(f"cannot create a {policy} heap: {e}") from e
        self.pointers = [0] * trace.num_ids
        self.requests: dict[int, int] = {}
        self.payload = 0
        self.done = 0

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        close = getattr(self.heap, "close", None)
        if close is not None:
            close()

    def step(self) -> None:
        """Replay the next op."""
        index = self.done
        call, block_id, n = self.calls[index]
        heap = self.heap
        try:
            if call == MALLOC:
                p = heap.malloc(n)
                self.requests[p] = n
                self.pointers[block_id] = p
                self.payload += n
            elif call == FREE:
                p = self.pointers[block_id]
                if p:
                    self.payload -= self.requests.pop(p)
                    self.pointers[block_id] = 0
                heap.free(p)
            elif call == REALLOC:
                p = self.pointers[block_id]
                old = self.requests.pop(p)
                q = heap.realloc(p, n)
                self.payload += n - old
                if n:
                    self.requests[q] = n
                self.pointers[block_id] = q
        except Exception as e:
            raise VizError(
                f"{self.trace.name}: op {index + 1} ({_op_text(self.trace, index)}): "
                f"{type(e).__name__}: {e}"
            ) from e
        self.done = index + 1

    def advance_to(self, op: int, each: Callable[[], None] | None = None) -> None:
        """Replay up to ``op`` ops in all (not back: a heap does not rewind)."""
        if not 0 <= op <= len(self.calls):
            raise VizError(f"op {op} is not in the trace, which has {len(self.calls)} ops")
        if op < self.done:
            raise VizError(f"op {op} has already been replayed ({self.done} ops done)")
        while self.done < op:
            self.step()
            if each is not None:
                each()

    def footprint(self) -> tuple[int, int]:
        """(heap_bytes, peak_heap_bytes) now."""
        stats = self.heap.stats()
        return int(stats["heap_bytes"]), int(stats["peak_heap_bytes"])

    def snapshot(self) -> Snapshot:
        if not hasattr(self.heap, "blocks"):
            raise VizError("this allocator's layout cannot be read")
        snapshot: Snapshot = snapshot_of(self.heap, self.requests)
        return snapshot


def sample_ops(ops: int, samples: int = SAMPLES) -> list[int]:
    """Op counts ``0 = s_0 < ... < s_S = ops`` evenly spread, at most ``samples + 1``."""
    samples = max(1, min(samples, ops))
    return sorted({round(k * ops / samples) for k in range(samples + 1)})


def record_timeline(
    trace: Trace,
    policy: str,
    *,
    samples: int = SAMPLES,
    capacity: int | None = None,
    cache: bool = False,
) -> Timeline:
    """The timeline of ``trace`` on a pyalloc heap of ``policy``, peak op included.

    The readings are ``sample_ops(len(trace), samples)`` plus the op where the
    footprint first peaks and the op where the live payload first peaks, so
    that both lines pass through their peaks.
    """
    timeline = Timeline(trace.name, policy, len(trace.ops), footprint=[])
    assert timeline.footprint is not None
    peaks: list[int] = []
    with Replayer(trace, policy, capacity=capacity, cache=cache) as replayer:
        _watch_payload(replayer, timeline)
        for op in sample_ops(len(trace.ops), samples):
            replayer.advance_to(op, each=lambda: _watch_payload(replayer, timeline))
            heap_bytes, peak = replayer.footprint()
            timeline.sample_ops.append(op)
            timeline.payload.append(replayer.payload)
            timeline.footprint.append(heap_bytes)
            peaks.append(peak)
    timeline.peak_footprint = peaks[-1]
    k = next(i for i, peak in enumerate(peaks) if peak == peaks[-1])
    search = None if k == 0 else (timeline.sample_ops[k - 1], timeline.sample_ops[k])
    if search is None:
        timeline.peak_footprint_op = 0
    wanted = timeline.peak_payload_op
    if wanted in timeline.sample_ops:
        wanted = -1
    if search is not None or wanted >= 0:
        _second_pass(trace, policy, timeline, search, wanted, capacity=capacity, cache=cache)
    return timeline


def _watch_payload(replayer: Replayer, timeline: Timeline) -> None:
    if replayer.payload > timeline.peak_payload:
        timeline.peak_payload = replayer.payload
        timeline.peak_payload_op = replayer.done


def _second_pass(
    trace: Trace,
    policy: str,
    timeline: Timeline,
    search: tuple[int, int] | None,
    wanted: int,
    *,
    capacity: int | None,
    cache: bool,
) -> None:
    """Replay again to add two readings: after op ``wanted`` (unless -1), and after
    the first op in ``search = (after, upto]`` at which the footprint is its peak."""
    assert timeline.footprint is not None
    peak = timeline.peak_footprint
    found: dict[int, tuple[int, int]] = {}  # op -> (payload, footprint)
    start = min(wanted if wanted >= 0 else len(trace.ops), search[0] if search else wanted)
    last = max(wanted, search[1] if search else -1)
    with Replayer(trace, policy, capacity=capacity, cache=cache) as replayer:
        replayer.advance_to(start)
        while True:
            op = replayer.done
            searching = search is not None and timeline.peak_footprint_op is None
            in_search = searching and search is not None and search[0] < op <= search[1]
            if op == wanted or in_search:
                heap_bytes = replayer.footprint()[0]
                if op == wanted:
                    found[op] = (replayer.payload, heap_bytes)
                if in_search and heap_bytes == peak:
                    timeline.peak_footprint_op = op
                    found[op] = (replayer.payload, heap_bytes)
            if op >= last:
                break
            replayer.step()
    if search is not None and timeline.peak_footprint_op is None:
        raise VizError(
            f"{trace.name}: the second replay on {policy} did not reach the peak footprint "
            f"of {peak} bytes by op {search[1]}"
        )
    for op, (payload, heap_bytes) in sorted(found.items()):
        if op in timeline.sample_ops:
            continue
        at = bisect_left(timeline.sample_ops, op)
        timeline.sample_ops.insert(at, op)
        timeline.payload.insert(at, payload)
        timeline.footprint.insert(at, heap_bytes)


def replayer_at(
    trace: Trace,
    policy: str,
    op: int,
    *,
    capacity: int | None = None,
    cache: bool = False,
) -> Replayer:
    """A replayer of ``trace`` on ``policy`` with ``op`` ops replayed; close it when done."""
    replayer = Replayer(trace, policy, capacity=capacity, cache=cache)
    try:
        replayer.advance_to(op)
    except BaseException:
        replayer.close()
        raise
    return replayer


def payload_timeline(trace: Trace, allocator: str, samples: int = SAMPLES) -> Timeline:
    """The live payload alone (for an allocator whose footprint is measured elsewhere)."""
    timeline = Timeline(trace.name, allocator, len(trace.ops), measure=FOOTPRINT_RESIDENT)
    with Replayer(trace, None) as replayer:
        for op in sample_ops(len(trace.ops), samples):
            replayer.advance_to(op, each=lambda: _watch_payload(replayer, timeline))
            timeline.sample_ops.append(op)
            timeline.payload.append(replayer.payload)
    if timeline.peak_payload_op not in timeline.sample_ops:
        at = bisect_left(timeline.sample_ops, timeline.peak_payload_op)
        timeline.sample_ops.insert(at, timeline.peak_payload_op)
        timeline.payload.insert(at, timeline.peak_payload)
    return timeline


__all__ = [
    "FOOTPRINT_HEAP",
    "FOOTPRINT_RESIDENT",
    "SAMPLES",
    "Replayer",
    "Timeline",
    "VizError",
    "payload_timeline",
    "record_timeline",
    "replayer_at",
    "sample_ops",
]
