"""The proxy's route discovery client: one RDS subscription feeding one RouteHolder.

Each RouteConfiguration received is converted to route-config dicts
(convert.py) and parsed by the proxy's own route parser (tables.py, which
reuses the routes that did not change), so a dynamic route is validated
exactly like a static one. A good one replaces the table in the
RouteHolder in one assignment (requests in flight keep the table they
started with) and is ACKed; a bad one is NACKed with the reason and the last
good table stays. When the stream breaks the subscription reconnects with
jittered exponential backoff and resubscribes, sending the version it has so
an unchanged control plane does not resend it.

It uses plain threading primitives: under gevent (``patch_all()`` and
``grpc.experimental.gevent.init_gevent()`` first, which the proxy's entry
point does) they are greenlets, in tests they are threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from envoy.service.route.v3 import rds_pb2_grpc
from google.rpc.status_pb2 import Status

from metaproxy.router import RouteHolder, RouteTable
from metaproxy.settings import ConfigError
from metaproxy.xds.convert import UnsupportedRoute
from metaproxy.xds.resources import INVALID_ARGUMENT, ROUTE_TYPE_URL, unpack
from metaproxy.xds.tables import RouteTableBuilder

log = logging.getLogger("metaproxy.xds")
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),  # while waiting for the channel; our own backoff is between streams
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class _Rejected(Exception):
    """An update the proxy will not apply; the message is the NACK's reason."""


def default_node_id() -> str:
    return f"metaproxy~{socket.gethostname()}~{os.getpid()}"


class RdsSubscription:
    """Subscribe to one route configuration by name over RDS (or ADS) and keep ``holder`` current.

    ``updates``, ``rejects`` and ``reconnects`` are plain counters for stats;
    ``version`` is the last ACKed version and ``table_version`` that of the
    routes in force.
    """

    def __init__(self, holder: RouteHolder, server: str, route_config_name: str,
                 initial_fetch_timeout: float = 15.0, *, node_id: str | None = None,
                 backoff_base: float = 0.25, backoff_max: float = 10.0, use_ads: bool = False,
                 connect_timeout: float = 5.0) -> None:
        self.holder = holder
        self.server = server
        self.route_config_name = route_config_name
        self.initial_fetch_timeout = initial_fetch_timeout
        self.node_id = node_id or default_node_id()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.use_ads = use_ads
        self.connect_timeout = connect_timeout
        self.updates = 0
        self.rejects = 0
        self.reconnects = 0
        self.connected = False
        self.version = ""
        self.table_version = ""
        self.last_error = ""
        self.last_apply_ms = 0.0      # receipt of a response -> new table in force (unpack, build, swap)
        self.last_apply_cpu_ms = 0.0
        self.last_received_at = 0.0   # wall clock of the last response's receipt
        self._resource_version = ""
        self._builder = RouteTableBuilder()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: Any = None
        self._channel: grpc.Channel | None = None
        self._started_at = 0.0

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> RdsSubscription:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"rds-{self.route_config_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        call, channel = self._call, self._channel
        if call is not None:
            call.cancel()
        if channel is not None:
            channel.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first routes are in force; True if they are.

        With no ``timeout`` it waits for what is left of ``initial_fetch_timeout``
        since :meth:`start`.
        """
        if timeout is None:
            timeout = max(0.0, self.initial_fetch_timeout - (time.monotonic() - self._started_at))
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def status(self) -> dict[str, Any]:
        """What the admin /config_dump shows for this listener's dynamic routes."""
        table: RouteTable | None = self.holder.current
        return {
            "route_config_name": self.route_config_name, "server": self.server, "node": self.node_id,
            "version": self.table_version, "acked_version": self.version, "ready": self.ready,
            "routes_in_force": table is not None, "connected": self.connected, "updates": self.updates,
            "rejects": self.rejects, "reconnects": self.reconnects, "last_error": self.last_error,
            "last_apply_ms": round(self.last_apply_ms, 2), "last_apply_cpu_ms": round(self.last_apply_cpu_ms, 2),
            "last_received_at": self.last_received_at,
        }

    # -- the stream ------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            if self._stream_once():
                attempt = 0
            if self._stopping.is_set():
                break
            self.reconnects += 1
            ceiling = min(self.backoff_max, self.backoff_base * (2 ** min(attempt, 16)))
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
            attempt += 1
            log.info("rds %s: reconnecting to %s in %.2fs", self.route_config_name, self.server, delay)
            self._stopping.wait(delay)

    def _request(self, nonce: str = "", error: str | None = None) -> DiscoveryRequest:
        req = DiscoveryRequest(version_info=self.version, resource_names=[self.route_config_name],
                               type_url=ROUTE_TYPE_URL, response_nonce=nonce,
                               node=Node(id=self.node_id, cluster="metaproxy"))
        if error is not None:
            req.error_detail.CopyFrom(Status(code=INVALID_ARGUMENT, message=error))
        return req

    def _stream_once(self) -> bool:
        """One stream until it breaks; True if it was worth something (a response, or a long life).

        The channel is made ready first, so ``connected`` means "subscribed",
        even while the control plane has nothing new to say.
        """
        outbox: queue.Queue = queue.Queue()
        outbox.put(self._request())

        def requests() -> Iterator[DiscoveryRequest]:
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        got_any = False
        began = time.monotonic()
        channel = grpc.insecure_channel(self.server, options=_CHANNEL_OPTIONS)
        self._channel = channel
        try:
            grpc.channel_ready_future(channel).result(timeout=self.connect_timeout)
            if self.use_ads:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests())
            else:
                call = rds_pb2_grpc.RouteDiscoveryServiceStub(channel).StreamRoutes(requests())
            self._call = call
            if self._stopping.is_set():
                call.cancel()
            self.connected = True
            log.info("rds %s: subscribed at %s", self.route_config_name, self.server)
            for response in call:
                got_any = True
                outbox.put(self._handle(response))
        except grpc.FutureTimeoutError:
            if not self._stopping.is_set():
                log.warning("rds %s: cannot connect to %s", self.route_config_name, self.server)
        except grpc.RpcError as exc:
            if not self._stopping.is_set():
                code = exc.code() if hasattr(exc, "code") else None
                log.warning("rds %s: stream to %s ended: %s", self.route_config_name, self.server,
                            code.name if code is not None else exc)
        except Exception:  # never let the subscription die: log and reconnect
            if not self._stopping.is_set():
                log.exception("rds %s: unexpected error on the stream", self.route_config_name)
        finally:
            self.connected = False
            outbox.put(None)
            self._call = None
            channel.close()
        return got_any or time.monotonic() - began > 5.0

    def _handle(self, response: DiscoveryResponse) -> DiscoveryRequest:
        """Apply one response; return the ACK or NACK to send."""
        try:
            applied = self._apply(response)
        except _Rejected as exc:
            self.rejects += 1
            self.last_error = str(exc)
            log.warning("rds %s: rejected version %s: %s", self.route_config_name, response.version_info, exc)
            return self._request(response.nonce, error=str(exc))
        self.version = response.version_info
        if applied:
            log.info("rds %s: version %s in force", self.route_config_name, response.version_info)
        return self._request(response.nonce)

    def _apply(self, response: DiscoveryResponse) -> bool:
        self.last_received_at = time.time()
        began, cpu = time.perf_counter(), time.thread_time()
        if response.type_url and response.type_url != ROUTE_TYPE_URL:
            raise _Rejected(f"unexpected resource type {response.type_url}")
        found = None
        for index, any_msg in enumerate(response.resources):
            try:
                config = unpack(any_msg)
            except ValueError as exc:
                raise _Rejected(f"resources[{index}]: {exc}") from None
            if config.name == self.route_config_name:
                found, found_bytes = config, any_msg.value
        if found is None:
            return False  # not ours (or not there yet): nothing changes
        # The bytes as received identify the content (no second serialization; a server that
        # serializes the same routes differently only costs a rebuild from the per-route cache).
        rversion = hashlib.sha256(found_bytes).hexdigest()[:16]
        if rversion == self._resource_version and self.holder.current is not None:
            self.table_version = response.version_info
            return False
        try:
            table = self._builder.build(found, version=response.version_info, raw=found_bytes)
        except UnsupportedRoute as exc:
            raise _Rejected(str(exc)) from None
        except ConfigError as exc:
            raise _Rejected("; ".join(exc.problems)) from None
        self.last_apply_ms = (time.perf_counter() - began) * 1000
        self.last_apply_cpu_ms = (time.thread_time() - cpu) * 1000
        self.holder.set(table)
        self._resource_version = rversion
        self.table_version = response.version_info
        self.updates += 1
        self._ready.set()
        return True
