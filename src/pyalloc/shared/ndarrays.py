"""numpy helpers of shared heaps: arrays over blocks, for ``SharedHeap.ndarray`` and arrays.py."""

from __future__ import annotations

import math
from typing import Any

from ..units import as_int


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as e:
        raise ImportError(
            "SharedHeap arrays need numpy; install it with: pip install 'pyalloc[numpy]'"
        ) from e
    return numpy


def _array_spec(
    np: Any, shape: int | tuple[int, ...], dtype: Any
) -> tuple[Any, tuple[int, ...], int]:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError("arrays of Python objects cannot live in shared memory")
    given: object = shape
    if hasattr(given, "__index__"):  # one dimension: an int, numpy's included
        given = (given,)
    if not isinstance(given, (tuple, list)):
        raise TypeError(f"a shape is an int or a tuple of ints, got {given!r}")
    dims = tuple(as_int(d, "an array dimension") for d in given)
    for d in dims:
        if d < 0:
            raise ValueError(f"array dimensions must be >= 0, got {d}")
    if dt.subdtype is not None:
        # As numpy does: a (3,)-float64 element makes the array one dimension
        # more, of float64 (a descriptor of the element would lose the 3).
        dt, inner = dt.subdtype
        dims += inner
    return dt, dims, math.prod(dims) * dt.itemsize
