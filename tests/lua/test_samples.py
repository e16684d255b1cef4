"""The samples in filters/lua/, called through LuaFilter directly (the e2e tests run them in the proxy)."""

from __future__ import annotations

from metaproxy.message import ErrorType
from tests.lua.conftest import SAMPLES, ctx_for, respond


def sample(make_filter, engine, name: str, **options):
    return make_filter(base_dir=SAMPLES, engine=engine, script=f"{name}.lua", reload_interval=0, **options)


def test_deny_method(make_filter, engine):
    f = sample(make_filter, engine, "deny_method", config={"methods": ["drop", "truncate"]})
    err = f.on_request(ctx_for(method="drop"))
    assert err is not None and err.kind is ErrorType.PERMISSION_DENIED and err.message == "method drop is denied"
    assert f.on_request(ctx_for(method="select")) is None
    assert f.on_request(ctx_for(service="no-method")) is None


def test_deny_method_without_config_denies_nothing(make_filter, engine):
    f = sample(make_filter, engine, "deny_method")
    assert f.on_request(ctx_for(method="drop")) is None


def test_add_header_copies_one_key_into_the_mutation(make_filter, engine):
    f = sample(make_filter, engine, "add_header", config={"from": "x-tenant", "to": "x-forwarded-tenant"})
    ctx = ctx_for(method="ping", x_tenant="acme")
    assert f.on_request(ctx) is None and ctx.mutation == {"x-forwarded-tenant": "acme"}
    ctx = ctx_for(method="ping")
    assert f.on_request(ctx) is None and ctx.mutation == {}


def test_add_header_defaults(make_filter, engine):
    f = sample(make_filter, engine, "add_header")
    ctx = ctx_for(method="ping", x_user="alice")
    f.on_request(ctx)
    assert ctx.mutation == {"x-forwarded-user": "alice"}


def test_canary_sets_the_routing_key_for_tagged_users(make_filter, engine):
    f = sample(make_filter, engine, "canary", config={"users": ["alice"], "prefixes": ["test-", "qa-"]})
    cases = {"alice": True, "test-1": True, "qa-9": True, "bob": False, "atest-": False}
    for user, canary in cases.items():
        ctx = ctx_for(method="ping", x_user=user)
        assert f.on_request(ctx) is None
        assert (ctx.metadata.get("x-canary") == "true") is canary, user
        assert ctx.mutation == {}
    ctx = ctx_for(method="ping")
    f.on_request(ctx)
    assert "x-canary" not in ctx.metadata


def test_canary_with_other_keys(make_filter, engine):
    f = sample(make_filter, engine, "canary", config={"tag": "x-tenant", "key": "lane", "users": ["t1"]})
    ctx = ctx_for(method="ping", x_tenant="t1")
    f.on_request(ctx)
    assert ctx.metadata["lane"] == "true"


def test_count_by_method(make_filter, engine, caplog):
    f = sample(make_filter, engine, "count_by_method", config={"log_every": 2})
    counts = []
    with caplog.at_level("INFO", "metaproxy.lua"):
        for method in ("a", "b", "a", "a", "b"):
            ctx = ctx_for(method=method)
            assert f.on_request(ctx) is None
            respond(f, ctx, method=method)
            counts.append(ctx.response_mutation["x-method-count"])
    assert counts == ["1", "1", "2", "3", "2"]
    assert "count_by_method.lua: a: 2 requests" in caplog.text
    assert "count_by_method.lua: b: 2 requests" in caplog.text
