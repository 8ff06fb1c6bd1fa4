# C types of journal.py for the compiled engine.
from pyalloc.layout cimport u64, i64

cdef class MetadataStore:
    cdef public u64[::1] words
    cdef public i64 journal, slots, count_word, stores, fault_at
    cdef public object fault
    cpdef int store(self, i64 index, u64 value) except -1
    cdef int _journaled(self, i64 index, u64 value) except -1
    cdef int _raw(self, i64 index, u64 value) except -1
