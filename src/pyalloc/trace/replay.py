"""The validating replay driver: run a trace on an allocator, check, measure.

A replay makes two passes over a trace, each on a fresh allocator:

1. The *validating pass* checks every pointer the allocator returns and
   measures memory.  It is slow on purpose and is never timed.
2. The *timed pass* runs the same calls with nothing else in the loop
   (garbage collector off) up to ``timed_repeats`` times and keeps the best
   time; repeats stop once the passes together took TIMING_BUDGET seconds
   (a long pass varies little, and a slow policy would otherwise take
   minutes).

Only when the validating pass succeeds is the trace timed.

Op semantics
------------

Those of :mod:`pyalloc.trace.rep`: the driver keeps ``ptr[ID]`` (0 when the
id is not live) and turns every op into one call::

    a ID n                 ptr[ID] = malloc(n)        a block still held by ID is
                                                      leaked: it stays live (and
                                                      counted) to the end
    f ID                   free(ptr[ID]); ptr[ID] = 0 free(0) when ID is not live
    r ID n   ID live       ptr[ID] = realloc(ptr[ID], n); n == 0 frees and must
                                                      return 0
    r ID n   ID not live   ptr[ID] = malloc(n)  when n > 0; no call when n == 0
                                                      (``r ID 0`` leaves ID not live)

Whether an id is live depends only on the trace, never on the allocator, so
the ops are turned into calls once, before either pass (``_plan``), and the
live payload over time, its peak and the op where it first peaks are known
before anything runs.

What the validating pass checks
-------------------------------

For every pointer ``p`` returned for ``n`` bytes (a block *occupies*
``[p, p + max(n, 1))``, so that two ``malloc(0)`` must differ)::

    p > 0 and p % ALIGNMENT == 0
    p + n <= len(buffer)                        the memory exists
    the block overlaps no live block            live blocks are kept as a sorted
                                                list of starts; only the two
                                                neighbours of p need a look
    p + n <= stats()['heap_bytes']              for every live block, whenever
                                                stats() is read (at the peak,
                                                every ``check_every`` ops, at the end)
    p + n <= stats()['peak_heap_bytes']         for every block ever returned,
                                                at the end: nothing lies outside
                                                the footprint that was reported

Payload integrity: each new block is stamped with an 8-byte pattern derived
from its id and a serial number (blocks of up to STAMP_WHOLE bytes entirely;
larger ones in five STAMP_SPAN-byte spans: the start, the quarter points and
the end).  The stamps are verified before every free and realloc, after a
realloc within the bytes it must keep (the old block's stamps below
``min(old n, new n)``, at the new address), for every live block at the end
and at every ``check_every`` op.  The allocator's own ``check()`` runs at the
end (and every ``check_every`` ops when that is > 0).

The first fault ends the replay with ``valid=False`` and a message naming the
op; so does any exception the allocator raises (HeapError, MemoryError when
the capacity is too small, or a bug).  A bad trace never raises.

What is measured
----------------

::

    peak_payload   max over the trace of the live payload: the sum of the sizes
                   asked for by the live blocks (leaked blocks included)
    peak_heap      stats()['peak_heap_bytes'] at the end: the most bytes the
                   heap ever took from its region, metadata included
    util           peak_payload / peak_heap, as the malloc lab defines it

and, at the op where the live payload first reaches its peak, with
``footprint`` = stats()['heap_bytes'] at that moment::

    internal_frag  (sum of usable_size(p) over live blocks - live payload) / footprint
                   the bytes handed out beyond the requests (block headers are
                   not counted here: they are in neither term)
    external_frag  1 - largest_free / free_bytes   (0 when there are no free bytes)
                   the share of the free bytes inside the footprint that a
                   request of the largest free block's size could not use: 0
                   when all free memory is one block, near 1 when it is split
                   into many small pieces

Throughput: ``seconds`` is the best of the timed passes and
``ops_per_sec`` = ops / seconds.  pyalloc heaps are built with
``cache=False`` unless asked otherwise, so every policy sees every free as
it happens (the cache of freed blocks would hide the policy from most small
requests); the lock stays on, as in a default heap.
"""

from __future__ import annotations

import gc
import importlib
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .rep import Trace

__all__ = [
    "ALIGNMENT",
    "Allocator",
    "ReplayResult",
    "default_capacity",
    "make_pyalloc",
    "policy_names",
    "replay",
]

ALIGNMENT: Final = 16
STAMP_WHOLE: Final = 64  # blocks up to this many bytes are stamped entirely ...
STAMP_SPAN: Final = 16  # ... larger ones in five spans of this many bytes
MIN_CAPACITY: Final = 64 << 20
MAX_CAPACITY: Final = 8 << 30
BLOCK_ALLOWANCE: Final = 32  # bytes of overhead per block assumed by default_capacity
M64: Final = (1 << 64) - 1
PROGRESS_MASK: Final = (1 << 13) - 1  # the validating pass reports every 8192 ops
TIMING_BUDGET: Final = 2.0  # seconds of timed passes after which no more are run

assert STAMP_WHOLE >= 4 * STAMP_SPAN and STAMP_SPAN % 8 == 0
# A stamp span starts at most 7 bytes into the 8-byte pattern: 9 copies cover it.
assert 7 + STAMP_WHOLE <= 9 * 8

# The calls the ops turn into (see "Op semantics").
MALLOC: Final = 0
FREE: Final = 1
REALLOC: Final = 2
NOTHING: Final = 3


class Allocator(Protocol):
    """What the driver needs of an allocator (``pyalloc.Heap`` has all of it).

    ``buf`` is a writable buffer over the allocator's memory, indexed by
    pointer.  ``stats()`` must have ``heap_bytes`` and ``peak_heap_bytes``;
    ``free_bytes`` and ``largest_free`` are read when present.  When the
    allocator has ``usable_size(p)`` it is used for internal fragmentation,
    and ``close()`` is called when a pass is done.
    """

    @property
    def buf(self) -> Any: ...

    def malloc(self, size: int, /) -> int: ...

    def free(self, pointer: int, /) -> None: ...

    def realloc(self, pointer: int, size: int, /) -> int: ...

    def check(self) -> None: ...

    def stats(self) -> Mapping[str, int]: ...


AllocatorFactory = Callable[[int], Allocator]  # capacity -> a fresh, empty allocator
Progress = Callable[[int], None]  # told how many more ops have been replayed


@dataclass
class ReplayResult:
    """The outcome of :func:`replay`; see the module docstring for each measure."""

    trace: str
    allocator: str  # "pyalloc", or the name a factory was given
    policy: str | None
    valid: bool
    ops: int  # ops in the trace
    util: float
    peak_payload: int
    peak_heap: int
    seconds: float  # best timed pass; 0.0 when not timed
    ops_per_sec: float  # ops / seconds; 0.0 when not timed
    error: str | None
    internal_frag: float
    external_frag: float


# -- allocators ---------------------------------------------------------------------


def _lab_allocators() -> tuple[Callable[..., Any] | None, tuple[str, ...]]:
    """``pyalloc.allocators.make_heap`` and ``ALL_POLICIES``, when that module is present."""
    try:
        allocators = importlib.import_module("pyalloc.allocators")
    except ImportError:
        return None, ()
    return allocators.make_heap, tuple(allocators.ALL_POLICIES)


def policy_names() -> tuple[str, ...]:
    """Every policy :func:`replay` can run: the engine's, then the buddy system."""
    from ..heap import POLICIES

    _, lab_names = _lab_allocators()
    return tuple(POLICIES) + tuple(name for name in lab_names if name not in POLICIES)


def make_pyalloc(policy: str = "segregated", *, cache: bool = False) -> AllocatorFactory:
    """A factory of fresh pyalloc heaps of ``policy``; ValueError for an unknown name.

    Engine policies are served by ``pyalloc.Heap`` with slabs off (they
    differ in how they place blocks); the others (``default``, the heap as a
    program gets it, slabs on; the buddy system, which has no cache of freed
    blocks and so ignores ``cache``) by ``pyalloc.allocators.make_heap``.
    """
    from ..heap import POLICIES, Heap

    if ":" in policy:  # a class of the caller's: loaded (and refused) here, used as the others
        from ..policies import load_policy

        load_policy(policy)
    if policy in POLICIES or ":" in policy:

        def make_engine_heap(capacity: int) -> Allocator:
            return Heap(capacity, policy=policy, cache=cache, small=False)

        return make_engine_heap
    make_heap, lab_names = _lab_allocators()
    if make_heap is None or policy not in lab_names:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(policy_names())}")
    build = make_heap

    def make_lab_heap(capacity: int) -> Allocator:
        options = {} if policy == "buddy" else {"cache": cache}
        heap: Allocator = build(policy, capacity, **options)
        return heap

    return make_lab_heap


def default_capacity(trace: Trace) -> int:
    """A capacity no reasonable allocator runs out of on ``trace``.

    Twice the sum over every allocating op of its size plus BLOCK_ALLOWANCE
    (an allocator that never reused a byte, with a buddy system's rounding,
    would fit), at least MIN_CAPACITY and the trace's heap hint, at most
    MAX_CAPACITY, rounded up to a MiB.  pyalloc reserves the region without
    committing it, so only the bytes touched cost memory.
    """
    total = sum(op.size + BLOCK_ALLOWANCE for op in trace.ops if op.kind != "f")
    capacity = max(MIN_CAPACITY, trace.heap_hint, 2 * total)
    capacity = min(capacity, MAX_CAPACITY)
    mib = (1 << 20) - 1
    return (capacity + mib) & ~mib


# -- the plan -------------------------------------------------------------------------


@dataclass
class _Plan:
    calls: list[tuple[int, int, int]]  # (MALLOC | FREE | REALLOC | NOTHING, id, size)
    peak_payload: int
    peak_index: int  # the op after which the live payload first peaks; -1 if it never does


def _plan(trace: Trace) -> _Plan:
    num_ids = trace.num_ids
    live = [False] * num_ids
    sizes = [0] * num_ids
    calls: list[tuple[int, int, int]] = []
    payload = peak = 0
    peak_index = -1
    for index, (kind, block_id, size) in enumerate(trace.ops):
        if kind == "a":
            calls.append((MALLOC, block_id, size))
            live[block_id] = True  # a block still held is leaked and stays counted
            sizes[block_id] = size
            payload += size
        elif kind == "f":
            calls.append((FREE, block_id, 0))
            if live[block_id]:
                live[block_id] = False
                payload -= sizes[block_id]
        elif live[block_id]:
            calls.append((REALLOC, block_id, size))
            payload += size - sizes[block_id]
            sizes[block_id] = size
            live[block_id] = size > 0
        elif size:
            calls.append((MALLOC, block_id, size))
            live[block_id] = True
            sizes[block_id] = size
            payload += size
        else:
            calls.append((NOTHING, block_id, 0))
        if payload > peak:
            peak = payload
            peak_index = index
    return _Plan(calls, peak, peak_index)


# -- the validating pass ----------------------------------------------------------------


class ReplayFault(Exception):
    """A result the driver refuses: misplaced, overlapping or corrupted blocks."""


def _pattern(block_id: int, serial: int) -> bytes:
    """Nine copies of the 8-byte stamp of block ``block_id``'s ``serial``-th version."""
    word = ((block_id + 1) * 0x9E3779B97F4A7C15 ^ (serial + 1) * 0xD6E8FEB86659FD93) & M64
    return word.to_bytes(8, "little") * 9


def _spans(n: int) -> tuple[tuple[int, int], ...]:
    """The (offset, length) spans of an ``n``-byte block that carry its stamp."""
    if n <= STAMP_WHOLE:
        return ((0, n),)
    quarter = (n >> 2) & ~7
    return (
        (0, STAMP_SPAN),
        (quarter, STAMP_SPAN),
        ((n >> 1) & ~7, STAMP_SPAN),
        (quarter * 3, STAMP_SPAN),
        (n - STAMP_SPAN, STAMP_SPAN),
    )


class _Validator:
    """The validating pass over one allocator.

    Live blocks: ``blocks`` maps a pointer to (n, pattern, label) and
    ``starts`` holds the same pointers sorted, so that ``starts[i - 1]`` and
    ``starts[i]`` are a new block's only possible overlaps.
    """

    def __init__(
        self,
        target: Allocator,
        trace: Trace,
        plan: _Plan,
        check_every: int,
        progress: Progress | None,
    ) -> None:
        self.target = target
        self.trace = trace
        self.plan = plan
        self.check_every = check_every
        self.progress = progress
        self.memory = memoryview(target.buf).cast("B")
        self.blocks: dict[int, tuple[int, bytes, str]] = {}
        self.starts: list[int] = []
        self.highest_end = 0
        self.serial = 0
        self.internal_frag = 0.0
        self.external_frag = 0.0

    def close(self) -> None:
        self.memory.release()

    # -- the blocks --------------------------------------------------------------

    def admit(self, p: object, n: int, label: str) -> int:
        """Check the block the allocator returned at ``p`` for ``n`` bytes; record it."""
        if p.__class__ is not int:
            raise ReplayFault(f"returned {p!r}, not an int pointer")
        assert isinstance(p, int)
        if p <= 0:
            raise ReplayFault(f"returned {p} for {n} bytes")
        if p % ALIGNMENT:
            raise ReplayFault(f"returned {p}, which is not {ALIGNMENT}-byte aligned")
        end = p + (n or 1)
        if end > len(self.memory):
            raise ReplayFault(
                f"returned [{p}, {p + n}), beyond the {len(self.memory)} bytes of its memory"
            )
        starts = self.starts
        i = bisect_right(starts, p)
        if i:
            before = starts[i - 1]
            before_n, _, before_label = self.blocks[before]
            if before + (before_n or 1) > p:
                raise ReplayFault(
                    f"returned [{p}, {p + n}), which overlaps live block {before_label} "
                    f"at [{before}, {before + before_n})"
                )
        if i < len(starts) and starts[i] < end:
            after = starts[i]
            after_n, _, after_label = self.blocks[after]
            raise ReplayFault(
                f"returned [{p}, {p + n}), which overlaps live block {after_label} "
                f"at [{after}, {after + after_n})"
            )
        starts.insert(i, p)
        if end > self.highest_end:
            self.highest_end = end
        return p

    def stamp(self, p: int, n: int, block_id: int, label: str) -> None:
        pattern = _pattern(block_id, self.serial)
        self.serial += 1
        memory = self.memory
        for offset, length in _spans(n):
            start = offset & 7
            memory[p + offset : p + offset + length] = pattern[start : start + length]
        self.blocks[p] = (n, pattern, label)

    def verify(self, p: int, keep: int | None = None, at: int | None = None) -> None:
        """Check block ``p``'s stamps (those below ``keep`` bytes, read at ``at``)."""
        n, pattern, label = self.blocks[p]
        limit = n if keep is None else min(n, keep)
        base = p if at is None else at
        memory = self.memory
        for offset, length in _spans(n):
            if offset >= limit:
                continue
            length = min(length, limit - offset)
            start = offset & 7
            if memory[base + offset : base + offset + length] != pattern[start : start + length]:
                where = "its bytes" if at is None else f"the first {limit} bytes it had to keep"
                raise ReplayFault(
                    f"block {label} at {base} lost {where}: bytes {offset}..{offset + length} "
                    "were overwritten"
                )

    def forget(self, p: int) -> tuple[int, bytes, str]:
        del self.starts[bisect_left(self.starts, p)]
        return self.blocks.pop(p)

    # -- whole-heap checks ---------------------------------------------------------------

    def stats(self) -> Mapping[str, int]:
        """The allocator's statistics, after checking the live blocks lie below heap_bytes."""
        stats = self.target.stats()
        heap_bytes = int(stats["heap_bytes"])
        if self.starts:
            last = self.starts[-1]  # no overlaps, so the last start has the highest end
            n, _, label = self.blocks[last]
            if last + n > heap_bytes:
                raise ReplayFault(
                    f"live block {label} at [{last}, {last + n}) lies beyond the heap's "
                    f"reported {heap_bytes} bytes"
                )
        return stats

    def audit(self) -> None:
        """Verify every live block's stamps and run the allocator's check."""
        for p in self.blocks:
            self.verify(p)
        self.target.check()
        self.stats()

    def measure_peak(self, payload: int) -> None:
        stats = self.stats()
        footprint = int(stats["heap_bytes"])
        usable_size = getattr(self.target, "usable_size", None)
        if usable_size is not None:
            usable = sum(int(usable_size(p)) for p in self.blocks)
        else:
            usable = sum(n for n, _, _ in self.blocks.values())
        if footprint:
            self.internal_frag = max(0, usable - payload) / footprint
        free_bytes = int(stats.get("free_bytes", 0))
        largest_free = int(stats.get("largest_free", 0))
        if free_bytes:
            self.external_frag = 1.0 - largest_free / free_bytes

    # -- the pass --------------------------------------------------------------------

    def run(self) -> int:
        """Replay the plan; return peak_heap_bytes.  ReplayFault names the faulty op."""
        target = self.target
        malloc = target.malloc
        free = target.free
        realloc = target.realloc
        plan = self.plan
        ops = self.trace.ops
        pointers = [0] * self.trace.num_ids
        check_every = self.check_every
        progress = self.progress
        index = -1
        try:
            for index, (call, block_id, n) in enumerate(plan.calls):
                if call == MALLOC:
                    label = f"#{block_id}"
                    p = self.admit(malloc(n), n, label)
                    self.stamp(p, n, block_id, label)
                    pointers[block_id] = p
                elif call == FREE:
                    p = pointers[block_id]
                    if p:
                        self.verify(p)
                        self.forget(p)
                        pointers[block_id] = 0
                    free(p)
                elif call == REALLOC:
                    p = pointers[block_id]
                    self.verify(p)
                    old_n, old_pattern, label = self.forget(p)
                    q = realloc(p, n)
                    if not n:
                        if q:
                            raise ReplayFault(f"realloc({p}, 0) returned {q}, not 0")
                        pointers[block_id] = 0
                    else:
                        q = self.admit(q, n, label)
                        self.blocks[q] = (old_n, old_pattern, label)
                        self.verify(q, keep=n, at=q)
                        self.stamp(q, n, block_id, label)
                        pointers[block_id] = q
                if index == plan.peak_index:
                    self.measure_peak(plan.peak_payload)
                if check_every and (index + 1) % check_every == 0:
                    self.audit()
                if progress is not None and not (index + 1) & PROGRESS_MASK:
                    progress(PROGRESS_MASK + 1)
            if progress is not None:
                progress((index + 1) & PROGRESS_MASK)
            index = len(plan.calls)
            self.audit()
            peak_heap = int(self.target.stats()["peak_heap_bytes"])
            if self.highest_end > peak_heap:
                raise ReplayFault(
                    f"a block ended at {self.highest_end}, beyond the reported peak "
                    f"footprint of {peak_heap} bytes"
                )
            return peak_heap
        except Exception as e:
            if index < len(ops):
                kind, block_id, n = ops[index]
                text = f"f {block_id}" if kind == "f" else f"{kind} {block_id} {n}"
                where = f"op {index + 1} ({text})"
            else:
                where = "after the last op"
            reason = str(e) if isinstance(e, ReplayFault) else f"{type(e).__name__}: {e}"
            raise ReplayFault(f"{where}: {reason}") from e


# -- the timed pass -------------------------------------------------------------------


def _timed_pass(target: Allocator, calls: list[tuple[int, int, int]], num_ids: int) -> float:
    """Seconds taken by the calls alone, garbage collector off."""
    malloc = target.malloc
    free = target.free
    realloc = target.realloc
    pointers = [0] * num_ids
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for call, block_id, n in calls:
            if call == MALLOC:
                pointers[block_id] = malloc(n)
            elif call == FREE:
                free(pointers[block_id])
                pointers[block_id] = 0
            elif call == REALLOC:
                pointers[block_id] = realloc(pointers[block_id], n)
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


def _close(target: Allocator) -> None:
    close = getattr(target, "close", None)
    if close is not None:
        close()


# -- the driver -------------------------------------------------------------------------


def replay(
    trace: Trace,
    *,
    policy: str = "segregated",
    capacity: int | None = None,
    cache: bool = False,
    factory: AllocatorFactory | None = None,
    allocator: str = "pyalloc",
    check_every: int = 0,
    timed_repeats: int = 3,
    progress: Progress | None = None,
) -> ReplayResult:
    """Validate and measure ``trace`` on a pyalloc heap of ``policy`` (or ``factory``).

    ``capacity`` defaults to :func:`default_capacity`.  ``factory(capacity)``
    replaces the pyalloc heap by any :class:`Allocator` (``allocator`` names
    it in the result).  ``check_every`` > 0 also runs the allocator's
    ``check()`` and verifies every live block every that many ops.
    ``timed_repeats`` = 0 skips the timed pass.  ``progress(n)`` is told
    whenever ``n`` more ops have been replayed: every 8192 ops of the
    validating pass and after each timed pass, so ``len(trace) * (1 +
    timed_repeats)`` in all when the trace is valid (never from inside a
    timed pass, so it cannot disturb the timing).

    Never raises for a bad trace or a failing allocator: the result has
    ``valid=False`` and ``error`` says what went wrong.  An unknown policy
    name raises ValueError.
    """
    if factory is None:
        factory = make_pyalloc(policy, cache=cache)
        policy_name: str | None = policy
    else:
        policy_name = None
    if capacity is None:
        capacity = default_capacity(trace)
    plan = _plan(trace)
    result = ReplayResult(
        trace=trace.name,
        allocator=allocator,
        policy=policy_name,
        valid=False,
        ops=len(trace.ops),
        util=0.0,
        peak_payload=plan.peak_payload,
        peak_heap=0,
        seconds=0.0,
        ops_per_sec=0.0,
        error=None,
        internal_frag=0.0,
        external_frag=0.0,
    )
    try:
        target = factory(capacity)
    except Exception as e:
        result.error = f"cannot create the allocator: {type(e).__name__}: {e}"
        return result
    validator = _Validator(target, trace, plan, check_every, progress)
    try:
        peak_heap = validator.run()
    except ReplayFault as e:
        result.error = str(e)
        return result
    finally:
        validator.close()
        try:
            _close(target)
        except Exception as e:  # a broken close must not hide the replay's own outcome
            result.error = result.error or f"close() failed: {type(e).__name__}: {e}"
    if result.error is not None:
        return result
    result.valid = True
    result.peak_heap = peak_heap
    result.util = plan.peak_payload / peak_heap if peak_heap else 0.0
    result.internal_frag = validator.internal_frag
    result.external_frag = validator.external_frag
    if timed_repeats > 0:
        best = float("inf")
        spent = 0.0
        try:
            for done in range(1, timed_repeats + 1):
                target = factory(capacity)
                try:
                    seconds = _timed_pass(target, plan.calls, trace.num_ids)
                finally:
                    _close(target)
                best = min(best, seconds)
                spent += seconds
                if progress is not None:
                    # Passes left out for the budget count as done.
                    skipped = 0 if spent < TIMING_BUDGET else timed_repeats - done
                    progress(len(plan.calls) * (1 + skipped))
                if spent >= TIMING_BUDGET:
                    break
        except Exception as e:
            result.valid = False
            result.error = f"timed pass: {type(e).__name__}: {e}"
            return result
        result.seconds = best
        result.ops_per_sec = len(trace.ops) / best if best > 0 else 0.0
    return result
