"""A lock-free pool of fixed-size blocks for threads and processes.

A pool hands out blocks of one size in constant time and takes no lock: its
free blocks form a stack (a Treiber stack) whose head word is changed only by
compare-and-swap, so any number of threads, and processes that share the
region by name, allocate and free at once.

Glossary
--------

block
    ``stride`` bytes, 16-byte aligned, of which the first ``block_size`` are
    the caller's. Block ``i`` starts at ``blocks + i * stride``.
pointer
    The byte offset of a block's start from the region's start. It is never
    0 (the header comes first) and means the same in every process.
index
    A block's number, ``0 <= i < count``. ``EMPTY`` (``2**32 - 1``) is the
    index of no block.
head word
    ``tag << 32 | index``: the block on top of the free stack, and a counter
    bumped (mod ``2**32``) by every push and pop. The tag is what defeats ABA:
    a pop that read the head, slept while others popped the top, popped the
    next one and pushed the first back, finds the same index but a new tag,
    and its compare-and-swap fails instead of installing a block that is in
    use.
link word
    One per block, outside the blocks: ``depth << 32 | next``, where ``next``
    is the index under this block on the stack and ``depth`` the number of
    blocks from this one to the bottom, itself included. A link is written
    only by the one who owns the block, just before pushing it.
state byte
    One per block: ``FREE`` or ``ALLOCATED``, changed only by compare-and-swap.
    It is what makes a double free fail even when two frees race: exactly one
    of them turns ``ALLOCATED`` into ``FREE``.

Layout of the region (offsets in bytes)::

    0     header: 16 words                magic, version, sizes, offsets, checksum
    128   head word                       alone on its 128-byte stretch
    256   links[count]                    8 bytes each
    ..    states[count]                   1 byte each
    ..    blocks[count]                   stride bytes each, 64-byte aligned start
    end

Why the links live outside the blocks: a pop reads the link of the block it
saw on top *before* its compare-and-swap, and by then that block may belong to
someone who is writing into it. With links in a separate array the stale read
is still a link this pool wrote (its CAS then fails on the tag); with links in
the block it would be the owner's payload. A caller who writes into a freed
block therefore cannot corrupt the free stack either.

Operations (every access is a sequentially consistent atomic)::

    alloc:  h = head; i = index(h); n = next(links[i])
            CAS head h -> (tag(h) + 1, n)      retry with the value seen if it failed
            CAS state[i] FREE -> ALLOCATED     return blocks + i * stride
    free:   CAS state[i] ALLOCATED -> FREE     anything else: DoubleFreeError
            h = head; links[i] = (depth(top) + 1, index(h))
            CAS head h -> (tag(h) + 1, i)      retry with the value seen if it failed

Invariants, with ``stack`` the blocks reachable from the head word::

    available() == depth(links[top]) == len(stack)          (0 when top == EMPTY)
    depth(links[i]) == depth(links[next(links[i])]) + 1     for i on the stack
    i in stack  =>  state[i] == FREE
    free + allocated + stranded == count

and, when no operation is in flight (a quiescent pool), ``state[i] == FREE``
if and only if ``i`` is on the stack. ``available()`` needs no counter of its
own: the depth stored with the top block is exact at every instant, and a
process that dies cannot leave it wrong.

A process that dies (SIGKILL) while holding blocks leaks them: they stay
``ALLOCATED`` and nobody can free them. One that dies between the two atomic
steps of ``alloc`` or ``free`` leaves that one block ``FREE`` but off the
stack; ``check()`` counts it as *stranded*. Either way the free stack is whole
and the pool goes on working for everyone else.

The tag has 32 bits, so ABA is defeated unless one pop stays suspended between
its read of the head and its CAS while exactly a multiple of ``2**32`` other
pushes and pops complete.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from .atomics import AtomicU64, AtomicView
from .errors import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError
from .regions import AnonymousRegion, Region, SharedRegion, unlink_shared

# --- Tunables and the constants derived from them --------------------------

INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1
TAG_ONE = 1 << INDEX_BITS  # adding it to a head word bumps the tag
TAG_MASK = INDEX_MASK << INDEX_BITS
EMPTY = INDEX_MASK  # the index of no block: the bottom of the stack
MAX_COUNT = EMPTY - 1  # every index and every depth fits in 32 bits

BLOCK_ALIGN = 16
LINE = 64  # a cache line; the blocks start on one
HEADER_WORDS = 16
HEADER_BYTES = HEADER_WORDS * 8
HEAD_OFFSET = HEADER_BYTES
LINKS_OFFSET = HEAD_OFFSET + 128  # the head shares its 128 bytes with nothing

STATE_FREE = 1
STATE_ALLOCATED = 2  # 0 never appears in a formatted pool: it means "not a pool"

MAGIC = int.from_bytes(b"pyaPOOL\x01", "little")
VERSION = 1

assert EMPTY > MAX_COUNT and TAG_ONE & INDEX_MASK == 0
assert HEAD_OFFSET % 8 == 0 and LINKS_OFFSET % LINE == 0
assert LINE % BLOCK_ALIGN == 0

# Header word numbers.
_H_MAGIC = 0
_H_VERSION = 1
_H_BLOCK_SIZE = 2
_H_STRIDE = 3
_H_COUNT = 4
_H_HEAD = 5
_H_LINKS = 6
_H_STATES = 7
_H_BLOCKS = 8
_H_END = 9
_H_CHECKSUM = 10  # over words 0..9
_H_USED = 11
assert _H_USED <= HEADER_WORDS


def _round_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) & -alignment


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where everything is, derived from block_size and count alone."""

    block_size: int
    stride: int
    count: int
    head: int
    links: int
    states: int
    blocks: int
    end: int

    @classmethod
    def for_blocks(cls, block_size: object, count: object) -> _Layout:
        for what, value in (("block_size", block_size), ("count", count)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{what} must be an int, not {type(value).__name__}")
        assert isinstance(block_size, int) and isinstance(count, int)
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be between 1 and {MAX_COUNT}, got {count}")
        stride = _round_up(block_size, BLOCK_ALIGN)
        states = LINKS_OFFSET + 8 * count
        blocks = _round_up(states + count, LINE)
        end = blocks + stride * count
        return cls(block_size, stride, count, HEAD_OFFSET, LINKS_OFFSET, states, blocks, end)

    def header_words(self) -> list[int]:
        words = [0] * _H_USED
        words[_H_MAGIC] = MAGIC
        words[_H_VERSION] = VERSION
        words[_H_BLOCK_SIZE] = self.block_size
        words[_H_STRIDE] = self.stride
        words[_H_COUNT] = self.count
        words[_H_HEAD] = self.head
        words[_H_LINKS] = self.links
        words[_H_STATES] = self.states
        words[_H_BLOCKS] = self.blocks
        words[_H_END] = self.end
        words[_H_CHECKSUM] = _checksum(words[:_H_CHECKSUM])
        return words

    def invalid(self, ptr: int) -> InvalidPointerError:
        """The error for a pointer that is not the start of a block."""
        if ptr == 0:
            return InvalidPointerError("0 is the NULL pointer")
        span = self.stride * self.count
        offset = ptr - self.blocks
        if offset < 0 or offset >= span:
            return InvalidPointerError(
                f"{ptr} is outside this pool's blocks [{self.blocks}, {self.blocks + span})"
            )
        return InvalidPointerError(
            f"{ptr} is not the start of a block (blocks start at {self.blocks} "
            f"and are {self.stride} bytes apart)"
        )

    def bad_top(self, index: int) -> BaseException:
        """The error for a head or link index that names no block."""
        if index == EMPTY:
            return MemoryError(
                f"pool exhausted: all {self.count} blocks of {self.block_size} bytes are in use"
            )
        return HeapCorruptionError(f"free-stack index {index} is out of range 0..{self.count}")


def _checksum(words: list[int]) -> int:
    data = b"".join(w.to_bytes(8, sys.byteorder) for w in words)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), sys.byteorder)


def _read_layout(region: Region, where: str) -> _Layout:
    """Validate a pool header without writing; return the layout it describes."""
    if region.size < HEADER_BYTES:
        raise ValueError(f"{where} is not a pyalloc pool: {region.size} bytes hold no pool header")
    with AtomicView(region.buf) as view:
        magic = view.load_u64(0)  # acquire: pairs with the store that publishes a new pool
    words = [magic] + [region.words[i] for i in range(1, _H_USED)]
    if words[_H_MAGIC] != MAGIC:
        raise ValueError(f"{where} is not a pyalloc pool (no pool magic at offset 0)")
    if words[_H_VERSION] != VERSION:
        raise ValueError(
            f"{where} is a pool of format version {words[_H_VERSION]}; "
            f"this pyalloc reads version {VERSION}"
        )
    if words[_H_CHECKSUM] != _checksum(words[:_H_CHECKSUM]):
        raise HeapCorruptionError(f"{where}: the pool header fails its checksum")
    try:
        layout = _Layout.for_blocks(words[_H_BLOCK_SIZE], words[_H_COUNT])
    except ValueError as exc:
        raise HeapCorruptionError(f"{where}: the pool header is invalid: {exc}") from None
    if layout.header_words() != words:
        raise HeapCorruptionError(f"{where}: the pool header's offsets do not match its sizes")
    if layout.end > region.size:
        raise HeapCorruptionError(
            f"{where}: the pool needs {layout.end} bytes but the region has {region.size}"
        )
    return layout


def _hot_paths(
    view: AtomicView, layout: _Layout
) -> tuple[Callable[[], int], Callable[[int], None]]:
    """Build ``alloc`` and ``free`` for one mapping of a pool.

    They are closures over the view's bound methods and the layout's numbers
    rather than methods, because every ``self.x`` costs an attribute lookup:
    an alloc/free pair took 1.30 us as methods and 1.04 us as closures when
    this was written (``benchmarks/pool_bench.py`` prints the pair's cost).
    """
    head = view.cell_u64(layout.head)
    load_head = head.load
    cas_head = head.cas
    load_link = view.load_u64
    store_link = view.store_u64
    cas_state = view.cas_u8
    links = layout.links
    states = layout.states
    blocks = layout.blocks
    stride = layout.stride
    count = layout.count

    def alloc() -> int:
        """Take a free block and return its pointer; MemoryError when none is left."""
        h = load_head()
        while True:
            index = h & INDEX_MASK
            if index >= count:
                raise layout.bad_top(index)
            desired = ((h + TAG_ONE) & TAG_MASK) | (load_link(links + (index << 3)) & INDEX_MASK)
            seen = cas_head(h, desired)
            if seen == h:
                break
            h = seen
        state = cas_state(states + index, STATE_FREE, STATE_ALLOCATED)
        if state != STATE_FREE:
            raise HeapCorruptionError(
                f"block {index} was on the free stack with state {state}, not FREE"
            )
        return blocks + index * stride

    def free(ptr: int) -> None:
        """Give back the block at ``ptr``; DoubleFreeError if it is free already."""
        # Inlines Pool._index_of.
        if type(ptr) is not int:
            ptr = _as_int(ptr)
        offset = ptr - blocks
        index = offset // stride
        if offset < 0 or index >= count or offset - index * stride:
            raise layout.invalid(ptr)
        state = cas_state(states + index, STATE_ALLOCATED, STATE_FREE)
        if state != STATE_ALLOCATED:
            if state == STATE_FREE:
                raise DoubleFreeError(f"block at {ptr} is already free")
            raise HeapCorruptionError(f"block at {ptr} has state {state}")
        # Push. The link is ours to write until the CAS publishes it.
        slot = links + (index << 3)
        h = load_head()
        while True:
            top = h & INDEX_MASK
            if top < count:
                depth = (load_link(links + (top << 3)) >> INDEX_BITS) + 1
            elif top == EMPTY:
                depth = 1
            else:
                raise layout.bad_top(top)
            store_link(slot, (depth << INDEX_BITS) | top)
            seen = cas_head(h, ((h + TAG_ONE) & TAG_MASK) | index)
            if seen == h:
                return
            h = seen

    return alloc, free


@dataclass(frozen=True, slots=True)
class PoolCheck:
    """What ``Pool.check()`` counted.

    ``free``: blocks on the free stack (== ``available()``); ``allocated``:
    blocks whose state is ALLOCATED, including those held by processes that
    have died; ``stranded``: blocks whose state is FREE but which are not on
    the stack, left by a process that died inside ``alloc`` or ``free``.
    ``free + allocated + stranded == count``.
    """

    free: int
    allocated: int
    stranded: int


class Pool:
    """``count`` blocks of ``block_size`` bytes, allocated and freed without a lock.

    ``Pool(block_size, count)`` lives in private memory and is shared by the
    threads of this process; ``Pool.create(name, ...)`` lives in a named POSIX
    shared-memory segment that other processes open with ``Pool.attach(name)``
    (or receive pickled, which sends the name).

    ``alloc()`` returns the pointer of a free block; ``free(ptr)`` gives it
    back; ``view(ptr)`` is the block's bytes; ``available()`` counts the free
    blocks; ``check()`` verifies a quiescent pool. ``alloc`` and ``free`` are
    per-instance functions (see ``_hot_paths``), callable from any thread.

    Edge cases:

    - ``alloc()`` on an exhausted pool raises ``MemoryError``;
    - ``free(p)`` and ``view(p)`` with ``p`` not an int (``bool`` included)
      raise ``TypeError``; 0, a negative number, an offset outside the blocks
      or inside a block raise ``InvalidPointerError``; freeing a free block
      raises ``DoubleFreeError``, also when two frees of one block race;
    - every call that raises has changed nothing.
    """

    alloc: Callable[[], int]
    free: Callable[[int], None]
    _region: Region
    _view: AtomicView
    _head: AtomicU64
    _bytes: memoryview
    _name: str | None

    def __init__(self, block_size: int, count: int) -> None:
        layout = _Layout.for_blocks(block_size, count)
        region = AnonymousRegion(layout.end)
        try:
            self._format(region, layout)
        except BaseException:
            region.close()
            raise
        self._open(region, layout, None)

    @classmethod
    def create(cls, name: str, block_size: int, count: int) -> Self:
        """Make a pool in a new shared-memory segment ``name`` (FileExistsError if taken).

        The segment's storage is reserved whole: MemoryError, naming the
        filesystem and its free space, when ``/dev/shm`` cannot hold it.
        """
        layout = _Layout.for_blocks(block_size, count)
        # Every block is reserved up front: a pool never grows, and a block
        # written where the filesystem has no page to give would be a SIGBUS.
        region = SharedRegion.create(
            name, layout.end, lambda r: cls._format(r, layout), reserve_all=True
        )
        try:
            pool = cls.__new__(cls)
            pool._open(region, layout, name)
        except BaseException:
            region.close()
            region.unlink()
            raise
        return pool

    @classmethod
    def attach(cls, name: str) -> Self:
        """Open the pool in shared-memory segment ``name``; everything is read from its bytes.

        A segment that is not a pool raises ``ValueError``; a pool whose
        header fails its checks raises ``HeapCorruptionError``. Neither writes.
        """
        region = SharedRegion.attach(name)
        try:
            layout = _read_layout(region, f"shared-memory segment {name!r}")
            pool = cls.__new__(cls)
            pool._open(region, layout, name)
        except BaseException:
            region.close()
            raise
        return pool

    @staticmethod
    def _format(region: Region, layout: _Layout) -> None:
        """Write an empty pool: every block FREE and on the stack, block 0 on top."""
        count = layout.count
        words = region.words
        first_link = layout.links // 8
        # Block i links to i + 1; i is at depth count - i.
        words[first_link : first_link + count] = array(
            "Q", [((count - i) << INDEX_BITS) | (i + 1) for i in range(count)]
        )
        words[first_link + count - 1] = (1 << INDEX_BITS) | EMPTY
        region.buf[layout.states : layout.states + count] = bytes([STATE_FREE]) * count
        header = layout.header_words()
        words[layout.head // 8] = 0  # tag 0, block 0 on top
        for i in range(1, _H_USED):
            words[i] = header[i]
        # The magic goes last, atomically, so that a pool is never seen half made.
        with AtomicView(region.buf) as view:
            view.store_u64(0, header[_H_MAGIC])

    def _open(self, region: Region, layout: _Layout, name: str | None) -> None:
        self._region = region
        self._name = name
        self._layout = layout
        self._block_size = layout.block_size
        self._stride = layout.stride
        self._count = layout.count
        self._links = layout.links
        self._states = layout.states
        self._blocks = layout.blocks
        self._closed = False
        self._bind()

    def _bind(self) -> None:
        view = AtomicView(self._region.buf)
        self._view = view
        self._head = view.cell_u64(self._layout.head)
        self._bytes = memoryview(self._region.buf)
        self.alloc, self.free = _hot_paths(view, self._layout)

    def available(self) -> int:
        """The number of free blocks, exact at one instant even while others work."""
        self._require_open()
        head = self._head
        h = head.load()
        while True:
            top = h & INDEX_MASK
            if top == EMPTY:
                return 0
            if top >= self._count:
                raise self._layout.bad_top(top)
            depth: int = self._view.load_u64(self._links + (top << 3)) >> INDEX_BITS
            # The top's link cannot change while the head word stays the same.
            again = head.load()
            if again == h:
                return depth
            h = again

    def view(self, ptr: int) -> memoryview:
        """The ``block_size`` bytes of the allocated block at ``ptr``, writable."""
        if self._closed:
            _closed()
        index = self._index_of(ptr)
        if self._view.load_u8(self._states + index) != STATE_ALLOCATED:
            raise InvalidPointerError(f"block at {ptr} is not allocated")
        return self._bytes[ptr : ptr + self._block_size]

    # --- Pointers and errors ----------------------------------------------

    def _index_of(self, ptr: object) -> int:
        """The index of the block that starts at ``ptr``, or raise."""
        if type(ptr) is not int:
            ptr = _as_int(ptr)
        assert isinstance(ptr, int)
        offset = ptr - self._blocks
        index = offset // self._stride
        if offset < 0 or index >= self._count or offset - index * self._stride:
            raise self._layout.invalid(ptr)
        return index

    # --- The steps of a pop, one at a time (for tests of the ABA defence) ---

    def _pop_read(self) -> tuple[int, int]:
        """First half of ``alloc``: return (head word seen, head word to install)."""
        h = self._head.load()
        index = h & INDEX_MASK
        if index >= self._count:
            raise self._layout.bad_top(index)
        link = self._view.load_u64(self._links + (index << 3))
        return h, ((h + TAG_ONE) & TAG_MASK) | (link & INDEX_MASK)

    def _pop_commit(self, seen: int, desired: int) -> int | None:
        """Second half of ``alloc``: the pointer if the CAS succeeded, else None."""
        if self._head.cas(seen, desired) != seen:
            return None
        index = seen & INDEX_MASK
        if self._view.cas_u8(self._states + index, STATE_FREE, STATE_ALLOCATED) != STATE_FREE:
            raise HeapCorruptionError(f"block {index} was on the free stack but not FREE")
        return self._blocks + index * self._stride

    # --- Inspection -------------------------------------------------------

    def check(self) -> PoolCheck:
        """Verify the header, the free stack and the state bytes; meant for a quiescent pool.

        Walks the stack from the head (at most ``count`` steps, so a cycle is
        found, not followed), requires every block on it to be FREE and the
        depths to count down to 1 at the bottom, and requires every state
        byte to be FREE or ALLOCATED. Raises ``HeapCorruptionError`` on the
        first disagreement; returns the counts otherwise.
        """
        self._require_open()
        _read_layout(self._region, repr(self))
        count = self._count
        load = self._view.load_u64
        states = bytes(self._bytes[self._states : self._states + count])
        on_stack = bytearray(count)
        length = 0
        expected_depth = -1
        index = self._head.load() & INDEX_MASK
        while index != EMPTY:
            if index >= count:
                raise HeapCorruptionError(f"free stack reaches index {index}, out of range")
            if on_stack[index]:
                raise HeapCorruptionError(f"free stack has a cycle through block {index}")
            on_stack[index] = 1
            length += 1
            if states[index] != STATE_FREE:
                raise HeapCorruptionError(
                    f"block {index} is on the free stack with state {states[index]}"
                )
            link = load(self._links + (index << 3))
            depth = link >> INDEX_BITS
            if expected_depth >= 0 and depth != expected_depth:
                raise HeapCorruptionError(
                    f"block {index} has depth {depth} on the free stack, expected {expected_depth}"
                )
            expected_depth = depth - 1
            index = link & INDEX_MASK
        if length and expected_depth != 0:
            raise HeapCorruptionError(
                f"the free stack holds {length} blocks but its depths do not end at 1"
            )
        free = states.count(STATE_FREE)
        allocated = states.count(STATE_ALLOCATED)
        if free + allocated != count:
            bad = next(i for i, s in enumerate(states) if s not in (STATE_FREE, STATE_ALLOCATED))
            raise HeapCorruptionError(f"block {bad} has unknown state {states[bad]}")
        if self.available() != length:
            raise HeapCorruptionError(
                f"available() says {self.available()} but the free stack holds {length}"
            )
        return PoolCheck(free=length, allocated=allocated, stranded=free - length)

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def count(self) -> int:
        return self._count

    @property
    def name(self) -> str | None:
        """The shared-memory name, or None for a private pool."""
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        where = f"shared {self._name!r}" if self._name is not None else "private"
        state = "closed" if self._closed else f"{self._count} blocks"
        return f"<Pool {where}, {self._block_size}-byte blocks, {state}>"

    # --- Life cycle -------------------------------------------------------

    def close(self) -> None:
        """Unmap the pool. Views of blocks handed out by ``view()`` must be released first."""
        if self._closed:
            return
        self._bytes.release()
        self._view.close()
        try:
            self._region.close()
        except BufferError:
            self._bind()
            raise BufferError(
                "a view of a pool block is still alive; release it before closing the pool"
            ) from None
        self._closed = True
        self.alloc = self.free = _closed

    def unlink(self) -> None:
        """Remove a shared pool's name; its memory goes when the last user closes it."""
        if self._name is None:
            raise ValueError("a private pool has no name to unlink")
        unlink_shared(self._name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._name is None:
            raise TypeError(
                "a private Pool lives in one process and cannot be pickled; "
                "make a shared one with Pool.create(name, ...)"
            )
        return (type(self).attach, (self._name,))

    def _require_open(self) -> None:
        if self._closed:
            _closed()


def _closed(*args: object) -> Any:
    """Every use of a closed pool."""
    raise HeapError("the heap is closed")


def _as_int(ptr: object) -> int:
    if isinstance(ptr, bool) or not isinstance(ptr, int):
        raise TypeError(f"a pointer is an int offset, not {type(ptr).__name__}")
    return int(ptr)


__all__ = ["EMPTY", "Pool", "PoolCheck"]
