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
        [*prefix, sys.executable, "-c", CHILD, kind],
        capture_output=True,
        text=True,
        timeout=120,
    )


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
