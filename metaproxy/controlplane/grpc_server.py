"""The gRPC side: RouteDiscoveryService and AggregatedDiscoveryService over one store.

Each stream gets a reader thread (client requests) and the store's change
callback feeding one queue; the servicer generator turns each event into the
responses the stream state machine (streams.py) decides on. A sync grpcio
server holds one worker thread per open stream, so ``max_workers`` bounds
the number of proxies served at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from envoy.service.route.v3 import rds_pb2_grpc

from metaproxy.controlplane.acks import AckRegistry
from metaproxy.controlplane.store import ResourceStore
from metaproxy.controlplane.streams import DeltaStream, SotwStream, fetch

log = logging.getLogger("metaproxy.controlplane.xds")
_END = object()
_CHANGE = object()


class _Streams:
    """Runs stream state machines over gRPC request iterators."""

    def __init__(self, store: ResourceStore, registry: AckRegistry) -> None:
        self.store = store
        self.registry = registry

    def run(self, make: Callable[..., Any], kind: str, service: str,
            request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        record = self.registry.new(kind, service, context.peer())
        machine = make(self.store, self.registry, record)
        events: queue.SimpleQueue = queue.SimpleQueue()

        def read() -> None:
            try:
                for request in request_iterator:
                    events.put(request)
            except Exception as exc:  # the stream ended or was cancelled
                log.debug("stream %d reader ended: %s", record.stream_id, exc)
            events.put(_END)

        def wake() -> None:
            events.put(_CHANGE)

        self.store.subscribe(wake)
        context.add_callback(lambda: events.put(_END))
        threading.Thread(target=read, name=f"xds-reader-{record.stream_id}", daemon=True).start()
        log.info("stream %d opened (%s %s) from %s", record.stream_id, service, kind, record.peer)
        try:
            while True:
                event = events.get()
                if event is _END:
                    return
                if event is _CHANGE:  # idempotent: a second change with nothing new sends nothing
                    responses = machine.on_change()
                else:
                    responses = machine.on_request(event)
                yield from responses
        finally:
            self.store.unsubscribe(wake)
            self.registry.close(record)
            log.info("stream %d closed (node %s)", record.stream_id, record.node_id or "?")


class RouteDiscovery(rds_pb2_grpc.RouteDiscoveryServiceServicer):
    def __init__(self, streams: _Streams) -> None:
        self._streams = streams

    def StreamRoutes(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        return self._streams.run(SotwStream, "sotw", "rds", request_iterator, context)

    def DeltaRoutes(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        return self._streams.run(DeltaStream, "delta", "rds", request_iterator, context)

    def FetchRoutes(self, request: DiscoveryRequest, context: grpc.ServicerContext) -> DiscoveryResponse:
        return fetch(self._streams.store, request)


class AggregatedDiscovery(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS: the same route resources; requests for other types are answered with nothing."""

    def __init__(self, streams: _Streams) -> None:
        self._streams = streams

    def StreamAggregatedResources(self, request_iterator: Iterator[Any],
                                  context: grpc.ServicerContext) -> Iterator[Any]:
        return self._streams.run(SotwStream, "sotw", "ads", request_iterator, context)

    def DeltaAggregatedResources(self, request_iterator: Iterator[Any],
                                 context: grpc.ServicerContext) -> Iterator[Any]:
        return self._streams.run(DeltaStream, "delta", "ads", request_iterator, context)


def make_server(store: ResourceStore, registry: AckRegistry, listen: str,
                max_workers: int = 256) -> tuple[grpc.Server, int]:
    """A started-later gRPC server serving RDS and ADS on ``listen``; returns it and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="xds"),
                         options=[("grpc.keepalive_permit_without_calls", 1),
                                  ("grpc.http2.min_ping_interval_without_data_ms", 5000)])
    streams = _Streams(store, registry)
    rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server(RouteDiscovery(streams), server)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AggregatedDiscovery(streams), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, port
