"""What a user sees through the proxy with the tutorial protocol: routing, splits, errors, isolation."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from metaproxy.message import MessageType
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener

pytestmark = pytest.mark.slow


def _two_servers_config(v1, v2, routes, **listener_extra):
    return {
        "listeners": [tinyrpc_listener(routes, **listener_extra)],
        "clusters": [
            {"name": "v1", "endpoints": [v1.address], "connections_per_endpoint": 2},
            {"name": "v2", "endpoints": [v2.address], "connections_per_endpoint": 2},
            {"name": "empty", "endpoints": []},
            {"name": "dead", "endpoints": ["127.0.0.1:1"], "connect_timeout": "200ms"},
        ],
    }


ROUTES = [
    {"name": "hello", "match": {"metadata": [{"name": "method", "exact": "sayHello"}]},
     "route": {"cluster": "v1", "request_mutation": [{"key": "x-route", "value": "hello"}],
               "response_mutation": [{"key": "x-proxy", "value": "metaproxy"}]}},
    {"name": "split", "match": {"metadata": [{"name": "method", "exact": "split"}]},
     "route": {"weighted_clusters": [{"name": "v1", "weight": 20}, {"name": "v2", "weight": 80}]}},
    {"name": "slow", "match": {"metadata": [{"name": "method", "prefix": "sleep"}]},
     "route": {"cluster": "v1", "timeout": "300ms"}},
    {"name": "ghost", "match": {"metadata": [{"name": "method", "exact": "ghost"}]},
     "route": {"cluster": "no-such-cluster"}},
    {"name": "empty", "match": {"metadata": [{"name": "method", "exact": "nobody"}]},
     "route": {"cluster": "empty"}},
    {"name": "dead", "match": {"metadata": [{"name": "method", "exact": "dead"}]},
     "route": {"cluster": "dead"}},
    {"name": "misc", "match": {"metadata": [{"name": "method", "regex": "(close|garbage|other|fire|echo)"}]},
     "route": {"cluster": "v2"}},
]


@pytest.fixture
def setup(tinyrpc_server, proxy):
    v1, v2 = tinyrpc_server("v1"), tinyrpc_server("v2")
    p = proxy(_two_servers_config(v1, v2, ROUTES, max_message_bytes=65536))
    return v1, v2, p


def test_routes_by_method_to_two_upstreams(setup):
    v1, v2, p = setup
    with TinyRpcClient(*p.address()) as client:
        md, body = client.call("sayHello")
        assert body == b"v1:sayHello:"
        md2, body2 = client.call("other")
        assert body2 == b"v2:other:"
        assert md["response_status"].value == "success"


def test_request_mutation_arrives_and_response_mutation_returns(setup):
    v1, _, p = setup
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("sayHello", headers={"x-user": "alice"})
    seen = v1.received.requests[-1]
    assert seen["x-route"] == "hello"
    assert seen["x-user"] == "alice"
    assert md["x-proxy"] == "metaproxy"


def test_weighted_split_20_80_within_5_points(setup):
    v1, v2, p = setup
    n = 2000
    with TinyRpcClient(*p.address()) as client:
        served = [client.call("split")[1].split(b":")[0] for _ in range(n)]
    share_v1 = served.count(b"v1") / n * 100
    assert served.count(b"v1") + served.count(b"v2") == n
    assert 15 <= share_v1 <= 25, f"v1 got {share_v1:.1f}% of the split, expected 20 +- 5"


def test_100_concurrent_clients_share_few_upstream_connections(setup):
    _, v2, p = setup
    errors: list[str] = []
    barrier = threading.Barrier(100)

    def client_thread(index: int) -> None:
        try:
            with TinyRpcClient(*p.address()) as client:
                barrier.wait(timeout=20)
                for k in range(10):
                    rid = index * 1000 + k
                    md, body = client.call("echo", headers={"x-client": str(index)}, request_id=rid)
                    if md["request_id"] != rid or md["x-client"] != str(index):
                        errors.append(f"client {index} got {md['request_id']} / {md.get('x-client')}")
        except Exception as exc:  # reported below
            errors.append(f"client {index}: {exc!r}")

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert v2.received.connections <= 2, f"{v2.received.connections} upstream connections for 100 clients"
    assert len(v2.received.requests) == 1000


@pytest.mark.parametrize("method,kind", [
    ("sleep", "timeout"),
    ("nothing-matches", "route_not_found"),
    ("ghost", "cluster_not_found"),
    ("nobody", "no_healthy_upstream"),
    ("dead", "no_healthy_upstream"),
    ("close", "unspecified"),
    ("garbage", "bad_response"),
])
def test_failures_become_decodable_error_replies_with_the_request_id(setup, method, kind):
    _, _, p = setup
    with TinyRpcClient(*p.address()) as client:
        md, body = client.call(method, body=b"5" if method == "sleep" else b"", request_id=4242)
        assert md["message_type"] is MessageType.ERROR
        assert md["request_id"] == 4242
        assert md["error_kind"] == kind, body
        # the connection is still usable afterwards
        assert client.call("sayHello")[1] == b"v1:sayHello:"


def test_heartbeat_answered_by_the_proxy_and_oneway_forwarded(setup):
    _, v2, p = setup
    with TinyRpcClient(*p.address()) as client:
        reply = client.heartbeat(request_id=77)
        assert reply["message_type"] is MessageType.HEARTBEAT and reply["request_id"] == 77
        client.oneway("fire")
        assert client.call("other")[1] == b"v2:other:"
    assert any(r["method"] == "fire" and r["message_type"] is MessageType.ONEWAY for r in v2.received.requests)
    assert not any(r["message_type"] is MessageType.HEARTBEAT for r in v2.received.requests)


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("bad", [
    b"\x00\x00\x00\x20\x09garbage garbage garbage garbage!!",             # wrong version
    struct.pack(">I", 2**31) + b"\x01\x01",                              # declares 2 GiB
    struct.pack(">I", 70000) + b"\x01\x01\x00\x00" + b"\x00" * 8,        # over max_message_bytes
])
def test_bad_bytes_close_only_that_connection(setup, bad):
    _, _, p = setup
    with TinyRpcClient(*p.address()) as good:
        assert good.call("sayHello")[1] == b"v1:sayHello:"
        evil = socket.create_connection(p.address())
        evil.sendall(bad)
        assert _closed_by_peer(evil)
        evil.close()
        assert good.call("sayHello")[1] == b"v1:sayHello:"
    assert p.proc.poll() is None
