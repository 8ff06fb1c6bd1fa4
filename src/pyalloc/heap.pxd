# C types of heap.py for the compiled engine.
cimport cython
from pyalloc.allocator cimport Allocator
from pyalloc.control cimport W_BRK, W_COMMITTED, W_PEAK
from pyalloc.journal cimport MetadataStore
from pyalloc.layout cimport (
    ALLOCATED, CACHED, HEADER, MAX_BLOCK, MIN_BLOCK, PREV_ALLOCATED, SIZE_MASK, SLACK_MAX, TAGGED_MASK,
    allocated_body, block_size, block_size_for, decode, encode, free_word, i64, i64_pair, is_allocated,
    prev_is_allocated, slack_of, u64,
)
from pyalloc.policies.base cimport FreeIndex

cdef i64 DEFAULT_CAPACITY, CACHE_LIMIT, CACHE_MAX_BLOCK, CACHE_BINS, FLUSH_BEFORE_SPLIT, SMALL_BLOCK_MAX
cdef i64 SMALL_CHUNK, TRIM_THRESHOLD, TOP_PAD, TRIM_THRESHOLD_MAX, RESERVE_STEP

cdef class Heap(Allocator):
    cdef public FreeIndex policy
    cdef public MetadataStore meta
    cdef public u64[::1] words
    cdef public object buf
    cdef public i64 heap_start, brk, _cache_limit, _cached, _trim_threshold
    cdef public u64 header_key, tag_secret, link_key
    cdef public i64[::1] _cache, _cache_counts
    cdef public bint _reserving

    cdef i64 _header(self, i64 b) noexcept
    cdef int _set_header(self, i64 b, u64 body) except -1
    @cython.locals(word=u64)
    cdef int _set_free(self, i64 b, i64 size) except -1
    cdef i64 _prev_allocated_bit(self, i64 n) noexcept
    cdef int _set_prev_allocated(self, i64 n, bint on) except -1
    cpdef i64 free_block_size(self, i64 b) except -1
    @cython.locals(b=i64, body=i64)
    cpdef i64 _live_header(self, i64 p) except -1
    @cython.locals(body=i64)
    cpdef i64 _next_header(self, i64 n) except -1
    @cython.locals(size=i64, end=i64)
    cpdef i64 _free_neighbour(self, i64 b, i64 body) except -1
    @cython.locals(footer=u64, size=i64, pb=i64, body=i64)
    cpdef i64 _free_predecessor(self, i64 b) except -1
    cdef int _set_brk(self, i64 brk) except -1
    cdef int _grow_to(self, i64 end) except -1

    @cython.locals(need=i64, b=i64, have=i64)
    cpdef i64 _malloc(self, i64 size) except -1
    @cython.locals(b=i64)
    cdef i64 _take_cached(self, i64 need, i64 size) except -1
    @cython.locals(n=i64, b=i64, body=i64)
    cdef i64 _uncache(self, i64 i) except -1
    @cython.locals(b=i64, have=i64)
    cdef i64 _malloc_slow(self, i64 need, i64 size) except -1
    @cython.locals(found=i64, size=i64)
    cdef i64_pair _retake_after_flush(self, i64 b, i64 have, i64 need)
    @cython.locals(rest=i64, a=i64)
    cdef i64 _split(self, i64 b, i64 have, i64 need, i64 size) except -1
    @cython.locals(brk=i64, body=i64, top=i64, b=i64, new_brk=i64, prev_bit=i64, rest=i64)
    cpdef i64 _extend(self, i64 need, i64 size, bint chunk=*) except -1
    @cython.locals(body=i64, size=i64)
    cpdef _free(self, i64 p)
    @cython.locals(i=i64, n=i64)
    cdef int _keep(self, i64 p, i64 body) except -1
    @cython.locals(size=i64, n=i64, nbody=i64, start=i64, total=i64, pb=i64, nsize=i64, trim=bint)
    cpdef _release(self, i64 b, i64 body, bint dry_run=*)
    cpdef _trim(self, i64 start, i64 total)
    cpdef i64 _usable(self, i64 p) except -1
    @cython.locals(body=i64, b=i64, have=i64, need=i64, prev_bit=i64, q=i64, usable=i64)
    cpdef i64 _resize(self, i64 p, i64 size) except -1
