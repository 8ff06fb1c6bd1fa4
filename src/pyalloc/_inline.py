"""Writes ``_accessors.pxd``: the block format's accessors as inline C functions.

``layout.py`` is the one place where each rule of the block format is
written (``encode``, ``decode``, ``mangle``, ...), and ``slab.py`` the one
place of the slab classes' arithmetic. Compiled, a call from another engine
module to a function of theirs goes through a pointer that the C compiler
cannot inline, and these are on every path of malloc and free. So the build
copies their bodies, as they are in the ``.py`` files, into
``_accessors.pxd`` as ``cdef inline`` functions with the C types their
``.pxd`` files declare; the engine modules cimport them from there, and gcc
inlines them. Interpreted, the same modules import them from ``layout`` and
``slab`` (``if not cython.compiled``), so both modes run the one spelling of
each rule.

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
    (
        "layout",
        (
            "bit",
            "bit_length",
            "lowest_bit",
            "block_size_for",
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
        ),
    ),
    ("slab", ("size_class", "class_size", "slots_of")),
)
"""(module, its functions copied inline), each function after those it calls."""

TARGET: Final = "_accessors.pxd"

_LOCALS = re.compile(r"@cython\.locals\((?P<names>.*)\)\s*$")
_CPDEF = re.compile(r"cpdef (?P<result>\w+) (?P<name>\w+)\((?P<args>.*)\) noexcept\s*$")
_CONSTANTS = re.compile(r"cdef (?:i64|u64|bytes) (?P<names>[\w, ]+)$")


def _bodies(source: str, names: tuple[str, ...]) -> dict[str, str]:
    """The body of each function of ``names`` in ``source``, its docstring left out."""
    lines = source.splitlines()
    bodies = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            statements = node.body
            first = statements[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                statements = statements[1:]
            text = "\n".join(lines[statements[0].lineno - 1 : node.end_lineno])
            bodies[node.name] = textwrap.dedent(text)
    return bodies


def _signatures(
    pxd: str, names: tuple[str, ...]
) -> tuple[dict[str, tuple[str, str, list[str]]], list[str]]:
    """From a module's .pxd: (result type, arguments, typed locals) of each
    function of ``names``, and the names of the module's C constants."""
    signatures = {}
    constants: list[str] = []
    typed_locals: list[str] = []
    for line in pxd.splitlines():
        if match := _LOCALS.match(line):
            typed_locals = [pair.strip() for pair in match["names"].split(",")]
            continue
        if (match := _CPDEF.match(line)) and match["name"] in names:
            signatures[match["name"]] = (match["result"], match["args"], typed_locals)
        elif match := _CONSTANTS.match(line):
            constants.extend(name.strip() for name in match["names"].split(","))
        typed_locals = []
    return signatures, constants


def _cimport(module: str, names: list[str]) -> list[str]:
    text = textwrap.fill(
        ", ".join(names) + ",", width=96, initial_indent="    ", subsequent_indent="    "
    )
    return [f"from pyalloc.{module} cimport (", text, ")"]


def render(sources: dict[str, tuple[str, str]]) -> str:
    """The text of ``_accessors.pxd`` for ``sources``: each module of
    ACCESSORS mapped to the text of its ``.py`` and its ``.pxd``."""
    out = [
        "# Written by setup.py (pyalloc/_inline.py) from the functions of layout.py and",
        "# slab.py named in _inline.ACCESSORS, with their C types from layout.pxd and",
        "# slab.pxd: edit those, not this file.",
        "cimport cython",
    ]
    functions: list[str] = []
    for module, names in ACCESSORS:
        py, pxd = sources[module]
        bodies = _bodies(py, names)
        signatures, constants = _signatures(pxd, names)
        missing = [name for name in names if name not in bodies or name not in signatures]
        if missing:
            raise ValueError(
                f"{module}.py and {module}.pxd do not both define {', '.join(missing)}"
            )
        # layout.pxd also declares the C types and the count-zeros builtins the bodies use
        extra = ["__builtin_clzll", "__builtin_ctzll", "i64", "u64"] if module == "layout" else []
        out += _cimport(module, constants + extra)
        for name in names:
            result, args, typed_locals = signatures[name]
            functions += ["", "", f"cdef inline {result} {name}({args}) noexcept:"]
            for pair in typed_locals:
                local, _, ctype = pair.partition("=")
                functions.append(f"    cdef {ctype.strip()} {local.strip()}")
            functions.append(textwrap.indent(bodies[name], "    "))
    return "\n".join(out + functions) + "\n"


def read_sources(package_dir: str) -> dict[str, tuple[str, str]]:
    """The ``.py`` and ``.pxd`` text of each module of ACCESSORS in ``package_dir``."""
    sources = {}
    for module, _ in ACCESSORS:
        texts = []
        for suffix in (".py", ".pxd"):
            with open(os.path.join(package_dir, module + suffix)) as f:
                texts.append(f.read())
        sources[module] = (texts[0], texts[1])
    return sources


def write(package_dir: str) -> bool:
    """Write ``_accessors.pxd`` in ``package_dir`` if its text changed; True if it did."""
    text = render(read_sources(package_dir))
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
