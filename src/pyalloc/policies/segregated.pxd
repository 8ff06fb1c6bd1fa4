# C types of segregated.py for the compiled engine.
cimport cython
from pyalloc.layout cimport WORD_MASK, i64, i64_pair, u64
from pyalloc._accessors cimport bit, bit_length, lowest_bit
from pyalloc.slab cimport ROOM_SURE, SLAB_BYTES, has_slab_room
from pyalloc.policies.base cimport NEXT, LinkedLists

cdef i64 EXACT_SHIFT, EXACT_LIMIT, EXACT_CLASSES, SUB_SHIFT, SUB_MASK, BEST_FIT_SCAN, TABLE_LIMIT
cdef i64 SLAB_ROOM_SCAN
cdef bytes CLASS_OF

@cython.locals(f=i64)
cpdef i64 class_floor(i64 c) noexcept
@cython.locals(f=i64)
cpdef i64 size_class(i64 size) noexcept

cdef class Segregated(LinkedLists):
    cdef public i64 classes, bitmap_base, bitmap_words
    cdef public list floors

    @cython.locals(i=i64, above=u64)
    cdef inline i64 _first_class_from(self, i64 c) except? -2
    cdef inline i64 class_of(self, i64 size) except -1
    cpdef insert(self, i64 b, i64 size)
    cpdef insert_validated(self, i64 b, i64 size)
    cpdef validate(self, i64 b, i64 size)
    cpdef validate_insert(self, i64 size)
    cpdef remove(self, i64 b, i64 size)
    @cython.locals(c=i64, b=i64, size=i64)
    cpdef i64_pair take(self, i64 need)
    cdef inline i64_pair _pop_above(self, i64 c, i64 need)
    cdef inline i64_pair _pop(self, i64 c, i64 need)
    @cython.locals(at=i64)
    cdef inline object _mark_empty(self, i64 c)
    cpdef i64 find(self, i64 need) except -1
    cdef inline i64 best_in_class(self, i64 need, i64 c) except -1
    @cython.locals(c=i64, last=i64, b=i64, best=i64, best_size=i64, size=i64)
    cpdef i64_pair take_slab_room(self)
