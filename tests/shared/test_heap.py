"""The start-up heap freeze: objects alive at start-up leave the collector's reach; thawing gives them back, and a
model evicted from a worker's cache thaws them so its reference cycles can still be freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.runtime.heap import freeze_startup_heap, thaw
from worker.runtime import ModelCache


class Cyclic:
    """An object in a reference cycle: only the cyclic collector frees it."""

    num_classes = 1

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # never leave the test session's objects frozen


def test_freeze_then_thaw() -> None:
    """Everything alive is frozen (and so never collected); thaw returns it to the collector."""
    frozen = freeze_startup_heap()
    assert frozen > 0 and gc.get_freeze_count() > 0  # (frozen objects freed by reference counting leave the count)
    thaw()
    assert gc.get_freeze_count() == 0


def test_frozen_cycle_is_freed_once_its_model_is_evicted() -> None:
    """A cached model frozen at start-up stays unreachable for the collector until eviction thaws the heap."""
    cache = ModelCache(1)
    cache.get(("a",), Cyclic)
    ref = weakref.ref(cache.get(("a",), Cyclic))
    freeze_startup_heap()
    cache.get(("b",), Cyclic)  # evicts "a": its cycle is garbage now
    gc.collect()
    assert ref() is None and gc.get_freeze_count() == 0
