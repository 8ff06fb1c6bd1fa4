"""Build the compiled engine: Cython compiles the engine's own ``.py`` files.

The engine modules (``ENGINE_MODULES`` in ``src/pyalloc/_engine.py``) are
plain Python; the ``.pxd`` file beside each gives Cython the C types. When
Cython or a C compiler is missing, or ``PYALLOC_PURE_PYTHON=1`` is set, no
extension is built and the same files run interpreted. A failed compile is a
warning, not a failed install: the package works either way, and
``pyalloc.COMPILED`` says which engine runs.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "pyalloc"))
import _inline  # noqa: E402
from _engine import ENGINE_MODULES, source_digest  # noqa: E402

sys.path.pop(0)

DIRECTIVES = {
    "language_level": 3,
    "infer_types": True,  # locals take the C type of what is assigned to them
    "annotation_typing": False,  # the .pxd files give the C types; annotations are for mypy
    "boundscheck": False,  # every index into the region is range-checked by the engine
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
    # ``if cython.compiled: return ...`` leaves the interpreted return behind it.
    "warn.unreachable": False,
}

# Control words are u64 and offsets i64 >= 0: comparing them is meant
# unsigned, as the interpreted engine compares them. Cython's functions that
# return a C tuple leave it unset on their error path, which the caller never
# reads (it sees the exception first).
C_FLAGS = [
    "-O2",
    "-Wno-unused-function",
    "-Wno-unreachable-code",
    "-Wno-sign-compare",
    "-Wno-maybe-uninitialized",
]


def extensions() -> list:
    if os.environ.get("PYALLOC_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("pyalloc: Cython is not installed; the engine will run interpreted", file=sys.stderr)
        return []
    from setuptools import Extension

    try:  # the accessors of layout.py and slab.py as inline C functions (_inline.py)
        _inline.write(os.path.join("src", "pyalloc"))
    except (OSError, ValueError) as e:
        print(f"pyalloc: the engine will run interpreted: {e}", file=sys.stderr)
        return []
    modules = [
        Extension(
            name,
            [os.path.join("src", *name.split(".")) + ".py"],
            extra_compile_args=C_FLAGS,
        )
        for name in ENGINE_MODULES
    ]
    return cythonize(
        modules, compiler_directives=DIRECTIVES, quiet=True, nthreads=os.cpu_count() or 1
    )


class OptionalBuildExt(build_ext):
    """Build the extensions if a compiler can; otherwise leave the engine interpreted.

    Also writes ``_engine_build.json`` beside them: the digest of each
    module's source at the time of the build, which the import compares so
    that an extension older than its ``.py`` is never used.
    """

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:  # one compiler per CPU: the modules do not depend on each other
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, or a compile error: run interpreted
            print(
                f"pyalloc: the engine was not compiled ({e}); it will run interpreted",
                file=sys.stderr,
            )
            return
        self._write_digests()

    def _write_digests(self) -> None:
        import json

        digests = {
            name: source_digest(os.path.join("src", *name.split("."))) for name in ENGINE_MODULES
        }
        directory = os.path.join("src" if self.inplace else self.build_lib, "pyalloc")
        with open(os.path.join(directory, "_engine_build.json"), "w") as f:
            json.dump(digests, f, indent=1, sort_keys=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
