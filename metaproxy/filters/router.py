"""The router: the last filter. Route match -> cluster -> endpoint -> pool, with retries.

It blocks its request's greenlet while the upstream answers; the response (or
a ProxyError) goes back through the chain. Timeouts, retries and mirroring
live here because they are properties of a route.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import gevent

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.codec import Codec
from metaproxy.message import ErrorType, MessageType, Metadata, Mutation, ProxyError, ResponseStatus
from metaproxy.observer import overriding
from metaproxy.router import Route
from metaproxy.runner import RUNNER
from metaproxy.stats import ListenerStats
from metaproxy.upstream.cluster import NO_HEALTHY, Cluster
from metaproxy.upstream.pool import (
    CONNECT_FAILURE,
    OVERFLOW,
    PROTOCOL_ERROR,
    RESET,
    TIMED_OUT,
    TIMEOUT,
    timed_out,
)

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
    #: It never blocks the hub: with ``ctx.resume`` set it queues the request and returns.
    blocking = False

    def __init__(self, options: Mapping[str, Any], env: FilterEnv) -> None:
        super().__init__(options, env)
        unknown = [k for k in options if k != "default_timeout"]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown option of the router filter")
        self.default_timeout = float(options.get("default_timeout", DEFAULT_TIMEOUT))
        services = env.services
        self.clusters = services.get("clusters")
        self.protocol_key: str = services.get("protocol_key", env.protocol)
        self.codec_factory: Callable[[], Codec] = services.get("upstream_codec_factory")  # type: ignore[assignment]
        self.multiplexing: bool = services.get("multiplexing", True)
        self.listener_stats: ListenerStats | None = services.get("listener_stats")
        self.observers = services.get("observers", [])
        #: The observers with an upstream hook (the pair is called together: a token passes between them).
        self.upstream_observers = overriding(self.observers, "upstream_start", "upstream_end")
        self._mirrors_in_flight: dict[str, int] = {}
        #: Whether anything on this listener reads a response beyond its status (response filters,
        #: observers of response metadata): then upstream responses are decoded whole. The listener
        #: sets it once its chain is built; until then, the safe answer.
        self.reads_responses = True

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
        oneway = md.get("message_type") is _ONEWAY
        if ctx.resume is not None:  # served in the hub's callbacks: must not block
            self._send_soon(ctx, route, cluster, oneway)
            return None
        self._respond(ctx, route, self._send(ctx, route, cluster, oneway))
        return None

    @staticmethod
    def _respond(ctx: RequestContext, route: Route, response: Metadata | None) -> None:
        if response is not None:
            ctx.response_metadata = response
            for key, value in route.response_mutation:
                ctx.response_mutation[key] = value

    # -- one request, on a greenlet that may block ----------------------------------
    def _send(self, ctx: RequestContext, route: Route, cluster: Cluster, oneway: bool,
              endpoint: Any = None) -> Metadata | None:
        """Try, and retry as the route's policy allows, within the route's timeout.

        ``endpoint``: the first try's, when the caller has already chosen it.
        """
        timeout = route.timeout or self.default_timeout
        self._enter(cluster)
        try:
            return self._tries(ctx, route, cluster, oneway, timeout, time.monotonic() + timeout, [], endpoint)
        finally:
            self._leave(ctx, cluster)

    @staticmethod
    def _enter(cluster: Cluster) -> None:
        cluster.check_request_limit()
        cluster.active_requests += 1
        cluster.stats.upstream_rq_active.value += 1

    @staticmethod
    def _leave(ctx: RequestContext, cluster: Cluster) -> None:
        cluster.active_requests -= 1
        cluster.stats.upstream_rq_active.value -= 1
        if ctx.attempts > 1:
            cluster.active_retries -= ctx.attempts - 1

    def _tries(self, ctx: RequestContext, route: Route, cluster: Cluster, oneway: bool, timeout: float,
               deadline: float, tried: list[Any], endpoint: Any = None) -> Metadata | None:
        while True:
            per_try, remaining = self._next_try(ctx, route, cluster, timeout, deadline)
            try:
                response = self._try_once(ctx, route, cluster, per_try, oneway, tried, endpoint)
            except ProxyError as err:
                if not self._retry_after_error(err, ctx, route, cluster, oneway, per_try < remaining, deadline):
                    raise
            else:
                if not self._retry_after_response(response, ctx, route, cluster, oneway, deadline):
                    return response
            endpoint = None
            self._before_retry(ctx, cluster.stats, cluster, deadline)

    @staticmethod
    def _next_try(ctx: RequestContext, route: Route, cluster: Cluster, timeout: float,
                  deadline: float) -> tuple[float, float]:
        """Count a try; its timeout and the request's time left (raise the request's timeout if none is)."""
        ctx.attempts += 1
        remaining = timeout
        if ctx.attempts > 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                cluster.stats.upstream_rq_timeout.inc()
                raise ProxyError(ErrorType.TIMEOUT, f"request timeout after {timeout}s", TIMEOUT)
        per_try = route.retry_policy.per_try_timeout or remaining
        return (remaining if per_try > remaining else per_try), remaining

    def _retry_after_error(self, err: ProxyError, ctx: RequestContext, route: Route, cluster: Cluster,
                           oneway: bool, short_try: bool, deadline: float) -> bool:
        """Count a timeout (the try's own when it was shorter than the time left); True to retry."""
        if err.flags == TIMEOUT:
            if short_try:
                cluster.stats.upstream_rq_per_try_timeout.inc()
            else:
                cluster.stats.upstream_rq_timeout.inc()
        return self._retryable(_RETRY_FLAGS.get(err.flags), route.retry_policy, ctx, oneway, cluster, deadline)

    def _retry_after_response(self, response: Metadata | None, ctx: RequestContext, route: Route,
                              cluster: Cluster, oneway: bool, deadline: float) -> bool:
        policy = route.retry_policy
        if (response is not None and response.get("response_status") is _ERROR and policy.retry_on
                and self._retryable("error", policy, ctx, oneway, cluster, deadline)):
            return True
        if ctx.attempts > 1:
            cluster.stats.upstream_rq_retry_success.inc()
        return False

    @staticmethod
    def _pick_endpoint(ctx: RequestContext, route: Route, cluster: Cluster, tried: list[Any]) -> Any:
        leases = ctx.leases
        endpoint = None
        if leases is not None and not tried:  # ordered protocols stay on the endpoint they hold
            endpoint = leases.get(cluster.name)
            if endpoint is not None and not endpoint.in_rotation():
                endpoint = None
        if endpoint is None:
            endpoint = cluster.choose(ctx.metadata, route.hash_policy, tuple(tried))
            if leases is not None:
                leases[cluster.name] = endpoint
        return endpoint

    def _try_once(self, ctx: RequestContext, route: Route, cluster: Cluster, timeout: float, oneway: bool,
                  tried: list[Any], endpoint: Any = None) -> Metadata | None:
        if endpoint is None:
            endpoint = self._pick_endpoint(ctx, route, cluster, tried)
        pool = cluster.pool(endpoint, self.protocol_key, self.codec_factory, self.multiplexing,
                            self.reads_responses or route.response_mutation)
        tried.append(endpoint)
        attempt = self._try_start(ctx, cluster, endpoint)
        error: ProxyError | None = None
        response = None
        try:
            response = pool.request(ctx.metadata, ctx.mutation, timeout, oneway, ctx.leases, ctx.order)
            return response
        except ProxyError as err:
            error = err
            raise
        finally:
            self._try_end(ctx, cluster, attempt, error, response)

    def _try_start(self, ctx: RequestContext, cluster: Cluster, endpoint: Any) -> tuple:
        """Account one try at ``endpoint``: (endpoint, observer tokens, start time) for :meth:`_try_end`."""
        ctx.upstream_host = endpoint.address
        cluster.stats.upstream_rq.value += 1  # (stats: plain increments on the hot path)
        observers = self.upstream_observers
        tokens = [obs.upstream_start(ctx, cluster.name, endpoint.address) for obs in observers] if observers else ()
        endpoint.active_requests += 1
        return endpoint, tokens, time.monotonic()

    def _try_end(self, ctx: RequestContext, cluster: Cluster, attempt: tuple, error: ProxyError | None,
                 response: Metadata | None) -> None:
        endpoint, tokens, started = attempt
        stats = cluster.stats
        if error is not None or (response is not None and response.get("response_status") is _ERROR):
            stats.upstream_rq_error.value += 1
        else:
            stats.upstream_rq_success.value += 1
        endpoint.active_requests -= 1
        elapsed = (time.monotonic() - started) * 1000.0
        stats.upstream_rq_time_ms.observe(elapsed)
        if cluster.on_result is not None:
            cluster.on_result(endpoint, error)
        if tokens:
            for obs, token in zip(self.upstream_observers, tokens, strict=True):
                obs.upstream_end(ctx, token, error, response)

    # -- one request, in the hub's callbacks (ctx.resume finishes it) ------------------------
    def _send_soon(self, ctx: RequestContext, route: Route, cluster: Cluster, oneway: bool) -> None:
        """Queue the request on a ready upstream connection and return; the answer resumes it.

        What cannot be done without waiting (connecting, a protocol without
        multiplexing, a retry's backoff) moves to a greenlet, which resumes
        the request the same way when it is done. This is the first try of
        :meth:`_send` with its helpers written out (a Python call is ~800
        instructions: this path is the one every request of an evented
        listener takes).
        """
        endpoint = self._pick_endpoint(ctx, route, cluster, []) if ctx.leases is not None else \
            cluster.choose(ctx.metadata, route.hash_policy)
        pool = cluster.pool(endpoint, self.protocol_key, self.codec_factory, self.multiplexing,
                            self.reads_responses or route.response_mutation)
        conn = pool.ready_connection() if self.multiplexing else None  # type: ignore[union-attr]
        if conn is None:
            ctx.suspended = True
            RUNNER.spawn(self._send_then_resume, ctx, route, cluster, oneway, endpoint)
            return
        self._enter(cluster)
        timeout = route.timeout or self.default_timeout
        per_try = route.retry_policy.per_try_timeout or timeout
        if per_try > timeout:
            per_try = timeout
        ctx.attempts += 1
        attempt = self._try_start(ctx, cluster, endpoint)
        call = _Resume(self, ctx, route, cluster, oneway, timeout, per_try, attempt)
        try:
            conn.start(ctx.metadata, ctx.mutation, per_try, oneway, call)
        except BaseException as exc:
            self._try_end(ctx, cluster, attempt, exc if isinstance(exc, ProxyError) else None, None)
            self._leave(ctx, cluster)
            raise
        ctx.suspended = True

    def _send_then_resume(self, ctx: RequestContext, route: Route, cluster: Cluster, oneway: bool,
                          endpoint: Any) -> None:
        error = None
        try:
            self._respond(ctx, route, self._send(ctx, route, cluster, oneway, endpoint))
        except ProxyError as err:
            error = err
        except Exception as exc:
            error = _internal_error(exc)
        ctx.resume(ctx, error)  # type: ignore[misc]

    def _retry_then_resume(self, call: _Resume) -> None:
        ctx, route, cluster = call.ctx, call.route, call.cluster
        error = None
        try:
            deadline = call.attempt[2] + call.timeout
            self._before_retry(ctx, cluster.stats, cluster, deadline)
            self._respond(ctx, route, self._tries(ctx, route, cluster, call.oneway, call.timeout, deadline,
                                                  [call.attempt[0]]))
        except ProxyError as err:
            error = err
        except Exception as exc:
            error = _internal_error(exc)
        finally:
            self._leave(ctx, cluster)
        ctx.resume(ctx, error)  # type: ignore[misc]

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
            pool = cluster.pool(endpoint, self.protocol_key, self.codec_factory, self.multiplexing, False)
            oneway = md.get("message_type") is MessageType.ONEWAY
            pool.request(md, mutation, route.timeout or self.default_timeout, oneway)
        except ProxyError as err:
            log.debug("mirror to %s failed: %s", cluster.name, err)
        except Exception:  # a shadow must never hurt anything
            log.exception("mirror to %s failed", cluster.name)
        finally:
            self._mirrors_in_flight[cluster.name] -= 1


def _internal_error(exc: BaseException) -> ProxyError:
    log.exception("request failed in the router")
    return ProxyError.internal(exc)


class _Resume:
    """A request served in the hub's callbacks, waiting for its upstream: what the router needs to go on.

    It is what :class:`~metaproxy.upstream.pool.MultiplexConnection` keeps in
    ``pending`` (``done``, ``timer``, ``conn``, ``upstream_id``, ``switch``), in
    place of a waiting greenlet; ``switch(value)`` hands the answer back to
    the router instead of waking a greenlet. ``attempt`` is the try's
    (endpoint, observer tokens, start time): the request's deadline is its
    start plus ``timeout``.
    """

    __slots__ = ("router", "ctx", "route", "cluster", "oneway", "timeout", "per_try", "attempt",
                 "done", "timer", "conn", "upstream_id")

    def __init__(self, router: RouterFilter, ctx: RequestContext, route: Route, cluster: Cluster, oneway: bool,
                 timeout: float, per_try: float, attempt: tuple) -> None:
        self.router = router
        self.ctx = ctx
        self.route = route
        self.cluster = cluster
        self.oneway = oneway
        self.timeout = timeout
        self.per_try = per_try
        self.attempt = attempt
        self.done = False
        self.timer: Any = None
        # Set by the connection that queues it (every attribute assigned here: compiled, an instance
        # has exactly these).
        self.conn: Any = None
        self.upstream_id = 0

    def switch(self, value: object) -> None:
        """The upstream answered (a response, a ProxyError, or the try's timer): go on, in the hub."""
        router, ctx, route, cluster = self.router, self.ctx, self.route, self.cluster
        error: ProxyError | None = None
        response: Metadata | None = None
        if value is TIMED_OUT:
            error = timed_out(self.per_try)
        elif isinstance(value, ProxyError):
            error = value
        else:
            response = value  # type: ignore[assignment]
        retry = False
        try:
            router._try_end(ctx, cluster, self.attempt, error, response)
            if error is not None:
                retry = router._retry_after_error(error, ctx, route, cluster, self.oneway, self.per_try < self.timeout,
                                                  self.attempt[2] + self.timeout)
            elif route.retry_policy.retry_on:
                retry = router._retry_after_response(response, ctx, route, cluster, self.oneway,
                                                     self.attempt[2] + self.timeout)
        except Exception as exc:  # noqa: BLE001 - an observer's or a health hook's bug fails this request only
            error = _internal_error(exc)
        if retry:
            RUNNER.spawn(router._retry_then_resume, self)
            return
        router._leave(ctx, cluster)
        if error is None:
            router._respond(ctx, route, response)
        try:
            ctx.resume(ctx, error)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - in the hub: nothing must escape
            log.exception("resuming a request failed")

