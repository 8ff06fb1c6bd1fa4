# C types of fits.py for the compiled engine.
cimport cython
from pyalloc.layout cimport MIN_BLOCK, i64, i64_pair, u64
from pyalloc.control cimport W_BRK
from pyalloc.policies.base cimport LinkedLists

cdef i64 HEAD, ROVER

cdef class ExplicitList(LinkedLists):
    cpdef insert(self, i64 b, i64 size)
    cpdef insert_validated(self, i64 b, i64 size)
    cpdef validate(self, i64 b, i64 size)
    cpdef validate_insert(self, i64 size)
    cpdef remove(self, i64 b, i64 size)
    cpdef i64 walk_limit(self) except -1

cdef class FirstFit(ExplicitList):
    cpdef i64 find(self, i64 need) except -1

cdef class NextFit(ExplicitList):
    @cython.locals(rover=i64, first=i64, budget=i64, b=i64)
    cpdef i64 find(self, i64 need) except -1
    cpdef i64_pair take(self, i64 need)
    cpdef remove(self, i64 b, i64 size)

cdef class BestFit(ExplicitList):
    cpdef i64 find(self, i64 need) except -1
