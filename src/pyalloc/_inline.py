"""Writes ``_accessors.pxd``: the block format's accessors as inline C functions.

``layout.py`` is the one place where each rule of the block format is
written (``encode``, ``decode``, ``mangle``, ...). Compiled, a call from
another engine module to a function of ``layout`` goes through a pointer
that the C compiler cannot inline, and the accessors are on every path of
malloc and free. So the build copies their bodies, as they are in
``layout.py``, into ``_accessors.pxd`` as ``cdef inline`` functions with
the C types ``layout.pxd`` declares for them; the engine modules cimport
them from there, and gcc inlines them. Interpreted, the same modules import
them from ``layout`` (``if not cython.compiled``), so both modes run the one
spelling of each rule.

``setup.py`` calls :func:`write` before Cython runs; the file is not kept in
the repository. This module imports nothing of the package.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from typing import Final

ACCESSORS: Final = (
    "bit",
    "bit_length",
    "lowest_bit",
    "block_size_for",
    "tag_of",
    "encode",
    "decode",
    "free_word",
    "allocated_body",
    "stored_size",
    "block_size",
    "is_allocated",
    "prev_is_allocated",
    "slack_of",
    "mangle",
)
"""layout.py's functions copied inline, in an order where each follows those it calls."""

TARGET: Final = "_accessors.pxd"

_LOCALS = re.compile(r"@cython\.locals\((?P<names>.*)\)\s*$")
_CPDEF = re.compile(r"cpdef (?P<result>\w+) (?P<name>\w+)\((?P<args>.*)\) noexcept\s*$")
_CONSTANTS = re.compile(r"cdef (?:i64|u64) (?P<names>[\w, ]+)$")


def _bodies(source: str) -> dict[str, str]:
    """Each accessor's body in ``source`` (layout.py), its docstring left out."""
    lines = source.splitlines()
    bodies = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name in ACCESSORS:
            statements = node.body
            first = statements[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                statements = statements[1:]
            text = "\n".join(lines[statements[0].lineno - 1 : node.end_lineno])
            bodies[node.name] = textwrap.dedent(text)
    return bodies


def _signatures(pxd: str) -> tuple[dict[str, tuple[str, str, list[str]]], list[str]]:
    """From layout.pxd: (result type, arguments, typed locals) of each accessor,
    and the names of the C constants."""
    signatures = {}
    constants: list[str] = []
    typed_locals: list[str] = []
    for line in pxd.splitlines():
        if match := _LOCALS.match(line):
            typed_locals = [pair.strip() for pair in match["names"].split(",")]
            continue
        if (match := _CPDEF.match(line)) and match["name"] in ACCESSORS:
            signatures[match["name"]] = (match["result"], match["args"], typed_locals)
        elif match := _CONSTANTS.match(line):
            constants.extend(name.strip() for name in match["names"].split(","))
        typed_locals = []
    return signatures, constants


def render(layout_py: str, layout_pxd: str) -> str:
    """The text of ``_accessors.pxd`` for these two sources."""
    bodies = _bodies(layout_py)
    signatures, constants = _signatures(layout_pxd)
    missing = [name for name in ACCESSORS if name not in bodies or name not in signatures]
    if missing:
        raise ValueError(f"layout.py and layout.pxd do not both define {', '.join(missing)}")
    out = [
        "# Written by setup.py from layout.py and layout.py's C types in layout.pxd",
        "# (pyalloc/_inline.py): edit those, not this file.",
        "cimport cython",
        "from pyalloc.layout cimport (",
        textwrap.fill(
            ", ".join([*constants, "__builtin_clzll", "__builtin_ctzll", "i64", "u64"]) + ",",
            width=96,
            initial_indent="    ",
            subsequent_indent="    ",
        ),
        ")",
    ]
    for name in ACCESSORS:
        result, args, typed_locals = signatures[name]
        out += ["", "", f"cdef inline {result} {name}({args}) noexcept:"]
        for pair in typed_locals:
            local, _, ctype = pair.partition("=")
            out.append(f"    cdef {ctype.strip()} {local.strip()}")
        out.append(textwrap.indent(bodies[name], "    "))
    return "\n".join(out) + "\n"


def write(package_dir: str) -> bool:
    """Write ``_accessors.pxd`` in ``package_dir`` if its text changed; True if it did."""
    with open(os.path.join(package_dir, "layout.py")) as f:
        layout_py = f.read()
    with open(os.path.join(package_dir, "layout.pxd")) as f:
        layout_pxd = f.read()
    text = render(layout_py, layout_pxd)
    path = os.path.join(package_dir, TARGET)
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)
    return True
