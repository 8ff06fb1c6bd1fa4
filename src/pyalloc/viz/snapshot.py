"""What a heap's bytes are at one moment, and the same at the scale of a picture.

Glossary
--------

snapshot    the heap's address space ``[0, footprint)`` at one moment, as
            spans of payload and free bytes; every other byte inside the
            footprint is overhead
payload     bytes a caller asked for (the trace's request; for a heap seen
            from outside, whose requests are unknown, a block's usable bytes)
overhead    block headers, the padding between a request and its block's end,
            and the heap's own metadata (the control record before the first
            block, the epilogue header after the last)
free        bytes of free blocks
outside     bytes beyond the footprint: what a map draws past the heap's end,
            and past a smaller heap's end when maps share one scale
cell        ``bytes_per_cell`` consecutive bytes: one pixel square of a map, or
            one character of the terminal view

A cell shows the state that holds most of its bytes; a tie goes to the state
listed first in ``TIE_ORDER`` (payload, free, overhead, outside), so that a
lone small block or hole, and the heap's last bytes, are not lost to a
neighbour of equal share.  Invariants of a snapshot::

    spans sorted by start, disjoint, each inside [0, footprint)
    payload bytes + free bytes + overhead bytes == footprint

The colours are the Okabe-Ito palette, chosen to stay apart for readers with
any of the common colour-vision deficiencies; no red and green pair is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from ..layout import HEADER

OUTSIDE: Final = 0
PAYLOAD: Final = 1
OVERHEAD: Final = 2
FREE: Final = 3
STATES: Final = (OUTSIDE, PAYLOAD, OVERHEAD, FREE)
TIE_ORDER: Final = (PAYLOAD, FREE, OVERHEAD, OUTSIDE)

STATE_NAMES: Final = {
    OUTSIDE: "beyond the footprint",
    PAYLOAD: "payload",
    OVERHEAD: "headers, padding, heap metadata",
    FREE: "free",
}

# Okabe-Ito: blue, vermillion, yellow; white for what is not heap.
STATE_COLOURS: Final[dict[int, tuple[int, int, int]]] = {
    OUTSIDE: (255, 255, 255),
    PAYLOAD: (0, 114, 178),
    OVERHEAD: (213, 94, 0),
    FREE: (240, 228, 66),
}

# One character a cell in the terminal view: readable without colour too.
STATE_CHARS: Final = {OUTSIDE: " ", PAYLOAD: "#", OVERHEAD: "+", FREE: "."}

assert set(STATE_NAMES) == set(STATE_COLOURS) == set(STATE_CHARS) == set(STATES) == set(TIE_ORDER)
assert STATES == tuple(range(len(STATES)))  # states index the palette's rows


class HasBlocks(Protocol):
    """A heap whose layout can be read: ``pyalloc.Heap``, ``BuddyHeap``, ``SharedHeap``."""

    def blocks(self) -> list[tuple[int, int, bool]]: ...

    def stats(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class Snapshot:
    """The heap at one moment: payload and free spans in ``[0, footprint)``."""

    footprint: int
    spans: tuple[tuple[int, int, int], ...]  # (start, end, PAYLOAD | FREE), sorted, disjoint

    def bytes_in(self, state: int) -> int:
        """How many bytes of the footprint are in ``state`` (OUTSIDE: none)."""
        if state == OVERHEAD:
            return self.footprint - sum(end - start for start, end, _ in self.spans)
        return sum(end - start for start, end, s in self.spans if s == state)

    def state_at(self, address: int) -> int:
        """The state of the byte at ``address``."""
        if not 0 <= address < self.footprint:
            return OUTSIDE
        for start, end, state in self.spans:
            if start <= address < end:
                return state
        return OVERHEAD


def snapshot_from_blocks(
    blocks: Sequence[tuple[int, int, bool]],
    footprint: int,
    requests: Mapping[int, int] | None = None,
) -> Snapshot:
    """A snapshot from ``Heap.blocks()``: (payload offset, block size, allocated).

    A block starts HEADER bytes before its payload offset.  ``requests`` maps
    each live block's payload offset to the bytes asked for it; an allocated
    block it does not list is one the heap holds in its cache of freed
    blocks, free to its caller, and is drawn free.  Without ``requests`` (a
    heap seen from outside) a live block's usable bytes, the block less its
    header, count as payload.  ``footprint`` is the heap's size in bytes;
    without blocks nothing but overhead is inside it.
    """
    spans: list[tuple[int, int, int]] = []
    for p, size, allocated in blocks:
        start = p - HEADER
        end = start + size
        if not allocated or (requests is not None and p not in requests):
            spans.append((start, end, FREE))
            continue
        n = size - HEADER if requests is None else requests[p]
        if n > 0:
            spans.append((p, min(p + n, end), PAYLOAD))
    return Snapshot(footprint, tuple(_clip(_merge(spans), footprint)))


def snapshot_of(heap: HasBlocks, requests: Mapping[int, int] | None = None) -> Snapshot:
    """The snapshot of ``heap`` now: one walk of its blocks under its lock.

    The footprint is where the walk ended plus the epilogue header: the walk
    and the footprint then come from the same moment even while other
    processes use a shared heap.  An empty heap takes ``stats()``.
    """
    blocks = heap.blocks()
    if blocks:
        p, size, _ = blocks[-1]
        footprint = p + size  # the last block's end, plus the epilogue's header
    else:
        footprint = int(heap.stats()["heap_bytes"])
    return snapshot_from_blocks(blocks, footprint, requests)


def _merge(spans: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Sorted spans with neighbours of one state joined (buddies can be free side by side)."""
    out: list[tuple[int, int, int]] = []
    for start, end, state in sorted(spans):
        if out and out[-1][1] == start and out[-1][2] == state:
            out[-1] = (out[-1][0], end, state)
        else:
            out.append((start, end, state))
    return out


def _clip(spans: list[tuple[int, int, int]], footprint: int) -> list[tuple[int, int, int]]:
    return [
        (max(0, s), min(e, footprint), state)
        for s, e, state in spans
        if min(e, footprint) > max(0, s)
    ]


# -- cells ---------------------------------------------------------------------------


def _coverage(
    spans: Sequence[tuple[int, int, int]], edges: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Bytes of ``spans`` inside each interval ``[edges[i], edges[i + 1])``.

    ``F(x)``, the bytes of the spans below ``x``, is exact in integers:
    the bytes of every span before the one starting at or below ``x``, plus
    the part of that span below ``x``.
    """
    if not spans:
        return np.zeros(len(edges) - 1, dtype=np.int64)
    starts = np.fromiter((s for s, _, _ in spans), dtype=np.int64, count=len(spans))
    ends = np.fromiter((e for _, e, _ in spans), dtype=np.int64, count=len(spans))
    lengths = ends - starts
    before = np.cumsum(lengths) - lengths
    j = np.searchsorted(starts, edges, side="right") - 1
    k = np.maximum(j, 0)
    below = before[k] + np.clip(edges - starts[k], 0, lengths[k])
    below = np.where(j >= 0, below, 0)
    return np.diff(below)


def cell_states(snapshot: Snapshot, bytes_per_cell: int, cells: int) -> npt.NDArray[np.uint8]:
    """The state of each of ``cells`` cells of ``bytes_per_cell`` bytes from address 0."""
    if bytes_per_cell <= 0 or cells < 0:
        raise ValueError("bytes_per_cell must be > 0 and cells >= 0")
    edges = np.arange(cells + 1, dtype=np.int64) * bytes_per_cell
    counts = np.zeros((len(STATES), cells), dtype=np.int64)
    inside = _coverage([(0, snapshot.footprint, OVERHEAD)], edges)
    for state in (PAYLOAD, FREE):
        counts[state] = _coverage([s for s in snapshot.spans if s[2] == state], edges)
    counts[OVERHEAD] = inside - counts[PAYLOAD] - counts[FREE]
    counts[OUTSIDE] = bytes_per_cell - inside
    order = np.array(TIE_ORDER, dtype=np.uint8)
    states: npt.NDArray[np.uint8] = order[np.argmax(counts[order], axis=0)]
    return states


@dataclass(frozen=True)
class Scale:
    """How a map lays bytes out: ``columns`` cells a row, ``bytes_per_cell`` bytes a cell."""

    bytes_per_cell: int
    columns: int
    rows: int

    @property
    def row_bytes(self) -> int:
        return self.bytes_per_cell * self.columns


def choose_scale(footprint: int, columns: int, max_rows: int, bytes_per_cell: int = 0) -> Scale:
    """The scale that shows ``footprint`` bytes in ``columns`` cells a row.

    Without ``bytes_per_cell``: the smallest power of two that needs at most
    ``max_rows`` rows, so that a scale reads as a round number and maps
    drawn for different heaps at one scale compare cell for cell.
    """
    if columns <= 0 or max_rows <= 0:
        raise ValueError("a map needs at least one column and one row")
    footprint = max(footprint, 1)
    if bytes_per_cell <= 0:
        bytes_per_cell = 1
        while bytes_per_cell * columns * max_rows < footprint:
            bytes_per_cell <<= 1
    rows = -(-footprint // (bytes_per_cell * columns))
    return Scale(bytes_per_cell, columns, rows)


def cell_grid(snapshot: Snapshot, scale: Scale) -> npt.NDArray[np.uint8]:
    """The snapshot's cells as a ``(scale.rows, scale.columns)`` grid of states."""
    cells = cell_states(snapshot, scale.bytes_per_cell, scale.rows * scale.columns)
    return cells.reshape(scale.rows, scale.columns)


def grid_pixels(grid: npt.NDArray[np.uint8], cell_px: int) -> npt.NDArray[np.uint8]:
    """An RGB image of ``grid``: each cell a ``cell_px`` square of its state's colour."""
    palette = np.array([STATE_COLOURS[s] for s in STATES], dtype=np.uint8)
    image = palette[grid]
    return np.repeat(np.repeat(image, cell_px, axis=0), cell_px, axis=1)


def as_rgb(colour: tuple[int, int, int]) -> str:
    """``colour`` as matplotlib and rich write it: ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*colour)


__all__: list[str] = [
    "FREE",
    "OUTSIDE",
    "OVERHEAD",
    "PAYLOAD",
    "STATES",
    "STATE_CHARS",
    "STATE_COLOURS",
    "STATE_NAMES",
    "HasBlocks",
    "Scale",
    "Snapshot",
    "as_rgb",
    "cell_grid",
    "cell_states",
    "choose_scale",
    "grid_pixels",
    "snapshot_from_blocks",
    "snapshot_of",
]
