"""The exceptions pyalloc raises.

Exception tree::

    Exception
    └── HeapError                 anything a heap refuses or finds wrong
        ├── InvalidPointerError   an offset the heap never returned (out of range,
        │                         misaligned, interior, or not a live block)
        ├── DoubleFreeError       a block freed a second time
        └── HeapCorruptionError   a header, footer or free-list link that fails
                                  its integrity check

``MemoryError`` (the builtin) is raised when a request cannot be served, and
``TypeError`` / ``ValueError`` for arguments of the wrong type or range. A call
that raises any of these has written nothing.
"""

from __future__ import annotations


class HeapError(Exception):
    """Base class of the errors a heap reports about pointers and metadata."""


class InvalidPointerError(HeapError, ValueError):
    """The pointer is not one this heap returned, or is not live."""


class DoubleFreeError(InvalidPointerError):
    """The block at this pointer is already free."""


class HeapCorruptionError(HeapError):
    """Metadata in the heap failed its integrity check."""
