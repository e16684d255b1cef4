"""Hostile clients: each attack is bounded by a listener knob, and a well-behaved client is served alongside.

Every test runs a real ``metaproxy run`` (ProxyProcess) in front of a real
tinyrpc upstream, attacks it with raw sockets, checks the attacker is cut off
(and the counter that says why), and then proves an honest client still gets
its answer from the same proxy.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from metaproxy.message import MessageType, Metadata
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient, encode_message
from tests.reliability.util import closed_by_peer, config, rss_kib, served, stat, wait_stat, wait_until

pytestmark = pytest.mark.slow
L = "metaprotocol.in."


def request_frame(request_id: int = 1, method: str = "ping", body: bytes = b"") -> bytes:
    return encode_message(Metadata(request_id=request_id, message_type=MessageType.REQUEST, service="demo",
                                   method=method), body)


@pytest.fixture
def upstream(tinyrpc_server):
    return tinyrpc_server("up")


def test_garbage_closes_only_its_connection(proxy, upstream) -> None:
    p = proxy(config([upstream.address]))
    with TinyRpcClient(*p.address()) as honest:  # connected before, used after the attack
        with socket.create_connection(p.address()) as bad:
            bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
            assert closed_by_peer(bad, 5) is not None
        assert honest.call("ping")[0]["message_type"] is MessageType.RESPONSE
    wait_stat(p, L + "request_decoding_error")
    served(p)


def test_a_truncated_frame_then_close_costs_nothing(proxy, upstream) -> None:
    p = proxy(config([upstream.address]))
    frame = request_frame()
    for cut in (3, 10, len(frame) - 1):
        with socket.create_connection(p.address()) as bad:
            bad.sendall(frame[:cut])
    served(p)
    assert stat(p, L + "request") == 1  # only the honest one: no half request reached the router


def test_a_frame_declaring_2_gib_is_refused_at_once(proxy, upstream) -> None:
    p = proxy(config([upstream.address], max_message_bytes=1 << 20))
    before = rss_kib(p.proc.pid)
    with socket.create_connection(p.address()) as bad:
        bad.sendall(struct.pack(">I", 2**31) + request_frame()[4:])
        elapsed = closed_by_peer(bad, 5)
    print(f"2 GiB frame: closed after {elapsed}s")
    assert elapsed is not None and elapsed < 2, "the size is known from the header: no need to wait for bytes"
    wait_stat(p, L + "request_decoding_error")
    assert rss_kib(p.proc.pid) - before < 8 * 1024
    served(p)


def test_slowloris_is_closed_by_request_read_timeout(proxy, upstream) -> None:
    p = proxy(config([upstream.address], request_read_timeout="1s", idle_timeout="30s"))
    frame = request_frame(body=b"x" * 20)
    with socket.create_connection(p.address()) as slow:
        start = time.monotonic()
        sent = 0
        slow.settimeout(0.5)
        try:
            while sent < len(frame):  # a byte every 0.5s: the frame would take ~20s to complete
                slow.sendall(frame[sent:sent + 1])
                sent += 1
                served(p)  # everyone else is served meanwhile
                try:
                    if slow.recv(1) == b"":
                        break
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - start
    print(f"slowloris: closed after {elapsed:.2f}s, {sent} of {len(frame)} bytes sent")
    assert sent < len(frame), "the slow client was allowed to finish its request"
    assert 1.0 <= elapsed < 4.0, f"closed after {elapsed:.1f}s with request_read_timeout 1s"
    wait_stat(p, L + "cx_read_timeout")


def test_a_silent_client_is_closed_by_idle_timeout(proxy, upstream) -> None:
    p = proxy(config([upstream.address], idle_timeout="1s"))
    with socket.create_connection(p.address()) as silent:
        with TinyRpcClient(*p.address()) as honest:
            honest.call("ping")
            elapsed = closed_by_peer(silent, 5)
    print(f"idle: closed after {elapsed}s")
    assert elapsed is not None and 0.8 <= elapsed < 3.5, elapsed
    wait_stat(p, L + "cx_idle_timeout")
    served(p)


def test_connection_flood_past_max_connections(proxy, upstream) -> None:
    p = proxy(config([upstream.address], max_connections=20))
    with TinyRpcClient(*p.address()) as honest:
        honest.call("ping")
        flood = [socket.create_connection(p.address()) for _ in range(60)]
        try:
            closed = [s for s in flood if closed_by_peer(s, 0.3) is not None]
            assert len(closed) >= 60 - 19, f"only {len(closed)} of 60 extra connections were refused"
            assert honest.call("ping")[0]["message_type"] is MessageType.RESPONSE
            assert stat(p, L + "cx_overflow") >= 41
            assert stat(p, L + "cx_active") <= 20
        finally:
            for s in flood:
                s.close()
    served(p)


def test_a_client_that_never_reads_is_no_longer_read(proxy, tinyrpc_server) -> None:
    """Backpressure: at max_requests_per_connection in flight the proxy stops reading; RSS stays bounded."""
    up = tinyrpc_server("up")
    p = proxy(config([up.address], max_requests_per_connection=8))
    served(p)
    rss_before = rss_kib(p.proc.pid)
    body = b"y" * 256 * 1024  # each response echoes it: 8 in flight = 2 MiB, not 200 MiB
    frame = request_frame(body=body)
    pushed = 0
    stop = threading.Event()
    sock = socket.create_connection(p.address())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def flood() -> None:
        nonlocal pushed
        sock.settimeout(1.0)
        try:
            while not stop.is_set() and pushed < 800:
                sock.sendall(frame)
                pushed += 1
        except (TimeoutError, OSError):
            pass

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    try:
        writer.join(15)
        assert not writer.is_alive() or pushed < 800
        served(p)  # the proxy as a whole is responsive
        rss_after = rss_kib(p.proc.pid)
        assert pushed < 200, f"the proxy kept reading a client that never reads ({pushed} requests accepted)"
        growth_mib = (rss_after - rss_before) / 1024
        assert growth_mib < 48, f"RSS grew {growth_mib:.1f} MiB under a slow reader"
        print(f"slow reader: {pushed} requests of 256 KiB accepted, RSS +{growth_mib:.1f} MiB")
    finally:
        stop.set()
        sock.close()
        writer.join(5)
    wait_until(lambda: stat(p, L + "cx_active") <= 0, 10, "the slow reader's connection to be gone")
    served(p)


def test_ten_thousand_idle_connections(proxy, upstream) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))  # the proxy inherits it
    count = 10_000
    p = proxy(config([upstream.address], max_connections=count + 100))
    served(p)
    rss_before = rss_kib(p.proc.pid)
    conns: list[socket.socket] = []
    try:
        for _ in range(count):
            conns.append(socket.create_connection(p.address()))
        wait_until(lambda: stat(p, L + "cx_active") >= count, 60, f"{count} connections accepted")
        served(p)
        per_conn = (rss_kib(p.proc.pid) - rss_before) * 1024 / count
        print(f"{count} idle connections: {per_conn / 1024:.1f} KiB RSS each")
        assert per_conn < 64 * 1024, f"{per_conn / 1024:.1f} KiB per idle connection"
    finally:
        for s in conns:
            s.close()
    wait_until(lambda: stat(p, L + "cx_active") <= 1, 30, "idle connections to close")
    served(p)


def test_unsent_replies_past_max_buffered_bytes_pause_reading(proxy, tinyrpc_server) -> None:
    """Watermark: with many requests allowed in flight, unsent reply bytes still stop the reading."""
    up = tinyrpc_server("up")
    p = proxy(config([up.address], max_requests_per_connection=1024, max_buffered_bytes=512 * 1024))
    served(p)
    frame = request_frame(body=b"z" * 128 * 1024)
    pushed = 0
    sock = socket.create_connection(p.address())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(1.0)
    try:
        while pushed < 2000:  # 250 MiB if nothing stopped it
            sock.sendall(frame)
            pushed += 1
    except (TimeoutError, OSError):
        pass
    try:
        wait_stat(p, L + "cx_read_paused", 1)
        assert pushed < 2000, f"{pushed} requests of 128 KiB read from a client that reads nothing"
        served(p)  # other clients are served meanwhile
    finally:
        sock.close()
