# C types of implicit.py for the compiled engine.
cimport cython
from pyalloc.layout cimport ALLOCATED, MIN_BLOCK, SIZE_MASK, i64, i64_pair, u64
from pyalloc._accessors cimport decode
from pyalloc.control cimport W_BRK
from pyalloc.policies.base cimport FreeIndex

cdef class Implicit(FreeIndex):
    cpdef insert(self, i64 b, i64 size)
    cpdef validate(self, i64 b, i64 size)
    cpdef remove(self, i64 b, i64 size)
    cpdef i64_pair take(self, i64 need)
    cpdef i64 find(self, i64 need) except -1
    @cython.locals(brk=i64, body=i64, size=i64)
    cpdef i64 first_free(self, i64 b, i64 need) except -1
