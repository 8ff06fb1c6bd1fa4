"""Free-block indexes that plug into the engine (see ``base.py``)."""

from __future__ import annotations

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


def policy_class(name: str) -> type[FreeIndex]:
    if not isinstance(name, str):
        raise TypeError(f"policy must be a str, not {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None


def policy_by_id(policy_id: int) -> type[FreeIndex]:
    for cls in _REGISTRY.values():
        if cls.policy_id == policy_id:
            return cls
    raise ValueError(f"the heap uses policy number {policy_id}, which this version does not know")


__all__ = ["POLICIES", "FreeIndex", "policy_by_id", "policy_class"]
