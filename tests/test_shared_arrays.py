"""Arrays by name: h.arrays, in one process and across processes, atomic under kills."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from pyalloc import SharedHeap

np = pytest.importorskip("numpy")


@pytest.fixture
def heap() -> Iterator[SharedHeap]:
    name = f"pyalloc-test-{uuid.uuid4().hex[:12]}"
    h = SharedHeap.create(name, 8 << 20)
    yield h
    h.close()
    os.unlink(f"/dev/shm/{name}")


def test_an_array_set_by_name_is_seen_by_another_attachment(heap: SharedHeap) -> None:
    frames = np.arange(2 * 3 * 4, dtype="uint16").reshape(2, 3, 4)
    heap.arrays["frames"] = frames
    other = SharedHeap.attach(heap.name)
    try:
        seen = other.arrays["frames"]
        assert seen.shape == (2, 3, 4) and seen.dtype == np.dtype("uint16")
        assert (seen == frames).all()
        seen[0, 0, 0] = 999  # zero-copy: the other attachment sees the write
        assert heap.arrays["frames"][0, 0, 0] == 999
    finally:
        del seen
        other.close()
    assert list(heap.arrays) == ["frames"] and "frames" in heap.arrays and len(heap.arrays) == 1
    heap.check()


def test_create_get_or_create_and_delete(heap: SharedHeap) -> None:
    grid = heap.arrays.create("grid", (100, 50), "float64")
    assert grid.shape == (100, 50) and not grid.any()
    grid[3, 4] = 2.5
    with pytest.raises(KeyError):
        heap.arrays.create("grid", (1,), "int8")
    again = heap.arrays.get_or_create("grid", (100, 50), "float64")
    assert again[3, 4] == 2.5
    with pytest.raises(ValueError, match="not float32"):
        heap.arrays.get_or_create("grid", (100, 50), "float32")
    live = heap.stats()["live_blocks"]
    del grid, again
    del heap.arrays["grid"]
    assert "grid" not in heap.arrays and heap.stats()["live_blocks"] < live
    with pytest.raises(KeyError):
        del heap.arrays["grid"]
    heap.check()


def test_replacing_frees_the_old_block_and_objects_are_refused(heap: SharedHeap) -> None:
    heap.arrays["a"] = np.ones(1000)
    blocks = heap.stats()["live_blocks"]
    heap.arrays["a"] = np.zeros(10, "int32")
    assert heap.stats()["live_blocks"] == blocks
    assert heap.arrays["a"].dtype == np.dtype("int32")
    with pytest.raises(TypeError, match="Python objects"):
        heap.arrays["o"] = np.array([object()])
    assert heap.arrays.specs() == {"a": ((10,), "int32")}


class Killed(BaseException):
    """The process writing the array dies here."""


def test_a_process_killed_at_any_store_leaves_the_old_entry_or_the_new(
    heap: SharedHeap,
) -> None:
    heap.arrays["data"] = np.full(10, 7, "int64")
    live = heap.stats()["live_blocks"]
    probe = SharedHeap.attach(heap.name)  # how many stores the replacement makes
    before = probe.meta.stores
    probe.arrays["data"] = np.ones(1000)
    total = probe.meta.stores - before
    probe.arrays["data"] = np.full(10, 7, "int64")
    probe.close()
    assert total > 10
    outcomes = set()
    for k in range(total + 5):
        pid = os.fork()
        if pid == 0:
            try:
                child = SharedHeap.attach(heap.name)
                child.meta.arm(k, Killed)
                child.arrays["data"] = np.ones(1000)
                os._exit(0)  # finished before its k-th store
            except Killed:
                os.kill(os.getpid(), signal.SIGKILL)  # with the lock held, mid-way
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, k
        value = heap.arrays["data"]  # the next locker recovers first
        heap.check()
        if value.shape == (10,):
            assert (value == 7).all(), k
            outcomes.add("old")
        else:
            assert value.shape == (1000,) and (value == 1).all(), k
            outcomes.add("new")
            heap.arrays["data"] = np.full(10, 7, "int64")
        del value
        assert heap.stats()["live_blocks"] == live, k
    assert outcomes == {"old", "new"}


def test_shm_info_lists_the_arrays(heap: SharedHeap, capsys: pytest.CaptureFixture[str]) -> None:
    from pyalloc.cli import main

    heap.arrays["frames"] = np.zeros((2, 3), "uint8")
    assert main(["shm", "info", heap.name]) == 0
    out = capsys.readouterr().out
    assert "arrays:" in out and "frames  uint8  (2, 3)" in out


def test_every_dtype_comes_back_whole_in_another_attachment(heap: SharedHeap) -> None:
    record = np.dtype([("x", "<f8"), ("tag", "S3"), ("pos", ">i2", (2,))], align=True)
    values = {
        "rec": np.array([(1.5, b"abc", (1, -2)), (2.5, b"de", (3, 4))], record),
        "big": np.arange(5, dtype=">u4"),
        "when": np.array(["2020-01-01", "2021-06-30"], "datetime64[D]"),
        "text": np.array(["héllo", "x"]),
        "cplx": np.array([[1 + 2j]], "complex64"),
    }
    for key, value in values.items():
        heap.arrays[key] = value
    other = SharedHeap.attach(heap.name)
    try:
        for key, value in values.items():
            seen = other.arrays[key]
            assert seen.dtype == value.dtype, key
            assert seen.dtype.names == value.dtype.names, key
            assert seen.tobytes() == value.tobytes() and seen.shape == value.shape, key
        assert other.arrays["rec"]["tag"][1] == b"de"
        specs = other.arrays.specs()
        assert specs["big"] == ((5,), ">u4") and specs["when"] == ((2,), "datetime64[D]")
        assert specs["rec"][0] == (2,) and "'names': ['x', 'tag', 'pos']" in specs["rec"][1]
    finally:
        other.close()


def test_a_corrupted_dtype_descriptor_is_reported(heap: SharedHeap) -> None:
    from pyalloc.errors import HeapCorruptionError

    heap.arrays["a"] = np.zeros(4)
    view = memoryview(heap.buf)
    try:
        at = bytes(view).find(b"'<f8'")
        assert at > 0
        view[at : at + 5] = b"'<q9'"  # not a dtype
    finally:
        view.release()
    with pytest.raises(HeapCorruptionError, match="bad dtype descriptor"):
        heap.arrays["a"]


def test_shapes_come_back_as_numpy_makes_them(heap: SharedHeap) -> None:
    heap.arrays["scalar"] = np.float32(3.5)
    assert heap.arrays["scalar"].shape == () and heap.arrays["scalar"][()] == 3.5
    heap.arrays["fortran"] = np.asfortranarray(np.arange(6).reshape(2, 3))
    assert heap.arrays["fortran"].tolist() == [[0, 1, 2], [3, 4, 5]]
    heap.arrays["strided"] = np.arange(10)[::3]
    assert heap.arrays["strided"].tolist() == [0, 3, 6, 9]
    made = heap.arrays.create("sub", (2,), ("f8", (3,)))
    expected = np.zeros((2,), ("f8", (3,)))
    assert made.shape == expected.shape == (2, 3) and made.dtype == expected.dtype
    assert heap.arrays["sub"].shape == (2, 3)
    assert heap.arrays.get_or_create("sub", (2,), ("f8", (3,))).shape == (2, 3)


@pytest.mark.parametrize("shape", [(1 << 31, 1 << 31), (1 << 40, 1 << 40)])
def test_an_array_larger_than_any_heap_is_a_memory_error(
    heap: SharedHeap, shape: tuple[int, int]
) -> None:
    with pytest.raises(MemoryError):
        heap.arrays.create("huge", shape, "uint8")
    assert "huge" not in heap.arrays
    heap.check()


def test_a_shape_may_be_any_integer_and_else_is_a_type_error(heap: SharedHeap) -> None:
    assert heap.ndarray(np.int64(32), "float64").shape == (32,)
    assert heap.ndarray([2, np.int32(3)], "uint8").shape == (2, 3)
    for bad in (1.0, None, "x", (2, 1.5), True):
        with pytest.raises(TypeError):
            heap.ndarray(bad)
    heap.check()
