"""The block format: how a heap's bytes are laid out, in one place.

Glossary
--------
region      the mapped bytes a heap lives in (see ``regions.py``).
control     the heap's own record at the start of the region: magic, format,
            secrets, the break, and the free-block index of the policy.
block       a header word plus the bytes after it, up to the next header.
            A block's offset ``b`` is the offset of its header; ``b % 16 == 8``.
payload     what the caller gets: ``p = b + 8``, so ``p % 16 == 0``. A pointer
            is a payload offset; 0 is NULL.
break       ``brk``: the offset just past the last block. The epilogue header
            sits at ``brk``: a zero-sized, allocated block that only carries
            the prev-allocated bit of the last block.
footprint   ``brk + 8``: the bytes taken from the region, control included.

Region::

    0            control (CONTROL_WORDS words, then the policy's words)
    heap_start   first block header              heap_start % 16 == 8
    ...          blocks, each a multiple of 16 bytes, at least MIN_BLOCK
    brk          epilogue header
    brk + 8      untouched, up to the capacity

Blocks::

    allocated:  | header | payload ...................................... |
    free:       | header | next link | prev link | ........... | footer |
                b        b+8         b+16                        b+size-8

The footer of a free block is a copy of its header word; it lets the next
block find the start of a free predecessor (boundary tags). Allocated blocks
have no footer, so the overhead of an allocated block is the header alone:
``usable_size = size - 8``. The prev-allocated bit in each header tells
whether the footer before it exists.

Header word (64 bits), before encoding::

    bit 0        allocated
    bit 1        previous block allocated
    bit 2        cached: allocated, but held in a private heap's cache of
                 freed blocks (``heap.py``), so a free of it is a double free
    bit 3        internal: a block the engine holds for itself (a slab or a
                 slab's descriptor, ``slab.py``); no caller may free it
    bits 4-37    block size in bytes (a multiple of 16: bits 0-3 are free)
    bits 38-43   slack: usable size minus the size asked (allocated blocks)
    bits 44-63   tag: a keyed hash of bits 0-43 (but bit 1) and of the offset

Stored word = header ^ header_key. The key and the tag's secret are random
per heap; a header copied to another offset, or any changed bit it covers,
fails the tag check with probability about 1 - 2**-20. The tag is integer
arithmetic modulo 2**64 (``encode``), so a compiled and an interpreted
engine compute the same tags and can share a heap.

Why the prev-allocated bit is outside the tag: every malloc and free flips
the bit of the block after the one it changes, and leaving it out lets that
be one XOR instead of a decode and an encode. A forged bit cannot make two
blocks overlap: a clear bit only leads the engine to the footer before the
block, whose tag (and the header it must match) is checked before use; a set
bit only skips a merge, which ``check()`` reports. The slack lets the heap derive the bytes
the caller asked for (``usable - slack``) from the header alone, so live byte
counts can be rebuilt from the region.

Free-list links are stored as ``link ^ link_key ^ (field_offset << 20)``,
after glibc's safe-linking: a link copied elsewhere or overwritten with a
plain offset decodes to garbage, which the alignment, range and header checks
of its target refuse.

Invariants::

    sum(block sizes) == brk - heap_start
    block.prev_allocated == previous block.allocated
    no two adjacent blocks are both free            (immediate coalescing)
    free block: footer word == header word
    a block is in the policy's index  <=>  it is free
"""

from __future__ import annotations

from typing import Final

try:
    import cython
except ImportError:  # interpreted, without Cython installed
    from . import _cython as cython

ONE: Final = 1  # a 64-bit unsigned one, compiled: see bit()


def bit(n: int) -> int:
    """The word with only bit ``n`` set, ``0 <= n < 64``.

    Compiled, ``1 << n`` would shift a 32-bit C int; ``ONE`` is a 64-bit word.
    """
    return ONE << n


def bit_length(x: int) -> int:
    """The number of bits of ``x >= 0``, ``x < 2**64`` (0 for 0).

    Compiled, one count-leading-zeros instruction (the names used only when
    compiled come from layout.pxd).
    """
    if cython.compiled:
        return 64 - __builtin_clzll(x) if x else 0  # type: ignore[name-defined]  # noqa: F821
    return x.bit_length()


def lowest_bit(x: int) -> int:
    """The index of the lowest set bit of ``x > 0``, ``x < 2**64``."""
    if cython.compiled:
        return __builtin_ctzll(x)  # type: ignore[name-defined,no-any-return]  # noqa: F821
    return (x & -x).bit_length() - 1


WORD: Final = 8
ALIGN_SHIFT: Final = 4
ALIGNMENT: Final = bit(ALIGN_SHIFT)  # payload alignment, and block size granule
HEADER: Final = WORD
MIN_BLOCK: Final = 4 * WORD  # header, two links and a footer when free

ALLOCATED: Final = 1
PREV_ALLOCATED: Final = 2
CACHED: Final = 4
INTERNAL: Final = 8
FLAGS_MASK: Final = ALIGNMENT - 1

SIZE_BITS: Final = 38  # blocks up to 256 GiB
SIZE_MASK: Final = (bit(SIZE_BITS) - 1) & ~FLAGS_MASK
SLACK_SHIFT: Final = SIZE_BITS
SLACK_BITS: Final = 6
SLACK_MAX: Final = bit(SLACK_BITS) - 1
TAG_SHIFT: Final = SLACK_SHIFT + SLACK_BITS
TAG_BITS: Final = 64 - TAG_SHIFT
TAG_MASK: Final = bit(TAG_BITS) - 1
BODY_MASK: Final = bit(TAG_SHIFT) - 1  # flags, size and slack
TAGGED_MASK: Final = BODY_MASK & ~PREV_ALLOCATED  # what the tag covers
MAX_BLOCK: Final = SIZE_MASK
LINK_SHIFT: Final = 20
OFFSET_SHIFT: Final = 24  # where the offset enters the tag's input
WORD_MASK: Final = (1 << 64) - 1
TAG_FIELD: Final = WORD_MASK ^ BODY_MASK  # the tag's bits, in place

assert MIN_BLOCK % ALIGNMENT == 0 and MIN_BLOCK >= 4 * WORD
assert TAG_BITS == 20
# The slack of a block never exceeds what splitting leaves: a block is split
# when the remainder reaches MIN_BLOCK, so slack < MIN_BLOCK + ALIGNMENT + 8.
assert MIN_BLOCK + ALIGNMENT + HEADER <= SLACK_MAX + 1

# Compiled, the constants above are C variables (layout.pxd); this gives
# Python importers the same names and values. Interpreted, it changes nothing.
globals().update(
    ONE=ONE, WORD=WORD, ALIGN_SHIFT=ALIGN_SHIFT, ALIGNMENT=ALIGNMENT, HEADER=HEADER,
    MIN_BLOCK=MIN_BLOCK, ALLOCATED=ALLOCATED, PREV_ALLOCATED=PREV_ALLOCATED, CACHED=CACHED,
    INTERNAL=INTERNAL,
    FLAGS_MASK=FLAGS_MASK, SIZE_BITS=SIZE_BITS, SIZE_MASK=SIZE_MASK, SLACK_SHIFT=SLACK_SHIFT,
    SLACK_BITS=SLACK_BITS, SLACK_MAX=SLACK_MAX, TAG_SHIFT=TAG_SHIFT, TAG_BITS=TAG_BITS,
    TAG_MASK=TAG_MASK, BODY_MASK=BODY_MASK, TAGGED_MASK=TAGGED_MASK, MAX_BLOCK=MAX_BLOCK,
    LINK_SHIFT=LINK_SHIFT, OFFSET_SHIFT=OFFSET_SHIFT, WORD_MASK=WORD_MASK, TAG_FIELD=TAG_FIELD,
)  # fmt: skip


def block_size_for(size: int) -> int:
    """Block size serving a request of ``size`` payload bytes."""
    need = (size + HEADER + FLAGS_MASK) & ~FLAGS_MASK
    return need if need > MIN_BLOCK else MIN_BLOCK


def encode(body: int, offset: int, secret: int, key: int) -> int:
    """The stored form of header ``body`` (flags | size | slack) at ``offset``.

    The tag is the top TAG_BITS bits of a product modulo 2**64: the body
    (but the prev-allocated bit) mixed with the offset, times the heap's
    secret, which is odd. Every bit of the input reaches the top bits; the
    mask keeps them in place, and keeps the same bits of Python's unbounded
    product as C's wrapped one. The offset (below 2**38) shifted by 24
    overlaps only the slack and high size bits of the body.
    """
    mixed = (body & TAGGED_MASK) ^ (offset << OFFSET_SHIFT)
    return (body | (mixed * secret) & TAG_FIELD) ^ key


def decode(word: int, offset: int, secret: int, key: int) -> int:
    """The body of a stored header word, or -1 when its tag does not match.

    The check encodes the body again and compares whole words: the tag
    (and so the rule) is written once, in ``encode``.
    """
    body = (word ^ key) & BODY_MASK
    if encode(body, offset, secret, key) != word:
        return -1
    return body


def free_word(size: int, offset: int, secret: int, key: int) -> int:
    """Stored header (and footer) of a free block whose predecessor is allocated."""
    return encode(size | PREV_ALLOCATED, offset, secret, key)


def allocated_body(size: int, asked: int, prev_bit: int) -> int:
    """Header body of an allocated block of ``size`` bytes serving ``asked``."""
    return size | ALLOCATED | prev_bit | (size - HEADER - asked) << SLACK_SHIFT


def stored_size(word: int, key: int) -> int:
    """Block size of a stored header, unchecked: for searches that only compare
    sizes; the block a search picks has its header checked in full."""
    return (word ^ key) & SIZE_MASK


# Named accessors of a decoded header body.
def block_size(body: int) -> int:
    return body & SIZE_MASK


def is_allocated(body: int) -> bool:
    return bool(body & ALLOCATED)


def prev_is_allocated(body: int) -> bool:
    return bool(body & PREV_ALLOCATED)


def slack_of(body: int) -> int:
    return (body >> SLACK_SHIFT) & SLACK_MAX


def mangle(link: int, field_offset: int, key: int) -> int:
    """Stored form of a free-list link kept at ``field_offset``.

    The transform is its own inverse: the same call unmangles a stored link.
    """
    return link ^ key ^ (field_offset << LINK_SHIFT)
