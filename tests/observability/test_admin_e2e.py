"""What an operator sees on the admin port of a real ``metaproxy run`` after known traffic."""

from __future__ import annotations

import json
import signal

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.observability.util import admin, sample, samples

pytestmark = pytest.mark.slow

ROUTES = [
    {"name": "hello", "match": {"metadata": [{"name": "method", "exact": "sayHello"}]}, "route": {"cluster": "c1"}},
    {"name": "flaky", "match": {"metadata": [{"name": "method", "exact": "fail"}]},
     "route": {"cluster": "c1", "retry_policy": {"retry_on": ["error"], "num_retries": 2}}},
    {"name": "slow", "match": {"metadata": [{"name": "method", "exact": "sleep"}]},
     "route": {"cluster": "c1", "timeout": "200ms"}},
]


def config(upstream: str) -> dict:
    return {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [tinyrpc_listener(ROUTES)],
        "clusters": [{"name": "c1", "endpoints": [upstream]}],
    }


def send_known_traffic(proxy) -> None:
    """4 successes, 2 application errors retried twice each, 3 without a route, 1 timeout."""
    with TinyRpcClient(*proxy.address()) as client:
        for _ in range(4):
            assert client.call("sayHello")[0]["response_status"] == "success"
        for _ in range(2):
            assert client.call("fail")[0]["response_status"] == "error"
        for _ in range(3):
            assert client.call("nope")[0]["error_kind"] == "route_not_found"
        assert client.call("sleep", body=b"0.6")[0]["error_kind"] == "timeout"


@pytest.mark.timeout(60)
def test_prometheus_counts_match_the_traffic_sent(tinyrpc_server, proxy):
    upstream = tinyrpc_server("v1")
    p = proxy(config(upstream.address))
    send_known_traffic(p)
    status, text = admin(p, "/stats/prometheus")
    assert status == 200
    values = samples(text)
    lis = {"listener": "in"}
    assert sample(values, "metaprotocol_request_total", **lis) == 10
    assert sample(values, "metaprotocol_request_decoding_success_total", **lis) == 10
    assert sample(values, "metaprotocol_response_success_total", **lis) == 4
    assert sample(values, "metaprotocol_response_error_total", **lis) == 2
    assert sample(values, "metaprotocol_no_route_total", **lis) == 3
    assert sample(values, "metaprotocol_local_response_error_total", error_kind="route_not_found", **lis) == 3
    assert sample(values, "metaprotocol_local_response_error_total", error_kind="timeout", **lis) == 1
    assert sample(values, "metaprotocol_local_response_error_total", error_kind="over_limit", **lis) == 0
    assert sample(values, "metaprotocol_request_active", **lis) == 0
    assert sample(values, "metaprotocol_cx_total", **lis) == 2  # the harness's readiness probe, then our client
    assert sample(values, "metaprotocol_request_time_ms_count", **lis) == 10
    assert sample(values, "metaprotocol_request_time_ms_bucket", le="+Inf", **lis) == 10
    # The timed-out request took at least its 200ms route timeout: it is above the 100ms bucket (the
    # others usually are below it, but a retried one sleeps a random backoff and a loaded machine may
    # push it over: only the timed-out one is certain).
    below_100 = sample(values, "metaprotocol_request_time_ms_bucket", le="100.0", **lis)
    assert 1 <= below_100 <= 9
    buckets = [sample(values, "metaprotocol_request_time_ms_bucket", le=le, **lis)
               for le in ("0.5", "1.0", "5.0", "10.0", "25.0", "50.0", "100.0", "250.0", "500.0", "1000.0")]
    assert buckets == sorted(buckets)  # cumulative
    assert sample(values, "metaprotocol_method_request_total", method="sayHello", **lis) == 4
    assert sample(values, "metaprotocol_method_request_time_ms_count", method="fail", **lis) == 2
    c1 = {"cluster": "c1"}
    assert sample(values, "cluster_upstream_rq_total", **c1) == 4 + 2 * 3 + 1
    assert sample(values, "cluster_upstream_rq_retry_total", **c1) == 4
    assert sample(values, "cluster_upstream_rq_error_total", **c1) == 2 * 3 + 1
    assert sample(values, "cluster_upstream_rq_timeout_total", **c1) == 1
    assert sample(values, "cluster_upstream_rq_time_ms_count", **c1) == 11
    assert sample(values, "cluster_upstream_rq_pending_overflow_total", **c1) == 0
    assert sample(values, "cluster_membership_healthy", **c1) == 1


@pytest.mark.timeout(60)
def test_stats_text_and_json_agree_with_prometheus(tinyrpc_server, proxy):
    p = proxy(config(tinyrpc_server().address))
    send_known_traffic(p)
    status, text = admin(p, "/stats?filter=^metaprotocol\\.in\\.(request|no_route)$")
    assert status == 200
    assert text.splitlines() == ["metaprotocol.in.no_route: 3", "metaprotocol.in.request: 10"]
    status, body = admin(p, "/stats?format=json&filter=upstream_rq_retry$")
    assert status == 200
    assert json.loads(body) == {"stats": [{"name": "cluster.c1.upstream_rq_retry", "value": 4}]}
    assert admin(p, "/stats?filter=(")[0] == 400


@pytest.mark.timeout(60)
def test_ready_flips_to_draining_and_admin_endpoints_answer(tinyrpc_server, proxy):
    upstream = tinyrpc_server()
    p = proxy(config(upstream.address))
    assert admin(p, "/ready") == (200, "LIVE\n")
    assert admin(p, "/healthz") == (200, "OK\n")
    status, body = admin(p, "/clusters")
    assert status == 200
    assert f"c1::{upstream.address}::health_flags::healthy" in body.splitlines()
    status, body = admin(p, "/clusters?format=json")
    assert json.loads(body)["clusters"][0]["endpoints"][0]["in_rotation"] is True
    dump = json.loads(admin(p, "/config_dump")[1])
    listener = dump["listeners"][0]
    assert listener["bound"] is True
    assert listener["route_config"]["version"] == "static"
    assert listener["route_config"]["routes"] == ["hello", "flaky", "slow"]
    assert [f["name"] for f in listener["filters"]] == ["router"]
    assert dump["clusters"][0]["endpoints"][0]["address"] == upstream.address
    assert admin(p, "/nope")[0] == 404
    assert admin(p, "/drain")[0] == 405  # GET on a POST endpoint
    status, body = admin(p, "/logging?level=debug", "POST")
    assert status == 200 and json.loads(body)["levels"]["metaproxy"] == "DEBUG"
    assert admin(p, "/logging?level=loud", "POST")[0] == 400
    status, body = admin(p, "/drain?wait=true&timeout=2s", "POST")
    assert status == 200 and json.loads(body) == {"draining": True, "finished": True}
    assert admin(p, "/ready") == (503, "DRAINING\n")
    assert json.loads(admin(p, "/config_dump")[1])["listeners"][0]["draining"] is True
    # Proxy._on_term ignores SIGTERM once draining began (asked the lead to fix): do not wait 15s for it.
    p.stop(signal.SIGKILL)
