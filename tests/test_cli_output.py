"""The command line's outputs: whole files or none, and one line when writing fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyalloc.files import replacing
from pyalloc.trace.generate import generate
from pyalloc.trace.rep import read_trace, write_trace

PYALLOC = [sys.executable, "-m", "pyalloc.cli"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "t.rep"
    old = generate("uniform", ops=200, seed=1)
    write_trace(old, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), replacing(target) as temporary:
        Path(temporary).write_bytes(b"half of a new fi")
        raise RuntimeError("killed here")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.rep"]  # no temporary left


def test_a_symbolic_link_is_followed_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.rep"
    real.write_bytes(b"old")
    link = tmp_path / "link.rep"
    link.symlink_to(real.name)
    with replacing(link) as temporary:
        Path(temporary).write_bytes(b"new")
    assert link.is_symlink() and os.readlink(link) == real.name
    assert real.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.rep", "real.rep"]


def test_a_named_pipe_is_written_into_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with replacing(fifo) as temporary:
        assert temporary == str(fifo)
        Path(temporary).write_bytes(b"through the pipe")
    out, _ = reader.communicate(timeout=60)
    assert out == b"through the pipe"
    assert fifo.is_fifo()


def test_gen_into_a_full_device_says_so_and_leaves_the_device(tmp_path: Path) -> None:
    result = subprocess.run(
        [*PYALLOC, "gen", "uniform", "--ops", "500", "-o", "/dev/full"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pyalloc: cannot write /dev/full: No space left on device"
    ]
    assert not os.path.isfile("/dev/full")  # still the device


def test_gen_replaces_its_output_whole(tmp_path: Path) -> None:
    target = tmp_path / "t.rep.gz"
    for seed in (1, 2):
        result = subprocess.run(
            [*PYALLOC, "gen", "uniform", "--ops", "500", "--seed", str(seed), "-o", str(target)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert read_trace(target).ops == generate("uniform", ops=500, seed=seed).ops
    assert [p.name for p in tmp_path.iterdir()] == ["t.rep.gz"]


def test_output_to_a_full_device_is_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.rep"
    write_trace(generate("uniform", ops=300, seed=2), trace)
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*PYALLOC, "replay", str(trace), "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pyalloc: cannot write the output: No space left on device"
    ]


def test_output_to_a_closed_pipe_is_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.rep"
    write_trace(generate("uniform", ops=300, seed=3), trace)
    # Enough output to fill the pipe: the same trace many times.
    args = [*PYALLOC, "replay", *[str(trace)] * 400, "--json"]
    read, write = os.pipe()
    child = subprocess.Popen(args, stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    os.read(read, 10)
    os.close(read)  # the reader goes away, as `| head -c 10` does
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 1
    assert stderr.strip().splitlines() == [
        "pyalloc: the output was closed before everything was written"
    ]
    assert "Traceback" not in stderr
