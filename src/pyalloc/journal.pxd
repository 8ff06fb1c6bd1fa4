# C types of journal.py for the compiled engine.
cimport cython
from pyalloc.layout cimport u64, i64

cdef extern from *:
    """
    static inline void pyalloc_store_barrier(void) { __asm__ __volatile__("" ::: "memory"); }
    """
    void store_barrier "pyalloc_store_barrier" () nogil

@cython.final
cdef class MetadataStore:
    cdef public u64[::1] words
    cdef public i64 journal, slots, count_word, stores, fault_at
    cdef public object fault
    cpdef int store(self, i64 index, u64 value) except -1
    @cython.locals(n=i64, e=i64)
    cdef int _journaled(self, i64 index, u64 value) except -1
    cdef int _journaled_armed(self, i64 e, i64 n, i64 index, u64 value) except -1
    cdef int _raw(self, i64 index, u64 value) except -1
