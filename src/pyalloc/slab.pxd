# C types of slab.py for the compiled engine: slab geometry and size classes.
cimport cython
from pyalloc.layout cimport HEADER, MIN_BLOCK, WORD_MASK, bit, i64, u64

cdef i64 SLAB_SHIFT, SLAB_BYTES, SLAB_MASK, SLOTS_AT, GUARD, SLOT_SPAN, SMALL_MAX, NCLASSES
cdef i64 BITMAP_WORDS, SLABS_ON, D_SLAB, D_STATE, D_NEXT, D_PREV, D_BITMAP, DESC_WORDS
cdef i64 STATE_USED_SHIFT, STATE_CLASS_MASK, HEADS_BYTES
cdef i64 SMALL_BLOCK_LIMIT, SLAB_DEMAND, H_LIST, H_SLABS, ROOM_SURE
cdef bytes SLOTS

cpdef i64 size_class(i64 size) noexcept
@cython.locals(g=i64)
cpdef i64 class_size(i64 c) noexcept
@cython.cdivision(True)
cpdef i64 slots_of(i64 c) noexcept
@cython.locals(first=i64)
cpdef u64 unused_bits(i64 slots, i64 j) noexcept
@cython.locals(a=i64)
cpdef i64 aligned_block(i64 b) noexcept
cpdef bint has_slab_room(i64 b, i64 size) noexcept
