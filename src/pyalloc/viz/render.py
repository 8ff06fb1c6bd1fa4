"""Drawing heap maps and timelines with matplotlib.

A picture is laid out in pixels, top to bottom::

    title (two lines: trace, allocator and moment; what was measured)
    legend of the states, and the scale: bytes a cell, bytes a row
    for each allocator: a label line, then its map (or a note that its
    layout is not visible)
    the timeline: live payload and footprint over the ops, peaks marked

A map is placed with ``figimage`` at whole-pixel offsets, so that each cell
is exactly ``cell`` by ``cell`` pixels of its state's colour, with no
resampling; ``MapPlacement`` says where, so that a reader of the image (or a
test) can find any address's cell.  Figures are built on matplotlib's Agg
canvas directly, without pyplot: no display and no global figure state.

Every output is written to a temporary file beside the target and renamed
over it once complete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from ..files import check_output_path, replacing
from ..units import human_bytes
from .history import Timeline, VizError
from .snapshot import (
    FREE,
    OVERHEAD,
    PAYLOAD,
    STATE_COLOURS,
    STATE_NAMES,
    Scale,
    Snapshot,
    as_rgb,
    cell_grid,
    choose_scale,
    grid_pixels,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.image import FigureImage
    from matplotlib.lines import Line2D
    from matplotlib.text import Text

DPI: Final = 100
MARGIN_LEFT: Final = 84  # room for the address labels left of a map
MARGIN_RIGHT: Final = 24
TITLE_HEIGHT: Final = 58
LEGEND_HEIGHT: Final = 42  # the states' legend and, under it, the scale; only with a map
LABEL_HEIGHT: Final = 22  # a map's label line
MAP_GAP: Final = 12
NOTE_HEIGHT: Final = 8  # below the label of an allocator drawn without a map
TIMELINE_TOP: Final = 26  # between the last map and the timeline's axes
TIMELINE_BOTTOM: Final = 52  # tick labels and the axis label under the timeline
ADDRESS_LABEL_SPACING: Final = 16  # pixels between address labels, at least
MIN_COLUMNS: Final = 16
MAX_SIDE: Final = 1 << 15  # pixels; matplotlib refuses 2**16, and memory gives out first
DEFAULT_FRAMES: Final = 60  # of an animation
MAX_FRAMES: Final = 400

# Lines of the timeline: payload in the maps' payload colour, each allocator's
# footprint in black or an Okabe-Ito colour away from it, with its own dash
# pattern, so that lines stay apart without colour too.
PAYLOAD_LINE: Final = as_rgb(STATE_COLOURS[PAYLOAD])
LINE_COLOURS: Final = ("#000000", "#E69F00", "#CC79A7", "#D55E00", "#777777")
LEGEND_ROW: Final = 15  # pixels a row of the timeline's legend takes, below the axes
LINE_STYLES: Final = ("-", "--", "-.", ":")

STILL_FORMATS: Final = ("png", "svg", "pdf", "jpg", "jpeg", "webp", "tif", "tiff")
ANIMATION_FORMATS: Final = ("gif", "mp4")


@dataclass
class PictureOptions:
    """Sizes of a picture, in pixels; ``bytes_per_cell`` 0 lets the map choose."""

    width: int = 1000
    cell: int = 2
    max_rows: int = 100
    bytes_per_cell: int = 0
    timeline_height: int = 220
    ratio_line: bool = True  # live payload / footprint over time, when one allocator is drawn

    def columns(self) -> int:
        """Cells in a map's row; VizError for sizes no picture can have."""
        if self.width > MAX_SIDE or self.max_rows * self.cell > MAX_SIDE:
            raise VizError(
                f"a picture {self.width} pixels wide with maps {self.max_rows} rows of "
                f"{self.cell} pixels is too large: at most {MAX_SIDE} pixels a side"
                " (lower --width, --rows or --cell)"
            )
        columns = (self.width - MARGIN_LEFT - MARGIN_RIGHT) // max(self.cell, 1)
        if self.cell < 1 or columns < MIN_COLUMNS:
            raise VizError(
                f"a map needs at least {MIN_COLUMNS} cells a row: use a --width of at least "
                f"{MARGIN_LEFT + MARGIN_RIGHT + MIN_COLUMNS * max(self.cell, 1)} pixels "
                "or a smaller --cell"
            )
        return columns


@dataclass
class Panel:
    """One allocator's map: ``snapshot`` None when its layout is not visible."""

    label: str
    snapshot: Snapshot | None
    note: str = ""


@dataclass(frozen=True)
class MapPlacement:
    """Where a map lies in the image: its top-left pixel (rows counted from the top)."""

    left: int
    top: int
    cell: int
    scale: Scale

    def pixel_of(self, address: int) -> tuple[int, int]:
        """(x, y) of the centre pixel of the cell that holds ``address``."""
        index = address // self.scale.bytes_per_cell
        row, column = divmod(index, self.scale.columns)
        half = self.cell // 2
        return self.left + column * self.cell + half, self.top + row * self.cell + half


def check_output(path: str | Path, animate: bool) -> str:
    """The output's format from its suffix; VizError for one that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise VizError(f"{path} is a directory; give a file name")
    suffix = path.suffix.lower().lstrip(".")
    formats = ANIMATION_FORMATS if animate else STILL_FORMATS
    if suffix not in formats:
        kind = "an animation" if animate else "a picture"
        raise VizError(
            f"{path}: cannot write {kind} as {suffix or 'a file without a suffix'!r}; "
            f"use one of {', '.join('.' + f for f in formats)}"
        )
    if not path.parent.is_dir():
        raise VizError(f"{path}: no such directory {str(path.parent)!r}")
    try:
        check_output_path(path)  # before the work, not after it
    except OSError as e:
        raise VizError(str(e)) from None
    if suffix == "mp4":
        from matplotlib import animation

        if not animation.writers.is_available("ffmpeg"):
            raise VizError(f"{path}: writing .mp4 needs ffmpeg, which is not installed; use .gif")
    return suffix


# -- the layout ------------------------------------------------------------------------


class _Picture:
    """A figure with its maps placed, its title and its timeline axes."""

    def __init__(
        self,
        title: Sequence[str],
        panels: Sequence[Panel],
        timelines: Sequence[Timeline],
        options: PictureOptions,
        map_op: int | None,
        footprint: int | None = None,
    ) -> None:
        from matplotlib.figure import Figure

        self.options = options
        columns = options.columns()
        shown = [p.snapshot.footprint for p in panels if p.snapshot is not None]
        self.scale = choose_scale(
            footprint if footprint is not None else max(shown, default=1),
            columns,
            options.max_rows,
            options.bytes_per_cell,
        )
        if self.scale.rows > options.max_rows:
            raise VizError(
                f"{self.scale.rows} rows of {self.scale.columns} cells of "
                f"{self.scale.bytes_per_cell} bytes exceed --rows {options.max_rows}: "
                "choose a larger scale or more rows"
            )
        map_height = self.scale.rows * options.cell
        legend_height = LEGEND_HEIGHT if shown else 0
        self.ratio = (
            options.ratio_line and len(timelines) == 1 and timelines[0].footprint is not None
        )
        height = TITLE_HEIGHT + legend_height
        for panel in panels:
            height += LABEL_HEIGHT + (map_height if panel.snapshot is not None else NOTE_HEIGHT)
            height += MAP_GAP
        if timelines:
            height += TIMELINE_TOP + options.timeline_height + TIMELINE_BOTTOM
            entries = 1 + len(timelines) + (map_op is not None) + self.ratio
            height += LEGEND_ROW * -(-entries // self._legend_columns())
        self.width, self.height = options.width, height
        self.figure: Figure = Figure(figsize=(self.width / DPI, height / DPI), dpi=DPI)
        self.figure.patch.set_facecolor("white")
        self.title: list[Text] = []
        for i, line in enumerate(title[:2]):
            self.title.append(
                self.figure.text(
                    0.5,
                    self._y(16 + 22 * i),
                    line,
                    ha="center",
                    va="center",
                    fontsize=self.title_size(line, 12 if i == 0 else 9),
                    fontweight="bold" if i == 0 else "normal",
                )
            )
        if shown:
            self._legend(TITLE_HEIGHT)
        self.placements: list[MapPlacement | None] = []
        self.images: list[FigureImage] = []
        top = TITLE_HEIGHT + legend_height
        for panel in panels:
            self.figure.text(
                self._x(MARGIN_LEFT),
                self._y(top + LABEL_HEIGHT // 2),
                f"{panel.label}{': ' + panel.note if panel.note else ''}",
                ha="left",
                va="center",
                fontsize=9,
                fontweight="bold" if panel.snapshot is not None else "normal",
            )
            top += LABEL_HEIGHT
            if panel.snapshot is None:
                self.placements.append(None)
                top += NOTE_HEIGHT + MAP_GAP
                continue
            placement = MapPlacement(MARGIN_LEFT, top, options.cell, self.scale)
            pixels = grid_pixels(cell_grid(panel.snapshot, self.scale), options.cell)
            self.images.append(
                self.figure.figimage(
                    pixels, xo=MARGIN_LEFT, yo=height - top - map_height, origin="upper"
                )
            )
            self._addresses(top)
            self.placements.append(placement)
            top += map_height + MAP_GAP
        self.cursor: Line2D | None = None
        if timelines:
            self._timeline(timelines, top + TIMELINE_TOP, map_op)

    def title_size(self, text: str, largest: float) -> float:
        """A font size at which ``text`` fits the width (a character is about 0.85 em)."""
        return min(largest, (self.width - 20) / (0.85 * max(len(text), 1)))

    def _legend_columns(self) -> int:
        return 2 if self.options.width >= 800 else 1

    def _x(self, pixels: float) -> float:
        return pixels / self.width

    def _y(self, from_top: float) -> float:
        return 1.0 - from_top / self.height

    def _legend(self, top: int) -> None:
        from matplotlib.patches import Patch

        handles = [
            Patch(facecolor=as_rgb(STATE_COLOURS[s]), edgecolor="#444444", label=STATE_NAMES[s])
            for s in (PAYLOAD, OVERHEAD, FREE)
        ]
        self.figure.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(self._x(MARGIN_LEFT - 8), self._y(top + 10)),
            ncol=len(handles),
            frameon=False,
            fontsize=8,
            handlelength=1.2,
            borderaxespad=0,
        )
        scale = self.scale
        cell = self.options.cell
        self.figure.text(
            self._x(MARGIN_LEFT),
            self._y(top + 29),
            f"scale: 1 cell ({cell}x{cell} px) = {human_bytes(scale.bytes_per_cell)}, "
            f"1 px = {_per_pixel(scale.bytes_per_cell, cell)}, "
            f"1 row = {human_bytes(scale.row_bytes)}; a cell has the colour of most of its bytes",
            ha="left",
            va="center",
            fontsize=8,
        )

    def _addresses(self, top: int) -> None:
        cell = self.options.cell
        every = max(1, -(-ADDRESS_LABEL_SPACING // cell))
        for row in range(0, self.scale.rows, every):
            self.figure.text(
                self._x(MARGIN_LEFT - 6),
                self._y(top + row * cell + cell / 2),
                human_bytes(row * self.scale.row_bytes),
                ha="right",
                va="center",
                fontsize=6,
                color="#333333",
            )

    def _timeline(self, timelines: Sequence[Timeline], top: int, map_op: int | None) -> None:
        from matplotlib.ticker import FuncFormatter

        height = self.options.timeline_height
        axes = self.figure.add_axes(
            (
                self._x(MARGIN_LEFT),
                self._y(top + height),
                self._x(self.width - MARGIN_LEFT - MARGIN_RIGHT),
                height / self.height,
            )
        )
        first = timelines[0]
        axes.plot(
            first.sample_ops,
            first.payload,
            color=PAYLOAD_LINE,
            linewidth=1.2,
            label=f"live payload (peak {human_bytes(first.peak_payload)})",
        )
        axes.plot(
            [first.peak_payload_op], [first.peak_payload], marker="^", color=PAYLOAD_LINE, ms=7
        )
        for i, timeline in enumerate(timelines):
            colour = LINE_COLOURS[i % len(LINE_COLOURS)]
            style = LINE_STYLES[i % len(LINE_STYLES)]
            util = f"utilization {timeline.util:.1%}"
            if timeline.footprint is not None and timeline.peak_footprint_op is not None:
                axes.plot(
                    timeline.sample_ops,
                    timeline.footprint,
                    color=colour,
                    linestyle=style,
                    linewidth=1.4,
                    label=f"{timeline.allocator} footprint (peak "
                    f"{human_bytes(timeline.peak_footprint)} at op "
                    f"{timeline.peak_footprint_op:,}; {util})",
                )
                axes.plot(
                    [timeline.peak_footprint_op],
                    [timeline.peak_footprint],
                    marker="v",
                    color=colour,
                    ms=8,
                    markeredgecolor="black",
                )
            else:
                axes.axhline(
                    timeline.peak_footprint,
                    color=colour,
                    linestyle=style,
                    linewidth=1.4,
                    label=f"{timeline.allocator} peak footprint, measured as "
                    f"{timeline.measured_as} ({human_bytes(timeline.peak_footprint)}; {util})",
                )
        if map_op is not None:
            self.cursor = axes.axvline(
                map_op, color="#555555", linewidth=0.9, linestyle=":", label="the map's moment"
            )
        axes.set_xlim(0, max(first.ops, 1))
        highest = max(first.peak_payload, *(t.peak_footprint for t in timelines))
        axes.set_ylim(0, max(highest, 1) * 1.08)  # room above the peaks' markers
        axes.set_xlabel("ops replayed", fontsize=8)
        axes.set_ylabel("bytes", fontsize=8)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
        axes.tick_params(labelsize=7)
        axes.grid(True, color="#dddddd", linewidth=0.5)
        handles, labels = axes.get_legend_handles_labels()
        if self.ratio and first.footprint is not None:
            ratio = [
                100.0 * p / f if f else 0.0
                for p, f in zip(first.payload, first.footprint, strict=True)
            ]
            twin = axes.twinx()
            (line,) = twin.plot(
                first.sample_ops,
                ratio,
                color="#999999",
                linewidth=0.7,
                alpha=0.7,
                label="live payload / footprint (right axis)",
            )
            twin.set_ylim(0, 105)
            twin.set_ylabel("%", fontsize=8)
            twin.tick_params(labelsize=7)
            handles.append(line)
            labels.append(str(line.get_label()))
        self.figure.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(self._x(MARGIN_LEFT - 8), self._y(top + height + TIMELINE_BOTTOM - 6)),
            ncol=self._legend_columns(),
            fontsize=7,
            frameon=False,
            borderaxespad=0,
            handlelength=2.5,
        )

    def set_map(self, index: int, grid: npt.NDArray[np.uint8]) -> None:
        self.images[index].set_data(grid_pixels(grid, self.options.cell))


def _per_pixel(bytes_per_cell: int, cell: int) -> str:
    per_pixel = bytes_per_cell / (cell * cell)
    return human_bytes(per_pixel) if per_pixel >= 1 else f"{per_pixel:g} B"


# -- writing ---------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary path)`` and rename the result over ``path`` (files.replacing)."""
    with replacing(path) as temporary:
        write(temporary)


def draw_picture(
    path: str | Path,
    title: Sequence[str],
    panels: Sequence[Panel],
    timelines: Sequence[Timeline],
    options: PictureOptions | None = None,
    map_op: int | None = None,
) -> list[MapPlacement | None]:
    """Write maps (one above another, at one scale) and a timeline to ``path``.

    Returns where each panel's map lies in the image (None for a panel
    without one).
    """
    path = Path(path)
    fmt = check_output(path, animate=False)
    picture = _Picture(title, panels, timelines, options or PictureOptions(), map_op)
    figure = picture.figure

    def write(temporary: str) -> None:
        figure.savefig(temporary, dpi=DPI, format=fmt, facecolor="white")

    _write_atomically(path, write)
    return picture.placements


@dataclass
class Frame:
    """One frame of an animation: the heap after ``op`` ops."""

    op: int
    snapshot: Snapshot


def draw_animation(
    path: str | Path,
    title: Sequence[str],
    label: str,
    frames: Sequence[Frame],
    timeline: Timeline,
    options: PictureOptions | None = None,
    fps: int = 8,
    progress: Callable[[int], None] | None = None,
) -> MapPlacement:
    """Write the map over time to a .gif (or .mp4 with ffmpeg), one frame per snapshot.

    All frames share one scale, that of the peak footprint, so that every
    moment fits and a cell means the same bytes in each frame. ``progress(1)``
    is called as each frame is drawn.
    """
    from matplotlib import animation

    path = Path(path)
    fmt = check_output(path, animate=True)
    if not frames:
        raise VizError("an animation needs at least one frame")
    if len(frames) > MAX_FRAMES:
        raise VizError(f"{len(frames)} frames: an animation has at most {MAX_FRAMES}")
    options = options or PictureOptions()
    options = replace(options, ratio_line=False)
    footprint = max(timeline.peak_footprint, *(frame.snapshot.footprint for frame in frames))
    first = frames[0]
    heading = title[0]

    def moment(op: int) -> str:
        return f"{heading}: after op {op:,} of {timeline.ops:,}"

    # sized for the longest heading, that of the last op
    picture = _Picture(
        [moment(timeline.ops), *title[1:]],
        [Panel(label, first.snapshot)],
        [timeline],
        options,
        first.op,
        footprint=footprint,
    )
    placement = picture.placements[0]
    assert placement is not None
    writer: Any = (
        animation.PillowWriter(fps=fps) if fmt == "gif" else animation.FFMpegWriter(fps=fps)
    )

    def write(temporary: str) -> None:
        with writer.saving(picture.figure, temporary, dpi=DPI):
            for frame in frames:
                picture.set_map(0, cell_grid(frame.snapshot, picture.scale))
                if picture.cursor is not None:
                    picture.cursor.set_xdata([frame.op, frame.op])
                picture.title[0].set_text(moment(frame.op))
                writer.grab_frame(facecolor="white")
                if progress is not None:
                    progress(1)

    _write_atomically(path, write)
    return placement


__all__ = [
    "ANIMATION_FORMATS",
    "DPI",
    "MAX_FRAMES",
    "STILL_FORMATS",
    "Frame",
    "MapPlacement",
    "Panel",
    "PictureOptions",
    "check_output",
    "draw_animation",
    "draw_picture",
    "human_bytes",
]
