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
  (a shared heap does not: see the ``shared`` package); otherwise it copies.

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
from .control import W_BRK, W_COMMITTED, W_PEAK, W_SLABS
from .errors import DoubleFreeError, HeapCorruptionError, HeapError, InvalidPointerError
from .journal import MetadataStore
from .layout import (
    ALLOCATED,
    CACHED,
    FLAGS_MASK,
    HEADER,
    INTERNAL,
    MAX_BLOCK,
    MIN_BLOCK,
    PREV_ALLOCATED,
    SIZE_MASK,
    TAGGED_MASK,
    WORD_MASK,
)
from .lock import HeapLock
from .policies import POLICIES, policy_by_id, policy_class
from .policies.base import FreeIndex
from .regions import AnonymousRegion, Region, page_round_up
from .slab import (
    BITMAP_WORDS,
    D_BITMAP,
    D_NEXT,
    D_PREV,
    D_SLAB,
    D_STATE,
    DESC_WORDS,
    H_LIST,
    H_SLABS,
    HEADS_BYTES,
    NCLASSES,
    SLAB_BYTES,
    SLAB_DEMAND,
    SLAB_MASK,
    SLABS_ON,
    SLOTS_AT,
    SMALL_BLOCK_LIMIT,
    SMALL_MAX,
    STATE_CLASS_MASK,
    STATE_USED_SHIFT,
    aligned_block,
    unused_bits,
)

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from . import _cython as cython

if not cython.compiled:  # compiled, inline C functions: _accessors.pxd (_inline.py)
    from .layout import (
        allocated_body,
        bit,
        block_size,
        block_size_for,
        decode,
        encode,
        free_word,
        is_allocated,
        lowest_bit,
        prev_is_allocated,
        slack_of,
        stored_size,
    )
    from .slab import class_size, size_class, slots_of

DEFAULT_CAPACITY: Final = 256 << 20
CACHE_LIMIT: Final = 16  # freed blocks kept per size in the cache ...
CACHE_MAX_BLOCK: Final = 1 << 10  # ... for block sizes below this
CACHE_BINS: Final = CACHE_MAX_BLOCK >> 4  # one bin per block size
FLUSH_BEFORE_SPLIT: Final = 1 << 13  # the cache is flushed before a split leaving this much
SMALL_BLOCK_MAX: Final = 128  # blocks this size or smaller are cut from the high end ...
SMALL_CHUNK: Final = 1 << 10  # ... and the heap grows at least this much for one
TRIM_THRESHOLD: Final = 1 << 18  # a free top block this large is trimmed ...
TOP_PAD: Final = 1 << 16  # ... down to this many bytes
TRIM_THRESHOLD_MAX: Final = 1 << 26  # each trim raises the threshold, up to this
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
    which policy comparisons want. With ``small=True`` (the default) requests
    of up to ``slab.SMALL_MAX`` bytes are served from slabs (``slab.py``):
    objects of one size class with no header each; ``small=False`` serves
    every request as a block of the policy's placement.
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
        small: bool = True,
    ) -> None:
        capacity = check_size(capacity, "capacity")
        policy_cls = policy_class(policy)
        region = AnonymousRegion(self.layout_size(capacity, policy_cls))
        self._format(region, capacity, policy_cls, small)
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
        if capacity > MAX_BLOCK:  # first: the policy's sizing takes a C integer
            raise ValueError(f"capacity {capacity} exceeds the largest heap ({MAX_BLOCK} bytes)")
        # The control record grows with the capacity: find what works from here.
        least = capacity
        need = cls.control_bytes(least, policy_cls) + HEADER + MIN_BLOCK
        while least < need:
            least = need
            need = cls.control_bytes(least, policy_cls) + HEADER + MIN_BLOCK
        if least > capacity:
            raise ValueError(f"capacity {capacity} is too small for a heap (at least {least})")
        return capacity

    @classmethod
    def _format(
        cls, region: Region, capacity: int, policy_cls: type[FreeIndex], small: bool = True
    ) -> None:
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
        if small:
            words[W_SLABS] = SLABS_ON
        key = secrets.randbits(64)
        secret = secrets.randbits(62) | 1  # odd: the tag multiplies by it (layout.encode)
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
        # Checked as Python ints before anything is bound: a stray word may
        # exceed what the compiled engine's integers hold, and a refused
        # record leaves nothing half-bound.
        capacity = int(words[C.W_CAPACITY])
        heap_start = int(words[C.W_HEAP_START])
        brk = int(words[C.W_BRK])
        if not heap_start < capacity <= region.size or not heap_start <= brk < capacity:
            raise HeapError("the heap's control record is inconsistent with its region")
        policy_cls = policy_by_id(fmt >> 16)
        self.region = region
        self.words = words
        self.meta = MetadataStore(words)
        self.buf = region.buf
        self.bytes = memoryview(region.buf)
        self.capacity = capacity
        self.heap_start = heap_start
        self.brk = brk
        self._slabs = 1 if words[W_SLABS] else 0
        # The largest block a small request may have got (a rest too small
        # for a block of its own stays with it).
        self._small_blocks = SMALL_BLOCK_LIMIT + MIN_BLOCK - 16 if self._slabs else 0
        # Live blocks of a small size before its class gets a slab (tests set 0;
        # a shared heap too), and this process's count of them by size class.
        # The count only decides when a class's first slab is made, so it lives
        # in the process, not the region: no journaled store and no check of
        # the heads block on a small block's malloc and free.
        self._slab_demand = SLAB_DEMAND
        self._small_live = array("q", bytes(8 * NCLASSES))
        self.header_key = words[C.W_HEADER_KEY]
        self.tag_secret = words[C.W_TAG_SECRET]
        self.link_key = words[C.W_LINK_KEY]
        self.policy = policy_cls(self, C.CONTROL_WORDS)
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

    def _stored_flags(self, b: int) -> int:
        """The flag bits of the header at ``b``, read without a tag check (the
        key is an XOR): the prev-allocated bit, which the tag does not cover,
        or a quick test that a full decode then confirms."""
        return (self.words[b >> 3] ^ self.header_key) & FLAGS_MASK

    def _set_prev_allocated(self, n: int, on: int) -> None:
        """Set (``on``) or clear the prev-allocated bit of the header at ``n``,
        by flipping the stored bit: no decode, no encode."""
        if (self._stored_flags(n) & PREV_ALLOCATED) != (PREV_ALLOCATED if on else 0):
            self.meta.store(n >> 3, self.words[n >> 3] ^ PREV_ALLOCATED)

    def _live_header(self, p: int) -> int:
        """Validate ``p`` as a live block's payload; return its header body."""
        b = p - HEADER
        if not (self.heap_start <= b and p + 24 <= self.brk and p & 15 == 0):
            if p == 0:
                raise InvalidPointerError("NULL is not a block")
            raise InvalidPointerError(f"pointer {p} is not in this heap or not aligned")
        body = self._header(b)
        if body < 0 or body & (ALLOCATED | CACHED | INTERNAL) != ALLOCATED:
            return self._not_a_live_header(p, body)
        if b + (body & SIZE_MASK) > self.brk or body & SIZE_MASK < MIN_BLOCK:
            raise HeapCorruptionError(f"header of block {p} holds an impossible size")
        return body

    def _not_a_live_header(self, p: int, body: int) -> int:
        """``p`` has no live block's header before it: an object in a slab
        (checked; the body of a block of its usable size is returned, for
        callers that only validate), or an error."""
        if self._slabs:
            D = self._slab_of(p)
            if D:
                usable = class_size(self._slot_class(p, D))
                return allocated_body(usable + HEADER, usable, PREV_ALLOCATED)
        if body < 0:
            self._explain_bad_header(p)
        if body & INTERNAL:
            raise InvalidPointerError(f"pointer {p} is not a block (the heap's own block)")
        raise DoubleFreeError(f"block {p} is already free")

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
        size = stored_size(footer, self.header_key)
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
        if size <= SMALL_MAX and self._slabs:
            return self._slab_malloc(size)
        return self._block_malloc(size)

    def _block_malloc(self, size: int) -> int:
        """malloc of a block with a header, placed by the policy."""
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
            return self._malloc_after_flush(b, have, need, size)
        return self._split(b, have, need, size)

    def _take_cached(self, need: int, size: int) -> int:
        """Hand a cached block of ``need`` bytes out again."""
        b = self._uncache(need >> 4)
        self._set_header(b, allocated_body(need, size, self._stored_flags(b) & PREV_ALLOCATED))
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
        """Coalesce the cache and look again, else grow: when no listed free
        block fits, or when the one that fits should not be split before the
        cache is coalesced (``_malloc_after_flush``)."""
        if self._cached:
            self._flush_cache()
            b, have = self.policy.take(need)
            if b:
                return self._split(b, have, need, size)
        return self._extend(need, size) + HEADER

    def _malloc_after_flush(self, b: int, have: int, need: int, size: int) -> int:
        """Put the large block ``b`` back, coalesce the cache, and look again.

        Cutting a small request out of a large block while cached blocks sit
        uncoalesced breaks up the space a later large request needs;
        coalesced, the cached blocks may serve this one instead. The flush
        may also merge ``b`` into the top of the heap and trim it, so the
        request goes the way of one that nothing listed fits.
        """
        self.policy.insert(b, have)
        return self._malloc_slow(need, size)

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
            self.policy.insert_validated(b, rest)
            self._set_free(b, rest)
            self._set_prev_allocated(b + have, 1)
            self._set_header(a, allocated_body(need, size, 0))
            return a + HEADER
        self.policy.insert_validated(b + need, rest)
        self._set_free(b + need, rest)
        self._set_header(b, allocated_body(need, size, PREV_ALLOCATED))
        return b + HEADER

    def _flush_cache(self) -> int:
        """Free every cached block for real, coalescing it with its neighbours."""
        for i in range(CACHE_BINS):
            while self._cache_counts[i]:
                b = self._uncache(i)
                self._release(b, self._header(b) & ~CACHED)
        return 0

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
            self.policy.insert_validated(b, rest)
            b += rest
            prev_bit = 0
        self._set_header(b, allocated_body(need, size, prev_bit))
        self._set_brk(new_brk)
        return b

    # -- free ------------------------------------------------------------------

    def _free(self, p: int) -> None:
        if not p:
            return
        if self.words[W_SLABS] > SLABS_ON:  # slabs were made: is p in one?
            D = self._slab_of(p)
            if D:
                self._slab_free(p, D)
                return
        body = self._live_header(p)
        size = body & SIZE_MASK
        if size <= self._small_blocks:
            self._free_small_block(p, body)
            return
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
        policy.insert_validated(start, total)

    def _trim(self, start: int, total: int) -> None:
        """Cut the free top block down to TOP_PAD and give its pages back.

        The threshold then at least doubles (as glibc raises its own) and
        passes the heap's extent before the trim: a free top block never
        exceeds the extent, so a program whose heap swings up and down within
        the same extent pays for page faults on its first swing only, and what
        stays mapped is bounded by its own peak.
        """
        old_brk = self.brk
        extent = old_brk - self.heap_start
        self._trim_threshold = min(
            max(self._trim_threshold << 1, extent + TOP_PAD), TRIM_THRESHOLD_MAX
        )
        new_brk = start + TOP_PAD
        self._set_header(new_brk, ALLOCATED)  # epilogue, predecessor free
        self._set_free(start, TOP_PAD)
        self.policy.insert_validated(start, TOP_PAD)  # _release validated it
        self.brk = new_brk
        self.meta.store(W_BRK, new_brk)
        if self._reserving:  # the pages given back were the file's blocks
            kept = page_round_up(new_brk + HEADER)
            if kept < self.words[W_COMMITTED]:
                self.meta.store(W_COMMITTED, kept)
        self.region.release(new_brk + HEADER, old_brk + HEADER)

    # -- realloc ---------------------------------------------------------------

    def _usable(self, p: int) -> int:
        if self._slabs:
            D = self._slab_of(p)
            if D:
                return class_size(self._slot_class(p, D))
        return (self._live_header(p) & SIZE_MASK) - HEADER

    def _resize(self, p: int, size: int) -> int:
        if self._slabs:
            D = self._slab_of(p)
            if D:
                return self._slab_resize(p, D, size)
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
        if self._cached:
            return self._resize_after_flush(p, size)
        if not prev_bit and self.realloc_slides_down:
            q = self._slide_down(b, have, need, size)
            if q:
                return q
        self._release(b, body, True)  # a refused release must come before the new block
        q = self._malloc(size)
        usable = have - HEADER
        view = self.bytes
        view[q : q + usable] = view[p : p + usable]
        self._release(b, self._header(b))
        return q

    def _resize_after_flush(self, p: int, size: int) -> int:
        """Coalesce the cache and resize again: a cached block beside ``p`` looks
        allocated, and may be the free space it can grow or slide into, as
        malloc coalesces the cache before it grows the heap."""
        self._flush_cache()
        return self._resize(p, size)

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
        # An old header the moved bytes did not cover is marked free: a
        # second free of p is then refused as one.
        if b >= pb + have:
            self._set_header(b, have | PREV_ALLOCATED)
        if rest >= MIN_BLOCK:
            self._set_header(pb, allocated_body(need, size, PREV_ALLOCATED))
            self._set_free(pb + need, rest)
            self.policy.insert_validated(pb + need, rest)
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
                self.policy.insert_validated(b + need, rest)
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

    # -- slabs -------------------------------------------------------------------
    # Requests of at most SMALL_MAX bytes (layout in slab.py). The fast paths:
    # _slab_malloc takes a slot of the first slab on its class's list,
    # _slab_free clears the slot's bit. Slow paths: _new_slab, _slab_emptied.

    def _slab_malloc(self, size: int) -> int:
        c = size_class(size)
        H = self._heads_in_range()
        d = self.words[H + H_LIST + c] if H else 0
        if not d:
            return self._slab_malloc_slow(size, c, H)
        return self._slab_take(d, c)

    def _slab_malloc_slow(self, size: int, c: int, H: int) -> int:
        """No slab of class ``c`` has room (``H``: the heads block's word index,
        or 0): a new slab, or, while the class has none and fewer blocks of
        this class live than a slab has slots and than SLAB_DEMAND, a block.

        Whether the class has slabs is read without checking the heads block:
        a wrong answer only makes a block where a slab would serve, or sends
        the request to _new_slab, which checks everything it uses."""
        live = self._small_live[c]
        demand = self._slab_demand
        if demand and live < max(demand, slots_of(c)) and not (H and self.words[H + H_SLABS + c]):
            p = self._block_malloc(size)
            self._small_live[c] = live + 1
            return p
        try:
            d = self._new_slab(c)
        except MemoryError:  # say what was asked, not the slab's own request
            raise MemoryError(
                f"cannot allocate {size} bytes: a new slab for them would exceed the heap's"
                f" capacity of {self.capacity}"
            ) from None
        return self._slab_take(d, c)

    def _free_small_block(self, p: int, body: int) -> None:
        """Free a block that may serve a small request (one served before its
        class had a slab): into the cache or the free lists, and one live
        block of that request's class fewer."""
        size = body & SIZE_MASK
        asked = size - HEADER - slack_of(body)
        if self._cache_counts[size >> 4] < self._cache_limit:
            self._keep(p, body)
        else:
            self._release(p - HEADER, body)
        if asked <= SMALL_MAX:
            c = size_class(asked)
            if self._small_live[c]:
                self._small_live[c] -= 1

    def _heads_in_range(self) -> int:
        """Word index of the heads block if control word W_SLABS names a place
        in the heap where it can be, else 0; its header is not checked."""
        h = self.words[W_SLABS]
        if h & 15 or not (self.heap_start < h and h + HEADS_BYTES <= self.brk):
            return 0
        return h >> 3

    def _heads(self) -> int:
        """Word index of the heads block, checked: the block control word
        W_SLABS names must be the heap's own block of HEADS_BYTES. Made with
        the first slab."""
        h = self.words[W_SLABS]
        if h == SLABS_ON:
            return self._make_heads()
        if not self._heads_in_range():
            raise HeapCorruptionError("the slab lists' heads are outside the heap")
        body = self._header(h - HEADER)
        if (
            body < 0
            or body & (ALLOCATED | CACHED | INTERNAL) != ALLOCATED | INTERNAL
            or not HEADS_BYTES + HEADER <= body & SIZE_MASK < SLAB_BYTES
        ):
            raise HeapCorruptionError("the slab lists' heads are not the heap's block")
        return h >> 3

    def _make_heads(self) -> int:
        h = self._block_malloc(HEADS_BYTES)
        self._set_header(h - HEADER, self._header(h - HEADER) | INTERNAL)
        for i in range(HEADS_BYTES >> 3):
            self.meta.store((h >> 3) + i, 0)
        self.meta.store(W_SLABS, h)
        return h >> 3

    def _slab_take(self, d: int, c: int) -> int:
        """Allocate the first free slot of the slab whose descriptor is ``d``
        (the head of class ``c``'s list); return its pointer."""
        words = self.words
        s = self._listed_slab(d)
        D = d >> 3
        state = words[D + D_STATE]
        used = state >> STATE_USED_SHIFT
        n = slots_of(c)
        if state & STATE_CLASS_MASK != c or used >= n:
            raise HeapCorruptionError(f"slab descriptor {d} does not belong on its list")
        j = 0
        w = words[D + D_BITMAP]
        while w == WORD_MASK:
            j += 1
            if j == BITMAP_WORDS:
                raise HeapCorruptionError(f"slab {s} counts {used} objects but its bitmap is full")
            w = words[D + D_BITMAP + j]
        k = lowest_bit(~w & WORD_MASK)
        slot = (j << 6) + k
        if slot >= n:
            raise HeapCorruptionError(f"slab {s} counts {used} objects but its bitmap is full")
        if used + 1 == n:  # full now: off the list (checked before any write)
            self._slab_unlist(d, c)
        meta = self.meta
        meta.store(D + D_BITMAP + j, w | bit(k))
        meta.store(D + D_STATE, state + (1 << STATE_USED_SHIFT))
        return s + SLOTS_AT + slot * class_size(c)

    def _slab_of(self, p: int) -> int:
        """Word index of the descriptor of the slab holding pointer ``p``, or 0
        when ``p`` is not in a slab: the header before the aligned address must
        pass its tag and say INTERNAL, and the slab's index word must name a
        descriptor that names the slab back."""
        s = p & ~SLAB_MASK
        if s <= self.heap_start or s + SLAB_BYTES - HEADER > self.brk:
            return 0
        # The two flags first, unchecked: most words before an aligned address
        # are a payload's bytes, and lack one of them.
        if self._stored_flags(s - HEADER) & (ALLOCATED | INTERNAL) != ALLOCATED | INTERNAL:
            return 0
        body = self._header(s - HEADER)
        if body < 0 or body & (ALLOCATED | CACHED | INTERNAL) != ALLOCATED | INTERNAL:
            return 0
        if body & SIZE_MASK < SLAB_BYTES:
            return 0
        D = self._slab_index(s)
        if D:
            return D
        # A slab's header, but no descriptor claims the slab: the bytes before
        # ``s`` are a payload that mimics a slab's header (once in about 2**22
        # words of random data), and ``p`` has a block header of its own; or
        # the slab's index word is corrupted, which _slab_descriptor reports.
        if self._header(p - HEADER) >= 0:
            return 0
        return self._slab_descriptor(s)

    def _descriptor_in_heap(self, d: int) -> bool:
        """Whether a slab descriptor may lie at ``d``: aligned, in the heap."""
        return not d & 15 and self.heap_start < d and d + DESC_WORDS * 8 <= self.brk

    def _descriptor_words(self, d: int) -> int:
        """Word index of the slab descriptor at ``d``, range-checked."""
        if not self._descriptor_in_heap(d):
            raise HeapCorruptionError(f"slab descriptor link {d:#x} is outside the heap")
        return d >> 3

    def _listed_slab(self, d: int) -> int:
        """The slab of descriptor ``d`` (a list head or link), checked before
        anything is written through it: the slab it names has an index word
        naming ``d``. Only the engine writes index words (keyed and tagged
        with their offset), and a slab given back has its index word cleared,
        so that proves ``d`` is the live descriptor of that slab."""
        D = self._descriptor_words(d)
        s = self.words[D + D_SLAB]
        if s & SLAB_MASK or not (self.heap_start < s and s + SLAB_BYTES - HEADER <= self.brk):
            raise HeapCorruptionError(f"slab descriptor {d} names no slab")
        if decode(self.words[s >> 3], s, self.tag_secret, self.header_key) != d:
            raise HeapCorruptionError(f"slab descriptor {d} names a slab that is not its own")
        return s

    def _slab_index(self, s: int) -> int:
        """Word index of the descriptor that the index word of slab ``s`` names
        (its tag checked) and that names ``s`` back, or 0."""
        d = decode(self.words[s >> 3], s, self.tag_secret, self.header_key)
        if not self._descriptor_in_heap(d):  # d < 0: a failed tag
            return 0
        D = d >> 3
        return D if self.words[D + D_SLAB] == s else 0

    def _slab_descriptor(self, s: int) -> int:
        """``_slab_index``, or HeapCorruptionError saying what is wrong."""
        D = self._slab_index(s)
        if D:
            return D
        d = decode(self.words[s >> 3], s, self.tag_secret, self.header_key)
        if d < 0:
            raise HeapCorruptionError(f"index word of slab {s} is corrupted")
        self._descriptor_words(d)
        raise HeapCorruptionError(f"descriptor of slab {s} names another slab")

    def _slot_of(self, p: int, s: int, D: int) -> int:
        """The slot number of ``p`` in slab ``s`` (descriptor words ``D``);
        InvalidPointerError if ``p`` is not a slot's start, DoubleFreeError
        if the slot is free."""
        c = self.words[D + D_STATE] & STATE_CLASS_MASK
        if c >= NCLASSES:
            raise HeapCorruptionError(f"descriptor of slab {s} holds an impossible class")
        size = class_size(c)
        off = p - s - SLOTS_AT
        k = off // size if off >= 0 else -1
        if k < 0 or off != k * size or k >= slots_of(c):
            raise InvalidPointerError(f"pointer {p} lies inside slab {s}, not at an object's start")
        if not self.words[D + D_BITMAP + (k >> 6)] & bit(k & 63):
            raise DoubleFreeError(f"block {p} is already free")
        return k

    def _slot_class(self, p: int, D: int) -> int:
        """The size class of the live object ``p`` of the slab of descriptor
        words ``D`` (from _slab_of), checked."""
        self._slot_of(p, p & ~SLAB_MASK, D)
        return self.words[D + D_STATE] & STATE_CLASS_MASK

    def _slab_free(self, p: int, D: int) -> None:
        """Free the object ``p`` of the slab of descriptor words ``D`` (from _slab_of)."""
        words = self.words
        s = p & ~SLAB_MASK
        k = self._slot_of(p, s, D)
        state = words[D + D_STATE]
        c = state & STATE_CLASS_MASK
        used = state >> STATE_USED_SHIFT
        n = slots_of(c)
        if not 0 < used <= n:
            raise HeapCorruptionError(f"slab {s} holds an impossible count of objects")
        if used == n:  # it was full: back on its class's list (checked before any write)
            self._slab_push(D << 3, c)
        w = words[D + D_BITMAP + (k >> 6)]
        self.meta.store(D + D_BITMAP + (k >> 6), w ^ bit(k & 63))
        self.meta.store(D + D_STATE, state - (1 << STATE_USED_SHIFT))
        if used == 1:
            self._slab_emptied(D << 3, c, s)

    def _slab_emptied(self, d: int, c: int, s: int) -> None:
        """Slab ``s`` has just become empty: give it back to the heap, where it
        coalesces, unless it is the only slab on its class's list (so that a
        class whose last object comes and goes does not cut a slab each time)."""
        D = d >> 3
        if self.words[D + D_NEXT] or self.words[D + D_PREV]:
            e = self._heads() + H_SLABS + c  # checked before writing
            self._slab_unlist(d, c)
            self.meta.store(e, self.words[e] - 1)
            self.meta.store(s >> 3, 0)  # no stale index word outlives the slab
            self._release(s - HEADER, self._header(s - HEADER) & ~INTERNAL)
            self._release(d - HEADER, self._header(d - HEADER) & ~INTERNAL)

    def _slab_push(self, d: int, c: int) -> None:
        """Put descriptor ``d`` at the head of class ``c``'s list."""
        words = self.words
        heads = self._heads()
        head = words[heads + H_LIST + c]
        H = 0
        if head:
            self._listed_slab(head)
            H = head >> 3
            if words[H + D_PREV]:
                raise HeapCorruptionError(f"slab list {c} has a head with a predecessor")
        D = d >> 3
        meta = self.meta
        meta.store(D + D_NEXT, head)
        meta.store(D + D_PREV, 0)
        if H:
            meta.store(H + D_PREV, d)
        meta.store(heads + H_LIST + c, d)

    def _slab_unlist(self, d: int, c: int) -> None:
        """Take descriptor ``d`` off class ``c``'s list, its links checked first."""
        words = self.words
        D = d >> 3
        nxt = words[D + D_NEXT]
        prv = words[D + D_PREV]
        N = P = 0
        if prv:
            self._listed_slab(prv)
            P = prv >> 3
            if words[P + D_NEXT] != d:
                raise HeapCorruptionError(f"slab list {c} is broken before descriptor {d}")
        elif words[self._heads() + H_LIST + c] != d:
            raise HeapCorruptionError(f"slab list {c} is broken at its head")
        if nxt:
            self._listed_slab(nxt)
            N = nxt >> 3
            if words[N + D_PREV] != d:
                raise HeapCorruptionError(f"slab list {c} is broken after descriptor {d}")
        meta = self.meta
        if P:
            meta.store(P + D_NEXT, nxt)
        else:
            meta.store(self._heads() + H_LIST + c, nxt)
        if N:
            meta.store(N + D_PREV, prv)

    def _new_slab(self, c: int) -> int:
        """Make an empty slab of class ``c`` and list it; return its descriptor.

        The slab first, so that its descriptor can take the gap an aligned
        slab may leave below it."""
        self._heads()
        s = self._slab_block()
        try:
            d = self._block_malloc(DESC_WORDS * 8)
        except MemoryError:
            self._release(s - HEADER, self._header(s - HEADER) & ~INTERNAL)
            raise
        self._set_header(d - HEADER, self._header(d - HEADER) | INTERNAL)
        meta = self.meta
        meta.store(s >> 3, encode(d, s, self.tag_secret, self.header_key))
        D = d >> 3
        n = slots_of(c)
        meta.store(D + D_SLAB, s)
        meta.store(D + D_STATE, c)
        for j in range(BITMAP_WORDS):
            meta.store(D + D_BITMAP + j, unused_bits(n, j))
        self._slab_push(d, c)
        e = self._heads() + H_SLABS + c
        meta.store(e, self.words[e] + 1)
        return d

    def _slab_block(self) -> int:
        """Allocate an INTERNAL block of SLAB_BYTES whose payload is slab-aligned;
        return the payload. A free block with room for it, as the policy
        chooses one, is cut into up to three (free gap, slab, free rest);
        else the heap grows."""
        b, have = self.policy.take_slab_room()
        if not b and self._cached:
            self._flush_cache()
            b, have = self.policy.take_slab_room()
        if not b:
            return self._slab_block_at_top()
        a = aligned_block(b)
        self._carve(b, have, a)
        return a + HEADER

    def _slab_block_at_top(self) -> int:
        """Grow the heap so that an aligned slab block ends at the new break."""
        brk = self.brk
        top = 0 if self._stored_flags(brk) & PREV_ALLOCATED else self._free_predecessor(brk)
        b = top or brk
        a = aligned_block(b)
        total = a + SLAB_BYTES - b
        self._extend(total, total - HEADER, False)
        self._carve(b, total, a)
        return a + HEADER

    def _carve(self, b: int, have: int, a: int) -> None:
        """Make ``[a, a + SLAB_BYTES)`` of the unlinked block ``[b, b + have)``
        an INTERNAL block; what lies below and above it becomes free blocks.

        A rest too small for a block joins the slab block, unless the block
        ends at the break: then the break comes down to the slab's end, so
        that what the heap grows by next, often the next slab, starts at an
        aligned place. Kept, the rest would put the break just past one, and
        the next slab grown at the top a slab's size further up, over a hole.
        """
        size = SLAB_BYTES
        gap = a - b
        end = b + have
        rest = end - a - size
        if rest < MIN_BLOCK:
            if end == self.brk:
                end -= rest
            else:
                size += rest
            rest = 0
        policy = self.policy
        if gap:
            policy.validate_insert(gap)
        if rest:
            policy.validate_insert(rest)
        if end < b + have:  # the new epilogue, then the break
            self._set_header(end, ALLOCATED | PREV_ALLOCATED)
            self._set_brk(end)
        if gap:
            policy.insert_validated(b, gap)
            self._set_free(b, gap)
        if rest:
            policy.insert_validated(a + size, rest)
            self._set_free(a + size, rest)
        else:
            self._set_prev_allocated(end, 1)
        prev_bit = 0 if gap else PREV_ALLOCATED
        self._set_header(a, allocated_body(size, size - HEADER, prev_bit) | INTERNAL)

    def _slab_resize(self, p: int, D: int, size: int) -> int:
        """realloc of an object in the slab of descriptor words ``D``: in place
        while it fits its slot."""
        have = class_size(self._slot_class(p, D))
        if not size:
            self._slab_free(p, D)
            return 0
        if size <= have:
            return p
        q = self._malloc(size)
        view = self.bytes
        view[q : q + have] = view[p : p + have]
        try:
            self._slab_free(p, D)
        except HeapError:
            self._free(q)  # refused: the new block goes back, p stays as it was
            raise
        return q

    def in_slab(self, p: int) -> bool:
        """Whether ``p`` lies in one of the heap's slabs (no check of the object)."""
        if type(p) is not int or not 0 < p <= 0x3FFF_FFFF_FFFF_FFFF:
            return False
        with self._lock:
            return bool(self._slabs and self._slab_of(p))

    def _check_slabs(self, census: _Census) -> None:
        """Every slab against its block, descriptor, bitmap and count, and every
        class's list against the slabs with a free slot; count slab objects."""
        internal = census.internal_blocks
        if not self._slabs:
            if internal:
                raise HeapCorruptionError("a heap without slabs holds the heap's own blocks")
            return
        words = self.words
        descriptors: dict[int, int] = {}  # descriptor -> slab
        expected: list[set[int]] = [set() for _ in range(NCLASSES)]
        per_class = [0] * NCLASSES
        heads = words[W_SLABS]
        if heads != SLABS_ON:
            if not HEADS_BYTES + HEADER <= internal.get(heads - HEADER, 0) < SLAB_BYTES:
                raise HeapCorruptionError("the slab lists' heads are not the heap's block")
        elif internal:
            raise HeapCorruptionError("a heap without slab lists holds the heap's own blocks")
        for b, size in internal.items():
            if size < SLAB_BYTES:
                continue
            s = b + HEADER
            if s & SLAB_MASK:
                raise HeapCorruptionError(f"slab {s} is not aligned")
            D = self._slab_descriptor(s)
            d = D << 3
            if d in descriptors or internal.get(d - HEADER, SLAB_BYTES) >= SLAB_BYTES:
                raise HeapCorruptionError(f"slab {s} has no descriptor of its own")
            descriptors[d] = s
            state = words[D + D_STATE]
            c = state & STATE_CLASS_MASK
            used = state >> STATE_USED_SHIFT
            if c >= NCLASSES:
                raise HeapCorruptionError(f"descriptor of slab {s} holds an impossible class")
            n = slots_of(c)
            counted = 0
            for j in range(BITMAP_WORDS):
                w = words[D + D_BITMAP + j]
                unused = unused_bits(n, j)
                if w & unused != unused:
                    raise HeapCorruptionError(f"bitmap of slab {s} frees slots it does not have")
                counted += bin(w ^ unused).count("1")
            if counted != used:
                raise HeapCorruptionError(
                    f"bitmap of slab {s} holds {counted} objects, its count says {used}"
                )
            census.live_blocks += used
            census.live_bytes += used * class_size(c)
            if used < n:
                expected[c].add(d)
            per_class[c] += 1
        for b, size in internal.items():
            if size < SLAB_BYTES and b + HEADER not in descriptors and b + HEADER != heads:
                raise HeapCorruptionError(f"the heap's block {b + HEADER} belongs to no slab")
        for c in range(NCLASSES if heads != SLABS_ON else 0):
            listed: set[int] = set()
            prev = 0
            d = words[(heads >> 3) + H_LIST + c]
            while d:
                if d not in descriptors or d in listed:
                    raise HeapCorruptionError(f"slab list {c} holds a bad descriptor {d}")
                D = d >> 3
                if words[D + D_PREV] != prev or words[D + D_STATE] & STATE_CLASS_MASK != c:
                    raise HeapCorruptionError(f"slab list {c} is broken at descriptor {d}")
                listed.add(d)
                prev = d
                d = words[D + D_NEXT]
            if listed != expected[c]:
                raise HeapCorruptionError(f"slab list {c} does not hold the slabs with room")
            if words[(heads >> 3) + H_SLABS + c] != per_class[c]:
                raise HeapCorruptionError(f"slab class {c} miscounts its slabs")

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
                if body & INTERNAL:
                    census.internal_blocks[b] = size
                elif body & CACHED:
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
        self._check_slabs(census)
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

        Blocks held in the cache of freed blocks count as free. An object in
        a slab counts its slot's bytes (``usable_size``) as live: slots keep
        no record of the size asked.
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
    # the heap's own blocks (slabs and their descriptors): block offset -> size
    internal_blocks: dict[int, int] = field(default_factory=dict)
    live_blocks: int = 0
    live_bytes: int = 0
