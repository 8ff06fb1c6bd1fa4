"""Heaps other processes are using: a snapshot for ``viz --shm``, the view of ``top``.

A shared or mapped heap is read through its public API only: ``blocks()``
walks every block under the heap's lock, so the map is one consistent
moment even while other processes allocate; ``stats()`` and the directory
of names are read just after, each under the lock again, and may be a
moment newer.  The caller's requests are not known from outside, so a live
block's payload is its usable bytes (the block less its header).

The terminal view draws one character a cell (``STATE_CHARS``: readable
without colour) in the colours of the maps, sized to the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import HeapCorruptionError, HeapError
from ..units import human_bytes
from .history import VizError
from .snapshot import (
    FREE,
    OVERHEAD,
    PAYLOAD,
    STATE_CHARS,
    STATE_COLOURS,
    STATE_NAMES,
    STATES,
    Snapshot,
    as_rgb,
    cell_grid,
    choose_scale,
    snapshot_from_blocks,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..shared import SharedHeap

TOP_ROWS: Final = 16  # map rows of the terminal view
TOP_NAMES: Final = 20  # named blocks listed, at most


@dataclass
class LiveView:
    """What ``top`` and ``viz --shm`` show of a heap at one moment."""

    name: str
    policy: str
    snapshot: Snapshot
    stats: dict[str, int]
    names: dict[str, int]  # name -> pointer
    sizes: dict[int, int]  # pointer -> usable bytes, for the named blocks
    taken_at: float  # time.time()


def open_heap(name: str) -> SharedHeap:
    """Attach the shared heap ``name``, or open the heap file at a path (a '/' in it);
    say on stderr if another process holds its lock long."""
    from ..mapped import open_for_command

    try:
        return open_for_command(name)
    except (HeapError, OSError, ValueError) as e:
        raise VizError(str(e)) from e


def read_view(heap: SharedHeap, name: str) -> LiveView:
    """A snapshot of ``heap`` with its statistics and named blocks."""
    try:
        blocks = heap.blocks()
        stats = dict(heap.stats())
        names = heap.names.copy()
    except HeapCorruptionError as e:
        raise VizError(f"{name}: corrupted: {e}") from e
    except (HeapError, ValueError) as e:
        raise VizError(f"{name}: {e}") from e
    if blocks:
        p, size, _ = blocks[-1]
        footprint = p + size  # the last block's end, plus the epilogue's header
    else:
        footprint = stats["heap_bytes"]
    sizes = {}  # a slab's objects are no blocks: ask the heap, as `shm info` does
    for p in set(names.values()):
        try:
            sizes[p] = heap.usable_size(p)
        except HeapError:
            pass  # a name left on a freed block: shown without a size
    return LiveView(
        name,
        heap.policy_name,
        snapshot_from_blocks(blocks, footprint),
        stats,
        names,
        sizes,
        time.time(),
    )


def view_title(view: LiveView) -> list[str]:
    stats = view.stats
    moment = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view.taken_at))
    return [
        f"shared heap {view.name}: heap map at {moment}, {view.policy}",
        f"{stats['live_blocks']:,} live blocks, {human_bytes(stats['live_bytes'])} usable in them; "
        f"footprint {human_bytes(stats['heap_bytes'])} "
        f"(peak {human_bytes(stats['peak_heap_bytes'])}) "
        f"of {human_bytes(stats['capacity'])}; payload drawn as each block's usable bytes",
    ]


# -- the terminal view -------------------------------------------------------------------


def render_view(view: LiveView, columns: int, rows: int = TOP_ROWS) -> RenderableType:
    """The terminal view of ``view`` for a console ``columns`` characters wide."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stats = view.stats
    header = Text()
    header.append(f"pyalloc top: {view.name}", style="bold")
    header.append(f"   policy {view.policy}   ")
    header.append(time.strftime("%H:%M:%S", time.localtime(view.taken_at)))

    numbers = Table.grid(padding=(0, 3))
    for _ in range(3):
        numbers.add_column()
        numbers.add_column(justify="right")
    free = stats["free_bytes"]
    external = 1.0 - stats["largest_free"] / free if free else 0.0
    pairs = [
        ("footprint", human_bytes(stats["heap_bytes"])),
        ("peak", human_bytes(stats["peak_heap_bytes"])),
        ("capacity", human_bytes(stats["capacity"])),
        ("live blocks", f"{stats['live_blocks']:,}"),
        ("live bytes", human_bytes(stats["live_bytes"])),
        ("named", f"{len(view.names):,}"),
        ("free blocks", f"{stats['free_blocks']:,}"),
        ("free bytes", human_bytes(free)),
        ("external frag", f"{external:.1%}"),
        ("processes", f"{stats.get('processes_attached', 0):,} attached"),
    ]
    for i in range(0, len(pairs), 3):
        numbers.add_row(*(cell for pair in pairs[i : i + 3] for cell in pair))

    width = max(16, columns - 12)
    scale = choose_scale(view.snapshot.footprint, width, rows)
    grid = cell_grid(view.snapshot, scale)
    styles = {s: as_rgb(STATE_COLOURS[s]) for s in STATES}
    heap_map = Text()
    for r, row in enumerate(grid):
        heap_map.append(f"{human_bytes(r * scale.row_bytes):>10} ", style="dim")
        for state in row:
            state = int(state)
            heap_map.append(STATE_CHARS[state], style=styles[state] if state else "")
        heap_map.append("\n")
    legend = Text()
    for state in (PAYLOAD, OVERHEAD, FREE):
        legend.append(STATE_CHARS[state], style=styles[state])
        legend.append(f" {STATE_NAMES[state]}   ")
    legend.append(f"1 character = {human_bytes(scale.bytes_per_cell)}", style="dim")

    parts: list[RenderableType] = [header, numbers, Text(""), legend, heap_map]
    if view.names:
        table = Table(title=None, box=None, padding=(0, 2), show_edge=False)
        table.add_column("name")
        table.add_column("offset", justify="right")
        table.add_column("usable bytes", justify="right")
        for key in sorted(view.names)[:TOP_NAMES]:
            pointer = view.names[key]
            size = view.sizes.get(pointer)
            table.add_row(key, str(pointer), "-" if size is None else f"{size:,}")
        parts.append(table)
        if len(view.names) > TOP_NAMES:
            parts.append(Text(f"... and {len(view.names) - TOP_NAMES} more names", style="dim"))
    return Group(*parts)


def run_top(
    name: str,
    *,
    interval: float = 1.0,
    once: bool = False,
    rows: int = TOP_ROWS,
    console: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Show the heap ``name``, refreshed every ``interval`` seconds until interrupted.

    ``once`` prints one view and returns.  VizError when the heap cannot be
    attached or read.
    """
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    heap = open_heap(name)
    try:
        if once:
            console.print(render_view(read_view(heap, name), console.width, rows))
            return
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                live.update(render_view(read_view(heap, name), console.width, rows), refresh=True)
                sleep(interval)
    finally:
        heap.close()


__all__ = ["TOP_ROWS", "LiveView", "open_heap", "read_view", "render_view", "run_top", "view_title"]
