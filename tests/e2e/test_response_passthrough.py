"""Upstream responses are only framed and passed back unless something on the listener reads them.

``Codec.decode_passthrough`` reads a response's fixed header and nothing
else; a pool uses it until a request whose response must be read whole is
sent to it: a route with a ``response_mutation``, a listener with a response
filter or an observer of response metadata. Clients must get the same
replies either way; ``/config_dump`` says which way each pool decodes.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from metaproxy.testing.harness import wait_until
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.reliability.util import stat

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

PLAIN = {"name": "plain", "match": {"metadata": [{"name": "method", "exact": "plain"}]}, "route": {"cluster": "up"}}
MUTATED = {"name": "mutated", "match": {"metadata": [{"name": "method", "exact": "mutated"}]},
           "route": {"cluster": "up", "response_mutation": [{"key": "x-proxy", "value": "metaproxy"}]}}


def _pools(p: Any) -> list[dict[str, Any]]:
    host, port = p.admin_address
    with urllib.request.urlopen(f"http://{host}:{port}/config_dump", timeout=10) as resp:
        dump = json.loads(resp.read())
    return [pool for cluster in dump["clusters"] for pool in cluster["pools"]]


def _start(proxy, up, **extra: Any) -> Any:
    listener = tinyrpc_listener([PLAIN, MUTATED], filters=extra.pop("filters", None))
    return proxy({"admin": {"address": "127.0.0.1:0"}, "listeners": [listener],
                  "clusters": [{"name": "up", "endpoints": [up.address]}], **extra},
                 env={"PYTHONPATH": str(ROOT)})


def test_responses_pass_through_until_a_route_mutates_them(tinyrpc_server, proxy) -> None:
    up = tinyrpc_server("up")
    p = _start(proxy, up)
    with TinyRpcClient(*p.address()) as client:
        for i in range(5):
            md, body = client.call("plain", headers={"n": str(i)})
            assert body == b"up:plain:" and md["response_status"] == "success" and "x-proxy" not in md
        assert [pool["responses"] for pool in _pools(p)] == ["passed through"]
        md, body = client.call("mutated")
        assert body == b"up:mutated:" and md["x-proxy"] == "metaproxy"
        assert [pool["responses"] for pool in _pools(p)] == ["decoded"]  # for good: connections are shared
        md, body = client.call("plain")
        assert body == b"up:plain:" and "x-proxy" not in md
    assert stat(p, "metaprotocol.in.response_success") == 7


def test_a_response_filter_reads_responses_whole(tinyrpc_server, proxy) -> None:
    script = ("function on_response(handle)\n"
              "  handle:mutation():set('x-seen', handle:metadata():get('service'))\n"
              "end\n")
    up = tinyrpc_server("up")
    p = _start(proxy, up, filters=[{"name": "lua", "source": script}, {"name": "router"}])
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("plain")
    assert md.get("x-seen") == md["service"]  # a key only the whole decode reads
    assert [pool["responses"] for pool in _pools(p)] == ["decoded"]


def test_an_access_log_of_response_metadata_reads_responses_whole(tinyrpc_server, proxy, tmp_path) -> None:
    log = tmp_path / "access.log"
    up = tinyrpc_server("up")
    p = _start(proxy, up, access_log=[{"path": str(log), "format": "%METHOD% %RESPONSE_METADATA(service)%"}])
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("plain")
    assert [pool["responses"] for pool in _pools(p)] == ["decoded"]
    wait_until(lambda: log.exists() and log.read_text().strip(), timeout=10)
    assert log.read_text().split() == ["plain", md["service"]]


def test_a_json_access_log_and_an_error_filter_leave_responses_passed_through(tinyrpc_server, proxy, tmp_path) -> None:
    log = tmp_path / "access.json"
    up = tinyrpc_server("up")
    p = _start(proxy, up, access_log=[{"path": str(log), "format": "json"},
                                      {"path": str(tmp_path / "errors.log"), "format": "%METHOD%",
                                       "filter": {"status": "error"}}])
    with TinyRpcClient(*p.address()) as client:
        client.call("plain")
    assert [pool["responses"] for pool in _pools(p)] == ["passed through"]
    wait_until(lambda: log.exists() and log.read_text().strip(), timeout=10)
    line = json.loads(log.read_text())
    assert (line["method"], line["response_status"]) == ("plain", "success")
