"""One request, three filter languages: Python, Lua and WASM see the same keys and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

LUA_DUMP = """
function on_request(handle)
  local lines = {}
  for k, v in handle:metadata():pairs() do lines[#lines + 1] = k .. "=" .. v end
  table.sort(lines)
  handle:mutation():set("x-lua-dump", table.concat(lines, "\\n"))
end
"""


def test_python_lua_and_wasm_filters_see_identical_metadata(tinyrpc_server, proxy):
    upstream = tinyrpc_server("v1")
    listener = tinyrpc_listener([{"name": "all", "route": {"cluster": "c"}}])
    listener["filters"] = [
        {"name": "wasm", "module": str(ROOT / "filters/wasm/dump_headers.wasm"), "root_id": "dump",
         "config": {"key": "x-wasm-dump"}},
        {"name": "lua", "source": LUA_DUMP},
        {"name": "tests.e2e.crosslang_filter:DumpFilter"},
        {"name": "router"},
    ]
    p = proxy({"listeners": [listener], "clusters": [{"name": "c", "endpoints": [upstream.address]}]},
              env={"PYTHONPATH": str(ROOT)})
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("sayHello", service="greeter",
                            headers={"x-user": "test-1", "version": "v2", "unicode": "naïve ✓"}, request_id=4711)
        assert md["message_type"].value == "response"
    seen = upstream.received.requests[-1]
    dumps = {name: sorted(seen[name].splitlines()) for name in ("x-py-dump", "x-lua-dump", "x-wasm-dump")}
    wasm = sorted(dumps["x-wasm-dump"])
    assert dumps["x-py-dump"] == dumps["x-lua-dump"] == wasm, dumps
    assert "request_id=4711" in wasm and "method=sayHello" in wasm and "service=greeter" in wasm
    assert "x-user=test-1" in wasm and "unicode=naïve ✓" in wasm and "message_type=request" in wasm
