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


cdef class HeapLock:
    cdef pthread_mutex_t _mutex
    cdef object _lock
    cdef object __weakref__
    cpdef bint acquire(self) except -1
    cpdef release(self)

cdef class ClosedLock(HeapLock):
    cpdef bint acquire(self) except -1
    cpdef release(self)
