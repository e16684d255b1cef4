"""The traffic filters alone: option validation with key paths, and decisions on one request."""

from __future__ import annotations

import time

import pytest

from metaproxy.chain import FilterEnv, RequestContext
from metaproxy.filters.fault import FaultFilter
from metaproxy.filters.local_ratelimit import LocalRateLimitFilter, TokenBucket
from metaproxy.filters.rbac import RbacFilter
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError
from metaproxy.stats import StatsStore


def _env() -> FilterEnv:
    return FilterEnv(listener="in", protocol="tinyrpc", services={"stats": StatsStore()})


def _ctx(method: str = "sayHello", peer: str = "", address: str = "127.0.0.1:5000", **headers: str):
    md = Metadata(request_id=1, message_type=MessageType.REQUEST, service="demo", method=method, **headers)
    ctx = RequestContext(md, "in", "tinyrpc")
    ctx.peer_identity = peer
    ctx.downstream_address = address
    return ctx


def _stat(env: FilterEnv, scope: str, name: str) -> float:
    return env.services["stats"].value(f"metaprotocol.in.{scope}", name)


# -- fault ---------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({}, "(top): give delay, abort or both"),
    ({"abort": {"error": "nope"}}, "abort.error: unknown error kind 'nope'"),
    ({"abort": {"error": "over_limit", "percentage": 120}}, "abort.percentage: must be between 0 and 100"),
    ({"delay": {"percentage": 5}}, "delay.fixed_delay: required key is missing"),
    ({"delay": {"fixed_delay": "soon"}}, "delay.fixed_delay: expected a duration"),
    ({"abort": {"error": "timeout"}, "match": {"metdata": []}}, "match: unknown key 'metdata'"),
    ({"abort": {"error": "timeout"}, "match": {"metadata": [{"name": "m", "exact": "x", "prefix": "y"}]}},
     "match.metadata[0]: exactly one of"),
    ({"abort": {"error": "timeout", "percentge": 1}}, "abort: unknown key 'percentge'"),
])
def test_fault_rejects_bad_options_with_key_path(options, message):
    with pytest.raises(ValueError) as info:
        FaultFilter(options, _env())
    assert str(info.value).startswith(message)


def test_fault_abort_only_for_matching_requests():
    env = _env()
    f = FaultFilter({"abort": {"error": "OVER_LIMIT", "message": "injected"},
                     "match": {"metadata": [{"name": "method", "exact": "bad"}]}}, env)
    assert f.on_request(_ctx("good")) is None
    err = f.on_request(_ctx("bad"))
    assert isinstance(err, ProxyError) and err.kind is ErrorType.OVER_LIMIT and err.message == "injected"
    assert _stat(env, "fault", "aborts_injected") == 1


def test_fault_percentages_use_the_random_draw():
    draws = iter([0.05, 0.5, 0.09, 0.11])
    f = FaultFilter({"abort": {"error": "unspecified", "percentage": 10}}, _env(), rand=lambda: next(draws))
    results = [f.on_request(_ctx()) is not None for _ in range(4)]
    assert results == [True, False, True, False]


def test_fault_zero_percent_never_fires():
    f = FaultFilter({"abort": {"error": "unspecified", "percentage": 0}}, _env(), rand=lambda: 0.0)
    assert f.on_request(_ctx()) is None


def test_fault_delay_waits_then_continues():
    env = _env()
    f = FaultFilter({"delay": {"fixed_delay": "50ms"}}, env)
    started = time.monotonic()
    assert f.on_request(_ctx()) is None
    assert time.monotonic() - started >= 0.045
    assert _stat(env, "fault", "delays_injected") == 1


# -- local rate limit ---------------------------------------------------------------

def test_token_bucket_refills_in_whole_intervals():
    now = [100.0]
    bucket = TokenBucket(3, 2, 1.0, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.9
    assert not bucket.try_take()
    now[0] += 0.2  # one interval passed: 2 tokens
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]
    now[0] += 10  # many intervals: capped at max_tokens
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]


def test_local_ratelimit_conditions_then_default_and_stats():
    now = [0.0]
    env = _env()
    f = LocalRateLimitFilter({
        "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1s"},
        "conditions": [{"match": {"metadata": [{"name": "method", "exact": "hot"}]},
                        "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"}}],
    }, env, clock=lambda: now[0])
    hot = [f.on_request(_ctx("hot")) for _ in range(3)]
    other = [f.on_request(_ctx("other")) for _ in range(3)]
    assert [e is None for e in hot] == [True, False, False]
    assert [e is None for e in other] == [True, True, False]
    assert hot[1].kind is ErrorType.OVER_LIMIT
    assert _stat(env, "local_ratelimit", "ok") == 3
    assert _stat(env, "local_ratelimit", "rate_limited") == 3


def test_local_ratelimit_without_default_passes_unmatched():
    f = LocalRateLimitFilter({"conditions": [{"match": {"metadata": [{"name": "method", "exact": "hot"}]},
                                              "token_bucket": {"max_tokens": 1, "fill_interval": "1h"}}]}, _env())
    assert all(f.on_request(_ctx("cold")) is None for _ in range(10))


@pytest.mark.parametrize("options, message", [
    ({}, "(top): give token_bucket, conditions or both"),
    ({"token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}, "token_bucket.max_tokens: must be greater than 0"),
    ({"token_bucket": {"max_tokens": 5}}, "token_bucket.fill_interval: required key is missing"),
    ({"conditions": [{"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]},
     "conditions[0].match: required key is missing"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "1s", "fill_rate": 3}},
     "token_bucket: unknown key 'fill_rate'"),
])
def test_local_ratelimit_rejects_bad_options(options, message):
    with pytest.raises(ValueError) as info:
        LocalRateLimitFilter(options, _env())
    assert str(info.value).startswith(message)


# -- rbac --------------------------------------------------------------------------------

RBAC = {
    "policies": [
        {"name": "no-test-users", "action": "deny", "match": {"metadata": [{"name": "x-user", "prefix": "test-"}]}},
        {"name": "prod", "action": "allow",
         "principals": [{"name": "peer_identity", "prefix": "spiffe://cluster.local/ns/prod/"},
                        {"name": "downstream_address", "prefix": "10.1."}]},
    ],
    "default_action": "deny",
}


def test_rbac_first_matching_policy_decides_and_default_denies():
    env = _env()
    f = RbacFilter(RBAC, env)
    prod = "spiffe://cluster.local/ns/prod/sa/web"
    assert f.on_request(_ctx(peer=prod)) is None
    assert f.on_request(_ctx(address="10.1.2.3:999")) is None
    denied = f.on_request(_ctx(peer=prod, **{"x-user": "test-7"}))
    assert denied.kind is ErrorType.PERMISSION_DENIED and "no-test-users" in denied.message
    default = f.on_request(_ctx(peer="spiffe://cluster.local/ns/dev/sa/web"))
    assert default.kind is ErrorType.PERMISSION_DENIED and "default action" in default.message
    assert _stat(env, "rbac", "allowed") == 2
    assert _stat(env, "rbac", "denied") == 2


def test_rbac_shadow_counts_but_never_denies():
    env = _env()
    f = RbacFilter({**RBAC, "shadow": True}, env)
    assert f.on_request(_ctx(peer="")) is None
    assert f.on_request(_ctx(peer="spiffe://cluster.local/ns/prod/x")) is None
    assert _stat(env, "rbac", "shadow_denied") == 1
    assert _stat(env, "rbac", "shadow_allowed") == 1
    assert _stat(env, "rbac", "denied") == 0


@pytest.mark.parametrize("options, message", [
    ({"policies": [{"name": "p", "action": "maybe"}]}, "policies[0].action: 'maybe' is not one of allow, deny"),
    ({"policies": [{"name": "p", "principals": [{"name": "user", "exact": "x"}]}]},
     "policies[0].principals[0]: name 'user' is not one of peer_identity, downstream_address"),
    ({"default_action": "block"}, "default_action: 'block' is not one of allow, deny"),
    ({"policies": [{"name": "p"}, {"name": "p"}]}, "policies[1].name: duplicate policy name 'p'"),
    ({"shadow": "yes"}, "shadow: expected bool"),
])
def test_rbac_rejects_bad_options(options, message):
    with pytest.raises(ValueError) as info:
        RbacFilter(options, _env())
    assert str(info.value).startswith(message)
