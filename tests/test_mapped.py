"""MappedHeap: a heap in a regular file, persistent and shared by processes.

Every heap file lives in the test's tmp_path. Processes are forked unless a
test is about spawn.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyalloc import HeapError, MappedHeap, SharedHeap
from pyalloc import control as C
from pyalloc.cli import main
from pyalloc.shared import W_JOURNAL_COUNT, W_RECOVERIES, describe_file
from pyalloc.shared.segment import lock_area_bytes

try:
    import numpy as np
except ImportError:  # the array test needs it; the rest do not
    np = None

CAPACITY = 4 << 20
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


def pattern(key: int, n: int) -> bytes:
    unit = key.to_bytes(8, "little")
    return (unit * (n // 8 + 1))[:n]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data.heap"


@pytest.fixture
def heap(path: Path) -> Iterator[MappedHeap]:
    h = MappedHeap.create(path, CAPACITY)
    yield h
    h.close()


def fill(heap: MappedHeap, seed: int) -> dict[int, bytes]:
    """Allocate, stamp and free blocks at random; return the live ones and their bytes."""
    rng = random.Random(seed)
    live: dict[int, bytes] = {}
    for i in range(200):
        if live and rng.random() < 0.3:
            p = rng.choice(list(live))
            del live[p]
            heap.free(p)
        else:
            n = rng.choice([1, 24, 100, 700, 3000, 20_000])
            p = heap.malloc(n)
            live[p] = pattern(seed << 16 | i, n)
            heap.view(p)[:n] = live[p]
    return live


def verify(heap: MappedHeap, blocks: dict[int, bytes]) -> None:
    for p, data in blocks.items():
        assert bytes(heap.view(p)[: len(data)]) == data, f"block {p} lost its bytes"


# -- persistence --------------------------------------------------------------------------


def test_blocks_bytes_and_names_survive_close_and_reopen(path: Path) -> None:
    h = MappedHeap.create(path, CAPACITY, policy="tlsf")
    blocks = fill(h, 1)
    first, second = sorted(blocks)[:2]
    h.names["first"] = first
    h.names["second"] = second
    layout, stats = h.blocks(), h.stats()
    h.close()

    again = MappedHeap.open(path)
    try:
        assert again.policy_name == "tlsf"
        assert again.blocks() == layout  # same blocks at the same offsets
        assert again.stats() == stats
        verify(again, blocks)
        assert again.names.copy() == {"first": first, "second": second}
        again.check()
        # It goes on serving: reuse, growth, frees.
        for p in list(blocks):
            again.free(p)
        p = again.malloc(1 << 20)
        again.view(p)[:4] = b"more"
        again.names["more"] = p
    finally:
        again.close()

    with MappedHeap.open(path) as third:
        assert bytes(third.view(third.names["more"])[:4]) == b"more"
        assert third.stats()["live_blocks"] == 2  # the block and the directory
        third.check()


def test_a_relative_path_names_the_same_file_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    h = MappedHeap.create("sub/rel.heap", CAPACITY)
    try:
        assert h.path == str(tmp_path / "sub" / "rel.heap")
        p = h.malloc(10)
        h.view(p)[:3] = b"rel"
        monkeypatch.chdir(tmp_path / "sub")
        copy = pickle.loads(pickle.dumps(h))
        assert isinstance(copy, MappedHeap) and copy.path == h.path
        assert bytes(copy.view(p)[:3]) == b"rel"
        copy.close()
        with MappedHeap.open("rel.heap") as same:
            assert same.usable_size(p) >= 10
    finally:
        h.close()


def _reopen_and_extend(path: str, expected: dict[int, bytes], conn: Any) -> None:
    # In a new process: the heap is opened from the file alone.
    with MappedHeap.open(path) as h:
        verify(h, expected)
        p = h.malloc(5000)
        h.view(p)[:5000] = pattern(99, 5000)
        h.names["from-child"] = p
        h.flush()
    conn.send(p)
    conn.close()


@pytest.mark.parametrize("context", [FORK, SPAWN], ids=["fork", "spawn"])
def test_another_process_reopens_the_file_after_close(path: Path, context: Any) -> None:
    h = MappedHeap.create(path, CAPACITY)
    blocks = fill(h, 2)
    h.close()  # no process has the heap open now
    reader, writer = context.Pipe(duplex=False)
    proc = context.Process(target=_reopen_and_extend, args=(str(path), blocks, writer))
    proc.start()
    writer.close()
    p = reader.recv()
    proc.join(60)
    assert proc.exitcode == 0
    with MappedHeap.open(path) as again:
        verify(again, blocks)
        assert again.names["from-child"] == p
        assert bytes(again.view(p)[:5000]) == pattern(99, 5000)
        again.check()


def _receive_by_pickle(heap: MappedHeap, p: int, conn: Any) -> None:
    conn.send((heap.path, bytes(heap.view(p)[:6])))
    heap.free(p)
    heap.close()
    conn.close()


def test_a_spawned_process_gets_the_heap_by_its_path(heap: MappedHeap) -> None:
    p = heap.malloc(100)
    heap.view(p)[:6] = b"pickle"
    reader, writer = SPAWN.Pipe(duplex=False)
    proc = SPAWN.Process(target=_receive_by_pickle, args=(heap, p, writer))
    proc.start()
    writer.close()
    assert reader.recv() == (heap.path, b"pickle")
    proc.join(60)
    assert proc.exitcode == 0
    assert heap.stats()["live_blocks"] == 0  # freed by the other process
    heap.check()


@pytest.mark.skipif(np is None, reason="numpy is not installed")
def test_arrays_persist(path: Path) -> None:
    assert np is not None
    with MappedHeap.create(path, CAPACITY) as h:
        a = h.ndarray((100, 3), "float64")
        a[:] = np.arange(300).reshape(100, 3)
        h.names["table"] = h.offset_of(a)
        del a
    with MappedHeap.open(path) as h:
        b = h.ndarray_at(h.names["table"], (100, 3), "float64")
        assert float(b.sum()) == 299 * 300 / 2
        del b


def test_a_shared_memory_segment_is_a_heap_file() -> None:
    # Same layout: a SharedHeap's segment opens as a heap file, and back.
    name = f"pyalloc-test-{uuid.uuid4().hex}"
    shared = SharedHeap.create(name, CAPACITY)
    try:
        p = shared.malloc(64)
        shared.view(p)[:4] = b"shm!"
        with MappedHeap.open(f"/dev/shm/{name}") as mapped:
            assert bytes(mapped.view(p)[:4]) == b"shm!"
            mapped.free(p)
        assert shared.stats()["live_blocks"] == 0
    finally:
        shared.close()
        shared.unlink()


# -- processes at once ------------------------------------------------------------------


def _churn(path: str, seed: int, rounds: int, conn: Any) -> None:
    with MappedHeap.open(path) as h:
        rng = random.Random(seed)
        mine: dict[int, bytes] = {}
        for i in range(rounds):
            r = rng.random()
            if not mine or r < 0.45:
                n = rng.choice([16, 100, 1000, 5000, 40_000])
                p = h.malloc(n)
                mine[p] = pattern(seed << 20 | i, n)
                h.view(p)[:n] = mine[p]
            elif r < 0.6:
                p = rng.choice(list(mine))
                data = mine.pop(p)
                m = rng.choice([32, 3000, 9000])
                q = h.realloc(p, m)
                keep = min(len(data), m)
                assert bytes(h.view(q)[:keep]) == data[:keep]
                mine[q] = pattern(seed << 20 | i, m)
                h.view(q)[:m] = mine[q]
            else:
                p = rng.choice(list(mine))
                assert bytes(h.view(p)[: len(mine[p])]) == mine.pop(p)
                h.free(p)
        verify(h, mine)
        for p in mine:
            h.free(p)
    conn.send("done")
    conn.close()


@pytest.mark.parametrize("context", [FORK, SPAWN], ids=["fork", "spawn"])
def test_processes_allocate_and_free_on_one_file_at_once(heap: MappedHeap, context: Any) -> None:
    keep = fill(heap, 3)  # blocks of this process, which the others must not touch
    workers = []
    for w in range(3):
        reader, writer = context.Pipe(duplex=False)
        proc = context.Process(target=_churn, args=(heap.path, 100 + w, 600, writer))
        proc.start()
        writer.close()
        workers.append((proc, reader))
    try:
        for proc, reader in workers:
            assert reader.recv() == "done"
            proc.join(60)
            assert proc.exitcode == 0
    finally:
        for proc, _ in workers:
            if proc.is_alive():
                proc.kill()
    heap.check()
    verify(heap, keep)
    stats = heap.stats()
    assert stats["live_blocks"] == len(keep) and stats["recoveries"] == 0


# -- crashes --------------------------------------------------------------------------------


class Killed(BaseException):
    """The process running the operation dies here."""


def coalescing_free(h: MappedHeap, ptr: dict[str, int]) -> None:
    h._free(ptr["E"])


def moving_realloc(h: MappedHeap, ptr: dict[str, int]) -> None:
    h._realloc(ptr["B"], 6000)


def naming(h: MappedHeap, ptr: dict[str, int]) -> None:
    h._write_names({**h._read_names(), "new": ptr["A"]})


OPERATIONS: dict[str, tuple[Callable[[MappedHeap, dict[str, int]], None], bool]] = {
    # name: (operation run under the lock, whether it commits mid-way)
    "free": (coalescing_free, False),
    "realloc": (moving_realloc, True),
    "names": (naming, True),
}


def prepare(path: Path) -> tuple[dict[str, int], dict[int, bytes]]:
    """Blocks A to G, D and F freed: B is boxed in by live blocks, E lies between
    two holes. A is named. Returns the live blocks by label, and their bytes."""
    with MappedHeap.create(path, CAPACITY) as h:
        ptr: dict[str, int] = {}
        for i, label in enumerate("ABCDEFG"):
            ptr[label] = h.malloc(3000)
            h.view(ptr[label])[:3000] = pattern(i + 1, 3000)
        h.names["A"] = ptr["A"]
        for label in "DF":
            h.free(ptr.pop(label))
    return ptr, {p: pattern("ABCDEFG".index(k) + 1, 3000) for k, p in ptr.items()}


def snapshot(heap: MappedHeap) -> bytes:
    """The heap part of the file (what the journal protects), the recovery counter blanked."""
    data = bytearray(heap.buf[: heap.words[C.W_PEAK]])
    data[W_RECOVERIES * 8 : W_RECOVERIES * 8 + 8] = bytes(8)
    return bytes(data)


def count_stores(path: Path, name: str) -> int:
    op, _ = OPERATIONS[name]
    ptr, _ = prepare(path)
    with MappedHeap.open(path) as h:
        with h._lock:
            op(h, ptr)
        h.check()
        return h.meta.stores


def kill_at_store(path: Path, name: str, ptr: dict[str, int], k: int) -> None:
    """A forked child opens the file, runs the operation and is SIGKILLed at its k-th store."""
    op, _ = OPERATIONS[name]
    pid = os.fork()
    if pid == 0:
        try:
            h = MappedHeap.open(path)
            h._lock.acquire()
            h.meta.arm(k, Killed)
            try:
                op(h, ptr)
            except Killed:
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("held_open", [True, False], ids=["open-meanwhile", "reopened-later"])
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_sigkill_mid_operation_is_rolled_back(tmp_path: Path, name: str, held_open: bool) -> None:
    _, mid_commit = OPERATIONS[name]
    total = count_stores(tmp_path / "count.heap", name)
    assert total >= 8
    recovered = 0
    for k in sorted({1, 2, 3, 5, total // 3, total // 2, total - 1}):
        path = tmp_path / f"{name}-{k}.heap"
        ptr, held = prepare(path)
        with MappedHeap.open(path) as h:
            before, live_before = snapshot(h), h.stats()["live_blocks"]
        survivor = MappedHeap.open(path) if held_open else None
        kill_at_store(path, name, ptr, k)
        h = survivor or MappedHeap.open(path)  # later: the journal waited in the file
        try:
            pending = h._raw[W_JOURNAL_COUNT]
            h.check()  # the first lock undoes the dead process's operation
            recovered += bool(pending)
            assert h._raw[W_JOURNAL_COUNT] == 0
            assert h.stats()["recoveries"] == (1 if pending else 0)
            verify(h, held)
            assert h.names.copy() == {"A": ptr["A"]}
            leak = h.stats()["live_blocks"] - live_before
            if mid_commit:
                # A kill after the mid-way commit of a move leaks the new block, no more.
                assert leak in ((0, 1) if name == "realloc" else (0,))
            else:
                assert leak == 0 and snapshot(h) == before
            q = h.malloc(777)
            h.free(q)
            h.check()
        finally:
            h.close()
    assert recovered >= 3


def _churn_forever(path: str, seed: int) -> None:
    h = MappedHeap.open(path)
    rng = random.Random(seed)
    mine: list[int] = []
    while True:
        if len(mine) < 20 and (not mine or rng.random() < 0.55):
            p = h.malloc(rng.choice([16, 200, 3000, 30_000]))
            h.view(p)[:8] = b"churning"
            mine.append(p)
        else:
            h.free(mine.pop(rng.randrange(len(mine))))


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_workers_killed_in_the_middle_of_operations(heap: MappedHeap) -> None:
    keep = fill(heap, 4)
    raw = heap._raw
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 5 and time.monotonic() < deadline:
        proc = FORK.Process(target=_churn_forever, args=(heap.path, kills), daemon=True)
        proc.start()
        assert proc.pid is not None
        try:
            while time.monotonic() < deadline:
                if not raw[W_JOURNAL_COUNT]:
                    continue
                os.kill(proc.pid, signal.SIGSTOP)
                while not _stopped(proc.pid):
                    pass
                if raw[W_JOURNAL_COUNT]:  # stopped inside an operation that writes
                    break
                os.kill(proc.pid, signal.SIGCONT)
        finally:
            proc.kill()
            proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        kills += 1
        heap.check()  # recovers
        verify(heap, keep)
        assert heap.stats()["recoveries"] == kills
    assert kills == 5
    heap.close()
    with MappedHeap.open(heap.path) as again:  # and the file holds the recovered heap
        again.check()
        verify(again, keep)
        assert again.stats()["recoveries"] == 5


# -- refusals -------------------------------------------------------------------------------


def test_open_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MappedHeap.open(tmp_path / "missing.heap")
    assert list(tmp_path.iterdir()) == []  # nothing was created


@pytest.mark.parametrize("size", [0, 13, 100, 4096, 1 << 20])
def test_open_refuses_a_file_that_is_not_a_heap_and_writes_nothing(
    tmp_path: Path, size: int
) -> None:
    path = tmp_path / "foreign.bin"
    path.write_bytes(random.Random(size).randbytes(size))
    before, mtime = digest(path), path.stat().st_mtime_ns
    with pytest.raises(HeapError, match="not a pyalloc heap"):
        MappedHeap.open(path)
    assert digest(path) == before and path.stat().st_mtime_ns == mtime
    assert describe_file(str(path)) is None


@pytest.mark.parametrize("keep", [0, 64, 200, 4096, CAPACITY // 2, CAPACITY])
def test_open_refuses_a_truncated_heap_file(path: Path, keep: int) -> None:
    with MappedHeap.create(path, CAPACITY) as h:
        p = h.malloc(1000)
        h.names["p"] = p
    full = path.stat().st_size
    assert keep < full  # the journal follows the capacity
    os.truncate(path, keep)
    before = digest(path)
    with pytest.raises(HeapError, match="not a pyalloc heap|does not fit its size"):
        MappedHeap.open(path)
    assert digest(path) == before and path.stat().st_size == keep


@pytest.mark.parametrize(
    "word, value, message",
    [
        (C.W_MAGIC, C.MAGIC ^ 1, "bad magic"),
        (C.W_FORMAT, C.FORMAT_VERSION + 1, "format version"),
        (C.W_FORMAT, 1 | 1 << 16, f"version 1; this pyalloc reads version {C.FORMAT_VERSION}"),
        (C.W_RESERVED, 0, "not made by SharedHeap.create or MappedHeap.create"),
        (C.W_CAPACITY, 1 << 40, "does not fit"),
        (C.W_BRK, CAPACITY + 4096, "inconsistent with its region"),
        (C.W_BRK, 1 << 63, "inconsistent with its region"),  # beyond a C integer
    ],
)
def test_open_refuses_a_damaged_control_record_and_writes_nothing(
    path: Path, word: int, value: int, message: str
) -> None:
    MappedHeap.create(path, CAPACITY).close()
    with open(path, "r+b") as f:
        f.seek(word * 8)
        f.write(value.to_bytes(8, "little"))
    before = digest(path)
    with pytest.raises(HeapError, match=message):
        MappedHeap.open(path)
    assert digest(path) == before


def test_create_refuses_an_existing_file(tmp_path: Path, heap: MappedHeap) -> None:
    other = tmp_path / "other.txt"
    other.write_bytes(b"precious")
    for target in (other, Path(heap.path)):
        before = digest(target)
        with pytest.raises(FileExistsError):
            MappedHeap.create(target, CAPACITY)
        assert digest(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.heap", "other.txt"]
    heap.check()


def test_bad_arguments_leave_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MappedHeap.create(tmp_path / "small.heap", 100)  # too small for a heap
    with pytest.raises(ValueError):
        MappedHeap.create(tmp_path / "p.heap", CAPACITY, policy="no-such-policy")
    with pytest.raises(ValueError):
        MappedHeap.create("", CAPACITY)
    with pytest.raises(TypeError):
        MappedHeap.create(b"bytes.heap", CAPACITY)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        MappedHeap.create(tmp_path / "no-such-dir" / "x.heap", CAPACITY)
    with pytest.raises(TypeError):
        MappedHeap(tmp_path / "x.heap")
    assert list(tmp_path.iterdir()) == []


# -- the file -------------------------------------------------------------------------------


def test_the_file_is_sparse_and_trims_punch_holes(tmp_path: Path) -> None:
    path = tmp_path / "big.heap"
    capacity = 256 << 20
    with MappedHeap.create(path, capacity) as h:
        assert path.stat().st_size >= capacity
        assert path.stat().st_blocks * 512 < 1 << 20  # untouched pages take no disk
        p = h.malloc(64 << 20)
        h.view(p)[:] = b"\x01" * h.usable_size(p)
        full = path.stat().st_blocks * 512
        assert full >= 64 << 20
        h.free(p)  # the top of the heap: trimmed, its pages given back
        assert path.stat().st_blocks * 512 < full - (60 << 20)
        h.check()


def _dirty_kib(address: int) -> int:
    """Dirty KiB of this process's mapping that contains ``address`` (/proc/self/smaps)."""
    inside = False
    total = 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head in ("Shared_Dirty:", "Private_Dirty:"):
                total += int(line.split()[1])
    return total


def test_flush_writes_the_dirty_pages_to_the_file(heap: MappedHeap, tmp_path: Path) -> None:
    import ctypes
    import mmap

    # On a filesystem without writeback (tmpfs) msync leaves pages dirty: nothing to test.
    with open(tmp_path / "probe", "w+b") as f:
        f.truncate(1 << 16)
        probe = mmap.mmap(f.fileno(), 1 << 16)
        probe[:] = b"x" * (1 << 16)
        probe.flush()
        cell = ctypes.c_char.from_buffer(probe)
        clean = _dirty_kib(ctypes.addressof(cell)) == 0
        del cell
        probe.close()
    if not clean:
        pytest.skip("msync does not clean pages on this filesystem")
    address = heap._base_address
    p = heap.malloc(200_000)
    heap.view(p)[:200_000] = pattern(5, 200_000)
    assert _dirty_kib(address) >= 190
    heap.flush()
    # The lock lives in the file: its unlock, after the msync, dirties its page again.
    assert _dirty_kib(address) <= lock_area_bytes() // 1024
    assert Path(heap.path).read_bytes()[p : p + 200_000] == pattern(5, 200_000)
    heap.close()
    with pytest.raises(HeapError, match="the heap is closed"):
        heap.flush()


def test_unlink_removes_the_file_not_the_open_heap(heap: MappedHeap) -> None:
    p = heap.malloc(100)
    heap.view(p)[:5] = b"still"
    heap.unlink()
    assert not os.path.exists(heap.path)
    assert bytes(heap.view(p)[:5]) == b"still"
    heap.free(p)
    heap.check()
    with pytest.raises(FileNotFoundError):
        heap.unlink()
    with pytest.raises(FileNotFoundError):
        MappedHeap.open(heap.path)


def test_describe_file_reads_the_control_record(heap: MappedHeap) -> None:
    heap.names["x"] = heap.malloc(10)
    info = describe_file(heap.path)
    assert info is not None
    assert info["name"] == heap.path and info["capacity"] == CAPACITY
    assert info["has_names"] and info["journal_entries"] == 0


# -- the command line -------------------------------------------------------------------------


def test_cli_takes_a_heap_file_by_path(
    heap: MappedHeap, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = heap.malloc(1000)
    heap.names["results"] = p
    assert main(["shm", "check", heap.path]) == 0
    assert "ok, 2 live blocks" in capsys.readouterr().out
    assert main(["shm", "info", heap.path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["names"] == {"results": p}
    heap.buf[p - 8 : p] = bytes(8)  # wipe the block's header
    assert main(["shm", "check", heap.path]) == 1
    assert "corrupted" in capsys.readouterr().err

    foreign = tmp_path / "foreign.txt"
    foreign.write_bytes(b"not a heap" * 100)
    assert main(["shm", "check", str(foreign)]) == 1
    assert "not a pyalloc heap" in capsys.readouterr().err
    assert main(["shm", "rm", str(foreign)]) == 1
    assert foreign.exists()
    assert main(["shm", "info", str(tmp_path / "missing.heap")]) == 1
    assert "no file named" in capsys.readouterr().err
    assert main(["shm", "rm", heap.path]) == 0
    assert not os.path.exists(heap.path)
