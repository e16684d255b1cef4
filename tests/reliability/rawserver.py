"""A misbehaving tinyrpc upstream on a raw socket: it reads requests and does what a test tells it to."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

from metaproxy.codec import DecodeStatus, Direction
from metaproxy.message import MessageType, Metadata, ResponseStatus
from metaproxy_codecs.tinyrpc.codec import TinyRpcCodec
from metaproxy_codecs.tinyrpc.sample import encode_message

#: behaviour(sock, request metadata) -> False to stop serving this connection
Behaviour = Callable[[socket.socket, Metadata], bool]


def reply_to(md: Metadata, request_id: int | None = None, body: bytes = b"ok") -> bytes:
    reply = Metadata(request_id=md["request_id"] if request_id is None else request_id,
                     message_type=MessageType.RESPONSE, response_status=ResponseStatus.SUCCESS,
                     service=md["service"], method=md["method"])
    return encode_message(reply, body)


def reset(sock: socket.socket, md: Metadata) -> bool:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    sock.close()
    return False


def stall(sock: socket.socket, md: Metadata) -> bool:
    return True  # read the next request, answer none


def garbage(sock: socket.socket, md: Metadata) -> bool:
    sock.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    return True


def unknown_id(sock: socket.socket, md: Metadata) -> bool:
    sock.sendall(reply_to(md, request_id=10**12))  # an id the proxy never sent on this connection
    return True


def close_mid_response(sock: socket.socket, md: Metadata) -> bool:
    frame = reply_to(md, body=b"z" * 100)
    sock.sendall(frame[:len(frame) // 2])
    sock.close()
    return False


def answer(sock: socket.socket, md: Metadata) -> bool:
    sock.sendall(reply_to(md))
    return True


class RawServer:
    """Accepts on 127.0.0.1, decodes tinyrpc requests, applies ``behaviour`` to each."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self.requests = 0
        self._open: list[socket.socket] = []
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        codec = TinyRpcCodec(direction=Direction.REQUEST)
        buf = bytearray()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while True:
                    md = Metadata()
                    if codec.decode(buf, md) is not DecodeStatus.DONE:
                        break
                    if md["message_type"] is MessageType.HEARTBEAT:
                        continue
                    self.requests += 1
                    if not self.behaviour(conn, md):
                        return
        except OSError:
            return

    def stop(self) -> None:
        self._stopped.set()
        self.sock.close()
        for conn in self._open:
            try:
                conn.close()
            except OSError:
                pass
