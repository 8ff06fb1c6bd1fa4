"""Which engine runs: the compiled extensions or the same ``.py`` files interpreted.

The engine modules below are ordinary Python. When the package was installed
with a C compiler, Cython compiled each of them into an extension module
that sits beside its ``.py`` file, and Python's import prefers the
extension. This module decides, once and before any engine module is
imported, whether that preference stands:

- ``PYALLOC_PURE_PYTHON=1`` in the environment: interpreted;
- an extension is missing for any engine module: interpreted (all or none,
  since the modules share C-level declarations);
- an extension was built from other sources than the ``.py`` and ``.pxd``
  files now beside it (an edited checkout): interpreted, with a
  ``StaleEngineWarning`` naming the module and the command that rebuilds.

To run interpreted it puts a finder first on ``sys.meta_path`` that loads
the engine modules from their ``.py`` files. The build records the digest
of each module's sources in ``_engine_build.json`` beside them.

This file is imported by ``setup.py`` as well, so it imports nothing of the
package.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Final

ENGINE_MODULES: Final = (
    "pyalloc.layout",
    "pyalloc.control",
    "pyalloc.journal",
    "pyalloc.lock",
    "pyalloc.policies.base",
    "pyalloc.policies.segregated",
    "pyalloc.policies.tlsf",
    "pyalloc.policies.fits",
    "pyalloc.policies.implicit",
    "pyalloc.allocator",
    "pyalloc.slab",
    "pyalloc.heap",
    "pyalloc.buddy",
    "pyalloc.pool",
)
DIGESTS_FILE: Final = "_engine_build.json"
PURE_ENV: Final = "PYALLOC_PURE_PYTHON"


class StaleEngineWarning(UserWarning):
    """The compiled engine is older than its sources; the interpreted one runs."""


def source_digest(stem: str) -> str:
    """Digest of a module's ``.py`` and, if present, ``.pxd`` (``stem`` has no suffix)."""
    h = hashlib.sha256()
    for suffix in (".py", ".pxd"):
        try:
            with open(stem + suffix, "rb") as f:
                h.update(suffix.encode() + b"\0" + f.read())
        except FileNotFoundError:
            pass
    return h.hexdigest()


def _stem(package_dir: str, name: str) -> str:
    return os.path.join(package_dir, *name.split(".")[1:])


def _extension_of(stem: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(stem + suffix):
            return stem + suffix
    return None


def choose(package_dir: str) -> tuple[bool, str]:
    """(compiled, why) for the package installed at ``package_dir``."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return False, f"{PURE_ENV} is set"
    return built(package_dir, warn=True)


def built(package_dir: str, warn: bool = False) -> tuple[bool, str]:
    """(True, "compiled") if every engine module has an extension built from its sources."""
    stems = {name: _stem(package_dir, name) for name in ENGINE_MODULES}
    if not all(_extension_of(stem) for stem in stems.values()):
        return False, "the engine was not compiled"
    try:
        with open(os.path.join(package_dir, DIGESTS_FILE)) as f:
            built = json.load(f)
    except (OSError, ValueError):
        built = {}
    stale = [name for name, stem in stems.items() if built.get(name) != source_digest(stem)]
    if stale and warn:
        warnings.warn(
            f"the compiled engine is older than {stale[0]}'s source; running interpreted "
            "(rebuild with ./dev build, or pip install -e .)",
            StaleEngineWarning,
            stacklevel=4,
        )
    if stale:
        return False, "the compiled engine is older than its sources"
    return True, "compiled"


class _SourceFinder:
    """Loads the engine modules from their ``.py`` files, passing over the extensions."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for directory in path:
            source = os.path.join(directory, leaf + ".py")
            if os.path.exists(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def install(package_dir: str) -> tuple[bool, str]:
    """Decide the mode; when interpreted, make the imports that follow load ``.py`` files."""
    compiled, why = choose(package_dir)
    if not compiled and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(ENGINE_MODULES))
    return compiled, why
