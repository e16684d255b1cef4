"""Lua and WASM filters cannot read files, open sockets or reach Python objects: each escape is tried from
inside a filter running in a real ``metaproxy run``, and the outcome travels back to the test as a header.

Lua: the probe script records, per attempt, "blocked" or what leaked, as request mutations; the tinyrpc
upstream echoes request headers into its response, so the client reads the verdicts. WASM: the probe module
calls each WASI file and socket function and traps (failing the request) if any succeeds; a control module
that traps when the call is *refused* proves the calls are really made.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import wasmtime

from metaproxy.message import MessageType
from metaproxy.wasm.filter import WasmFilter
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.reliability.util import config
from tests.wasm.conftest import WAT_PRELUDE

pytestmark = pytest.mark.slow

LUA_PROBE = textwrap.dedent("""
    local function try(name, f)
      local ok, result = pcall(f)
      if ok and result ~= nil and result ~= false then
        verdicts[name] = "ESCAPED: " .. tostring(result)
      else
        verdicts[name] = "blocked"
      end
    end

    function on_request(handle)
      verdicts = {}
      try("io.open", function() return io.open("/etc/passwd"):read("*a") end)
      try("os.execute", function() return os.execute("true") end)
      try("os.getenv", function() return os.getenv("PATH") end)
      try("require_socket", function() return require("socket") end)
      try("package.loadlib", function() return package.loadlib("libc.so.6", "system") end)
      try("dofile", function() return dofile("/etc/passwd") end)
      try("loadfile", function() return loadfile("/etc/passwd") end)
      try("load_bytecode", function() return load("\\27LuaQ\\0\\1\\4\\8\\4\\8\\0") end)
      try("string.dump", function() return string.dump(function() end) end)
      try("python", function() return python.eval("__import__('os')") end)
      try("python_builtins", function() return python.builtins.open("/etc/passwd") end)
      try("debug", function() return debug.getregistry() end)
      try("ffi", function() return require("ffi") end)
      try("jit", function() return jit.version end)
      try("handle_class", function() return handle.__class__ end)
      try("handle_globals", function() return handle.metadata.__globals__ end)
      try("metadata_class", function() return handle:metadata().__class__ end)
      try("collectgarbage", function() return collectgarbage("count") end)
      for name, verdict in pairs(verdicts) do
        handle:mutation():set("x-probe-" .. name, verdict)
      end
    end
""")
LUA_ATTEMPTS = 18

# The smallest Proxy-Wasm module around one request callback (memory, allocator, ABI marker).
WASM_MODULE = """
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_recv" (func $sock_recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $sock_send (param i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 64) "/etc/passwd")
""" + WAT_PRELUDE + """
  (func $check (param $rc i32)
    ;; EXPECT is "allowed" in the probe (trap when a call succeeds, rc 0) and "refused" in the control
    (if (i32.eq (local.get $rc) (i32.const 0)) (then EXPECT_ON_SUCCESS) (else EXPECT_ON_ERROR)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; an iovec at 128: 64 bytes at 256
    (i32.store (i32.const 128) (i32.const 256))
    (i32.store (i32.const 132) (i32.const 64))
    (call $check (call $fd_prestat_get (i32.const 3) (i32.const 512)))
    (call $check (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 11) (i32.const 0)
                                  (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 520)))
    (call $check (call $path_open (i32.const 0) (i32.const 0) (i32.const 64) (i32.const 11) (i32.const 0)
                                  (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 520)))
    (call $check (call $fd_read (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 528)))
    (call $check (call $fd_read (i32.const 3) (i32.const 128) (i32.const 1) (i32.const 528)))
    (call $check (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 532)))
    (call $check (call $sock_recv (i32.const 3) (i32.const 128) (i32.const 1) (i32.const 0) (i32.const 536)
                                  (i32.const 540)))
    (call $check (call $sock_send (i32.const 3) (i32.const 128) (i32.const 1) (i32.const 0) (i32.const 544)))
    (i32.const 0))
)
"""


def build_wasm(folder: Path, name: str, trap_on_success: bool) -> str:
    text = WASM_MODULE.replace("EXPECT_ON_SUCCESS", "unreachable" if trap_on_success else "nop")
    text = text.replace("EXPECT_ON_ERROR", "nop" if trap_on_success else "unreachable")
    path = folder / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(text))
    return str(path)


def test_lua_filter_cannot_reach_files_sockets_or_python(proxy, tinyrpc_server, tmp_path) -> None:
    up = tinyrpc_server("up")
    script = tmp_path / "probe.lua"
    script.write_text(LUA_PROBE)
    p = proxy(config([up.address], filters=[{"name": "lua", "script": str(script)}, {"name": "router"}]))
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("ping")
    assert md["message_type"] is MessageType.RESPONSE, dict(md)
    verdicts = {k[len("x-probe-"):]: v for k, v in md.items() if k.startswith("x-probe-")}
    assert len(verdicts) == LUA_ATTEMPTS, verdicts
    escaped = {k: v for k, v in verdicts.items() if v != "blocked"}
    assert not escaped, f"the Lua sandbox let these through: {escaped}"


def test_wasm_filter_cannot_open_files_or_sockets(proxy, tinyrpc_server, tmp_path) -> None:
    up = tinyrpc_server("up")
    probe = build_wasm(tmp_path, "probe", trap_on_success=True)
    control = build_wasm(tmp_path, "control", trap_on_success=False)
    cfg = config([up.address], filters=[{"name": "wasm", "module": probe}, {"name": "router"}])
    cfg["listeners"].append({**cfg["listeners"][0], "name": "control",
                             "filters": [{"name": "wasm", "module": control}, {"name": "router"}]})
    p = proxy(cfg)
    with TinyRpcClient(*p.address("in")) as client:
        md, _ = client.call("ping")
    assert md["message_type"] is MessageType.RESPONSE, f"a WASI file or socket call succeeded: {dict(md)}"
    with TinyRpcClient(*p.address("control")) as client:
        md, _ = client.call("ping")
    assert md["message_type"] is MessageType.ERROR, "the control module should trap on the refused calls"
    assert [r["method"] for r in up.received.requests] == ["ping"]


@pytest.mark.parametrize("module,name", [("python", "eval"), ("env", "system"), ("os", "open"),
                                         ("wasi_snapshot_preview1", "sock_open")])
def test_wasm_module_importing_host_escapes_is_refused_or_inert(tmp_path, module: str, name: str) -> None:
    """Python objects are reachable only through imports: anything outside the ABI is refused at load,
    and an unknown ``env``/WASI function is bound to a stub that only answers UNIMPLEMENTED."""
    text = f"""(module
      (import "{module}" "{name}" (func $f (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (i32.eqz (call $f (i32.const 0) (i32.const 0))) (then unreachable))
        (i32.const 0)))"""
    path = tmp_path / "escape.wasm"
    path.write_bytes(wasmtime.wat2wasm(text))
    from metaproxy.chain import FilterEnv, RequestContext
    from metaproxy.message import Metadata

    try:
        flt = WasmFilter({"module": str(path)}, FilterEnv(listener="in", protocol="tinyrpc", base_dir=str(tmp_path)))
    except ValueError as exc:
        assert module in ("python", "os") and f"{module}.{name}" in str(exc)
        return
    assert module in ("env", "wasi_snapshot_preview1"), f"{module}.{name} was linked"
    ctx = RequestContext(Metadata(request_id=1, message_type=MessageType.REQUEST, method="m"), "in", "tinyrpc")
    assert flt.on_request(ctx) is None  # the stub answered an error code: the probe did not trap
    flt.close()
