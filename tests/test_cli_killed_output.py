"""A command killed while it writes its output leaves the old file whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyalloc.trace.generate import generate
from pyalloc.trace.rep import read_trace, write_trace

PYALLOC = [sys.executable, "-m", "pyalloc.cli"]


def _state(directory: Path, target: Path) -> tuple[list[str], int, int]:
    info = os.stat(target)
    return sorted(p.name for p in directory.iterdir()), info.st_size, info.st_mtime_ns


def test_gen_killed_while_writing_leaves_the_old_trace(tmp_path: Path) -> None:
    target = tmp_path / "t.rep.gz"
    old = generate("uniform", ops=300, seed=7)
    write_trace(old, target)
    before = target.read_bytes()
    idle = _state(tmp_path, target)
    command = [*PYALLOC, "gen", "uniform", "--ops", "300000", "--seed", "8", "-o", str(target)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The kill lands as soon as the write shows: a new file in the
        # directory or a change to the target, whichever way it writes.
        deadline = time.monotonic() + 120
        while _state(tmp_path, target) == idle and child.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "gen finished before it could be killed"
    assert target.read_bytes() == before
    assert read_trace(target).ops == old.ops
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".t.rep.gz.")]
    assert left, "the killed write left no temporary, so nothing below is tested"

    # The next write to the target removes what the killed writer left, and
    # only that: a live writer's temporary and other files stay.
    live = tmp_path / f".t.rep.gz.{os.getpid()}.abcd1234.part.gz"
    live.write_bytes(b"a write under way")
    other = tmp_path / f".u.rep.gz.{child.pid}.abcd1234.part.gz"  # its writer is dead too
    other.write_bytes(b"another target's")
    new = generate("uniform", ops=50, seed=9)
    write_trace(new, target)
    assert read_trace(target).ops == new.ops
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t.rep.gz", live.name, other.name])
