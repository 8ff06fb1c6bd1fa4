"""The attach table: slots claimed and freed, deaths noticed, other boots, its lock."""

from __future__ import annotations

import fcntl
import mmap
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalloc.attach import (
    AttachTable,
    AttachTableFullError,
    boot_id,
    process_start,
    table_words,
)
from pyalloc.errors import HeapCorruptionError

FIRST = 2  # the table starts at word 2: the words before it are someone else's
SLOTS = 4
PAYLOAD = 3


@pytest.fixture
def region(tmp_path: Path) -> Iterator[tuple[int, memoryview]]:
    path = tmp_path / "segment"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    size = 8 * (FIRST + table_words(SLOTS, PAYLOAD) + 1)
    os.ftruncate(fd, mmap.PAGESIZE)
    mapping = mmap.mmap(fd, mmap.PAGESIZE)
    words = memoryview(mapping).cast("Q")
    assert size <= mmap.PAGESIZE
    yield fd, words
    words.release()
    mapping.close()
    os.close(fd)


def make_table(region: tuple[int, memoryview], format: bool = True) -> AttachTable:
    fd, words = region
    table = AttachTable(words, FIRST, SLOTS, PAYLOAD, fd)
    if format:
        table.format()
    return table


def in_child(body: object) -> int:
    """Fork; the child runs ``body()`` and stays alive until killed. Return its pid."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            body()  # type: ignore[operator]
            os.write(write, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.close(read)
    return pid


def kill(pid: int, reap: bool = True) -> None:
    """SIGKILL ``pid`` and wait for its death; unless ``reap``, leave it a zombie."""
    os.kill(pid, signal.SIGKILL)
    if reap:
        os.waitpid(pid, 0)
    else:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_table_fits_between_its_neighbours(region: tuple[int, memoryview]) -> None:
    _, words = region
    words[FIRST - 1] = 0xAAAA
    after = FIRST + table_words(SLOTS, PAYLOAD)
    words[after] = 0xBBBB
    table = make_table(region)
    table.claim()
    for slot in range(SLOTS):
        assert table.payload(slot) + PAYLOAD <= after
    assert words[FIRST - 1] == 0xAAAA and words[after] == 0xBBBB


def test_first_claim_is_alone_and_names_this_process(region: tuple[int, memoryview]) -> None:
    table = make_table(region)
    slot, alone = table.claim()
    assert alone
    assert table.pid(slot) == os.getpid()
    assert table.attached() == [os.getpid()]
    assert not table.is_dead(slot)
    table.release(slot)
    assert table.attached() == []


def test_a_second_process_is_not_alone(region: tuple[int, memoryview]) -> None:
    table = make_table(region)
    child = in_child(lambda: table.claim())
    try:
        slot, alone = table.claim()
        assert not alone
        assert sorted(table.attached()) == sorted([child, os.getpid()])
    finally:
        kill(child)


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_killed_process_is_dead_and_recovered_once(
    region: tuple[int, memoryview], reaped: bool
) -> None:
    fd, words = region
    table = make_table(region)

    def claim_and_fill() -> None:
        slot, _ = table.claim()
        words[table.payload(slot)] = 1234

    child = in_child(claim_and_fill)
    kill(child, reap=reaped)
    try:
        dead = [s for s in range(SLOTS) if table.pid(s) == child]
        assert len(dead) == 1 and table.is_dead(dead[0])
        recovered: list[tuple[int, int]] = []
        assert table.reap(lambda s: recovered.append((s, words[table.payload(s)]))) == 1
        assert recovered == [(dead[0], 1234)]
        assert table.pid(dead[0]) == 0
        assert table.reap(lambda s: recovered.append((s, 0))) == 0
    finally:
        if not reaped:
            os.waitpid(child, 0)


def test_a_reused_pid_is_not_the_dead_process(region: tuple[int, memoryview]) -> None:
    _, words = region
    table = make_table(region)
    slot, _ = table.claim()
    # the same pid with another start time: a new process the kernel gave the pid to
    words[table.payload(slot) - 1] = process_start(os.getpid()) + 1
    assert table.is_dead(slot)
    assert table.attached() == []


def test_a_table_from_another_boot_has_every_slot_dead(region: tuple[int, memoryview]) -> None:
    _, words = region
    table = make_table(region)
    slot, _ = table.claim()
    words[FIRST + 1] = boot_id() ^ 1
    assert table.is_dead(slot)
    recovered: list[int] = []
    mine, alone = table.claim(recovered.append)
    assert alone and recovered == [slot]
    assert words[FIRST + 1] == boot_id()
    assert not table.is_dead(mine)


def test_claim_reaps_the_dead_before_answering_alone(region: tuple[int, memoryview]) -> None:
    table = make_table(region)
    child = in_child(lambda: table.claim())
    kill(child)
    recovered: list[int] = []
    _, alone = table.claim(recovered.append)
    assert alone and len(recovered) == 1


def test_a_full_table_says_so(region: tuple[int, memoryview]) -> None:
    table = make_table(region)
    for _ in range(SLOTS):
        table.claim()
    with pytest.raises(AttachTableFullError, match=f"{SLOTS} processes"):
        table.claim()


def test_release_frees_only_this_process_slot(region: tuple[int, memoryview]) -> None:
    table = make_table(region)
    child = in_child(lambda: table.claim())
    try:
        theirs = next(s for s in range(SLOTS) if table.pid(s) == child)
        table.release(theirs)
        assert table.pid(theirs) == child
    finally:
        kill(child)


def test_a_wrong_header_is_refused(region: tuple[int, memoryview]) -> None:
    fd, words = region
    with pytest.raises(HeapCorruptionError, match="magic"):
        make_table(region, format=False).claim()
    make_table(region)
    with pytest.raises(HeapCorruptionError, match="slots"):
        AttachTable(words, FIRST, SLOTS + 1, PAYLOAD, fd).claim()


def test_the_lock_excludes_another_process(region: tuple[int, memoryview]) -> None:
    _, words = region
    table = make_table(region)
    marker = FIRST + table_words(SLOTS, PAYLOAD)

    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        try:
            with table.locked():
                os.write(write, b"x")
                time.sleep(0.3)
                words[marker] = 1  # just before the unlock
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.close(read)
    try:
        table.claim()
        assert words[marker] == 1, "claim() ran while another process held the table's lock"
    finally:
        os.waitpid(child, 0)


def test_the_lock_ignores_flock_on_the_same_file(
    region: tuple[int, memoryview], tmp_path: Path
) -> None:
    fd, _ = region
    table = make_table(region)
    other = os.open(tmp_path / "segment", os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # a heap lock of the flock kind, held
        slot, _ = table.claim()  # must not wait for it
        table.release(slot)
    finally:
        os.close(other)
