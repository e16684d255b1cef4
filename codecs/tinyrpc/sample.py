"""A tiny tinyrpc server and client: the demo upstreams of ``make run`` and the peers of the tests.

Plain threads and blocking sockets (no gevent), so they run inside a pytest
process or as a separate program::

    python -m metaproxy_codecs.tinyrpc.sample server --port 9191 --name v1
    python -m metaproxy_codecs.tinyrpc.sample call --port 9090 --method sayHello --header x-user=test-1

The server answers every request with its own name, echoes the request's
headers as response headers (so tests see mutations arrive) and knows a few
methods that misbehave on purpose: ``sleep`` (body: seconds), ``fail``
(application error), ``close`` (drops the connection), ``garbage`` (answers bytes
that are not tinyrpc).
"""

from __future__ import annotations

import argparse
import itertools
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field

from metaproxy.codec import DecodeStatus, Direction
from metaproxy.message import MessageType, Metadata, ResponseStatus
from metaproxy_codecs.tinyrpc.codec import TinyRpcCodec


def encode_message(md: Metadata, body: bytes = b"") -> bytes:
    out = bytearray()
    TinyRpcCodec()._encode_fresh(md, {}, out, body=body)
    return bytes(out)


def body_of(md: Metadata) -> bytes:
    return md.frame[md.codec_state.body_start:]


@dataclass
class Received:
    """What the server saw: every request's metadata, and connections accepted."""

    requests: list[Metadata] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(socketserver.BaseRequestHandler):
    server: TinyRpcServer

    def handle(self) -> None:
        srv = self.server
        with srv.received.lock:
            srv.received.connections += 1
        codec = TinyRpcCodec(direction=Direction.REQUEST)
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        write_lock = threading.Lock()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while True:
                md = Metadata()
                try:
                    if codec.decode(buffer, md) is not DecodeStatus.DONE:
                        break
                except Exception:
                    return
                with srv.received.lock:
                    srv.received.requests.append(md)
                if md["message_type"] is MessageType.HEARTBEAT:
                    out = bytearray()
                    codec.heartbeat_reply(md, out)
                    sock.sendall(out)
                    continue
                if md["message_type"] is MessageType.ONEWAY:
                    continue
                if md["method"] == "sleep":  # answer later, without blocking other requests
                    threading.Thread(target=self._answer, args=(sock, md, write_lock), daemon=True).start()
                    continue
                if not self._answer(sock, md, write_lock):
                    return

    def _answer(self, sock: socket.socket, md: Metadata, write_lock: threading.Lock) -> bool:
        srv = self.server
        method = md["method"]
        status = ResponseStatus.SUCCESS
        if method == "sleep":
            time.sleep(float(body_of(md) or b"1"))
        elif method == "close":
            sock.close()
            return False
        elif method == "garbage":
            with write_lock:
                sock.sendall(b"\x00\x00\x00\x10this is not tinyrpc at all")
            return True
        elif method == "fail":
            status = ResponseStatus.ERROR
        reply = Metadata({k: v for k, v in md.items() if k not in ("header_size", "body_size")})
        reply["message_type"] = MessageType.RESPONSE
        reply["response_status"] = status
        reply["x-served-by"] = srv.name
        payload = f"{srv.name}:{method}:".encode() + body_of(md)
        try:
            with write_lock:
                sock.sendall(encode_message(reply, payload))
        except OSError:
            return False
        return True


class TinyRpcServer(socketserver.ThreadingTCPServer):
    """A threaded tinyrpc server on 127.0.0.1; ``start()`` runs it in a background thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0, name: str = "server", host: str = "127.0.0.1") -> None:
        super().__init__((host, port), _Handler)
        self.name = name
        self.received = Received()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def address(self) -> str:
        return f"{self.server_address[0]}:{self.server_address[1]}"

    def start(self) -> TinyRpcServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class TinyRpcClient:
    """A blocking client on one connection; ``call`` returns (response metadata, body)."""

    _ids = itertools.count(1)

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.codec = TinyRpcCodec(direction=Direction.RESPONSE)
        self.buffer = bytearray()

    def send(self, md: Metadata, body: bytes = b"") -> None:
        self.sock.sendall(encode_message(md, body))

    def request(self, method: str, service: str = "demo", headers: dict[str, str] | None = None,
                body: bytes = b"", request_id: int | None = None, oneway: bool = False) -> Metadata:
        md = Metadata(request_id=next(self._ids) if request_id is None else request_id,
                      message_type=MessageType.ONEWAY if oneway else MessageType.REQUEST,
                      service=service, method=method)
        md.update(headers or {})
        return md

    def call(self, method: str, service: str = "demo", headers: dict[str, str] | None = None,
             body: bytes = b"", request_id: int | None = None) -> tuple[Metadata, bytes]:
        md = self.request(method, service, headers, body, request_id)
        self.send(md, body)
        return self.read()

    def oneway(self, method: str, service: str = "demo", headers: dict[str, str] | None = None) -> None:
        self.send(self.request(method, service, headers, oneway=True))

    def heartbeat(self, request_id: int = 99) -> Metadata:
        out = bytearray()
        TinyRpcCodec().make_heartbeat(request_id, out)
        self.sock.sendall(out)
        return self.read()[0]

    def read(self) -> tuple[Metadata, bytes]:
        """Read one message; raises ConnectionError if the peer closed first."""
        while True:
            md = Metadata()
            if self.buffer and self.codec.decode(self.buffer, md) is DecodeStatus.DONE:
                return md, body_of(md)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by peer")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TinyRpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tinyrpc demo server and client")
    sub = parser.add_subparsers(dest="cmd", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--name", default="server")
    call = sub.add_parser("call")
    call.add_argument("--host", default="127.0.0.1")
    call.add_argument("--port", type=int, required=True)
    call.add_argument("--service", default="demo")
    call.add_argument("--method", default="sayHello")
    call.add_argument("--header", action="append", default=[], help="KEY=VALUE")
    call.add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cmd == "server":
        server = TinyRpcServer(args.port, args.name)
        print(f"tinyrpc server {args.name} on {server.address}", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        return 0
    headers = dict(h.split("=", 1) for h in args.header)
    with TinyRpcClient(args.host, args.port) as client:
        for _ in range(args.count):
            md, body = client.call(args.method, args.service, headers)
            status = md.get("response_status")
            shown = {k: v for k, v in md.str_items() if k not in ("header_size", "body_size", "message_type")}
            print(f"{status}: {body.decode(errors='replace')}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
