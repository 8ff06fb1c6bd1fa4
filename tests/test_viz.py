"""Pictures of the heap: cells, timelines, the peak, and what the images hold.

Pixel tests read the PNG back and look at the cells of blocks whose extent
is known from the heap's public answers (pointers and ``usable_size``), not
from the ``blocks()`` walk the pictures are drawn from.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("matplotlib")

from pyalloc import Heap, SharedHeap  # noqa: E402
from pyalloc.cli import main  # noqa: E402
from pyalloc.trace.generate import generate  # noqa: E402
from pyalloc.trace.rep import Op, Trace, write_trace  # noqa: E402
from pyalloc.trace.replay import default_capacity  # noqa: E402
from pyalloc.viz.history import (  # noqa: E402
    Replayer,
    payload_timeline,
    record_timeline,
    sample_ops,
)
from pyalloc.viz.render import (  # noqa: E402
    MapPlacement,
    Panel,
    PictureOptions,
    draw_picture,
)
from pyalloc.viz.snapshot import (  # noqa: E402
    FREE,
    OUTSIDE,
    OVERHEAD,
    PAYLOAD,
    STATE_COLOURS,
    Snapshot,
    cell_states,
    choose_scale,
    snapshot_from_blocks,
    snapshot_of,
)

HEADER = 8


def read_png(path: Path) -> npt.NDArray[np.uint8]:
    from matplotlib.image import imread

    image = imread(str(path))
    assert image.dtype == np.float32  # PNGs read as floats in [0, 1]
    return np.round(image[:, :, :3] * 255).astype(np.uint8)


def cell_colour(
    image: npt.NDArray[np.uint8], placement: MapPlacement, address: int
) -> set[tuple[int, ...]]:
    """The colours of every pixel of the cell holding ``address``."""
    x, y = placement.pixel_of(address)
    half = placement.cell // 2
    square = image[y - half : y - half + placement.cell, x - half : x - half + placement.cell]
    return {tuple(int(c) for c in pixel) for row in square for pixel in row}


def expected_states(heap: Heap, requests: dict[int, int], freed: dict[int, int]) -> dict[int, int]:
    """address (a multiple of 8) -> state, from pointers and usable sizes alone."""
    states: dict[int, int] = {}
    for p, n in requests.items():
        usable = heap.usable_size(p)
        states[p - HEADER] = OVERHEAD
        for a in range(p, p + usable, 8):
            states[a] = PAYLOAD if a < p + n else OVERHEAD
    for p, usable in freed.items():
        for a in range(p - HEADER, p + usable, 8):
            states[a] = FREE
    return states


# -- cells ------------------------------------------------------------------------------


def test_cells_of_a_hand_made_layout() -> None:
    # block 1: [16, 64), payload 24..44; block 2 free [64, 128); block 3 [128, 160),
    # seen from outside, so its usable bytes count; the epilogue up to 176.
    blocks = [(24, 48, True), (72, 64, False), (136, 32, True)]
    snapshot = snapshot_from_blocks(blocks, 176, {24: 20, 136: 24})
    assert snapshot == Snapshot(176, ((24, 44, PAYLOAD), (64, 128, FREE), (136, 160, PAYLOAD)))
    assert snapshot.bytes_in(PAYLOAD) == 20 + 24
    assert snapshot.bytes_in(FREE) == 64
    assert snapshot.bytes_in(OVERHEAD) == 176 - 44 - 64
    cells = cell_states(snapshot, 8, 24).tolist()
    o, p, f, x = OVERHEAD, PAYLOAD, FREE, OUTSIDE
    # cell 5 holds 4 payload and 4 padding bytes: a tie goes to payload
    assert cells == [o, o, o, p, p, p, o, o] + [f] * 8 + [o, p, p, p, o, o, x, x]
    # at 32 bytes a cell, the majority decides; in a tie the heap's bytes win
    assert cell_states(snapshot, 32, 7).tolist() == [o, o, f, f, p, o, x]


def test_requests_tell_payload_from_padding_and_cached_blocks() -> None:
    blocks = [(24, 48, True), (72, 64, False), (136, 32, True)]
    # without requests, a live block's usable bytes are its payload
    assert snapshot_from_blocks(blocks, 176).spans == (
        (24, 64, PAYLOAD),
        (64, 128, FREE),
        (136, 160, PAYLOAD),
    )
    # with them, an allocated block nobody asked for is in the cache of freed blocks
    # (drawn free, and joined with its free neighbour)
    assert snapshot_from_blocks(blocks, 176, {24: 20}).spans == ((24, 44, PAYLOAD), (64, 160, FREE))


def test_free_buddies_side_by_side_merge() -> None:
    snapshot = snapshot_from_blocks([(8, 32, False), (40, 32, False)], 72)
    assert snapshot.spans == ((0, 64, FREE),)


def test_scale_is_the_smallest_power_of_two_that_fits() -> None:
    scale = choose_scale(100_000, columns=100, max_rows=10)
    assert scale.bytes_per_cell == 128  # 64 * 100 * 10 < 100_000 <= 128 * 100 * 10
    assert scale.rows == 8
    assert choose_scale(100_000, 100, 10, bytes_per_cell=1000).rows == 1
    assert choose_scale(10, 100, 10).bytes_per_cell == 1


# -- the replay -------------------------------------------------------------------------


def small_trace() -> Trace:
    ops = [
        Op("a", 0, 200),
        Op("a", 1, 400),
        Op("a", 2, 600),
        Op("f", 1, 0),
        Op("a", 3, 4000),
        Op("f", 3, 0),
        Op("r", 0, 248),
        Op("f", 2, 0),
    ]
    return Trace(ops, num_ids=4, name="small")


def churn_trace(ops: int = 600, seed: int = 7) -> Trace:
    rng = np.random.default_rng(seed)
    live: list[int] = []
    out: list[Op] = []
    next_id = 0
    for _ in range(ops):
        if live and rng.random() < 0.45:
            out.append(Op("f", live.pop(int(rng.integers(len(live)))), 0))
        else:
            out.append(Op("a", next_id, int(rng.integers(1, 3000))))
            live.append(next_id)
            next_id += 1
    return Trace(out, num_ids=next_id, name="churn")


def test_the_peak_op_is_the_first_op_at_the_peak_footprint() -> None:
    trace = churn_trace()
    footprints = []
    payloads = []
    with Replayer(trace, "best-fit") as replayer:
        footprints.append(replayer.footprint()[0])
        payloads.append(0)
        while replayer.done < len(trace.ops):
            replayer.step()
            footprints.append(replayer.footprint()[0])
            payloads.append(replayer.payload)
    peak = max(footprints)
    # few readings, so that the peak lies between two of them and is searched for
    timeline = record_timeline(trace, "best-fit", samples=7)
    readings = sample_ops(len(trace.ops), 7)
    assert len(readings) == 8
    assert timeline.peak_footprint == peak
    assert timeline.peak_footprint_op == footprints.index(peak)
    assert timeline.peak_footprint_op not in readings  # so it was searched for
    # both peaks are readings of their own, in order, each with the right values
    peak_ops = {timeline.peak_footprint_op, timeline.peak_payload_op}
    assert timeline.sample_ops == sorted({*readings, *peak_ops})
    assert timeline.footprint == [footprints[op] for op in timeline.sample_ops]
    assert timeline.payload == [payloads[op] for op in timeline.sample_ops]
    assert (timeline.peak_payload, timeline.peak_payload_op) == (
        max(payloads),
        payloads.index(max(payloads)),
    )


def test_payload_follows_the_trace() -> None:
    timeline = record_timeline(small_trace(), "segregated")
    assert timeline.sample_ops == list(range(9))
    assert timeline.payload == [0, 200, 600, 1200, 800, 4800, 800, 848, 248]
    assert (timeline.peak_payload, timeline.peak_payload_op) == (4800, 5)
    assert timeline.util == pytest.approx(4800 / timeline.peak_footprint)


def test_snapshot_footprint_is_the_heaps() -> None:
    trace = churn_trace(300)
    with Replayer(trace, "segregated") as replayer:
        for op in (0, 1, 150, 300):
            replayer.advance_to(op)
            assert replayer.snapshot().footprint == replayer.footprint()[0]


# -- pixels -----------------------------------------------------------------------------


def test_map_pixels_have_each_blocks_colour(tmp_path: Path) -> None:
    with Heap(1 << 20, cache=False, small=False) as heap:  # every block with a header
        requests = {}
        for n in (200, 400, 600, 304):
            requests[heap.malloc(n)] = n
        middle = sorted(requests)[1]
        freed = {middle: heap.usable_size(middle)}
        heap.free(middle)
        del requests[middle]
        snapshot = snapshot_of(heap, requests)
        footprint = heap.stats()["heap_bytes"]
        expected = expected_states(heap, requests, freed)
    assert snapshot.footprint == footprint
    options = PictureOptions(width=600, cell=3, bytes_per_cell=8, max_rows=400)
    (placement,) = draw_picture(
        tmp_path / "map.png", ["t", "u"], [Panel("heap", snapshot)], [], options
    )
    assert placement is not None
    image = read_png(tmp_path / "map.png")
    assert image.shape[1] == 600
    assert set(expected.values()) == {PAYLOAD, OVERHEAD, FREE}
    for address, state in expected.items():
        assert cell_colour(image, placement, address) == {STATE_COLOURS[state]}, address
    # the cells after the footprint's end, to the end of the last row, are background
    last = placement.scale.rows * placement.scale.row_bytes
    for address in range(footprint, last, 8):
        assert cell_colour(image, placement, address) == {STATE_COLOURS[OUTSIDE]}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_viz_draws_the_map_at_the_peak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = small_trace()
    write_trace(trace, tmp_path / "small.rep")
    out = tmp_path / "small.png"
    status, stdout, _ = run(
        capsys,
        "viz",
        str(tmp_path / "small.rep"),
        "--cell",
        "3",
        "--scale",
        "8",
        "--rows",
        "400",
        "-o",
        str(out),
    )
    assert status == 0 and "wrote" in stdout
    # the same ops on a heap of our own: the peak footprint comes with op 5 (a 3 4000)
    with Heap(default_capacity(trace), cache=False, small=False) as heap:
        p0 = heap.malloc(200)
        p1 = heap.malloc(400)
        p2 = heap.malloc(600)
        freed = {p1: heap.usable_size(p1)}
        heap.free(p1)
        p3 = heap.malloc(4000)
        expected = expected_states(heap, {p0: 200, p2: 600, p3: 4000}, freed)
    timeline = record_timeline(trace, "segregated")
    assert timeline.peak_footprint_op == 5
    image = read_png(out)
    # where the map lies: the renderer's layout for one map with this scale
    from pyalloc.viz import render

    top = render.TITLE_HEIGHT + render.LEGEND_HEIGHT + render.LABEL_HEIGHT
    columns = (1000 - render.MARGIN_LEFT - render.MARGIN_RIGHT) // 3
    placement = MapPlacement(render.MARGIN_LEFT, top, 3, choose_scale(1, columns, 400, 8))
    for address, state in expected.items():
        assert cell_colour(image, placement, address) == {STATE_COLOURS[state]}, address


def test_at_zero_shows_no_payload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_trace(small_trace(), tmp_path / "small.rep")
    out = tmp_path / "at0.png"
    status, _, _ = run(capsys, "viz", str(tmp_path / "small.rep"), "--at", "0", "-o", str(out))
    assert status == 0
    image = read_png(out)
    from pyalloc.viz import render

    top = render.TITLE_HEIGHT + render.LEGEND_HEIGHT + render.LABEL_HEIGHT
    band = image[top : top + 40, render.MARGIN_LEFT : 1000 - render.MARGIN_RIGHT]
    colours = {tuple(int(c) for c in px) for row in band for px in row}
    assert STATE_COLOURS[OVERHEAD] in colours
    assert STATE_COLOURS[PAYLOAD] not in colours and STATE_COLOURS[FREE] not in colours
    status, _, err = run(capsys, "viz", str(tmp_path / "small.rep"), "--at", "9", "-o", str(out))
    assert status == 2 and "8 ops" in err


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_image_size_follows_the_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace_path = tmp_path / "churn.rep"
    write_trace(churn_trace(), trace_path)
    sizes = {}
    for label, extra in {
        "base": [],
        "narrow": ["--width", "640"],
        "big cells": ["--cell", "4"],
        "three": ["--compare", "segregated,best-fit,buddy"],
    }.items():
        out = tmp_path / f"{label}.png"
        status, _, err = run(
            capsys,
            "viz",
            str(trace_path),
            "--scale",
            "256",
            "--rows",
            "500",
            *extra,
            "-o",
            str(out),
        )
        assert status == 0, err
        sizes[label] = image_size(out)
    assert sizes["base"][0] == 1000 and sizes["narrow"][0] == 640
    assert sizes["big cells"][0] == 1000
    with Replayer(churn_trace(), "segregated") as replayer:
        replayer.advance_to(record_timeline(churn_trace(), "segregated").peak_footprint_op or 0)
        footprint = replayer.snapshot().footprint
    columns = (1000 - 84 - 24) // 2
    rows_at_2px = -(-footprint // (256 * columns))
    rows_at_4px = -(-footprint // (256 * ((1000 - 84 - 24) // 4)))
    assert sizes["big cells"][1] - sizes["base"][1] == rows_at_4px * 4 - rows_at_2px * 2
    assert sizes["three"][1] > sizes["base"][1] + 2 * rows_at_2px * 2


def test_a_trace_that_does_not_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.rep"
    bad.write_text("20000\n2\n3\n1\na 0 10\nx 1 2\n")
    out = tmp_path / "bad.png"
    status, stdout, err = run(capsys, "viz", str(bad), "-o", str(out))
    assert status == 1
    assert err.startswith("pyalloc: ") and err.count("\n") == 1 and "bad.rep" in err
    assert "Traceback" not in err and stdout == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.rep"]


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_trace(small_trace(), tmp_path / "s.rep")
    trace = str(tmp_path / "s.rep")
    out = str(tmp_path / "o.png")
    for argv, status, words in [
        (["--policy", "nope"], 2, "unknown allocator 'nope'"),
        (["--compare", "segregated,nope"], 2, "unknown allocator 'nope'"),
        (["--width", "100"], 1, "--width"),
        (["--allocator", "glibc", "--at", "3"], 2, "--at draws a map"),
        (["--allocator", "glibc", "--animate"], 2, "--animate draws a map"),
    ]:
        output = out.replace(".png", ".gif") if "--animate" in argv else out
        code, _, err = run(capsys, "viz", trace, *argv, "-o", output)
        assert (code, err.count("\n")) == (status, 1) and words in err, err
    code, _, err = run(capsys, "viz", trace, "-o", str(tmp_path / "o.bmp"))
    assert code == 1 and ".png" in err
    code, _, err = run(capsys, "viz", trace, "--animate", "-o", out)
    assert code == 1 and ".gif" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "s.rep"]


def test_an_animation_reports_each_frame_as_it_is_drawn(tmp_path: Path) -> None:
    from pyalloc.viz.history import Replayer, record_timeline, sample_ops
    from pyalloc.viz.render import Frame, draw_animation

    trace = churn_trace()
    timeline = record_timeline(trace, "segregated")
    with Replayer(trace, "segregated") as replayer:
        frames = []
        for op in sample_ops(len(trace.ops), 4):
            replayer.advance_to(op)
            frames.append(Frame(op, replayer.snapshot()))
    drawn: list[int] = []
    draw_animation(
        tmp_path / "a.gif", ["t", "u"], "segregated", frames, timeline, progress=drawn.append
    )
    assert drawn == [1] * len(frames) and len(frames) >= 4
    assert (tmp_path / "a.gif").stat().st_size > 0


def test_animation_frames_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    write_trace(churn_trace(), tmp_path / "c.rep")
    out = tmp_path / "c.gif"
    status, stdout, err = run(
        capsys,
        "viz",
        str(tmp_path / "c.rep"),
        "--animate",
        "--frames",
        "12",
        "--width",
        "500",
        "-o",
        str(out),
    )
    assert status == 0, err
    with Image.open(out) as gif:
        assert gif.n_frames == 12 and gif.size[0] == 500
    status, _, err = run(
        capsys, "viz", str(tmp_path / "c.rep"), "--animate", "--frames", "9999", "-o", str(out)
    )
    assert status == 2 and "--frames" in err
    status, _, err = run(capsys, "viz", str(tmp_path / "c.rep"), "--frames", "5", "-o", "c.png")
    assert status == 2 and err == "pyalloc: --frames counts the frames of --animate\n"


def test_viz_draws_a_plug_in_policy_and_refuses_a_directory_as_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = Path(__file__).resolve().parents[1] / "examples" / "worst_fit.py"
    write_trace(churn_trace(), tmp_path / "c.rep")
    out = tmp_path / "w.png"
    status, stdout, err = run(
        capsys, "viz", str(tmp_path / "c.rep"), "--policy", f"{plugin}:WorstFit", "-o", str(out)
    )
    assert status == 0, err
    assert out.stat().st_size > 0
    status, _, err = run(capsys, "viz", str(tmp_path / "c.rep"), "-o", str(tmp_path))
    assert status == 1 and err == f"pyalloc: {tmp_path} is a directory; give a file name\n"


def test_mp4_needs_ffmpeg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matplotlib import animation

    if animation.writers.is_available("ffmpeg"):
        pytest.skip("ffmpeg is installed here")
    write_trace(small_trace(), tmp_path / "s.rep")
    status, _, err = run(
        capsys, "viz", str(tmp_path / "s.rep"), "--animate", "-o", str(tmp_path / "s.mp4")
    )
    assert status == 1 and "ffmpeg" in err and not (tmp_path / "s.mp4").exists()


# -- live heaps -------------------------------------------------------------------------


@pytest.fixture
def shared() -> Iterator[SharedHeap]:
    heap = SharedHeap.create(f"pyalloc-test-{uuid.uuid4().hex}", 4 << 20)
    yield heap
    heap.close()
    try:
        heap.unlink()
    except FileNotFoundError:
        pass


def test_viz_of_a_shared_heap(
    shared: SharedHeap, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pointers = [shared.malloc(n) for n in (300, 500, 700, 300)]  # blocks, not slab objects
    shared.names["results"] = pointers[2]  # the directory's block comes before the hole
    freed = {pointers[1]: shared.usable_size(pointers[1])}
    shared.free(pointers[1])
    out = tmp_path / "live.png"
    status, _, err = run(
        capsys,
        "viz",
        "--shm",
        shared.name,
        "--scale",
        "8",
        "--cell",
        "3",
        "--rows",
        "800",
        "-o",
        str(out),
    )
    assert status == 0, err
    # from outside, a block's payload is its usable bytes
    requests = {p: shared.usable_size(p) for p in pointers if p not in freed}
    expected = expected_states(shared, requests, freed)  # type: ignore[arg-type]
    from pyalloc.viz import render

    top = render.TITLE_HEIGHT + render.LEGEND_HEIGHT + render.LABEL_HEIGHT
    columns = (1000 - render.MARGIN_LEFT - render.MARGIN_RIGHT) // 3
    placement = MapPlacement(render.MARGIN_LEFT, top, 3, choose_scale(1, columns, 800, 8))
    image = read_png(out)
    for address, state in expected.items():
        assert cell_colour(image, placement, address) == {STATE_COLOURS[state]}, address


def test_viz_of_a_missing_shared_heap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.png"
    status, _, err = run(capsys, "viz", "--shm", f"pyalloc-test-{uuid.uuid4().hex}", "-o", str(out))
    assert status == 1 and err.count("\n") == 1 and not out.exists()
    status, _, err = run(capsys, "viz", "--shm", "x", "--at", "3", "-o", str(out))
    assert status == 2


def test_top_once(shared: SharedHeap, capsys: pytest.CaptureFixture[str]) -> None:
    p = shared.malloc(100_000)
    shared.names["big-array"] = p
    status, out, err = run(capsys, "top", shared.name, "--once", "--rows", "4")
    assert status == 0, err
    assert shared.name in out and "big-array" in out and f"{shared.usable_size(p):,}" in out
    map_lines = [line for line in out.splitlines() if line.strip().endswith(("#", "+", "."))]
    assert 1 <= len(map_lines) <= 4
    assert any("#" in line for line in map_lines)
    status, _, err = run(capsys, "top", f"pyalloc-test-{uuid.uuid4().hex}", "--once")
    assert status == 1 and err.count("\n") == 1


def test_top_gives_a_named_slab_object_its_usable_size(
    shared: SharedHeap, capsys: pytest.CaptureFixture[str]
) -> None:
    p = shared.malloc(50)  # in a slab (a shared heap's class has one from its first object)
    assert shared.in_slab(p)
    shared.names["small"] = p
    status, out, err = run(capsys, "top", shared.name, "--once", "--rows", "2")
    assert status == 0, err
    line = next(line for line in out.splitlines() if "small" in line)
    assert line.split() == ["small", str(p), str(shared.usable_size(p))], line


def _stop_top_with(signum: int) -> None:
    os.kill(os.getpid(), signum)  # a Python handler (main's, or the default one) raises


@pytest.mark.parametrize(
    "signum, status, said",
    [(signal.SIGINT, 0, ""), (signal.SIGTERM, 143, "pyalloc: terminated\n")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_quits_top_and_sigterm_stops_it(
    shared: SharedHeap,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
    status: int,
    said: str,
) -> None:
    from pyalloc.viz import live

    monkeypatch.setattr(live, "run_top", lambda *args, **options: _stop_top_with(signum))
    got, out, err = run(capsys, "top", shared.name)
    assert (got, err) == (status, said)


def test_top_counts_the_processes_attached(
    shared: SharedHeap, capsys: pytest.CaptureFixture[str]
) -> None:
    def attached_line() -> str:
        status, out, err = run(capsys, "top", shared.name, "--once", "--rows", "2")
        assert status == 0, err
        return " ".join(out.split())

    assert "processes 1 attached" in attached_line()  # this process, twice attached
    ready, done = os.pipe()
    child = os.fork()
    if child == 0:  # attaches, says so, and waits to be killed
        try:
            SharedHeap.attach(shared.name)
            os.write(done, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        assert "processes 2 attached" in attached_line()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(done)
    assert "processes 1 attached" in attached_line()  # the dead one is not counted


def test_a_system_allocator_gets_the_timeline_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyalloc.trace.system import system_available

    reason = system_available("glibc")
    if reason is not None:
        pytest.skip(reason)
    write_trace(churn_trace(), tmp_path / "c.rep")
    mapped = tmp_path / "map.png"
    alone = tmp_path / "glibc.png"
    assert run(capsys, "viz", str(tmp_path / "c.rep"), "-o", str(mapped))[0] == 0
    status, _, err = run(
        capsys, "viz", str(tmp_path / "c.rep"), "--allocator", "glibc", "-o", str(alone)
    )
    assert status == 0, err

    # no map: nothing in the free colour (no line uses it), and shorter than with a map
    def colours(path: Path) -> set[tuple[int, ...]]:
        return {tuple(int(c) for c in px) for row in read_png(path) for px in row}

    assert STATE_COLOURS[FREE] in colours(mapped)
    assert STATE_COLOURS[FREE] not in colours(alone)
    assert image_size(alone)[1] < image_size(mapped)[1]
    # the payload's peak is a reading, so that its line reaches the marker
    timeline = payload_timeline(churn_trace(), "glibc")
    assert timeline.footprint is None
    assert timeline.payload[timeline.sample_ops.index(timeline.peak_payload_op)] == (
        timeline.peak_payload
    )


def test_top_refreshes_until_interrupted(shared: SharedHeap) -> None:
    import io

    from rich.console import Console

    from pyalloc.viz.live import run_top

    screen = io.StringIO()
    console = Console(file=screen, width=90, force_terminal=True, color_system=None)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        # between two refreshes another user of the heap names a new block
        sleeps.append(seconds)
        if len(sleeps) == 1:
            shared.names["arrived-later"] = shared.malloc(5000)
        else:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_top(shared.name, interval=0.25, console=console, sleep=sleep)
    assert sleeps == [0.25, 0.25]
    text = screen.getvalue()
    assert text.count("pyalloc top:") >= 2
    assert "arrived-later" not in text.split("pyalloc top:")[1]
    assert "arrived-later" in text.split("pyalloc top:")[-1]


def test_a_malloc_lab_package_gets_its_timeline(tmp_path: Path) -> None:
    from pyalloc.trace import mm

    if mm.compiler() is None:
        pytest.skip("no C compiler on this machine")
    example = Path(__file__).resolve().parents[1] / "examples" / "mm_implicit.c"
    trace = tmp_path / "t.rep"
    write_trace(generate("uniform", ops=400, seed=5), trace)
    out = tmp_path / "mm.png"
    assert main(["viz", str(trace), "--mm", str(example), "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_glibcs_timeline_says_its_footprint_is_mallinfo2_bytes() -> None:
    from pyalloc.trace.system import glibc_has_mallinfo2, system_available
    from pyalloc.viz.commands import _system_timeline

    reason = system_available("glibc")
    if reason is not None:
        pytest.skip(reason)
    if not glibc_has_mallinfo2():
        pytest.skip("this glibc has no mallinfo2 (added in 2.33)")
    timeline = _system_timeline(churn_trace(), "glibc")
    assert timeline.measured_as == "mallinfo2 bytes"
    assert timeline.peak_footprint >= timeline.peak_payload


def test_a_picture_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.rep"
    write_trace(generate("uniform", ops=200, seed=5), trace)
    directory = tmp_path / "d.png"
    directory.mkdir()
    cases = [(str(directory), "is a directory")]
    if os.path.isdir("/proc/sys"):  # a directory where no file can be created, even by root
        cases.append(("/proc/v.png", "/proc"))  # as root, the write is what fails
    for out, reason in cases:
        status = main(["viz", str(trace), "-o", out])
        err = capsys.readouterr().err
        assert status == 1 and len(err.splitlines()) == 1 and err.startswith("pyalloc: ")
        assert reason in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "t.rep"]


@pytest.mark.parametrize(
    "sizes", [["--width", "1000000000"], ["--cell", "1000", "--width", "20000", "--rows", "100000"]]
)
def test_a_picture_too_large_to_draw_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sizes: list[str]
) -> None:
    trace = tmp_path / "t.rep"
    write_trace(generate("uniform", ops=200, seed=5), trace)
    out = tmp_path / "big.png"
    assert main(["viz", str(trace), "-o", str(out), *sizes]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyalloc: a picture ") and "too large" in err
    assert len(err.splitlines()) == 1 and not out.exists()
