"""Shared fixtures: heaps of every policy, closed after each test.

Heap tests take the ``make_heap`` fixture, which is parametrized over every
allocator ``pyalloc.allocators.ALL_POLICIES`` names: the engine's policies
(``pyalloc.heap.POLICIES``) and the buddy system; a test that uses it is
skipped while the engine module cannot be imported.

Two markers narrow a test to the allocators it applies to:
``engine_format`` (it reads or forges the engine's block format: footers,
prev-allocated bits, where a block is placed) skips the buddy system, and
``free_list_links`` (it corrupts free-list links) skips policies that have
none. The buddy system has no cache of freed blocks: it runs once, uncached.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from heap_model import build_heap, has_free_list_links, heap_policies
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engine_format: relies on the engine's block format; skipped for buddy"
    )
    config.addinivalue_line(
        "markers", "free_list_links: corrupts free-list links; skipped for policies without them"
    )


@pytest.fixture(params=HEAP_POLICIES)
def policy(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "buddy" and request.node.get_closest_marker("engine_format"):
        pytest.skip("the buddy system has its own block format")
    if request.node.get_closest_marker("free_list_links") and not has_free_list_links(name):
        pytest.skip(f"{name} keeps no free-list links")
    return name


@pytest.fixture(params=[True, False], ids=["cache", "nocache"])
def cache(request: pytest.FixtureRequest) -> bool:
    """Heaps are tested with and without the cache of freed small blocks."""
    enabled: bool = request.param
    return enabled


@pytest.fixture
def make_heap(policy: str, cache: bool) -> Iterator[HeapFactory]:
    """Build heaps of the current policy; every heap is closed at teardown."""
    if policy == "buddy" and cache:
        pytest.skip("the buddy system has no cache of freed blocks")
    made: list[Any] = []

    def make(capacity: int = DEFAULT_CAPACITY, **options: Any) -> Any:
        options.setdefault("cache", cache)
        heap = build_heap(options.pop("policy", policy), capacity, **options)
        made.append(heap)
        return heap

    yield make
    for heap in made:
        heap.close()


@pytest.fixture
def heap(make_heap: HeapFactory) -> Any:
    return make_heap()
