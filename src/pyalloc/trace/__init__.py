"""Allocation traces: the ``.rep`` format, workload generators, reference allocators.

``rep``        read, write and validate malloc-lab ``.rep`` traces
``generate``   deterministic workload generators (``GENERATORS``)
``reference``  peer allocators (glibc through ctypes, ``multiprocessing.heap``)
"""

from __future__ import annotations

from .rep import Op, Trace, TraceFormatError, parse_trace, read_trace, write_trace

__all__ = ["Op", "Trace", "TraceFormatError", "parse_trace", "read_trace", "write_trace"]
