"""Hostile upstreams: every in-flight request is answered within its timeout, the bad connection is dropped,
a counter says what happened, and the proxy keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from metaproxy.message import MessageType
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.reliability import rawserver
from tests.reliability.rawserver import RawServer
from tests.reliability.util import config, stat, wait_stat

pytestmark = pytest.mark.slow
C = "cluster.c1."
TIMEOUT = 1.0


@pytest.fixture
def raw() -> Iterator:
    servers: list[RawServer] = []

    def make(behaviour: rawserver.Behaviour) -> RawServer:
        server = RawServer(behaviour)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def call_many(proxy, count: int = 4) -> list[tuple[dict, float]]:
    """``count`` requests in flight on one connection; each answer with the seconds it took."""
    with TinyRpcClient(*proxy.address(), timeout=TIMEOUT + 5) as client:
        start = time.monotonic()
        for i in range(count):
            client.send(client.request("ping", request_id=100 + i))
        answers = []
        for _ in range(count):
            md, _ = client.read()
            answers.append((dict(md), time.monotonic() - start))
    assert sorted(a["request_id"] for a, _ in answers) == [100 + i for i in range(count)]
    return answers


def start(proxy, server: RawServer):
    return proxy(config([server.address], route={"timeout": f"{TIMEOUT}s"}))


def assert_errors(answers: list[tuple[dict, float]], kind: str | None, within: float) -> None:
    for md, elapsed in answers:
        assert md["message_type"] is MessageType.ERROR, md
        if kind is not None:
            assert md.get("error_kind") == kind, md
        assert elapsed < within, f"answered after {elapsed:.2f}s"


def then_recovers(proxy, server: RawServer) -> None:
    """Swap the misbehaving endpoint's behaviour for a good one: a new connection serves again."""
    server.behaviour = rawserver.answer
    deadline = time.monotonic() + 5
    while True:
        with TinyRpcClient(*proxy.address(), timeout=TIMEOUT + 5) as client:
            md, body = client.call("ping")
        if md["message_type"] is MessageType.RESPONSE:
            break
        assert time.monotonic() < deadline, f"never recovered: {dict(md)}"
    assert body == b"ok"


def test_upstream_reset(proxy, raw) -> None:
    server = raw(rawserver.reset)
    p = start(proxy, server)
    answers = call_many(p)
    assert_errors(answers, None, TIMEOUT)  # a reset is known at once: no need to wait for the timeout
    wait_stat(p, C + "upstream_cx_destroy_with_active_rq")
    then_recovers(p, server)
    assert server.connections >= 2  # the reset connection was replaced


def test_upstream_stalls_forever(proxy, raw) -> None:
    server = raw(rawserver.stall)
    p = start(proxy, server)
    answers = call_many(p)
    assert_errors(answers, "timeout", TIMEOUT + 1.0)
    assert all(elapsed >= TIMEOUT * 0.9 for _, elapsed in answers)
    assert stat(p, C + "upstream_rq_timeout") == 4
    assert stat(p, "metaprotocol.in.local_response_error.timeout") == 4
    then_recovers(p, server)


def test_upstream_answers_garbage(proxy, raw) -> None:
    server = raw(rawserver.garbage)
    p = start(proxy, server)
    answers = call_many(p)
    assert_errors(answers, "bad_response", TIMEOUT)
    wait_stat(p, C + "upstream_rq_decoding_error")
    then_recovers(p, server)
    assert server.connections >= 2  # the garbage connection was dropped, a new one made


def test_upstream_answers_an_id_never_sent(proxy, raw) -> None:
    server = raw(rawserver.unknown_id)
    p = start(proxy, server)
    answers = call_many(p, 1)
    assert_errors(answers, "bad_response", TIMEOUT)
    wait_stat(p, C + "upstream_rq_unknown_id")
    then_recovers(p, server)
    assert server.connections >= 2


def test_upstream_closes_mid_response(proxy, raw) -> None:
    server = raw(rawserver.close_mid_response)
    p = start(proxy, server)
    answers = call_many(p)
    assert_errors(answers, None, TIMEOUT)
    wait_stat(p, C + "upstream_cx_destroy_with_active_rq")
    then_recovers(p, server)
