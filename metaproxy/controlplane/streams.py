"""xDS stream state machines, free of gRPC: one request or change in, responses out.

:class:`SotwStream` follows the state-of-the-world protocol (RDS ``StreamRoutes``
and ADS ``StreamAggregatedResources``):

* nonces are per stream and per type; a request whose ``response_nonce`` is
  not the latest one sent is stale and ignored entirely;
* a request echoing the latest nonce is an ACK, or a NACK when it carries
  ``error_detail`` (logged and recorded; the stream stays open and the same
  version is not sent again);
* only the requested resource names are sent, and a response is sent only
  when their content changed (or the requested names changed); a first
  request that already carries the current version gets nothing.

:class:`DeltaStream` follows the incremental protocol (``DeltaRoutes``):
subscribe/unsubscribe, per-resource versions, ``removed_resources``, and
``initial_resource_versions`` so a reconnecting client is sent only what changed.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from envoy.service.discovery.v3.discovery_pb2 import (
    Resource as ResourceProto,
)

from metaproxy.controlplane.acks import AckRegistry, StreamRecord
from metaproxy.controlplane.store import Resource, ResourceStore
from metaproxy.xds.resources import ROUTE_TYPE_URL, set_version

log = logging.getLogger("metaproxy.controlplane.xds")
WILDCARD = "*"


@dataclass
class _TypeState:
    started: bool = False
    names: set[str] = field(default_factory=set)
    nonce: str = ""
    sent: dict[str, str] = field(default_factory=dict)  # name -> version the client was last sent
    sent_version: str = ""


def _selected(store: ResourceStore, names: set[str]) -> dict[str, Resource]:
    snap = store.snapshot()
    if WILDCARD in names:
        return dict(snap)
    return {n: snap[n] for n in names if n in snap}


class _Stream:
    def __init__(self, store: ResourceStore, registry: AckRegistry, record: StreamRecord) -> None:
        self.store = store
        self.registry = registry
        self.record = record
        self._types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)

    def _state(self, type_url: str) -> _TypeState:
        return self._types.setdefault(type_url, _TypeState())

    def _next_nonce(self) -> str:
        return f"{self.record.stream_id}-{next(self._nonces)}"

    def _note_node(self, node_id: str) -> None:
        if node_id and not self.record.node_id:
            self.record.node_id = node_id

    def _nack(self, version: str, nonce: str, message: str, kept: str = "") -> None:
        log.warning("NACK from %s (stream %d) for version %s nonce %s: %s", self.record.node_id or self.record.peer,
                    self.record.stream_id, version, nonce, message)
        self.registry.nack(self.record, version, nonce, message, kept)


class SotwStream(_Stream):
    """One state-of-the-world stream (possibly aggregated over several types)."""

    def on_request(self, req: DiscoveryRequest) -> list[DiscoveryResponse]:
        type_url = req.type_url or ROUTE_TYPE_URL
        self._note_node(req.node.id)
        state = self._state(type_url)
        if req.response_nonce:
            if req.response_nonce != state.nonce:
                self.record.stale_ignored += 1
                log.debug("stream %d: ignoring stale nonce %s (latest %s)", self.record.stream_id,
                          req.response_nonce, state.nonce)
                return []
            if req.HasField("error_detail"):
                self._nack(state.sent_version, req.response_nonce, req.error_detail.message, req.version_info)
            else:
                self.record.acked_version = req.version_info
                self.record.acked_resources = dict(state.sent)
                self.registry.ack(self.record)
        if type_url != ROUTE_TYPE_URL:
            log.debug("stream %d: no resources of type %s are served", self.record.stream_id, type_url)
            return []
        names = set(req.resource_names)
        if state.started and names == state.names:
            return []
        first = not state.started
        state.started = True
        state.names = names
        self.record.resource_names = sorted(names)
        return self._respond(state, req.version_info if first else None)

    def on_change(self) -> list[DiscoveryResponse]:
        state = self._types.get(ROUTE_TYPE_URL)
        if state is None or not state.started:
            return []
        return self._respond(state, None)

    def _respond(self, state: _TypeState, client_version: str | None) -> list[DiscoveryResponse]:
        items = _selected(self.store, state.names)
        current = {n: r.version for n, r in items.items()}
        version = set_version(current.items())
        if client_version is not None:
            if not items:
                return []
            if client_version == version:  # a reconnecting client that already has this
                state.sent, state.sent_version = current, version
                return []
        elif current == state.sent:
            return []
        state.nonce = self._next_nonce()
        state.sent, state.sent_version = current, version
        self.record.sent_version, self.record.sent_nonce = version, state.nonce
        self.record.responses += 1
        return [DiscoveryResponse(
            version_info=version, type_url=ROUTE_TYPE_URL, nonce=state.nonce,
            resources=[items[n].packed for n in sorted(items)],
        )]


class DeltaStream(_Stream):
    """One incremental (delta) stream."""

    def __init__(self, store: ResourceStore, registry: AckRegistry, record: StreamRecord) -> None:
        super().__init__(store, registry, record)
        self._pending: dict[str, dict[str, str]] = {}  # nonce -> what it carried

    def on_request(self, req: DeltaDiscoveryRequest) -> list[DeltaDiscoveryResponse]:
        type_url = req.type_url or ROUTE_TYPE_URL
        self._note_node(req.node.id)
        state = self._state(type_url)
        if not state.started:
            state.started = True
            state.sent = dict(req.initial_resource_versions)
        if req.response_nonce:
            carried = self._pending.pop(req.response_nonce, None)
            if req.response_nonce != state.nonce:
                self.record.stale_ignored += 1
            elif req.HasField("error_detail"):
                self._nack(",".join(f"{k}={v}" for k, v in (carried or {}).items()),
                           req.response_nonce, req.error_detail.message)
            else:
                self.record.acked_resources.update(carried or {})
                self.record.acked_version = self.record.sent_version
                self.registry.ack(self.record)
        for name in req.resource_names_subscribe:
            state.names.add(name)
        for name in req.resource_names_unsubscribe:
            state.names.discard(name)
            state.sent.pop(name, None)
            self.record.acked_resources.pop(name, None)
        self.record.resource_names = sorted(state.names)
        if type_url != ROUTE_TYPE_URL:
            return []
        return self._respond(state)

    def on_change(self) -> list[DeltaDiscoveryResponse]:
        state = self._types.get(ROUTE_TYPE_URL)
        if state is None or not state.started:
            return []
        return self._respond(state)

    def _respond(self, state: _TypeState) -> list[DeltaDiscoveryResponse]:
        items = _selected(self.store, state.names)
        updated = [r for n, r in sorted(items.items()) if state.sent.get(n) != r.version]
        wildcard = WILDCARD in state.names
        removed = sorted(n for n in state.sent if n not in items and (wildcard or n in state.names))
        if not updated and not removed:
            return []
        for name in removed:
            del state.sent[name]
        carried = {}
        for res in updated:
            state.sent[res.name] = res.version
            carried[res.name] = res.version
        state.nonce = self._next_nonce()
        self._pending[state.nonce] = carried
        if len(self._pending) > 64:  # responses never acknowledged: forget the oldest
            self._pending.pop(next(iter(self._pending)))
        version = set_version(state.sent.items())
        self.record.sent_version, self.record.sent_nonce = version, state.nonce
        self.record.responses += 1
        return [DeltaDiscoveryResponse(
            system_version_info=version, type_url=ROUTE_TYPE_URL, nonce=state.nonce,
            resources=[ResourceProto(name=r.name, version=r.version, resource=r.packed) for r in updated],
            removed_resources=removed,
        )]


def fetch(store: ResourceStore, req: DiscoveryRequest) -> DiscoveryResponse:
    """A one-shot FetchRoutes answer: the requested names (every resource when none is named)."""
    names = set(req.resource_names) or {WILDCARD}
    items = _selected(store, names)
    return DiscoveryResponse(
        version_info=set_version((n, r.version) for n, r in items.items()), type_url=ROUTE_TYPE_URL,
        resources=[items[n].packed for n in sorted(items)],
    )
