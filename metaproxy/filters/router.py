"""The router: the last filter. Route match -> cluster -> endpoint -> pool, with retries.

It blocks its request's greenlet while the upstream answers; the response (or
a ProxyError) goes back through the chain. Timeouts, retries and mirroring
live here because they are properties of a route.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import gevent

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.message import ErrorType, MessageType, Metadata, Mutation, ProxyError, ResponseStatus
from metaproxy.observer import overriding
from metaproxy.router import Route
from metaproxy.runner import RUNNER
from metaproxy.upstream.cluster import NO_HEALTHY, Cluster
from metaproxy.upstream.pool import CONNECT_FAILURE, OVERFLOW, PROTOCOL_ERROR, RESET, TIMEOUT

log = logging.getLogger("metaproxy.router")
# Enum members read per request, as globals (a class attribute read of an enum is slow on 3.11).
_ONEWAY = MessageType.ONEWAY
_ERROR = ResponseStatus.ERROR

DEFAULT_TIMEOUT = 15.0
#: Mirror copies in flight per cluster at most: a slow shadow cannot pile up memory.
MAX_MIRRORS_IN_FLIGHT = 64
_RETRY_FLAGS = {
    CONNECT_FAILURE: "connect_failure",
    RESET: "reset",
    PROTOCOL_ERROR: "reset",
    TIMEOUT: "timeout",
    NO_HEALTHY: "unavailable",
    OVERFLOW: "unavailable",
}
_BACKOFF_BASE = 0.025
_BACKOFF_MAX = 0.25


class RouterFilter(Filter):
    name = "router"

    def __init__(self, options: Mapping[str, Any], env: FilterEnv) -> None:
        super().__init__(options, env)
        unknown = [k for k in options if k != "default_timeout"]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown option of the router filter")
        self.default_timeout = float(options.get("default_timeout", DEFAULT_TIMEOUT))
        services = env.services
        self.clusters = services.get("clusters")
        self.protocol_key: str = services.get("protocol_key", env.protocol)
        self.codec_factory = services.get("upstream_codec_factory")
        self.multiplexing: bool = services.get("multiplexing", True)
        self.listener_stats = services.get("listener_stats")
        self.observers = services.get("observers", [])
        #: The observers with an upstream hook (the pair is called together: a token passes between them).
        self.upstream_observers = overriding(self.observers, "upstream_start", "upstream_end")
        self._mirrors_in_flight: dict[str, int] = {}

    # -- request path -------------------------------------------------------------
    def on_request(self, ctx: RequestContext) -> None:
        md = ctx.metadata
        table = ctx.routes
        route = table.match(md) if table is not None else None
        stats = self.listener_stats
        if route is None:
            if stats is not None:
                stats.no_route.inc()
            raise ProxyError(ErrorType.ROUTE_NOT_FOUND,
                             f"no route for service {md.get('service', '')!r} method {md.get('method', '')!r}", "NR")
        ctx.route = route
        if stats is not None:
            stats.route_request(route.name).value += 1  # (stats: plain increments on the hot path)
        if route.request_mutation:
            for key, value in route.request_mutation:
                ctx.mutation[key] = value
        cluster_name = route.pick_cluster()
        ctx.cluster_name = cluster_name
        cluster = self.clusters.get(cluster_name) if self.clusters is not None else None
        if cluster is None:
            raise ProxyError(ErrorType.CLUSTER_NOT_FOUND, f"unknown cluster {cluster_name!r}", "NC")
        for mirror in route.mirrors:
            if mirror.percentage >= 100 or random.random() * 100 < mirror.percentage:
                self._mirror(mirror.cluster, ctx)
        response = self._send(ctx, route, cluster, md.get("message_type") is _ONEWAY)
        if response is not None:
            ctx.response_metadata = response
            for key, value in route.response_mutation:
                ctx.response_mutation[key] = value
        return None

    def _send(self, ctx: RequestContext, route: Route, cluster: Cluster, oneway: bool) -> Metadata | None:
        """Try, and retry as the route's policy allows, within the route's timeout."""
        policy = route.retry_policy
        timeout = route.timeout or self.default_timeout
        deadline = time.monotonic() + timeout
        tried: list[Any] = []
        stats = cluster.stats
        cluster.check_request_limit()
        cluster.active_requests += 1
        stats.upstream_rq_active.value += 1
        remaining = timeout
        try:
            while True:
                ctx.attempts += 1
                if ctx.attempts > 1:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        stats.upstream_rq_timeout.inc()
                        raise ProxyError(ErrorType.TIMEOUT, f"request timeout after {timeout}s", TIMEOUT)
                per_try = policy.per_try_timeout or remaining
                if per_try > remaining:
                    per_try = remaining
                try:
                    response = self._try_once(ctx, route, cluster, per_try, oneway, tried)
                except ProxyError as err:
                    if err.flags == TIMEOUT:
                        if per_try < remaining:
                            stats.upstream_rq_per_try_timeout.inc()
                        else:
                            stats.upstream_rq_timeout.inc()
                    if not self._retryable(_RETRY_FLAGS.get(err.flags), policy, ctx, oneway, cluster, deadline):
                        raise
                    self._before_retry(ctx, stats, cluster, deadline)
                    continue
                if (response is not None and response.get("response_status") is _ERROR and policy.retry_on
                        and self._retryable("error", policy, ctx, oneway, cluster, deadline)):
                    self._before_retry(ctx, stats, cluster, deadline)
                    continue
                if ctx.attempts > 1:
                    stats.upstream_rq_retry_success.inc()
                return response
        finally:
            cluster.active_requests -= 1
            stats.upstream_rq_active.value -= 1
            if ctx.attempts > 1:
                cluster.active_retries -= ctx.attempts - 1

    def _try_once(self, ctx: RequestContext, route: Route, cluster: Cluster, timeout: float, oneway: bool,
                  tried: list[Any]) -> Metadata | None:
        endpoint = None
        leases = ctx.leases
        if leases is not None and not tried:  # ordered protocols stay on the endpoint they hold
            endpoint = leases.get(cluster.name)
            if endpoint is not None and not endpoint.in_rotation():
                endpoint = None
        if endpoint is None:
            endpoint = cluster.choose(ctx.metadata, route.hash_policy, tuple(tried))
            if leases is not None:
                leases[cluster.name] = endpoint
        tried.append(endpoint)
        ctx.upstream_host = endpoint.address
        pool = cluster.pool(endpoint, self.protocol_key, self.codec_factory, self.multiplexing)
        stats = cluster.stats
        stats.upstream_rq.value += 1
        observers = self.upstream_observers
        tokens = [obs.upstream_start(ctx, cluster.name, endpoint.address) for obs in observers] if observers else ()
        endpoint.active_requests += 1
        started = time.monotonic()
        error: ProxyError | None = None
        response = None
        try:
            response = pool.request(ctx.metadata, ctx.mutation, timeout, oneway, leases, ctx.order)
            if response is not None and response.get("response_status") is _ERROR:
                stats.upstream_rq_error.value += 1
            else:
                stats.upstream_rq_success.value += 1
            return response
        except ProxyError as err:
            error = err
            stats.upstream_rq_error.value += 1
            raise
        finally:
            endpoint.active_requests -= 1
            stats.upstream_rq_time_ms.observe((time.monotonic() - started) * 1000.0)
            if cluster.on_result is not None:
                cluster.on_result(endpoint, error)
            if observers:
                for obs, token in zip(observers, tokens, strict=True):
                    obs.upstream_end(ctx, token, error, response)

    @staticmethod
    def _retryable(reason: str | None, policy: Any, ctx: RequestContext, oneway: bool, cluster: Cluster,
                   deadline: float) -> bool:
        if oneway or reason is None or reason not in policy.retry_on:
            return False
        if ctx.attempts > policy.num_retries or time.monotonic() >= deadline:
            return False
        if not cluster.retry_allowed():
            cluster.stats.upstream_rq_retry_overflow.inc()
            return False
        return True

    @staticmethod
    def _before_retry(ctx: RequestContext, stats: Any, cluster: Cluster, deadline: float) -> None:
        stats.upstream_rq_retry.inc()
        cluster.active_retries += 1
        backoff = min(_BACKOFF_MAX, _BACKOFF_BASE * (2 ** (ctx.attempts - 1)))
        pause = random.uniform(0, backoff)  # full jitter
        gevent.sleep(min(pause, max(0.0, deadline - time.monotonic())))

    # -- mirroring ----------------------------------------------------------------
    def _mirror(self, cluster_name: str, ctx: RequestContext) -> None:
        cluster = self.clusters.get(cluster_name) if self.clusters is not None else None
        if cluster is None:
            return
        in_flight = self._mirrors_in_flight.get(cluster_name, 0)
        if in_flight >= MAX_MIRRORS_IN_FLIGHT:
            cluster.stats.mirror_dropped.inc()
            return
        copy = Metadata(ctx.metadata)
        copy.frame = ctx.metadata.frame
        copy.codec_state = ctx.metadata.codec_state
        mutation = Mutation(ctx.mutation)
        self._mirrors_in_flight[cluster_name] = in_flight + 1
        cluster.stats.mirror_requests.inc()
        RUNNER.spawn(self._send_mirror, cluster, copy, mutation, ctx.route)

    def _send_mirror(self, cluster: Cluster, md: Metadata, mutation: Mutation, route: Route) -> None:
        try:
            endpoint = cluster.choose(md, route.hash_policy)
            pool = cluster.pool(endpoint, self.protocol_key, self.codec_factory, self.multiplexing)
            oneway = md.get("message_type") is MessageType.ONEWAY
            pool.request(md, mutation, route.timeout or self.default_timeout, oneway)
        except ProxyError as err:
            log.debug("mirror to %s failed: %s", cluster.name, err)
        except Exception:  # a shadow must never hurt anything
            log.exception("mirror to %s failed", cluster.name)
        finally:
            self._mirrors_in_flight[cluster.name] -= 1
