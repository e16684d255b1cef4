"""Fault injection seen by a real Thrift client: an abort is a TApplicationException, a delay only delays."""

from __future__ import annotations

import time

import pytest

from tests.e2e.thrift_support.peers import EchoClient, EchoServer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("lib", ["apache", "thriftpy2"])
def test_abort_fault_reaches_a_real_thrift_client_as_tapplicationexception(proxy, lib):
    server = EchoServer("v1", lib).start()
    try:
        listener = {
            "name": "thrift-in", "address": "127.0.0.1:0",
            "protocol": {"codec": "thrift", "options": {"transport": "framed", "protocol": "binary"}},
            "filters": [
                {"name": "fault", "abort": {"error": "over_limit", "percentage": 100, "message": "injected abort"},
                 "match": {"metadata": [{"name": "method", "exact": "whoami"}]}},
                {"name": "fault", "delay": {"fixed_delay": "300ms", "percentage": 100},
                 "match": {"metadata": [{"name": "method", "exact": "echo"}]}},
                {"name": "router"},
            ],
            "route_config": {"name": "r", "routes": [{"name": "all", "route": {"cluster": "c"}}]},
        }
        p = proxy({"listeners": [listener], "clusters": [{"name": "c", "endpoints": [server.address]}]})
        client = EchoClient(lib, p.address()[1])
        try:
            with pytest.raises(client.TApplicationException) as info:
                client.echo.whoami()
            assert "injected abort" in str(info.value.message)
            assert info.value.type == 6  # INTERNAL_ERROR: an abort is not an unknown method
            client.echo.ping()  # the connection survives the abort
            started = time.monotonic()
            item = client.Item(name="n", tags={"a": "1"})
            assert client.echo.echo(item).name == "n"
            assert time.monotonic() - started >= 0.3
        finally:
            client.close()
    finally:
        server.stop()
