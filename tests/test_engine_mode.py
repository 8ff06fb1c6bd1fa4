"""The two engine modes: which one runs, that both leave the same bytes, and
that processes of either mode share one heap.

``./dev test`` runs the suite twice: compiled (with ``PYALLOC_EXPECT_COMPILED=1``,
so that a broken build fails here instead of passing interpreted) and with
``PYALLOC_PURE_PYTHON=1``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest

import pyalloc
from pyalloc import _engine

ROOT = Path(pyalloc.__file__).parent


def engine_files() -> dict[str, str]:
    # Some engine modules (the pool) are imported only when used: import them all.
    return {name: importlib.import_module(name).__file__ or "" for name in _engine.ENGINE_MODULES}


def test_the_engine_runs_in_the_mode_asked_for() -> None:
    files = engine_files()
    if os.environ.get(_engine.PURE_ENV) == "1":
        assert not pyalloc.COMPILED
        assert all(f.endswith(".py") for f in files.values()), files
    elif os.environ.get("PYALLOC_EXPECT_COMPILED") == "1":
        assert pyalloc.COMPILED, pyalloc.ENGINE
        suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
        assert all(f.endswith(suffixes) for f in files.values()), files
    else:
        pytest.skip("no engine mode asked for (PYALLOC_PURE_PYTHON or PYALLOC_EXPECT_COMPILED)")
    assert pyalloc.COMPILED == all(not f.endswith(".py") for f in files.values())


def make_package(tmp_path: Path, digest_of_built: str | None) -> Path:
    """A package directory with every engine module as a .py and an 'extension'."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    digests = {}
    for name in _engine.ENGINE_MODULES:
        stem = tmp_path.joinpath(*name.split(".")[1:])
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".py").write_text(f"# {name}\n")
        Path(str(stem) + suffix).write_bytes(b"")
        digests[name] = _engine.source_digest(str(stem))
    if digest_of_built is not None:
        digests[_engine.ENGINE_MODULES[0]] = digest_of_built
    (tmp_path / _engine.DIGESTS_FILE).write_text(json.dumps(digests))
    return tmp_path


def test_extensions_built_from_these_sources_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_engine.PURE_ENV, raising=False)
    assert _engine.choose(str(make_package(tmp_path, None))) == (True, "compiled")


def test_an_extension_older_than_its_source_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_engine.PURE_ENV, raising=False)
    package = make_package(tmp_path, "0" * 64)
    with pytest.warns(_engine.StaleEngineWarning, match="older than pyalloc.layout's source"):
        compiled, why = _engine.choose(str(package))
    assert not compiled and "older" in why


def test_an_edited_source_makes_the_extension_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_engine.PURE_ENV, raising=False)
    package = make_package(tmp_path, None)
    (package / "heap.py").write_text("# edited\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert not _engine.choose(str(package))[0]
    assert any(issubclass(w.category, _engine.StaleEngineWarning) for w in seen)


def test_a_missing_extension_or_the_environment_means_interpreted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = make_package(tmp_path, None)
    monkeypatch.setenv(_engine.PURE_ENV, "1")
    assert _engine.choose(str(package)) == (False, f"{_engine.PURE_ENV} is set")
    monkeypatch.delenv(_engine.PURE_ENV)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    Path(str(package / "buddy") + suffix).unlink()
    assert _engine.choose(str(package)) == (False, "the engine was not compiled")


# -- the same bytes in both modes -------------------------------------------------------

# Runs in a child process in the mode its environment chooses: a heap made
# with fixed secrets goes through a fixed mixture of operations; prints the
# digest of its region up to the break, then the mode.
SCRIPT = r"""
import random, secrets, hashlib, sys
rng = random.Random(5)
secrets.randbits = rng.getrandbits
import pyalloc
from pyalloc import Heap
policy = sys.argv[1]
h = Heap(1 << 20, policy=policy, cache=(policy == "segregated"))
ops = random.Random(7)
live = []
for _ in range(3000):
    r = ops.random()
    if live and r < 0.4:
        h.free(live.pop(ops.randrange(len(live))))
    elif live and r < 0.55:
        i = ops.randrange(len(live))
        q = h.realloc(live[i], ops.randrange(0, 5000))
        if q:
            live[i] = q
        else:
            live.pop(i)
    else:
        live.append(h.malloc(ops.choice([ops.randrange(0, 130), ops.randrange(0, 9000)])))
h.check()
end = h.stats()["peak_heap_bytes"]
print(hashlib.sha256(bytes(h.region.buf[:end])).hexdigest(), pyalloc.COMPILED)
"""


def run_in_mode(pure: bool, script: str, *args: str) -> list[str]:
    """The words ``script`` prints, run in a child with the engine mode chosen."""
    env = {k: v for k, v in os.environ.items() if k != _engine.PURE_ENV}
    if pure:
        env[_engine.PURE_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()


def run_mode(pure: bool, *args: str) -> tuple[str, bool]:
    out = run_in_mode(pure, SCRIPT, *args)
    return out[0], out[1] == "True"


def needs_compiled() -> None:
    if not _engine.built(str(ROOT))[0]:
        pytest.skip("the compiled engine is not built on this machine")


@pytest.mark.parametrize("policy", ["segregated", "tlsf", "best-fit"])
def test_both_modes_leave_the_same_bytes(policy: str) -> None:
    needs_compiled()
    compiled_digest, compiled = run_mode(False, policy)
    pure_digest, pure_compiled = run_mode(True, policy)
    assert compiled and not pure_compiled
    assert compiled_digest == pure_digest


SHARER = r"""
import sys
import pyalloc
from pyalloc import SharedHeap
h = SharedHeap.attach(sys.argv[1])
mine = [h.malloc(n) for n in range(1, 400, 7)]
for p in mine:
    h.view(p)[:1] = bytes([len(mine) & 0xFF])
theirs = h.names["from-parent"]
assert bytes(h.view(theirs)[:5]) == b"hello"
h.free(theirs)
for p in mine[::2]:
    h.free(p)
h.names["from-child"] = mine[1]
h.check()
print(pyalloc.COMPILED)
h.close()
"""


@pytest.mark.parametrize("child_pure", [True, False], ids=["child-interpreted", "child-compiled"])
def test_processes_of_either_mode_share_one_heap(child_pure: bool) -> None:
    needs_compiled()
    from pyalloc import SharedHeap

    name = f"pyalloc-test-{uuid.uuid4().hex[:12]}"
    h = SharedHeap.create(name, 1 << 20)
    try:
        p = h.malloc(64)
        h.view(p)[:5] = b"hello"
        h.names["from-parent"] = p
        mine = [h.malloc(n) for n in range(10, 2000, 97)]
        assert run_in_mode(child_pure, SHARER, name) == [str(not child_pure)]
        q = h.names["from-child"]
        assert h.usable_size(q) >= 8
        for p in mine:
            h.free(p)
        h.check()
    finally:
        h.close()
        os.unlink(f"/dev/shm/{name}")


def test_digest_covers_the_pxd(tmp_path: Path) -> None:
    stem = tmp_path / "m"
    stem.with_suffix(".py").write_text("x = 1\n")
    before = _engine.source_digest(str(stem))
    stem.with_suffix(".pxd").write_text("cdef long x\n")
    assert _engine.source_digest(str(stem)) != before
    assert before == hashlib.sha256(b".py\0x = 1\n").hexdigest()


def test_another_system_is_told_in_one_line() -> None:
    code = "import sys; sys.platform = 'darwin'; import pyalloc"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: pyalloc runs on Linux only (it uses /dev/shm, /proc, madvise(MADV_REMOVE)"
        " and process-shared robust mutexes); this system is 'darwin'"
    )
