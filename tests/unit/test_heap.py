"""settle_heap: the startup heap leaves the collector's sight, young passes get rarer, cycles still go."""

from __future__ import annotations

import gc
import weakref

from metaproxy.heap import settle_heap


class _Node:
    pass


def test_settle_heap_freezes_startup_objects_and_still_collects_new_cycles() -> None:
    before = gc.get_threshold()
    try:
        settle_heap(young_threshold=12_345)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == 12_345
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle made after the freeze: still the collector's business
        probe = weakref.ref(a)
        del a, b
        gc.collect()
        assert probe() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
