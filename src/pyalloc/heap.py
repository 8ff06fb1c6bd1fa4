"""The engine: malloc, free, realloc and calloc over a region's bytes.

The block format is described in ``layout.py`` and the control record in
``control.py``; this module owns what happens to blocks:

- malloc asks the policy for a free block of at least ``need`` bytes, splits
  it when the remainder can hold a minimum block, and otherwise grows the
  heap like ``sbrk``: the break moves up by exactly what is missing (a free
  block at the top is extended rather than left behind);
- small blocks (SMALL_BLOCK_MAX bytes or less) are cut from the high end of the
  free block they split, the rest from the low end, and growth for a small
  block takes SMALL_CHUNK at once. Small and larger blocks then fill a free
  stretch from opposite ends, so larger blocks that die together leave one
  hole, not many holes each pinned between two small survivors;
- free coalesces at once with both neighbours (boundary tags), so no two
  free blocks touch; a free block of at least TRIM_THRESHOLD at the top is
  cut down to TOP_PAD and its pages go back to the OS;
- realloc works in place whenever it can: shrinking splits off the tail,
  growing takes a free successor or moves the break; failing that, a private
  heap slides the block down into a free predecessor when that makes room
  (a shared heap does not: see ``shared.py``); otherwise it copies.

Refuse before writing: every operation reads and checks every header, footer
and link it will depend on before its first write, so a rejected call leaves
the heap exactly as it was.

Edge cases, each tested:
- ``malloc(0)`` returns a unique, valid pointer (a minimum block);
- ``free(0)`` does nothing; ``realloc(0, n)`` is ``malloc(n)``;
- ``realloc(p, 0)`` frees ``p`` and returns 0;
- a realloc that cannot be served raises MemoryError and leaves ``p`` intact;
- a pointer the heap does not own raises InvalidPointerError, a second free
  DoubleFreeError, metadata that fails its check HeapCorruptionError.
"""

from __future__ import annotations

import secrets
from array import array
from dataclasses import dataclass, field
from typing import ClassVar, Final

from . import control as C
from .allocator import Allocator, check_size, stats_record
from .control import W_BRK, W_COMMITTED, W_PEAK
from .errors import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError
from .journal import MetadataStore
from .layout import (
    ALLOCATED,
    CACHED,
    HEADER,
    MAX_BLOCK,
    MIN_BLOCK,
    PREV_ALLOCATED,
    SIZE_MASK,
    TAGGED_MASK,
    allocated_body,
    block_size,
    block_size_for,
    decode,
    encode,
    free_word,
    is_allocated,
    prev_is_allocated,
    slack_of,
)
from .lock import HeapLock
from .policies import POLICIES, policy_by_id, policy_class
from .policies.base import FreeIndex
from .regions import AnonymousRegion, Region, page_round_up

DEFAULT_CAPACITY: Final = 256 << 20
CACHE_LIMIT: Final = 16  # freed blocks kept per size in the cache ...
CACHE_MAX_BLOCK: Final = 1 << 10  # ... for block sizes below this
CACHE_BINS: Final = CACHE_MAX_BLOCK >> 4  # one bin per block size
FLUSH_BEFORE_SPLIT: Final = 1 << 13  # the cache is flushed before a split leaving this much
SMALL_BLOCK_MAX: Final = 128  # blocks this size or smaller are cut from the high end ...
SMALL_CHUNK: Final = 1 << 10  # ... and the heap grows at least this much for one
TRIM_THRESHOLD: Final = 1 << 18  # a free top block this large is trimmed ...
TOP_PAD: Final = 1 << 16  # ... down to this many bytes
TRIM_THRESHOLD_MAX: Final = 1 << 26  # each trim doubles the threshold, up to this
RESERVE_STEP: Final = 1 << 20  # a file-backed heap reserves its file's blocks this far ahead

assert TOP_PAD >= MIN_BLOCK and TRIM_THRESHOLD > TOP_PAD
assert SMALL_CHUNK >= SMALL_BLOCK_MAX + MIN_BLOCK
# Compiled, the constants above are C variables (heap.pxd); this gives Python
# importers the same names and values. Interpreted, it changes nothing.
globals().update(
    DEFAULT_CAPACITY=DEFAULT_CAPACITY, CACHE_LIMIT=CACHE_LIMIT, CACHE_MAX_BLOCK=CACHE_MAX_BLOCK,
    CACHE_BINS=CACHE_BINS,
    FLUSH_BEFORE_SPLIT=FLUSH_BEFORE_SPLIT, SMALL_BLOCK_MAX=SMALL_BLOCK_MAX, SMALL_CHUNK=SMALL_CHUNK,
    TRIM_THRESHOLD=TRIM_THRESHOLD, TOP_PAD=TOP_PAD, TRIM_THRESHOLD_MAX=TRIM_THRESHOLD_MAX,
    RESERVE_STEP=RESERVE_STEP,
)  # fmt: skip

__all__ = ["DEFAULT_CAPACITY", "POLICIES", "Heap"]


class Heap(Allocator):
    """A heap of variable-sized blocks in a private anonymous mapping.

    ``capacity`` is the most bytes the heap may take from its region,
    control record included; the region is reserved up front and committed
    by the OS as it is touched. ``policy`` names the free-block index (see
    ``POLICIES``). With ``lock=True`` (the default) every call holds a
    per-heap lock, so threads may share the heap. With ``cache=True`` (the
    default) up to CACHE_LIMIT freed blocks of each size below
    CACHE_MAX_BLOCK are kept aside, their headers unchanged, and handed out
    again to the next request of that size; they go back to the free lists
    before the heap grows and before a block is split with FLUSH_BEFORE_SPLIT
    bytes or more to spare. ``cache=False`` makes every free coalesce at once,
    which policy comparisons want.
    """

    region: Region
    policy: FreeIndex
    words: memoryview
    meta: MetadataStore
    realloc_slides_down: ClassVar[bool] = True  # see _slide_down

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        policy: str = "segregated",
        lock: bool = True,
        cache: bool = True,
    ) -> None:
        capacity = check_size(capacity, "capacity")
        policy_cls = policy_class(policy)
        region = AnonymousRegion(self.layout_size(capacity, policy_cls))
        self._format(region, capacity, policy_cls)
        self._bind(region, lock)
        if cache:
            self._cache_limit = CACHE_LIMIT

    # -- set-up --------------------------------------------------------------

    @staticmethod
    def control_bytes(capacity: int, policy_cls: type[FreeIndex]) -> int:
        """Offset of the first block header: the control record and policy words."""
        words = C.CONTROL_WORDS + policy_cls.words_needed(capacity)
        return ((words * 8 + HEADER + 15) & ~15) - HEADER

    @classmethod
    def layout_size(cls, capacity: int, policy_cls: type[FreeIndex]) -> int:
        """Check ``capacity``; return the region bytes a heap of it needs."""
        heap_start = cls.control_bytes(capacity, policy_cls)
        if capacity < heap_start + HEADER + MIN_BLOCK:
            raise ValueError(
                f"capacity {capacity} is too small for a heap (minimum {heap_start + 40})"
            )
        if capacity > MAX_BLOCK:
            raise ValueError(f"capacity {capacity} exceeds the largest heap ({MAX_BLOCK} bytes)")
        return capacity

    @classmethod
    def _format(cls, region: Region, capacity: int, policy_cls: type[FreeIndex]) -> None:
        """Write a fresh control record and an empty heap into ``region``."""
        heap_start = cls.control_bytes(capacity, policy_cls)
        words = region.words
        for i in range(heap_start >> 3):
            words[i] = 0
        words[C.W_FORMAT] = C.FORMAT_VERSION | policy_cls.policy_id << 16
        words[C.W_CAPACITY] = capacity
        words[C.W_HEAP_START] = heap_start
        words[C.W_BRK] = heap_start
        words[C.W_PEAK] = heap_start + HEADER
        words[C.W_COMMITTED] = capacity  # a file-backed heap's maker lowers it
        key = secrets.randbits(64)
        secret = secrets.randbits(62)
        words[C.W_HEADER_KEY] = key
        words[C.W_TAG_SECRET] = secret
        words[C.W_LINK_KEY] = secrets.randbits(64) & ~15  # keep the low bits of links readable
        # The epilogue: an allocated block of size 0 whose predecessor (none) is allocated.
        words[heap_start >> 3] = encode(ALLOCATED | PREV_ALLOCATED, heap_start, secret, key)
        words[C.W_MAGIC] = C.MAGIC  # last: a half-written record is not a heap

    def _bind(self, region: Region, lock: bool) -> None:
        """Load the Python-side caches of the control record.

        Every metadata word is read from ``self.words`` (the region's words)
        and written through ``self.meta`` (the one store, which a shared heap
        journals); ``_make_lock`` is the hook a subclass overrides to lock
        across processes.
        """
        if region.size < C.CONTROL_WORDS * 8 or region.words[C.W_MAGIC] != C.MAGIC:
            raise HeapError("the region does not hold a pyalloc heap (bad magic number)")
        words = region.words
        fmt = words[C.W_FORMAT]
        if fmt & 0xFFFF != C.FORMAT_VERSION:
            raise HeapError(
                f"the heap is of format version {fmt & 0xFFFF}; "
                f"this pyalloc reads version {C.FORMAT_VERSION}"
            )
        self.region = region
        self.words = words
        self.meta = MetadataStore(words)
        self.buf = region.buf
        self.bytes = memoryview(region.buf)
        self.capacity = words[C.W_CAPACITY]
        self.heap_start = words[C.W_HEAP_START]
        self.brk = words[C.W_BRK]
        if not self.heap_start < self.capacity <= region.size or self.brk >= self.capacity:
            raise HeapError("the heap's control record is inconsistent with its region")
        self.header_key = words[C.W_HEADER_KEY]
        self.tag_secret = words[C.W_TAG_SECRET]
        self.link_key = words[C.W_LINK_KEY]
        self.policy = policy_by_id(fmt >> 16)(self, C.CONTROL_WORDS)
        self._lock = self._make_lock()
        self._closed = False
        # The cache of recently freed small blocks, by block size / 16 (see _free).
        # Off unless the constructor turns it on: a heap other processes share
        # must not keep free blocks out of their sight.
        self._cache_limit = 0
        self._cache = array("q", bytes(8 * CACHE_BINS * CACHE_LIMIT))  # bin i: slots i*LIMIT...
        self._cache_counts = array("q", bytes(8 * CACHE_BINS))  # blocks in each bin
        self._cached = 0  # blocks in all bins
        self._locking = True
        self._trim_threshold = TRIM_THRESHOLD
        self._reserving = region.needs_reserve
        if not lock:
            self._unlocked_entry_points()

    def _make_lock(self) -> HeapLock:
        return HeapLock()

    def _release_views(self) -> None:
        self.policy.release()
        self.meta.release()
        self.words = None  # type: ignore[assignment]

    def _bind_views(self) -> None:
        words = self.region.words
        self.words = words
        self.meta.words = words
        self.policy.words = words
        self.policy.meta = self.meta

    # -- header words ----------------------------------------------------------

    def _header(self, b: int) -> int:
        """The body of the header at ``b``, or -1 if it fails its tag."""
        return decode(self.words[b >> 3], b, self.tag_secret, self.header_key)

    def _set_header(self, b: int, body: int) -> None:
        self.meta.store(b >> 3, encode(body, b, self.tag_secret, self.header_key))

    def _set_free(self, b: int, size: int) -> None:
        """Header and footer of a free block whose predecessor is allocated."""
        word = free_word(size, b, self.tag_secret, self.header_key)
        self.meta.store(b >> 3, word)
        self.meta.store((b + size - 8) >> 3, word)

    def _prev_allocated_bit(self, n: int) -> int:
        """The prev-allocated bit of the header at ``n``, read without a tag check:
        the bit is outside the tag, and the key is an XOR."""
        return (self.words[n >> 3] ^ self.header_key) & PREV_ALLOCATED

    def _set_prev_allocated(self, n: int, on: int) -> None:
        """Set (``on``) or clear the prev-allocated bit of the header at ``n``,
        by flipping the stored bit: no decode, no encode."""
        if self._prev_allocated_bit(n) != (PREV_ALLOCATED if on else 0):
            self.meta.store(n >> 3, self.words[n >> 3] ^ PREV_ALLOCATED)

    def free_block_size(self, b: int) -> int:
        """Size of the free block at ``b``; HeapCorruptionError if it is not one."""
        if not (self.heap_start <= b < self.brk and b & 15 == 8):
            raise HeapCorruptionError(f"free-list link to offset {b:#x} is outside the heap")
        body = self._header(b)
        if body < 0:
            raise HeapCorruptionError(f"header of free block {b + 8} is corrupted")
        if body & ALLOCATED:
            raise HeapCorruptionError(f"free list holds block {b + 8}, which is allocated")
        return body & SIZE_MASK

    def _live_header(self, p: int) -> int:
        """Validate ``p`` as a live block's payload; return its header body."""
        b = p - HEADER
        if not (self.heap_start <= b and p + 24 <= self.brk and p & 15 == 0):
            if p == 0:
                raise InvalidPointerError("NULL is not a block")
            raise InvalidPointerError(f"pointer {p} is not in this heap or not aligned")
        body = self._header(b)
        if body < 0:
            self._explain_bad_header(p)
        if not body & ALLOCATED or body & CACHED:
            raise DoubleFreeError(f"block {p} is already free")
        if b + (body & SIZE_MASK) > self.brk or body & SIZE_MASK < MIN_BLOCK:
            raise HeapCorruptionError(f"header of block {p} holds an impossible size")
        return body

    def _explain_bad_header(self, p: int) -> None:
        """A pointer's header failed its tag: tell a stray pointer from corruption.

        Walks the blocks from the start; only reached on an error.
        """
        target = p - HEADER
        b = self.heap_start
        brk = self.brk
        while b < brk:
            if b == target:
                raise HeapCorruptionError(f"header of block {p} is corrupted")
            body = self._header(b)
            if body < 0:
                raise HeapCorruptionError(
                    f"header of block {b + 8} is corrupted (found while checking pointer {p})"
                )
            size = body & SIZE_MASK
            if size < MIN_BLOCK:
                raise HeapCorruptionError(f"header of block {b + 8} holds an impossible size")
            if b < target < b + size:
                raise InvalidPointerError(
                    f"pointer {p} lies inside block {b + 8}, not at its start"
                )
            b += size
        raise InvalidPointerError(f"pointer {p} is not a block of this heap")

    def _next_header(self, n: int) -> int:
        """Header body of the block at ``n`` that follows a block being changed."""
        body = self._header(n)
        if body < 0:
            raise HeapCorruptionError(f"header of block {n + 8} is corrupted")
        if not body & PREV_ALLOCATED:
            raise HeapCorruptionError(f"block {n + 8} says its allocated predecessor is free")
        return body

    def _free_neighbour(self, b: int, body: int) -> int:
        """Size of the free block at ``b`` (header ``body``), its footer checked.

        Its links are checked by ``policy.remove``, before it writes; a caller
        that removes two blocks calls ``policy.validate`` on the second first.
        """
        size = body & SIZE_MASK
        end = b + size
        if size < MIN_BLOCK or end > self.brk:
            raise HeapCorruptionError(f"free block {b + 8} holds an impossible size")
        if self.words[(end - 8) >> 3] != self.words[b >> 3]:
            raise HeapCorruptionError(f"footer of free block {b + 8} does not match its header")
        return size

    def _free_predecessor(self, b: int) -> int:
        """Offset of the free block before ``b``, found through its footer."""
        footer = self.words[(b - 8) >> 3]
        size = (footer ^ self.header_key) & SIZE_MASK
        pb = b - size
        if size < MIN_BLOCK or pb < self.heap_start:
            raise HeapCorruptionError(f"footer before block {b + 8} is corrupted")
        body = self._header(pb)
        if body < 0 or body & ALLOCATED or self.words[pb >> 3] != footer:
            raise HeapCorruptionError(f"free block before {b + 8} has a bad header or footer")
        self._free_neighbour(pb, body)
        return pb

    def _grow_to(self, end: int) -> None:
        """The break is about to bring the footprint to ``end``: make sure
        storage backs it (file-backed heaps; checked before the first write)."""
        if self._reserving and end > self.words[W_COMMITTED]:
            self._reserve_slow(end)

    def _reserve_slow(self, end: int) -> None:
        """Reserve the file's blocks up to ``end`` and, if it can, well beyond
        (an eighth of what is reserved, at least RESERVE_STEP): reserving is a
        system call, so it is made rarely, against a high-water mark kept in
        the control record. MemoryError, writing nothing, when the
        filesystem cannot hold even ``end``."""
        committed = self.words[W_COMMITTED]
        need = page_round_up(end)
        ahead = committed + max(RESERVE_STEP, committed >> 3)
        target = min(page_round_up(self.capacity), max(need, ahead))
        try:
            self.region.reserve(committed, target)
        except MemoryError:
            if target == need:
                raise
            target = need
            self.region.reserve(committed, target)
        self.meta.store(W_COMMITTED, target)

    def _set_brk(self, brk: int) -> None:
        self.brk = brk
        self.meta.store(W_BRK, brk)
        if brk + HEADER > self.words[W_PEAK]:
            self.meta.store(W_PEAK, brk + HEADER)

    # -- malloc ----------------------------------------------------------------

    def _malloc(self, size: int) -> int:
        need = block_size_for(size)
        if need > self.capacity:
            raise MemoryError(
                f"cannot allocate {size} bytes: the heap's capacity is {self.capacity}"
            )
        if need < CACHE_MAX_BLOCK and self._cache_counts[need >> 4]:
            return self._take_cached(need, size)
        b, have = self.policy.take(need)
        if not b:
            return self._malloc_slow(need, size)
        if have - need >= FLUSH_BEFORE_SPLIT and self._cached:
            b, have = self._retake_after_flush(b, have, need)
        return self._split(b, have, need, size)

    def _take_cached(self, need: int, size: int) -> int:
        """Hand a cached block of ``need`` bytes out again."""
        b = self._uncache(need >> 4)
        self._set_header(b, allocated_body(need, size, self._prev_allocated_bit(b)))
        return b + HEADER

    def _uncache(self, i: int) -> int:
        """Take the last block of cache bin ``i``; return its offset, its header
        checked as a cached block's of the bin's size."""
        n = self._cache_counts[i] - 1
        b = self._cache[i * CACHE_LIMIT + n] - HEADER
        self._cache_counts[i] = n
        self._cached -= 1
        body = self._header(b) if self.heap_start <= b < self.brk else -1
        if body < 0 or body & (SIZE_MASK | ALLOCATED | CACHED) != i << 4 | ALLOCATED | CACHED:
            raise HeapCorruptionError(f"header of cached free block {b + HEADER} is corrupted")
        return b

    def _malloc_slow(self, need: int, size: int) -> int:
        """No listed free block fits: coalesce the cache and look again, else grow."""
        if self._cached:
            self._flush_cache()
            b, have = self.policy.take(need)
            if b:
                return self._split(b, have, need, size)
        return self._extend(need, size) + HEADER

    def _retake_after_flush(self, b: int, have: int, need: int) -> tuple[int, int]:
        """Put the large block ``b`` back, coalesce the cache, and take again.

        Cutting a small request out of a large block while cached blocks sit
        uncoalesced breaks up the space a later large request needs;
        coalesced, the cached blocks may serve this one instead.
        """
        self.policy.insert(b, have)
        self._flush_cache()
        found, size = self.policy.take(need)
        if not found:
            raise HeapCorruptionError(f"free block {b + 8} vanished from the free lists")
        return found, size

    def _split(self, b: int, have: int, need: int, size: int) -> int:
        """Allocate ``need`` bytes of the free block ``b`` (unlinked) of ``have`` bytes.

        The rest, when it can hold a block, stays free: below a small block
        (cut from the high end), above a larger one. Returns the payload.
        """
        rest = have - need
        if rest < MIN_BLOCK:
            self._set_prev_allocated(b + have, 1)
            self._set_header(b, allocated_body(have, size, PREV_ALLOCATED))
            return b + HEADER
        self.policy.validate_insert(rest)
        if need <= SMALL_BLOCK_MAX:
            a = b + rest
            self.policy.insert(b, rest)
            self._set_free(b, rest)
            self._set_prev_allocated(b + have, 1)
            self._set_header(a, allocated_body(need, size, 0))
            return a + HEADER
        self.policy.insert(b + need, rest)
        self._set_free(b + need, rest)
        self._set_header(b, allocated_body(need, size, PREV_ALLOCATED))
        return b + HEADER

    def _flush_cache(self) -> None:
        """Free every cached block for real, coalescing it with its neighbours."""
        for i in range(CACHE_BINS):
            while self._cache_counts[i]:
                b = self._uncache(i)
                self._release(b, self._header(b) & ~CACHED)

    def _extend(self, need: int, size: int, chunk: bool = True) -> int:
        """Serve ``need`` bytes by moving the break; return the block's offset.

        A free block at the top is extended rather than left behind; a small
        block takes the top of a SMALL_CHUNK, whose rest below it is free
        (unless ``chunk`` is false: benchmarks lay blocks end to end that way).
        """
        brk = self.brk
        body = self._header(brk)
        if body < 0 or body & TAGGED_MASK != ALLOCATED:
            raise HeapCorruptionError("the heap's epilogue header is corrupted")
        top = 0 if body & PREV_ALLOCATED else self._free_predecessor(brk)
        b = top or brk
        new_brk = b + need
        if chunk and need <= SMALL_BLOCK_MAX and b + SMALL_CHUNK + HEADER <= self.capacity:
            new_brk = b + SMALL_CHUNK
        if new_brk + HEADER > self.capacity:
            raise MemoryError(
                f"cannot allocate {size} bytes: the heap would exceed its capacity"
                f" of {self.capacity}"
            )
        self._grow_to(new_brk + HEADER)
        rest = new_brk - need - b
        if rest:
            self.policy.validate_insert(rest)
        if top:
            self.policy.remove(top, brk - top)
        # New epilogue first: the block below it is never left without one.
        self._set_header(new_brk, ALLOCATED | PREV_ALLOCATED)
        prev_bit = PREV_ALLOCATED
        if rest:
            self._set_free(b, rest)
            self.policy.insert(b, rest)
            b += rest
            prev_bit = 0
        self._set_header(b, allocated_body(need, size, prev_bit))
        self._set_brk(new_brk)
        return b

    # -- free ------------------------------------------------------------------

    def _free(self, p: int) -> None:
        if not p:
            return
        body = self._live_header(p)
        size = body & SIZE_MASK
        if size < CACHE_MAX_BLOCK and self._cache_counts[size >> 4] < self._cache_limit:
            self._keep(p, body)
            return
        self._release(p - HEADER, body)

    def _keep(self, p: int, body: int) -> None:
        """Put the freed block ``p`` in the cache: still allocated to its
        neighbours (as glibc's tcache keeps blocks), marked CACHED in its header."""
        i = (body & SIZE_MASK) >> 4
        n = self._cache_counts[i]
        self._set_header(p - HEADER, body | CACHED)
        self._cache[i * CACHE_LIMIT + n] = p
        self._cache_counts[i] = n + 1
        self._cached += 1

    def _release(self, b: int, body: int, dry_run: bool = False) -> None:
        """Turn the allocated block ``b`` into free space, coalescing both ways.

        mark, merge with the predecessor, merge with the successor, insert:
        every header, footer and link is checked before the first write.
        With ``dry_run``, only the checks: for a caller that must know the
        release will succeed before it writes (``_shrink``).
        """
        size = body & SIZE_MASK
        n = b + size
        nbody = self._next_header(n)
        start = b
        total = size
        pb = 0
        if not body & PREV_ALLOCATED:
            pb = self._free_predecessor(b)
            start = pb
            total += b - pb
        nsize = 0
        if not nbody & ALLOCATED:  # the epilogue is allocated, so n < brk here
            nsize = self._free_neighbour(n, nbody)
            total += nsize
            if pb:
                self.policy.validate(n, nsize)
        trim = start + total == self.brk and total >= self._trim_threshold
        self.policy.validate_insert(TOP_PAD if trim else total)
        if dry_run:
            if pb:
                self.policy.validate(pb, b - pb)
            if nsize:
                self.policy.validate(n, nsize)
            return
        # Checked (the first remove checks its own links); now write.
        policy = self.policy
        if pb:
            policy.remove(pb, b - pb)
            # Mark the absorbed header free so that a second free of p is refused as such.
            self._set_header(b, size | PREV_ALLOCATED)
        if nsize:
            policy.remove(n, nsize)
        else:
            self._set_prev_allocated(n, 0)
        if trim:
            self._trim(start, total)
            return
        self._set_free(start, total)
        policy.insert(start, total)

    def _trim(self, start: int, total: int) -> None:
        """Cut the free top block down to TOP_PAD and give its pages back.

        The threshold then doubles (as glibc raises its own): a program whose
        heap swings up and down by the same amount stops paying for page
        faults on every swing.
        """
        if self._trim_threshold < TRIM_THRESHOLD_MAX:
            self._trim_threshold <<= 1
        old_brk = self.brk
        new_brk = start + TOP_PAD
        self._set_header(new_brk, ALLOCATED)  # epilogue, predecessor free
        self._set_free(start, TOP_PAD)
        self.policy.insert(start, TOP_PAD)
        self.brk = new_brk
        self.meta.store(W_BRK, new_brk)
        if self._reserving:  # the pages given back were the file's blocks
            kept = page_round_up(new_brk + HEADER)
            if kept < self.words[W_COMMITTED]:
                self.meta.store(W_COMMITTED, kept)
        self.region.release(new_brk + HEADER, old_brk + HEADER)

    # -- realloc ---------------------------------------------------------------

    def _usable(self, p: int) -> int:
        return (self._live_header(p) & SIZE_MASK) - HEADER

    def _resize(self, p: int, size: int) -> int:
        body = self._live_header(p)
        if not size:
            self._release(p - HEADER, body)
            return 0
        b = p - HEADER
        have = body & SIZE_MASK
        need = block_size_for(size)
        prev_bit = body & PREV_ALLOCATED
        if need <= have:
            self._shrink(b, prev_bit, have, need, size)
            return p
        if need <= self.capacity and self._grow_in_place(b, prev_bit, have, need, size):
            return p
        if not prev_bit and self.realloc_slides_down:
            q = self._slide_down(b, have, need, size)
            if q:
                return q
        q = self._malloc(size)
        usable = have - HEADER
        view = self.bytes
        view[q : q + usable] = view[p : p + usable]
        self._release(b, self._header(b))
        return q

    def _slide_down(self, b: int, have: int, need: int, size: int) -> int:
        """Grow ``b`` into its free predecessor (and free successor), moving its bytes.

        Returns the new payload offset, or 0 when the space is still too small.
        """
        pb = self._free_predecessor(b)
        n = b + have
        nbody = self._next_header(n)
        nsize = 0 if nbody & ALLOCATED else self._free_neighbour(n, nbody)
        total = have + (b - pb) + nsize
        if total < need:
            return 0
        rest = total - need
        end = pb + total
        if nsize:
            self.policy.validate(n, nsize)
            if rest < MIN_BLOCK:  # the block after the successor gets its bit set below
                abody = self._header(end)
                if abody < 0 or abody & PREV_ALLOCATED:
                    raise HeapCorruptionError(f"header of block {end + 8} is corrupted")
        if rest >= MIN_BLOCK:
            self.policy.validate_insert(rest)
        # Checked; now write.
        self.policy.remove(pb, b - pb)
        if nsize:
            self.policy.remove(n, nsize)
        view = self.bytes
        view[pb + HEADER : pb + have] = view[b + HEADER : n]  # overlapping: a memmove
        if rest >= MIN_BLOCK:
            self._set_header(pb, allocated_body(need, size, PREV_ALLOCATED))
            self._set_free(pb + need, rest)
            self.policy.insert(pb + need, rest)
            if not nsize:
                self._set_prev_allocated(end, 0)
        else:
            self._set_header(pb, allocated_body(total, size, PREV_ALLOCATED))
            if nsize:
                self._set_prev_allocated(end, 1)
        return pb + HEADER

    def _shrink(self, b: int, prev_bit: int, have: int, need: int, size: int) -> None:
        rest = have - need
        if rest < MIN_BLOCK:
            self._set_header(b, allocated_body(have, size, prev_bit))
            return
        # Split off the tail as an allocated block and free it: that coalesces it.
        r = b + need
        tail = rest | ALLOCATED | PREV_ALLOCATED
        self._release(r, tail, True)
        self._set_header(b, allocated_body(need, size, prev_bit))
        self._set_header(r, tail)
        self._release(r, tail)

    def _grow_in_place(self, b: int, prev_bit: int, have: int, need: int, size: int) -> bool:
        n = b + have
        brk = self.brk
        if n == brk:  # the block is at the top: move the break
            new_brk = b + need
            if new_brk + HEADER > self.capacity:
                return False
            if self._header(brk) != ALLOCATED | PREV_ALLOCATED:
                raise HeapCorruptionError("the heap's epilogue header is corrupted")
            self._grow_to(new_brk + HEADER)
            self._set_header(new_brk, ALLOCATED | PREV_ALLOCATED)
            self._set_header(b, allocated_body(need, size, prev_bit))
            self._set_brk(new_brk)
            return True
        nbody = self._next_header(n)
        if nbody & ALLOCATED:
            return False
        nsize = self._free_neighbour(n, nbody)
        total = have + nsize
        if total >= need:
            after = n + nsize
            rest = total - need
            abody = 0 if rest >= MIN_BLOCK else self._header(after)
            if abody < 0:
                raise HeapCorruptionError(f"header of block {after + 8} is corrupted")
            if rest >= MIN_BLOCK:
                self.policy.validate_insert(rest)
            self.policy.remove(n, nsize)
            if rest >= MIN_BLOCK:
                self._set_header(b, allocated_body(need, size, prev_bit))
                self._set_free(b + need, rest)
                self.policy.insert(b + need, rest)
            else:
                self._set_header(b, allocated_body(total, size, prev_bit))
                self._set_header(after, abody | PREV_ALLOCATED)
            return True
        if n + nsize == brk:  # a free top block that is too small: take it and move the break
            new_brk = b + need
            if new_brk + HEADER > self.capacity:
                return False
            self._grow_to(new_brk + HEADER)
            self.policy.remove(n, nsize)
            self._set_header(new_brk, ALLOCATED | PREV_ALLOCATED)
            self._set_header(b, allocated_body(need, size, prev_bit))
            self._set_brk(new_brk)
            return True
        return False

    # -- checking and statistics -------------------------------------------------

    def _walk(self) -> _Census:
        """Validate every block, free list and the cache; count what is where."""
        heap_start = self.heap_start
        brk = self.brk
        words = self.words
        if words[C.W_MAGIC] != C.MAGIC or words[C.W_BRK] != brk:
            raise HeapCorruptionError("the heap's control record is corrupted")
        census = _Census()
        free_blocks = census.free_blocks
        prev_allocated = True
        b = heap_start
        while b < brk:
            body = self._header(b)
            if body < 0:
                raise HeapCorruptionError(f"header of block {b + 8} is corrupted")
            size = block_size(body)
            if size < MIN_BLOCK or b + size > brk:
                raise HeapCorruptionError(f"block {b + 8} holds an impossible size {size}")
            if prev_is_allocated(body) != prev_allocated:
                raise HeapCorruptionError(f"block {b + 8} has a wrong prev-allocated bit")
            if is_allocated(body):
                slack = slack_of(body)
                if slack > size - HEADER:
                    raise HeapCorruptionError(f"block {b + 8} holds an impossible slack")
                if body & CACHED:
                    census.cached_blocks[b + HEADER] = size
                else:
                    census.live_blocks += 1
                    census.live_bytes += size - HEADER - slack
            else:
                if not prev_allocated:
                    raise HeapCorruptionError(f"free blocks before {b + 8} were not coalesced")
                if words[(b + size - 8) >> 3] != words[b >> 3]:
                    raise HeapCorruptionError(f"footer of free block {b + 8} does not match")
                free_blocks[b] = size
            prev_allocated = is_allocated(body)
            b += size
        epilogue = self._header(brk)
        if epilogue < 0 or block_size(epilogue) or not is_allocated(epilogue):
            raise HeapCorruptionError("the heap's epilogue header is corrupted")
        if prev_is_allocated(epilogue) != prev_allocated:
            raise HeapCorruptionError("the epilogue has a wrong prev-allocated bit")
        if words[C.W_PEAK] < brk + HEADER or words[C.W_PEAK] > self.capacity:
            raise HeapCorruptionError("the heap's peak footprint is inconsistent")
        self.policy.check(free_blocks)
        in_bins = set()
        for i in range(CACHE_BINS):
            for j in range(self._cache_counts[i]):
                p = self._cache[i * CACHE_LIMIT + j]
                if census.cached_blocks.get(p) != i << 4 or p in in_bins:
                    raise HeapCorruptionError(f"cached block {p} is not a block of {i << 4} bytes")
                in_bins.add(p)
        if not len(in_bins) == self._cached == len(census.cached_blocks):
            raise HeapCorruptionError("the cache of freed blocks is inconsistent")
        return census

    def check(self) -> None:
        """Walk every block and free list; HeapCorruptionError on any fault."""
        with self._lock:
            self._walk()

    def stats(self) -> dict[str, int]:
        """Counts derived from a full walk of the heap (so also a check).

        Blocks held in the cache of freed blocks count as free.
        """
        with self._lock:
            census = self._walk()
            brk = self.brk
            peak = self.words[C.W_PEAK]
        free_sizes = [*census.free_blocks.values(), *census.cached_blocks.values()]
        return stats_record(
            self.capacity,
            brk + HEADER,
            peak,
            census.live_bytes,
            census.live_blocks,
            free_sizes,
            len(census.cached_blocks),
        )

    def blocks(self) -> list[tuple[int, int, bool]]:
        """Every block as (payload offset, block size, allocated), in address order."""
        out: list[tuple[int, int, bool]] = []
        with self._lock:
            b = self.heap_start
            while b < self.brk:
                body = self._header(b)
                if body < 0:
                    raise HeapCorruptionError(f"header of block {b + 8} is corrupted")
                out.append((b + HEADER, block_size(body), is_allocated(body)))
                b += block_size(body) or MIN_BLOCK
        return out

    @property
    def policy_name(self) -> str:
        return self.policy.name

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.brk + HEADER} of {self.capacity} bytes"
        return f"<{type(self).__name__} {self.policy.name}, {state}>"


@dataclass
class _Census:
    """What a walk of the heap found."""

    free_blocks: dict[int, int] = field(default_factory=dict)  # block offset -> size
    cached_blocks: dict[int, int] = field(default_factory=dict)  # pointer -> block size
    live_blocks: int = 0
    live_bytes: int = 0
