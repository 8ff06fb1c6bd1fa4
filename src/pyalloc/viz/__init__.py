"""Pictures of the heap: maps of its bytes, timelines, comparisons, a live view.

``snapshot`` says what each byte of a heap is at one moment and scales that
to cells; ``history`` replays a trace op by op to follow the footprint and
stop at a chosen moment; ``render`` draws with matplotlib (the ``lab``
extra); ``live`` reads a shared or mapped heap another process is using and
draws the terminal view of ``pyalloc top`` with rich.
"""

from __future__ import annotations

from .history import Replayer, Timeline, VizError, payload_timeline, record_timeline
from .snapshot import Scale, Snapshot, cell_grid, choose_scale, snapshot_from_blocks, snapshot_of

__all__ = [
    "Replayer",
    "Scale",
    "Snapshot",
    "Timeline",
    "VizError",
    "cell_grid",
    "choose_scale",
    "payload_timeline",
    "record_timeline",
    "snapshot_from_blocks",
    "snapshot_of",
]
