"""One proxy process: clusters, listeners, route subscriptions, admin, and their lifecycle.

``Proxy`` is what the admin server, the worker supervisor and the CLI talk
to. It owns start-up order (clusters before listeners, admin last), drain on
SIGTERM, and swapping config on reload.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import replace
from typing import Any

import gevent
from gevent.event import Event

from metaproxy import accesslog, compiled, downstream
from metaproxy.config import ListenerConfig, ProxyConfig
from metaproxy.heap import settle_heap
from metaproxy.observer import RequestObserver
from metaproxy.server import Listener
from metaproxy.stats import StatsStore
from metaproxy.upstream.cluster import Cluster, ClusterManager

log = logging.getLogger("metaproxy")


class Proxy:
    def __init__(self, config: ProxyConfig, reuse_port: bool = True) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.stats = StatsStore()
        downstream.BUDGET.limit = config.max_buffered_bytes_total
        self.clusters = ClusterManager(config.clusters, self.stats)
        self.observers: list[RequestObserver] = build_observers(config, self.stats)
        self.listeners: dict[str, Listener] = {}
        for lc in config.listeners:
            self.listeners[lc.name] = Listener(lc, self.clusters, self.stats, config.base_dir, self.observers,
                                               reuse_port=reuse_port)
        self.subscriptions: dict[str, Any] = {}
        #: Health checkers / outlier detectors by cluster name (stopped when a reload removes the cluster).
        self.cluster_services: dict[str, Any] = {}
        self.reloads = self.stats.counter("server", "reload")
        self.reload_errors = self.stats.counter("server", "reload_error")
        self.admin: Any = None
        self.stopped = Event()
        self.draining = False
        self.terminating = False

    # -- start / stop --------------------------------------------------------------
    def start(self) -> None:
        state = compiled.STATE
        if state["mode"] == "compiled":
            log.info("hot path: compiled (%d modules)", len(state["modules"]))
        else:
            log.info("hot path: interpreted (%s)", state["reason"])
        if self.config.access_log:
            log.info("access log renderer: %s", accesslog.native_state())
        for cluster in self.clusters.clusters.values():
            self._start_cluster_services(cluster)
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
        for services in self.cluster_services.values():
            services.stop()
        for listener in self.listeners.values():
            listener.close()
        self.clusters.close()
        for obs in self.observers:
            obs.close()
        if self.admin is not None:
            self.admin.stop()
        self.stopped.set()

    def serve_forever(self) -> int:
        """Run until SIGTERM/SIGINT (drain, then exit 0); SIGHUP reloads the config file."""
        gevent.signal_handler(signal.SIGTERM, self._on_term)
        gevent.signal_handler(signal.SIGINT, self._on_term)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        settle_heap()
        self.stopped.wait()
        return 0

    # -- reload -------------------------------------------------------------------------
    def reload(self, path: str | None = None) -> bool:
        """Re-read the config file and apply what changed, without dropping requests elsewhere.

        Unchanged listeners and clusters are kept as they are; a listener whose
        only change is its static routes gets the new table atomically; a
        changed listener gets a new socket (SO_REUSEPORT, so no connection is
        refused) and the old one drains; clusters are swapped by name and the
        old ones closed once in-flight requests had time to finish. A file that
        does not validate changes nothing.
        """
        from metaproxy.config import ConfigError, load_config

        path = path or self.config.source
        try:
            new = load_config(path)
            fresh_listeners = self._plan_listeners(new)
        except (ConfigError, ValueError, OSError) as exc:
            self.reload_errors.inc()
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("reload of %s rejected, the running config stays:\n  %s", path, "\n  ".join(problems))
            return False
        self._apply_clusters(new)
        self._apply_listeners(new, fresh_listeners)
        self.config = new
        self.reloads.inc()
        log.info("reloaded %s", path)
        return True

    def _plan_listeners(self, new: ProxyConfig) -> dict[str, Listener]:
        """Build (but do not start) the listeners that are new or changed beyond their routes."""
        fresh = {}
        for lc in new.listeners:
            old = self.listeners.get(lc.name)
            if old is not None and _same_except_routes(old.config, lc):
                continue
            fresh[lc.name] = Listener(lc, self.clusters, self.stats, new.base_dir, self.observers)
        return fresh

    def _apply_clusters(self, new: ProxyConfig) -> None:
        current = self.clusters.clusters
        wanted = {c.name: c for c in new.clusters}
        retired = []
        for name, config in wanted.items():
            old = current.get(name)
            if old is not None and old.config == config:
                continue
            if old is not None:
                self._stop_cluster_services(name)
                retired.append(old)
            current[name] = cluster = Cluster(config, self.stats)
            self._start_cluster_services(cluster)
        for name in [n for n in current if n not in wanted]:
            self._stop_cluster_services(name)
            retired.append(current.pop(name))
        for old in retired:
            gevent.spawn_later(self.config.drain_timeout, old.close)  # requests in flight finish first

    def _apply_listeners(self, new: ProxyConfig, fresh: dict[str, Listener]) -> None:
        wanted = {lc.name: lc for lc in new.listeners}
        for name, lc in wanted.items():
            old = self.listeners.get(name)
            if name in fresh:
                listener = fresh[name]
                listener.start()  # SO_REUSEPORT: bound beside the old socket, nothing refused
                self.listeners[name] = listener
                if lc.rds is not None:
                    self.subscriptions[name] = start_rds(listener)
                if old is not None:
                    self._retire_listener(old)
            elif old is not None and lc.route_config is not None and lc.route_config != old.config.route_config:
                old.routes.set(lc.route_config)
                old.config = lc
        for name in [n for n in self.listeners if n not in wanted]:
            self._retire_listener(self.listeners.pop(name))

    def _retire_listener(self, listener: Listener) -> None:
        sub = self.subscriptions.pop(listener.name, None)
        if sub is not None:
            sub.stop()

        def drain_then_close() -> None:
            listener.drain(self.config.drain_timeout)
            listener.close()

        gevent.spawn(drain_then_close)

    def _start_cluster_services(self, cluster: Cluster) -> None:
        """Health checks and outlier detection, for clusters that configure them."""
        if cluster.config.health_check is None and cluster.config.outlier_detection is None:
            return
        from metaproxy.upstream.health import start_for_cluster

        self.cluster_services[cluster.name] = start_for_cluster(cluster)

    def _stop_cluster_services(self, name: str) -> None:
        services = self.cluster_services.pop(name, None)
        if services is not None:
            services.stop()

    def _on_term(self) -> None:
        if self.terminating:  # not `draining`: after POST /drain, SIGTERM must still exit
            return
        self.terminating = True
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


def _same_except_routes(old: ListenerConfig, new: ListenerConfig) -> bool:
    return replace(old, route_config=None) == replace(new, route_config=None)


def start_rds(listener: Listener) -> Any:
    from metaproxy.xds.client import RdsSubscription

    rds = listener.config.rds
    assert rds is not None
    sub = RdsSubscription(listener.routes, rds.server, rds.route_config_name, rds.initial_fetch_timeout)
    sub.start()
    return sub
