"""The control record at the start of every heap region.

Word layout (8-byte words from offset 0)::

    0   MAGIC                 identifies a pyalloc heap
    1   format                FORMAT_VERSION | policy id << 16
    2   capacity              bytes of the region the heap may use
    3   heap_start            offset of the first block header
    4   brk                   offset of the epilogue header
    5   peak_footprint        highest brk + 8 ever reached
    6   header_key            XOR key of stored headers
    7   tag_secret            secret of the header tags (odd: a multiplier)
    8   link_key              XOR key of free-list links
    9   (unused since format 2; format 1 kept a probe of Python's hash here)
    10  lock                  shared heaps: byte offset of the lock area
    11-18                     shared heaps: journal, directory (shared/segment.py)
    19  committed             bytes from offset 0 whose storage is reserved
                              (file-backed heaps: the break never passes it
                              without reserving more; the capacity otherwise)
    20-22                     reserved
    23  slabs                 word index of the slab list heads (slab.py), 0: no slabs
    24- policy words          bin heads and bitmaps of the free-block index

Everything a process needs to use the heap is here; nothing about the heap
lives only in Python objects.
"""

from __future__ import annotations

from typing import Final

MAGIC: Final = int.from_bytes(b"pyalloc\x01", "little")
FORMAT_VERSION: Final = 4
"""Format 4 computes a header's tag with one multiply by the (odd) tag
secret and a mask (layout.encode), where format 3 also mixed the secret
into the body and took the product's top bits with a shift: the same tag
bits, fewer operations, different values. Format 3 keeps small objects in
slabs (word 23, INTERNAL blocks), which a reader of format 2 would take for
ordinary blocks. Format 2 tags headers with integer arithmetic; format 1
hashed them with Python's hash(), which a compiled engine cannot
reproduce."""

W_MAGIC: Final = 0
W_FORMAT: Final = 1
W_CAPACITY: Final = 2
W_HEAP_START: Final = 3
W_BRK: Final = 4
W_PEAK: Final = 5
W_HEADER_KEY: Final = 6
W_TAG_SECRET: Final = 7
W_LINK_KEY: Final = 8
W_LOCK: Final = 10
W_RESERVED: Final = 11
W_COMMITTED: Final = 19
W_SLABS: Final = 23
CONTROL_WORDS: Final = 24  # policy words start here

# Compiled, the constants above are C variables (control.pxd); this gives
# Python importers the same names and values. Interpreted, it changes nothing.
globals().update(
    MAGIC=MAGIC, FORMAT_VERSION=FORMAT_VERSION, W_MAGIC=W_MAGIC, W_FORMAT=W_FORMAT,
    W_CAPACITY=W_CAPACITY, W_HEAP_START=W_HEAP_START, W_BRK=W_BRK, W_PEAK=W_PEAK,
    W_HEADER_KEY=W_HEADER_KEY, W_TAG_SECRET=W_TAG_SECRET, W_LINK_KEY=W_LINK_KEY,
    W_LOCK=W_LOCK, W_RESERVED=W_RESERVED, W_COMMITTED=W_COMMITTED, W_SLABS=W_SLABS,
    CONTROL_WORDS=CONTROL_WORDS,
)  # fmt: skip
