"""A small threaded Dubbo2 provider for end-to-end tests.

No Dubbo2 server exists on PyPI or npm, so this is the upstream. Its Hessian2
decoding and encoding are dubbo-ssl-python's (``dubbo_ssl.codec``), never
metaproxy's codec, so a bug in our codec cannot hide behind the same bug here.
Only the fixed 16-byte header is packed by hand.

Every call is recorded (``provider.calls``) and answered with a JSON string
describing what the provider saw, so a test can assert on it from either side.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dubbo_ssl.codec.decoder import Response as SslDecoder
from dubbo_ssl.codec.encoder import Request as SslEncoder

_HEADER = struct.Struct(">HBBQI")
_PRIMITIVES = "ZBCDFIJSV"


def _encode(value: Any) -> bytes:
    """One Hessian2 value, written by dubbo-ssl-python's encoder."""
    return bytes(b & 0xFF for b in SslEncoder({})._encode_single_value(value))


def _parameter_count(desc: str) -> int:
    count, i = 0, 0
    while i < len(desc):
        while desc[i] == "[":
            i += 1
        i = desc.index(";", i) + 1 if desc[i] == "L" else i + 1
        count += 1
    return count


@dataclass
class Call:
    provider: str
    dubbo_version: str
    interface: str
    version: str | None
    method: str
    parameter_types: str
    args: list[Any]
    attachments: dict[str, Any]


@dataclass
class DubboProvider:
    """``with DubboProvider("p1") as p1:`` listens on ``p1.address`` (127.0.0.1, a free port)."""

    name: str
    calls: list[Call] = field(default_factory=list)
    heartbeats: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False

    def __enter__(self) -> DubboProvider:
        threading.Thread(target=self._accept, name=f"provider-{self.name}", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._sock.close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    # -- serving ----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        send_lock = threading.Lock()

        def answer(body: bytes, request_id: int, two_way: bool) -> None:
            reply = self._handle(body, request_id)
            if two_way:
                with send_lock:
                    try:
                        conn.sendall(reply)
                    except OSError:
                        pass  # the proxy gave up on this request and closed, or the test ended

        with conn:
            while True:
                header = _recv_exact(conn, 16)
                if header is None:
                    return
                magic, flag, _status, request_id, length = _HEADER.unpack(header)
                body = _recv_exact(conn, length) if length else b""
                if magic != 0xDABB or body is None:
                    return
                if flag & 0x20:  # event: a heartbeat, answered with a null body
                    with self._lock:
                        self.heartbeats += 1
                    if flag & 0x40:
                        with send_lock:
                            conn.sendall(_HEADER.pack(0xDABB, 0x22, 20, request_id, 1) + b"N")
                    continue
                # one thread per request, like a real provider's pool: replies may come back out of order
                threading.Thread(target=answer, args=(body, request_id, bool(flag & 0x40)), daemon=True).start()

    def _handle(self, body: bytes, request_id: int) -> bytes:
        reader = SslDecoder(bytearray(body))
        dubbo_version, interface, version, method, desc = (reader.read_next() for _ in range(5))
        args = [reader.read_next() for _ in range(_parameter_count(desc or ""))]
        attachments = reader.read_next() if reader.length() > 0 else {}
        call = Call(self.name, dubbo_version, interface, version, method, desc, args, attachments or {})
        with self._lock:
            self.calls.append(call)
        if method == "sleep" and args and isinstance(args[0], int):
            time.sleep(args[0] / 1000)  # lets tests see timeouts and out-of-order replies
        seen = json.dumps({"provider": self.name, "interface": interface, "version": version, "method": method,
                           "parameter_types": desc, "args": args, "attachments": attachments}, default=str,
                          sort_keys=True)
        if dubbo_version == "2.0.2":  # a client that reads response attachments: send some
            payload = _encode(4) + _encode(seen) + b"H" + _encode("x-provider") + _encode(self.name) + b"Z"
        else:
            payload = _encode(1) + _encode(seen)
        return _HEADER.pack(0xDABB, 0x02, 20, request_id, len(payload)) + payload


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)
