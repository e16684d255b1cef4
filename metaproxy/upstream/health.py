"""Endpoint health: active health checks and outlier detection, per cluster.

Two independent verdicts take an endpoint out of rotation (Endpoint.in_rotation):

* **Active health checks** set ``Endpoint.healthy``. Every ``interval`` each
  endpoint is probed — a TCP connect (``kind: tcp``), or a protocol heartbeat
  made by the codec (``kind: heartbeat``: Dubbo and tinyrpc have one) — within
  ``timeout``. ``unhealthy_threshold`` failures in a row mark it unhealthy,
  ``healthy_threshold`` passes in a row mark it healthy again.
* **Outlier detection** watches real traffic: the router reports every try's
  outcome through ``cluster.on_result``. ``consecutive_errors`` errors, or
  ``consecutive_gateway_failures`` connect failures / resets / timeouts, in a
  row eject the endpoint for ``base_ejection_time`` x (times ejected); no more
  than ``max_ejection_percent`` of the cluster is ejected at once (but always
  at least one endpoint may be, as in Envoy). Every ``interval`` an endpoint
  that stayed in rotation earns one ejection back, so a host that recovered
  for good returns to short ejections.

When active checks had marked an endpoint unhealthy and then see it healthy
again, its ejection ends too: a killed and restarted server is back as soon
as a check sees it, not after its ejection time. A passing check alone does
not end an ejection (an endpoint may accept connections yet fail requests);
compare Envoy's ``successful_active_health_check_uneject_host``.

Everything runs in one greenlet per cluster and job; all state is on the
Endpoint objects the balancers already read, so the hot path pays nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket as gsocket

from metaproxy.codec import Codec, DecodeStatus
from metaproxy.config import HealthCheckConfig, OutlierDetectionConfig
from metaproxy.message import MessageType, Metadata, ProxyError
from metaproxy.upstream.endpoint import Endpoint
from metaproxy.upstream.pool import CONNECT_FAILURE, OVERFLOW, RESET, TIMEOUT

log = logging.getLogger("metaproxy.health")

#: Try outcomes that are the endpoint's failure at the transport level (Envoy's "gateway failures").
GATEWAY_FAILURE_FLAGS = frozenset((CONNECT_FAILURE, RESET, TIMEOUT))
#: Ejections grow linearly with the number of ejections but never past this (Envoy's max_ejection_time).
MAX_EJECTION_TIME = 300.0
_HEARTBEAT_ID = 0x4843  # "HC": any id works, the connection carries nothing else


def update_membership(cluster: Any) -> None:
    """Set the cluster's ``membership_healthy`` gauge to the endpoints in rotation now.

    Called after every change of health or ejection, so it also tells the
    cluster to recompute its cached rotation.
    """
    refresh = getattr(cluster, "refresh_rotation", None)
    if refresh is not None:
        refresh()
    now = time.monotonic()
    cluster.stats.membership_healthy.set(sum(1 for e in cluster.endpoints if e.in_rotation(now)))


# -- outlier detection -------------------------------------------------------------

class OutlierDetector:
    """Ejects endpoints whose requests keep failing; installed as ``cluster.on_result``."""

    def __init__(self, cluster: Any, config: OutlierDetectionConfig) -> None:
        self.cluster = cluster
        self.config = config

    def on_result(self, endpoint: Endpoint, error: ProxyError | None) -> None:
        """Called by the router after every upstream try (error None: the endpoint answered)."""
        if error is None:
            endpoint.consecutive_errors = 0
            endpoint.consecutive_gateway_failures = 0
            return
        if error.flags == OVERFLOW:  # our own circuit breaker, not the endpoint's fault
            return
        endpoint.consecutive_errors += 1
        if error.flags in GATEWAY_FAILURE_FLAGS:
            endpoint.consecutive_gateway_failures += 1
        cfg = self.config
        if (endpoint.consecutive_errors >= cfg.consecutive_errors
                or endpoint.consecutive_gateway_failures >= cfg.consecutive_gateway_failures):
            self.eject(endpoint, f"{endpoint.consecutive_errors} errors in a row, last: {error.message}")

    def eject(self, endpoint: Endpoint, reason: str) -> bool:
        """Take ``endpoint`` out of rotation unless max_ejection_percent forbids it. True if ejected."""
        now = time.monotonic()
        if endpoint.ejected_until > now:
            return False
        endpoints = self.cluster.endpoints
        ejected = sum(1 for e in endpoints if e.ejected_until > now)
        allowed = max(1, len(endpoints) * self.config.max_ejection_percent // 100)
        if ejected >= allowed:
            log.info("cluster %s: not ejecting %s (%s): max_ejection_percent %d%% reached",
                     self.cluster.name, endpoint.address, reason, self.config.max_ejection_percent)
            return False
        endpoint.times_ejected += 1
        base = self.config.base_ejection_time
        duration = min(base * endpoint.times_ejected, max(MAX_EJECTION_TIME, base))
        endpoint.ejected_until = now + duration
        endpoint.consecutive_errors = 0
        endpoint.consecutive_gateway_failures = 0
        self.cluster.stats.outlier_detection_ejections.inc()
        update_membership(self.cluster)
        log.warning("cluster %s: ejected %s for %.1fs (%s)", self.cluster.name, endpoint.address, duration, reason)
        return True

    def sweep(self) -> None:
        """Once per interval: return endpoints whose ejection ended, and let steady ones earn ejections back."""
        now = time.monotonic()
        for e in self.cluster.endpoints:
            if e.ejected_until and e.ejected_until <= now:
                e.ejected_until = 0.0
                log.info("cluster %s: %s returns after ejection", self.cluster.name, e.address)
            elif not e.ejected_until and e.times_ejected and not e.consecutive_errors:
                e.times_ejected -= 1
        update_membership(self.cluster)

    def run(self) -> None:
        while True:
            gevent.sleep(self.config.interval)
            self.sweep()


# -- active health checks -------------------------------------------------------

def tcp_check(endpoint: Endpoint, timeout: float) -> bool:
    """The endpoint accepts a TCP connection within ``timeout``."""
    try:
        with gsocket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return True
    except OSError:
        return False


def heartbeat_check(endpoint: Endpoint, timeout: float, codec: Codec) -> bool:
    """The endpoint answers the codec's heartbeat within ``timeout`` (TCP connect if it has none)."""
    request = bytearray()
    if not codec.make_heartbeat(_HEARTBEAT_ID, request):
        return tcp_check(endpoint, timeout)
    try:
        with gevent.Timeout(timeout), gsocket.create_connection((endpoint.host, endpoint.port),
                                                                  timeout=timeout) as sock:
            sock.sendall(request)
            buffer = bytearray()
            while True:
                md = Metadata()
                if buffer and codec.decode(buffer, md) is DecodeStatus.DONE:
                    return md.get("message_type") is MessageType.HEARTBEAT
                data = sock.recv(4096)
                if not data:
                    return False
                buffer += data
    except gevent.Timeout:
        return False
    except Exception as exc:  # OSError, or a CodecError from an endpoint that is not speaking the protocol
        log.debug("heartbeat to %s failed: %s", endpoint.address, exc)
        return False


class HealthChecker:
    """Probes every endpoint of a cluster each interval and sets ``Endpoint.healthy``."""

    def __init__(self, cluster: Any, config: HealthCheckConfig,
                 codec_factory: Callable[[], Codec] | None = None) -> None:
        self.cluster = cluster
        self.config = config
        self.codec_factory = codec_factory

    def _factory(self) -> Callable[[], Codec] | None:
        """The upstream codec for heartbeats: given, or the cluster's (known once a listener used it)."""
        if self.codec_factory is not None:
            return self.codec_factory
        factory = getattr(self.cluster, "codec_factory", None)
        if factory is None:
            for pool in list(getattr(self.cluster, "_pools", {}).values()):
                factory = getattr(pool, "codec_factory", None)
                if factory is not None:
                    break
        return factory

    def check(self, endpoint: Endpoint) -> bool:
        if self.config.kind == "heartbeat":
            factory = self._factory()
            if factory is not None:
                return heartbeat_check(endpoint, self.config.timeout, factory())
        return tcp_check(endpoint, self.config.timeout)

    def record(self, endpoint: Endpoint, passed: bool) -> None:
        """Count one result and flip ``healthy`` when a threshold is reached."""
        stats = self.cluster.stats
        if passed:
            stats.health_check_success.inc()
            endpoint.hc_fails = 0
            endpoint.hc_passes += 1
            if not endpoint.healthy and endpoint.hc_passes >= self.config.healthy_threshold:
                endpoint.healthy = True
                endpoint.ejected_until = 0.0  # a host seen healthy again is no outlier any more
                endpoint.consecutive_errors = endpoint.consecutive_gateway_failures = 0
                log.info("cluster %s: %s is healthy", self.cluster.name, endpoint.address)
        else:
            stats.health_check_failure.inc()
            endpoint.hc_passes = 0
            endpoint.hc_fails += 1
            if endpoint.healthy and endpoint.hc_fails >= self.config.unhealthy_threshold:
                endpoint.healthy = False
                log.warning("cluster %s: %s is unhealthy (%d failed checks)", self.cluster.name,
                            endpoint.address, endpoint.hc_fails)

    def check_all(self) -> None:
        """One round: every endpoint probed concurrently, bounded by the timeout."""
        endpoints = list(self.cluster.endpoints)
        jobs = [gevent.spawn(self.check, e) for e in endpoints]
        gevent.joinall(jobs, timeout=self.config.timeout + 1.0)
        for endpoint, job in zip(endpoints, jobs, strict=True):
            passed = bool(job.value) if job.ready() else False
            job.kill(block=False)
            self.record(endpoint, passed)
        update_membership(self.cluster)

    def run(self) -> None:
        while True:
            try:
                self.check_all()
            except Exception:  # never let a bug stop health checking for good
                log.exception("cluster %s: health check round failed", self.cluster.name)
            gevent.sleep(self.config.interval)


# -- wiring -----------------------------------------------------------------------

class ClusterHealth:
    """The running health jobs of one cluster; ``stop()`` ends them."""

    def __init__(self, checker: HealthChecker | None, detector: OutlierDetector | None) -> None:
        self.checker = checker
        self.detector = detector
        self.greenlets: list[gevent.Greenlet] = []

    def start(self) -> ClusterHealth:
        if self.checker is not None:
            self.greenlets.append(gevent.spawn(self.checker.run))
        if self.detector is not None:
            self.greenlets.append(gevent.spawn(self.detector.run))
        return self

    def stop(self) -> None:
        for g in self.greenlets:
            g.kill(block=False)
        self.greenlets = []


def start_for_cluster(cluster: Any) -> ClusterHealth:
    """Start health checks and/or outlier detection as the cluster's config asks."""
    config = cluster.config
    detector = None
    if config.outlier_detection is not None:
        detector = OutlierDetector(cluster, config.outlier_detection)
        cluster.on_result = detector.on_result
    checker = HealthChecker(cluster, config.health_check) if config.health_check is not None else None
    return ClusterHealth(checker, detector).start()
