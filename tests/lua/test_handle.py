"""The handle API as scripts see it, called through LuaFilter directly (no proxy)."""

from __future__ import annotations

import logging

import pytest

from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError
from tests.lua.conftest import ctx_for, respond


def test_metadata_get_is_string_and_missing_is_nil(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  local md = h:metadata()
  h:mutation():set("id", md:get("request_id") .. "/" .. type(md:get("request_id")))
  h:mutation():set("type", md:get("message_type"))
  h:mutation():set("flag", md:get("flag"))
  h:mutation():set("missing", tostring(md:get("nope")))
end""")
    ctx = ctx_for(request_id=42, message_type=MessageType.REQUEST, flag=True)
    assert f.on_request(ctx) is None
    assert ctx.mutation == {"id": "42/string", "type": "request", "flag": "true", "missing": "nil"}


def test_keys_and_pairs_iterate_every_key(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  local keys = h:metadata():keys()
  table.sort(keys)
  h:mutation():set("keys", table.concat(keys, ","))
  local seen = {}
  for k, v in h:metadata():pairs() do seen[#seen + 1] = k .. "=" .. v end
  table.sort(seen)
  h:mutation():set("pairs", table.concat(seen, ","))
end""")
    ctx = ctx_for(method="ping", service="demo", request_id=7)
    assert f.on_request(ctx) is None
    assert ctx.mutation["keys"] == "method,request_id,service"
    assert ctx.mutation["pairs"] == "method=ping,request_id=7,service=demo"


def test_mutation_set_get_remove_and_number_values(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  local m = h:mutation()
  m:set("a", "1"); m:set("b", 2); m:set("c", true); m:set("gone", "x")
  m:remove("gone")
  m:set("echo", tostring(m:get("a")) .. tostring(m:get("gone")))
end""")
    ctx = ctx_for(method="ping")
    assert f.on_request(ctx) is None
    assert ctx.mutation == {"a": "1", "b": "2", "c": "true", "echo": "1nil"}


def test_metadata_set_is_seen_by_later_filters_and_the_router(make_filter, engine):
    f = make_filter(engine=engine, source='function on_request(h) h:metadata():set("x-canary", "true") end')
    ctx = ctx_for(method="ping")
    f.on_request(ctx)
    assert ctx.metadata["x-canary"] == "true"


@pytest.mark.parametrize("kind", list(ErrorType))
def test_respond_error_is_a_local_reply_of_that_kind(make_filter, engine, kind):
    f = make_filter(engine=engine, source=f"""
function on_request(h)
  h:respond_error("{kind.value.upper()}", "go away")
  h:mutation():set("after", "ran")   -- respond_error ends the callback
end""")
    ctx = ctx_for(method="ping")
    err = f.on_request(ctx)
    assert isinstance(err, ProxyError) and err.kind is kind and err.message == "go away"
    assert "after" not in ctx.mutation
    assert f.error_counts == {}


def test_respond_error_cannot_be_swallowed_by_pcall(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  local ok = pcall(h.respond_error, h, "over_limit", "slow down")
  h:mutation():set("after", tostring(ok))
end""")
    err = f.on_request(ctx_for(method="ping"))
    assert err is not None and err.kind is ErrorType.OVER_LIMIT


def test_respond_error_with_unknown_kind_is_a_script_error(make_filter, engine, caplog):
    f = make_filter(engine=engine, source='function on_request(h)\n  h:respond_error("nope", "x")\nend')
    with caplog.at_level(logging.ERROR, "metaproxy.lua"):
        err = f.on_request(ctx_for(method="ping", request_id=5))
    assert err is not None and err.kind is ErrorType.UNSPECIFIED
    assert "inline:2" in caplog.text and "unknown error kind" in caplog.text
    assert f.error_counts == {"inline": 1}


def test_log_functions_reach_python_logging_with_the_script_name(make_filter, engine, caplog):
    f = make_filter(engine=engine, source="""
function on_request(h)
  h:log_debug("d"); h:log_info("i"); h:log_warn("w"); h:log_err("e"); print("p", 1)
end""")
    with caplog.at_level(logging.DEBUG, "metaproxy.lua"):
        f.on_request(ctx_for(method="ping"))
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "metaproxy.lua"]
    assert got == [(logging.DEBUG, "inline: d"), (logging.INFO, "inline: i"), (logging.WARNING, "inline: w"),
                   (logging.ERROR, "inline: e"), (logging.INFO, "inline: p\t1")]


def test_response_path_sees_response_metadata_route_cluster_and_scratch(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  h:scratch().method = h:metadata():get("method")
  h:scratch().route_at_request = h:route_name()
end
function on_response(h)
  local m = h:mutation()
  m:set("method", h:scratch().method)
  m:set("route-at-request", h:scratch().route_at_request)
  m:set("route", h:route_name())
  m:set("cluster", h:cluster())
  m:set("served-by", h:metadata():get("x-served-by"))
end""")
    ctx = ctx_for(method="sayHello")
    assert f.on_request(ctx) is None

    class Route:
        name = "canary"

    ctx.route = Route()
    ctx.cluster_name = "outbound|9090|v2|svc"
    respond(f, ctx, **{"x-served-by": "v2"})
    assert ctx.response_mutation == {"method": "sayHello", "route-at-request": "", "route": "canary",
                                     "cluster": "outbound|9090|v2|svc", "served-by": "v2"}
    assert ctx.mutation == {}


def test_scratch_is_per_request(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h) h:scratch().v = h:metadata():get("v") end
function on_response(h) h:mutation():set("v", tostring(h:scratch().v)) end""")
    a, b, c = ctx_for(v="a"), ctx_for(v="b"), ctx_for(other="c")
    for ctx in (a, b, c):
        f.on_request(ctx)
    for ctx in (c, b, a):
        respond(f, ctx)
    assert [x.response_mutation["v"] for x in (a, b, c)] == ["a", "b", "nil"]


def test_config_table_reaches_the_script(make_filter, engine):
    f = make_filter(engine=engine, config={"name": "x", "list": ["a", "b"], "nested": {"n": 3}}, source="""
local at_load = config.name
function on_request(h)
  local c = h:config()
  h:mutation():set("out", at_load .. c.list[2] .. c.nested.n .. #c.list)
end""")
    ctx = ctx_for(method="ping")
    f.on_request(ctx)
    assert ctx.mutation["out"] == "xb32"


def test_envoy_callback_names_are_accepted(make_filter, engine):
    f = make_filter(engine=engine, source="""
function envoy_on_request(h) h:logInfo("hi"); h:mutation():set("req", "1") end
function envoy_on_response(h) h:mutation():set("resp", "1") end""")
    ctx = ctx_for(method="ping")
    f.on_request(ctx)
    respond(f, ctx)
    assert ctx.mutation == {"req": "1"} and ctx.response_mutation == {"resp": "1"}


def test_response_path_error_fails_the_request(make_filter, engine):
    f = make_filter(engine=engine, source="function on_response(h) error('boom') end")
    ctx = ctx_for(method="ping")
    assert f.on_request(ctx) is None
    with pytest.raises(ProxyError) as info:
        respond(f, ctx)
    assert info.value.kind is ErrorType.UNSPECIFIED and ctx.error is info.value
    assert f.error_counts == {"inline": 1}


def test_bad_arguments_are_script_errors_not_crashes(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  local what = h:metadata():get("what")
  if what == "key" then h:mutation():set({}, "x") end
  if what == "value" then h:mutation():set("k", {}) end
  if what == "handle" then h.extra = 1 end
end""")
    for what in ("key", "value", "handle"):
        err = f.on_request(ctx_for(what=what))
        assert err is not None and err.kind is ErrorType.UNSPECIFIED, what
    assert f.error_counts == {"inline": 3}
    assert f.on_request(ctx_for(what="fine")) is None


def test_metadata_with_non_string_values_reads_like_config_matchers(make_filter, engine):
    f = make_filter(engine=engine, source='function on_request(h) h:mutation():set("b", h:metadata():get("b")) end')
    ctx = ctx_for()
    ctx.metadata["b"] = b"bytes"
    f.on_request(ctx)
    assert ctx.mutation["b"] == Metadata(b=b"bytes").get_str("b")


def test_pairs_on_the_metadata_object_itself_where_lua_has_pairs_metamethods(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  local seen = {}
  for k, v in pairs(h:metadata()) do seen[#seen + 1] = k .. "=" .. tostring(v) end
  table.sort(seen)
  h:mutation():set("pairs", table.concat(seen, ","))
end""")
    ctx = ctx_for(method="ping", a="1")
    f.on_request(ctx)
    if engine.startswith("luajit"):  # Lua 5.1 semantics: no __pairs, the method table is iterated
        assert "get=function" in ctx.mutation["pairs"]
    else:
        assert ctx.mutation["pairs"] == "a=1,method=ping"


def test_bytes_that_are_not_utf8_fail_the_request_not_the_filter(make_filter, engine):
    f = make_filter(engine=engine, source="""
function on_request(h)
  local what = h:metadata():get("what")
  if what == "error" then error(string.char(255, 254)) end
  if what == "reply" then h:respond_error("unspecified", string.char(255)) end
  if what == "set" then h:mutation():set("k", string.char(255)) end
  h:mutation():set("ok", "1")
end""")
    for what in ("error", "reply", "set"):
        err = f.on_request(ctx_for(what=what))
        assert err is not None and err.kind is ErrorType.UNSPECIFIED, what
    ctx = ctx_for(what="fine")
    assert f.on_request(ctx) is None and ctx.mutation == {"ok": "1"}
