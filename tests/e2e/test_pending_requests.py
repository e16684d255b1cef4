"""circuit_breakers.max_pending_requests: requests waiting for an upstream connection are bounded."""

from __future__ import annotations

import socket
import threading

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener

pytestmark = pytest.mark.slow


def _unanswered_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A port whose accept queue is full: a new connect waits (SYNs dropped) until it times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(server.getsockname())
        fillers.append(s)
    return server, fillers


def test_requests_past_max_pending_get_over_limit_at_once(proxy):
    server, fillers = _unanswered_listener()
    try:
        address = "{}:{}".format(*server.getsockname())
        p = proxy({
            "listeners": [tinyrpc_listener([{"name": "all", "route": {"cluster": "slow", "timeout": "5s"}}])],
            "clusters": [{"name": "slow", "endpoints": [address], "connect_timeout": "1500ms",
                          "connections_per_endpoint": 1,
                          "circuit_breakers": {"max_pending_requests": 2}}],
        })
        kinds: list[str] = []

        def call() -> None:
            with TinyRpcClient(*p.address()) as client:
                kinds.append(client.call("echo")[0].get("error_kind", "ok"))

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(kinds) == ["no_healthy_upstream"] * 2 + ["over_limit"] * 4, kinds
    finally:
        for s in fillers:
            s.close()
        server.close()
