# The compiled branches below name the C functions and fields of pool.pxd:
# mypy: disable-error-code="name-defined,attr-defined"
# ruff: noqa: F821
"""A lock-free pool of fixed-size blocks for threads and processes.

A pool hands out blocks of one size in constant time and takes no lock: its
free blocks form a stack (a Treiber stack) whose head word is changed only by
compare-and-swap, so any number of threads, and processes that share the
region by name, allocate and free at once. In front of the stack each process
keeps a magazine: a few free blocks in its own slot of the pool's attach
table, so that most alloc/free pairs touch no word another process uses.

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
attach table
    ``pyalloc.attach``: one slot per attached process (pid, start time, and
    ``SLOT_WORDS`` payload words), 128 bytes apart so that no two processes'
    slots share a cache line.
magazine
    The first ``MAGAZINE`` payload words of a slot. An entry is
    ``index + 1`` (a free block cached there) or 0 (none). Entries change
    only by atomic exchange or compare-and-swap, so the owner's threads and
    any other process taking blocks from it never get one block twice.

Layout of the region (offsets in bytes)::

    0     header: 16 words                magic, version, sizes, offsets, checksum
    128   head word                       alone on its 128-byte stretch
    352   attach table: 4 words, then SLOTS slots of 16 words (the first at 384)
    ..    links[count]                    8 bytes each
    ..    states: STRIPES rows            1 byte a block, see _state_offset
    ..    blocks[count]                   stride bytes each, 64-byte aligned start
    end

Why the links live outside the blocks: a pop reads the link of the block it
saw on top *before* its compare-and-swap, and by then that block may belong to
someone who is writing into it. With links in a separate array the stale read
is still a link this pool wrote (its CAS then fails on the tag); with links in
the block it would be the owner's payload. A caller who writes into a freed
block therefore cannot corrupt the free stack either.

Operations (every access is a sequentially consistent atomic)::

    alloc:  e = exchange(own magazine entry, 0)          nonzero: i = e - 1
            else (the slow path): another own entry; else pop i from the stack
                 and up to REFILL - 1 more into the magazine; else exchange
                 an entry of any slot to 0 (steal); else MemoryError
            CAS state[i] FREE -> ALLOCATED     return blocks + i * stride
    free:   CAS state[i] ALLOCATED -> FREE     anything else: DoubleFreeError
            CAS own magazine entry 0 -> i + 1
            else (the slow path): another own entry; else push the upper half of
                 the magazine and i onto the stack
    pop:    h = head; i = index(h); n = next(links[i])
            CAS head h -> (tag(h) + 1, n)      retry with the value seen if it failed
    push:   h = head; links[i] = (depth(top) + 1, index(h))
            CAS head h -> (tag(h) + 1, i)      retry with the value seen if it failed

Which entry to try first is a hint kept by the process (its ``fill``); when
the hint is wrong the slow path scans the magazine. The hint is never needed
for correctness: every entry is taken by exchange.

Invariants, with ``stack`` the blocks reachable from the head word and
``cached`` the nonzero magazine entries of every slot::

    depth(links[top]) == len(stack)                         (0 when top == EMPTY)
    depth(links[i]) == depth(links[next(links[i])]) + 1     for i on the stack
    i in stack or i in cached  =>  state[i] == FREE
    available() == len(stack) + len(cached)
    free + allocated + stranded == count

and, when no operation is in flight (a quiescent pool), ``state[i] == FREE``
if and only if ``i`` is on the stack or in exactly one magazine. A block in a
magazine is free for everyone: ``available()`` counts it, and an ``alloc``
that finds the stack empty takes it from whichever slot holds it before it
raises ``MemoryError``, so that error still means every block is held.

A process that dies (SIGKILL) while holding blocks leaks them: they stay
``ALLOCATED`` and nobody can free them. Its magazine is not lost: its blocks
stay counted and can be stolen, and the next process that attaches (or calls
``reap()``) finds the dead slot and pushes its entries back onto the stack.
One that dies between two atomic steps of ``alloc`` or ``free`` leaves that
one block ``FREE`` but neither on the stack nor in a magazine; ``check()``
counts it as *stranded*. Either way the free stack is whole and the pool
goes on working for everyone else.

The tag has 32 bits, so ABA is defeated unless one pop stays suspended between
its read of the head and its CAS while exactly a multiple of ``2**32`` other
pushes and pops complete.
"""

from __future__ import annotations

import hashlib
import os
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from . import _cython as cython

if not cython.compiled:
    # Interpreted, every atomic access goes through atomicshm; its ImportError
    # names the extra to install.
    from .atomics import AtomicView
from .attach import AttachTable, AttachTableFullError, table_words
from .errors import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError
from .regions import AnonymousRegion, Region, SharedRegion, unlink_shared
from .units import as_int

# --- Tunables and the constants derived from them --------------------------

INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1
TAG_ONE = 1 << INDEX_BITS  # adding it to a head word bumps the tag
TAG_MASK = INDEX_MASK << INDEX_BITS
EMPTY = INDEX_MASK  # the index of no block: the bottom of the stack
MAX_COUNT = EMPTY - 1  # every index and every depth fits in 32 bits
MAX_BLOCK_SIZE = 1 << 40  # beyond any region this machine's address space could map
MAX_REGION = 1 << 47  # a user address space's bytes on x86-64 and Arm64

BLOCK_ALIGN = 16
LINE = 64  # a cache line; the blocks start on one
HEADER_WORDS = 16
HEADER_BYTES = HEADER_WORDS * 8
HEAD_OFFSET = HEADER_BYTES

SLOTS = 64  # processes with a magazine at once; more attach and work without one
SLOT_WORDS = 14  # payload words per slot: with pid and start time, 128 bytes
MAGAZINE = 8  # entries of a magazine (the rest of the payload is spare)
REFILL = MAGAZINE // 2  # blocks an empty magazine takes from the stack at once
SLOT_BYTES = 8 * (2 + SLOT_WORDS)
# The table's 4-word header ends where the first slot starts a 128-byte stretch,
# and the head word keeps its own 128 bytes.
TABLE_OFFSET = HEAD_OFFSET + 256 - 32
TABLE_END = TABLE_OFFSET + 8 * table_words(SLOTS, SLOT_WORDS)

STATE_FREE = 1
STATE_ALLOCATED = 2  # 0 never appears in a formatted pool: it means "not a pool"
STRIPE_SHIFT = 6
STRIPES = 1 << STRIPE_SHIFT  # state bytes of neighbouring blocks are on this many lines

MAGIC = int.from_bytes(b"pyaPOOL\x01", "little")
VERSION = 2  # 2: the attach table and the magazines

assert EMPTY > MAX_COUNT and TAG_ONE & INDEX_MASK == 0
assert HEAD_OFFSET % 8 == 0 and (TABLE_OFFSET + 32) % 128 == 0 and SLOT_BYTES == 128
assert LINE % BLOCK_ALIGN == 0 and MAGAZINE <= SLOT_WORDS

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
_H_TABLE = 10
_H_CHECKSUM = 11  # over words 0..10
_H_USED = 12
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
    table: int
    links: int
    states: int
    state_row: int
    blocks: int
    end: int

    @classmethod
    def for_blocks(cls, block_size: object, count: object) -> _Layout:
        block_size = as_int(block_size, "block_size")
        count = as_int(count, "count")
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be between 1 and {MAX_BLOCK_SIZE}, got {block_size}")
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be between 1 and {MAX_COUNT}, got {count}")
        stride = _round_up(block_size, BLOCK_ALIGN)
        links = _round_up(TABLE_END, LINE)
        states = links + 8 * count
        state_row = _round_up((count + STRIPES - 1) >> STRIPE_SHIFT, LINE)
        blocks = _round_up(states + STRIPES * state_row, LINE)
        end = blocks + stride * count
        if end > MAX_REGION:
            raise ValueError(
                f"{count} blocks of {block_size} bytes need {end} bytes, past the largest"
                f" region ({MAX_REGION})"
            )
        return cls(
            block_size,
            stride,
            count,
            HEAD_OFFSET,
            TABLE_OFFSET,
            links,
            states,
            state_row,
            blocks,
            end,
        )

    def state(self, index: int) -> int:
        """The offset of block ``index``'s state byte."""
        return _state_offset(self.states, self.state_row, index)

    def stripe(self, stripe: int) -> tuple[int, int]:
        """``(offset, blocks)``: where stripe ``stripe``'s state bytes are, and how many."""
        return (
            self.states + stripe * self.state_row,
            (self.count - stripe + STRIPES - 1) >> STRIPE_SHIFT,
        )

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
        words[_H_TABLE] = self.table
        words[_H_CHECKSUM] = _checksum(words[:_H_CHECKSUM])
        return words

    def table_over(self, words: Any, fd: int) -> AttachTable:
        """The pool's attach table in ``words`` (the region as 8-byte words)."""
        return AttachTable(words, self.table // 8, SLOTS, SLOT_WORDS, fd)

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

    def bad_entry(self, entry: int, state: int) -> HeapCorruptionError:
        """The error for a magazine entry that names no block or a block that is not FREE."""
        if not 0 < entry <= self.count:
            return HeapCorruptionError(
                f"magazine entry {entry} names no block (entries are 1..{self.count})"
            )
        return HeapCorruptionError(
            f"block {entry - 1} was in a magazine with state {state}, not FREE"
        )


def _state_offset(states: int, row: int, index: int) -> int:
    """Where block ``index``'s state byte is, with ``row`` bytes per stripe.

    Block ``i`` is in stripe ``i % STRIPES``, at position ``i // STRIPES``:
    blocks next to each other, which processes take from the stack in
    batches, have their state bytes on different cache lines, so that two
    processes allocating and freeing them do not compare-and-swap one line.
    """
    return states + (index & (STRIPES - 1)) * row + (index >> STRIPE_SHIFT)


def _checksum(words: list[int]) -> int:
    data = b"".join(w.to_bytes(8, sys.byteorder) for w in words)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), sys.byteorder)


class Atomics(Protocol):
    """The atomic accesses the pool makes: ``atomicshm.AtomicView``'s, or ``CAtomics``."""

    def load_u64(self, offset: int, /) -> int: ...
    def store_u64(self, offset: int, value: int, /) -> None: ...
    def cas_u64(self, offset: int, expected: int, desired: int, /) -> int: ...
    def exchange_u64(self, offset: int, value: int, /) -> int: ...
    def load_u8(self, offset: int, /) -> int: ...
    def cas_u8(self, offset: int, expected: int, desired: int, /) -> int: ...
    def close(self) -> None: ...


def _atomics_over(buf: Any) -> Atomics:
    """Atomic access to the bytes of ``buf``: in C when compiled, through atomicshm otherwise."""
    atomics: Atomics = CAtomics(buf) if cython.compiled else AtomicView(buf)
    return atomics


class CAtomics:
    """``AtomicView``'s operations in C, over a writable buffer (compiled only).

    Every offset is checked against the buffer (``IndexError``), as
    atomicshm checks it; the hot paths of ``CHotPaths`` use the same C
    functions with offsets they have checked themselves.
    """

    def __init__(self, buf: Any) -> None:
        self._mem = buf
        self._base = cython.cast(cython.p_char, cython.address(self._mem[0]))
        self._size = len(buf)

    def _check(self, offset: int, width: int) -> int:
        if offset < 0 or offset + width > self._size or offset % width:
            raise IndexError(f"atomic access of {width} bytes at {offset} outside the region")
        return 0

    def load_u64(self, offset: int) -> int:
        self._check(offset, 8)
        value: int = c_load64(self._base + offset)
        return value

    def store_u64(self, offset: int, value: int) -> None:
        self._check(offset, 8)
        c_store64(self._base + offset, value)

    def cas_u64(self, offset: int, expected: int, desired: int) -> int:
        self._check(offset, 8)
        value: int = c_cas64(self._base + offset, expected, desired)
        return value

    def exchange_u64(self, offset: int, value: int) -> int:
        self._check(offset, 8)
        old: int = c_xchg64(self._base + offset, value)
        return old

    def load_u8(self, offset: int) -> int:
        self._check(offset, 1)
        value: int = c_load8(self._base + offset)
        return value

    def cas_u8(self, offset: int, expected: int, desired: int) -> int:
        self._check(offset, 1)
        value: int = c_cas8(self._base + offset, expected, desired)
        return value

    def close(self) -> None:
        """Release the buffer, so that its mapping can be closed."""
        self._base = cython.NULL
        self._size = 0
        self._mem = None


def _read_layout(region: Region, where: str) -> _Layout:
    """Validate a pool header without writing; return the layout it describes."""
    if region.size < HEADER_BYTES:
        raise ValueError(f"{where} is not a pyalloc pool: {region.size} bytes hold no pool header")
    atomics = _atomics_over(region.buf)
    try:
        magic = atomics.load_u64(0)  # pairs with the atomic store that publishes a new pool
    finally:
        atomics.close()
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


class _Stack:
    """The free stack and the magazines: every path but the two fast ones, in both modes.

    ``magazine`` is the byte offset of this process's entries (``magazine_end``
    one past them); a pool without a slot has ``magazine == magazine_end``, and
    then every alloc pops and every free pushes.
    """

    def __init__(self, atomics: Atomics, layout: _Layout, magazine: int, magazine_end: int) -> None:
        self.atomics = atomics
        self.layout = layout
        self.magazine = magazine
        self.magazine_end = magazine_end
        self.head = layout.head
        self.links = layout.links
        self.states = layout.states
        self.state_row = layout.state_row
        self.blocks = layout.blocks
        self.stride = layout.stride
        self.count = layout.count
        first = layout.table + 8 * 4 + 16  # the first payload word of slot 0
        self.entries = [
            first + slot * SLOT_BYTES + 8 * e for slot in range(SLOTS) for e in range(MAGAZINE)
        ]

    # --- The stack --------------------------------------------------------

    def pop(self) -> int:
        """Take the top block off the stack: its index, or EMPTY."""
        a = self.atomics
        mask = INDEX_MASK  # also EMPTY
        tag_one = TAG_ONE
        tag_mask = TAG_MASK
        h = a.load_u64(self.head)
        while True:
            index = h & mask
            if index == mask:
                return EMPTY
            if index >= self.count:
                raise self.layout.bad_top(index)
            desired = ((h + tag_one) & tag_mask) | (a.load_u64(self.links + (index << 3)) & mask)
            seen = a.cas_u64(self.head, h, desired)
            if seen == h:
                return index
            h = seen

    def push(self, index: int) -> None:
        """Put the FREE block ``index`` on top of the stack. Its link is ours until the CAS."""
        a = self.atomics
        mask = INDEX_MASK
        tag_one = TAG_ONE
        tag_mask = TAG_MASK
        slot = self.links + (index << 3)
        h = a.load_u64(self.head)
        while True:
            top = h & mask
            if top < self.count:
                depth = (a.load_u64(self.links + (top << 3)) >> INDEX_BITS) + 1
            elif top == mask:
                depth = 1
            else:
                raise self.layout.bad_top(top)
            a.store_u64(slot, (depth << INDEX_BITS) | top)
            seen = a.cas_u64(self.head, h, ((h + tag_one) & tag_mask) | index)
            if seen == h:
                return
            h = seen

    def depth(self) -> int:
        """The number of blocks on the stack, exact at one instant."""
        a = self.atomics
        mask = INDEX_MASK
        h = a.load_u64(self.head)
        while True:
            top = h & mask
            if top == mask:
                return 0
            if top >= self.count:
                raise self.layout.bad_top(top)
            depth = a.load_u64(self.links + (top << 3)) >> INDEX_BITS
            # The top's link cannot change while the head word stays the same.
            again = a.load_u64(self.head)
            if again == h:
                return depth
            h = again

    # --- Slow paths of alloc and free ---------------------------------------

    def take(self, entry: int) -> int:
        """Mark the block of magazine ``entry`` (index + 1) ALLOCATED; its pointer."""
        state = 0
        if 0 < entry <= self.count:
            index = entry - 1
            state = self.atomics.cas_u8(
                _state_offset(self.states, self.state_row, index), STATE_FREE, STATE_ALLOCATED
            )
            if state == STATE_FREE:
                return self.blocks + index * self.stride
        raise self.layout.bad_entry(entry, state)

    def alloc_slow(self) -> tuple[int, int]:
        """``alloc`` when the hinted entry was empty: (pointer, new hint)."""
        a = self.atomics
        # Another entry of ours: the hint is a guess, and the process's threads share it.
        fill = self.magazine_end - 8
        while fill >= self.magazine:
            if a.load_u64(fill):
                entry = a.exchange_u64(fill, 0)
                if entry:
                    return self.take(entry), fill
            fill -= 8
        index = self.pop()
        if index == EMPTY:
            return self.take(self.steal()), self.magazine
        # A batch for the magazine, so that the next allocs touch no shared word.
        fill = self.magazine
        while fill < self.magazine_end and fill < self.magazine + 8 * (REFILL - 1):
            more = self.pop()
            if more == EMPTY:
                break
            if a.cas_u64(fill, 0, more + 1):  # a thread of ours filled it first
                self.push(more)
                break
            fill += 8
        return self.take(index + 1), fill

    def steal(self) -> int:
        """With the stack empty: a block from any magazine, as an entry; else MemoryError."""
        a = self.atomics
        for offset in self.entries:
            if a.load_u64(offset):
                entry = a.exchange_u64(offset, 0)
                if entry:
                    return entry
        # Someone may have pushed since the stack was seen empty.
        index = self.pop()
        if index == EMPTY:
            raise self.layout.bad_top(EMPTY)
        return index + 1

    def free_slow(self, index: int) -> int:
        """``free`` (the state already FREE) when the hinted entry was taken: the new hint."""
        a = self.atomics
        fill = self.magazine
        while fill < self.magazine_end:
            if not a.load_u64(fill) and not a.cas_u64(fill, 0, index + 1):
                return fill + 8
            fill += 8
        # Full: the upper half goes to the stack with this block.
        half = self.magazine + 8 * ((self.magazine_end - self.magazine) // 16)
        self.drain(half, self.magazine_end)
        self.push(index)
        return half

    def drain(self, start: int, end: int) -> None:
        """Push every block cached in the entries at ``[start, end)`` onto the stack."""
        a = self.atomics
        offset = start
        while offset < end:
            entry = a.exchange_u64(offset, 0)
            if entry:
                if not 0 < entry <= self.count:
                    raise self.layout.bad_entry(entry, 0)
                self.push(entry - 1)
            offset += 8

    def drain_slot(self, slot: int) -> None:
        """Give a slot's magazine back to the stack (a dead process's, or ours at close)."""
        first = self.entries[slot * MAGAZINE]
        self.drain(first, first + 8 * MAGAZINE)

    def cached(self) -> list[int]:
        """The indices in every magazine, read one entry at a time."""
        a = self.atomics
        found = []
        for offset in self.entries:
            entry = a.load_u64(offset)
            if entry:
                found.append(entry - 1)
        return found


def _interpreted_hot_paths(
    stack: _Stack,
) -> tuple[Callable[[], int], Callable[[int], None]]:
    """``alloc`` and ``free`` for one mapping of a pool, through atomicshm.

    They are closures over the view's bound methods and the layout's numbers
    rather than methods, because every ``self.x`` costs an attribute lookup
    (``benchmarks/pool_bench.py`` prints the pair's cost). ``CHotPaths`` is
    the same two paths in C.
    """
    layout = stack.layout
    exchange = stack.atomics.exchange_u64
    cas_entry = stack.atomics.cas_u64
    cas_state = stack.atomics.cas_u8
    alloc_slow = stack.alloc_slow
    free_slow = stack.free_slow
    take = stack.take
    states = layout.states
    state_row = layout.state_row
    stripe_mask = STRIPES - 1
    blocks = layout.blocks
    stride = layout.stride
    count = layout.count
    magazine = stack.magazine
    magazine_end = stack.magazine_end
    fill = magazine  # the hint: entries below it are likely full, from it on empty

    def alloc() -> int:
        """Take a free block and return its pointer; MemoryError when none is left."""
        nonlocal fill
        if fill != magazine:
            fill -= 8
            entry = exchange(fill, 0)
            if entry:
                return take(entry)
        ptr, fill = alloc_slow()
        return ptr

    def free(ptr: int) -> None:
        """Give back the block at ``ptr``; DoubleFreeError if it is free already."""
        nonlocal fill
        # Inlines Pool._index_of.
        if type(ptr) is not int:
            ptr = _as_int(ptr)
        offset = ptr - blocks
        index = offset // stride
        if offset < 0 or index >= count or offset - index * stride:
            raise layout.invalid(ptr)
        # Inlines _state_offset.
        state = cas_state(
            states + (index & stripe_mask) * state_row + (index >> STRIPE_SHIFT),
            STATE_ALLOCATED,
            STATE_FREE,
        )
        if state != STATE_ALLOCATED:
            raise _not_allocated(ptr, state)
        if fill != magazine_end and not cas_entry(fill, 0, index + 1):
            fill += 8
            return
        fill = free_slow(index)

    return alloc, free


class CHotPaths(CAtomics):
    """``alloc`` and ``free`` in C over one mapping of a pool (compiled only).

    The same two paths as ``_interpreted_hot_paths``; the slow paths are
    ``_Stack``'s, which reach the region through this object's ``CAtomics``
    methods.
    """

    def __init__(self, buf: Any, layout: _Layout, magazine: int, magazine_end: int) -> None:
        CAtomics.__init__(self, buf)
        self._states = layout.states
        self._state_row = layout.state_row
        self._blocks = layout.blocks
        self._stride = layout.stride
        self._count = layout.count
        self._magazine = magazine
        self._magazine_end = magazine_end
        self._fill = magazine
        self._stack = _Stack(self, layout, magazine, magazine_end)

    def alloc(self) -> int:
        """Take a free block and return its pointer; MemoryError when none is left."""
        if self._fill != self._magazine:
            fill = self._fill - 8
            self._fill = fill
            v = c_xchg64(self._base + fill, 0)
            if v:
                if (
                    0 < v <= self._count
                    and c_cas8(
                        self._base + _state_offset(self._states, self._state_row, v - 1),
                        STATE_FREE,
                        STATE_ALLOCATED,
                    )
                    == STATE_FREE
                ):
                    found: int = self._blocks + (v - 1) * self._stride
                    return found
                return self._stack.take(v)  # raises: the entry or its state is wrong
        ptr: int
        ptr, self._fill = self._stack.alloc_slow()
        return ptr

    def free(self, ptr: object) -> None:
        """Give back the block at ``ptr``; DoubleFreeError if it is free already."""
        if type(ptr) is not int:
            ptr = _as_int(ptr)
        overflow = 0
        offset = PyLong_AsLongLongAndOverflow(ptr, cython.address(overflow)) - self._blocks
        index = offset // self._stride
        if overflow or offset < 0 or index >= self._count or offset - index * self._stride:
            raise self._stack.layout.invalid(ptr)
        state = c_cas8(
            self._base + _state_offset(self._states, self._state_row, index),
            STATE_ALLOCATED,
            STATE_FREE,
        )
        if state != STATE_ALLOCATED:
            raise _not_allocated(ptr, state)
        fill = self._fill
        if fill != self._magazine_end and c_cas64(self._base + fill, 0, index + 1) == 0:
            self._fill = fill + 8
            return
        self._fill = self._stack.free_slow(index)

    @property
    def stack(self) -> _Stack:
        return self._stack


def _not_allocated(ptr: int, state: int) -> BaseException:
    if state == STATE_FREE:
        return DoubleFreeError(f"block at {ptr} is already free")
    return HeapCorruptionError(f"block at {ptr} has state {state}")


@dataclass(frozen=True, slots=True)
class PoolCheck:
    """What ``Pool.check()`` counted.

    ``free``: blocks on the free stack or in a magazine (== ``available()``),
    of which ``cached`` are in magazines; ``allocated``: blocks whose state is
    ALLOCATED, including those held by processes that have died;
    ``stranded``: blocks whose state is FREE but which are neither on the
    stack nor in a magazine, left by a process that died inside ``alloc`` or
    ``free``. ``free + allocated + stranded == count``.
    """

    free: int
    allocated: int
    stranded: int
    cached: int = 0


class Pool:
    """``count`` blocks of ``block_size`` bytes, allocated and freed without a lock.

    ``Pool(block_size, count)`` lives in private memory and is shared by the
    threads of this process; ``Pool.create(name, ...)`` lives in a named POSIX
    shared-memory segment that other processes open with ``Pool.attach(name)``
    (or receive pickled, which sends the name).

    ``alloc()`` returns the pointer of a free block; ``free(ptr)`` gives it
    back; ``view(ptr)`` is the block's bytes; ``available()`` counts the free
    blocks, those in magazines included; ``check()`` verifies a quiescent pool;
    ``attached()`` lists the processes attached; ``reap()`` recovers the
    magazines of dead ones. ``alloc`` and ``free`` are per-instance functions,
    callable from any thread.

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
    _atomics: Atomics
    _stack: _Stack
    _table: AttachTable | None
    _bytes: memoryview
    _name: str | None

    def __init__(self, block_size: int, count: int) -> None:
        layout = _Layout.for_blocks(block_size, count)
        region = AnonymousRegion(layout.end)
        try:
            self._format(region, layout)
            # A private pool has no other process: its magazine is slot 0's, never claimed.
            self._open(region, layout, None, -1, 0)
        except BaseException:
            region.close()
            raise

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
            pool._attach(region, layout, name)
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
        Attaching claims a slot of the pool's attach table (its magazine),
        and recovers the magazines of dead processes found on the way.
        """
        region = SharedRegion.attach(name)
        try:
            layout = _read_layout(region, f"shared-memory segment {name!r}")
            pool = cls.__new__(cls)
            pool._attach(region, layout, name)
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
        for stripe in range(STRIPES):
            start, blocks = layout.stripe(stripe)
            region.buf[start : start + blocks] = bytes([STATE_FREE]) * blocks
        layout.table_over(words, -1).format()
        header = layout.header_words()
        words[layout.head // 8] = 0  # tag 0, block 0 on top
        for i in range(1, _H_USED):
            words[i] = header[i]
        # The magic goes last, atomically, so that a pool is never seen half made.
        atomics = _atomics_over(region.buf)
        try:
            atomics.store_u64(0, header[_H_MAGIC])
        finally:
            atomics.close()

    def _attach(self, region: SharedRegion, layout: _Layout, name: str) -> None:
        """Open a shared pool and claim this process's slot (none if the table is full)."""
        fd = os.open(region.path, os.O_RDWR | os.O_CLOEXEC)  # the table locks through it
        try:
            table = layout.table_over(region.words, fd)
            self._fd = fd
            self._table = table
            # Before the slot is claimed: recover() pushes through the stack.
            self._open(region, layout, name, fd, -1)
            try:
                slot, _alone = table.claim(self._stack.drain_slot)
            except AttachTableFullError:
                return  # this process works without a magazine
            self._open(region, layout, name, fd, slot)
        except BaseException:
            self._release()
            os.close(fd)
            raise

    def _open(self, region: Region, layout: _Layout, name: str | None, fd: int, slot: int) -> None:
        self._region = region
        self._name = name
        self._layout = layout
        self._block_size = layout.block_size
        self._stride = layout.stride
        self._count = layout.count
        self._blocks = layout.blocks
        self._fd = fd
        self._slot = slot
        self._closed = False
        if fd < 0:
            self._table = None
        self._bind()

    def _bind(self) -> None:
        if hasattr(self, "_atomics"):
            self._release()
        layout = self._layout
        if self._slot >= 0:
            magazine = layout.table + 8 * 4 + self._slot * SLOT_BYTES + 16
            magazine_end = magazine + 8 * MAGAZINE
        else:
            magazine = magazine_end = 0
        if cython.compiled:
            hot = CHotPaths(self._region.buf, layout, magazine, magazine_end)
            self._atomics = hot
            self._stack = hot.stack
            self.alloc, self.free = hot.alloc, hot.free
        else:
            self._atomics = _atomics_over(self._region.buf)
            self._stack = _Stack(self._atomics, layout, magazine, magazine_end)
            self.alloc, self.free = _interpreted_hot_paths(self._stack)
        self._bytes = memoryview(self._region.buf)

    def _release(self) -> None:
        """Let go of the region's buffer (before the region is closed)."""
        if hasattr(self, "_atomics"):
            self._bytes.release()
            self._atomics.close()
            del self._atomics

    def available(self) -> int:
        """The number of free blocks, on the stack and in every magazine.

        Exact in a quiescent pool; while blocks move between the stack and a
        magazine, one may be counted twice or not at all.
        """
        self._require_open()
        return self._stack.depth() + len(self._stack.cached())

    def view(self, ptr: int) -> memoryview:
        """The ``block_size`` bytes of the allocated block at ``ptr``, writable."""
        if self._closed:
            _closed()
        index = self._index_of(ptr)
        if self._atomics.load_u8(self._layout.state(index)) != STATE_ALLOCATED:
            raise InvalidPointerError(f"block at {ptr} is not allocated")
        return self._bytes[ptr : ptr + self._block_size]

    # --- The processes attached ---------------------------------------------

    def attached(self) -> list[int]:
        """The pids of the live processes attached to a shared pool (empty for a private one)."""
        self._require_open()
        return [] if self._table is None else self._table.attached()

    def reap(self) -> int:
        """Give the magazines of dead processes back to the stack; how many processes."""
        self._require_open()
        if self._table is None:
            return 0
        return self._table.reap(self._stack.drain_slot)

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
        """First half of a pop: return (head word seen, head word to install)."""
        h = self._atomics.load_u64(self._layout.head)
        index = h & INDEX_MASK
        if index >= self._count:
            raise self._layout.bad_top(index)
        link = self._atomics.load_u64(self._layout.links + (index << 3))
        return h, ((h + TAG_ONE) & TAG_MASK) | (link & INDEX_MASK)

    def _pop_commit(self, seen: int, desired: int) -> int | None:
        """Second half of a pop: the pointer if the CAS succeeded, else None."""
        if self._atomics.cas_u64(self._layout.head, seen, desired) != seen:
            return None
        index = seen & INDEX_MASK
        state = self._atomics.cas_u8(self._layout.state(index), STATE_FREE, STATE_ALLOCATED)
        if state != STATE_FREE:
            raise HeapCorruptionError(f"block {index} was on the free stack but not FREE")
        return self._blocks + index * self._stride

    # --- Inspection -------------------------------------------------------

    def check(self) -> PoolCheck:
        """Verify the header, the free stack, the magazines and the state bytes; meant for a
        quiescent pool.

        Walks the stack from the head (at most ``count`` steps, so a cycle is
        found, not followed), requires every block on it to be FREE and the
        depths to count down to 1 at the bottom, requires every magazine entry
        to name a FREE block that is nowhere else, and every state byte to be
        FREE or ALLOCATED. Raises ``HeapCorruptionError`` on the first
        disagreement; returns the counts otherwise.
        """
        self._require_open()
        _read_layout(self._region, repr(self))
        self._layout.table_over(self._region.words, -1).verify()
        count = self._count
        load = self._atomics.load_u64
        states = self._states_in_index_order()
        seen = bytearray(count)
        length = 0
        expected_depth = -1
        index = load(self._layout.head) & INDEX_MASK
        while index != EMPTY:
            if index >= count:
                raise HeapCorruptionError(f"free stack reaches index {index}, out of range")
            if seen[index]:
                raise HeapCorruptionError(f"free stack has a cycle through block {index}")
            seen[index] = 1
            length += 1
            if states[index] != STATE_FREE:
                raise HeapCorruptionError(
                    f"block {index} is on the free stack with state {states[index]}"
                )
            link = load(self._layout.links + (index << 3))
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
        cached = self._stack.cached()
        for index in cached:
            if not 0 <= index < count:
                raise self._layout.bad_entry(index + 1, 0)
            if seen[index]:
                raise HeapCorruptionError(f"block {index} is cached twice, or cached and stacked")
            seen[index] = 1
            if states[index] != STATE_FREE:
                raise self._layout.bad_entry(index + 1, states[index])
        free = states.count(STATE_FREE)
        allocated = states.count(STATE_ALLOCATED)
        if free + allocated != count:
            bad = next(i for i, s in enumerate(states) if s not in (STATE_FREE, STATE_ALLOCATED))
            raise HeapCorruptionError(f"block {bad} has unknown state {states[bad]}")
        if self._stack.depth() != length:
            raise HeapCorruptionError(
                f"the top's depth says {self._stack.depth()} but the free stack holds {length}"
            )
        on_hand = length + len(cached)
        return PoolCheck(
            free=on_hand, allocated=allocated, stranded=free - on_hand, cached=len(cached)
        )

    def _states_in_index_order(self) -> bytes:
        states = bytearray(self._count)
        for stripe in range(min(STRIPES, self._count)):
            start, blocks = self._layout.stripe(stripe)
            states[stripe::STRIPES] = bytearray(self._bytes[start : start + blocks])
        return bytes(states)

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
        """Unmap the pool. Views of blocks handed out by ``view()`` must be released first.

        A shared pool first gives its magazine back to the stack and frees
        its slot of the attach table.
        """
        if self._closed:
            return
        if self._table is not None and self._slot >= 0:
            self._stack.drain_slot(self._slot)
            self._table.release(self._slot)
            self._slot = -1
        self._release()
        try:
            self._region.close()
        except BufferError:
            self._bind()  # without a magazine now: the slot is gone
            raise BufferError(
                "a view of a pool block is still alive; release it before closing the pool"
            ) from None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
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
    return as_int(ptr, "pointer")  # as a heap's check_pointer says it


__all__ = ["EMPTY", "Pool", "PoolCheck"]
