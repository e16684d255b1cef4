"""WASM filters inside a real metaproxy process, with tinyrpc clients and upstreams."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import yaml

from metaproxy.message import MessageType
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.wasm.conftest import sample

pytestmark = pytest.mark.slow

ROUTES = [{"name": "all", "route": {"cluster": "v1"}}]


def wasm(name: str, **options) -> dict:
    return {"name": "wasm", "module": sample(name), **options}


def config(filters: list[dict], v1) -> dict:
    return {"listeners": [tinyrpc_listener(ROUTES, filters=filters)],
            "clusters": [{"name": "v1", "endpoints": [v1.address]}]}


def is_error(md, kind: str) -> bool:
    return md["message_type"] is MessageType.ERROR and md.get("error_kind") == kind


def test_c_sample_writes_request_and_response_headers(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([wasm("add_header", config={"header": "x-mesh", "value": "v1", "copy_from": "x-user"})], v1))
    with TinyRpcClient(*p.address()) as client:
        md, body = client.call("sayHello", headers={"x-user": "alice"})
    assert body == b"v1:sayHello:"
    assert md["x-wasm-c-response"] == "sayHello"
    (seen,) = v1.received.requests
    assert seen["x-mesh"] == "v1" and seen["x-mesh-from"] == "alice" and seen["x-user"] == "alice"


def test_assemblyscript_sdk_sample_through_the_proxy(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([wasm("as_filter", root_id="as_filter", config="from-config")], v1))
    with TinyRpcClient(*p.address()) as client:
        md, body = client.call("sayHello")
        assert body == b"v1:sayHello:" and md["x-wasm-as-response"] == "sayHello"
        md, body = client.call("sayHello", headers={"x-as-deny": "yes"})
        assert is_error(md, "permission_denied") and body == b"denied by the AssemblyScript filter"
        for _ in range(50):  # one instance serves request after request
            assert client.call("again")[1] == b"v1:again:"
    first = v1.received.requests[0]
    assert first["x-wasm-as"] == "from-config" and first["x-wasm-as-method"] == "sayHello"
    assert len(v1.received.requests) == 51


def test_deny_sample_answers_with_the_codec_error(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([wasm("deny", config={"key": "x-user", "value": "mallory", "status": 429,
                                            "message": "too many"})], v1))
    with TinyRpcClient(*p.address()) as client:
        md, body = client.call("sayHello", headers={"x-user": "mallory"})
        assert is_error(md, "over_limit") and body == b"too many"
        assert client.call("sayHello", headers={"x-user": "bob"})[1] == b"v1:sayHello:"
    assert [r["x-user"] for r in v1.received.requests] == ["bob"]


def test_dump_sample_shows_what_the_module_saw(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([wasm("dump_headers", config={"key": "x-wasm-dump", "log": 1})], v1))
    with TinyRpcClient(*p.address()) as client:
        client.call("sayHello", headers={"x-user": "alice"}, request_id=5)
    (seen,) = v1.received.requests
    dumped = dict(line.split("=", 1) for line in seen["x-wasm-dump"].splitlines())
    assert dumped["method"] == "sayHello" and dumped["service"] == "demo" and dumped["x-user"] == "alice"
    assert dumped["message_type"] == "request"
    # the module logs the same dump (the key order is the codec's: not asserted)
    assert "wasm[dump_headers] " in p.log() and "request_id=5\n" in p.log()


def test_loop_memory_bomb_and_traps_fail_only_their_request(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(config([wasm("misbehave", vm_config={"timeout": "50ms", "memory_limit": "8MiB"})], v1))
    stop = threading.Event()
    bystander_results: list[bytes] = []
    errors: list[BaseException] = []

    def bystander() -> None:
        try:
            with TinyRpcClient(*p.address(), timeout=10) as other:
                while not stop.is_set():
                    bystander_results.append(other.call("ok")[1])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=bystander)
    thread.start()
    try:
        with TinyRpcClient(*p.address()) as client:
            for method in ("loop", "bomb", "trap", "badptr"):
                md, body = client.call(method)
                assert is_error(md, "unspecified"), method
                assert b"wasm filter misbehave failed" in body
                assert client.call("ok")[1] == b"v1:ok:"  # same connection, next request fine
    finally:
        stop.set()
        thread.join(10)
    assert not errors and bystander_results and set(bystander_results) == {b"v1:ok:"}
    log = p.log()
    assert log.count("misbehave.wasm (filter misbehave) trapped") == 4
    assert "interrupt" in log and "unreachable" in log and "out of bounds memory access" in log


def test_module_without_abi_export_is_refused_at_config_load(tmp_path, wat_module, tinyrpc_server):
    v1 = tinyrpc_server("v1")
    bad = wat_module('(memory (export "memory") 1)', prelude=False)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config([{"name": "wasm", "module": bad}], v1)))
    result = subprocess.run([sys.executable, "-m", "metaproxy.cli", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "listeners[0].filters[0].module:" in result.stderr
    assert "is not a Proxy-Wasm module" in result.stderr and "proxy_abi_version_0_2_1" in result.stderr
