"""The binary buddy system: power-of-two blocks that split in halves and merge back.

Glossary
--------
arena       the part of the region that holds blocks: from ``base`` up to
            ``brk``; ``base % 16 == 8``, so payloads are 16-byte aligned.
offset      a block's place in the arena: ``o = b - base``.
order k     a block of order k has ``2**k`` bytes and ``o % 2**k == 0``.
buddy       the other half of the order-(k+1) block a block of order k came
            from: the block at ``o ^ 2**k``. It is found by arithmetic, so
            blocks need no footer and no size search.
split       a free block of order k+1 becomes two free buddies of order k.
merge       a freed block whose buddy is free and of the same order becomes
            their parent, and so on up.

Region::

    0       control record (control.py's words, this module's magic), then
            the list heads of orders 0..MAX_ORDER and the order bitmap
    base    first block header                          base % 16 == 8
    ...     blocks tiling [base, brk)
    brk     the epilogue: one header word (allocated, order 0) after the
            last block; ``brk + 8`` is the footprint, which may grow to the
            capacity

Blocks::

    allocated:  | header | payload ............................ |  usable = 2**k - 8
    free:       | header | next link | prev link | ............ |

Header word: ``layout.encode`` of the body below at the block's offset, with
this heap's random XOR key and tag secret, exactly as the engine encodes its
headers (a forged or copied header fails the keyed tag)::

    bit 0       allocated
    bit 1       zero (the bit the tag does not cover: a set bit is corruption)
    bits 2-7    order
    bits 8-43   bytes asked (allocated blocks), so live bytes can be counted

Free-list links are the engine's (``policies.base.LinkedLists``: mangled,
both neighbours checked before an unlink). List k holds the free blocks of
order k; bit k of the order bitmap is set iff list k is non-empty, so the
smallest free block of order >= k is a shift and a lowest-set-bit away.

Sizes: a request of n bytes takes the order of ``n + 8`` rounded up to a
power of two, at least MIN_ORDER (32 bytes: a header and two links when
free). Internal fragmentation is up to half a block: the price of O(log n)
split and merge with no search at all.

Growth: like sbrk, the arena grows at ``brk`` by the block a request needs
when no free block is large enough, after checking the epilogue: a write
past the last block is reported rather than built over. A block of order k must start at a
multiple of ``2**k``, so the gap from ``brk`` up to that multiple is first
covered with free blocks, each of the order of the lowest set bit of the
current offset; they are ordinary free blocks and merge with their buddies.

Invariants::

    the blocks tile [base, brk), each at an offset that is a multiple of its size
    block is on list k  <=>  it is free and of order k
    bit k of the bitmap  <=>  list k is non-empty
    no free block has a free buddy of its own order        (merging is immediate)
    a buddy either lies wholly below brk or does not exist yet
    epilogue header == allocated, order 0

A buddy's offset is always the start of a block: the order-(k+1) block that
holds ``o`` holds the buddy's range too, and were that range inside a larger
block, the larger block would hold ``o`` as well. So the buddy's header is
always a real header, and a merge can check its tag.

Edge cases, as for ``Heap``: ``malloc(0)`` returns a unique minimum block;
``free(0)`` does nothing; ``realloc(0, n)`` is ``malloc(n)``; ``realloc(p,
0)`` frees p and returns 0; a failed realloc raises MemoryError and leaves p
as it was. A request larger than the largest power of two that fits in the
capacity raises MemoryError, even when the capacity holds that many bytes.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Final, cast

from . import control as C
from .allocator import Allocator, check_size, stats_record
from .errors import DoubleFreeError, HeapCorruptionError, InvalidPointerError
from .heap import DEFAULT_CAPACITY
from .journal import MetadataStore
from .layout import ALLOCATED, HEADER, PREV_ALLOCATED, TAG_SHIFT
from .lock import HeapLock
from .policies.base import PREV, LinkedLists
from .regions import AnonymousRegion, Region

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from . import _cython as cython

if not cython.compiled:  # compiled, inline C functions: _accessors.pxd (_inline.py)
    from .layout import bit, bit_length, decode, encode, lowest_bit

if TYPE_CHECKING:
    from .heap import Heap

BUDDY_MAGIC: Final = int.from_bytes(b"pyabudy\x01", "little")
BUDDY_FORMAT: Final = 1

MIN_ORDER: Final = 5  # 32 bytes: a header and two links
ORDER_SHIFT: Final = 2
ORDER_BITS: Final = 6
ORDER_MASK: Final = bit(ORDER_BITS) - 1
ASKED_SHIFT: Final = ORDER_SHIFT + ORDER_BITS
ASKED_BITS: Final = TAG_SHIFT - ASKED_SHIFT
MAX_ORDER: Final = ASKED_BITS  # a block of 2**MAX_ORDER bytes can record any request it serves
MAX_CAPACITY: Final = bit(MAX_ORDER)
RESERVED: Final = PREV_ALLOCATED  # must be clear in every buddy header
EPILOGUE: Final = ALLOCATED  # the header body at brk: allocated, order 0

W_LISTS: Final = C.CONTROL_WORDS  # list head of order k at W_LISTS + k
W_BITMAP: Final = W_LISTS + MAX_ORDER + 1
CONTROL_END: Final = (W_BITMAP + 1) * 8
BASE: Final = ((CONTROL_END + HEADER + 15) & ~15) - HEADER  # first block header

assert bit(MIN_ORDER) >= 4 * 8 and ASKED_BITS == 36
assert MAX_ORDER <= ORDER_MASK and MAX_ORDER < 64  # orders fit the field and the bitmap
assert BASE % 16 == 8 and BASE >= CONTROL_END


def order_for(size: int) -> int:
    """Order of the block serving a request of ``size`` bytes."""
    k = bit_length(size + HEADER - 1)
    return k if k > MIN_ORDER else MIN_ORDER


class _OrderLists(LinkedLists):
    """The free list of each order, through the engine's LinkedLists.

    It reads ``heap_start``, ``link_key`` and ``words`` of its heap, which
    BuddyHeap provides with the same meaning as Heap does; a free block's size
    is the buddy heap's to say (its order, not a size field).
    """

    name = "buddy"
    policy_id = 0  # not an engine policy: never written in a format word

    def free_size(self, b: int) -> int:
        return cast("BuddyHeap", self.heap).free_block_size(b)


class BuddyHeap(Allocator):
    """A heap of power-of-two blocks in a private anonymous mapping.

    The API is ``Heap``'s: malloc, calloc, realloc, free, usable_size, view,
    check, stats (the same keys), blocks, close, a context manager, and a
    per-heap lock unless ``lock=False``. There is no cache of freed blocks.
    """

    policy_name: Final = "buddy"
    region: Region

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, lock: bool = True) -> None:
        capacity = check_size(capacity, "capacity")
        if capacity < BASE + bit(MIN_ORDER) + HEADER:
            raise ValueError(f"capacity {capacity} is too small for a heap (at least {BASE + 40})")
        if capacity > MAX_CAPACITY:
            raise ValueError(f"capacity {capacity} exceeds the largest buddy heap ({MAX_CAPACITY})")
        region = AnonymousRegion(capacity)
        words = region.words
        for i in range(CONTROL_END >> 3):
            words[i] = 0
        words[C.W_FORMAT] = BUDDY_FORMAT
        words[C.W_CAPACITY] = capacity
        words[C.W_HEAP_START] = BASE
        words[C.W_BRK] = BASE
        words[C.W_PEAK] = BASE + HEADER
        words[C.W_HEADER_KEY] = secrets.randbits(64)
        words[C.W_TAG_SECRET] = secret = secrets.randbits(62) | 1  # odd: see layout.encode
        words[C.W_LINK_KEY] = secrets.randbits(64) & ~15
        words[C.W_MAGIC] = BUDDY_MAGIC
        self.region = region
        self.words = words
        self.meta = MetadataStore(words)
        self.buf = region.buf
        self.bytes = memoryview(region.buf)
        self.capacity = capacity
        self.heap_start = BASE
        self.brk = BASE
        self.header_key = words[C.W_HEADER_KEY]
        self.tag_secret = secret
        self.link_key = words[C.W_LINK_KEY]
        self._set_header(BASE, EPILOGUE)
        # The largest block that fits: its offset 0 is aligned to any order.
        self.max_order = min((capacity - BASE - HEADER).bit_length() - 1, MAX_ORDER)
        self._lists = _OrderLists(cast("Heap", self), W_LISTS)
        self._lock = HeapLock()
        self._closed = False
        self._locking = True
        if not lock:
            self._unlocked_entry_points()

    def _release_views(self) -> None:
        self._lists.release()
        self.meta.release()
        self.words = None  # type: ignore[assignment]

    def _bind_views(self) -> None:
        words = self.region.words
        self.words = words
        self.meta.words = words
        self._lists.words = words
        self._lists.meta = self.meta

    # -- headers -----------------------------------------------------------------

    def _header(self, b: int) -> int:
        """The body of the header at ``b``, or -1 if it fails its tag or is malformed."""
        body = decode(self.words[b >> 3], b, self.tag_secret, self.header_key)
        if body & RESERVED:
            return -1
        return body

    def _set_header(self, b: int, body: int) -> None:
        self.words[b >> 3] = encode(body, b, self.tag_secret, self.header_key)

    def free_block_size(self, b: int) -> int:
        """Size of the free block at ``b``; HeapCorruptionError if it is not one."""
        if not (self.heap_start <= b < self.brk and (b - self.heap_start) & 31 == 0):
            raise HeapCorruptionError(f"free-list link to offset {b:#x} is not a block")
        body = self._header(b)
        if body < 0:
            raise HeapCorruptionError(f"header of free block {b + 8} is corrupted")
        if body & ALLOCATED:
            raise HeapCorruptionError(f"free list holds block {b + 8}, which is allocated")
        k = body >> ORDER_SHIFT & ORDER_MASK
        if not MIN_ORDER <= k <= self.max_order or (b - self.heap_start) & (bit(k) - 1):
            raise HeapCorruptionError(f"free block {b + 8} holds an impossible order {k}")
        return bit(k)

    def _live_header(self, p: int) -> int:
        """Validate ``p`` as a live block's payload; return its header body."""
        b = p - HEADER
        base = self.heap_start
        if not (base <= b and p + 24 <= self.brk and (b - base) & 31 == 0):
            if p == 0:
                raise InvalidPointerError("NULL is not a block")
            raise InvalidPointerError(f"pointer {p} is not in this heap or not aligned")
        body = self._header(b)
        if body < 0:
            self._explain_bad_header(p)
        if not body & ALLOCATED:
            raise DoubleFreeError(f"block {p} is already free")
        k = body >> ORDER_SHIFT & ORDER_MASK
        if (
            not MIN_ORDER <= k <= self.max_order
            or (b - base) & (bit(k) - 1)
            or b + bit(k) > self.brk
            or body >> ASKED_SHIFT > bit(k) - HEADER
        ):
            raise HeapCorruptionError(f"header of block {p} holds an impossible order or size")
        return body

    def _explain_bad_header(self, p: int) -> None:
        """A pointer's header failed its tag: tell a stray pointer from corruption."""
        target = p - HEADER
        b = self.heap_start
        while b < self.brk:
            if b == target:
                raise HeapCorruptionError(f"header of block {p} is corrupted")
            body = self._header(b)
            if body < 0:
                raise HeapCorruptionError(
                    f"header of block {b + 8} is corrupted (found while checking pointer {p})"
                )
            k = body >> ORDER_SHIFT & ORDER_MASK
            if k < MIN_ORDER:
                raise HeapCorruptionError(f"header of block {b + 8} holds an impossible order")
            if b < target < b + bit(k):
                raise InvalidPointerError(
                    f"pointer {p} lies inside block {b + 8}, not at its start"
                )
            b += bit(k)
        raise InvalidPointerError(f"pointer {p} is not a block of this heap")

    # -- free lists ----------------------------------------------------------------

    def _push(self, k: int, b: int) -> None:
        """Put the free block ``b`` (header already written) on list ``k``."""
        self._lists.push(W_LISTS + k, b)
        self.words[W_BITMAP] |= bit(k)

    def _unlink(self, k: int, b: int) -> None:
        """Take ``b`` off list ``k``; its neighbours' links are checked first."""
        self._lists.unlink(W_LISTS + k, b)
        if not self.words[W_LISTS + k]:
            self.words[W_BITMAP] &= ~bit(k)

    def _check_epilogue(self) -> None:
        if self._header(self.brk) != EPILOGUE:
            raise HeapCorruptionError("the heap's epilogue header is corrupted")

    def _set_brk(self, brk: int) -> None:
        """Move the break up to ``brk``; the epilogue first, so a block always has one after it."""
        self._set_header(brk, EPILOGUE)
        self.brk = brk
        self.words[C.W_BRK] = brk
        if brk + HEADER > self.words[C.W_PEAK]:
            self.words[C.W_PEAK] = brk + HEADER

    # -- malloc --------------------------------------------------------------------

    def _malloc(self, size: int) -> int:
        k = order_for(size)
        if k > self.max_order:
            raise MemoryError(
                f"cannot allocate {size} bytes: the largest block of this heap has "
                f"{bit(self.max_order)} bytes"
            )
        available = self.words[W_BITMAP] >> k
        if available:
            j = k + lowest_bit(available)
            b = self._take(j)
            while j > k:  # split: keep the lower half, list the upper one
                j -= 1
                half = b + bit(j)
                self._set_header(half, j << ORDER_SHIFT)
                self._push(j, half)
        else:
            b = self._grow(k, size)
        self._set_header(b, ALLOCATED | k << ORDER_SHIFT | size << ASKED_SHIFT)
        return b + HEADER

    def _take(self, k: int) -> int:
        """Unlink the first block of list ``k``, checked in full."""
        b = self.words[W_LISTS + k]
        if self.free_block_size(b) != bit(k):
            raise HeapCorruptionError(f"free block {b + 8} is on the list of order {k}")
        if self._lists.read_link(b, PREV):
            raise HeapCorruptionError(f"free block {b + 8} heads its list but has a prev link")
        self._unlink(k, b)
        return b

    def _grow(self, k: int, size: int) -> int:
        """Extend the arena with a block of order ``k``; return its offset."""
        base = self.heap_start
        top = self.brk - base
        start = (top + bit(k) - 1) & -bit(k)
        if base + start + bit(k) + HEADER > self.capacity:
            raise MemoryError(
                f"cannot allocate {size} bytes: the heap would exceed its capacity"
                f" of {self.capacity}"
            )
        self._check_epilogue()
        while top < start:  # cover the gap with aligned free blocks
            j = lowest_bit(top)
            self._set_brk(base + top + bit(j))
            self._set_header(base + top, ALLOCATED | j << ORDER_SHIFT)
            self._release(base + top, j)
            top += bit(j)
        self._set_brk(base + start + bit(k))
        return base + start

    # -- free ----------------------------------------------------------------------

    def _free(self, p: int) -> None:
        if not p:
            return
        body = self._live_header(p)
        self._release(p - HEADER, body >> ORDER_SHIFT & ORDER_MASK)

    def _release(self, b: int, k: int, dry_run: bool = False) -> None:
        """Free the allocated block ``b`` of order ``k``, merging it with free buddies.

        Every buddy's header and links are checked before the first write;
        with ``dry_run``, only the checks (for a realloc that must know the
        release will succeed before it allocates).
        """
        base = self.heap_start
        top = self.brk - base
        o = b - base
        merged: list[tuple[int, int]] = []  # (buddy, order) absorbed, lowest order first
        j = k
        while j < self.max_order:
            bo = o ^ bit(j)
            if bo + bit(j) > top:
                break  # the buddy does not exist (yet)
            buddy = base + bo
            body = self._header(buddy)
            if body < 0:
                raise HeapCorruptionError(f"header of block {buddy + 8} is corrupted")
            if body & ALLOCATED or body >> ORDER_SHIFT & ORDER_MASK != j:
                break
            if body >> ASKED_SHIFT:
                raise HeapCorruptionError(f"free block {buddy + 8} records a request")
            self._lists.neighbours(W_LISTS + j, buddy)
            merged.append((buddy, j))
            o &= ~bit(j)
            j += 1
        self._lists.check_head(W_LISTS + j)  # the list the merged block goes on
        if dry_run:
            return
        for buddy, order in merged:
            self._unlink(order, buddy)
        start = base + o
        if start != b:
            # b's header is now inside the merged block: mark it free, so that a
            # second free of b is refused as such.
            self._set_header(b, k << ORDER_SHIFT)
        self._set_header(start, j << ORDER_SHIFT)
        self._push(j, start)

    # -- realloc -------------------------------------------------------------------

    def _usable(self, p: int) -> int:
        """Usable bytes of the live block ``p``: its power of two less the header."""
        return (bit(self._live_header(p) >> ORDER_SHIFT & ORDER_MASK)) - HEADER

    def _resize(self, p: int, size: int) -> int:
        body = self._live_header(p)
        b = p - HEADER
        k = body >> ORDER_SHIFT & ORDER_MASK
        if not size:
            self._release(b, k)
            return 0
        want = order_for(size)
        if want <= k:
            # Shrink: keep the lower part; each upper half becomes a free block
            # whose buddy (the part kept) is allocated, so nothing merges.
            for j in range(want, k):
                self._lists.check_head(W_LISTS + j)
            self._set_header(b, ALLOCATED | want << ORDER_SHIFT | size << ASKED_SHIFT)
            for j in range(k - 1, want - 1, -1):
                half = b + bit(j)
                self._set_header(half, j << ORDER_SHIFT)
                self._push(j, half)
            return p
        if want <= self.max_order and self._grow_in_place(b, k, want, size):
            return p
        self._release(b, k, True)  # a refused release must come before the new block
        q = self._malloc(size)
        usable = bit(k) - HEADER
        self.bytes[q : q + usable] = self.bytes[p : p + usable]
        self._release(b, k)
        return q

    def _grow_in_place(self, b: int, k: int, want: int, size: int) -> bool:
        """Absorb the right-hand buddies of orders k..want-1, if all are free (or unmade)."""
        base = self.heap_start
        o = b - base
        if o & (bit(want) - 1):
            return False  # b would not be the lower half of the block it grows into
        top = self.brk - base
        absorbed: list[tuple[int, int]] = []
        extend = False
        for j in range(k, want):
            r = o + bit(j)
            if r == top:
                if base + o + bit(want) + HEADER > self.capacity:
                    return False
                self._check_epilogue()
                extend = True
                break
            body = self._header(base + r)
            if body < 0:
                raise HeapCorruptionError(f"header of block {base + r + 8} is corrupted")
            if body & ALLOCATED or body >> ORDER_SHIFT & ORDER_MASK != j:
                return False
            self._lists.neighbours(W_LISTS + j, base + r)
            absorbed.append((base + r, j))
        for buddy, order in absorbed:
            self._unlink(order, buddy)
        if extend:
            self._set_brk(base + o + bit(want))
        self._set_header(b, ALLOCATED | want << ORDER_SHIFT | size << ASKED_SHIFT)
        return True

    # -- checking and statistics -------------------------------------------------------

    def _walk(self) -> tuple[dict[int, int], int, int]:
        """Validate every block, buddy and list.

        Returns (free block offset -> order, live blocks, live bytes).
        """
        words = self.words
        base = self.heap_start
        brk = self.brk
        if words[C.W_MAGIC] != BUDDY_MAGIC or words[C.W_BRK] != brk:
            raise HeapCorruptionError("the heap's control record is corrupted")
        if not brk + HEADER <= words[C.W_PEAK] <= self.capacity:
            raise HeapCorruptionError("the heap's peak footprint is inconsistent")
        self._check_epilogue()
        free: dict[int, int] = {}
        live_blocks = live_bytes = 0
        b = base
        while b < brk:
            body = self._header(b)
            if body < 0:
                raise HeapCorruptionError(f"header of block {b + 8} is corrupted")
            k = body >> ORDER_SHIFT & ORDER_MASK
            if not MIN_ORDER <= k <= self.max_order or (b - base) & (bit(k) - 1):
                raise HeapCorruptionError(f"block {b + 8} holds an impossible order {k}")
            if b + bit(k) > brk:
                raise HeapCorruptionError(f"block {b + 8} runs past the end of the arena")
            asked = body >> ASKED_SHIFT
            if body & ALLOCATED:
                if asked > bit(k) - HEADER:
                    raise HeapCorruptionError(f"block {b + 8} records more bytes than it holds")
                live_blocks += 1
                live_bytes += asked
            else:
                if asked:
                    raise HeapCorruptionError(f"free block {b + 8} records a request")
                free[b] = k
            b += bit(k)
        top = brk - base
        for b, k in free.items():
            bo = (b - base) ^ bit(k)
            if bo + bit(k) <= top and free.get(base + bo) == k:
                raise HeapCorruptionError(f"free buddies {b + 8} and {base + bo + 8} not merged")
        bitmap = words[W_BITMAP]
        if bitmap >> (self.max_order + 1) or bitmap & (bit(MIN_ORDER) - 1):
            raise HeapCorruptionError("the order bitmap has bits outside the heap's orders")
        seen = 0
        for k in range(self.max_order + 1):
            members = self._lists.walk(W_LISTS + k, len(free) + 1)
            if bool(members) != bool(bitmap >> k & 1):
                raise HeapCorruptionError(f"bitmap bit {k} disagrees with its list")
            for m in members:
                if free.get(m) != k:
                    raise HeapCorruptionError(
                        f"list {k} holds {m + 8}: not free or not of order {k}"
                    )
            seen += len(members)
        if seen != len(free):
            raise HeapCorruptionError(f"{len(free)} free blocks in the heap, {seen} in the lists")
        return free, live_blocks, live_bytes

    def check(self) -> None:
        """Walk every block and free list; HeapCorruptionError on any fault."""
        with self._lock:
            self._walk()

    def stats(self) -> dict[str, int]:
        """Counts derived from a full walk of the heap (so also a check); Heap's keys."""
        with self._lock:
            free, live_blocks, live_bytes = self._walk()
            brk = self.brk
            peak = self.words[C.W_PEAK]
        sizes = [bit(k) for k in free.values()]
        return stats_record(self.capacity, brk + HEADER, peak, live_bytes, live_blocks, sizes)

    def blocks(self) -> list[tuple[int, int, bool]]:
        """Every block as (payload offset, block size, allocated), in address order."""
        out: list[tuple[int, int, bool]] = []
        with self._lock:
            b = self.heap_start
            while b < self.brk:
                body = self._header(b)
                k = body >> ORDER_SHIFT & ORDER_MASK
                if body < 0 or k < MIN_ORDER:
                    raise HeapCorruptionError(f"header of block {b + 8} is corrupted")
                out.append((b + HEADER, bit(k), bool(body & ALLOCATED)))
                b += bit(k)
        return out

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.brk + HEADER} of {self.capacity} bytes"
        return f"<BuddyHeap {state}>"


__all__ = ["MAX_ORDER", "MIN_ORDER", "BuddyHeap", "order_for"]
