"""One proxy process: clusters, listeners, route subscriptions, admin, and their lifecycle.

``Proxy`` is what the admin server, the worker supervisor and the CLI talk
to. It owns start-up order (clusters before listeners, admin last), drain on
SIGTERM, and swapping config on reload.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import gevent
from gevent.event import Event

from metaproxy.config import ProxyConfig
from metaproxy.observer import RequestObserver
from metaproxy.server import Listener
from metaproxy.stats import StatsStore
from metaproxy.upstream.cluster import ClusterManager

log = logging.getLogger("metaproxy")


class Proxy:
    def __init__(self, config: ProxyConfig, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.stats = StatsStore()
        self.clusters = ClusterManager(config.clusters, self.stats)
        self.observers: list[RequestObserver] = build_observers(config, self.stats)
        self.listeners: dict[str, Listener] = {}
        for lc in config.listeners:
            self.listeners[lc.name] = Listener(lc, self.clusters, self.stats, config.base_dir, self.observers,
                                               reuse_port=reuse_port)
        self.subscriptions: dict[str, Any] = {}
        self.admin: Any = None
        self.stopped = Event()
        self.draining = False

    # -- start / stop --------------------------------------------------------------
    def start(self) -> None:
        start_cluster_services(self)
        for listener in self.listeners.values():
            if listener.config.rds is not None:
                self.subscriptions[listener.name] = start_rds(listener)
        for listener in self.listeners.values():
            listener.start()
        if self.config.admin_address is not None:
            from metaproxy.admin import AdminServer

            self.admin = AdminServer(self, self.config.admin_address)
            self.admin.start()

    def ready(self) -> bool:
        """Every listener bound and every route subscription holding routes."""
        if self.draining:
            return False
        for listener in self.listeners.values():
            if listener.server is None or listener.routes.current is None:
                return False
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting, let requests in flight finish (bounded), close idle connections."""
        self.draining = True
        timeout = self.config.drain_timeout if timeout is None else timeout
        jobs = [gevent.spawn(listener.drain, timeout) for listener in self.listeners.values()]
        gevent.joinall(jobs)
        return all(job.value for job in jobs)

    def shutdown(self) -> None:
        for sub in self.subscriptions.values():
            sub.stop()
        for listener in self.listeners.values():
            listener.close()
        self.clusters.close()
        for obs in self.observers:
            obs.close()
        if self.admin is not None:
            self.admin.stop()
        self.stopped.set()

    def serve_forever(self) -> int:
        """Run until SIGTERM/SIGINT (drain, then exit 0)."""
        gevent.signal_handler(signal.SIGTERM, self._on_term)
        gevent.signal_handler(signal.SIGINT, self._on_term)
        self.stopped.wait()
        return 0

    def _on_term(self) -> None:
        if self.draining:
            return
        log.info("draining (up to %.1fs)", self.config.drain_timeout)
        gevent.spawn(self._drain_and_stop)

    def _drain_and_stop(self) -> None:
        finished = self.drain()
        if not finished:
            log.warning("drain timeout: closing connections with requests in flight")
        self.shutdown()


def build_observers(config: ProxyConfig, stats: StatsStore) -> list[RequestObserver]:
    """Access loggers and the tracer, when configured and their modules are present."""
    observers: list[RequestObserver] = []
    if config.access_log:
        from metaproxy.accesslog import make_access_loggers

        observers.extend(make_access_loggers(config.access_log))
    if config.tracing:
        from metaproxy.tracing import make_tracer

        tracer = make_tracer(config.tracing)
        if tracer is not None:
            observers.append(tracer)
    return observers


def start_cluster_services(proxy: Proxy) -> None:
    """Health checks and outlier detection, for clusters that configure them."""
    wanted = [c for c in proxy.clusters.clusters.values()
              if c.config.health_check is not None or c.config.outlier_detection is not None]
    if not wanted:
        return
    from metaproxy.upstream.health import start_for_cluster

    for cluster in wanted:
        start_for_cluster(cluster)


def start_rds(listener: Listener) -> Any:
    from metaproxy.xds.client import RdsSubscription

    rds = listener.config.rds
    assert rds is not None
    sub = RdsSubscription(listener.routes, rds.server, rds.route_config_name, rds.initial_fetch_timeout)
    sub.start()
    return sub
