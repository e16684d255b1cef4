"""What a client sees of retries, timeouts, circuit breakers and mirroring through `metaproxy run`."""

from __future__ import annotations

import time

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.traffic.conftest import burst, is_error, wait_until

pytestmark = pytest.mark.slow


def _route(cluster: str, method: str | None = None, **action):
    match = {"metadata": [{"name": "method", "exact": method}]} if method else {}
    return {"name": f"{cluster}-{method or 'any'}", "match": match, "route": {"cluster": cluster, **action}}


def test_retry_succeeds_on_the_second_endpoint_after_the_first_resets(tinyrpc_server, bad_server, proxy):
    bad, good = bad_server("reset"), tinyrpc_server("good")
    p = proxy({
        "listeners": [tinyrpc_listener([_route("c", retry_policy={"retry_on": ["reset", "connect_failure"],
                                                                   "num_retries": 1})])],
        "clusters": [{"name": "c", "endpoints": [bad.address, good.address], "lb_policy": "round_robin",
                      "connections_per_endpoint": 1}],
    })
    with TinyRpcClient(*p.address()) as client:
        bodies = [client.call("sayHello")[1] for _ in range(10)]
    assert bodies == [b"good:sayHello:"] * 10
    assert bad.requests >= 3  # round robin sent about half of the first tries to the resetting endpoint
    assert len(good.received.requests) == 10


def test_without_retry_policy_the_reset_reaches_the_client(bad_server, proxy):
    bad = bad_server("reset")
    p = proxy({"listeners": [tinyrpc_listener([_route("c")])], "clusters": [{"name": "c", "endpoints": [bad.address]}]})
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("sayHello")
    assert is_error(md)


def test_per_try_timeout_retries_then_overall_timeout_answers(tinyrpc_server, proxy):
    slow = tinyrpc_server("slow")
    p = proxy({
        "listeners": [tinyrpc_listener([_route("c", timeout="700ms",
                                               retry_policy={"retry_on": ["timeout"], "num_retries": 10,
                                                             "per_try_timeout": "200ms"})])],
        "clusters": [{"name": "c", "endpoints": [slow.address]}],
    })
    with TinyRpcClient(*p.address()) as client:
        started = time.monotonic()
        md, body = client.call("sleep", body=b"3")
        elapsed = time.monotonic() - started
        quick, quick_body = client.call("sleep", body=b"0.01")
    assert is_error(md, "timeout"), (md, body)
    assert 0.6 <= elapsed < 1.5  # the route timeout, not 10 x per-try, not the 3 s sleep
    tries = [r for r in slow.received.requests if r["method"] == "sleep" and r.frame.endswith(b"3")]
    assert 3 <= len(tries) <= 4  # 200 ms tries (plus jittered backoff) inside 700 ms
    assert quick_body == b"slow:sleep:0.01"


def test_per_try_timeout_moves_to_a_fast_endpoint(tinyrpc_server, bad_server, proxy):
    """A try that hangs is cut at per_try_timeout and retried on another endpoint: the client sees success."""
    stuck, fast = bad_server("hang"), tinyrpc_server("fast")
    p = proxy({
        "listeners": [tinyrpc_listener([_route("c", timeout="3s",
                                               retry_policy={"retry_on": ["timeout"], "num_retries": 1,
                                                             "per_try_timeout": "300ms"})])],
        "clusters": [{"name": "c", "endpoints": [stuck.address, fast.address]}],
    })
    with TinyRpcClient(*p.address()) as client:
        started = time.monotonic()
        results = [client.call("sayHello")[1] for _ in range(4)]
        elapsed = time.monotonic() - started
    assert results == [b"fast:sayHello:"] * 4
    assert stuck.requests >= 1
    assert elapsed < 4 * 0.3 + 1.0  # at most one per-try timeout per request, never the 3 s route timeout


def test_circuit_breaker_max_requests_overflow_gets_over_limit(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy({
        "listeners": [tinyrpc_listener([_route("c", timeout="5s")])],
        "clusters": [{"name": "c", "endpoints": [upstream.address],
                      "circuit_breakers": {"max_requests": 2}}],
    })
    replies = burst(p.address(), "sleep", 6, body=b"0.5")
    ok = [r for r in replies if not is_error(r)]
    over = [r for r in replies if is_error(r, "over_limit")]
    assert len(ok) == 2 and len(over) == 4, replies
    with TinyRpcClient(*p.address()) as client:  # the breaker closes again when requests finish
        assert client.call("sayHello")[1] == b"u:sayHello:"


def test_mirror_10_percent_within_tolerance(tinyrpc_server, proxy):
    main, shadow = tinyrpc_server("main"), tinyrpc_server("shadow")
    p = proxy({
        "listeners": [tinyrpc_listener([_route("main", request_mirror_policies=[{"cluster": "shadow",
                                                                                 "percentage": 10}])])],
        "clusters": [{"name": "main", "endpoints": [main.address]},
                     {"name": "shadow", "endpoints": [shadow.address]}],
    })
    n = 1500
    with TinyRpcClient(*p.address()) as client:
        bodies = [client.call("sayHello")[1] for _ in range(n)]
    assert bodies == [b"main:sayHello:"] * n  # the shadow never answers the client
    # Mirrors are fire-and-forget: wait until the copies in flight have landed (stable count).
    seen = []
    wait_until(lambda: (seen.append(len(shadow.received.requests)), len(seen) > 5 and seen[-1] == seen[-6])[1],
               timeout=5)
    mirrored = len(shadow.received.requests)
    assert 0.10 * n - 45 <= mirrored <= 0.10 * n + 45, mirrored  # 150 +- ~4 sigma


def test_slow_shadow_never_delays_the_real_request(tinyrpc_server, bad_server, proxy):
    main, stuck_shadow = tinyrpc_server("main"), bad_server("hang")
    p = proxy({
        "listeners": [tinyrpc_listener([_route("main", timeout="5s",
                                               request_mirror_policies=[{"cluster": "shadow"}])])],
        "clusters": [{"name": "main", "endpoints": [main.address]},
                     {"name": "shadow", "endpoints": [stuck_shadow.address]}],
    })
    with TinyRpcClient(*p.address()) as client:
        started = time.monotonic()
        for _ in range(100):
            assert client.call("sayHello")[1] == b"main:sayHello:"
        elapsed = time.monotonic() - started
    assert elapsed < 3.0  # never waits for the shadow's 5 s timeout
    assert wait_until(lambda: stuck_shadow.requests >= 1, timeout=5)  # the copies did go out
