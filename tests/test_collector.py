"""The worker's garbage-collection policy (dataplane/collector.py): freeze what is alive
at each tick so automatic collections skip the connection table, and thaw on schedule so
cyclic garbage among frozen objects is still reclaimed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from localdirector.dataplane.collector import FrozenCollector


class Node:
    """A cyclic structure: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_tick_freezes_what_is_alive_and_automatic_collections_skip_it() -> None:
    collector = FrozenCollector(now=0.0, thaw_every=600.0)
    table = [Node() for _ in range(1000)]
    collector.tick(0.5)
    assert gc.get_freeze_count() >= len(table)
    # What a collection traverses: the generations, which no longer hold the table.
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(node) in tracked for node in table)
    gc.collect()
    assert gc.get_freeze_count() >= len(table)


def test_cyclic_garbage_frozen_with_the_rest_is_reclaimed_at_the_thaw() -> None:
    collector = FrozenCollector(now=0.0, thaw_every=600.0)
    node = Node()
    alive = weakref.ref(node)
    collector.tick(0.5)
    del node
    gc.collect()
    assert alive() is not None        # frozen: the collector does not look at it
    collector.tick(300.0)
    assert alive() is not None and collector.thaws == 0
    collector.tick(600.0)             # thaw time: unfreeze, collect, freeze again
    assert alive() is None and collector.thaws == 1


def test_objects_dropped_while_frozen_still_die_by_reference_counting() -> None:
    collector = FrozenCollector(now=0.0)
    holder = {"conn": object.__new__(type("Conn", (), {"__slots__": ("a", "__weakref__")}))}
    alive = weakref.ref(holder["conn"])
    collector.tick(0.5)
    del holder["conn"]
    assert alive() is None
