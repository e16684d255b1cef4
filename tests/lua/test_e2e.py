"""The Lua filter inside a real metaproxy process, with tinyrpc clients and upstreams."""

from __future__ import annotations

import threading
import time

import pytest

from metaproxy.message import MessageType
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.lua.conftest import SAMPLES, write_atomic

pytestmark = pytest.mark.slow

DEFAULT_ROUTE = [{"name": "all", "route": {"cluster": "v1"}}]


def lua(name: str, **options) -> dict:
    return {"name": "lua", "script": str(SAMPLES / f"{name}.lua"), **options}


def config(filters: list[dict], v1, v2=None, routes=None) -> dict:
    clusters = [{"name": "v1", "endpoints": [v1.address]}]
    if v2 is not None:
        clusters.append({"name": "v2", "endpoints": [v2.address]})
    return {"listeners": [tinyrpc_listener(routes or DEFAULT_ROUTE, filters=filters)], "clusters": clusters}


def is_error(md, kind: str) -> bool:
    return md["message_type"] is MessageType.ERROR and md.get("error_kind") == kind


def test_deny_method_sample(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([lua("deny_method", config={"methods": ["drop"]})], v1))
    with TinyRpcClient(*p.address()) as client:
        md, body = client.call("drop")
        assert is_error(md, "permission_denied") and body == b"method drop is denied"
        md, body = client.call("select")
        assert body == b"v1:select:"
    assert [r["method"] for r in v1.received.requests] == ["select"]


def test_add_header_sample(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([lua("add_header", config={"from": "x-user", "to": "x-forwarded-user"})], v1))
    with TinyRpcClient(*p.address()) as client:
        client.call("sayHello", headers={"x-user": "alice"})
        client.call("sayHello")
    first, second = v1.received.requests
    assert first["x-forwarded-user"] == "alice" and first["x-user"] == "alice"
    assert "x-forwarded-user" not in second


def test_canary_sample_steers_the_router(tinyrpc_server, proxy):
    v1, v2 = tinyrpc_server("v1"), tinyrpc_server("v2")
    routes = [{"name": "canary", "match": {"metadata": [{"name": "x-canary", "exact": "true"}]},
               "route": {"cluster": "v2"}},
              {"name": "stable", "route": {"cluster": "v1"}}]
    p = proxy(config([lua("canary", config={"prefixes": ["test-"], "users": ["carol"]})], v1, v2, routes))
    with TinyRpcClient(*p.address()) as client:
        served = {user: client.call("sayHello", headers={"x-user": user})[1].split(b":")[0]
                  for user in ("test-1", "carol", "alice", "tester")}
        assert client.call("sayHello")[1].startswith(b"v1:")
    assert served == {"test-1": b"v2", "carol": b"v2", "alice": b"v1", "tester": b"v1"}


def test_count_by_method_sample(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([lua("count_by_method")], v1))
    with TinyRpcClient(*p.address()) as client, TinyRpcClient(*p.address()) as other:
        counts = [(c.call(m)[0].get("x-method-count")) for c, m in
                  ((client, "a"), (other, "a"), (client, "b"), (other, "a"), (client, "b"))]
    assert counts == ["1", "2", "1", "3", "2"]


def test_all_samples_in_one_directory(tinyrpc_server, proxy, tmp_path):
    v1, v2 = tinyrpc_server("v1"), tinyrpc_server("v2")
    routes = [{"name": "canary", "match": {"metadata": [{"name": "x-canary", "exact": "true"}]},
               "route": {"cluster": "v2"}},
              {"name": "stable", "route": {"cluster": "v1"}}]
    cfg = {"users": ["carol"], "methods": ["drop"], "from": "x-user", "to": "x-forwarded-user"}
    p = proxy(config([{"name": "lua", "directory": str(SAMPLES), "config": cfg}], v1, v2, routes))
    with TinyRpcClient(*p.address()) as client:
        assert is_error(client.call("drop")[0], "permission_denied")
        md, body = client.call("sayHello", headers={"x-user": "carol"})
        assert body.startswith(b"v2:") and md["x-method-count"] == "1"
        assert md["x-forwarded-user"] == "carol"  # the server echoes request headers


def test_a_runaway_script_fails_only_its_request(tinyrpc_server, proxy, tmp_path):
    v1 = tinyrpc_server("v1")
    script = tmp_path / "bad.lua"
    script.write_text("""
function on_request(h)
  local m = h:metadata():get("method")
  if m == "spin" then while true do end end
  if m == "hog" then local t = {} for i = 1, 1e8 do t[i] = {} end end
  if m == "boom" then error("kaboom") end
end""")
    p = proxy(config([{"name": "lua", "script": str(script), "step_limit": 100000,
                       "max_memory": "4MB"}], v1))
    with TinyRpcClient(*p.address()) as client, TinyRpcClient(*p.address()) as bystander:
        for method in ("spin", "hog", "boom"):
            md, _ = client.call(method)
            assert is_error(md, "unspecified"), method
            assert bystander.call("ok")[1] == b"v1:ok:"
        assert client.call("ok")[1] == b"v1:ok:"  # same connection, still open
    log = p.log()
    assert "bad.lua failed" in log and "step limit of 100000 exceeded at" in log and "kaboom" in log


def test_memory_limit_through_the_proxy(tinyrpc_server, proxy, tmp_path):
    v1 = tinyrpc_server("v1")
    script = tmp_path / "hog.lua"
    script.write_text("function on_request(h)\n  local s = string.rep('x', 64 * 1024 * 1024)\nend\n")
    p = proxy(config([{"name": "lua", "script": str(script), "max_memory": "4MB"}], v1))
    with TinyRpcClient(*p.address()) as client:
        assert is_error(client.call("x")[0], "unspecified")
    assert "memory limit exceeded" in p.log()


def test_hot_reload_under_load_with_zero_connection_errors(tinyrpc_server, proxy, tmp_path):
    v1 = tinyrpc_server("v1")
    folder = tmp_path / "scripts"
    folder.mkdir()
    tag = folder / "tag.lua"
    tag.write_text('function on_request(h) h:mutation():set("x-version", "v0") end\n')
    p = proxy(config([{"name": "lua", "directory": str(folder), "reload_interval": "100ms"}], v1))
    stop = threading.Event()
    versions: list[list[str]] = [[] for _ in range(8)]
    failures: list[BaseException] = []

    def client_loop(index: int) -> None:
        try:
            with TinyRpcClient(*p.address(), timeout=5) as client:
                while not stop.is_set():
                    md, body = client.call("ping")
                    if md["message_type"] is not MessageType.RESPONSE or body != b"v1:ping:":
                        raise AssertionError(f"bad reply {dict(md)} {body!r}")
                    versions[index].append(md.get("x-version", "?"))  # the server echoes request headers
        except BaseException as exc:  # any error here is a dropped connection or a bad reply
            failures.append(exc)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(len(versions))]
    for t in threads:
        t.start()
    try:
        _wait(lambda: all(v for v in versions), 5)
        for n in range(1, 4):
            write_atomic(tag, f'function on_request(h) h:mutation():set("x-version", "v{n}") end\n')
            took = _wait(lambda n=n: v1.received.requests[-1].get("x-version") == f"v{n}", 1.0)
            assert took < 1.0
        # A file added, then a broken edit that must not take effect.
        write_atomic(folder / "zz_extra.lua", 'function on_request(h) h:mutation():set("x-extra", "1") end\n')
        _wait(lambda: v1.received.requests[-1].get("x-extra") == "1", 1.0)
        write_atomic(tag, "function on_request(h) syntax error here end\n")
        time.sleep(0.5)  # several polls: the previous version must still serve
        assert v1.received.requests[-1].get("x-version") == "v3"
        (folder / "zz_extra.lua").unlink()
        _wait(lambda: v1.received.requests[-1].get("x-extra") is None, 1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert v1.received.connections >= 1
    assert all(v and v[-1] == "v3" for v in versions)
    assert "keeping the previous version" in p.log()


def _wait(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - started



def test_sandbox_inside_the_proxy(tinyrpc_server, proxy, tmp_path):
    v1 = tinyrpc_server("v1")
    script = tmp_path / "probe.lua"
    script.write_text("""
local names = {"os", "io", "debug", "package", "require", "dofile", "loadfile", "python", "collectgarbage"}
function on_request(h)
  local found = {}
  for _, n in ipairs(names) do if _G[n] ~= nil then found[#found + 1] = n end end
  local ok = pcall(function() return h.__class__.__init__ end)
  h:mutation():set("x-globals", table.concat(found, ","))
  h:mutation():set("x-escape", tostring(ok))
end""")
    p = proxy(config([{"name": "lua", "script": str(script)}], v1))
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("ping")
    assert md["x-globals"] == "" and md["x-escape"] == "false"
