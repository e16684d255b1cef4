"""A small HTTP view of the control plane: /healthz, /acks, /config.

/healthz answers 200 once the gRPC server is up (with the load's problem
count), /acks shows what each connected proxy has ACKed or NACKed, /config
the resources served (as metaproxy route dicts), the ApplicationProtocols,
the local rate limits kept in the model, and the current problems.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AdminServer:
    """Serves JSON views given as callables (path -> () -> dict)."""

    def __init__(self, address: tuple[str, int], views: dict[str, Callable[[], Any]]) -> None:
        views_ref = views

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                view = views_ref.get(self.path.split("?", 1)[0])
                if view is None:
                    self._send(404, {"error": f"no such page; try {', '.join(sorted(views_ref))}"})
                    return
                self._send(200, view())

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body, indent=2, sort_keys=True, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(address, Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,), name="cp-admin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
