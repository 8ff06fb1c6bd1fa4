# C types of lock.py for the compiled engine.
cimport cython


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_trylock(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)


cdef extern from "<semaphore.h>" nogil:
    ctypedef struct sem_t:
        pass
    int sem_init(sem_t *sem, int pshared, unsigned int value)
    int sem_destroy(sem_t *sem)
    int sem_wait(sem_t *sem)
    int sem_post(sem_t *sem)

cdef extern from *:
    """
    #ifdef Py_GIL_DISABLED
    #error "HeapLock's held flag relies on the GIL"
    #endif
    """

cdef class HeapLock:
    cdef bint _held
    cdef int _waiters
    cdef sem_t _wake
    cdef object _lock
    cdef object __weakref__
    cpdef bint acquire(self) except -1
    cpdef release(self)
    cdef int _wait(self) except -1

cdef class ClosedLock(HeapLock):
    cpdef bint acquire(self) except -1
    cpdef release(self)


from cpython.ref cimport PyObject, Py_XDECREF
from cpython.pythread cimport PyThread_get_thread_ident
from pyalloc.layout cimport u64, i64

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clock, timespec *now)
    int CLOCK_REALTIME

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_consistent(pthread_mutex_t *mutex)
    int pthread_mutex_timedlock(pthread_mutex_t *mutex, const timespec *deadline)

ctypedef pthread_mutex_t *mutex_ptr

cdef int EBUSY, ETIMEDOUT
cdef long WAIT_SLICE_NS, NS_PER_SECOND

cdef extern from "Python.h":
    PyObject *PyErr_GetHandledException()
    int PyErr_CheckSignals() except -1


cdef inline object handled_exception():
    """sys.exception(): the exception being handled, or None."""
    cdef PyObject *e = PyErr_GetHandledException()
    if e is NULL:
        return None
    exc = <object>e
    Py_XDECREF(e)
    return exc


cdef class SharedLock(HeapLock):
    cdef u64[::1] _words
    cdef size_t _address
    cdef object _heap, _lib, _entry_exc
    cdef i64 _count_word, _draft_a, _draft_b, _brk_word
    cdef u64 _brk_seen
    cdef list _deferred
    cdef public bint in_transaction
    cdef public unsigned long owner
    cdef public int users

    @cython.locals(r=int)
    cpdef bint acquire(self) except -1
    cdef int _wait_for_holder(self) except -1
    @cython.locals(r=int, m=mutex_ptr, t=timespec)
    cdef int _wait_in_slices(self) except -1
    cpdef release(self)
    cdef int _begin(self) except -1
    @cython.locals(r=int)
    cdef int _locked_with(self, int r) except -1
    cpdef _finish(self, bint failed)
    cdef void _unlock(self) noexcept
