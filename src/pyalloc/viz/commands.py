"""What ``pyalloc viz`` and ``pyalloc top`` do, given their parsed arguments.

The parsers are in ``pyalloc.cli``; this module is imported only when one of
the two commands runs, so that the others never load numpy or matplotlib.
Each function returns the exit status: 0 done, 1 a problem with the input
(a trace that does not parse, a heap that cannot be read, an allocator that
fails), 2 bad usage; a problem is one line on stderr and no file is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..progress import ProgressBar
from ..trace.bench import SYSTEM_ALLOCATORS, load_source, system_for
from ..trace.rep import Trace
from ..trace.replay import policy_names
from ..trace.system import FOOTPRINT_METHOD_MALLINFO2
from ..units import human_bytes
from .history import (
    FOOTPRINT_RESIDENT,
    Replayer,
    Timeline,
    VizError,
    payload_timeline,
    record_timeline,
    replayer_at,
    sample_ops,
)

if TYPE_CHECKING:
    from .render import PictureOptions

DEFAULT_FRAMES: Final = 60
FRAMES_WITH_PROGRESS: Final = 10  # an animation of fewer frames shows no progress bar


class UsageError(Exception):
    """Options that do not go together: exit status 2."""


def _fail(message: str, status: int = 1) -> int:
    print(f"pyalloc: {message}", file=sys.stderr)
    return status


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise VizError(f"this command needs {module}: pip install 'pyalloc[lab]'") from None


def viz_command(args: argparse.Namespace) -> int:
    try:
        _need("matplotlib")
        return _viz(args)
    except UsageError as e:
        return _fail(str(e), 2)
    except VizError as e:
        return _fail(str(e))
    except OSError as e:  # the picture's file: its message, or the system's reason
        return _fail(f"cannot write {args.output}: {e.strerror}" if e.strerror else str(e))


def _options(args: argparse.Namespace) -> PictureOptions:
    from .render import PictureOptions

    return PictureOptions(
        width=args.width, cell=args.cell, max_rows=args.rows, bytes_per_cell=args.scale
    )


def _viz(args: argparse.Namespace) -> int:
    from .render import DEFAULT_FRAMES, MAX_FRAMES, check_output

    if args.shm is not None:
        for option, given in (
            ("a trace", args.trace is not None),
            ("--compare", args.compare is not None),
            ("--at", args.at is not None),
            ("--animate", args.animate),
            ("--allocator", args.allocator is not None),
        ):
            if given:
                raise UsageError(f"--shm draws a live heap: {option} does not apply")
    elif args.trace is None:
        raise UsageError("viz needs a TRACE (or --shm NAME)")
    if args.animate and args.at is not None:
        raise UsageError("--at and --animate do not go together: an animation shows every op")
    if args.animate and args.compare is not None:
        raise UsageError("--animate draws one allocator; leave out --compare")
    if args.frames is None:
        args.frames = DEFAULT_FRAMES
    elif not args.animate:
        raise UsageError("--frames counts the frames of --animate")
    if not 1 <= args.frames <= MAX_FRAMES:
        raise UsageError(f"--frames must be between 1 and {MAX_FRAMES}")
    options = _options(args)
    options.columns()  # a width too small is refused before any work
    check_output(args.output, args.animate)
    if args.shm is not None:
        return _draw_live(args, options)

    if args.compare is not None:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        if not names:
            raise UsageError("--compare needs allocator names, separated by commas")
    else:
        names = [args.allocator or args.policy]
    packages: dict[str, Any] = {}
    if getattr(args, "mm", None) is not None:
        from ..trace import mm

        try:
            package = mm.build(args.mm)
        except mm.BuildError as e:
            raise VizError(e.report(args.mm)) from None
        packages[package.name] = package
        names = [package.name]
    known = (*policy_names(), *SYSTEM_ALLOCATORS, *packages)
    unknown = [n for n in names if n not in known and ":" not in n]  # ":" names a plug-in
    if unknown:
        raise UsageError(
            f"unknown allocator {', '.join(map(repr, unknown))}; choose from: {', '.join(known)}"
        )
    invisible = (*SYSTEM_ALLOCATORS, *packages)  # allocators whose layout pyalloc cannot see
    if all(name in invisible for name in names) and (args.animate or args.at is not None):
        option = "--animate" if args.animate else "--at"
        raise UsageError(f"{option} draws a map, and the layout of {names[0]} is not visible")

    source = load_source(Path(args.trace))
    if source.trace is None:
        raise VizError(f"{args.trace}: {source.error}")
    trace = source.trace
    if args.at is not None and args.at > len(trace.ops):
        raise UsageError(f"--at {args.at}: the trace has {len(trace.ops):,} ops")
    if args.animate:
        return _draw_animation(args, trace, names[0], options)
    return _draw_maps(args, trace, names, options, packages)


def _cache(args: argparse.Namespace) -> str:
    return " with its cache of freed blocks" if args.cache else ""


def _system_timeline(trace: Trace, name: str, package: Any = None) -> Timeline:
    """The timeline of an allocator whose layout is not visible: a system
    allocator (resident pages; glibc's bytes from mallinfo2), or a malloc-lab
    ``package`` (mem_heapsize)."""
    if package is not None:
        from ..trace.mm import replay_package

        result = replay_package(package, trace, timed_repeats=0)
        if not result.valid:
            raise VizError(f"{trace.name} on {name}: {result.error}")
        timeline = payload_timeline(trace, name)
        timeline.peak_footprint = int(result.peak_footprint)
        timeline.measured_as = "mem_heapsize()"
        return timeline
    system, reason = system_for(name)
    if system is None:
        raise VizError(f"{name}: {reason}")
    result = system.replay_system(trace, name, timed_repeats=0)
    if not result.valid:
        raise VizError(f"{trace.name} on {name}: {result.error}")
    timeline = payload_timeline(trace, name)
    timeline.peak_footprint = int(result.peak_footprint)
    if result.footprint_method == FOOTPRINT_METHOD_MALLINFO2:
        timeline.measured_as = "mallinfo2 bytes"
    return timeline


def _draw_maps(
    args: argparse.Namespace,
    trace: Trace,
    names: list[str],
    options: PictureOptions,
    packages: dict[str, Any] | None = None,
) -> int:
    from .render import Panel, draw_picture

    timelines: list[Timeline] = []
    panels: list[Panel] = []
    for name in names:
        if name in SYSTEM_ALLOCATORS or name in (packages or {}):
            timelines.append(_system_timeline(trace, name, (packages or {}).get(name)))
            if len(names) > 1:
                panels.append(
                    Panel(name, None, "layout not visible to pyalloc, footprint in the timeline")
                )
            continue
        timeline = record_timeline(trace, name, capacity=args.capacity, cache=args.cache)
        timelines.append(timeline)
        op = args.at if args.at is not None else timeline.peak_footprint_op
        assert op is not None
        with replayer_at(trace, name, op, capacity=args.capacity, cache=args.cache) as replayer:
            snapshot = replayer.snapshot()
            payload = replayer.payload
        panels.append(
            Panel(
                name,
                snapshot,
                f"after op {op:,}: footprint {human_bytes(snapshot.footprint)}, "
                f"live payload {human_bytes(payload)}",
            )
        )
    at = "at each one's peak footprint" if args.at is None else f"after op {args.at:,}"
    ops = len(trace.ops)
    if len(names) == 1:
        timeline = timelines[0]
        if panels:
            moment = (
                f"at peak footprint (op {timeline.peak_footprint_op:,} of {ops:,})"
                if args.at is None
                else f"after op {args.at:,} of {ops:,}"
            )
            first = f"{trace.name}: heap map {moment}, pyalloc {names[0]}{_cache(args)}"
        else:
            first = f"{trace.name}: live payload and peak footprint over {ops:,} ops, {names[0]}"
        measure = (
            timeline.measured_as if not timeline.layout_visible else "bytes taken from the heap"
        )
        second = (
            f"utilization {timeline.util:.1%} = peak live payload "
            f"{human_bytes(timeline.peak_payload)} / peak footprint "
            f"{human_bytes(timeline.peak_footprint)} ({measure})"
        )
    else:
        first = f"{trace.name}: heap maps {at}, one scale"
        second = "utilization = peak live payload / peak footprint: " + ", ".join(
            f"{t.allocator} {t.util:.1%}" + ("" if t.layout_visible else f" ({t.measured_as})")
            for t in timelines
        )
    map_op = args.at if args.at is not None else None
    if map_op is None and len(names) == 1 and panels:
        map_op = timelines[0].peak_footprint_op
    draw_picture(args.output, [first, second], panels, timelines, options, map_op)
    print(f"pyalloc viz: wrote {args.output}")
    return 0


def _draw_animation(
    args: argparse.Namespace, trace: Trace, name: str, options: PictureOptions
) -> int:
    from .render import Frame, draw_animation

    timeline = record_timeline(trace, name, capacity=args.capacity, cache=args.cache)
    ops = len(trace.ops)
    frame_ops = [ops] if args.frames == 1 else sample_ops(ops, args.frames - 1)
    frames: list[Frame] = []
    with Replayer(trace, name, capacity=args.capacity, cache=args.cache) as replayer:
        for op in frame_ops:
            replayer.advance_to(op)
            frames.append(Frame(op, replayer.snapshot()))
    title = [
        f"{trace.name}, pyalloc {name}{_cache(args)}",
        f"utilization {timeline.util:.1%} = peak live payload / peak footprint; "
        f"{len(frames)} frames",
    ]
    with ProgressBar(len(frames), minimum=FRAMES_WITH_PROGRESS) as progress:
        progress.start(f"drawing {len(frames)} frames", len(frames))
        draw_animation(
            args.output, title, name, frames, timeline, options, progress=progress.advance
        )
    print(f"pyalloc viz: wrote {args.output} ({len(frames)} frames)")
    return 0


def _draw_live(args: argparse.Namespace, options: PictureOptions) -> int:
    from .live import open_heap, read_view, view_title
    from .render import Panel, draw_picture

    heap = open_heap(args.shm)
    try:
        view = read_view(heap, args.shm)
    finally:
        heap.close()
    draw_picture(args.output, view_title(view), [Panel(args.shm, view.snapshot)], [], options)
    print(f"pyalloc viz: wrote {args.output}")
    return 0


def top_command(args: argparse.Namespace) -> int:
    try:
        _need("rich")
        from .live import run_top

        run_top(args.name, interval=args.interval, once=args.once, rows=args.rows)
    except VizError as e:
        return _fail(str(e))
    except KeyboardInterrupt as e:
        if type(e) is not KeyboardInterrupt:  # SIGTERM, which the command line reports
            raise
    return 0  # Ctrl-C is how top is left


__all__ = ["FOOTPRINT_RESIDENT", "top_command", "viz_command"]
