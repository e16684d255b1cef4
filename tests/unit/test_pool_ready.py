"""MultiplexPool.ready_connection: the evented path takes a connection only when picking it needs nothing else.

Anything else (connecting, opening another connection, retiring an idle one, a
closed one to prune) returns None, and the request goes the greenlet way,
whose pick does that work.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from metaproxy.stats import ClusterStats, StatsStore
from metaproxy.upstream.endpoint import Endpoint
from metaproxy.upstream.pool import Limits, MultiplexConnection, MultiplexPool
from metaproxy_codecs.tinyrpc import TinyRpcCodec

_SOCKETS: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _SOCKETS:
        _SOCKETS.pop().close()


def FakeConnection(pending: int = 0, connected: bool = True, closed: bool = False,
                   idle_for: float = 0.0) -> MultiplexConnection:
    """A never-connected MultiplexConnection with the state ready_connection reads set by hand (a real
    one, not a look-alike: compiled, the pool checks what its list holds)."""
    conn = MultiplexConnection(Endpoint("127.0.0.1", 1), TinyRpcCodec(), ClusterStats(StatsStore(), "c"),
                               Limits(8, 8), 1.0)
    if connected:
        conn.sock = socket.socket()  # never connected: nothing here reads or writes it
        _SOCKETS.append(conn.sock)
    conn.closed = closed
    conn.pending = dict.fromkeys(range(pending))
    conn.last_used = time.monotonic() - idle_for
    return conn


def pool(*conns: MultiplexConnection, size: int = 2, idle_timeout: float = 60.0) -> MultiplexPool:
    p = MultiplexPool(Endpoint("127.0.0.1", 1), lambda: None, size, ClusterStats(StatsStore(), "c"),
                      Limits(8, 8), 1.0, None, idle_timeout)
    p.connections = list(conns)
    return p


def test_the_least_busy_of_a_full_pool() -> None:
    a, b = FakeConnection(pending=3), FakeConnection(pending=1)
    assert pool(a, b).ready_connection() is b


def test_no_connection_yet_means_connect_first() -> None:
    assert pool().ready_connection() is None


def test_a_connection_still_connecting_is_not_ready() -> None:
    assert pool(FakeConnection(connected=False), FakeConnection()).ready_connection() is None


def test_a_busy_connection_with_room_for_another_opens_one_first() -> None:
    assert pool(FakeConnection(pending=1), size=2).ready_connection() is None
    idle = FakeConnection()
    assert pool(idle, size=2).ready_connection() is idle  # an idle one needs no other


def test_a_closed_connection_is_pruned_and_the_pick_left_to_the_greenlet_way() -> None:
    live = FakeConnection()
    p = pool(FakeConnection(closed=True), live)
    assert p.ready_connection() is None
    assert p.connections == [live]
    assert p.ready_connection() is live


def test_a_connection_idle_past_idle_timeout_is_left_to_be_retired() -> None:
    assert pool(FakeConnection(idle_for=5.0), size=1, idle_timeout=1.0).ready_connection() is None
    fresh = FakeConnection(idle_for=0.1)
    assert pool(fresh, size=1, idle_timeout=1.0).ready_connection() is fresh
