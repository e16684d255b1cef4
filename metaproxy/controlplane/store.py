"""The route configurations being served, replaced whole, with change notification.

The loader builds a new dict of resources and calls :meth:`ResourceStore.set`;
each xDS stream registers a callback and re-reads :meth:`snapshot` when told.
A snapshot is an immutable mapping, so a stream never sees half an update.

A configuration is serialized once, when it enters the store: the same bytes
give its content version and the ``Any`` every stream sends (streams used
to serialize it again for each response). A configuration object that is
already in the store (the loader hands back the same object for a MetaRouter
that did not change) keeps its Resource without being serialized again.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.any_pb2 import Any as AnyProto

from metaproxy.xds.resources import ROUTE_TYPE_URL


@dataclass(frozen=True)
class Resource:
    name: str
    config: RouteConfiguration
    version: str
    packed: AnyProto = field(compare=False, repr=False, default_factory=AnyProto)


def make_resource(name: str, config: RouteConfiguration) -> Resource:
    """A Resource with its version and packed form from one deterministic serialization.

    The version is the same as :func:`metaproxy.xds.resources.resource_version`.
    """
    data = config.SerializeToString(deterministic=True)
    return Resource(name, config, hashlib.sha256(data).hexdigest()[:16], AnyProto(type_url=ROUTE_TYPE_URL, value=data))


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
        current = self._resources
        new = {name: (current[name] if name in current and current[name].config is cfg else make_resource(name, cfg))
               for name, cfg in configs.items()}
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
