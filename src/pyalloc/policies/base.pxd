# C types of base.py for the compiled engine: the policy protocol.
cimport cython
from pyalloc.journal cimport MetadataStore
from pyalloc.layout cimport ALLOCATED, SIZE_MASK, i64, i64_pair, u64
from pyalloc._accessors cimport decode, mangle, stored_size
from pyalloc.control cimport W_BRK
from pyalloc.slab cimport ROOM_SURE, SLAB_BYTES, has_slab_room

cdef i64 NEXT, PREV

cdef class FreeIndex:
    cdef public object heap
    cdef public i64 base, heap_start, steps_left
    cdef public MetadataStore meta
    cdef public u64[::1] words
    cdef public u64 header_key, tag_secret, link_key

    cpdef insert(self, i64 b, i64 size)
    cpdef insert_validated(self, i64 b, i64 size)
    cpdef validate(self, i64 b, i64 size)
    cpdef validate_insert(self, i64 size)
    cpdef remove(self, i64 b, i64 size)
    cpdef i64_pair take(self, i64 need)
    cpdef i64 find(self, i64 need) except -1
    cpdef i64_pair take_slab_room(self)
    cdef inline bint _in_heap(self, u64 b) noexcept
    cpdef i64 free_size(self, i64 b) except -1
    @cython.locals(body=i64)
    cdef inline i64 _free_body(self, u64 b) except -1

cdef class LinkedLists(FreeIndex):
    cdef inline u64 _read_link(self, u64 b, i64 field) noexcept
    cdef inline int _write_link(self, i64 b, i64 field, u64 link) except -1
    @cython.locals(first=i64)
    cpdef i64 check_head(self, i64 head) except -1
    cpdef bint push(self, i64 head, i64 b) except -1
    @cython.locals(first=i64)
    cpdef bint push_validated(self, i64 head, i64 b) except -1
    @cython.locals(nxt=i64, prv=i64)
    cpdef i64_pair neighbours(self, i64 head, i64 b)
    cpdef int unlink(self, i64 head, i64 b) except -1
    @cython.locals(b=i64, size=i64, nxt=i64)
    cpdef i64_pair pop_head(self, i64 head, i64 need, i64 lowest, i64 limit)
    @cython.locals(size=i64)
    cpdef i64 scan_first(self, i64 b, i64 stop, i64 need, i64 budget) except -1
    @cython.locals(best=i64, best_size=i64, size=i64)
    cpdef i64 scan_best(self, i64 b, i64 need, i64 steps, bint whole) except -1
