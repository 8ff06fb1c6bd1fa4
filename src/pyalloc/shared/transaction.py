"""The journal's glue: the payload bytes as the engine of a shared heap writes them.

Payload bytes are not journaled. The one place an operation writes payload
(realloc copying a block to its new place) first commits, at a point where
the heap is consistent: the new block is allocated, the old one intact. A
process killed during the copy leaks the new block and keeps the old; no
other process's block is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class _PayloadBytes:
    """The region's bytes as the engine sees them (``self.bytes``).

    Reads and slices are the memoryview's. A store made by the thread inside
    a transaction (realloc moving a block) commits the transaction first, so
    the payload it overwrites is never needed by an undo.
    """

    __slots__ = ("_before_store", "_view")

    def __init__(self, view: memoryview, before_store: Callable[[], None]) -> None:
        self._view = view
        self._before_store = before_store

    def __getitem__(self, key: Any) -> Any:
        return self._view[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._before_store()
        self._view[key] = value

    def __len__(self) -> int:
        return len(self._view)

    def release(self) -> None:
        self._view.release()
