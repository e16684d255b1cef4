"""Clusters: a named set of endpoints, a balancer, pools, and the limits around them."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable

from metaproxy.codec import Codec
from metaproxy.config import ClusterConfig
from metaproxy.message import ErrorType, Metadata, ProxyError
from metaproxy.stats import ClusterStats, StatsStore
from metaproxy.upstream.endpoint import Endpoint
from metaproxy.upstream.lb import make_balancer
from metaproxy.upstream.pool import OVERFLOW, ExclusivePool, Limits, MultiplexPool, UpstreamTls

log = logging.getLogger("metaproxy.upstream")

NO_HEALTHY = "UH"
#: How stale the list of endpoints in rotation may be (seconds).
ROTATION_REFRESH = 0.05


class Cluster:
    """Endpoints of one upstream service and everything needed to send them a request."""

    def __init__(self, config: ClusterConfig, stats: StatsStore) -> None:
        self.config = config
        self.name = config.name
        self.stats = ClusterStats(stats, config.name)
        self.endpoints = [Endpoint(e.host, e.port, e.weight) for e in config.endpoints]
        self.balancer = make_balancer(config.lb_policy)
        self.balancer.rebuild(self.endpoints)
        cb = config.circuit_breakers
        self.limits = Limits(cb.max_connections, cb.max_requests, cb.max_pending_requests)
        self.active_requests = 0
        self.active_retries = 0
        #: Pools by (endpoint address, protocol key): one cluster may serve several listeners.
        self._pools: dict[tuple[str, str], MultiplexPool | ExclusivePool] = {}
        self.tls = _client_tls(config)
        self._rotation: list[Endpoint] = []
        self._rotation_expires = 0.0
        self.stats.membership_total.set(len(self.endpoints))
        self.stats.membership_healthy.set(len(self.endpoints))
        #: How to make an upstream codec (set by the first listener routing here; heartbeat health checks use it).
        self.codec_factory: Callable[[], Codec] | None = None
        #: Called with (endpoint, error or None) after every upstream try (outlier detection).
        self.on_result: Callable[[Endpoint, ProxyError | None], None] | None = None

    # -- endpoint choice ---------------------------------------------------------
    def in_rotation(self) -> list[Endpoint]:
        """Endpoints healthy and not ejected, recomputed at most every ROTATION_REFRESH seconds.

        Health checks and ejections change rarely; a request should not pay a
        scan of the cluster for them.
        """
        now = time.monotonic()
        if now >= self._rotation_expires:
            self._rotation = [e for e in self.endpoints if e.in_rotation(now)]
            self._rotation_expires = now + ROTATION_REFRESH
        return self._rotation

    def refresh_rotation(self) -> None:
        """Recompute the rotation on the next request (health checks and outlier detection call it)."""
        self._rotation_expires = 0.0

    def choose(self, metadata: Metadata, hash_keys: Iterable[str] = (),
               exclude: tuple[Endpoint, ...] = ()) -> Endpoint:
        usable = self.in_rotation()
        if not usable:
            raise ProxyError(ErrorType.NO_HEALTHY_UPSTREAM, f"no healthy upstream in cluster {self.name}",
                             NO_HEALTHY)
        if len(usable) == 1 and not exclude:  # any balancer would pick it (a sidecar's usual cluster)
            return usable[0]
        hash_key = None
        for key in hash_keys:
            value = metadata.get_str(key)
            if value is not None:
                hash_key = value if hash_key is None else f"{hash_key}|{value}"
        endpoint = self.balancer.choose(usable, hash_key, exclude)
        if endpoint is None:
            raise ProxyError(ErrorType.NO_HEALTHY_UPSTREAM, f"no healthy upstream in cluster {self.name}",
                             NO_HEALTHY)
        return endpoint

    # -- sending -----------------------------------------------------------------
    def pool(self, endpoint: Endpoint, protocol_key: str, codec_factory: Callable[[], Codec],
             multiplexing: bool, reads_response: object = True) -> MultiplexPool | ExclusivePool:
        """The endpoint's pool for this protocol.

        ``reads_response`` (any truthy value): the request about to be sent needs its response
        decoded whole, not only passed back (see ``Codec.decode_passthrough``).
        """
        key = (endpoint.address, protocol_key)
        pool = self._pools.get(key)
        if pool is None:
            if self.codec_factory is None:
                self.codec_factory = codec_factory
            kind = MultiplexPool if multiplexing else ExclusivePool
            pool = kind(endpoint, codec_factory, self.config.connections_per_endpoint, self.stats, self.limits,
                        self.config.connect_timeout, self.tls, self.config.idle_timeout)
            self._pools[key] = pool
        if reads_response and pool.passthrough:
            pool.read_responses_fully()
        return pool

    @property
    def pools(self) -> dict[tuple[str, str], MultiplexPool | ExclusivePool]:
        """(endpoint address, protocol key) -> pool, for the admin server."""
        return self._pools

    def check_request_limit(self) -> None:
        if self.active_requests >= self.limits.max_requests:
            self.stats.upstream_rq_pending_overflow.inc()
            raise ProxyError(ErrorType.OVER_LIMIT, f"cluster {self.name} is at max_requests", OVERFLOW)

    def retry_allowed(self) -> bool:
        """Retry budget: retries in flight stay under a share of requests in flight (and max_retries)."""
        budget = max(self.config.circuit_breakers.max_retries,
                     int(self.active_requests * self.config.retry_budget_percent / 100))
        return self.active_retries < budget

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _client_tls(config: ClusterConfig) -> UpstreamTls | None:
    """TLS origination: verify the server against ``ca_file`` (or the system store), present a cert if given."""
    tls = config.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file) if tls.ca_file else ssl.create_default_context()
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    if tls.sni is None and tls.ca_file:
        context.check_hostname = False  # endpoints are addresses; the CA pins who may answer
    return UpstreamTls(context, tls.sni)


class ClusterManager:
    """Every cluster of the process by name; swapped whole on a config reload."""

    def __init__(self, configs: Iterable[ClusterConfig], stats: StatsStore) -> None:
        self.stats = stats
        #: Changed in place on a reload, never replaced: ``get`` stays bound to it.
        self.clusters: dict[str, Cluster] = {c.name: Cluster(c, stats) for c in configs}
        #: ``get(name) -> Cluster | None``: the dict's own method (the router asks once per request;
        #: a Python-level method here cost a frame for a dict lookup).
        self.get: Callable[[str], Cluster | None] = self.clusters.get

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()
