"""The lock-free Pool: API and edge cases, races between threads and between
processes, the ABA defence, and processes killed while they hold blocks."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

pytest.importorskip("atomicshm")

from atomicshm import AtomicView  # noqa: E402

from pyalloc import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError  # noqa: E402
from pyalloc.pool import (  # noqa: E402
    _H_CHECKSUM,
    HEAD_OFFSET,
    INDEX_BITS,
    INDEX_MASK,
    MAX_COUNT,
    VERSION,
    Pool,
)
from pyalloc.regions import SharedRegion, unlink_shared  # noqa: E402

NOT_INTS: list[object] = [1.0, "64", b"64", None, [64], True, False]


def shm_name() -> str:
    return f"pyalloc-test-pool-{os.getpid()}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def shared_pools() -> Iterator[Callable[..., Pool]]:
    """Create shared pools; each is closed and its name unlinked at teardown."""
    made: list[Pool] = []

    def make(block_size: int = 64, count: int = 64) -> Pool:
        pool = Pool.create(shm_name(), block_size, count)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
        assert pool.name is not None
        if SharedRegion.exists(pool.name):
            pool.unlink()


def region_digest(pool: Pool) -> str:
    return hashlib.sha256(bytes(pool._region.buf)).hexdigest()


def atomic_view(pool: Pool) -> AtomicView:
    """The test's own atomic access to a pool's bytes (close it before the pool)."""
    return AtomicView(pool._region.buf)


def without_magazine(pool: Pool) -> Pool:
    """The pool as a process without a slot sees it: every alloc pops, every free pushes."""
    pool._slot = -1
    pool._bind()
    return pool


def head_word(pool: Pool) -> int:
    return pool._atomics.load_u64(HEAD_OFFSET)


def allocated_state(pool: Pool) -> int:
    """The state byte of an allocated block, as the pool writes it."""
    with Pool(16, 1) as scratch:
        ptr = scratch.alloc()
        return scratch._bytes[scratch._layout.state(scratch._index_of(ptr))]


# --- Construction ------------------------------------------------------------


@pytest.mark.parametrize("block_size, stride", [(1, 16), (16, 16), (17, 32), (100, 112)])
def test_blocks_are_16_byte_aligned_and_block_size_long(block_size: int, stride: int) -> None:
    with Pool(block_size, 5) as pool:
        pointers = [pool.alloc() for _ in range(5)]
        assert all(p > 0 and p % 16 == 0 for p in pointers)
        ordered = sorted(pointers)
        assert [b - a for a, b in zip(ordered, ordered[1:], strict=False)] == [stride] * 4
        assert all(len(pool.view(p)) == block_size for p in pointers)
        assert pool.block_size == block_size and pool.count == 5


@pytest.mark.parametrize("bad", NOT_INTS)
def test_constructor_rejects_non_int_sizes(bad: object) -> None:
    with pytest.raises(TypeError):
        Pool(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Pool(64, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "block_size, count", [(0, 10), (-16, 10), (64, 0), (64, -1), (16, MAX_COUNT + 1)]
)
def test_constructor_rejects_out_of_range_sizes(block_size: int, count: int) -> None:
    with pytest.raises(ValueError):
        Pool(block_size, count)


def test_new_pool_is_all_free() -> None:
    with Pool(32, 1000) as pool:
        assert pool.available() == 1000
        report = pool.check()
        assert (report.free, report.allocated, report.stranded) == (1000, 0, 0)


# --- alloc / free / view ----------------------------------------------------------


def test_alloc_hands_out_every_block_once_then_raises_memory_error() -> None:
    with Pool(48, 50) as pool:
        pointers = [pool.alloc() for _ in range(50)]
        assert len(set(pointers)) == 50
        assert pool.available() == 0
        with pytest.raises(MemoryError):
            pool.alloc()
        report = pool.check()
        assert (report.free, report.allocated, report.stranded) == (0, 50, 0)
        pool.free(pointers[17])
        assert pool.alloc() == pointers[17]
        for p in pointers:
            pool.free(p)
        assert pool.available() == 50
        pool.check()


def test_free_then_alloc_is_last_in_first_out() -> None:
    with Pool(64, 10) as pool:
        a, b, c = pool.alloc(), pool.alloc(), pool.alloc()
        pool.free(b)
        pool.free(a)
        assert pool.alloc() == a
        assert pool.alloc() == b
        assert pool.available() == 7
        pool.free(c)


def test_view_is_the_block_and_writes_stay() -> None:
    with Pool(40, 4) as pool:
        a, b = pool.alloc(), pool.alloc()
        view_a = pool.view(a)
        view_a[:] = bytes(range(40))
        pool.view(b)[:] = b"\xff" * 40
        assert bytes(pool.view(a)) == bytes(range(40))
        assert bytes(pool._region.buf[a : a + 40]) == bytes(range(40))
        view_a.release()
        pool.free(a)
        pool.free(b)


def test_view_of_a_free_block_is_refused() -> None:
    with Pool(64, 4) as pool:
        p = pool.alloc()
        pool.free(p)
        with pytest.raises(InvalidPointerError):
            pool.view(p)


def test_double_free_raises_and_changes_nothing() -> None:
    with Pool(64, 8) as pool:
        p = pool.alloc()
        pool.free(p)
        before = region_digest(pool)
        with pytest.raises(DoubleFreeError):
            pool.free(p)
        assert region_digest(pool) == before
        assert pool.check().free == 8


def bad_pointers(pool: Pool, live: int) -> list[int]:
    end = pool._layout.blocks + pool._layout.stride * pool.count
    return [0, -16, -1, 16, live + 1, live + 8, live - 16, end, end + 64, 1 << 70]


@pytest.mark.parametrize("which", range(10))
def test_invalid_pointer_raises_and_changes_nothing(which: int) -> None:
    with Pool(64, 8) as pool:
        live = pool.alloc()
        pool.alloc()
        ptr = bad_pointers(pool, live)[which]
        before = region_digest(pool)
        with pytest.raises(InvalidPointerError) as raised:
            pool.free(ptr)
        assert not isinstance(raised.value, DoubleFreeError)
        with pytest.raises(InvalidPointerError):
            pool.view(ptr)
        assert region_digest(pool) == before
        report = pool.check()
        assert (report.free, report.allocated) == (6, 2)


class Index:
    """An integer that is not an int, as numpy's are: it has ``__index__``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_blocks_that_together_pass_any_region_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="past the largest region"):
        Pool(1 << 40, 1 << 30)


@pytest.mark.parametrize("block_size", [(1 << 40) + 1, 1 << 62, 1 << 70])
def test_a_block_size_past_any_region_is_a_value_error(block_size: int) -> None:
    with pytest.raises(ValueError, match="block_size must be between"):
        Pool(block_size, 10)
    name = shm_name()
    with pytest.raises(ValueError, match="block_size must be between"):
        Pool.create(name, block_size, 10)
    assert not SharedRegion.exists(name)


def test_sizes_and_pointers_may_be_integers_that_are_not_ints() -> None:
    with Pool(Index(64), Index(8)) as pool:  # type: ignore[arg-type]
        assert pool.block_size == 64 and pool.count == 8
        p = pool.alloc()
        pool.free(Index(p))  # type: ignore[arg-type]
        assert pool.available() == 8
        pool.check()


@pytest.mark.parametrize("bad", NOT_INTS)
def test_non_int_pointer_raises_type_error(bad: object) -> None:
    with Pool(64, 8) as pool:
        pool.alloc()
        before = region_digest(pool)
        with pytest.raises(TypeError):
            pool.free(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pool.view(bad)  # type: ignore[arg-type]
        assert region_digest(pool) == before


def test_int_subclass_pointer_is_accepted() -> None:
    class Offset(int):
        pass

    with Pool(64, 8) as pool:
        p = pool.alloc()
        assert len(pool.view(Offset(p))) == 64
        pool.free(Offset(p))
        assert pool.available() == 8


# --- Random sequences against a model ------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """Alloc, free, double free and stray pointers on a 12-block pool.

    The model is the set of live pointers and the bytes written into each;
    after every step the pool agrees with it on ``available()``, on
    ``check()`` and on every live block's payload.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool(24, 12)
        self.live: dict[int, bytes] = {}
        self.freed: set[int] = set()

    def teardown(self) -> None:
        self.pool.close()

    @rule(fill=st.binary(min_size=24, max_size=24))
    def alloc(self, fill: bytes) -> None:
        if len(self.live) == 12:
            with pytest.raises(MemoryError):
                self.pool.alloc()
            return
        ptr = self.pool.alloc()
        assert ptr not in self.live
        self.pool.view(ptr)[:] = fill
        self.live[ptr] = fill
        self.freed.discard(ptr)

    @precondition(lambda self: bool(self.live))
    @rule(pick=st.integers(0, 1 << 16))
    def free(self, pick: int) -> None:
        ptr = sorted(self.live)[pick % len(self.live)]
        assert bytes(self.pool.view(ptr)) == self.live.pop(ptr)
        self.pool.free(ptr)
        self.freed.add(ptr)

    @precondition(lambda self: bool(self.freed))
    @rule(pick=st.integers(0, 1 << 16))
    def double_free(self, pick: int) -> None:
        ptr = sorted(self.freed)[pick % len(self.freed)]
        with pytest.raises(DoubleFreeError):
            self.pool.free(ptr)

    @rule(ptr=st.integers(-(1 << 20), 1 << 20))
    def stray_pointer(self, ptr: int) -> None:
        layout = self.pool._layout
        offset = ptr - layout.blocks
        if 0 <= offset < layout.stride * layout.count and offset % layout.stride == 0:
            return  # a real block start
        with pytest.raises(InvalidPointerError) as raised:
            self.pool.free(ptr)
        assert not isinstance(raised.value, DoubleFreeError)

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.pool.available() == 12 - len(self.live)
        report = self.pool.check()
        assert (report.allocated, report.stranded) == (len(self.live), 0)
        for ptr, data in self.live.items():
            assert bytes(self.pool.view(ptr)) == data


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=40)


# --- Life cycle, sharing by name, pickling ------------------------------------------


def test_closed_pool_refuses_work() -> None:
    pool = Pool(64, 4)
    p = pool.alloc()
    pool.close()
    pool.close()
    assert pool.closed
    calls = (pool.alloc, lambda: pool.free(p), pool.available, pool.check, lambda: pool.view(p))
    for call in (*calls, lambda: pool.view(0), lambda: pool.free(0)):
        with pytest.raises(HeapError, match="the heap is closed"):
            call()


def test_close_with_a_live_view_raises_and_keeps_the_pool_usable() -> None:
    pool = Pool(64, 4)
    p = pool.alloc()
    view = pool.view(p)
    with pytest.raises(BufferError):
        pool.close()
    assert not pool.closed
    pool.free(p)
    assert pool.check().free == 4
    view.release()
    pool.close()
    assert pool.closed


def test_private_pool_cannot_be_pickled_or_unlinked() -> None:
    with Pool(64, 4) as pool:
        assert pool.name is None
        with pytest.raises(TypeError):
            pickle.dumps(pool)
        with pytest.raises(ValueError):
            pool.unlink()


def test_attach_sees_the_same_blocks_at_the_same_offsets(
    shared_pools: Callable[..., Pool],
) -> None:
    pool = shared_pools(block_size=100, count=20)
    p = pool.alloc()
    pool.view(p)[:5] = b"hello"
    with Pool.attach(pool.name or "") as other:
        assert (other.block_size, other.count, other.name) == (100, 20, pool.name)
        assert bytes(other.view(p)[:5]) == b"hello"
        assert other.available() == 19
        q = other.alloc()
        assert q != p
        assert pool.available() == 18
        other.free(p)
    pool.free(q)
    assert pool.check().free == 20


def test_pickle_of_a_shared_pool_attaches_by_name(shared_pools: Callable[..., Pool]) -> None:
    pool = shared_pools()
    p = pool.alloc()
    data = pickle.dumps(pool)
    assert len(data) < 200  # the name, not the memory
    with pickle.loads(data) as copy:
        assert copy.name == pool.name and copy is not pool
        copy.free(p)
    assert pool.available() == pool.count


def test_create_refuses_a_taken_name(shared_pools: Callable[..., Pool]) -> None:
    pool = shared_pools()
    with pytest.raises(FileExistsError):
        Pool.create(pool.name or "", 64, 4)
    pool.check()


def test_create_with_bad_arguments_leaves_no_segment() -> None:
    name = shm_name()
    with pytest.raises(ValueError):
        Pool.create(name, 64, 0)
    with pytest.raises(TypeError):
        Pool.create(name, 64.0, 10)  # type: ignore[arg-type]
    assert not SharedRegion.exists(name)
    with pytest.raises(ValueError):
        Pool.create("no/slashes", 64, 10)


def test_attach_to_a_missing_name_raises() -> None:
    with pytest.raises(FileNotFoundError):
        Pool.attach(shm_name())


def test_close_and_unlink_remove_the_name() -> None:
    with Pool.create(shm_name(), 64, 4) as pool:
        name = pool.name or ""
        assert SharedRegion.exists(name)
    pool.unlink()
    assert not SharedRegion.exists(name)


@pytest.fixture
def foreign_segment() -> Iterator[SharedRegion]:
    region = SharedRegion.create(shm_name(), 1 << 16)
    yield region
    region.close()
    region.unlink()


def test_attach_to_a_segment_that_is_not_a_pool_raises_and_writes_nothing(
    foreign_segment: SharedRegion,
) -> None:
    for content in (random.Random(5).randbytes(1 << 16), bytes(1 << 16)):
        foreign_segment.buf[:] = content
        with pytest.raises(ValueError, match="not a pyalloc pool"):
            Pool.attach(foreign_segment.name or "")
        assert bytes(foreign_segment.buf) == content


@pytest.mark.parametrize(
    "word, value, error",
    [
        (1, VERSION - 1, ValueError),  # the format version before this one
        (2, 4096, HeapCorruptionError),  # block_size, checksum no longer matches
        (_H_CHECKSUM, 12345, HeapCorruptionError),  # the checksum itself
    ],
)
def test_attach_to_a_damaged_header_raises_and_writes_nothing(
    shared_pools: Callable[..., Pool], word: int, value: int, error: type[Exception]
) -> None:
    pool = shared_pools()
    pool._region.words[word] = value
    before = region_digest(pool)
    with pytest.raises(error):
        Pool.attach(pool.name or "")
    assert region_digest(pool) == before
    with pytest.raises(error):
        pool.check()


def test_attach_to_a_header_with_consistent_but_wrong_offsets_raises(
    shared_pools: Callable[..., Pool],
) -> None:
    from pyalloc.pool import _checksum

    pool = shared_pools()
    words = pool._region.words
    words[8] += 64  # where the blocks start
    words[_H_CHECKSUM] = _checksum([words[i] for i in range(_H_CHECKSUM)])
    with pytest.raises(HeapCorruptionError, match="offsets"):
        Pool.attach(pool.name or "")


# --- check() finds damage ------------------------------------------------------------


def link_slot(pool: Pool, index: int) -> int:
    return (pool._layout.links >> 3) + index


def test_check_finds_a_cycle_in_the_free_stack() -> None:
    with Pool(64, 10) as pool:
        words = pool._region.words
        words[link_slot(pool, 3)] = (words[link_slot(pool, 3)] & ~INDEX_MASK) | 1
        with pytest.raises(HeapCorruptionError, match="cycle"):
            pool.check()


def test_check_finds_a_link_out_of_range() -> None:
    with Pool(64, 10) as pool:
        words = pool._region.words
        words[link_slot(pool, 4)] = (6 << INDEX_BITS) | 77
        with pytest.raises(HeapCorruptionError, match="out of range"):
            pool.check()


def test_check_finds_a_wrong_depth() -> None:
    with Pool(64, 10) as pool:
        words = pool._region.words
        words[link_slot(pool, 2)] += 1 << INDEX_BITS
        with pytest.raises(HeapCorruptionError, match="depth"):
            pool.check()


def test_check_finds_an_allocated_block_on_the_stack_and_alloc_refuses_it() -> None:
    with Pool(64, 10) as pool:
        pool._bytes[pool._layout.state(0)] = allocated_state(pool)
        with pytest.raises(HeapCorruptionError, match="on the free stack"):
            pool.check()
        with pytest.raises(HeapCorruptionError):
            pool.alloc()


def test_check_finds_an_unknown_state() -> None:
    with Pool(64, 10) as pool:
        held = [pool.alloc() for _ in range(3)]
        pool._bytes[pool._layout.state(pool._index_of(held[1]))] = 0
        with pytest.raises(HeapCorruptionError, match="unknown state"):
            pool.check()


def test_check_counts_a_block_freed_but_not_pushed_as_stranded() -> None:
    with Pool(64, 10) as pool:
        p = pool.alloc()
        pool.alloc()
        # What a process killed between the two steps of free leaves behind.
        pool._bytes[pool._layout.state(0)] = 1
        report = pool.check()
        assert (report.free, report.allocated, report.stranded) == (8, 1, 1)
        with pytest.raises(DoubleFreeError):
            pool.free(p)


# --- The import boundary -------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_pyalloc_does_not_import_atomicshm() -> None:
    # Compiled, the pool's atomics are C: it never needs atomicshm.
    result = run_python(
        "import sys, pyalloc; assert 'atomicshm' not in sys.modules; "
        "from pyalloc import Pool; "
        "assert ('atomicshm' in sys.modules) != pyalloc.COMPILED, pyalloc.COMPILED; "
        "print(Pool.__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Pool"


def test_pool_without_atomicshm_names_the_extra_unless_compiled() -> None:
    result = run_python(
        "import sys; sys.modules['atomicshm'] = None\n"
        "import pyalloc\n"
        "try:\n"
        "    with pyalloc.Pool(16, 4) as pool:\n"
        "        pool.free(pool.alloc())\n"
        "    print('works', pyalloc.COMPILED)\n"
        "except ImportError as exc:\n"
        "    print(exc, pyalloc.COMPILED)\n"
    )
    assert result.returncode == 0, result.stderr
    if result.stdout.split()[-1] == "True":
        assert result.stdout.split() == ["works", "True"]
    else:
        assert "pyalloc[atomics]" in result.stdout


# --- ABA --------------------------------------------------------------------------------


def test_tag_defeats_the_aba_interleaving() -> None:
    with without_magazine(Pool(64, 4)) as pool:
        # Actor 1 reads the head: block 0 on top, block 1 under it.
        seen, desired = pool._pop_read()
        assert seen & INDEX_MASK == 0 and desired & INDEX_MASK == 1
        # Actor 2 pops 0, pops 1 and pushes 0 back: the same block is on top again.
        a = pool.alloc()
        b = pool.alloc()
        pool.free(a)
        head = head_word(pool)
        assert head & INDEX_MASK == seen & INDEX_MASK
        assert head != seen  # only the tag tells the two apart
        # Actor 1's compare-and-swap fails, and nothing changed.
        assert pool._pop_commit(seen, desired) is None
        assert head_word(pool) == head
        report = pool.check()
        assert (report.free, report.allocated, report.stranded) == (3, 1, 0)
        # Retried from a fresh read, actor 1 gets block 0 and then block 2, never b.
        assert pool._pop_commit(*pool._pop_read()) == a
        assert pool.alloc() not in (a, b)


@pytest.mark.skipif(sys.byteorder != "little", reason="addresses the index half of the head word")
def test_without_the_tag_the_aba_cas_would_succeed_wrongly() -> None:
    with without_magazine(Pool(64, 4)) as pool:
        seen, desired = pool._pop_read()
        a = pool.alloc()
        b = pool.alloc()
        pool.free(a)
        # Compare and swap the index half alone, as an untagged stack would.
        index_half = HEAD_OFFSET  # the low 32 bits on a little-endian machine
        with atomic_view(pool) as view:
            old_index = view.cas_u32(index_half, seen & INDEX_MASK, desired & INDEX_MASK)
        assert old_index == seen & INDEX_MASK  # the untagged CAS succeeded ...
        # ... and put b, which actor 2 still holds, on top of the free stack.
        assert head_word(pool) & INDEX_MASK == (b - pool._layout.blocks) // 64
        with pytest.raises(HeapCorruptionError, match="on the free stack"):
            pool.check()


# --- Threads ----------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads often, so that their steps interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def hammer(pool: Pool, worker: int, rounds: int, seed: int) -> tuple[int, int]:
    """Alloc and free at random, holding up to 8 blocks; return (ops, stamp faults).

    On alloc the first word of the block is exchanged from 0 (left by its last
    owner) to this owner's stamp, so a block handed to two owners at once is
    seen by the second; the stamp also goes in the last 8 bytes through
    ``view``, and both are verified before the block is freed.
    """
    with atomic_view(pool) as view:
        return stamped_rounds(pool, view.exchange_u64, worker, rounds, seed)


def stamped_rounds(
    pool: Pool, exchange: Callable[[int, int], int], worker: int, rounds: int, seed: int
) -> tuple[int, int]:
    rng = random.Random(seed)
    held: list[tuple[int, int]] = []
    faults = 0
    ops = 0
    for serial in range(1, rounds + 1):
        if held and (len(held) >= 8 or rng.random() < 0.5):
            ptr, stamp = held.pop(rng.randrange(len(held)))
            tail = pool.view(ptr)
            if int.from_bytes(tail[-8:], "little") != stamp:
                faults += 1
            tail.release()
            if exchange(ptr, 0) != stamp:
                faults += 1
            pool.free(ptr)
        else:
            try:
                ptr = pool.alloc()
            except MemoryError:
                continue
            stamp = (worker << 40) | serial
            if exchange(ptr, stamp) != 0:
                faults += 1
            tail = pool.view(ptr)
            tail[-8:] = stamp.to_bytes(8, "little")
            tail.release()
            held.append((ptr, stamp))
        ops += 1
    for ptr, stamp in held:
        if exchange(ptr, 0) != stamp:
            faults += 1
        pool.free(ptr)
        ops += 1
    return ops, faults


@pytest.mark.parametrize("count", [16, 1000])
def test_threads_never_share_a_block(fast_switching: None, count: int) -> None:
    # 16 blocks for 4 threads holding up to 8 each: exhaustion and a hot head.
    with Pool(64, count) as pool:
        results: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def run(worker: int) -> None:
            try:
                results.append(hammer(pool, worker, 6000, seed=worker))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert [faults for _, faults in results] == [0, 0, 0, 0]
        assert sum(ops for ops, _ in results) > 4 * 3000
        report = pool.check()
        assert (report.free, report.allocated, report.stranded) == (count, 0, 0)


def test_racing_frees_of_one_block_in_threads_succeed_once(fast_switching: None) -> None:
    with Pool(64, 64) as pool:
        outcomes: list[str] = []
        lock = threading.Lock()
        for _ in range(200):
            ptr = pool.alloc()
            barrier = threading.Barrier(3)

            def racer(ptr: int = ptr, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    pool.free(ptr)
                    outcome = "freed"
                except DoubleFreeError:
                    outcome = "double"
                with lock:
                    outcomes.append(outcome)

            racers = [threading.Thread(target=racer) for _ in range(3)]
            for t in racers:
                t.start()
            for t in racers:
                t.join()
        assert outcomes.count("freed") == 200
        assert outcomes.count("double") == 400
        assert pool.check().free == 64


# --- Processes --------------------------------------------------------------------------


def process_hammer(pool: Pool, worker: int, rounds: int, results: Any) -> None:
    results.put((worker, *hammer(pool, worker, rounds, seed=worker)))


def free_in_lockstep(
    pool: Pool, barrier: int, racers: int, pointers: list[int], results: Any
) -> None:
    """Free every pointer in turn, all racers starting each free at the same moment.

    ``barrier`` is a block of the pool used as an arrival counter: before
    round r every racer adds one and spins until all ``racers`` have arrived.
    """
    view = atomic_view(pool)  # lives as long as the racer
    arrive = view.fetch_add_u64
    arrived = view.load_u64
    freed = doubles = 0
    for round_number, ptr in enumerate(pointers):
        arrive(barrier, 1)
        everyone = racers * (round_number + 1)
        spins = 0
        while arrived(barrier) < everyone:
            spins += 1
            if spins % 2000 == 0:
                os.sched_yield()  # a racer was descheduled: let it run
        try:
            pool.free(ptr)
            freed += 1
        except DoubleFreeError:
            doubles += 1
    results.put((freed, doubles))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_never_share_a_block(shared_pools: Callable[..., Pool], method: str) -> None:
    context: Any = multiprocessing.get_context(method)
    pool = shared_pools(block_size=64, count=24)
    results = context.Queue()
    workers = [
        context.Process(target=process_hammer, args=(pool, w, 8000, results)) for w in (1, 2, 3)
    ]
    for w in workers:
        w.start()
    outcome = sorted(results.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert [faults for _, _, faults in outcome] == [0, 0, 0]
    assert all(ops > 4000 for _, ops, _ in outcome)
    report = pool.check()
    assert (report.free, report.allocated, report.stranded) == (24, 0, 0)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_racing_frees_across_processes_succeed_once(
    shared_pools: Callable[..., Pool], method: str
) -> None:
    context: Any = multiprocessing.get_context(method)
    pool = shared_pools(block_size=16, count=2001)
    barrier = pool.alloc()
    pointers = [pool.alloc() for _ in range(2000)]
    results = context.Queue()
    racers = [
        context.Process(target=free_in_lockstep, args=(pool, barrier, 2, pointers, results))
        for _ in range(2)
    ]
    for r in racers:
        r.start()
    outcome = [results.get(timeout=60) for _ in racers]
    for r in racers:
        r.join(timeout=30)
    assert sum(freed for freed, _ in outcome) == 2000
    assert sum(doubles for _, doubles in outcome) == 2000
    report = pool.check()
    assert (report.free, report.allocated, report.stranded) == (2000, 1, 0)


# --- Processes that die -------------------------------------------------------------------


def hold_and_wait(pool: Pool, hold: int, ready: Any) -> None:
    for _ in range(hold):
        pool.alloc()
    ready.set()
    time.sleep(60)


def churn_forever(pool: Pool, ready: Any) -> None:
    held: list[int] = []
    for round_number in range(10**9):
        if len(held) < 5:
            held.append(pool.alloc())
        else:
            pool.free(held.pop(0))
        if round_number == 2000:
            ready.set()


def kill(process: Any) -> None:
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=10)
    assert process.exitcode == -signal.SIGKILL


def assert_still_usable(pool: Pool) -> None:
    """Every free block can be taken once, then MemoryError, then all go back."""
    free_before = pool.available()
    taken = []
    while True:
        try:
            taken.append(pool.alloc())
        except MemoryError:
            break
    assert len(taken) == free_before == len(set(taken))
    for ptr in taken:
        pool.free(ptr)
    assert pool.available() == free_before


def test_killed_holder_leaks_only_its_blocks(shared_pools: Callable[..., Pool]) -> None:
    context = multiprocessing.get_context("fork")
    pool = shared_pools(block_size=64, count=100)
    mine = [pool.alloc() for _ in range(3)]
    ready = context.Event()
    holder = context.Process(target=hold_and_wait, args=(pool, 10, ready))
    holder.start()
    assert ready.wait(timeout=30)
    kill(holder)
    report = pool.check()
    assert (report.free, report.allocated, report.stranded) == (87, 13, 0)
    assert_still_usable(pool)
    for ptr in mine:
        pool.free(ptr)
    report = pool.check()
    assert (report.free, report.allocated, report.stranded) == (90, 10, 0)  # the leak


def test_process_killed_mid_loop_leaves_the_stack_whole(shared_pools: Callable[..., Pool]) -> None:
    context = multiprocessing.get_context("fork")
    pool = shared_pools(block_size=64, count=40)
    rng = random.Random(11)
    leaked = stranded = 0
    for _ in range(6):
        ready = context.Event()
        churner = context.Process(target=churn_forever, args=(pool, ready))
        churner.start()
        assert ready.wait(timeout=30)
        time.sleep(rng.uniform(0, 0.02))
        kill(churner)
        report = pool.check()
        # Each churner held 4 or 5 blocks, at most one of them between two steps.
        assert report.free + report.allocated + report.stranded == 40
        assert report.stranded - stranded <= 1
        assert 4 <= report.allocated + report.stranded - leaked <= 5
        leaked = report.allocated + report.stranded
        stranded = report.stranded
        assert pool.available() == report.free
        assert_still_usable(pool)


def test_unlinked_names_do_not_linger() -> None:
    name = shm_name()
    pool = Pool.create(name, 16, 2)
    pool.close()
    unlink_shared(name)
    with pytest.raises(FileNotFoundError):
        Pool.attach(name)
