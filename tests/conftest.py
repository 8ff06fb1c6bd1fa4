"""Shared fixtures: heaps of every policy, closed after each test.

Heap tests take the ``make_heap`` fixture, which is parametrized over the
policies the engine lists in ``pyalloc.heap.POLICIES``; a test that uses it is
skipped while the engine module cannot be imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from heap_model import heap_policies
from hypothesis import HealthCheck, settings

HEAP_POLICIES = heap_policies()

# Property tests replay the same examples on every run: a failure is a bug to
# fix, never a flake. Set HYPOTHESIS_PROFILE=explore to search further.
settings.register_profile(
    "repeatable",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

DEFAULT_CAPACITY = 8 << 20

HeapFactory = Callable[..., Any]


@pytest.fixture(params=HEAP_POLICIES)
def policy(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=[True, False], ids=["cache", "nocache"])
def cache(request: pytest.FixtureRequest) -> bool:
    """Heaps are tested with and without the cache of freed small blocks."""
    enabled: bool = request.param
    return enabled


@pytest.fixture
def make_heap(policy: str, cache: bool) -> Iterator[HeapFactory]:
    """Build heaps of the current policy; every heap is closed at teardown."""
    heap_module = pytest.importorskip("pyalloc.heap")
    made: list[Any] = []

    def make(capacity: int = DEFAULT_CAPACITY, **options: Any) -> Any:
        options.setdefault("policy", policy)
        options.setdefault("cache", cache)
        heap = heap_module.Heap(capacity, **options)
        made.append(heap)
        return heap

    yield make
    for heap in made:
        heap.close()


@pytest.fixture
def heap(make_heap: HeapFactory) -> Any:
    return make_heap()
