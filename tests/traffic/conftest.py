"""Fixtures of the traffic tests: a real redis-server, the rate limit service, misbehaving upstreams."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from metaproxy.message import MessageType, Metadata
from metaproxy.testing.harness import free_port
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.traffic.rls_server import Rule, serve


@pytest.fixture
def redis_server(tmp_path) -> Iterator[redis.Redis]:
    """A real redis-server on a free port, no persistence; a client to it."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run `make deps-traffic`"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
    yield client
    client.close()
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def rate_limit_service(redis_server) -> Iterator[Callable[[list[Rule]], tuple[str, Any]]]:
    """Factory: ``rate_limit_service(rules)`` -> ("127.0.0.1:PORT", servicer), stopped after the test."""
    servers = []

    def start(rules: list[Rule]) -> tuple[str, Any]:
        server, port, servicer = serve(0, redis_server, rules)
        servers.append(server)
        return f"127.0.0.1:{port}", servicer

    yield start
    for server in servers:
        server.stop(grace=None)


class MisbehavingServer:
    """An upstream that accepts and reads requests but never answers.

    ``mode="reset"`` closes the connection after the first bytes (a crashing
    server); ``mode="hang"`` keeps it open in silence (a stuck server).
    """

    def __init__(self, mode: str = "reset") -> None:
        assert mode in ("reset", "hang")
        self.mode = mode
        self._held: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.connections = 0
        self.requests = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> MisbehavingServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        if self.mode == "hang":
            self._held.append(conn)
        try:
            while conn.recv(65536):
                self.requests += 1
                if self.mode == "reset":
                    break
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self._held:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def bad_server() -> Iterator[Callable[..., MisbehavingServer]]:
    """Factory of MisbehavingServer upstreams (``bad_server("reset")``, ``bad_server("hang")``)."""
    servers: list[MisbehavingServer] = []

    def make(mode: str = "reset") -> MisbehavingServer:
        server = MisbehavingServer(mode).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def burst(address: tuple[str, int], method: str, n: int, headers: dict[str, str] | None = None,
          body: bytes = b"") -> list[Metadata]:
    """Send ``n`` requests back to back on one connection, then read the ``n`` replies (by request id)."""
    with TinyRpcClient(*address) as client:
        ids = []
        for _ in range(n):
            md = client.request(method, headers=headers)
            ids.append(md["request_id"])
            client.send(md, body)
        replies = {}
        for _ in range(n):
            md, _body = client.read()
            replies[md["request_id"]] = md
    return [replies[i] for i in ids]


def is_error(md: Metadata, kind: str | None = None) -> bool:
    """The reply is the proxy's local error (of ``kind``, when given)."""
    if md.get("message_type") is not MessageType.ERROR:
        return False
    return kind is None or md.get("error_kind") == kind


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(interval)
    return True
