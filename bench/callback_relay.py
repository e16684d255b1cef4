"""The floor for a proxy in gevent's event loop callbacks: an L4 relay with no greenlet per read.

    python bench/callback_relay.py LISTEN_PORT UPSTREAM_PORT

Each client connection gets its own upstream connection; a libev I/O watcher
on each side copies what arrives to the other side from inside the hub (the
shape of metaproxy/evented.py, without any decoding). Compare it with
bench/gevent_relay.py, which does the same with a greenlet per direction:
the difference is what greenlet switches and gevent's socket layers cost.
For comparison only (a send the kernel does not take whole is not retried).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import _socket  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from gevent import get_hub  # noqa: E402

_BUFFER = bytearray(65536)
_VIEW = memoryview(_BUFFER)


def _pump(loop: Any, src: _socket.socket, dst: _socket.socket, keep: list[Any]) -> None:
    watcher = loop.io(src.fileno(), 1)

    def on_readable() -> None:
        try:
            n = src.recv_into(_BUFFER)
        except BlockingIOError:
            return
        if not n:
            watcher.stop()
            src.close()
            dst.close()
            return
        dst.send(_VIEW[:n])

    watcher.start(on_readable)
    keep.append(watcher)


def main() -> None:
    listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    loop = get_hub().loop
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(1024)
    listener.setblocking(False)
    keep: list[Any] = []  # watchers and sockets live as long as the process

    def on_accept() -> None:
        while True:
            try:
                fd, _ = listener._accept()
            except BlockingIOError:
                return
            client = _socket.socket(fileno=fd)
            client.setblocking(False)
            upstream = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            upstream.connect(("127.0.0.1", upstream_port))
            upstream.setblocking(False)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keep.extend((client, upstream))
            _pump(loop, client, upstream, keep)
            _pump(loop, upstream, client, keep)

    accepting = loop.io(listener.fileno(), 1)
    accepting.start(on_accept)
    get_hub().join()  # the watchers keep the loop running


if __name__ == "__main__":
    main()
