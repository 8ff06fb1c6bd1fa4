# C types of pool.py for the compiled engine: the pool's atomics on the region's
# words, and the hot paths that use them.

cimport cython

ctypedef unsigned long long u64
ctypedef long long i64

cdef int STATE_FREE, STATE_ALLOCATED
cdef i64 STRIPE_SHIFT, STRIPES

cdef i64 _state_offset(i64 states, i64 row, i64 index) noexcept

# The compiler's __atomic builtins, sequentially consistent like atomicshm's
# defaults: a compiled and an interpreted process share a pool through the same
# atomic instructions on the same words (on x86, a load is a plain mov and a CAS
# a lock cmpxchg in both).
cdef extern from *:
    """
    #include <stdint.h>
    static inline uint64_t pyalloc_pool_load64(char *p) {
        return __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST);
    }
    static inline void pyalloc_pool_store64(char *p, uint64_t v) {
        __atomic_store_n((uint64_t *)p, v, __ATOMIC_SEQ_CST);
    }
    static inline uint64_t pyalloc_pool_cas64(char *p, uint64_t expected, uint64_t desired) {
        __atomic_compare_exchange_n((uint64_t *)p, &expected, desired, 0,
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        return expected;  /* the value seen: == expected when the swap happened */
    }
    static inline uint64_t pyalloc_pool_xchg64(char *p, uint64_t v) {
        return __atomic_exchange_n((uint64_t *)p, v, __ATOMIC_SEQ_CST);
    }
    static inline int pyalloc_pool_load8(char *p) {
        return __atomic_load_n((uint8_t *)p, __ATOMIC_SEQ_CST);
    }
    static inline int pyalloc_pool_cas8(char *p, int expected, int desired) {
        uint8_t e = (uint8_t)expected;
        __atomic_compare_exchange_n((uint8_t *)p, &e, (uint8_t)desired, 0,
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        return e;
    }
    """
    u64 c_load64 "pyalloc_pool_load64"(char *p) nogil
    void c_store64 "pyalloc_pool_store64"(char *p, u64 v) nogil
    u64 c_cas64 "pyalloc_pool_cas64"(char *p, u64 expected, u64 desired) nogil
    u64 c_xchg64 "pyalloc_pool_xchg64"(char *p, u64 v) nogil
    int c_load8 "pyalloc_pool_load8"(char *p) nogil
    int c_cas8 "pyalloc_pool_cas8"(char *p, int expected, int desired) nogil

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int *overflow) except? -1


cdef class CAtomics:
    cdef unsigned char[::1] _mem
    cdef char *_base
    cdef i64 _size
    cdef int _check(self, i64 offset, i64 width) except -1
    cpdef u64 load_u64(self, i64 offset) except? 0
    cpdef store_u64(self, i64 offset, u64 value)
    cpdef u64 cas_u64(self, i64 offset, u64 expected, u64 desired) except? 0
    cpdef u64 exchange_u64(self, i64 offset, u64 value) except? 0
    cpdef int load_u8(self, i64 offset) except -1
    cpdef int cas_u8(self, i64 offset, int expected, int desired) except -1
    cpdef close(self)


cdef class _Stack:
    cdef readonly CAtomics atomics
    cdef readonly object layout
    cdef readonly i64 magazine, magazine_end
    cdef i64 head, links, states, state_row, blocks, stride
    cdef u64 count
    cdef list entries
    @cython.locals(h=u64, seen=u64, desired=u64, index=u64, mask=u64, tag_one=u64, tag_mask=u64)
    cpdef i64 pop(self) except -1
    @cython.locals(h=u64, seen=u64, top=u64, depth=u64, mask=u64, tag_one=u64, tag_mask=u64,
                   slot=i64)
    cpdef push(self, u64 index)
    @cython.locals(h=u64, again=u64, top=u64, depth=u64, mask=u64)
    cpdef i64 depth(self) except -1
    @cython.locals(index=i64, state=int)
    cpdef take(self, u64 entry)
    @cython.locals(fill=i64, entry=u64, index=i64, more=i64)
    cpdef tuple alloc_slow(self)
    @cython.locals(offset=i64, entry=u64, index=i64)
    cpdef u64 steal(self) except 0
    @cython.locals(fill=i64, half=i64)
    cpdef i64 free_slow(self, i64 index) except -1
    @cython.locals(offset=i64, entry=u64)
    cpdef drain(self, i64 start, i64 end)
    @cython.locals(first=i64)
    cpdef drain_slot(self, i64 slot)
    @cython.locals(offset=i64, entry=u64)
    cpdef list cached(self)


@cython.final
cdef class CHotPaths(CAtomics):
    cdef i64 _states, _state_row, _blocks, _stride, _count
    cdef i64 _magazine, _magazine_end, _fill
    cdef _Stack _stack
    @cython.locals(v=i64, fill=i64)
    cpdef alloc(self)
    @cython.locals(offset=i64, index=i64, state=int, fill=i64, overflow=int)
    cpdef free(self, object ptr)
