"""What Dubbo users see through metaproxy, with real clients (dubbo-ssl-python, dubbo2.js) and a real provider."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from dubbo_ssl.codec.decoder import parse_response_head
from dubbo_ssl.codec.encoder import Object
from dubbo_ssl.common.constants import CLI_HEARTBEAT_REQ_HEAD, CLI_HEARTBEAT_TAIL
from dubbo_ssl.common.exceptions import DubboResponseException

from metaproxy.testing.harness import ProxyProcess
from tests.e2e.dubbo_support.clients import JS_DIR, java_int, java_long, java_string, js_calls, ssl_call
from tests.e2e.dubbo_support.provider import DubboProvider

pytestmark = pytest.mark.slow

GREETER = "org.example.Greeter"
OTHER = "org.example.Other"
SLOW = "org.example.Slow"
HEALTH = "org.example.Health"


def _route(name: str, matchers: dict[str, str], cluster: str, **extra: object) -> dict:
    match = [{"name": key, "exact": value} for key, value in matchers.items()]
    return {"name": name, "match": {"metadata": match}, "route": {"cluster": cluster, **extra}}


ROUTES = [
    _route("canary-user", {"x-user": "canary"}, "p2"),
    _route("other-interface", {"interface": OTHER}, "p3"),
    _route("special-method", {"interface": GREETER, "method": "special"}, "p2"),
    _route("version-2", {"interface": GREETER, "version": "2.0.0"}, "p2"),
    _route("blue-group", {"group": "blue"}, "p3"),
    _route("mutate", {"method": "mutate"}, "p1", request_mutation=[{"key": "x-route", "value": "mutated"}],
           response_mutation=[{"key": "x-served-by", "value": "metaproxy"}]),
    _route("slow", {"interface": SLOW}, "p1", timeout="300ms"),
    _route("health", {"interface": HEALTH}, "p4"),
    _route("greeter", {"interface": GREETER}, "p1"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """Three providers behind one metaproxy Dubbo listener."""
    with DubboProvider("p1") as p1, DubboProvider("p2") as p2, DubboProvider("p3") as p3, \
            DubboProvider("p4") as p4:
        config = {
            "listeners": [{"name": "dubbo-in", "address": "127.0.0.1:0", "protocol": {"codec": "dubbo"},
                           "route_config": {"name": "dubbo-routes", "routes": ROUTES}}],
            "clusters": [{"name": name, "endpoints": [prov.address], "connect_timeout": "1s"}
                         for name, prov in (("p1", p1), ("p2", p2), ("p3", p3))],
        }
        config["clusters"].append({"name": "p4", "endpoints": [p4.address], "connect_timeout": "1s",
                                   "health_check": {"interval": "100ms", "timeout": "1s", "kind": "heartbeat"}})
        proxy = ProxyProcess(config, tmp_path_factory.mktemp("dubbo-proxy")).start()
        try:
            yield {"p1": p1, "p2": p2, "p3": p3, "p4": p4, "address": proxy.address(), "proxy": proxy}
        finally:
            proxy.stop()


def _seen(result: str) -> dict:
    return json.loads(result)


def test_dubbo_ssl_python_arguments_arrive_intact(mesh):
    user = Object("org.example.User", {"id": 7, "name": "ann", "tags": ["a", "b"]})
    seen = _seen(ssl_call(mesh["address"], GREETER, "greet", ["héllo", 42, 2**40, ["x", "y", "z"], user]))
    assert seen["provider"] == "p1"
    assert seen["args"] == ["héllo", 42, 2**40, ["x", "y", "z"], {"id": 7, "name": "ann", "tags": ["a", "b"]}]
    assert seen["parameter_types"] == "Ljava/lang/String;IJ[Ljava/lang/String;Lorg/example/User;"


def test_dubbo2_js_arguments_arrive_intact_including_maps(mesh):
    args = [java_string("s"), java_int(-5), java_long(2**40), {"$class": "[int", "$": [1, 2, 3]},
            {"$class": "java.util.HashMap", "$": {"k": "v", "n": java_int(3)}},
            {"$class": "org.example.User", "$": {"id": java_int(1), "name": java_string("bob")}}]
    [result] = js_calls(mesh["address"], [{"interface": GREETER, "version": "1.0.0", "method": "greet",
                                           "args": args}])
    assert result["err"] is None
    seen = _seen(result["res"])
    assert seen["provider"] == "p1"
    assert seen["args"] == ["s", -5, 2**40, [1, 2, 3], {"k": "v", "n": 3}, {"id": 1, "name": "bob"}]


def test_attachment_value_routes_the_call(mesh):
    canary = _seen(ssl_call(mesh["address"], GREETER, "greet", ["a"], context={"x-user": "canary"}))
    plain = _seen(ssl_call(mesh["address"], GREETER, "greet", ["a"], context={"x-user": "someone"}))
    assert (canary["provider"], plain["provider"]) == ("p2", "p1")
    assert canary["attachments"]["x-user"] == "canary"
    results = js_calls(mesh["address"], [
        {"interface": GREETER, "version": "1.0.0", "method": "greet", "args": [java_string("a")],
         "attachments": {"x-user": "canary"}},
        {"interface": GREETER, "version": "1.0.0", "method": "greet", "args": [java_string("a")]},
    ])
    assert [_seen(r["res"])["provider"] for r in results] == ["p2", "p1"]


def test_routes_by_interface_method_version_and_group(mesh):
    address = mesh["address"]
    assert _seen(ssl_call(address, OTHER, "greet", ["a"]))["provider"] == "p3"
    assert _seen(ssl_call(address, GREETER, "special", ["a"]))["provider"] == "p2"
    assert _seen(ssl_call(address, GREETER, "greet", ["a"], version="2.0.0"))["provider"] == "p2"
    assert _seen(ssl_call(address, GREETER, "greet", ["a"], version="1.0.0"))["provider"] == "p1"
    assert _seen(ssl_call(address, GREETER, "greet", ["a"], group="blue"))["provider"] == "p3"
    results = js_calls(address, [
        {"interface": OTHER, "version": "1.0.0", "method": "m", "args": []},
        {"interface": GREETER, "version": "2.0.0", "method": "m", "args": []},
        {"interface": GREETER, "version": "1.0.0", "method": "special", "args": []},
    ])
    assert [_seen(r["res"])["provider"] for r in results] == ["p3", "p2", "p2"]


def test_request_mutation_adds_an_attachment_the_provider_sees(mesh):
    seen = _seen(ssl_call(mesh["address"], GREETER, "mutate", [1], context={"x-user": "u1"}))
    assert seen["provider"] == "p1"
    assert seen["attachments"]["x-route"] == "mutated" and seen["attachments"]["x-user"] == "u1"
    assert seen["args"] == [1]
    call = mesh["p1"].calls[-1]
    assert call.attachments["x-route"] == "mutated" and call.method == "mutate"


def _frame_from_dubbo2_js(call: dict) -> bytes:
    """A request frame written by dubbo2.js's own encoder."""
    done = subprocess.run(["node", str(JS_DIR / "dubbo2js_frame.js")], capture_output=True, text=True, timeout=60,
                          cwd=JS_DIR, check=True, input=json.dumps(call))
    return bytes.fromhex(done.stdout)


def _exchange(address: tuple[str, int], frame: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(frame)
        data = b""
        while len(data) < 16 or len(data) < 16 + struct.unpack_from(">I", data, 12)[0]:
            chunk = sock.recv(65536)
            assert chunk, "proxy closed the connection before a whole response arrived"
            data += chunk
        return data


def test_response_mutation_reaches_a_dubbo2_js_client_as_attachments(mesh):
    request = _frame_from_dubbo2_js({"requestId": 5, "interface": GREETER, "version": "1.0.0", "method": "mutate",
                                     "args": [java_string("a")]})
    reply = _exchange(mesh["address"], request)
    assert reply[3] == 20
    done = subprocess.run(["node", str(JS_DIR / "hessian_decode.js")], capture_output=True, text=True, timeout=60,
                          cwd=JS_DIR, check=True, input=json.dumps({"hex": reply[16:].hex(), "count": 3}))
    flag, value, attachments = json.loads(done.stdout)
    assert flag == 4 and _seen(value)["method"] == "mutate"
    assert attachments == {"x-provider": "p1", "x-served-by": "metaproxy"}


def test_heartbeat_is_answered_by_the_proxy(mesh):
    frame = bytes(CLI_HEARTBEAT_REQ_HEAD + list(struct.pack("!q", 99)) + CLI_HEARTBEAT_TAIL)
    before = sum(mesh[name].heartbeats for name in ("p1", "p2", "p3"))
    reply = _exchange(mesh["address"], frame)
    heartbeat, length = parse_response_head(reply[:16])
    assert heartbeat == 1 and length == 1 and reply[16:] == b"N"
    assert struct.unpack_from(">q", reply, 4)[0] == 99
    assert sum(mesh[name].heartbeats for name in ("p1", "p2", "p3")) == before


def test_unknown_interface_gets_a_dubbo_error_both_clients_report(mesh):
    with pytest.raises(DubboResponseException) as info:
        ssl_call(mesh["address"], "org.example.Missing", "greet", ["a"])
    assert "route" in str(info.value).lower()
    [result] = js_calls(mesh["address"], [{"interface": "org.example.Missing", "version": "1.0.0",
                                           "method": "greet", "args": [java_string("a")]}])
    assert result["res"] is None and result["err"]["name"] == "DubboDecodeError"
    assert "route" in result["err"]["message"].lower()
    assert all(call.interface != "org.example.Missing" for p in ("p1", "p2", "p3") for call in mesh[p].calls)


def test_concurrent_calls_share_connections_and_get_their_own_answers(mesh):
    calls = []
    for i in range(40):
        call = {"interface": GREETER, "version": "1.0.0", "method": "sleep" if i % 3 == 0 else "greet",
                "args": [java_int((40 - i) * 5 if i % 3 == 0 else i)]}
        if i % 2:
            call["attachments"] = {"x-user": "canary"}
        calls.append(call)
    results = js_calls(mesh["address"], calls, parallel=True)
    for i, result in enumerate(results):
        assert result["err"] is None, f"call #{i}: {result['err']}"
        seen = _seen(result["res"])
        assert seen["args"] == [calls[i]["args"][0]["$"]] and seen["method"] == calls[i]["method"]
        assert seen["provider"] == ("p2" if i % 2 else "p1")


def test_timeout_gets_server_timeout_status(mesh):
    request = _frame_from_dubbo2_js({"requestId": 8, "interface": SLOW, "version": "1.0.0", "method": "sleep",
                                     "args": [java_int(1500)]})
    reply = _exchange(mesh["address"], request)
    assert reply[3] == 31 and struct.unpack_from(">q", reply, 4)[0] == 8
    [result] = js_calls(mesh["address"], [{"interface": SLOW, "version": "1.0.0", "method": "sleep",
                                           "args": [java_int(1500)]}])
    assert result["err"]["name"] == "DubboDecodeError" and "time" in result["err"]["message"].lower()


def test_heartbeat_health_checks_reach_the_provider(mesh):
    # the cluster learns its codec from the first request; from then on checks are Dubbo heartbeats
    assert _seen(ssl_call(mesh["address"], HEALTH, "greet", ["a"]))["provider"] == "p4"
    deadline = time.monotonic() + 5
    while mesh["p4"].heartbeats == 0:
        assert time.monotonic() < deadline, "no Dubbo heartbeat reached the provider within 5s"
        time.sleep(0.05)
    assert _seen(ssl_call(mesh["address"], HEALTH, "greet", ["b"]))["provider"] == "p4"


def test_log_has_no_tracebacks(mesh):
    ssl_call(mesh["address"], GREETER, "greet", ["a"])
    assert "Traceback" not in Path(mesh["proxy"].log_path).read_text(errors="replace")
