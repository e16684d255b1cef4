"""Thrift through metaproxy with real peers: Apache Thrift and thriftpy2 clients and servers.

One proxy process with a listener per server dialect serves the whole module
(starting one proxy per case would cost more than the cases). Every case
runs what a Thrift user does: a void call, a struct with a map echoed, a
declared exception, a oneway call, and an unrouted method answered by the
proxy itself with a TApplicationException.
"""

from __future__ import annotations

import itertools
import socket
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer

from metaproxy.testing.harness import ProxyProcess, wait_until
from tests.e2e.thrift_support.peers import LIBS, EchoClient, EchoServer

pytestmark = pytest.mark.slow

SERVED = "ping|echo|find|fire|whoami"  # `missing` is declared in the IDL but never routed
TRANSPORTS = ("framed", "buffered")
CODEC_TRANSPORT = {"framed": "framed", "buffered": "unframed", "header": "header"}
UNKNOWN_METHOD = 1


def _key(lib: str, transport: str, protocol: str, mux: bool) -> str:
    return f"{lib}-{transport}-{protocol}-{'mux' if mux else 'plain'}"


def _matrix() -> list[tuple[str, str, str, bool]]:
    shapes = [(lib, t, p, m) for lib, t, p, m in itertools.product(LIBS, TRANSPORTS, ("binary", "compact"),
                                                                   (False, True))]
    return shapes + [("apache", "header", p, m) for p, m in itertools.product(("binary", "compact"), (False, True))]


def _routes(cluster: str, mux: bool) -> list[dict[str, Any]]:
    match = [{"name": "method", "regex": SERVED}]
    if mux:
        return [{"name": f"{cluster}-{service}", "match": {"metadata": [{"name": "service", "exact": service}, *match]},
                 "route": {"cluster": cluster}} for service in ("Echo", "Other")]
    return [{"name": cluster, "match": {"metadata": match}, "route": {"cluster": cluster}}]


def _listener(name: str, transport: str, protocol: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    options = {"transport": CODEC_TRANSPORT[transport], "protocol": protocol} if transport != "auto" else {}
    return {"name": name, "address": "127.0.0.1:0", "protocol": {"codec": "thrift", "options": options},
            "route_config": {"name": f"{name}-routes", "routes": routes}}


class Setup:
    """Every server of the module and the one proxy in front of them."""

    def __init__(self, servers: dict[str, EchoServer], proxy: ProxyProcess) -> None:
        self.servers = servers
        self.proxy = proxy

    def port(self, listener: str) -> int:
        return self.proxy.address(listener)[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    servers: dict[str, EchoServer] = {}
    for lib, transport, protocol, mux in _matrix():
        key = _key(lib, transport, protocol, mux)
        servers[key] = EchoServer(key, lib, transport, protocol, mux)
    servers["B"] = EchoServer("B", "apache", "framed", "binary")
    servers["B-mux"] = EchoServer("B-mux", "apache", "framed", "binary", multiplexed=True)
    servers["any"] = EchoServer("any", "apache", "header", "binary", any_dialect=True)
    for server in servers.values():
        server.start()
    listeners = [_listener(key, t, p, _routes(key, m)) for key, (_, t, p, m) in
                 ((_key(*shape), shape) for shape in _matrix())]
    a, a_mux = _key("apache", "framed", "binary", False), _key("apache", "framed", "binary", True)
    listeners += [
        _listener("by-method", "framed", "binary", [
            {"name": "who", "match": {"metadata": [{"name": "method", "exact": "whoami"}]}, "route": {"cluster": "B"}},
            {"name": "rest", "match": {"metadata": [{"name": "method", "regex": SERVED}]}, "route": {"cluster": a}}]),
        _listener("by-service", "framed", "binary", [
            {"name": "echo", "match": {"metadata": [{"name": "service", "exact": "Echo"}]},
             "route": {"cluster": a_mux}},
            {"name": "other", "match": {"metadata": [{"name": "service", "exact": "Other"}]},
             "route": {"cluster": "B-mux"}}]),
        _listener("header-mutation", "header", "binary", [
            {"name": "canary", "match": {"metadata": [{"name": "method", "regex": SERVED}]},
             "route": {"cluster": _key("apache", "header", "binary", False),
                       "request_mutation": [{"key": "x-route", "value": "canary"}],
                       "response_mutation": [{"key": "x-served-by", "value": "metaproxy"}]}}]),
        _listener("framed-mutation", "framed", "binary", [
            {"name": "dropped", "match": {"metadata": [{"name": "method", "regex": SERVED}]},
             "route": {"cluster": a, "request_mutation": [{"key": "x-route", "value": "canary"}]}}]),
        _listener("auto", "auto", "auto", [
            {"name": "any", "match": {"metadata": [{"name": "method", "regex": SERVED}]},
             "route": {"cluster": "any"}}]),
    ]
    config = {"admin": {"address": "127.0.0.1:0"}, "listeners": listeners,
              "clusters": [{"name": key, "endpoints": [server.address], "connect_timeout": "1s"}
                           for key, server in servers.items()]}
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("thrift-proxy")).start()
    try:
        yield Setup(servers, proxy)
    finally:
        proxy.stop()
        for server in servers.values():
            server.stop()


def _user_session(client: EchoClient, server: EchoServer, mux: bool) -> None:
    """What a Thrift user does, each step asserted on what the client library returns."""
    assert client.echo.ping() is None
    item = client.Item(name="widget", counts={"red": 1, "blue": -(2**40)}, tags=["a", "b"],
                       child=client.Item(name="part", counts={}, tags=[]))
    assert client.echo.echo(item) == item
    with pytest.raises(client.NotFound) as declared:
        client.echo.find("nothing")
    assert declared.value.what == "nothing"
    note = f"note-{uuid.uuid4().hex}"
    assert client.echo.fire(note) is None
    assert server.wait_for_note(note), f"oneway fire({note!r}) never reached {server.name}"
    with pytest.raises(client.TApplicationException) as local:
        client.echo.missing()
    assert local.value.type == UNKNOWN_METHOD
    assert "route_not_found" in local.value.message
    assert client.echo.ping() is None  # the connection survives the local reply
    if mux:
        assert client.other.whoami() == f"{server.name}/Other"


@pytest.mark.parametrize("client_lib,server_lib,transport,mux",
                         list(itertools.product(LIBS, LIBS, TRANSPORTS, (False, True))),
                         ids=lambda v: {False: "plain", True: "multiplexed"}.get(v, v) if isinstance(v, bool) else v)
def test_binary_calls_work_through_the_proxy(setup: Setup, client_lib: str, server_lib: str, transport: str,
                                             mux: bool) -> None:
    key = _key(server_lib, transport, "binary", mux)
    with EchoClient(client_lib, setup.port(key), transport, "binary", mux) as client:
        _user_session(client, setup.servers[key], mux)


@pytest.mark.parametrize("client_lib,server_lib,transport,mux",
                         list(itertools.product(LIBS, LIBS, TRANSPORTS, (False, True))),
                         ids=lambda v: {False: "plain", True: "multiplexed"}.get(v, v) if isinstance(v, bool) else v)
def test_compact_calls_work_through_the_proxy(setup: Setup, client_lib: str, server_lib: str, transport: str,
                                              mux: bool) -> None:
    key = _key(server_lib, transport, "compact", mux)
    with EchoClient(client_lib, setup.port(key), transport, "compact", mux) as client:
        _user_session(client, setup.servers[key], mux)


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("mux", [False, True], ids=["plain", "multiplexed"])
def test_theader_calls_work_through_the_proxy(setup: Setup, protocol: str, mux: bool) -> None:
    key = _key("apache", "header", protocol, mux)
    with EchoClient("apache", setup.port(key), "header", protocol, mux) as client:
        _user_session(client, setup.servers[key], mux)


def test_routes_by_method_to_different_upstreams(setup: Setup) -> None:
    a = setup.servers[_key("apache", "framed", "binary", False)]
    with EchoClient("thriftpy2", setup.port("by-method")) as client:
        assert client.echo.whoami() == "B"
        before = a.handler.calls.count("ping")
        client.echo.ping()
        assert a.handler.calls.count("ping") == before + 1


def test_routes_by_multiplexed_service_to_different_upstreams(setup: Setup) -> None:
    with EchoClient("apache", setup.port("by-service"), multiplexed=True) as client:
        assert client.echo.whoami() == _key("apache", "framed", "binary", True)
        assert client.other.whoami() == "B-mux/Other"


def test_theader_mutation_arrives_at_the_server_and_back(setup: Setup) -> None:
    server = setup.servers[_key("apache", "header", "binary", False)]
    with EchoClient("apache", setup.port("header-mutation"), "header") as client:
        client.protocol.set_header(b"x-user", b"alice")
        assert client.echo.whoami() == server.name
        # the server records headers after it has written its reply: poll for the record
        seen = wait_until(lambda: next((h for h in reversed(server.headers_seen) if h.get("x-user") == "alice"),
                                       None), 5, "the server's record of the request's headers")
        assert seen["x-route"] == "canary"
        assert seen["x-user"] == "alice"
        assert client.protocol.get_headers().get(b"x-served-by") == b"metaproxy"


def test_mutation_on_framed_is_dropped_counted_and_the_call_still_works(setup: Setup) -> None:
    with EchoClient("apache", setup.port("framed-mutation")) as client:
        item = client.Item(name="intact", counts={"k": 7}, tags=[])
        assert client.echo.echo(item) == item
    host, port = setup.proxy.admin_address
    with urllib.request.urlopen(f"http://{host}:{port}/stats?filter=mutation_dropped", timeout=5) as reply:
        stats = reply.read().decode()
    cluster = _key("apache", "framed", "binary", False)
    counts = dict(line.rsplit(": ", 1) for line in stats.splitlines() if ": " in line)
    assert int(counts[f"cluster.{cluster}.mutation_dropped"]) >= 1, stats


@pytest.mark.parametrize("client_lib,transport,protocol",
                         [("apache", "header", "compact"), ("apache", "framed", "binary"),
                          ("thriftpy2", "buffered", "compact"), ("thriftpy2", "framed", "compact")])
def test_auto_listener_accepts_every_dialect(setup: Setup, client_lib: str, transport: str, protocol: str) -> None:
    with EchoClient(client_lib, setup.port("auto"), transport, protocol) as client:
        _user_session(client, setup.servers["any"], False)


@pytest.mark.parametrize("transport", ["framed", "buffered"])
def test_concurrent_clients_with_colliding_seqids_get_their_own_replies(setup: Setup, transport: str) -> None:
    """Every Apache client numbers its calls from 0: the proxy must keep them apart upstream.

    Framed listeners share upstream connections and rewrite seqids; buffered
    ones take an upstream connection per request. Either way each client
    must get exactly its own answers.
    """
    key = _key("apache", transport, "binary", False)
    errors: list[str] = []

    def one_client(index: int) -> None:
        try:
            with EchoClient("apache", setup.port(key), transport) as client:
                for call in range(15):
                    item = client.Item(name=f"c{index}-{call}", counts={"i": index, "n": call}, tags=[])
                    reply = client.echo.echo(item)
                    if reply != item:
                        errors.append(f"client {index} call {call} got {reply}")
        except Exception as exc:  # reported below with the client that failed
            errors.append(f"client {index}: {exc!r}")

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors[:5]
    assert not any(thread.is_alive() for thread in threads)


def test_garbage_closes_only_the_connection_that_sent_it(setup: Setup) -> None:
    key = _key("thriftpy2", "framed", "binary", False)
    with EchoClient("apache", setup.port(key)) as bystander:
        assert bystander.echo.whoami() == key
        with socket.create_connection(("127.0.0.1", setup.port(key)), timeout=5) as raw:
            raw.sendall(b"\x00\x00\x00\x06\xff\xfe\xfd\xfc\xfb\xfa")
            received = b""
            while chunk := raw.recv(4096):  # the proxy may say why, then it must close
                received += chunk
        if received:  # a reply, if any, is a real Thrift exception message
            assert TBinaryProtocol(TFramedTransport(TMemoryBuffer(received))).readMessageBegin()[1] == 3
        assert bystander.echo.whoami() == key
