"""The two ways a listener serves requests answer alike: in the loop's callbacks, and on greenlets.

A listener whose filters all say ``blocking = False`` (here: the router only)
serves in the event loop's I/O callbacks (metaproxy/evented.py); one with a
filter that may wait (tests/e2e/waiting_filter.py) serves on greenlets
(metaproxy/downstream.py). Every case runs through both and must give the same
replies and the same stats.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from metaproxy.message import MessageType
from metaproxy.testing.harness import wait_until
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.reliability.util import stat

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

MODES = {
    "callbacks": [{"name": "router"}],
    "greenlets": [{"name": "tests.e2e.waiting_filter:MayWait"}, {"name": "router"}],
}

ROUTES = [
    {"name": "slow", "match": {"metadata": [{"name": "method", "exact": "sleep"}]},
     "route": {"cluster": "up", "timeout": "300ms"}},
    {"name": "flaky", "match": {"metadata": [{"name": "method", "exact": "fail"}]},
     "route": {"cluster": "up", "retry_policy": {"retry_on": ["error"], "num_retries": 2}}},
    {"name": "known", "match": {"metadata": [{"name": "method", "prefix": "say"}]},
     "route": {"cluster": "up", "response_mutation": [{"key": "x-proxy", "value": "metaproxy"}]}},
    {"name": "fire", "match": {"metadata": [{"name": "method", "exact": "fire"}]}, "route": {"cluster": "up"}},
]


def _config_dump(p: Any) -> dict[str, Any]:
    host, port = p.admin_address
    with urllib.request.urlopen(f"http://{host}:{port}/config_dump", timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(params=sorted(MODES))
def served(request, tinyrpc_server, proxy):
    up = tinyrpc_server("up")
    p = proxy({
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [tinyrpc_listener(ROUTES, filters=MODES[request.param])],
        "clusters": [{"name": "up", "endpoints": [up.address], "connections_per_endpoint": 2}],
    }, env={"PYTHONPATH": str(ROOT)})  # the waiting filter is imported from tests/
    return request.param, up, p


def test_the_listener_says_how_it_serves(served) -> None:
    mode, _, p = served
    assert [entry["serving"] for entry in _config_dump(p)["listeners"]] == [mode]


def test_answers_routes_and_mutations_alike(served) -> None:
    mode, up, p = served
    with TinyRpcClient(*p.address()) as client:
        for i in range(20):
            md, body = client.call("sayHello", headers={"n": str(i)})
            assert body == b"up:sayHello:"
            assert md["x-proxy"] == "metaproxy" and md["response_status"] == "success"
        md, _ = client.call("unrouted")
        assert md["error_kind"] == "route_not_found"
    seen = [r for r in up.received.requests if r.get("method") == "sayHello"]
    assert len(seen) == 20
    assert all(r.get("x-seen-by") == ("may_wait" if mode == "greenlets" else None) for r in seen)
    assert stat(p, "metaprotocol.in.request") == 21
    assert stat(p, "metaprotocol.in.response_success") == 20
    assert stat(p, "cluster.up.upstream_rq") == 20
    # the first request opened the connection on a greenlet; the others found it ready
    assert stat(p, "cluster.up.upstream_cx_total") == 1


def test_a_pipeline_of_requests_on_one_connection_is_answered_by_id(served) -> None:
    _, _, p = served
    with TinyRpcClient(*p.address()) as client:
        client.call("sayHi")  # the upstream connection exists: the pipeline goes the ready way
        sent = []
        for i in range(64):  # all written before any is read
            md = client.request(f"say{i}")
            client.send(md)
            sent.append(md["request_id"])
        replies = {}
        for _ in sent:
            md, body = client.read()
            replies[md["request_id"]] = body
    assert replies == {rid: f"up:say{i}:".encode() for i, rid in enumerate(sent)}


def test_timeout_of_a_try_in_flight(served) -> None:
    _, _, p = served
    with TinyRpcClient(*p.address()) as client:
        client.call("sayHi")
        md, _ = client.call("sleep", body=b"1")
        assert md["error_kind"] == "timeout"
        md, body = client.call("sayAgain")  # the connection and the proxy go on
        assert body == b"up:sayAgain:"
    assert stat(p, "cluster.up.upstream_rq_timeout") == 1
    assert stat(p, "metaprotocol.in.local_response_error.timeout") == 1


def test_retries_after_an_error_response(served) -> None:
    _, up, p = served
    with TinyRpcClient(*p.address()) as client:
        client.call("sayHi")
        md, body = client.call("fail")
    assert md["response_status"] == "error" and body == b"up:fail:"  # the last try's answer
    assert len([r for r in up.received.requests if r.get("method") == "fail"]) == 3
    assert stat(p, "cluster.up.upstream_rq_retry") == 2


def test_oneway_reaches_the_upstream(served) -> None:
    _, up, p = served
    with TinyRpcClient(*p.address()) as client:
        client.call("sayHi")
        client.oneway("fire")
        md, _ = client.call("sayAfter")  # same upstream connection, after the oneway
        assert md["response_status"] == "success"
    fired = wait_until(lambda: [r for r in up.received.requests if r.get("method") == "fire"], 10, "oneway")
    assert fired[0]["message_type"] is MessageType.ONEWAY
    assert stat(p, "metaprotocol.in.request_oneway") == 1


def test_a_filter_that_blocks_after_saying_it_never_does_fails_only_its_request(tinyrpc_server, proxy) -> None:
    up = tinyrpc_server("up")
    filters = [{"name": "tests.e2e.waiting_filter:WaitsButSaysItDoesNot"}, {"name": "router"}]
    p = proxy({
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [tinyrpc_listener([{"name": "all", "route": {"cluster": "up"}}], filters=filters)],
        "clusters": [{"name": "up", "endpoints": [up.address]}],
    }, env={"PYTHONPATH": str(ROOT)})
    assert [entry["serving"] for entry in _config_dump(p)["listeners"]] == ["callbacks"]
    with TinyRpcClient(*p.address()) as client:
        md, _ = client.call("nap")
        assert md["error_kind"] == "unspecified"
        md, body = client.call("sayHi")  # the same connection is still served
        assert body == b"up:sayHi:"
    assert "request failed" in p.log()
