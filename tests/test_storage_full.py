"""A heap in a file on a filesystem that fills up: MemoryError, never SIGBUS.

A file-backed heap's file is sparse; a page of it written where the
filesystem has no block to give kills the process with SIGBUS. The heap
reserves the file's blocks (``posix_fallocate``) before the break moves
onto them, so a full filesystem is a MemoryError that leaves the heap as it
was. Each case runs in a child process inside its own mount namespace, on a
4 MiB tmpfs mounted there (as root, or as the root of a user namespace), so
that a SIGBUS shows as the child's death and not the test run's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    r"""
    import os, subprocess, sys, tempfile
    mnt = tempfile.mkdtemp()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    from pyalloc import MappedHeap, SharedHeap
    kind = sys.argv[1]
    if kind == "mapped":
        h = MappedHeap.create(os.path.join(mnt, "big.heap"), 64 << 20)
    else:
        import pyalloc.regions as regions
        regions._SHM_DIR = mnt  # the shared heap's directory, on the small tmpfs
        h = SharedHeap.create("big", 64 << 20)
    p = h.malloc(1000)
    h.view(p)[:4] = b"kept"
    before = h.stats()
    for size in (8 << 20, 5 << 20):
        try:
            r = h.malloc(size)
        except MemoryError as e:
            print("refused:", e)
        else:
            print("served", size, flush=True)
            h.view(r)[:size] = b"y" * size  # the program writes what it was given
    q = h.malloc(1 << 20)  # what fits still fits
    h.view(q)[:] = b"x" * h.usable_size(q)
    h.free(q)
    try:
        h.realloc(p, 6 << 20)
    except MemoryError:
        print("realloc refused")
    assert bytes(h.view(p)[:4]) == b"kept"
    h.check()
    after = h.stats()
    assert after["live_blocks"] == before["live_blocks"], (before, after)
    print("alive")
    """
)


POOL_CHILD = textwrap.dedent(
    r"""
    import os, subprocess, sys, tempfile
    mnt = tempfile.mkdtemp()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    import pyalloc.regions as regions
    regions._SHM_DIR = mnt  # the pools' directory, on the small tmpfs
    from pyalloc.pool import Pool
    try:
        pool = Pool.create("big", 4096, 2048)  # 8 MiB of blocks
    except MemoryError as e:
        print("refused:", e)
    else:
        for _ in range(2048):  # the program writes every block it takes
            pool.view(pool.alloc())[:] = b"y" * 4096
        print("served")
    print("left:", sorted(os.listdir(mnt)))
    small = Pool.create("small", 4096, 256)  # 1 MiB fits
    for _ in range(256):
        small.view(small.alloc())[:] = b"x" * 4096
    small.check()
    print("alive")
    """
)


FULL_CHILD = textwrap.dedent(
    r"""
    import os, subprocess, sys, tempfile
    mnt = tempfile.mkdtemp()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    import pyalloc.regions as regions
    regions._SHM_DIR = mnt
    from pyalloc import MappedHeap, SharedHeap
    fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:  # until the filesystem is full
            os.write(fd, b"z" * 4096)
    except OSError:
        pass
    os.close(fd)
    try:
        if sys.argv[1] == "full-mapped":
            MappedHeap.create(os.path.join(mnt, "h.heap"), 1 << 20)
        else:
            SharedHeap.create("h", 1 << 20)
    except MemoryError as e:
        print("refused:", e)
    print("left:", sorted(os.listdir(mnt)))
    """
)


def run_child(kind: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    prefix = ["unshare", "--user", "--map-root-user", "--mount"]
    if probe.returncode != 0:
        prefix = ["unshare", "--mount"]  # root without user namespaces
        if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
            pytest.skip("this machine allows no mount namespace to mount a small tmpfs in")
    return subprocess.run(
        [*prefix, sys.executable, "-c", CHILDREN.get(kind, CHILD), kind],
        capture_output=True,
        text=True,
        timeout=120,
    )


TRIM_CHILD = textwrap.dedent(
    r"""
    import os, subprocess, sys, tempfile
    mnt = tempfile.mkdtemp()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    import pyalloc.regions as regions
    regions._SHM_DIR = mnt
    from pyalloc import SharedHeap
    h = SharedHeap.create("h", 16 << 20)
    p = h.malloc(3 << 20)
    h.view(p)[:] = b"y" * h.usable_size(p)
    h.free(p)  # the top is trimmed: its pages go back to the filesystem
    print("kept KiB:", os.stat(os.path.join(mnt, "h")).st_blocks // 2)
    fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:  # another file takes what the heap gave back
            os.write(fd, b"z" * 4096)
    except OSError:
        pass
    os.close(fd)
    try:
        q = h.malloc(3 << 20)
    except MemoryError as e:
        print("refused:", e)
    else:
        h.view(q)[:] = b"x" * h.usable_size(q)
        print("served")
    h.check()
    print("alive")
    """
)

CHILDREN = {
    "pool": POOL_CHILD,
    "full-mapped": FULL_CHILD,
    "full-shared": FULL_CHILD,
    "trim": TRIM_CHILD,
}


@pytest.mark.parametrize("kind", ["mapped", "shared"])
def test_a_full_filesystem_is_a_memory_error_not_a_sigbus(kind: str) -> None:
    result = run_child(kind)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = result.stdout.splitlines()
    assert lines[-1] == "alive"
    refused = [line for line in lines if line.startswith("refused:")]
    assert len(refused) == 2, lines
    assert "KiB free of" in refused[0] and "tmp" in refused[0], refused[0]
    assert "realloc refused" in lines


def test_a_pool_too_large_for_its_filesystem_is_refused_at_create() -> None:
    pytest.importorskip("atomicshm")
    result = run_child("pool")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: cannot make a segment of "), lines
    assert "KiB free of 4096 KiB" in lines[0], lines[0]
    assert lines[1] == "left: []"  # neither the name nor a temporary
    assert lines[-1] == "alive"


@pytest.mark.parametrize("kind", ["full-mapped", "full-shared"])
def test_a_create_on_a_full_filesystem_is_a_memory_error(kind: str) -> None:
    # The control record and the journal get their blocks before they are written.
    result = run_child(kind)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    refused, left = result.stdout.splitlines()
    assert refused.startswith("refused: cannot make "), refused
    assert " has 0 KiB free of 4096 KiB" in refused, refused
    assert left == "left: ['filler']"  # neither the heap nor its temporary


def test_growing_again_after_a_trim_reserves_again() -> None:
    # A trim gives the top's pages back and lowers the high-water mark; were
    # the mark left high, growing again would skip the reservation and write
    # to pages the filesystem no longer has.
    result = run_child("trim")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    kept, refused, alive = result.stdout.splitlines()
    assert int(kept.split()[-1]) < 1024, kept
    assert refused.startswith("refused: cannot grow the heap to "), refused
    assert alive == "alive"
