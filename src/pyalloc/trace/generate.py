"""Deterministic workload generators that return :class:`~pyalloc.trace.rep.Trace`.

Every generator has the signature ``fn(ops, seed, progress=None) -> Trace``
and is listed in ``GENERATORS`` under its name.  The same ``(ops, seed)`` gives the same trace
on every run and platform (only :class:`random.Random` seeded with an int is
used, never the global generator or hash order).

Glossary
--------

budget     ops still free to spend: ``ops - len(trace) - live``.  Each live
           block has one free op reserved for it, so an allocation costs 2
           (its ``a`` now and its ``f`` later), a realloc costs 1 and a free
           costs 0 (it spends the op reserved for it).
drain      the final phase that frees every block still live.

Invariants of every generated trace::

    ops - 1 <= len(trace.ops) <= ops          (a budget of 1 cannot buy an
                                                 allocation, so it may go unspent)
    trace.validate() passes; num_ids == number of 'a' ops (one fresh id per block)
    every id is allocated once, then possibly realloc'ed (size > 0), then freed once
    no block is live after the last op
    trace.heap_hint == peak live payload bytes over the trace

The workloads
-------------

uniform         sizes uniform in [1, 4096]; each step frees a random live block
                or allocates, with equal odds.
fragmenter      rounds of interleaved small and large blocks; the large ones are
                freed, leaving holes pinned apart by the small ones, then larger
                requests arrive that fit no hole.
coalesce        runs of adjacent blocks freed in orders that meet every
                neighbour case (none, previous, next, both free), then one
                request the size of the whole run, which fits in place only
                if the freed blocks were merged.
realloc_growth  a few buffers grow by repeated reallocs while small blocks are
                allocated between the growth steps (so the block after a
                buffer is often taken) and some of them freed.
realistic       sizes and lifetimes shaped after published measurements of
                real C programs (see :func:`realistic`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Final

from .rep import Op, Trace

Progress = Callable[[int], None]  # told how many more ops were made
PROGRESS_MASK: Final = (1 << 16) - 1  # progress is told once per 65,536 ops

__all__ = [
    "GENERATORS",
    "coalesce",
    "fragmenter",
    "generate",
    "realistic",
    "realloc_growth",
    "uniform",
]


class _TraceBuilder:
    """Appends ops while keeping the live set and the op budget."""

    def __init__(self, ops: int, name: str, progress: Progress | None = None) -> None:
        if type(ops) is not int or ops < 0:
            raise ValueError(f"ops must be an int >= 0, got {ops!r}")
        self.limit = ops
        self.name = name
        self.progress = progress
        self.ops: list[Op] = []
        self.sizes: dict[int, int] = {}  # live id -> its current size
        self._live_ids: list[int] = []  # the same ids, for O(1) random choice
        self._position: dict[int, int] = {}  # id -> index in _live_ids
        self.next_id = 0
        self.live_bytes = 0
        self.peak_live_bytes = 0

    @property
    def budget(self) -> int:
        return self.limit - len(self.ops) - len(self._live_ids)

    @property
    def live_count(self) -> int:
        return len(self._live_ids)

    def _record(self, op: Op) -> None:
        self.ops.append(op)
        if self.progress is not None and not len(self.ops) & PROGRESS_MASK:
            self.progress(PROGRESS_MASK + 1)

    def alloc(self, size: int) -> int:
        assert self.budget >= 2 and size >= 0
        block_id = self.next_id
        self.next_id += 1
        self._record(Op("a", block_id, size))
        self.sizes[block_id] = size
        self._position[block_id] = len(self._live_ids)
        self._live_ids.append(block_id)
        self._grow_live(size)
        return block_id

    def realloc(self, block_id: int, size: int) -> None:
        assert self.budget >= 1 and size > 0 and block_id in self.sizes
        self._record(Op("r", block_id, size))
        self._grow_live(size - self.sizes[block_id])
        self.sizes[block_id] = size

    def free(self, block_id: int) -> None:
        self._record(Op("f", block_id, 0))
        self.live_bytes -= self.sizes.pop(block_id)
        # Swap-remove from the list of live ids.
        index = self._position.pop(block_id)
        last = self._live_ids.pop()
        if last != block_id:
            self._live_ids[index] = last
            self._position[last] = index

    def random_live(self, rng: random.Random) -> int:
        return self._live_ids[rng.randrange(len(self._live_ids))]

    def live_ids(self) -> list[int]:
        """The live ids in allocation order."""
        return sorted(self._live_ids)

    def fill(self, rng: random.Random) -> None:
        """Spend what is left of the budget on small blocks freed at once."""
        while self.budget >= 2:
            self.free(self.alloc(rng.randint(1, 64)))

    def drain(self, rng: random.Random | None = None) -> None:
        """Free every live block: in allocation order, or shuffled by ``rng``."""
        remaining = self.live_ids()
        if rng is not None:
            rng.shuffle(remaining)
        for block_id in remaining:
            self.free(block_id)

    def finish(self) -> Trace:
        assert not self._live_ids and len(self.ops) <= self.limit
        return Trace(
            ops=self.ops,
            num_ids=self.next_id,
            weight=1,
            heap_hint=self.peak_live_bytes,
            name=self.name,
        )

    def _grow_live(self, delta: int) -> None:
        self.live_bytes += delta
        if self.live_bytes > self.peak_live_bytes:
            self.peak_live_bytes = self.live_bytes


def _name(kind: str, ops: int, seed: int) -> str:
    return f"{kind}-n{ops}-s{seed}"


def uniform(ops: int, seed: int = 0, progress: Progress | None = None) -> Trace:
    """Sizes uniform in [1, 4096]; frees of random live blocks at random times."""
    rng = random.Random(seed)
    builder = _TraceBuilder(ops, _name("uniform", ops, seed), progress)
    while builder.budget >= 2:
        if builder.live_count and rng.random() < 0.5:
            builder.free(builder.random_live(rng))
        else:
            builder.alloc(rng.randint(1, 4096))
    builder.drain(rng)
    return builder.finish()


def fragmenter(ops: int, seed: int = 0, progress: Progress | None = None) -> Trace:
    """Interleaved small and large blocks; free the large ones; ask for larger.

    Each round allocates ``pairs`` (small, large) blocks back to back, frees
    every large block (the holes are kept apart by the small ones, so no two
    can merge), then requests blocks 1.5-6x the size of a hole, and finally
    frees the round's remaining blocks.  An allocator that cannot reuse the
    holes has to grow; its utilization shows it.
    """
    rng = random.Random(seed)
    builder = _TraceBuilder(ops, _name("fragmenter", ops, seed), progress)
    while builder.budget >= 4:
        pairs = rng.randint(16, 128)
        large_base = rng.choice((128, 256, 512, 1024, 2048))
        large_ids: list[int] = []
        for _ in range(pairs):
            if builder.budget < 4:
                break
            builder.alloc(rng.randint(8, 64))
            large_ids.append(builder.alloc(rng.randint(large_base, 2 * large_base)))
        for block_id in large_ids:
            builder.free(block_id)
        for _ in range(len(large_ids)):
            if builder.budget < 2:
                break
            builder.alloc(int(large_base * rng.uniform(3.0, 6.0)))
        builder.drain()
    builder.fill(rng)
    return builder.finish()


def coalesce(ops: int, seed: int = 0, progress: Progress | None = None) -> Trace:
    """Runs of adjacent blocks freed so that every merge case occurs.

    Each round allocates a run of blocks, frees them in one of four orders
    (every other block then the rest: frees with no free neighbour, then with
    both; front to back: the previous neighbour is free; back to front: the
    next is free; random), then allocates one block the size of the whole
    run.  That block fits in the freed space only if it was coalesced.
    """
    rng = random.Random(seed)
    builder = _TraceBuilder(ops, _name("coalesce", ops, seed), progress)
    orders = ("alternate", "forward", "backward", "random")
    keeper: int | None = None
    while builder.budget >= 4:
        run_length = rng.randint(4, 64)
        run_ids: list[int] = []
        total = 0
        for _ in range(run_length):
            if builder.budget < 4:  # keep room for the run-sized request
                break
            size = rng.choice((16, 24, 32, 48, 64, 100, 128, 256, 500, 1024, 4000))
            run_ids.append(builder.alloc(size))
            total += size
        order = orders[rng.randrange(len(orders))]
        if order == "alternate":
            free_order = run_ids[0::2] + run_ids[1::2]
        elif order == "forward":
            free_order = run_ids
        elif order == "backward":
            free_order = run_ids[::-1]
        else:
            free_order = run_ids[:]
            rng.shuffle(free_order)
        for block_id in free_order:
            builder.free(block_id)
        if builder.budget >= 2:
            # The merged request replaces the previous one, so at most one
            # run-sized block stays live between rounds.
            merged = builder.alloc(total)
            if keeper is not None:
                builder.free(keeper)
            keeper = merged
    builder.fill(rng)
    builder.drain()
    return builder.finish()


def realloc_growth(ops: int, seed: int = 0, progress: Progress | None = None) -> Trace:
    """Buffers that grow by realloc, with small allocations in between.

    A few buffers (1-4 at a time) start small and grow by factors of
    1.1-2x, as dynamic arrays and string builders do.  Between growth steps
    small blocks are allocated (often taking the space just after a buffer,
    so growing in place is not free) and about half of them are freed soon.
    A buffer that passes its final size is freed and a new one started.
    """
    rng = random.Random(seed)
    builder = _TraceBuilder(ops, _name("realloc_growth", ops, seed), progress)
    buffers: dict[int, int] = {}  # live buffer id -> size at which it is retired
    smalls: list[int] = []
    while builder.budget >= 1:
        if len(buffers) < 1 or (len(buffers) < 4 and rng.random() < 0.02):
            if builder.budget < 2:
                break
            block_id = builder.alloc(rng.randint(16, 512))
            buffers[block_id] = rng.choice((1 << 14, 1 << 16, 1 << 18, 1 << 20))
            continue
        block_id = rng.choice(sorted(buffers))
        new_size = max(
            builder.sizes[block_id] + 1, int(builder.sizes[block_id] * rng.uniform(1.1, 2.0))
        )
        builder.realloc(block_id, new_size)
        if new_size >= buffers[block_id]:
            del buffers[block_id]
            builder.free(block_id)
        for _ in range(rng.randint(0, 3)):
            if builder.budget < 2:
                break
            smalls.append(builder.alloc(rng.randint(8, 128)))
        while smalls and rng.random() < 0.5:
            builder.free(smalls.pop(rng.randrange(len(smalls))))
    builder.drain(rng)
    return builder.finish()


# Size classes of the "realistic" workload: (weight, low, high), sizes drawn
# log-uniformly within a class.  About 90% of requests are 8-128 bytes.
_REALISTIC_SIZE_CLASSES = (
    (0.62, 8, 48),
    (0.28, 49, 128),
    (0.08, 129, 4096),
    (0.018, 4097, 65536),
    (0.002, 65537, 1 << 20),
)
# Lifetimes, counted in ops: (weight, mean); None means the block lives until
# the end of its phase.  Most blocks die young.
_REALISTIC_LIFETIMES = (
    (0.75, 8.0),
    (0.17, 200.0),
    (0.06, 5000.0),
    (0.02, None),
)
_COMMON_SMALL_SIZES = (16, 24, 32, 40, 48, 64, 96, 128)


def _weighted_choice(rng: random.Random, weights: tuple[float, ...]) -> int:
    point = rng.random() * sum(weights)
    for index, weight in enumerate(weights):
        point -= weight
        if point < 0:
            return index
    return len(weights) - 1


def realistic(ops: int, seed: int = 0, progress: Progress | None = None) -> Trace:
    """A workload shaped after what measurements of real programs report.

    The shape follows observations published about allocation-intensive C
    programs, restated here:

    * Zorn and Grunwald (1992, "Empirical measurements of six allocation-
      intensive C programs") found requests dominated by small objects, with
      a handful of distinct sizes accounting for most of them, and most
      objects freed soon after they are allocated while a small fraction live
      for most of the run.
    * Wilson, Johnstone, Neely and Boles (1995, "Dynamic Storage Allocation:
      A Survey and Critical Review") stress that real programs are not random:
      they run in phases (ramps, peaks and plateaus of live memory) and
      objects allocated together tend to die together, so traces built only
      from independent random draws misjudge fragmentation.
    * Johnstone and Wilson (1998, "The Memory Fragmentation Problem: Solved?")
      measured that, on such real traces, good policies waste little memory,
      which is why a realistic workload is the fair test of utilization.

    What this generator does with that:

    * sizes: about 90% in 8-128 bytes (half of those snapped to a few common
      sizes such as 16, 24, 32, 48, 64), 8% up to 4 KiB, and a long tail to
      1 MiB drawn log-uniformly;
    * lifetimes: about 75% of blocks live a few ops, 17% a few hundred, 6% a
      few thousand, and 2% until the end of their phase;
    * phases: the run is split into phases; a phase's long-lived blocks are
      freed together when it ends (the "die together" observation);
    * about 3% of steps grow a live block with realloc, as buffers do.
    """
    rng = random.Random(seed)
    builder = _TraceBuilder(ops, _name("realistic", ops, seed), progress)
    size_weights = tuple(weight for weight, _, _ in _REALISTIC_SIZE_CLASSES)
    lifetime_weights = tuple(weight for weight, _ in _REALISTIC_LIFETIMES)
    deaths: list[tuple[int, int]] = []  # heap of (op index of death, id)
    phase_ids: list[int] = []  # blocks that live until their phase ends
    phase_end = 0
    clock = 0
    while builder.budget >= 1:
        clock += 1
        if clock >= phase_end:
            for block_id in phase_ids:
                if block_id in builder.sizes:
                    builder.free(block_id)
            phase_ids = []
            phase_end = clock + rng.randint(max(1, ops // 8), max(2, ops // 3))
        while deaths and deaths[0][0] <= clock:
            _, block_id = heappop(deaths)
            if block_id in builder.sizes:
                builder.free(block_id)
        if builder.live_count and rng.random() < 0.03:
            block_id = builder.random_live(rng)
            old_size = builder.sizes[block_id]
            builder.realloc(block_id, old_size + max(1, int(old_size * rng.uniform(0.1, 1.0))))
            continue
        if builder.budget < 2:
            break
        _, low, high = _REALISTIC_SIZE_CLASSES[_weighted_choice(rng, size_weights)]
        if high <= 128 and rng.random() < 0.5:
            size = rng.choice([s for s in _COMMON_SMALL_SIZES if low <= s <= high])
        else:
            size = int(math.exp(rng.uniform(math.log(low), math.log(high + 1))))
            size = min(max(size, low), high)
        block_id = builder.alloc(size)
        _, mean = _REALISTIC_LIFETIMES[_weighted_choice(rng, lifetime_weights)]
        if mean is None:
            phase_ids.append(block_id)
        else:
            heappush(deaths, (clock + 1 + int(rng.expovariate(1.0 / mean)), block_id))
    # Free in the order the blocks would have died, phase survivors last.
    while deaths:
        _, block_id = heappop(deaths)
        if block_id in builder.sizes:
            builder.free(block_id)
    builder.drain()
    return builder.finish()


GENERATORS: dict[str, Callable[..., Trace]] = {
    "uniform": uniform,
    "fragmenter": fragmenter,
    "coalesce": coalesce,
    "realloc_growth": realloc_growth,
    "realistic": realistic,
}


def generate(kind: str, ops: int, seed: int = 0, progress: Progress | None = None) -> Trace:
    """The trace of generator ``kind`` (a key of ``GENERATORS``); ``progress(n)``
    is told of every PROGRESS_MASK + 1 ops made."""
    try:
        generator = GENERATORS[kind]
    except KeyError:
        names = ", ".join(sorted(GENERATORS))
        raise ValueError(f"unknown generator {kind!r}; choose one of: {names}") from None
    return generator(ops, seed, progress)
