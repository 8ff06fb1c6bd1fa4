"""Allocation traces: the ``.rep`` format, workload generators, reference allocators.

``rep``        read, write and validate malloc-lab ``.rep`` traces
``generate``   deterministic workload generators (``GENERATORS``)
``reference``  peer allocators (glibc through ctypes, ``multiprocessing.heap``)
``record``     recording a program's allocations through an LD_PRELOAD interposer
``system``     replaying a trace through glibc, jemalloc, mimalloc and tcmalloc
"""

from __future__ import annotations

from .rep import Op, Trace, TraceFormatError, parse_trace, read_trace, write_trace

__all__ = ["Op", "Trace", "TraceFormatError", "parse_trace", "read_trace", "write_trace"]
