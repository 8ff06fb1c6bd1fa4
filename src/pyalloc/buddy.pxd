# C types of buddy.py for the compiled engine.
cimport cython
from pyalloc.allocator cimport Allocator
from pyalloc.journal cimport MetadataStore
from pyalloc.layout cimport ALLOCATED, HEADER, PREV_ALLOCATED, TAG_SHIFT, i64, u64
from pyalloc._accessors cimport decode, encode, bit, bit_length, lowest_bit
from pyalloc.policies.base cimport LinkedLists

cdef class _OrderLists(LinkedLists):
    cpdef i64 free_size(self, i64 b) except -1

cdef class BuddyHeap(Allocator):
    cdef public object words, buf, _lists
    cdef public MetadataStore meta
    cdef public i64 heap_start, brk, max_order
    cdef public u64 header_key, tag_secret, link_key
