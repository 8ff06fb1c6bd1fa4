"""Reading and writing allocation traces in the malloc-lab ``.rep`` format.

File layout
-----------

A ``.rep`` file is plain ASCII text, one item a line (``\\n`` or ``\\r\\n``)::

    line 1   heap_hint     suggested heap size in bytes (informational)
    line 2   num_ids       number of distinct block ids; every id is in [0, num_ids)
    line 3   num_ops       number of op lines that follow; must match exactly
    line 4   weight        how much the trace counts in an average (>= 0)
    line 5.. one op a line:
               a ID SIZE   allocate SIZE bytes and call the block ID
               f ID        free block ID
               r ID SIZE   reallocate block ID to SIZE bytes

Every number is a non-negative decimal integer written with ASCII digits only
(no sign, no underscores).  Fields are separated by any run of blanks.  Blank
lines are accepted only after the last op.  A file whose name ends in ``.gz``
(or that starts with the gzip magic bytes) is read through gzip.

Invariants of a ``Trace`` returned by :func:`read_trace` / :func:`parse_trace`::

    len(trace.ops) == num_ops from the header
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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = ["Op", "Trace", "TraceFormatError", "parse_trace", "read_trace", "write_trace"]

HEADER_FIELDS = ("heap_hint", "num_ids", "num_ops", "weight")
OP_KINDS = ("a", "f", "r")
GZIP_MAGIC = b"\x1f\x8b"

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
    """A sequence of ops over ``num_ids`` block ids, with the header's metadata."""

    ops: list[Op]
    num_ids: int
    weight: int = 1
    heap_hint: int = 0
    name: str = ""

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
    """The value of a plain non-negative decimal, or None if ``token`` is not one."""
    if token.isascii() and token.isdigit():
        return int(token)
    return None


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
                f"expected {field_name} as a non-negative integer, got {lines[index]!r}",
            )
        header.append(value)
    heap_hint, num_ids, num_ops, weight = header

    body = lines[len(HEADER_FIELDS) :]
    # Trailing blank lines are allowed; anything else after the last op is not.
    end = len(body)
    while end and not body[end - 1].strip():
        end -= 1
    first_op_line = len(HEADER_FIELDS) + 1
    kinds = {"a": "a", "f": "f", "r": "r"}  # maps to the interned kind strings
    fields_per_kind = _FIELDS_PER_KIND
    ops: list[Op] = []
    append = ops.append
    for offset in range(min(end, num_ops)):
        parts = body[offset].split()
        kind = kinds.get(parts[0]) if parts else None
        if kind is None or len(parts) != fields_per_kind[kind]:
            raise TraceFormatError(
                source,
                first_op_line + offset,
                f"expected an op 'a ID SIZE', 'f ID' or 'r ID SIZE', got {body[offset]!r}",
            )
        block_id = _parse_count(parts[1])
        if block_id is None or block_id >= num_ids:
            raise TraceFormatError(
                source,
                first_op_line + offset,
                f"expected an id in [0, {num_ids}) (header line 2), got {parts[1]!r}",
            )
        if kind == "f":
            append(Op(kind, block_id, 0))
            continue
        size = _parse_count(parts[2])
        if size is None:
            raise TraceFormatError(
                source,
                first_op_line + offset,
                f"expected a size as a non-negative integer, got {parts[2]!r}",
            )
        append(Op(kind, block_id, size))
    if end < num_ops:
        lineno = first_op_line + end
        raise TraceFormatError(
            source,
            lineno,
            f"expected op {end + 1} of {num_ops} (header line 3), but the file ends",
        )
    if end > num_ops:
        lineno = first_op_line + num_ops
        raise TraceFormatError(
            source,
            lineno,
            f"expected the end of the file after {num_ops} ops (header line 3), "
            f"got {body[num_ops]!r}",
        )
    return Trace(ops=ops, num_ids=num_ids, weight=weight, heap_hint=heap_hint, name=name)


def parse_trace(text: str, name: str = "<string>") -> Trace:
    """Parse the text of a ``.rep`` trace; ``name`` appears in error messages.

    Raises :class:`TraceFormatError` on the first fault, naming the line.
    """
    return _parse_lines(text.splitlines(), name, name)


def _trace_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".rep"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate a ``.rep`` file, plain or gzip-compressed.

    The returned trace's ``name`` is the file name without ``.rep``/``.gz``.
    Raises :class:`TraceFormatError` for bad contents (including text that is
    not ASCII or a damaged gzip stream) and ``OSError`` when the file cannot
    be read.
    """
    file_path = Path(path)
    source = str(file_path)
    raw = file_path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise TraceFormatError(source, 0, f"expected a gzip stream: {exc}") from None
    elif source.endswith(".gz"):
        raise TraceFormatError(source, 0, "expected a gzip stream (name ends in .gz)")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise TraceFormatError(
            source, lineno, f"expected ASCII text, got byte {raw[exc.start]:#04x}"
        ) from None
    return _parse_lines(text.splitlines(), source, _trace_name(file_path))


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
    time stamp, so equal traces give equal files.
    """
    trace.validate()
    header = f"{trace.heap_hint}\n{trace.num_ids}\n{len(trace.ops)}\n{trace.weight}\n"
    data = (header + "".join(_format_ops(trace.ops))).encode("ascii")
    file_path = Path(path)
    if str(file_path).endswith(".gz"):
        with open(file_path, "wb") as raw_file:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw_file, mtime=0) as gz_file:
                gz_file.write(data)
    else:
        file_path.write_bytes(data)
