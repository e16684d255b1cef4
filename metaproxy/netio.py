"""Socket writes on the hot path, without gevent's per-call Python layers when they are not needed.

gevent's ``sendall`` goes through several Python frames and a timeout check
per call; a send that the kernel takes whole (the usual case on a healthy
connection) needs none of that. Try the real socket once, and fall back to
gevent's cooperative ``sendall`` only for what is left.
"""

from __future__ import annotations

import socket
import ssl

#: One receive buffer for the whole process. Safe under gevent: between
#: ``recv_into`` returning and the caller copying the bytes out there is no
#: switch, and it saves 64 KiB per connection (10,000 idle connections).
READ_SIZE = 65536
SCRATCH = bytearray(READ_SIZE)
SCRATCH_VIEW = memoryview(SCRATCH)


def kernel_socket(sock: socket.socket) -> socket.socket | None:
    """The real socket under a gevent one, for one non-blocking try (None for TLS: it must encrypt)."""
    return None if isinstance(sock, ssl.SSLSocket) else getattr(sock, "_sock", None)


def send_now(raw: socket.socket, data: bytes | bytearray | memoryview) -> int:
    """Bytes of ``data`` the kernel takes at once from the non-blocking ``raw`` socket (0 if none)."""
    try:
        return raw.send(data)
    except (BlockingIOError, InterruptedError):
        return 0


def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    raw = kernel_socket(sock)
    if raw is None:
        sock.sendall(data)
        return
    sent = send_now(raw, data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
