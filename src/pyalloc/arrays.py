"""Named numpy arrays in a shared heap, seen by every process.

``heap.arrays`` maps names to numpy arrays that live in the heap::

    h.arrays["frames"] = np.zeros((100, 480, 640), "uint8")  # copied into a new block
    a = h2.arrays["frames"]          # zero-copy, right shape and dtype, any process
    a = h.arrays.create("grid", (1000, 1000), "float64")   # zero-filled in place
    a = h.arrays.get_or_create("grid", (1000, 1000), "float64")
    del h.arrays["frames"]           # frees the block

Each array is one heap block: a header (magic, the dtype's descriptor as
the ``.npy`` format writes it, so that a record's field names and offsets
survive, then the shape) then, at a 64-byte offset, the elements. The names are a directory
block of their own (control word ``W_ARRAYS``), kept as the names of
``heap.names`` are. Unlike a name, an entry owns its block: replacing or
deleting the entry frees it.

Atomic: an entry is made in one transaction of the heap. The new block is
allocated and committed first with its offset in ``W_ARRAYS_NEXT``, then
filled, then swapped into the directory, and the old block freed. A process
killed before the swap commits leaves the old entry, and the next locker
frees the new block; killed after, the new entry stands.

Arrays returned hold an export of the mapping: they outlive ``close()``.
"""

from __future__ import annotations

import ast
import math
import struct
import weakref
from collections.abc import Iterator, MutableMapping
from typing import Any, Final

from .allocator import zero_fill
from .errors import HeapCorruptionError, InvalidPointerError
from .shared import SharedHeap
from .shared.names import _check_name
from .shared.ndarrays import _array_spec, _numpy
from .shared.segment import W_ARRAYS, W_ARRAYS_NEXT

ARRAY_MAGIC: Final = int.from_bytes(b"pyaarray", "little")
_HEAD = struct.Struct("<QQQ")  # magic, dtype string length, number of dimensions
_DIM = struct.Struct("<Q")
DATA_ALIGN: Final = 64  # the elements start this far into the block, or a multiple
MAX_DIMS: Final = 64
MAX_DESCR: Final = 1 << 16  # bytes of a dtype's descriptor

__all__ = ["SharedArrays"]


def _header(dtype: Any, shape: tuple[int, ...]) -> bytes:
    # dtype.str would say only "|V12" of a record: its fields would be lost.
    descr = repr(_numpy().lib.format.dtype_to_descr(dtype)).encode()
    if len(descr) > MAX_DESCR:
        raise ValueError(f"the dtype's description is over {MAX_DESCR} bytes")
    raw = _HEAD.pack(ARRAY_MAGIC, len(descr), len(shape)) + descr
    raw += b"".join(_DIM.pack(d) for d in shape)
    return raw + bytes(-len(raw) % DATA_ALIGN)


def _dtype_from(np: Any, text: str) -> Any:
    """The dtype of a descriptor written by ``_header``; ValueError if it is none."""
    try:
        return np.lib.format.descr_to_dtype(ast.literal_eval(text))
    except Exception as e:  # whatever a corrupted descriptor makes the parsers raise
        raise ValueError(f"bad dtype descriptor ({type(e).__name__})") from None


class SharedArrays(MutableMapping[str, Any]):
    """The heap's arrays by name. Each call is one transaction of the heap."""

    def __init__(self, heap: SharedHeap) -> None:
        self._heap: SharedHeap = weakref.proxy(heap)

    # -- reading ---------------------------------------------------------------------

    def _spec(self, p: int) -> tuple[Any, tuple[int, ...], int, int]:
        """(dtype, shape, data offset, data bytes) of the array block ``p``; checked."""
        heap = self._heap
        np = _numpy()
        try:
            usable = heap._usable(p)
        except InvalidPointerError:
            raise HeapCorruptionError(f"an array entry points to {p}, not a block") from None
        buf = heap.buf
        try:
            magic, length, ndim = _HEAD.unpack_from(buf, p)
            if magic != ARRAY_MAGIC or ndim > MAX_DIMS or length > MAX_DESCR:
                raise ValueError("bad header")
            at = p + _HEAD.size
            dtype = _dtype_from(np, bytes(buf[at : at + length]).decode())
            at += length
            shape = tuple(_DIM.unpack_from(buf, at + 8 * i)[0] for i in range(ndim))
            at += 8 * ndim
            start = p + ((at - p + DATA_ALIGN - 1) // DATA_ALIGN) * DATA_ALIGN
            nbytes = math.prod(shape) * dtype.itemsize
            if dtype.hasobject or start + nbytes > p + usable:
                raise ValueError("the array does not fit its block")
        except (ValueError, TypeError, struct.error, UnicodeDecodeError) as e:
            raise HeapCorruptionError(f"the array block {p} is corrupted ({e})") from None
        return dtype, shape, start, nbytes

    def _array(self, p: int) -> Any:
        dtype, shape, start, nbytes = self._spec(p)
        return self._heap._array_over(_numpy(), start, shape, dtype, nbytes)

    def __getitem__(self, key: str) -> Any:
        heap = self._heap
        with heap._lock:
            p = heap._read_names(W_ARRAYS)[key]
            return self._array(p)

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs())

    def __len__(self) -> int:
        return len(self.specs())

    def specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every entry's (shape, dtype as numpy prints it), without making arrays."""
        heap = self._heap
        with heap._lock:
            table = heap._read_names(W_ARRAYS)
            out = {}
            for key, p in table.items():
                dtype, shape, _, _ = self._spec(p)
                out[key] = (shape, str(dtype))
            return out

    def _check_all(self) -> None:
        """Every entry is an array block (the lock is held by the caller)."""
        for p in self._heap._read_names(W_ARRAYS).values():
            self._spec(p)

    # -- writing -----------------------------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        np = _numpy()
        source = np.asarray(value)
        if not source.flags.c_contiguous:
            # Not ascontiguousarray: it makes a 0-d array 1-d.
            source = source.copy(order="C")
        if source.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot live in shared memory")
        self._put(key, source.shape, source.dtype, source, replace=True)

    def create(self, key: str, shape: int | tuple[int, ...], dtype: Any = "float64") -> Any:
        """A new zero-filled array named ``key``; KeyError if the name is taken."""
        dt, dims = self._checked(shape, dtype)
        return self._put(key, dims, dt, None, replace=False)

    def get_or_create(self, key: str, shape: int | tuple[int, ...], dtype: Any = "float64") -> Any:
        """The array named ``key`` if its shape and dtype are these (else
        ValueError), or a new zero-filled one."""
        dt, dims = self._checked(shape, dtype)
        try:
            return self._put(key, dims, dt, None, replace=False)
        except KeyError:
            pass
        existing = self[key]
        if existing.shape != dims or existing.dtype != dt:
            raise ValueError(
                f"array {key!r} is {existing.dtype} {existing.shape}, not {dt} {dims}"
            ) from None
        return existing

    def __delitem__(self, key: str) -> None:
        heap = self._heap
        with heap._lock:
            table = heap._read_names(W_ARRAYS)
            p = table.pop(key)
            heap._write_names(table, W_ARRAYS)
            heap._free(p)

    def _checked(self, shape: int | tuple[int, ...], dtype: Any) -> tuple[Any, tuple[int, ...]]:
        dt, dims, _ = _array_spec(_numpy(), shape, dtype)
        if len(dims) > MAX_DIMS:
            raise ValueError(f"at most {MAX_DIMS} dimensions")
        return dt, dims

    def _put(
        self, key: str, shape: tuple[int, ...], dtype: Any, source: Any, *, replace: bool
    ) -> Any:
        _check_name(key)
        heap = self._heap
        header = _header(dtype, shape)
        nbytes = math.prod(shape) * dtype.itemsize
        with heap._lock:
            table = heap._read_names(W_ARRAYS)
            if not replace and key in table:
                raise KeyError(key)
            q = heap._malloc(heap._request(len(header) + nbytes))  # MemoryError if too large
            heap.meta.store(W_ARRAYS_NEXT, q)
            heap._checkpoint()  # q is allocated and recorded: recovery frees it
            view = memoryview(heap.buf)
            try:
                view[q : q + len(header)] = header
                start = q + len(header)
                if source is None:
                    zero_fill(view, start, nbytes)
                else:
                    view[start : start + nbytes] = source.reshape(-1).view("uint8")
            finally:
                view.release()
            old = table.get(key)
            table[key] = q
            heap._write_names(table, W_ARRAYS)
            heap.meta.store(W_ARRAYS_NEXT, 0)
            if old:
                heap._free(old)
            return self._array(q)

    def __repr__(self) -> str:
        return f"SharedArrays({self.specs()!r})"
