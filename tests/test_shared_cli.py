"""``pyalloc shm list|info|check|rm``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalloc import SharedHeap
from pyalloc import control as C
from pyalloc.cli import main
from pyalloc.units import human_bytes


@pytest.fixture
def heap() -> Iterator[SharedHeap]:
    h = SharedHeap.create(f"pyalloc-test-{uuid.uuid4().hex}", 4 << 20)
    yield h
    h.close()
    try:
        h.unlink()
    except FileNotFoundError:
        pass


# Segments of other programs: words, and sizes no pyalloc region has.
@pytest.fixture(params=[1000, 5, 1003], ids=lambda size: f"{size}B")
def foreign(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"pyalloc-test-{uuid.uuid4().hex}"
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write((b"not a heap" * 101)[: request.param])
    yield name
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list_shows_heaps_and_skips_other_segments(
    heap: SharedHeap, foreign: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "shm", "list")
    assert status == 0
    assert heap.name in out and foreign not in out
    line = next(line for line in out.splitlines() if line.startswith(heap.name))
    assert "4.0 MiB" in line and "segregated" in line and line.endswith("unchecked")
    status, out, _ = run(capsys, "shm", "list", "--check")
    line = next(line for line in out.splitlines() if line.startswith(heap.name))
    assert line.split()[1] == "heap" and line.endswith("ok")
    status, out, _ = run(capsys, "shm", "list", "--all")
    assert foreign in out and "not a pyalloc heap" in out


def test_info_says_why_it_waits_when_another_process_holds_the_lock(
    heap: SharedHeap, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pyalloc import SharedHeap\n"
            "h = SharedHeap.attach(sys.argv[1])\n"
            "with h._lock:\n"
            "    print('held', flush=True)\n"
            "    time.sleep(1.5)\n"
            "h.close()\n",
            heap.name,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        status, out, err = run(capsys, "shm", "info", heap.name)
    finally:
        holder.wait(timeout=30)
        holder.stdout.close()  # type: ignore[union-attr]
    assert status == 0 and f"name: {heap.name}" in out  # it waited, then read
    assert err == (
        f"pyalloc: {heap.name}: waiting for its lock, held by process {holder.pid}"
        " (Ctrl-C to give up)\n"
    )
    status, out, err = run(capsys, "shm", "info", heap.name)
    assert status == 0 and err == ""  # no one holds it now: not a word


def test_info_prints_stats_and_names(heap: SharedHeap, capsys: pytest.CaptureFixture[str]) -> None:
    p = heap.malloc(1000)
    heap.names["results"] = p
    status, out, _ = run(capsys, "shm", "info", heap.name)
    assert status == 0
    assert "live_blocks: 2" in out and "named blocks:" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("results"))
    assert line.split()[:2] == ["results", str(p)] and line.endswith(" B")
    status, out, _ = run(capsys, "shm", "info", heap.name, "--json")
    data = json.loads(out)
    assert data["names"] == {"results": p} and data["stats"]["live_blocks"] == 2


def test_check_passes_then_finds_corruption(
    heap: SharedHeap, capsys: pytest.CaptureFixture[str]
) -> None:
    p = heap.malloc(1000)  # a block with a header (not an object in a slab)
    status, out, _ = run(capsys, "shm", "check", heap.name)
    assert status == 0 and "ok, 1 live blocks" in out
    heap.buf[p - 8 : p] = bytes(8)  # wipe the block's header
    status, _, err = run(capsys, "shm", "check", heap.name)
    assert status == 1 and "corrupted" in err
    status, out, err = run(capsys, "shm", "list", "--check")
    line = next(line for line in out.splitlines() if line.startswith(heap.name))
    assert "corrupted" in line
    assert status == 1 and err == f"pyalloc: corrupted: {heap.name}\n"
    status, out, err = run(capsys, "shm", "info", heap.name)
    assert status == 1 and "corrupted" in err
    assert "policy: segregated" in out and "capacity: 4194304" in out  # the control record


def test_commands_refuse_what_is_not_a_heap(
    foreign: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"pyalloc-test-{uuid.uuid4().hex}"
    for action in ("info", "check"):
        status, _, err = run(capsys, "shm", action, foreign)
        assert status == 1 and "not a pyalloc heap" in err
        status, _, err = run(capsys, "shm", action, missing)
        assert status == 1 and "no shared-memory segment" in err
    status, _, err = run(capsys, "shm", "rm", foreign)
    assert status == 1 and "--force" in err
    assert os.path.exists(f"/dev/shm/{foreign}")
    assert run(capsys, "shm", "rm", foreign, "--force")[0] == 0
    assert not os.path.exists(f"/dev/shm/{foreign}")
    assert run(capsys, "shm", "rm", missing)[0] == 1


def test_rm_removes_a_heap(heap: SharedHeap, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "shm", "rm", heap.name)[0] == 0
    with pytest.raises(FileNotFoundError):
        SharedHeap.attach(heap.name)


def test_list_reports_a_pending_recovery(
    heap: SharedHeap, capsys: pytest.CaptureFixture[str]
) -> None:
    heap._lock.acquire()
    heap.meta.store(C.W_PEAK, heap.words[C.W_PEAK])  # a journaled store, then the holder "dies"
    heap._die()
    _, out, _ = run(capsys, "shm", "list")
    assert "recovery pending" in next(line for line in out.splitlines() if heap.name in line)
    status, out, _ = run(capsys, "shm", "check", heap.name)
    assert status == 0
    _, out, _ = run(capsys, "shm", "info", heap.name)
    assert "recoveries: 1" in out


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["shm"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2


def test_runs_as_a_module(heap: SharedHeap) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyalloc.cli", "shm", "check", heap.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and heap.name in done.stdout


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(256 << 20) == "256.0 MiB"
    assert human_bytes(3 << 40) == "3072.0 GiB"


def test_named_blocks_are_listed_in_natural_order(
    heap: SharedHeap, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("block10", "block2", "block1"):
        heap.names[name] = heap.malloc(16)
    status, out, _ = run(capsys, "shm", "info", heap.name)
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  block")]
    assert status == 0 and listed == ["block1", "block2", "block10"]


def test_rm_of_a_missing_name_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"pyalloc-test-{uuid.uuid4().hex}"
    status, _, err = run(capsys, "shm", "rm", missing)
    assert status == 1 and f"no shared-memory segment named {missing!r}" in err


def test_info_on_a_file_here_hints_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyalloc import MappedHeap

    monkeypatch.chdir(tmp_path)
    MappedHeap.create(tmp_path / "data.heap", 1 << 20).close()
    status, _, err = run(capsys, "shm", "info", "data.heap")
    assert status == 1 and "./data.heap" in err
    status, out, _ = run(capsys, "shm", "info", "./data.heap")
    assert status == 0 and "policy: segregated" in out
    (tmp_path / "sub").mkdir()
    for name in ("sub", ".", ".."):  # directories: no heap file to point at
        status, _, err = run(capsys, "shm", "info", name)
        assert status == 1 and "say ./" not in err and err.count("\n") == 1, err


def test_pools_are_listed_inspected_and_removed(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("atomicshm")
    from pyalloc.pool import Pool

    name = f"pyalloc-test-{uuid.uuid4().hex[:12]}"
    pool = Pool.create(name, 64, 100)
    try:
        pool.alloc()
        status, out, _ = run(capsys, "shm", "list")
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert status == 0 and line.split()[1] == "pool" and "1 of 100 blocks" in line
        status, out, _ = run(capsys, "shm", "info", name)
        assert status == 0 and "available: 99" in out
        status, out, _ = run(capsys, "shm", "check", name)
        assert status == 0 and "99 free" in out
        status, _, _ = run(capsys, "shm", "rm", name)  # no --force needed
        assert status == 0 and not os.path.exists(f"/dev/shm/{name}")
    finally:
        pool.close()
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def test_names_starting_with_a_dot_are_refused() -> None:
    for name in (".", "..", ".hidden"):
        with pytest.raises(ValueError, match="not starting with '.'"):
            SharedHeap.create(name, 1 << 20)


def test_rm_removes_what_a_killed_create_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyalloc.cli as cli
    import pyalloc.regions as regions
    from pyalloc.regions import BUILDING_SUFFIX

    # A directory of its own: no other create removes the dead one here.
    monkeypatch.setattr(cli, "SHM_DIR", str(tmp_path))
    monkeypatch.setattr(regions, "_SHM_DIR", str(tmp_path))
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = f".data.{pid}.abcd1234{BUILDING_SUFFIX}"
    live = f".data.{os.getpid()}.abcd1234{BUILDING_SUFFIX}"
    for name in (dead, live):
        (tmp_path / name).write_bytes(b"half")
    status, out, _ = run(capsys, "shm", "list", "--all")
    assert dead in out and live not in out
    status, _, err = run(capsys, "shm", "rm", dead)
    assert status == 0 and err == "" and not (tmp_path / dead).exists()
    status, _, err = run(capsys, "shm", "rm", live)  # its creator runs: a build under way
    assert status == 1 and "running process" in err and (tmp_path / live).exists()
    status, _, err = run(capsys, "shm", "rm", "--force", live)
    assert status == 0 and not (tmp_path / live).exists()


def test_a_directory_is_named_as_one_not_as_an_errno(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = str(tmp_path)
    for argv in (["shm", "info", directory], ["shm", "check", directory]):
        status, out, err = run(capsys, *argv)
        assert (status, out) == (1, "")
        assert err == f"pyalloc: file {directory!r} is a directory, not a heap\n"
    status, _, err = run(capsys, "shm", "rm", directory, "--force")
    assert status == 1 and err == f"pyalloc: file {directory!r} is a directory, not a heap\n"
    assert os.path.isdir(directory)
    status, _, err = run(capsys, "shm", "rm", "")
    assert status == 1 and err == "pyalloc: no shared-memory segment named ''\n"
