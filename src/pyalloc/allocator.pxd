# C types of allocator.py for the compiled engine: the shell every heap shares.
cimport cython
from pyalloc.layout cimport i64, u64
from pyalloc.lock cimport HeapLock

cdef class Allocator:
    cdef public object region, bytes
    cdef public HeapLock _lock
    cdef public i64 capacity
    cdef public bint _closed, _locking

    cpdef i64 _malloc(self, i64 size) except -1
    cpdef i64 _realloc(self, object p, object size) except -1
    cpdef _free(self, i64 p)
    cpdef i64 _resize(self, i64 p, i64 size) except -1
    cpdef i64 _usable(self, i64 p) except -1
