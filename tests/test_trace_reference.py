"""Reference allocators: the C semantics the replay loop relies on."""

from __future__ import annotations

import pytest

from pyalloc.trace.reference import GlibcMalloc, MultiprocessingHeap


def test_glibc_malloc_zero_is_unique_and_freeable() -> None:
    libc = GlibcMalloc()
    first, second = libc.malloc(0), libc.malloc(0)
    assert first and second and first != second
    libc.free(first)
    libc.free(second)
    libc.free(0)


def test_glibc_realloc_keeps_contents_and_follows_c() -> None:
    libc = GlibcMalloc()
    pointer = libc.realloc(0, 64)  # realloc(NULL, n) is malloc(n)
    assert pointer
    libc.view(pointer, 64)[:5] = b"hello"
    grown = libc.realloc(pointer, 1 << 16)
    assert bytes(libc.view(grown, 5)) == b"hello"
    assert libc.usable_size(grown) >= 1 << 16
    assert libc.realloc(grown, 0) == 0  # frees; NULL comes back as 0, not None


def test_multiprocessing_heap_semantics() -> None:
    heap = MultiprocessingHeap()
    empty = heap.malloc(0)
    block = heap.realloc(0, 10)
    assert empty and block and empty != block
    heap.view(block)[:3] = b"xyz"
    assert heap.realloc(block, 100_000) == block
    assert bytes(heap.view(block)[:3]) == b"xyz"
    assert heap.realloc(block, 0) == 0
    with pytest.raises(ValueError, match="not a live block"):
        heap.free(block)
    heap.free(0)
    heap.free(empty)
    assert heap.live_blocks == 0
    heap.close()


def test_multiprocessing_heap_deferred_free_is_merged() -> None:
    heap = MultiprocessingHeap()
    keep = heap.malloc(64)
    block = heap.malloc(64)
    stdlib = heap.heap
    # While the stdlib heap's lock is held, its free parks the block.
    stdlib._lock.acquire()
    try:
        heap.free(block)
        assert stdlib._pending_free_blocks
    finally:
        stdlib._lock.release()
    heap.free(keep)  # the next free merges the parked block as well
    assert not stdlib._pending_free_blocks
    assert heap.live_blocks == 0
    heap.close()


def test_multiprocessing_heap_close_flushes_pending() -> None:
    heap = MultiprocessingHeap()
    block = heap.malloc(128)
    heap.malloc(32)
    stdlib = heap.heap
    stdlib._lock.acquire()
    try:
        heap.free(block)
    finally:
        stdlib._lock.release()
    assert stdlib._pending_free_blocks
    heap.close()
    assert not stdlib._pending_free_blocks
    assert heap.live_blocks == 0
