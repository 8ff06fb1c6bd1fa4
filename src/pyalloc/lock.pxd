# C types of lock.py for the compiled engine.
cimport cython
from cpython.pythread cimport (
    NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock,
    PyThread_release_lock, PyThread_type_lock,
)

cdef class HeapLock:
    cdef PyThread_type_lock _handle
    cdef object _lock
    cdef object __weakref__
    cpdef bint acquire(self) except -1
    cpdef release(self)

cdef class ClosedLock(HeapLock):
    cpdef bint acquire(self) except -1
    cpdef release(self)
