"""The floor for a gevent proxy: an L4 relay in the fewest Python lines, for comparison only.

    python bench/gevent_relay.py LISTEN_PORT UPSTREAM_PORT

Each client connection gets its own upstream connection and two greenlets
copying bytes (``recv_into`` a buffer, ``sendall`` it) with no decoding. Its
CPU per request is what gevent and the kernel cost before any layer-7 work,
so metaproxy's figure minus this one is what the framework itself spends.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


def _pump(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(65536)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])

    def handle(client: socket.socket, _address: object) -> None:
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = gevent.spawn(_pump, upstream, client)
        _pump(client, upstream)
        back.join()
        upstream.close()

    StreamServer(("127.0.0.1", listen_port), handle, backlog=1024).serve_forever()


if __name__ == "__main__":
    main()
