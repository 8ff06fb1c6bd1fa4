"""Side-by-side comparison of allocators on traces: the engine of ``pyalloc bench``.

Glossary
--------

row        one (trace, allocator) outcome as a dict with the keys ``ROW_KEYS``:
           the object ``pyalloc replay --json`` prints, plus the two
           fragmentation measures (None for system allocators)
column     one allocator of the comparison: a pyalloc policy (``segregated``,
           ``buddy``, ...) or a system allocator (``glibc``, ``jemalloc``, ...),
           measured on every trace
source     a trace to run, or the reason it could not be read

Averages (the last line of a comparison) are taken per column over the traces
on which that column is valid::

    util         sum(weight * util) / sum(weight)    the traces' header weights
    ops_per_sec  sum(ops) / sum(seconds)              so long traces weigh more

System allocators come from :mod:`pyalloc.trace.system`, imported only when
asked for; a library that is missing is left out with a note.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Final, Protocol

from ..files import replacing
from ..slab import SMALL_MAX
from .generate import GENERATORS, generate
from .rep import Trace, TraceFormatError, read_trace
from .replay import ReplayResult, replay

__all__ = [
    "JSON_KEYS",
    "ROW_KEYS",
    "SYSTEM_ALLOCATORS",
    "Comparison",
    "Progress",
    "Source",
    "default_sources",
    "expand_paths",
    "failed_row",
    "load_source",
    "load_system",
    "plot_comparison",
    "row_from_replay",
    "row_from_system",
    "run_comparison",
    "system_for",
    "write_csv",
]

JSON_KEYS: Final = (
    "trace",
    "allocator",
    "policy",
    "valid",
    "ops",
    "util",
    "peak_payload",
    "peak_heap",
    "seconds",
    "ops_per_sec",
    "error",
    "footprint",
    "internal_frag",
    "external_frag",
)
ROW_KEYS: Final = JSON_KEYS  # the CSV's columns: the same
# How a row's peak_heap was measured: the heap's own bytes (pyalloc), the
# peak of mem_heapsize() (a malloc-lab package), glibc's mallinfo2 (arena +
# hblkhd, exact), or resident pages (the other system allocators:
# page-granular, so a trace whose peak is a few pages says little).
FOOTPRINT_HEAP: Final = "heap bytes"
FOOTPRINT_MEMLIB: Final = "mem_heapsize"
FOOTPRINT_MALLINFO2: Final = "mallinfo2"
FOOTPRINT_RESIDENT: Final = "resident pages"
TINY_PEAK: Final = 64 << 10  # a resident-page peak below this is flagged, not trusted
# The names ``pyalloc.trace.system`` serves; repeated here so that the command
# can name them even when that module is missing.
SYSTEM_ALLOCATORS: Final = ("glibc", "jemalloc", "mimalloc", "tcmalloc")
TRACE_SUFFIXES: Final = (".rep", ".rep.gz")
GENERATED_OPS: Final = 6000
GENERATED_SEED: Final = 1

Row = dict[str, Any]


# -- rows ---------------------------------------------------------------------------------


def row_from_replay(result: ReplayResult, trace: str | None = None) -> Row:
    """The row of a pyalloc replay; ``trace`` replaces the trace's name."""
    return {
        "trace": result.trace if trace is None else trace,
        "allocator": result.allocator,
        "policy": result.policy,
        "valid": result.valid,
        "ops": result.ops,
        "util": result.util,
        "peak_payload": result.peak_payload,
        "peak_heap": result.peak_heap,
        "seconds": result.seconds,
        "ops_per_sec": result.ops_per_sec,
        "error": result.error,
        "footprint": FOOTPRINT_HEAP,
        "internal_frag": result.internal_frag,
        "external_frag": result.external_frag,
    }


def row_from_system(result: Any, trace: str | None = None, malloc_lab: bool = False) -> Row:
    """The row of a ``pyalloc.trace.system.SystemResult`` (of a malloc-lab package)."""
    seconds = float(result.seconds)
    # A result's footprint_method starts with the short name a row shows.
    if malloc_lab:
        footprint = FOOTPRINT_MEMLIB
    elif str(getattr(result, "footprint_method", "")).startswith(FOOTPRINT_MALLINFO2):
        footprint = FOOTPRINT_MALLINFO2
    else:
        footprint = FOOTPRINT_RESIDENT
    return {
        "footprint": footprint,
        "trace": result.trace if trace is None else trace,
        "allocator": result.allocator,
        "policy": None,
        "valid": bool(result.valid),
        "ops": int(result.ops),
        "util": float(result.util),
        "peak_payload": int(result.peak_payload),
        "peak_heap": int(result.peak_footprint),
        "seconds": seconds,
        "ops_per_sec": result.ops / seconds if result.valid and seconds > 0 else 0.0,
        "error": result.error,
        "internal_frag": None,
        "external_frag": None,
    }


UTIL_WEIGHT: Final = 0.6  # mdriver's weighting of utilization in the performance index


def mdriver_summary(rows: Sequence[Row], reference_ops_per_sec: float | None) -> dict[str, Any]:
    """Totals of an allocator's rows as mdriver prints them, and its performance index.

    util is the mean of the traces' utilizations, Kops total ops over total
    seconds; the index is 100 * (0.6 * util + 0.4 * min(1, throughput /
    reference)), both terms capped at their weight, and only when every
    trace was valid (mdriver gives none otherwise). ``reference_ops_per_sec``
    is the throughput the index compares with (None: no index).
    """
    valid = [row for row in rows if row["valid"]]
    ops = sum(int(row["ops"]) for row in valid)
    seconds = sum(float(row["seconds"]) for row in valid)
    util = sum(float(row["util"]) for row in valid) / len(valid) if valid else 0.0
    ops_per_sec = ops / seconds if seconds > 0 else 0.0
    index = None
    if valid and len(valid) == len(rows) and reference_ops_per_sec:
        throughput = min(1.0, ops_per_sec / reference_ops_per_sec)
        index = 100 * (UTIL_WEIGHT * min(util, 1.0) + (1 - UTIL_WEIGHT) * throughput)
    return {
        "valid": len(valid),
        "traces": len(rows),
        "util": util,
        "ops": ops,
        "seconds": seconds,
        "kops": ops_per_sec / 1000,
        "perf_index": index,
    }


def failed_row(trace: str, allocator: str, policy: str | None, error: str, ops: int = 0) -> Row:
    """The row of a run that could not take place (an unreadable trace, ...)."""
    return {
        "trace": trace,
        "allocator": allocator,
        "policy": policy,
        "valid": False,
        "ops": ops,
        "util": 0.0,
        "peak_payload": 0,
        "peak_heap": 0,
        "seconds": 0.0,
        "ops_per_sec": 0.0,
        "error": error,
        "footprint": None,
        "internal_frag": None,
        "external_frag": None,
    }


def tiny_peak(row: Row) -> bool:
    """A resident-page footprint too small to judge utilization by (a few pages)."""
    return bool(row["footprint"] == FOOTPRINT_RESIDENT and 0 < row["peak_heap"] < TINY_PEAK)


def write_csv(rows: Iterable[Row], stream: IO[str]) -> None:
    """Write ``rows`` as CSV with a header line of ``ROW_KEYS``; None is empty."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(ROW_KEYS)
    for row in rows:
        writer.writerow("" if row[key] is None else row[key] for key in ROW_KEYS)


# -- traces -----------------------------------------------------------------------------


@dataclass
class Source:
    """A trace to compare on: ``trace`` when it was read, else ``error``."""

    label: str  # what tables show: the trace's name
    path: str  # what JSON shows: the path given, or the name of a generated trace
    trace: Trace | None = None
    error: str | None = None

    @property
    def weight(self) -> int:
        return self.trace.weight if self.trace is not None else 0

    @property
    def ops(self) -> int:
        return len(self.trace.ops) if self.trace is not None else 0


def _is_trace_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(TRACE_SUFFIXES)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories replaced by their ``.rep``/``.rep.gz`` files, sorted.

    FileNotFoundError names a path that does not exist or a directory
    without traces.
    """
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if _is_trace_file(p))
            if not inside:
                raise FileNotFoundError(f"{path}: no .rep or .rep.gz files in this directory")
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: cannot read: No such file or directory")
    return found


def load_source(path: Path) -> Source:
    """Read ``path``; a bad file gives a source with its error instead of raising."""
    label = path.name.removesuffix(".gz").removesuffix(".rep")
    try:
        return Source(label, str(path), trace=read_trace(path))
    except TraceFormatError as e:
        return Source(label, str(path), error=f"invalid trace: {e}")
    except OSError as e:
        return Source(label, str(path), error=f"cannot read: {e.strerror or e}")


def default_sources() -> tuple[list[Source], str | None]:
    """The bundled recorded workloads; generated ones (and a note) without them."""
    try:
        workloads = importlib.import_module("pyalloc.workloads")
        paths = list(workloads.bundled_traces())
    except (ImportError, AttributeError):
        paths = []
    if paths:
        return [load_source(Path(p)) for p in paths], None
    sources = []
    for kind in sorted(GENERATORS):
        trace = generate(kind, GENERATED_OPS, GENERATED_SEED)
        sources.append(Source(trace.name, trace.name, trace=trace))
    note = (
        "no bundled workloads are installed; using generated ones "
        f"({GENERATED_OPS} ops, seed {GENERATED_SEED})"
    )
    return sources, note


# -- system allocators ----------------------------------------------------------------


def load_system() -> tuple[ModuleType | None, str | None]:
    """``pyalloc.trace.system``, or None and why it cannot be used."""
    try:
        return importlib.import_module("pyalloc.trace.system"), None
    except ImportError as e:
        return None, f"replay through system allocators is not available ({e})"


def system_for(name: str) -> tuple[ModuleType | None, str | None]:
    """``pyalloc.trace.system`` if allocator ``name`` can be replayed, else None and why."""
    system, reason = load_system()
    if system is not None:
        reason = system.system_available(name)
    return (system, None) if reason is None else (None, reason)


# -- the comparison -------------------------------------------------------------------


@dataclass
class Column:
    name: str  # a policy or a system allocator's name
    system: bool


@dataclass
class Comparison:
    """Every column's row on every source, and what was left out."""

    sources: list[Source]
    columns: list[Column]
    cells: dict[tuple[int, str], Row] = field(default_factory=dict)  # (source index, column)
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[Row]:
        """Every row: by source, then by column."""
        return [
            self.cells[i, column.name]
            for i in range(len(self.sources))
            for column in self.columns
            if (i, column.name) in self.cells
        ]

    def valid_rows(self, column: str) -> list[tuple[Source, Row]]:
        pairs = []
        for i, source in enumerate(self.sources):
            row = self.cells.get((i, column))
            if row is not None and row["valid"]:
                pairs.append((source, row))
        return pairs

    def average_util(self, column: str) -> float | None:
        pairs = [(s, r) for s, r in self.valid_rows(column) if s.weight > 0]
        total_weight = sum(s.weight for s, _ in pairs)
        if not total_weight:
            return None
        return float(sum(s.weight * r["util"] for s, r in pairs)) / total_weight

    def average_ops_per_sec(self, column: str) -> float | None:
        pairs = [(s, r) for s, r in self.valid_rows(column) if r["seconds"] > 0]
        seconds = sum(r["seconds"] for _, r in pairs)
        if not seconds:
            return None
        return sum(int(r["ops"]) for _, r in pairs) / float(seconds)

    def failures(self) -> list[Row]:
        return [row for row in self.rows() if not row["valid"]]


class Progress(Protocol):
    """Where a comparison reports how far it is (a progress bar)."""

    def start(self, description: str, work: int) -> None:
        """A run of about ``work`` ops (checked and timed together) begins."""

    def advance(self, done: int) -> None:
        """``done`` more ops of the current run are finished."""


def run_comparison(
    sources: Sequence[Source],
    policies: Sequence[str],
    system_allocators: Sequence[str] = (),
    *,
    timed_repeats: int = 3,
    capacity: int | None = None,
    progress: Progress | None = None,
    packages: Sequence[Any] = (),
) -> Comparison:
    """Replay every source on every policy, system allocator and malloc-lab package.

    A system allocator whose library is missing (or all of them, when
    ``pyalloc.trace.system`` is not installed) is left out with a note.
    ``packages`` are built malloc-lab packages (``trace.mm.Package``).
    """
    comparison = Comparison(list(sources), [Column(name, False) for name in policies])
    if DEFAULT_HEAP in policies:  # beside the policies, say what sets it apart
        comparison.notes.append(SLABS_NOTE)
    by_name = {package.name: package for package in packages}
    system: ModuleType | None = None
    if system_allocators:
        system, reason = load_system()
        if system is None:
            comparison.notes.append(f"{', '.join(system_allocators)}: skipped: {reason}")
        else:
            for name in system_allocators:
                missing = system.system_available(name)
                if missing is None:
                    comparison.columns.append(Column(name, True))
                else:
                    comparison.notes.append(f"{name}: skipped: {missing}")
    comparison.columns.extend(Column(name, True) for name in by_name)
    for i, source in enumerate(comparison.sources):
        for column in comparison.columns:
            if progress is not None:
                progress.start(f"{source.label} on {column.name}", source.ops * (1 + timed_repeats))
            allocator = column.name if column.system else "pyalloc"
            policy = None if column.system else column.name
            trace = source.trace
            if trace is None:
                row = failed_row(source.path, allocator, policy, source.error or "no trace")
            elif column.name in by_name:
                from .mm import replay_package

                graded = replay_package(by_name[column.name], trace, timed_repeats=timed_repeats)
                row = row_from_system(graded, source.path, malloc_lab=True)
            elif column.system:
                assert system is not None
                result = system.replay_system(trace, column.name, timed_repeats=timed_repeats)
                row = row_from_system(result, source.path)
            else:
                result = replay(
                    trace,
                    policy=column.name,
                    capacity=capacity,
                    timed_repeats=timed_repeats,
                    progress=None if progress is None else progress.advance,
                )
                row = row_from_replay(result, source.path)
            comparison.cells[i, column.name] = row
    return comparison


DEFAULT_HEAP: Final = "default"
SLABS_NOTE: Final = (
    "default is Heap(): segregated placement, objects of at most "
    f"{SMALL_MAX} bytes in slabs; every other pyalloc column is that policy with slabs off "
    "(the policies differ only in how they place blocks); every pyalloc heap here runs "
    "without its cache of freed blocks, so that each free reaches the placement"
)


# -- the picture ----------------------------------------------------------------------


def plot_comparison(comparison: Comparison, path: str | Path) -> None:
    """Grouped bars of utilization and throughput, a group per trace, averages last.

    Needs matplotlib (ImportError otherwise); draws with the Agg backend, so
    no display is needed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c.name for c in comparison.columns]
    groups = [s.label for s in comparison.sources] + ["average"]
    width = 0.8 / max(1, len(columns))
    # About a sixth of an inch per bar, within what a page or screen shows.
    figure_width = min(20.0, max(8.0, 2.5 + len(groups) * (0.16 * len(columns) + 0.3)))
    figure, (util_axes, speed_axes) = plt.subplots(2, 1, figsize=(figure_width, 8.5))
    # pyalloc's policies in distinct colours, the system allocators in hatched greys.
    palette = plt.get_cmap("tab10")
    systems = [c.name for c in comparison.columns if c.system]
    styles: dict[str, dict[str, Any]] = {}
    for column in comparison.columns:
        if column.system:
            j = systems.index(column.name)
            shade = 0.35 + 0.45 * j / max(1, len(systems) - 1)
            styles[column.name] = {
                "color": plt.get_cmap("Greys")(shade),
                "hatch": "///",
                "edgecolor": "white",
                "linewidth": 0,
            }
        else:
            styles[column.name] = {"color": palette(len(styles) % 10)}
    for k, name in enumerate(columns):
        util: list[float] = []
        speed: list[float] = []
        for i in range(len(comparison.sources)):
            row = comparison.cells.get((i, name))
            valid = row is not None and row["valid"]
            util.append(100 * row["util"] if valid and row is not None else 0.0)
            speed.append(row["ops_per_sec"] / 1e3 if valid and row is not None else 0.0)
        util.append(100 * (comparison.average_util(name) or 0.0))
        speed.append((comparison.average_ops_per_sec(name) or 0.0) / 1e3)
        positions = [g - 0.4 + width * (k + 0.5) for g in range(len(groups))]
        resident = any(
            row["footprint"] == FOOTPRINT_RESIDENT
            for (_, column), row in comparison.cells.items()
            if column == name
        )
        label = f"{name} (resident pages)" if resident else name
        util_axes.bar(positions, util, width, label=label, **styles[name])
        speed_axes.bar(
            positions, [s if s > 0 else float("nan") for s in speed], width, **styles[name]
        )
    for axes in (util_axes, speed_axes):
        axes.set_xticks(range(len(groups)))
        axes.set_xticklabels(groups, rotation=30, ha="right")
        axes.set_xlim(-0.6, len(groups) - 0.4)
        axes.grid(axis="y", alpha=0.3)
        axes.set_axisbelow(True)
        # A line between the traces and their average.
        axes.axvline(len(groups) - 1.5, color="grey", linewidth=0.8)
    util_axes.set_ylabel("utilization (%)")
    util_axes.set_ylim(0, 105)
    util_axes.set_title("Utilization: peak live payload / peak footprint (higher is better)")
    speed_axes.set_ylabel("thousand ops per second")
    speed_axes.set_yscale("log")
    speed_axes.set_title("Throughput (higher is better, log scale)")
    util_axes.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="allocator"
    )
    figure.tight_layout()
    try:
        with replacing(path) as temporary:
            figure.savefig(temporary, dpi=110, format=plot_format(path))
    finally:
        plt.close(figure)


def plot_format(path: str | Path) -> str:
    """The image format ``path`` asks for by its suffix; ValueError if matplotlib has none."""
    from matplotlib.figure import Figure

    suffix = Path(path).suffix.lstrip(".").lower()
    supported = Figure().canvas.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(
            f"{path}: cannot draw a .{suffix or '(no suffix)'} file; "
            f"use one of {', '.join('.' + s for s in sorted(supported))}"
        )
    return suffix
