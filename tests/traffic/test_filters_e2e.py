"""What a client sees of fault injection, rate limits (local and global via RLS + Redis) and RBAC."""

from __future__ import annotations

import time

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.traffic.conftest import burst, is_error
from tests.traffic.rls_server import Rule

pytestmark = pytest.mark.slow

ROUTES = [{"name": "all", "route": {"cluster": "c"}}]


def _config(upstream, filters):
    return {"listeners": [tinyrpc_listener(ROUTES, filters=filters)],
            "clusters": [{"name": "c", "endpoints": [upstream.address]}]}


def test_abort_fault_is_a_protocol_error_only_for_matching_requests(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{"name": "fault", "abort": {"error": "over_limit", "message": "chaos test"},
                                  "match": {"metadata": [{"name": "x-user", "prefix": "test-"}]}}]))
    with TinyRpcClient(*p.address()) as client:
        aborted, body = client.call("sayHello", headers={"x-user": "test-1"})
        served, served_body = client.call("sayHello", headers={"x-user": "alice"})
    assert is_error(aborted, "over_limit") and body == b"chaos test"
    assert served_body == b"u:sayHello:"
    assert [r.get("x-user") for r in upstream.received.requests] == ["alice"]  # the abort never went upstream


def test_abort_percentage_is_roughly_honoured(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{"name": "fault", "abort": {"error": "unspecified", "percentage": 30}}]))
    with TinyRpcClient(*p.address()) as client:
        replies = [client.call("sayHello")[0] for _ in range(600)]
    aborted = sum(1 for r in replies if is_error(r, "unspecified"))
    assert 180 - 55 <= aborted <= 180 + 55  # 30 % of 600, about 5 sigma


def test_delay_fault_delays_only_matching_requests(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{"name": "fault", "delay": {"fixed_delay": "300ms"},
                                  "match": {"metadata": [{"name": "method", "exact": "slowMe"}]}}]))
    with TinyRpcClient(*p.address()) as client:
        started = time.monotonic()
        assert client.call("slowMe")[1] == b"u:slowMe:"
        delayed = time.monotonic() - started
        started = time.monotonic()
        assert client.call("fast")[1] == b"u:fast:"
        quick = time.monotonic() - started
    assert delayed >= 0.3
    assert quick < 0.25


def test_local_rate_limit_is_exact_under_a_burst(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{
        "name": "local_ratelimit",
        "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "1h"},
        "conditions": [{"match": {"metadata": [{"name": "method", "exact": "hot"}]},
                        "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1h"}}],
    }]))
    default = burst(p.address(), "sayHello", 20)
    hot = burst(p.address(), "hot", 10)
    assert sum(1 for r in default if not is_error(r)) == 5
    assert sum(1 for r in default if is_error(r, "over_limit")) == 15
    assert sum(1 for r in hot if not is_error(r)) == 2
    assert sum(1 for r in hot if is_error(r, "over_limit")) == 8
    assert len(upstream.received.requests) == 7


def test_local_rate_limit_refills(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{"name": "local_ratelimit",
                                  "token_bucket": {"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "500ms"}}]))
    first = burst(p.address(), "sayHello", 6)
    time.sleep(0.6)  # the behaviour under test is the refill after one fill_interval
    second = burst(p.address(), "sayHello", 6)
    assert sum(1 for r in first if not is_error(r)) == 3
    assert sum(1 for r in second if not is_error(r)) == 3


def test_global_rate_limit_via_grpc_service_and_redis(tinyrpc_server, rate_limit_service, redis_server, proxy):
    upstream = tinyrpc_server("u")
    address, servicer = rate_limit_service([Rule("sample", (("user", None),), requests_per_unit=3, unit="hour")])
    p = proxy(_config(upstream, [{
        "name": "ratelimit", "server": address, "domain": "sample", "timeout": "2s",
        "descriptors": [{"entries": [{"key": "user", "metadata": "x-user"}]}],
    }]))
    with TinyRpcClient(*p.address()) as client:
        alice = [client.call("sayHello", headers={"x-user": "alice"})[0] for _ in range(5)]
        bob = [client.call("sayHello", headers={"x-user": "bob"})[0] for _ in range(2)]
        anonymous = client.call("sayHello")[0]  # no x-user: no descriptor, no call to the service
    assert [is_error(r, "over_limit") for r in alice] == [False, False, False, True, True]
    assert not any(is_error(r) for r in bob)
    assert not is_error(anonymous)
    assert alice[0].get("x-ratelimit-checked") == "redis"  # response_headers_to_add from the service
    assert servicer.calls == 7
    counters = {k.decode(): int(redis_server.get(k)) for k in redis_server.scan_iter("ratelimit:sample:*")}
    assert sorted(counters.values()) == [2, 5]


def test_global_rate_limit_is_shared_by_two_proxies(tinyrpc_server, rate_limit_service, proxy):
    upstream = tinyrpc_server("u")
    address, _ = rate_limit_service([Rule("shared", (("method", "sayHello"),), requests_per_unit=4, unit="hour")])
    filters = [{"name": "ratelimit", "server": address, "domain": "shared", "timeout": "2s",
                "descriptors": [{"entries": [{"key": "method", "metadata": "method"}]}]}]
    p1, p2 = proxy(_config(upstream, filters)), proxy(_config(upstream, filters))
    results = []
    with TinyRpcClient(*p1.address()) as c1, TinyRpcClient(*p2.address()) as c2:
        for _ in range(4):
            results.append(c1.call("sayHello")[0])
            results.append(c2.call("sayHello")[0])
    assert sum(1 for r in results if not is_error(r)) == 4


@pytest.mark.parametrize("deny, expect_error", [(False, False), (True, True)])
def test_rate_limit_service_down_follows_failure_mode(tinyrpc_server, proxy, deny, expect_error):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{"name": "ratelimit", "server": "127.0.0.1:1", "domain": "d", "timeout": "200ms",
                                  "failure_mode_deny": deny,
                                  "descriptors": [{"entries": [{"key": "generic_key", "value": "all"}]}]}]))
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("sayHello")
    assert is_error(md, "unspecified") is expect_error


def test_rbac_denies_by_metadata_and_default_action(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{
        "name": "rbac", "default_action": "deny",
        "policies": [{"name": "no-admin-calls", "action": "deny",
                      "match": {"metadata": [{"name": "method", "prefix": "admin"}]}},
                     {"name": "local-clients", "action": "allow",
                      "principals": [{"name": "downstream_address", "prefix": "127.0.0.1:"}],
                      "match": {"metadata": [{"name": "service", "exact": "demo"}]}}],
    }]))
    with TinyRpcClient(*p.address()) as client:
        ok = client.call("sayHello")
        admin = client.call("adminReset")
        other = client.call("sayHello", service="billing")
    assert ok[1] == b"u:sayHello:"
    assert is_error(admin[0], "permission_denied") and b"no-admin-calls" in admin[1]
    assert is_error(other[0], "permission_denied") and b"default action" in other[1]


def test_rbac_shadow_mode_lets_everything_through(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    p = proxy(_config(upstream, [{"name": "rbac", "default_action": "deny", "shadow": True}]))
    with TinyRpcClient(*p.address()) as client:
        assert client.call("sayHello")[1] == b"u:sayHello:"
    assert "rbac shadow: would deny" in p.log()


def test_bad_filter_options_stop_the_proxy_with_the_key_path(tinyrpc_server, proxy):
    upstream = tinyrpc_server("u")
    with pytest.raises(RuntimeError) as info:
        proxy(_config(upstream, [{"name": "fault", "abort": {"error": "teapot"}}]))
    assert "filters[0].abort.error: unknown error kind 'teapot'" in str(info.value)
