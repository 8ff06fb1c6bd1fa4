"""Free-block indexes that plug into the engine (see ``base.py``).

Besides the built-in ones, a policy may be a Python class of the caller's:
``"module:Class"`` or ``"path/to/file.py:Class"`` names a ``FreeIndex``
subclass, loaded on first use (``load_policy``) and usable on private heaps:
a shared heap stores its policy's id in the region for every process to
find, which only the built-in ones have.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Final

from .base import FreeIndex
from .fits import BestFit, FirstFit, NextFit
from .implicit import Implicit
from .segregated import Segregated
from .tlsf import TLSF

# In the order of the textbook: from no index at all to O(1) good fit.
_REGISTRY: dict[str, type[FreeIndex]] = {
    cls.name: cls for cls in (Implicit, FirstFit, NextFit, BestFit, Segregated, TLSF)
}
assert len({cls.policy_id for cls in _REGISTRY.values()}) == len(_REGISTRY)

POLICIES: tuple[str, ...] = tuple(_REGISTRY)


PLUGIN_ID_BASE: Final = 1000  # ids given to loaded policies, never stored in a shared heap
_PLUGINS: dict[str, type[FreeIndex]] = {}


def is_builtin(cls: type[FreeIndex]) -> bool:
    return cls.policy_id < PLUGIN_ID_BASE


def load_policy(spec: str) -> type[FreeIndex]:
    """The ``FreeIndex`` subclass ``spec`` names: "module:Class" or "file.py:Class".

    ValueError, in one line, when it cannot be imported or is not a policy.
    """
    known = _PLUGINS.get(spec)
    if known is not None:
        return known
    where, _, class_name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(
                f"pyalloc_policy_{len(_PLUGINS)}", where
            )
            if module_spec is None or module_spec.loader is None or not os.path.isfile(where):
                raise ImportError(f"no such file {where!r}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:  # the user's module: any failure is reported, not raised through
        raise ValueError(f"policy {spec!r}: cannot import {where!r}: {e}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, FreeIndex)) or cls is FreeIndex:
        raise ValueError(
            f"policy {spec!r}: {class_name!r} is not a subclass of pyalloc.policies.base.FreeIndex"
        )
    cls.policy_id = PLUGIN_ID_BASE + len(_PLUGINS)
    if not cls.name:
        cls.name = spec
    _PLUGINS[spec] = cls
    return cls


def policy_class(name: str) -> type[FreeIndex]:
    if not isinstance(name, str):
        raise TypeError(f"policy must be a str, not {type(name).__name__}")
    if ":" in name:
        return load_policy(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; choose one of {', '.join(POLICIES)},"
            " or name a class of your own as module:Class"
        ) from None


def policy_by_id(policy_id: int) -> type[FreeIndex]:
    for cls in (*_REGISTRY.values(), *_PLUGINS.values()):
        if cls.policy_id == policy_id:
            return cls
    raise ValueError(f"the heap uses policy number {policy_id}, which this version does not know")


__all__ = ["POLICIES", "FreeIndex", "is_builtin", "load_policy", "policy_by_id", "policy_class"]
