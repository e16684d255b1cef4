"""Outlier detection and active health checks on a cluster, without the proxy process."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from metaproxy.codec import Direction
from metaproxy.config import HealthCheckConfig, OutlierDetectionConfig
from metaproxy.message import ErrorType, ProxyError
from metaproxy.stats import ClusterStats, StatsStore
from metaproxy.upstream.endpoint import Endpoint
from metaproxy.upstream.health import HealthChecker, OutlierDetector, heartbeat_check, tcp_check
from metaproxy.upstream.pool import CONNECT_FAILURE, OVERFLOW, PROTOCOL_ERROR, TIMEOUT
from metaproxy_codecs.tinyrpc.codec import TinyRpcCodec


def _cluster(n: int, ports: list[int] | None = None) -> SimpleNamespace:
    store = StatsStore()
    endpoints = [Endpoint("127.0.0.1", (ports or [])[i] if ports else 10000 + i) for i in range(n)]
    return SimpleNamespace(name="c", endpoints=endpoints, stats=ClusterStats(store, "c"), store=store)


def _err(flags: str, kind: ErrorType = ErrorType.UNSPECIFIED) -> ProxyError:
    return ProxyError(kind, "boom", flags)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


def test_consecutive_gateway_failures_eject_for_base_time():
    cluster = _cluster(3)
    od = OutlierDetector(cluster, OutlierDetectionConfig(consecutive_errors=10, consecutive_gateway_failures=3,
                                                         base_ejection_time=30.0, max_ejection_percent=50))
    ep = cluster.endpoints[0]
    od.on_result(ep, _err(CONNECT_FAILURE))
    od.on_result(ep, _err(TIMEOUT))
    assert ep.in_rotation()
    od.on_result(ep, _err(CONNECT_FAILURE))
    assert not ep.in_rotation()
    assert 29 < ep.ejected_until - time.monotonic() <= 30
    assert cluster.stats.outlier_detection_ejections.value == 1
    assert cluster.stats.membership_healthy.value == 2


def test_a_success_resets_the_streak_and_overflow_is_not_the_endpoints_fault():
    cluster = _cluster(2)
    od = OutlierDetector(cluster, OutlierDetectionConfig(consecutive_errors=2, consecutive_gateway_failures=2,
                                                         max_ejection_percent=100))
    ep = cluster.endpoints[0]
    od.on_result(ep, _err(PROTOCOL_ERROR, ErrorType.BAD_RESPONSE))
    od.on_result(ep, None)
    od.on_result(ep, _err(PROTOCOL_ERROR, ErrorType.BAD_RESPONSE))
    od.on_result(ep, _err(OVERFLOW, ErrorType.OVER_LIMIT))
    assert ep.in_rotation()
    od.on_result(ep, _err(PROTOCOL_ERROR, ErrorType.BAD_RESPONSE))  # consecutive_errors counts every error kind
    assert not ep.in_rotation()


def test_ejection_time_grows_with_times_ejected_and_decays_when_steady():
    cluster = _cluster(2)
    od = OutlierDetector(cluster, OutlierDetectionConfig(consecutive_gateway_failures=1, base_ejection_time=10.0,
                                                         max_ejection_percent=100))
    ep = cluster.endpoints[0]
    od.on_result(ep, _err(CONNECT_FAILURE))
    ep.ejected_until = time.monotonic() - 1  # the first ejection ran out
    od.sweep()
    assert ep.in_rotation() and ep.ejected_until == 0.0 and ep.times_ejected == 1
    od.on_result(ep, _err(CONNECT_FAILURE))
    assert 19 < ep.ejected_until - time.monotonic() <= 20  # 2 x base
    ep.ejected_until = 0.0
    od.sweep()
    od.sweep()
    assert ep.times_ejected == 0


def test_max_ejection_percent_keeps_the_rest_in_rotation():
    cluster = _cluster(4)
    od = OutlierDetector(cluster, OutlierDetectionConfig(consecutive_gateway_failures=1, max_ejection_percent=50))
    for ep in cluster.endpoints:
        od.on_result(ep, _err(CONNECT_FAILURE))
    assert sum(1 for e in cluster.endpoints if e.in_rotation()) == 2
    single = _cluster(2)
    od = OutlierDetector(single, OutlierDetectionConfig(consecutive_gateway_failures=1, max_ejection_percent=0))
    for ep in single.endpoints:
        od.on_result(ep, _err(CONNECT_FAILURE))
    assert sum(1 for e in single.endpoints if e.in_rotation()) == 1  # at least one may always be ejected


def test_tcp_and_heartbeat_checks_against_a_real_server(tinyrpc_server):
    server = tinyrpc_server("hc")
    up = Endpoint("127.0.0.1", server.port)
    down = Endpoint("127.0.0.1", _closed_port())
    assert tcp_check(up, 1.0)
    assert not tcp_check(down, 1.0)
    assert heartbeat_check(up, 1.0, TinyRpcCodec(direction=Direction.RESPONSE))
    assert not heartbeat_check(down, 1.0, TinyRpcCodec(direction=Direction.RESPONSE))
    assert any(md["message_type"].value == "heartbeat" for md in server.received.requests)


def test_heartbeat_check_fails_on_a_silent_peer_within_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts (in the backlog) but never answers
        ep = Endpoint("127.0.0.1", silent.getsockname()[1])
        started = time.monotonic()
        assert not heartbeat_check(ep, 0.3, TinyRpcCodec(direction=Direction.RESPONSE))
        assert time.monotonic() - started < 1.5


def test_thresholds_flip_health_and_a_healthy_verdict_ends_an_ejection(tinyrpc_server):
    server = tinyrpc_server("hc")
    dead_port = _closed_port()
    cluster = _cluster(2, [server.port, dead_port])
    alive, dead = cluster.endpoints
    hc = HealthChecker(cluster, HealthCheckConfig(interval=0.1, timeout=0.5, unhealthy_threshold=2,
                                                  healthy_threshold=2))
    hc.check_all()
    assert dead.healthy  # one failure is under the threshold
    hc.check_all()
    assert not dead.healthy and alive.healthy
    assert cluster.stats.membership_healthy.value == 1
    assert cluster.stats.health_check_failure.value == 2
    assert cluster.stats.health_check_success.value == 2
    dead.ejected_until = time.monotonic() + 300  # outlier detection had ejected it too
    dead.port = server.port  # "restarted": now answers
    hc.check_all()
    assert not dead.healthy
    hc.check_all()
    assert dead.healthy and dead.in_rotation()
    assert cluster.stats.membership_healthy.value == 2


@pytest.mark.parametrize("kind", ["tcp", "heartbeat"])
def test_checker_uses_the_cluster_codec_for_heartbeats(tinyrpc_server, kind):
    server = tinyrpc_server("hc")
    cluster = _cluster(1, [server.port])
    cluster.codec_factory = lambda: TinyRpcCodec(direction=Direction.RESPONSE)
    HealthChecker(cluster, HealthCheckConfig(kind=kind, timeout=1.0)).check_all()
    heartbeats = [md for md in server.received.requests if md["message_type"].value == "heartbeat"]
    assert cluster.endpoints[0].healthy
    assert len(heartbeats) == (1 if kind == "heartbeat" else 0)
