"""Workloads recorded from real programs, shipped with the package.

Each ``*.rep.gz`` file beside this module is one program's malloc, calloc,
realloc and free calls, recorded with :func:`pyalloc.trace.record.record`
and converted to the malloc-lab ``.rep`` format; ``README.md`` says which
program, how it was run, when and with which versions, and
:mod:`pyalloc.workloads.recipes` records them again.  These are the default
workloads of ``pyalloc bench``.  The classic malloc-lab traces are not
shipped here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundled_traces"]

_DIRECTORY = Path(__file__).resolve().parent


def bundled_traces() -> list[Path]:
    """The bundled ``.rep.gz`` traces, sorted by name."""
    return sorted(_DIRECTORY.glob("*.rep.gz"))
