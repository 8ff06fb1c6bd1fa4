"""The .rep trace format: round trips, gzip, and every malformed input refused."""

from __future__ import annotations

import gzip
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from pyalloc.trace import rep
from pyalloc.trace.rep import (
    MAX_ID,
    Op,
    Trace,
    TraceFormatError,
    parse_trace,
    read_trace,
    write_trace,
)

CLASSIC = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "classic"

SAMPLE = Trace(
    ops=[
        Op("a", 0, 24),
        Op("a", 1, 0),
        Op("r", 0, 100),
        Op("f", 1, 0),
        Op("r", 2, 8),
        Op("f", 0, 0),
        Op("r", 2, 0),
    ],
    num_ids=3,
    weight=2,
    heap_hint=4096,
    name="sample",
)


def test_round_trip_plain(tmp_path: Path) -> None:
    path = tmp_path / "sample.rep"
    write_trace(SAMPLE, path)
    assert path.read_bytes()[:2] != b"\x1f\x8b"
    assert path.read_text().splitlines()[:4] == ["4096", "3", "7", "2"]
    assert read_trace(path) == SAMPLE


def test_round_trip_gzip(tmp_path: Path) -> None:
    path = tmp_path / "sample.rep.gz"
    write_trace(SAMPLE, path)
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw).decode().splitlines()[4] == "a 0 24"
    assert read_trace(path) == SAMPLE


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "one.rep.gz", tmp_path / "two.rep.gz"
    write_trace(SAMPLE, first)
    write_trace(SAMPLE, second)
    assert first.read_bytes() == second.read_bytes()


def test_gzip_contents_detected_without_gz_suffix(tmp_path: Path) -> None:
    path = tmp_path / "packed.rep"
    path.write_bytes(gzip.compress(b"0\n1\n1\n1\na 0 5\n"))
    trace = read_trace(path)
    assert trace.ops == [Op("a", 0, 5)]
    assert trace.name == "packed"


def test_name_comes_from_file_name(tmp_path: Path) -> None:
    path = tmp_path / "amptjp-bal.rep.gz"
    write_trace(SAMPLE, path)
    assert read_trace(path).name == "amptjp-bal"


def test_crlf_tabs_and_trailing_blank_lines_accepted() -> None:
    text = "1\r\n1\r\n3\r\n1\r\na\t0   16\r\nr 0 32\r\n  f 0  \r\n\r\n   \r\n"
    trace = parse_trace(text)
    assert trace.ops == [Op("a", 0, 16), Op("r", 0, 32), Op("f", 0, 0)]
    assert (trace.heap_hint, trace.num_ids, trace.weight) == (1, 1, 1)


def test_empty_trace() -> None:
    trace = parse_trace("0\n0\n0\n0\n")
    assert trace.ops == [] and trace.num_ids == 0 and trace.weight == 0


def test_parse_reports_given_name() -> None:
    with pytest.raises(TraceFormatError, match=r"^mine\.rep:5: "):
        parse_trace("1\n1\n1\n1\nq 0\n", name="mine.rep")


MALFORMED = {
    "empty file": ("", 1, "heap_hint"),
    "header cut short": ("1\n2\n", 3, "num_ops"),
    "header word": ("1\nmany\n1\n1\na 0 1\n", 2, "num_ids"),
    "header negative": ("1\n2\n1\n-1\na 0 1\n", 4, "weight"),
    "header two numbers": ("1 2\n2\n1\n1\na 0 1\n", 1, "heap_hint"),
    "header blank": ("1\n\n1\n1\na 0 1\n", 2, "num_ids"),
    "blank line among ops": ("1\n2\n2\n1\na 0 1\n\nf 0\n", 6, "expected an op"),
    "unknown kind": ("1\n2\n1\n1\nm 0 1\n", 5, "expected an op"),
    "upper-case kind": ("1\n2\n1\n1\nA 0 1\n", 5, "expected an op"),
    "alloc without size": ("1\n2\n1\n1\na 0\n", 5, "expected an op"),
    "realloc without size": ("1\n2\n1\n1\nr 1\n", 5, "expected an op"),
    "free with size": ("1\n2\n1\n1\nf 0 8\n", 5, "expected an op"),
    "alloc extra field": ("1\n2\n1\n1\na 0 8 9\n", 5, "expected an op"),
    "id not a number": ("1\n2\n1\n1\na x 8\n", 5, "id in"),
    "id negative": ("1\n2\n1\n1\na -1 8\n", 5, "id in"),
    "id too large": ("1\n2\n1\n1\na 67108864 8\n", 5, "id in [0, 67108864)"),
    "number of 5000 digits": ("1\n2\n1\n1\na 0 " + "9" * 5000 + "\n", 5, "size"),
    "form feed is not a line break": ("1\n2\n2\n1\na 0 1\x0cf 0\nf 0\n", 5, "expected an op"),
    "size negative": ("1\n2\n1\n1\na 0 -8\n", 5, "size"),
    "size with sign": ("1\n2\n1\n1\na 0 +8\n", 5, "size"),
    "size with underscore": ("1\n2\n1\n1\nr 0 1_0\n", 5, "size"),
    "size float": ("1\n2\n1\n1\na 0 8.5\n", 5, "size"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_names_file_and_line(tmp_path: Path, case: str) -> None:
    text, lineno, expected = MALFORMED[case]
    path = tmp_path / "bad.rep"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(TraceFormatError) as info:
        read_trace(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{lineno}: "), message
    assert expected in message
    assert info.value.lineno == lineno
    assert info.value.source == str(path)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_gzip_file_refused_alike(tmp_path: Path, case: str) -> None:
    text, lineno, _ = MALFORMED[case]
    path = tmp_path / "bad.rep.gz"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    with pytest.raises(TraceFormatError, match=rf"^{path}:{lineno}: "):
        read_trace(path)


def test_non_ascii_byte_refused_with_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.rep"
    path.write_bytes(b"1\n2\n1\n1\na 0 8\xe9\n")
    with pytest.raises(TraceFormatError, match=rf"^{path}:5: expected ASCII"):
        read_trace(path)


def test_non_ascii_digit_refused_in_text() -> None:
    with pytest.raises(TraceFormatError, match=r"^t:5: expected a size"):
        parse_trace("1\n2\n1\n1\na 0 \u0663\n", name="t")


def test_truncated_gzip_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.rep.gz"
    path.write_bytes(gzip.compress(b"1\n2\n1\n1\na 0 8\n")[:-6])
    with pytest.raises(TraceFormatError, match=rf"^{path}: expected a gzip stream"):
        read_trace(path)


def test_gz_name_with_plain_contents_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.rep.gz"
    path.write_text("1\n2\n1\n1\na 0 8\n")
    with pytest.raises(TraceFormatError, match=rf"^{path}: expected a gzip stream"):
        read_trace(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "absent.rep")


def test_format_error_is_a_value_error() -> None:
    assert issubclass(TraceFormatError, ValueError)


@pytest.mark.parametrize(
    "bad_op",
    [Op("x", 0, 1), Op("a", 3, 1), Op("a", -1, 1), Op("a", 0, -1), Op("f", 0, 8)],
)
def test_write_refuses_invalid_trace(tmp_path: Path, bad_op: Op) -> None:
    trace = Trace(ops=[Op("a", 0, 8), bad_op], num_ids=3)
    path = tmp_path / "out.rep"
    with pytest.raises(ValueError, match="op 1"):
        write_trace(trace, path)
    assert not path.exists()


def test_write_refuses_negative_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weight"):
        write_trace(Trace(ops=[], num_ids=0, weight=-1), tmp_path / "out.rep")


@pytest.mark.skipif(not CLASSIC.is_dir(), reason="classic traces not present")
def test_classic_traces_read_and_round_trip(tmp_path: Path) -> None:
    paths = sorted(CLASSIC.glob("*.rep"))
    assert paths
    for path in paths:
        trace = read_trace(path)
        assert trace.name == path.stem
        assert len(trace.ops) == int(path.read_text().split()[2])
        copy = tmp_path / f"{path.stem}.rep.gz"
        write_trace(trace, copy)
        assert read_trace(copy) == trace


def test_header_counts_that_disagree_with_the_body_are_warnings() -> None:
    trace = parse_trace("1\n2\n5\n1\na 0 1\na 3 8\nf 0\n")
    assert trace.ops == [Op("a", 0, 1), Op("a", 3, 8), Op("f", 0, 0)]
    assert trace.num_ids == 4
    assert [w.split("warning: ")[1] for w in trace.warnings] == [
        "header line 2 says 2 ids; the ops use 4",
        "header line 3 says 5 ops; the file has 3",
    ]
    assert parse_trace("1\n1\n1\n1\na 0 1\n").warnings == []


@pytest.mark.parametrize("claimed", [2, MAX_ID - 1, 10**9])
def test_a_header_claiming_more_ids_allocates_nothing_for_them(claimed: int) -> None:
    trace = parse_trace(f"1\n{claimed}\n2\n1\na 0 1\nf 0\n")
    assert trace.num_ids == 1 and f"says {claimed} ids" in trace.warnings[0]


def test_minus_one_is_null_in_f_and_r_lines() -> None:
    trace = parse_trace("1\n2\n4\n1\na 0 8\nf -1\nr -1 16\nf 0\n")
    # free(NULL) does nothing; realloc(NULL, 16) allocates a block of its own.
    assert trace.ops == [Op("a", 0, 8), Op("r", 1, 16), Op("f", 0, 0)]
    assert trace.num_ids == 2


def test_a_rejected_line_is_quoted_up_to_80_characters() -> None:
    with pytest.raises(TraceFormatError) as info:
        parse_trace("1\n2\n1\n1\n" + "x" * 500 + "\n")
    message = str(info.value)
    assert "x" * 80 in message and "x" * 81 not in message and "(500 characters)" in message


def test_endless_or_exploding_input_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip

    import pyalloc.trace.rep as rep

    monkeypatch.setattr(rep, "MAX_TRACE_BYTES", 1 << 20)
    # /dev/zero: see test_dev_zero_is_refused_at_its_first_chunk.
    bomb = tmp_path / "bomb.rep.gz"
    bomb.write_bytes(gzip.compress(b"1\n1\n1\n1\n" + b" " * (64 << 20)))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(TraceFormatError, match="more than 1 MiB"):
        read_trace(bomb)


def test_dev_zero_is_refused_at_its_first_chunk() -> None:
    # A NUL byte ends the read: nothing near MAX_TRACE_BYTES is read or held.
    tracemalloc.start()
    try:
        with pytest.raises(TraceFormatError, match=r"^/dev/zero:1: expected text, got a NUL"):
            read_trace("/dev/zero")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_gzip_of_nul_bytes_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "zeros.rep.gz"
    path.write_bytes(gzip.compress(b"0\n1\n" + bytes(1 << 22)))
    with pytest.raises(TraceFormatError, match=rf"^{path}:3: expected text, got a NUL"):
        read_trace(path)


def test_endless_text_is_refused_past_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rep, "MAX_TRACE_BYTES", 1 << 20)
    path = tmp_path / "long.rep"
    path.write_bytes(b"0\n1\n1\n1\n" + b"a 0 1\n" * 400_000)
    with pytest.raises(TraceFormatError, match=rf"^{path}: more than 1 MiB of text"):
        read_trace(path)


def test_gzip_trace_read_from_a_pipe(tmp_path: Path) -> None:
    # <(zcat t.rep.gz) and FIFOs cannot seek; the gzip magic must be seen without it.
    packed = gzip.compress(b"0\n1\n2\n1\na 0 8\nf 0\n")
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, packed), os.close(write_end)))
    writer.start()
    try:
        trace = read_trace(f"/dev/fd/{read_end}")
    finally:
        writer.join()
        os.close(read_end)
    assert trace.ops == [Op("a", 0, 8), Op("f", 0, 0)]


def test_a_number_too_long_says_why() -> None:
    # Python cannot even convert past 4300 digits; the message names the limit.
    with pytest.raises(TraceFormatError) as info:
        parse_trace("1\n1\n1\n1\na 0 " + "9" * 5000 + "\n", name="t")
    assert "at most 20 digits (this one has 5,000)" in str(info.value)
    with pytest.raises(TraceFormatError, match=r"^t:2: .*at most 20 digits \(this one has 21\)"):
        parse_trace("1\n" + "1" * 21 + "\n1\n1\na 0 1\n", name="t")
