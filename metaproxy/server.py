"""Listeners: a listening socket, its codec, filter chain and routes, and the connections it accepts.

A connection is served one of two ways (the request path is the same code):

* in the event loop's I/O callbacks (:mod:`metaproxy.evented`) when nothing
  on the way can wait: a multiplexing codec, a plain socket, filters that all
  say ``blocking = False``. No greenlet switch per request: ~20% fewer instructions.
* on greenlets (:mod:`metaproxy.downstream`) otherwise: TLS, ordered
  protocols, filters that may block.

Every failure becomes a protocol-level reply made by ``codec.on_error``; a
decode error closes only the connection that sent it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any

import gevent
from gevent.server import StreamServer

from metaproxy.chain import FilterChain, FilterEnv, load_filter_class
from metaproxy.codec import Codec, Direction
from metaproxy.config import ListenerConfig
from metaproxy.downstream import DownstreamConnection
from metaproxy.evented import CallbackConnection
from metaproxy.observer import RequestObserver, overriding
from metaproxy.router import RouteHolder
from metaproxy.stats import ListenerStats, StatsStore
from metaproxy.upstream.cluster import ClusterManager

log = logging.getLogger("metaproxy.server")

#: How long a connection must have been silent before drain closes it.
DRAIN_QUIET = 0.25


class _Server(StreamServer):
    """gevent's StreamServer, except that a socket in ``kept`` stays open when its handler returns.

    An evented connection outlives the greenlet that accepted it: it lives in
    the loop's callbacks and closes itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: set[socket.socket] = set()

    def do_close(self, sock: socket.socket, *args: Any) -> None:
        if sock in self.kept:
            self.kept.discard(sock)
        else:
            sock.close()


def build_chain(config: ListenerConfig, env_base: FilterEnv) -> FilterChain:
    """Instantiate the listener's filters; ValueError names the filter's config path."""
    filters = []
    for fc in config.filters:
        try:
            cls = load_filter_class(fc.name)
        except LookupError as exc:
            raise ValueError(f"{fc.path}.name: {exc}") from None
        env = FilterEnv(listener=config.name, protocol=config.protocol.name, base_dir=env_base.base_dir,
                        path=fc.path, services=env_base.services)
        try:
            filters.append(cls(fc.options, env))
        except ValueError as exc:
            for f in filters:
                f.close()
            raise ValueError(f"{fc.path}.{exc}") from None
    return FilterChain(filters)


class Listener:
    """One listening socket, its codec, filter chain and route table."""

    def __init__(self, config: ListenerConfig, clusters: ClusterManager, stats: StatsStore, base_dir: str = ".",
                 observers: list[RequestObserver] | None = None, reuse_port: bool = True) -> None:
        self.config = config
        self.name = config.name
        self.protocol = config.protocol.name
        self.codec_class: type[Codec] = config.protocol.codec_class
        self.codec_options = config.protocol.options
        self.stats = ListenerStats(stats, config.name)
        self.clusters = clusters
        self.observers = list(observers or [])
        self.start_observers = overriding(self.observers, "request_start")
        self.end_observers = overriding(self.observers, "request_end")
        self.routes = RouteHolder(config.route_config)
        self.reuse_port = reuse_port
        self.connections: set[DownstreamConnection] = set()
        self.handshaking = 0
        self.draining = False
        probe = self.new_codec(Direction.REQUEST)
        self.multiplexing = bool(getattr(probe, "multiplexing", True))
        services: dict[str, Any] = {
            "clusters": clusters,
            "stats": stats,
            "listener_stats": self.stats,
            "routes": self.routes,
            "observers": self.observers,
            "protocol_key": f"{config.protocol.codec}:{sorted(self.codec_options.items())!r}",
            "upstream_codec_factory": lambda: self.new_codec(Direction.RESPONSE),
            "multiplexing": self.multiplexing,
        }
        self.chain = build_chain(config, FilterEnv(config.name, self.protocol, base_dir, "", services))
        #: Whether anything here reads an upstream response beyond its status; if nothing does, the
        #: router lets upstream connections only pass responses back (``Codec.decode_passthrough``).
        self.reads_responses = bool(self.chain.response_hooks) or any(
            obs.reads_response_metadata for obs in self.observers)
        for f in self.chain.filters:
            if hasattr(f, "reads_responses"):  # the router
                f.reads_responses = self.reads_responses
        #: Serve connections in the loop's I/O callbacks (see the module docstring).
        self.evented = self.multiplexing and not self.chain.blocking
        self.server: StreamServer | None = None
        self._sweeper: gevent.Greenlet | None = None
        self.ssl_context = _server_ssl_context(config) if config.tls else None
        if config.route_config is not None:
            for route in config.route_config.routes:
                for cname in route.cluster_names():
                    cluster = clusters.get(cname)
                    if cluster is not None and cluster.codec_factory is None:
                        cluster.codec_factory = services["upstream_codec_factory"]
                    if cluster is None:
                        log.warning("listener %s: route %r names unknown cluster %r (requests to it get "
                                    "cluster_not_found)", self.name, route.name, cname)

    def new_codec(self, direction: Direction) -> Codec:
        return self.codec_class(self.codec_options, direction, self.config.max_message_bytes)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.address[0] else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:  # workers share a port, and a reload binds beside the old socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(self.config.address)
        sock.listen(self.config.backlog)
        sock.setblocking(False)
        self.server = _Server(sock, self._accept)
        self.server.start()
        self._sweeper = gevent.spawn(self._sweep)
        log.info("listener %s (%s) on %s:%d", self.name, self.protocol, *self.server.address[:2])

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.address[:2]

    def _sweep(self) -> None:
        """Close idle connections and ones stuck mid-message (slowloris), once a second at most.

        A sweeper instead of socket timeouts: no timer is armed per read on the hot path.
        """
        idle = self.config.idle_timeout
        read_timeout = self.config.request_read_timeout
        period = max(0.05, min(1.0, idle / 4, read_timeout / 4))
        while True:
            gevent.sleep(period)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.partial_since and now - conn.partial_since > read_timeout:
                    self.stats.cx_read_timeout.inc()
                    log.info("listener %s: %s sent a partial message for over %.1fs; closing",
                             self.name, conn.peer, read_timeout)
                    conn.close()
                elif not conn.active and now - conn.last_activity > idle:
                    self.stats.cx_idle_timeout.inc()
                    conn.close()

    def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()

    def drain(self, timeout: float) -> bool:
        """Stop accepting, close idle connections, wait for requests in flight. True if all finished."""
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            for conn in list(self.connections):
                # Quiet for a moment, not just between two requests: a request the client is
                # sending right now must not meet a closed socket.
                if conn.active == 0 and not conn.partial_since and now - conn.last_activity > DRAIN_QUIET:
                    conn.close()
            if not self.connections:
                return True
            gevent.sleep(0.05)
        return False

    def close(self) -> None:
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for conn in list(self.connections):
            conn.close()
        self.chain.close()

    def _accept(self, sock: socket.socket, address: tuple[str, int]) -> None:
        stats = self.stats
        if len(self.connections) + self.handshaking >= self.config.max_connections or self.draining:
            stats.cx_overflow.inc()
            sock.close()
            return
        if self.ssl_context is not None:
            # A handshake counts against max_connections and is bounded like a slow request.
            self.handshaking += 1
            try:
                sock.settimeout(self.config.request_read_timeout)
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
            except (ssl.SSLError, OSError) as exc:
                stats.cx_tls_handshake_error.inc()
                log.info("TLS handshake from %s:%d failed: %s", address[0], address[1], exc)
                sock.close()
                return
            finally:
                self.handshaking -= 1
        evented = self.evented and not isinstance(sock, ssl.SSLSocket)
        conn = (CallbackConnection if evented else DownstreamConnection)(self, sock, address)
        self.connections.add(conn)
        stats.cx_total.inc()
        stats.cx_active.inc()
        if evented:
            conn.start()  # the connection lives in the loop's callbacks; it leaves ``connections`` on close
            self.server.kept.add(sock)  # type: ignore[union-attr]
            return
        try:
            conn.run()
        finally:
            self.connections.discard(conn)
            stats.cx_active.dec()


def _server_ssl_context(config: ListenerConfig) -> ssl.SSLContext:
    tls = config.tls
    assert tls is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
    if tls.require_client_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
