"""Reading and writing allocation traces in the malloc-lab ``.rep`` format.

File layout
-----------

A ``.rep`` file is plain ASCII text, one item a line (``\\n`` or ``\\r\\n``; a form
feed or another separator ``str.splitlines`` knows does not end a line)::

    line 1   heap_hint     suggested heap size in bytes (informational)
    line 2   num_ids       number of distinct block ids; ids are in [0, num_ids)
    line 3   num_ops       number of op lines that follow
    line 4   weight        how much the trace counts in an average (>= 0)
    line 5.. one op a line:
               a ID SIZE   allocate SIZE bytes and call the block ID
               f ID        free block ID
               r ID SIZE   reallocate block ID to SIZE bytes

Every number is a non-negative decimal integer of at most ``MAX_DIGITS``
digits written with ASCII digits only (no sign, no underscores); an id is
below ``MAX_ID``, except that ``-1`` in an ``f`` or ``r`` line is NULL, as in
mdriver's traces: ``f -1`` (free(NULL)) is dropped and ``r -1 SIZE``
(realloc(NULL, SIZE)) gets an id of its own above the others.  Fields are
separated by any run of blanks.  Blank lines are accepted only after the
last op.  A file whose name ends in ``.gz`` (or that starts with the gzip
magic bytes) is read through gzip; at most ``MAX_TRACE_BYTES`` of text are
read, and a NUL byte ends the read.

The ops decide, as in mdriver: a header whose op count or id count
disagrees with them is reported in ``Trace.warnings``, not refused, and the
id count becomes the one the ops use (a header's count only sizes tables).

Invariants of a ``Trace`` returned by :func:`read_trace` / :func:`parse_trace`::

    0 <= op.id < trace.num_ids                 for every op
    op.size >= 0, and op.size == 0 when op.kind == 'f'
    op.kind in {'a', 'f', 'r'}

Replay semantics
----------------

The format says what a program asked for, not whether it was sensible.  A
replay driver maps each id to the pointer it currently holds (NULL when the id
is not live) and gives every op the meaning of the C call it stands for:

    a ID SIZE   p[ID] = malloc(SIZE)              (an id that is already live is
                                                   simply overwritten; its old
                                                   block is leaked, as in C)
    f ID        free(p[ID]); p[ID] = NULL         free of an id that is not live
                                                   is free(NULL): nothing happens
    r ID SIZE   p[ID] = realloc(p[ID], SIZE)      realloc of an id that is not
                                                   live is malloc(SIZE);
                                                   ``r ID 0`` frees and leaves
                                                   the id not live

The parser checks syntax and ranges only; these semantics make every such
trace replayable.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

from ..files import replacing

__all__ = ["Op", "Trace", "TraceFormatError", "parse_trace", "read_trace", "write_trace"]

HEADER_FIELDS = ("heap_hint", "num_ids", "num_ops", "weight")
OP_KINDS = ("a", "f", "r")
GZIP_MAGIC = b"\x1f\x8b"
MAX_TRACE_BYTES = 1 << 28  # text read from one trace (after gunzip): /dev/zero stops here
MAX_DIGITS = 20  # a number of a trace: 2**64 has 20 digits
MAX_ID = 1 << 26  # ids index the replay's tables: a larger one is refused, not allocated
_READ_CHUNK = 1 << 20  # bytes read at a time, so a bad input is refused early
QUOTE_LIMIT = 80  # characters of a rejected line quoted in a message
NULL_ID = "-1"  # mdriver's id of a NULL pointer in an f or r line

# For each op kind, the number of whitespace-separated fields its line has.
_FIELDS_PER_KIND = {"a": 3, "f": 2, "r": 3}


class TraceFormatError(ValueError):
    """A trace file that does not follow the ``.rep`` format.

    ``source`` names the file (or string), ``lineno`` is the 1-based line
    number where the fault was found (0 when it concerns the whole file).
    """

    def __init__(self, source: str, lineno: int, message: str) -> None:
        self.source = source
        self.lineno = lineno
        self.reason = message
        where = f"{source}:{lineno}" if lineno else source
        super().__init__(f"{where}: {message}")


class Op(NamedTuple):
    """One trace operation; ``size`` is 0 for frees."""

    kind: str  # 'a' (malloc), 'f' (free) or 'r' (realloc)
    id: int  # block id, 0 <= id < Trace.num_ids
    size: int  # bytes asked for; 0 for 'f'


@dataclass
class Trace:
    """A sequence of ops over ``num_ids`` block ids, with the header's metadata.

    ``warnings`` lists what the parser accepted but a reader should know
    (a header count that disagrees with the body).
    """

    ops: list[Op]
    num_ids: int
    weight: int = 1
    heap_hint: int = 0
    name: str = ""
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ops)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first op that breaks the invariants."""
        for field_name, value in (
            ("num_ids", self.num_ids),
            ("weight", self.weight),
            ("heap_hint", self.heap_hint),
        ):
            if type(value) is not int or value < 0:
                raise ValueError(f"trace {self.name!r}: {field_name} must be an int >= 0")
        num_ids = self.num_ids
        for index, op in enumerate(self.ops):
            kind, block_id, size = op
            if kind not in _FIELDS_PER_KIND:
                raise ValueError(f"trace {self.name!r}: op {index}: unknown kind {kind!r}")
            if type(block_id) is not int or not 0 <= block_id < num_ids:
                raise ValueError(
                    f"trace {self.name!r}: op {index}: id {block_id!r} not in [0, {num_ids})"
                )
            if type(size) is not int or size < 0:
                raise ValueError(f"trace {self.name!r}: op {index}: size {size!r} is not >= 0")
            if kind == "f" and size != 0:
                raise ValueError(f"trace {self.name!r}: op {index}: a free carries size {size}")


def _parse_count(token: str) -> int | None:
    """The value of a plain non-negative decimal, or None if ``token`` is not one.

    At most MAX_DIGITS digits: Python refuses to convert a very long number,
    and no count of a trace needs more.
    """
    if token.isascii() and token.isdigit() and len(token) <= MAX_DIGITS:
        return int(token)
    return None


def _too_long(token: str) -> str:
    """Why ``token``, refused as a number, was refused, when its length is the reason."""
    if token.isascii() and token.isdigit() and len(token) > MAX_DIGITS:
        return f" of at most {MAX_DIGITS} digits (this one has {len(token):,})"
    return ""


def _quote(line: str) -> str:
    """``line`` for a message: repr, cut to QUOTE_LIMIT characters."""
    if len(line) <= QUOTE_LIMIT:
        return repr(line)
    return repr(line[:QUOTE_LIMIT]) + f"... ({len(line)} characters)"


def _split_lines(text: str) -> list[str]:
    """Lines as an editor counts them: split at \\n only (a \\r before it dropped).

    ``str.splitlines`` also splits at form feeds, vertical tabs and other
    separators, and its line numbers would then not be the editor's.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _parse_lines(lines: list[str], source: str, name: str) -> Trace:
    if len(lines) < len(HEADER_FIELDS):
        raise TraceFormatError(
            source,
            len(lines) + 1,
            f"file ends inside the header; expected {HEADER_FIELDS[len(lines)]} "
            f"(the header is {len(HEADER_FIELDS)} lines: {', '.join(HEADER_FIELDS)})",
        )
    header: list[int] = []
    for index, field_name in enumerate(HEADER_FIELDS):
        text = lines[index].strip()
        value = _parse_count(text)
        if value is None:
            raise TraceFormatError(
                source,
                index + 1,
                f"expected {field_name} as a non-negative integer{_too_long(text)}, "
                f"got {_quote(lines[index])}",
            )
        header.append(value)
    heap_hint, num_ids, num_ops, weight = header

    body = lines[len(HEADER_FIELDS) :]
    # Trailing blank lines are allowed.
    end = len(body)
    while end and not body[end - 1].strip():
        end -= 1
    first_op_line = len(HEADER_FIELDS) + 1
    kinds = {"a": "a", "f": "f", "r": "r"}  # maps to the interned kind strings
    fields_per_kind = _FIELDS_PER_KIND
    ops: list[Op] = []
    append = ops.append
    top_id = -1
    null_reallocs: list[int] = []  # indices of 'r -1 SIZE' ops
    for offset in range(end):
        line = body[offset]
        parts = line.split()
        kind = kinds.get(parts[0]) if parts else None
        if kind is None or len(parts) != fields_per_kind[kind]:
            raise TraceFormatError(
                source,
                first_op_line + offset,
                f"expected an op 'a ID SIZE', 'f ID' or 'r ID SIZE', got {_quote(line)}",
            )
        if kind != "a" and parts[1] == NULL_ID:
            # mdriver: free(NULL) does nothing; realloc(NULL, n) is malloc(n) of a
            # block of its own, whose id is given once every id is known.
            if kind == "f":
                continue
            block_id = -1
            null_reallocs.append(len(ops))
        else:
            parsed = _parse_count(parts[1])
            if parsed is None or parsed >= MAX_ID:
                raise TraceFormatError(
                    source,
                    first_op_line + offset,
                    f"expected an id in [0, {MAX_ID}), got {_quote(parts[1])}",
                )
            block_id = parsed
            if block_id > top_id:
                top_id = block_id
        if kind == "f":
            append(Op(kind, block_id, 0))
            continue
        size = _parse_count(parts[2])
        if size is None:
            raise TraceFormatError(
                source,
                first_op_line + offset,
                f"expected a size as a non-negative integer{_too_long(parts[2])}, "
                f"got {_quote(parts[2])}",
            )
        append(Op(kind, block_id, size))
    # mdriver's conventions: the header's counts are hints. The body decides;
    # a disagreement is reported, and the ids are as many as the body uses
    # (so a header claiming 10**9 ids allocates nothing for them).
    for index in null_reallocs:
        top_id += 1
        ops[index] = Op("r", top_id, ops[index].size)
    warnings = []
    used_ids = top_id + 1
    if used_ids != num_ids:
        warnings.append(f"header line 2 says {num_ids} ids; the ops use {used_ids}")
        num_ids = used_ids
    if len(ops) != num_ops and end != num_ops:
        warnings.append(f"header line 3 says {num_ops} ops; the file has {end}")
    return Trace(
        ops=ops,
        num_ids=num_ids,
        weight=weight,
        heap_hint=heap_hint,
        name=name,
        warnings=[f"{source}: warning: {w}" for w in warnings],
    )


def parse_trace(text: str, name: str = "<string>") -> Trace:
    """Parse the text of a ``.rep`` trace; ``name`` appears in error messages.

    Raises :class:`TraceFormatError` on the first fault, naming the line.
    """
    return _parse_lines(_split_lines(text), name, name)


def _trace_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".rep"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _read_text(stream: IO[bytes] | gzip.GzipFile, source: str) -> bytes:
    """All of ``stream``, read a chunk at a time and refused as soon as it cannot be a trace.

    A NUL byte is in no text file (and /dev/zero is nothing else), so it
    ends the read at the first chunk; past MAX_TRACE_BYTES the read ends
    too.  Either way no more than a chunk beyond the bound is held.
    """
    chunks: list[bytes] = []
    total = 0
    lines = 0
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        nul = chunk.find(0)
        if nul >= 0:
            lineno = lines + chunk.count(b"\n", 0, nul) + 1
            raise TraceFormatError(source, lineno, "expected text, got a NUL byte")
        total += len(chunk)
        if total > MAX_TRACE_BYTES:
            raise TraceFormatError(
                source,
                0,
                f"more than {MAX_TRACE_BYTES >> 20} MiB of text (uncompressed): not read "
                "further; a trace this large is more likely a wrong file",
            )
        lines += chunk.count(b"\n")
        chunks.append(chunk)


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate a ``.rep`` file, plain or gzip-compressed.

    The returned trace's ``name`` is the file name without ``.rep``/``.gz``.
    Raises :class:`TraceFormatError` for bad contents (including text that is
    not ASCII or a damaged gzip stream) and ``OSError`` when the file cannot
    be read.
    """
    file_path = Path(path)
    source = str(file_path)
    with open(file_path, "rb") as f:
        # peek, not read and seek: a pipe (``<(zcat t.rep.gz)``) cannot seek.
        if f.peek(2)[:2] == GZIP_MAGIC:
            try:
                with gzip.GzipFile(fileobj=f) as gz:
                    raw = _read_text(gz, source)
            except (OSError, EOFError, zlib.error) as exc:
                raise TraceFormatError(source, 0, f"expected a gzip stream: {exc}") from None
        elif source.endswith(".gz"):
            raise TraceFormatError(source, 0, "expected a gzip stream (name ends in .gz)")
        else:
            raw = _read_text(f, source)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise TraceFormatError(
            source, lineno, f"expected ASCII text, got byte {raw[exc.start]:#04x}"
        ) from None
    return _parse_lines(_split_lines(text), source, _trace_name(file_path))


def _format_ops(ops: Iterable[Op]) -> Iterable[str]:
    for kind, block_id, size in ops:
        if kind == "f":
            yield f"f {block_id}\n"
        else:
            yield f"{kind} {block_id} {size}\n"


def write_trace(trace: Trace, path: str | os.PathLike[str]) -> None:
    """Write ``trace`` as a ``.rep`` file, gzip-compressed if ``path`` ends in ``.gz``.

    The trace is validated first (``ValueError`` names the bad op), so
    :func:`read_trace` reads back an equal trace.  The gzip header carries no
    time stamp, so equal traces give equal files. The file is written whole
    or not at all (``files.replacing``): a failed write leaves the old one.
    """
    trace.validate()
    header = f"{trace.heap_hint}\n{trace.num_ids}\n{len(trace.ops)}\n{trace.weight}\n"
    data = (header + "".join(_format_ops(trace.ops))).encode("ascii")
    compressed = str(path).endswith(".gz")
    with replacing(path) as temporary, open(temporary, "wb") as raw_file:
        if compressed:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw_file, mtime=0) as gz_file:
                gz_file.write(data)
        else:
            raw_file.write(data)
