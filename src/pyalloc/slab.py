"""Slabs: small objects without headers, in runs of one size class.

A request of at most SMALL_MAX bytes is served from a **slab**: an ordinary
allocated block of the heap (``heap.py``), SLAB_BYTES long, whose payload
starts at a multiple of SLAB_BYTES. Its header carries the INTERNAL flag
(layout.py), so no caller can free, view or resize the slab itself.

Layout of a slab (payload ``s``, ``s % SLAB_BYTES == 0``)::

    s - 8                 the slab block's header (INTERNAL, tagged)
    s                     index word: the descriptor's offset, encoded as a
                          header at ``s`` (keyed and tagged)
    s + 8                 unused (keeps slots 16-byte aligned)
    s + SLOTS_AT          slot 0, slot 1, ... each ``class_size(c)`` bytes
    ...                   at least GUARD bytes no slot covers
    s - 8 + SLAB_BYTES    the next block's header

The **descriptor** of a slab is a block of its own elsewhere in the heap
(also INTERNAL), DESC_WORDS words::

    D_SLAB      the slab's payload offset ``s`` (a back-pointer: checked)
    D_STATE     size class | used slots << STATE_USED_SHIFT
    D_NEXT      next descriptor of the class's list of slabs with a free slot
    D_PREV      previous one (0 for the head)
    D_BITMAP    BITMAP_WORDS words, bit k set iff slot k is allocated; bits
                past the last slot are set, so they are never handed out

Nothing about a slot lies beside it: an overflow out of a slot reaches the
next slot or the guard, never a header, a bitmap or a link. A pointer's slab
is found by arithmetic (``p & -SLAB_BYTES``) and trusted only when the header
before it passes its tag and says INTERNAL and the index word names a
descriptor that points back. The word before the aligned address is often
another block's payload, which passes for a slab's header about once in
2**22 random words: when no descriptor claims the slab and the pointer has a
block header of its own, it is a block.

In a private ``Heap``, a class gets its first slab only once as many
blocks of its size are live at once as one of its slabs has slots, and at
least SLAB_DEMAND (as this process counts them: the count is a heuristic,
kept out of the region): until then its requests are blocks with headers,
which the heap's cache of freed blocks recycles, so a heap with a few small
objects does not pay 4 KiB for each size it uses, nor a class whose demand
would leave most of a slab empty. A shared or mapped heap, which has no such
cache, gives a class its slab with its first object: there the slab is what
recycles small objects, for every process.

The **heads block** (HEADS_BYTES, INTERNAL too), made with the first small
request, holds the head of each class's list of slabs with a free slot and
each class's number of slabs;
control word ``W_SLABS`` holds its payload offset (0: the heap has no slabs;
SLABS_ON: it has, but no slab was made yet), so a heap that never serves a
small object carries no slab metadata at all. A slab that becomes empty
goes back to the heap, where it coalesces, unless it is the only slab of
its class on the list: a class whose last object comes and goes keeps its
slab (the hysteresis).

Size classes: 16-byte steps up to 128 bytes, then four per doubling
(160, 192, 224, 256, 320, ...), up to SMALL_MAX.
"""

from __future__ import annotations

from typing import Final

from .layout import HEADER, MIN_BLOCK, WORD_MASK, bit

SLAB_SHIFT: Final = 12
SLAB_BYTES: Final = 1 << SLAB_SHIFT  # a slab block's size and its payload's alignment
SLAB_MASK: Final = SLAB_BYTES - 1
SLOTS_AT: Final = 16  # the index word and a pad, then slot 0
GUARD: Final = 16  # bytes after the last slot that no slot covers
SLOT_SPAN: Final = SLAB_BYTES - HEADER - SLOTS_AT - GUARD  # bytes the slots may cover
SMALL_MAX: Final = 128  # the largest request a slab serves
NCLASSES: Final = 8  # size classes up to SMALL_MAX
BITMAP_WORDS: Final = 4  # 64 bits each: enough for SLOT_SPAN // 16 slots
SLABS_ON: Final = 1  # W_SLABS of a heap with slabs but no list heads yet

D_SLAB: Final = 0
D_STATE: Final = 1
D_NEXT: Final = 2
D_PREV: Final = 3
D_BITMAP: Final = 4
DESC_WORDS: Final = D_BITMAP + BITMAP_WORDS
STATE_USED_SHIFT: Final = 8
STATE_CLASS_MASK: Final = (1 << STATE_USED_SHIFT) - 1
SMALL_BLOCK_LIMIT: Final = (SMALL_MAX + HEADER + 15) & ~15  # a block serving a small request
SLAB_DEMAND: Final = 128  # live blocks of a small size before its class's first slab, at least
H_LIST: Final = 0  # heads block: the head of each class's list of slabs with room,
H_SLABS: Final = NCLASSES  # each class's number of slabs,
HEADS_BYTES: Final = 8 * 2 * NCLASSES
ROOM_SURE: Final = 2 * SLAB_BYTES + MIN_BLOCK  # a free block this large always has slab room

assert SLOT_SPAN // 16 <= 64 * BITMAP_WORDS
assert SLAB_BYTES & SLAB_MASK == 0


def size_class(size: int) -> int:
    """The class serving a request of ``size`` bytes, ``0 <= size <= SMALL_MAX``."""
    if size <= 128:
        return (size - 1) >> 4 if size else 0
    if size <= 256:
        return 4 + ((size - 1) >> 5)
    if size <= 512:
        return 8 + ((size - 1) >> 6)
    return 12 + ((size - 1) >> 7)


def class_size(c: int) -> int:
    """Bytes of a slot of class ``c``."""
    if c < 8:
        return (c + 1) << 4
    g = (c >> 2) - 1  # 16 << g is the class's step
    return (c - 4 * g + 1) << (4 + g)


# Slots of a slab of each class, SLOT_SPAN // class_size(c): a table, since
# a division is the slowest instruction on a small object's malloc and free.
SLOTS: Final = bytes(SLOT_SPAN // class_size(c) for c in range(NCLASSES))


def slots_of(c: int) -> int:
    """Slots of a slab of class ``c``."""
    return SLOTS[c]


def unused_bits(slots: int, j: int) -> int:
    """The bits of bitmap word ``j`` past the last of ``slots`` slots: always set."""
    first = j << 6
    if slots >= first + 64:
        return 0
    if slots <= first:
        return WORD_MASK
    return WORD_MASK ^ (bit(slots - first) - 1)


def aligned_block(b: int) -> int:
    """The first block offset at or after ``b`` whose payload is slab-aligned
    and whose gap from ``b`` is none or a whole free block."""
    a = ((b + HEADER + SLAB_MASK) & ~SLAB_MASK) - HEADER
    if 0 < a - b < MIN_BLOCK:
        a += SLAB_BYTES
    return a


def has_slab_room(b: int, size: int) -> bool:
    """The block of ``size`` bytes at ``b`` can be carved into a slab block
    (at ``aligned_block(b)``) and free blocks around it."""
    return aligned_block(b) + SLAB_BYTES <= b + size


assert class_size(NCLASSES - 1) == SMALL_MAX and size_class(SMALL_MAX) == NCLASSES - 1

# Compiled, the constants above are C variables (slab.pxd); this gives Python
# importers the same names and values. Interpreted, it changes nothing.
globals().update(
    SLAB_SHIFT=SLAB_SHIFT, SLAB_BYTES=SLAB_BYTES, SLAB_MASK=SLAB_MASK, SLOTS_AT=SLOTS_AT,
    GUARD=GUARD, SLOT_SPAN=SLOT_SPAN, SLOTS=SLOTS, SMALL_MAX=SMALL_MAX, NCLASSES=NCLASSES,
    BITMAP_WORDS=BITMAP_WORDS, SLABS_ON=SLABS_ON, D_SLAB=D_SLAB, D_STATE=D_STATE,
    D_NEXT=D_NEXT, D_PREV=D_PREV, D_BITMAP=D_BITMAP, DESC_WORDS=DESC_WORDS,
    STATE_USED_SHIFT=STATE_USED_SHIFT, STATE_CLASS_MASK=STATE_CLASS_MASK, HEADS_BYTES=HEADS_BYTES,
    SMALL_BLOCK_LIMIT=SMALL_BLOCK_LIMIT, SLAB_DEMAND=SLAB_DEMAND, H_LIST=H_LIST, H_SLABS=H_SLABS,
    ROOM_SURE=ROOM_SURE,
)  # fmt: skip
