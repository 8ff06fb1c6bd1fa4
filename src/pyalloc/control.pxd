# C types of control.py for the compiled engine.
from pyalloc.layout cimport u64, i64

cdef u64 MAGIC
cdef i64 FORMAT_VERSION, W_MAGIC, W_FORMAT, W_CAPACITY, W_HEAP_START, W_BRK, W_PEAK
cdef i64 W_HEADER_KEY, W_TAG_SECRET, W_LINK_KEY, W_LOCK, W_RESERVED, W_COMMITTED, W_SLABS, CONTROL_WORDS
