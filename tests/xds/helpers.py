"""Test helpers: MetaRouter documents, a raw xDS stream client, polling."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from envoy.service.route.v3 import rds_pb2_grpc
from google.rpc.status_pb2 import Status

from metaproxy.testing.harness import wait_until  # noqa: F401  (re-exported for the xds tests)
from metaproxy.xds.resources import ROUTE_TYPE_URL


def meta_router(host: str = "demo", port: int = 9191, split: tuple[int, int] | None = (20, 80),
                name: str = "demo", extra_routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A MetaRouter for ``host`` with a v1/v2 split (or one v1 route when split is None)."""
    if split is None:
        dests = [{"destination": {"host": host, "subset": "v1"}}]
    else:
        dests = [{"destination": {"host": host, "subset": "v1"}, "weight": split[0]},
                 {"destination": {"host": host, "subset": "v2"}, "weight": split[1]}]
    routes = list(extra_routes or []) + [{"name": "split", "route": dests}]
    return {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter",
            "metadata": {"name": name}, "spec": {"hosts": [host], "port": port, "routes": routes}}


def write_docs(path: Path, *docs: dict[str, Any]) -> None:
    """Write YAML documents atomically (write a temp file, then rename), as editors and tools do."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    tmp.replace(path)


class RawStream:
    """A hand-driven xDS stream: send requests, read responses with a timeout."""

    def __init__(self, channel: grpc.Channel, method: str = "sotw") -> None:
        self._out: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        stub = rds_pb2_grpc.RouteDiscoveryServiceStub(channel)
        gen = iter(self._out.get, None)
        self.call = stub.DeltaRoutes(gen) if method == "delta" else stub.StreamRoutes(gen)
        self.error: grpc.RpcError | None = None
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for resp in self.call:
                self.responses.put(resp)
        except grpc.RpcError as exc:
            self.error = exc

    def send(self, req: Any) -> None:
        self._out.put(req)

    def request(self, names: list[str], version: str = "", nonce: str = "", error: str | None = None,
                node: str = "test-node") -> None:
        req = DiscoveryRequest(version_info=version, resource_names=names, type_url=ROUTE_TYPE_URL,
                               response_nonce=nonce, node=Node(id=node))
        if error is not None:
            req.error_detail.CopyFrom(Status(code=3, message=error))
        self.send(req)

    def delta(self, subscribe: list[str] = (), unsubscribe: list[str] = (), nonce: str = "",
              initial: dict[str, str] | None = None, error: str | None = None, node: str = "test-node") -> None:
        req = DeltaDiscoveryRequest(type_url=ROUTE_TYPE_URL, resource_names_subscribe=list(subscribe),
                                    resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
                                    initial_resource_versions=initial or {}, node=Node(id=node))
        if error is not None:
            req.error_detail.CopyFrom(Status(code=3, message=error))
        self.send(req)

    def next(self, timeout: float = 5.0) -> Any:
        return self.responses.get(timeout=timeout)

    def expect_nothing(self, wait: float = 0.3) -> None:
        """Assert no response arrives within ``wait`` seconds (a bounded negative check)."""
        try:
            resp = self.responses.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected response: version {getattr(resp, 'version_info', '')} "
                             f"nonce {resp.nonce}")

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()


class ControlPlaneProcess:
    """``metaproxy control-plane`` as a subprocess on given ports; ready when /healthz answers."""

    def __init__(self, routes_dir: Path, log_path: Path, port: int, admin_port: int,
                 extra: list[str] | None = None, timing: tuple[str, str] | None = ("10ms", "20ms")) -> None:
        """``timing`` is (poll, debounce); None keeps the command's defaults."""
        self.routes_dir = routes_dir
        self.log_path = log_path
        self.port = port
        self.admin_port = admin_port
        self.extra = extra or []
        self.timing = timing
        self.proc: Any = None

    def start(self, timeout: float = 15.0) -> ControlPlaneProcess:
        import subprocess
        import sys

        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metaproxy.cli", "control-plane", "--config-dir", str(self.routes_dir),
             "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin_port}",
             *(["--poll", self.timing[0], "--debounce", self.timing[1]] if self.timing else []), *self.extra],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.proc.poll() is not None or self.get("/healthz"), timeout, 0.02)
        if self.proc.poll() is not None:
            raise RuntimeError(f"control plane exited: {self.log_path.read_text()}")
        return self

    def get(self, path: str) -> Any:
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)
            self._log.close()
