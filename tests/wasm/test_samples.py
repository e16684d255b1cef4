"""The committed sample modules, driven directly through WasmFilter with RequestContexts."""

from __future__ import annotations

import logging

from metaproxy.message import ErrorType, ProxyError
from metaproxy.stats import StatsStore
from metaproxy.wasm.filter import WasmFilter
from tests.wasm.conftest import env, make_filter, request, respond, sample


def test_c_add_header_reads_json_config_and_writes_both_maps():
    f = make_filter(sample("add_header"), config={"header": "x-mesh", "value": "v1", "copy_from": "x-user",
                                                   "response_header": "x-served-method"})
    ctx = request("sayHello", **{"x-user": "alice"})
    assert f.on_request(ctx) is None
    assert ctx.mutation == {"x-mesh": "v1", "x-mesh-from": "alice"}
    f.on_response(respond(ctx))
    assert ctx.response_mutation == {"x-served-method": "sayHello"}


def test_c_add_header_defaults_without_config():
    f = make_filter(sample("add_header"))
    ctx = request()
    f.on_request(ctx)
    f.on_response(respond(ctx))
    assert ctx.mutation == {"x-wasm-c": "added-by-c"}
    assert ctx.response_mutation == {"x-wasm-c-response": "ping"}


def test_c_add_header_refuses_a_config_that_is_not_json():
    try:
        make_filter(sample("add_header"), config="plain text")
    except ValueError as exc:
        assert "proxy_on_configure refused" in str(exc)
    else:
        raise AssertionError("a module refusing its configuration must fail the config load")


def test_deny_by_metadata_is_a_local_reply_with_the_status_kind():
    stats = StatsStore()
    f = WasmFilter({"module": sample("deny"), "plugin_name": "deny",
                    "config": {"key": "x-user", "value": "mallory", "status": 429, "message": "slow down"}},
                   env(stats=stats))
    reply = f.on_request(request(**{"x-user": "mallory"}))
    assert isinstance(reply, ProxyError)
    assert reply.kind is ErrorType.OVER_LIMIT and reply.message == "slow down"
    assert f.on_request(request(**{"x-user": "bob"})) is None
    assert f.on_request(request()) is None
    assert stats.value("wasm.deny", "denied") == 1  # proxy_define_metric/increment feed our stats


def test_deny_status_403_is_permission_denied():
    f = make_filter(sample("deny"), config={"key": "method", "value": "drop", "status": 403})
    reply = f.on_request(request("drop"))
    assert reply.kind is ErrorType.PERMISSION_DENIED and reply.message == "denied by wasm filter"


def test_dump_headers_sees_every_metadata_pair_as_strings_with_mutations_applied(caplog):
    ctx = request("sayHello", request_id=42, **{"x-user": "alice", "x-n": 3, "x-flag": True})
    ctx.mutation["x-user"] = "bob"      # an earlier filter's write is what later filters read
    ctx.mutation["x-added"] = "yes"
    with caplog.at_level(logging.INFO, logger="metaproxy.wasm"):  # the level is read when the VM starts
        f = make_filter(sample("dump_headers"), config={"key": "x-dump", "log": 1})
        f.on_request(ctx)
    lines = ctx.mutation["x-dump"].splitlines()
    assert lines == ["request_id=42", "message_type=request", "service=demo", "method=sayHello",
                     "x-user=bob", "x-n=3", "x-flag=true", "x-added=yes"]
    assert any("x-user=bob" in r.getMessage() and "wasm[dump_headers]" in r.getMessage() for r in caplog.records)


def test_assemblyscript_sdk_module_runs_unchanged():
    f = make_filter(sample("as_filter"), root_id="as_filter", config={"greeting": "hi"})
    ctx = request("sayHello")
    assert f.on_request(ctx) is None
    assert ctx.mutation == {"x-wasm-as": '{"greeting":"hi"}', "x-wasm-as-method": "sayHello"}
    f.on_response(respond(ctx))
    assert ctx.response_mutation == {"x-wasm-as-response": "sayHello"}


def test_assemblyscript_sdk_string_config_is_passed_as_is_and_local_response_works():
    f = make_filter(sample("as_filter"), root_id="as_filter", config="plain")
    ctx = request()
    f.on_request(ctx)
    assert ctx.mutation["x-wasm-as"] == "plain"
    reply = f.on_request(request(**{"x-as-deny": "yes"}))
    assert reply.kind is ErrorType.PERMISSION_DENIED
    assert reply.message == "denied by the AssemblyScript filter"


def test_assemblyscript_sdk_many_requests_reuse_one_instance():
    f = make_filter(sample("as_filter"), root_id="as_filter", config="x")
    vm = f._vm
    for i in range(300):
        ctx = request(request_id=i)
        assert f.on_request(ctx) is None
        if i % 3:  # some requests never get a response: they are finished when dropped
            f.on_response(respond(ctx))
        del ctx
    assert f._vm is vm and vm.generation == 0 and vm.broken is None
    f.on_request(request())  # drains the finished-elsewhere queue
    assert len(vm.host.streams) <= 1


def test_assemblyscript_unknown_root_id_fails_at_load():
    try:
        make_filter(sample("as_filter"), root_id="nope")
    except ValueError as exc:
        assert "start-up failed" in str(exc)
    else:
        raise AssertionError("an SDK that has no root context for root_id must fail the config load")
