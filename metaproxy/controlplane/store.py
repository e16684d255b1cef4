"""The route configurations being served, replaced whole, with change notification.

The loader builds a new dict of resources and calls :meth:`ResourceStore.set`;
each xDS stream registers a callback and re-reads :meth:`snapshot` when told.
A snapshot is an immutable mapping, so a stream never sees half an update.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.route.v3.route_pb2 import RouteConfiguration

from metaproxy.xds.resources import resource_version


@dataclass(frozen=True)
class Resource:
    name: str
    config: RouteConfiguration
    version: str


class ResourceStore:
    """Name -> Resource, swapped atomically; ``generation`` counts effective changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: Mapping[str, Resource] = MappingProxyType({})
        self._listeners: list[Callable[[], None]] = []
        self.generation = 0

    def snapshot(self) -> Mapping[str, Resource]:
        return self._resources

    def set(self, configs: Mapping[str, RouteConfiguration]) -> bool:
        """Replace every resource; notify streams only if something changed. Returns whether it did."""
        new = {name: Resource(name, cfg, resource_version(cfg)) for name, cfg in configs.items()}
        with self._lock:
            old = self._resources
            if old.keys() == new.keys() and all(old[n].version == r.version for n, r in new.items()):
                return False
            self._resources = MappingProxyType(new)
            self.generation += 1
            listeners = list(self._listeners)
        for callback in listeners:
            callback()
        return True

    def put(self, config: RouteConfiguration) -> bool:
        """Add or replace one resource (tests and tools)."""
        current = {name: r.config for name, r in self._resources.items()}
        current[config.name] = config
        return self.set(current)

    def remove(self, name: str) -> bool:
        current = {n: r.config for n, r in self._resources.items() if n != name}
        return self.set(current)

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)
