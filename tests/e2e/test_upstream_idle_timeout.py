"""Cluster idle_timeout: the proxy closes pooled upstream connections before the upstream's own idle cutoff.

(An upstream that drops idle connections itself, as thriftpy2's server does
after 3 s, can otherwise race a request the proxy just wrote on one: found by
the 30-minute soak, docs/reliability.md.)
"""

from __future__ import annotations

import time

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener

pytestmark = pytest.mark.slow


def test_an_idle_pooled_connection_is_replaced_not_reused(tinyrpc_server, proxy):
    upstream = tinyrpc_server("v1")
    listener = tinyrpc_listener([{"name": "all", "route": {"cluster": "c"}}])
    p = proxy({"listeners": [listener],
               "clusters": [{"name": "c", "endpoints": [upstream.address], "idle_timeout": "300ms"}]})
    with TinyRpcClient(*p.address()) as client:
        assert client.call("echo")[1] == b"v1:echo:"
        assert client.call("echo")[1] == b"v1:echo:"
        assert upstream.received.connections == 1  # reused while in use
        time.sleep(0.5)  # idle for longer than idle_timeout: the condition under test, not a readiness wait
        assert client.call("echo")[1] == b"v1:echo:"
    assert upstream.received.connections == 2
