"""Hardware atomics on region bytes, from the optional ``atomicshm`` package.

Only the lock-free pool needs them, and only when the engine runs
interpreted: compiled, ``pyalloc.pool`` makes the same atomic accesses in C
(``pool.pxd``) and never imports this module; the heap engine and
``import pyalloc`` never do. When the package is missing the import fails
with an ``ImportError`` that names the extra to install.

What the interpreted pool relies on (checked by ``tests/test_pool.py``):

- an ``AtomicView`` works over an ``mmap`` (private or ``MAP_SHARED``) at any
  offset aligned to the access width, raises ``IndexError`` outside the
  mapping and ``ValueError`` on a misaligned offset;
- every operation defaults to sequentially consistent ordering, which is also
  the cheapest call (an explicit order argument costs an extra argument parse);
- the view keeps the mapping exported, so the mapping cannot be closed while
  the view is open: close the view first.
"""

from __future__ import annotations

try:
    from atomicshm import AtomicU64, AtomicView
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "pyalloc.Pool needs the 'atomicshm' package for its compare-and-swap; "
        "install it with: pip install 'pyalloc[atomics]'"
    ) from exc

__all__ = ["AtomicU64", "AtomicView"]
