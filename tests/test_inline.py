"""The build's copy of layout.py's accessors as inline C functions (_inline.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pyalloc import _inline

PACKAGE = Path(_inline.__file__).resolve().parent


def sources() -> dict[str, tuple[str, str]]:
    return _inline.read_sources(str(PACKAGE))


def names() -> list[str]:
    return [name for _, functions in _inline.ACCESSORS for name in functions]


def functions(text: str) -> dict[str, ast.FunctionDef]:
    """The functions of a rendered _accessors.pxd, parsed as Python after
    turning each ``cdef inline T name(...)`` line into a ``def`` and dropping
    the ``cdef`` declarations and cimports."""
    python = []
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("cdef inline "):
            name = line.split("(")[0].split()[-1]
            python.append(f"def {name}():")
        elif stripped.startswith(("cdef ", "cimport ", "from ", "#")) or not stripped:
            continue
        elif line.startswith((" ", ")")) and not python:
            continue  # the cimport list
        else:
            python.append(line)
    return {
        node.name: node
        for node in ast.parse("\n".join(python)).body
        if isinstance(node, ast.FunctionDef)
    }


def body_dump(node: ast.FunctionDef) -> list[str]:
    statements = node.body
    first = statements[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        statements = statements[1:]
    return [ast.dump(statement) for statement in statements]


def test_every_accessor_is_rendered_with_its_modules_body() -> None:
    texts = sources()
    rendered = functions(_inline.render(texts))
    assert sorted(rendered) == sorted(names())
    for module, functions_of_module in _inline.ACCESSORS:
        originals = {
            node.name: node
            for node in ast.parse(texts[module][0]).body
            if isinstance(node, ast.FunctionDef)
        }
        for name in functions_of_module:
            assert body_dump(rendered[name]) == body_dump(originals[name]), name


def test_signatures_and_typed_locals_come_from_layout_pxd() -> None:
    text = _inline.render(sources())
    assert "cdef inline i64 decode(u64 word, u64 offset, u64 secret, u64 key) noexcept:" in text
    decode = text.split("cdef inline i64 decode(")[1].split("\n\n")[0]
    assert "    cdef u64 body" in decode
    encode = text.split("cdef inline u64 encode(")[1].split("\n\n")[0]
    assert "    cdef u64 mixed" in encode


def test_an_accessor_missing_from_either_source_is_refused() -> None:
    texts = sources()
    layout_py, layout_pxd = texts["layout"]
    texts["layout"] = (layout_py, layout_pxd.replace("cpdef u64 mangle(", "cpdef u64 unmangled("))
    with pytest.raises(ValueError, match="mangle"):
        _inline.render(texts)
    texts = sources()
    slab_py, slab_pxd = texts["slab"]
    texts["slab"] = (slab_py.replace("def slots_of(", "def slot_count("), slab_pxd)
    with pytest.raises(ValueError, match="slots_of"):
        _inline.render(texts)


def test_write_rewrites_only_when_the_text_changes(tmp_path: Path) -> None:
    for module, _ in _inline.ACCESSORS:
        for suffix in (".py", ".pxd"):
            (tmp_path / (module + suffix)).write_text((PACKAGE / (module + suffix)).read_text())
    assert _inline.write(str(tmp_path))
    first = (tmp_path / _inline.TARGET).read_text()
    assert not _inline.write(str(tmp_path))
    (tmp_path / "layout.py").write_text(
        (PACKAGE / "layout.py").read_text().replace("return link ^ key", "return key ^ link")
    )
    assert _inline.write(str(tmp_path))
    assert (tmp_path / _inline.TARGET).read_text() != first


def test_the_built_file_matches_the_sources() -> None:
    built = PACKAGE / _inline.TARGET
    if not built.exists():
        pytest.skip("no compiled build here: setup.py writes the file when it compiles the engine")
    assert built.read_text() == _inline.render(sources())
