# C types of layout.py for the compiled engine: the block format's constants
# and accessors. Every engine module cimports them from here.

cimport cython

ctypedef unsigned long long u64
# A C long, not long long: the engine's targets are LP64 (64-bit long), and Cython
# spells an inline method's "except -1" of a long long type as an invalid literal.
ctypedef long i64
cdef extern from *:
    """
    _Static_assert(sizeof(long) == 8, "pyalloc's engine needs a 64-bit C long");
    """
ctypedef (i64, i64) i64_pair  # two results of a C function, with no tuple built

cdef i64 WORD, ALIGN_SHIFT, ALIGNMENT, HEADER, MIN_BLOCK, ALLOCATED, PREV_ALLOCATED, CACHED, INTERNAL
cdef i64 FLAGS_MASK, SIZE_BITS, SIZE_MASK, SLACK_SHIFT, SLACK_BITS, SLACK_MAX, TAG_SHIFT
cdef i64 TAG_BITS, TAG_MASK, BODY_MASK, TAGGED_MASK, MAX_BLOCK, LINK_SHIFT, OFFSET_SHIFT
cdef u64 WORD_MASK, ONE, TAG_FIELD

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil
    int __builtin_ctzll(unsigned long long x) nogil

cpdef u64 bit(i64 n) noexcept
cpdef i64 bit_length(u64 x) noexcept
cpdef i64 lowest_bit(u64 x) noexcept

cpdef i64 block_size_for(i64 size) noexcept
@cython.locals(mixed=u64)
cpdef u64 encode(u64 body, u64 offset, u64 secret, u64 key) noexcept
@cython.locals(body=u64)
cpdef i64 decode(u64 word, u64 offset, u64 secret, u64 key) noexcept
cpdef u64 free_word(i64 size, u64 offset, u64 secret, u64 key) noexcept
cpdef u64 allocated_body(i64 size, i64 asked, i64 prev_bit) noexcept
cpdef i64 stored_size(u64 word, u64 key) noexcept
cpdef i64 block_size(i64 body) noexcept
cpdef bint is_allocated(i64 body) noexcept
cpdef bint prev_is_allocated(i64 body) noexcept
cpdef i64 slack_of(i64 body) noexcept
cpdef u64 mangle(u64 link, u64 field_offset, u64 key) noexcept
