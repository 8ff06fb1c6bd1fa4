"""Shared fixtures: heaps of every policy, closed after each test.

Heap tests take the ``make_heap`` fixture, which is parametrized over every
allocator ``pyalloc.allocators.ALL_POLICIES`` names: the engine's policies
(``pyalloc.heap.POLICIES``) and the buddy system.

Two markers narrow a test to the allocators it applies to:
``engine_format`` (it reads or forges the engine's block format: footers,
prev-allocated bits, where a block is placed) leaves the buddy system out, and
``free_list_links`` (it corrupts free-list links) leaves out policies that
have none. The engine's policies run with slabs off (``small=False``): they
differ in how they place blocks with headers. ``default`` is the default
``Heap``, whose small objects have no header: tests of the block format
leave it out too, and so do tests marked ``block_headers`` (they forge or
read the header of a small block). The buddy system has no cache of freed blocks: it runs once,
uncached. Such combinations are not generated at all (no skips).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from heap_model import SLABS, build_heap, has_free_list_links, heap_policies
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
        "markers", "block_headers: forges or reads a small block's header; skipped for slabs"
    )
    config.addinivalue_line(
        "markers", "free_list_links: corrupts free-list links; skipped for policies without them"
    )


def applies(policy: str, node: Any) -> bool:
    """Whether a test marked as ``node`` is can run on ``policy`` at all."""
    if policy in ("buddy", SLABS) and node.get_closest_marker("engine_format"):
        return False  # the buddy system has its own block format; slab objects have none
    if policy == SLABS and node.get_closest_marker("block_headers"):
        return False
    if node.get_closest_marker("free_list_links") and not has_free_list_links(policy):
        return False
    return True


def parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the test parametrizes ``name`` itself."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``policy`` (and ``cache``) over the combinations that exist.

    A combination that cannot exist (the buddy system with a cache, a test of
    free-list links on a policy without them) is not generated, rather than
    generated and skipped.
    """
    if "policy" not in metafunc.fixturenames or parametrizes(metafunc, "policy"):
        return
    policies = [p for p in HEAP_POLICIES if applies(p, metafunc.definition)]
    if "cache" in metafunc.fixturenames:
        combos = [(p, c) for p in policies for c in (True, False) if not (p == "buddy" and c)]
        ids = [f"{p}-{'cache' if c else 'nocache'}" for p, c in combos]
        metafunc.parametrize(("policy", "cache"), combos, ids=ids)
    else:
        metafunc.parametrize("policy", policies)


@pytest.fixture
def make_heap(policy: str, cache: bool) -> Iterator[HeapFactory]:
    """Build heaps of the current policy; every heap is closed at teardown."""
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
