"""The directory of names: str -> pointer, kept in one heap block seen by every process."""

from __future__ import annotations

import struct
import weakref
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .heap import SharedHeap

NAMES_MAGIC: Final = int.from_bytes(b"pyanames", "little")
NAME_MAX_BYTES: Final = 255
_NAMES_HEAD = struct.Struct("<QQ")  # magic, number of entries
_NAME_ENTRY = struct.Struct("<QQ")  # pointer, key length; then the key, padded to 8


class SharedNames(MutableMapping[str, int]):
    """The heap's directory: names (str) of blocks (pointers), seen by every process.

    A name does not own its block: freeing the block leaves the name
    pointing at it, and deleting the name does not free the block. Each
    call is one transaction; ``pop`` takes a name atomically, so processes
    may use the directory to hand blocks to each other.
    """

    def __init__(self, heap: SharedHeap) -> None:
        self._heap: SharedHeap = weakref.proxy(heap)

    def __getitem__(self, key: str) -> int:
        with self._heap._lock:
            return self._heap._read_names()[key]

    def __setitem__(self, key: str, pointer: int) -> None:
        _check_name(key)
        heap = self._heap
        pointer = heap._pointer(pointer)  # TypeError, or InvalidPointerError out of range
        with heap._lock:
            heap._usable(pointer)  # a live block or slab object, else HeapError
            table = heap._read_names()
            if table.get(key) != pointer:
                table[key] = pointer
                heap._write_names(table)

    def __delitem__(self, key: str) -> None:
        heap = self._heap
        with heap._lock:
            table = heap._read_names()
            del table[key]
            heap._write_names(table)

    _MISSING: Final = object()

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its pointer, in one transaction."""
        heap = self._heap
        with heap._lock:
            table = heap._read_names()
            if key not in table:
                if default is self._MISSING:
                    raise KeyError(key)
                return default
            pointer = table.pop(key)
            heap._write_names(table)
            return pointer

    def __iter__(self) -> Iterator[str]:
        return iter(self.copy())

    def __len__(self) -> int:
        return len(self.copy())

    def copy(self) -> dict[str, int]:
        """A snapshot of the directory as a dict."""
        with self._heap._lock:
            return self._heap._read_names()

    def __repr__(self) -> str:
        return f"SharedNames({self.copy()!r})"


def _check_name(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"a name must be a str, not {type(key).__name__}")
    n = len(key.encode())
    if not 0 < n <= NAME_MAX_BYTES:
        raise ValueError(f"a name must be 1 to {NAME_MAX_BYTES} bytes of UTF-8, got {n}")


def _encode_names(table: dict[str, int]) -> bytes:
    parts = [_NAMES_HEAD.pack(NAMES_MAGIC, len(table))]
    for key, pointer in sorted(table.items()):
        raw = key.encode()
        parts.append(_NAME_ENTRY.pack(pointer, len(raw)))
        parts.append(raw + bytes(-len(raw) % 8))
    return b"".join(parts)
