# C types of tlsf.py for the compiled engine.
cimport cython
from pyalloc.layout cimport ALIGN_SHIFT, MAX_BLOCK, MIN_BLOCK, WORD_MASK, i64, i64_pair, u64
from pyalloc._accessors cimport bit, bit_length, lowest_bit
from pyalloc.control cimport W_BRK
from pyalloc.policies.base cimport LinkedLists

cdef i64 SL_SHIFT, SL_COUNT, SL_MASK, FL_SHIFT, SMALL_BLOCK, FL_MAX

@cython.locals(f=i64)
cpdef i64 list_index(i64 size) noexcept
cpdef i64 search_index(i64 need) noexcept
@cython.locals(fl=i64, sl=i64, f=i64)
cpdef i64 list_floor(i64 i) noexcept

cdef class TLSF(LinkedLists):
    cdef public i64 fl_count, lists, fl_word, sl_base

    @cython.locals(fl=i64, bits=u64, above=u64)
    cdef inline i64 _first_from(self, i64 i) except? -2
    @cython.locals(i=i64, fl=i64)
    cpdef insert(self, i64 b, i64 size)
    cpdef insert_validated(self, i64 b, i64 size)
    cpdef validate(self, i64 b, i64 size)
    cpdef validate_insert(self, i64 size)
    cpdef remove(self, i64 b, i64 size)
    @cython.locals(fl=i64, at=i64, bits=u64)
    cdef inline object _mark_empty(self, i64 i)
    @cython.locals(i=i64, own=i64, b=i64, size=i64)
    cpdef i64_pair take(self, i64 need)
    cdef inline i64_pair _pop(self, i64 i, i64 need)
    cdef inline i64 _scan(self, i64 i, i64 need) except -1
    cpdef i64 find(self, i64 need) except -1
