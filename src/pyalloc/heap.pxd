# C types of heap.py for the compiled engine.
cimport cython
from pyalloc.allocator cimport Allocator
from pyalloc.control cimport W_BRK, W_COMMITTED, W_PEAK, W_SLABS
from pyalloc.journal cimport MetadataStore
from pyalloc.layout cimport (
    ALLOCATED, CACHED, FLAGS_MASK, HEADER, INTERNAL, MAX_BLOCK, MIN_BLOCK, PREV_ALLOCATED,
    SIZE_MASK, SLACK_MAX, TAGGED_MASK, WORD_MASK, i64, i64_pair, u64,
)
from pyalloc._accessors cimport (
    allocated_body, bit, block_size, block_size_for, decode, encode, free_word, is_allocated,
    lowest_bit, prev_is_allocated, slack_of, stored_size, class_size, size_class, slots_of,
)
from pyalloc.policies.base cimport FreeIndex
from pyalloc.slab cimport (
    BITMAP_WORDS, D_BITMAP, D_NEXT, D_PREV, D_SLAB, D_STATE, DESC_WORDS, HEADS_BYTES, NCLASSES,
    SLAB_BYTES, SLAB_MASK, SLABS_ON, SLOTS_AT, SMALL_BLOCK_LIMIT, SLAB_DEMAND, H_LIST, H_SLABS,
    SMALL_MAX, STATE_CLASS_MASK, STATE_USED_SHIFT,
    aligned_block, unused_bits,
)

cdef i64 DEFAULT_CAPACITY, CACHE_LIMIT, CACHE_MAX_BLOCK, CACHE_BINS, FLUSH_BEFORE_SPLIT, SMALL_BLOCK_MAX
cdef i64 SMALL_CHUNK, TRIM_THRESHOLD, TOP_PAD, TRIM_THRESHOLD_MAX, RESERVE_STEP

cdef class Heap(Allocator):
    cdef public FreeIndex policy
    cdef public MetadataStore meta
    cdef public u64[::1] words
    cdef public object buf
    cdef public i64 heap_start, brk, _cache_limit, _cached, _trim_threshold, _slabs, _small_blocks
    cdef public i64 _slab_demand
    cdef public u64 header_key, tag_secret, link_key
    cdef public i64[::1] _cache, _cache_counts, _small_live
    cdef public bint _reserving

    cdef inline i64 _header(self, i64 b) noexcept
    cdef inline int _set_header(self, i64 b, u64 body) except -1
    @cython.locals(word=u64)
    cdef inline int _set_free(self, i64 b, i64 size) except -1
    cdef inline i64 _stored_flags(self, i64 b) noexcept
    cdef inline int _set_prev_allocated(self, i64 n, bint on) except -1
    @cython.locals(b=i64, body=i64)
    cpdef i64 _live_header(self, i64 p) except -1
    @cython.locals(s=i64, usable=i64)
    cdef inline i64 _not_a_live_header(self, i64 p, i64 body) except -1
    @cython.locals(body=i64)
    cdef inline i64 _next_header(self, i64 n) except -1
    @cython.locals(size=i64, end=i64)
    cdef inline i64 _free_neighbour(self, i64 b, i64 body) except -1
    @cython.locals(footer=u64, size=i64, pb=i64, body=i64)
    cdef inline i64 _free_predecessor(self, i64 b) except -1
    cdef inline int _set_brk(self, i64 brk) except -1
    cdef inline int _grow_to(self, i64 end) except -1

    cpdef i64 _malloc(self, i64 size) except -1
    @cython.locals(need=i64, b=i64, have=i64)
    cdef inline i64 _block_malloc(self, i64 size) except -1
    @cython.locals(b=i64)
    cdef inline i64 _take_cached(self, i64 need, i64 size) except -1
    @cython.locals(n=i64, b=i64, body=i64)
    cdef inline i64 _uncache(self, i64 i) except -1
    @cython.locals(b=i64, have=i64)
    cdef inline i64 _malloc_slow(self, i64 need, i64 size) except -1
    @cython.locals(found=i64, size=i64)
    cdef i64 _malloc_after_flush(self, i64 b, i64 have, i64 need, i64 size) except -1
    @cython.locals(rest=i64, a=i64)
    cdef inline i64 _split(self, i64 b, i64 have, i64 need, i64 size) except -1
    @cython.locals(brk=i64, body=i64, top=i64, b=i64, new_brk=i64, prev_bit=i64, rest=i64)
    cpdef i64 _extend(self, i64 need, i64 size, bint chunk=*) except -1
    @cython.locals(body=i64, size=i64, s=i64)
    cpdef _free(self, i64 p)
    @cython.locals(i=i64, n=i64)
    cdef inline int _keep(self, i64 p, i64 body) except -1
    @cython.locals(size=i64, n=i64, nbody=i64, start=i64, total=i64, pb=i64, nsize=i64, trim=bint)
    cdef inline _release(self, i64 b, i64 body, bint dry_run=*)
    @cython.locals(old_brk=i64, new_brk=i64, extent=i64)
    cdef inline _trim(self, i64 start, i64 total)
    @cython.locals(s=i64)
    cpdef i64 _usable(self, i64 p) except -1
    @cython.locals(body=i64, b=i64, have=i64, need=i64, prev_bit=i64, q=i64, usable=i64, s=i64)
    cpdef i64 _resize(self, i64 p, i64 size) except -1
    cdef i64 _resize_after_flush(self, i64 p, i64 size) except -1
    @cython.locals(n=i64, brk=i64, new_brk=i64, nbody=i64, nsize=i64, total=i64, after=i64, rest=i64,
                   abody=i64)
    cdef bint _grow_in_place(self, i64 b, i64 prev_bit, i64 have, i64 need, i64 size) except -1
    @cython.locals(i=i64, b=i64)
    cdef int _flush_cache(self) except -1

    @cython.locals(c=i64, d=i64, H=i64)
    cdef inline i64 _slab_malloc(self, i64 size) except -1
    @cython.locals(live=i64, demand=i64)
    cdef inline i64 _slab_malloc_slow(self, i64 size, i64 c, i64 H) except -1
    @cython.locals(h=i64)
    cdef inline i64 _heads_in_range(self) noexcept
    @cython.locals(size=i64, asked=i64, c=i64)
    cdef inline int _free_small_block(self, i64 p, i64 body) except -1
    @cython.locals(h=i64, body=i64)
    cdef inline i64 _heads(self) except -1
    @cython.locals(h=i64, i=i64)
    cdef inline i64 _make_heads(self) except -1
    @cython.locals(D=i64, state=u64, used=i64, n=i64, s=i64, j=i64, w=u64, k=i64, slot=i64)
    cdef inline i64 _slab_take(self, i64 d, i64 c) except -1
    @cython.locals(s=i64, body=i64, D=i64)
    cdef inline i64 _slab_of(self, i64 p) except -1
    @cython.locals(d=i64, D=i64)
    cdef inline i64 _slab_index(self, i64 s) noexcept
    cdef inline bint _descriptor_in_heap(self, i64 d) noexcept
    cdef inline i64 _descriptor_words(self, i64 d) except -1
    @cython.locals(D=i64, s=i64)
    cdef inline i64 _listed_slab(self, i64 d) except -1
    @cython.locals(d=i64, D=i64)
    cdef inline i64 _slab_descriptor(self, i64 s) except -1
    @cython.cdivision(True)  # off >= 0 and size > 0 where it divides
    @cython.locals(c=i64, size=i64, off=i64, k=i64)
    cdef inline i64 _slot_of(self, i64 p, i64 s, i64 D) except -1
    cdef inline i64 _slot_class(self, i64 p, i64 D) except -1
    @cython.locals(s=i64, k=i64, state=u64, c=i64, used=i64, n=i64, w=u64)
    cdef inline int _slab_free(self, i64 p, i64 D) except -1
    @cython.locals(D=i64, e=i64)
    cdef inline int _slab_emptied(self, i64 d, i64 c, i64 s) except -1
    @cython.locals(heads=i64, head=i64, H=i64, D=i64)
    cdef inline int _slab_push(self, i64 d, i64 c) except -1
    @cython.locals(D=i64, nxt=i64, prv=i64, N=i64, P=i64)
    cdef inline int _slab_unlist(self, i64 d, i64 c) except -1
    @cython.locals(d=i64, s=i64, D=i64, n=i64, j=i64, e=i64)
    cdef inline i64 _new_slab(self, i64 c) except -1
    @cython.locals(b=i64, have=i64, a=i64)
    cdef inline i64 _slab_block(self) except -1
    @cython.locals(brk=i64, top=i64, b=i64, a=i64, total=i64)
    cdef inline i64 _slab_block_at_top(self) except -1
    @cython.locals(size=i64, gap=i64, end=i64, rest=i64, prev_bit=i64)
    cdef inline int _carve(self, i64 b, i64 have, i64 a) except -1
    @cython.locals(have=i64, q=i64)
    cdef inline i64 _slab_resize(self, i64 p, i64 D, i64 size) except -1
