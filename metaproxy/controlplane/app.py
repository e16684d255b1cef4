"""The control plane assembled: loader + store + file watcher + gRPC server + admin view.

Tests start it in-process (``ControlPlane(...).start()``, port 0 allowed);
``metaproxy control-plane`` / ``python -m metaproxy.controlplane`` start it
from the command line (see main.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from metaproxy.controlplane.acks import AckRegistry
from metaproxy.controlplane.admin import AdminServer
from metaproxy.controlplane.grpc_server import make_server
from metaproxy.controlplane.loader import Build, Loader
from metaproxy.controlplane.store import ResourceStore
from metaproxy.controlplane.watcher import make_watcher
from metaproxy.settings import parse_address
from metaproxy.xds.convert import route_config_to_dict

log = logging.getLogger("metaproxy.controlplane")


class ControlPlane:
    """Serves the routes of ``paths`` over xDS on ``listen``; ``admin`` None disables the HTTP view."""

    def __init__(self, paths: list[str], listen: str = "127.0.0.1:15010", admin: str | None = "127.0.0.1:15011",
                 watch: bool = True, debounce: float = 0.01, poll: float = 0.02, validate: bool = True,
                 max_workers: int = 256, watcher: str = "auto", removal_grace: float = 0.1) -> None:
        self.paths = paths
        self.listen = listen
        self.admin_address = admin
        self.store = ResourceStore()
        self.registry = AckRegistry()
        self.loader = Loader(paths, validate=validate)
        self.build = Build()
        self.loads = 0
        self.last_load_seconds = 0.0
        self.last_published_at = 0.0  # wall clock, to compare with a proxy's receipt (bench/xds_bench.py)
        self.last_load_cpu_seconds = 0.0
        self._load_lock = threading.Lock()
        self._watcher = (make_watcher(paths, self.reload, watcher, poll=poll, debounce=debounce,
                                      removal_grace=removal_grace) if watch and paths else None)
        self._server: Any = None
        self._admin: AdminServer | None = None
        self.port = 0
        self.admin_port = 0
        self.started_at = 0.0

    def reload(self, changed: Iterable[str] | None = None) -> Build:
        """Bring the files up to date (``changed``: files known to have changed) and publish what changed."""
        with self._load_lock:
            began, cpu = time.perf_counter(), time.thread_time()
            build = self.loader.load(changed)
            changed = self.store.set(build.resources)
            if changed:
                self.last_published_at = time.time()
            self.build = build
            self.loads += 1
            self.last_load_seconds = time.perf_counter() - began
            self.last_load_cpu_seconds = time.thread_time() - cpu
        for problem in build.problems:
            log.error("%s", problem)
        log.info("loaded %d file(s): %d route configuration(s), %d problem(s)%s in %.1f ms",
                 len(build.files), len(build.resources), len(build.problems),
                 "" if changed else " (nothing changed)", self.last_load_seconds * 1000)
        return build

    def start(self) -> ControlPlane:
        self.reload()
        self._server, self.port = make_server(self.store, self.registry, self.listen)
        self._server.start()
        if self.admin_address:
            self._admin = AdminServer(parse_address(self.admin_address), self.views())
            self.admin_port = self._admin.port
            self._admin.start()
        if self._watcher is not None:
            self._watcher.start()
        self.started_at = time.time()
        log.info("serving route discovery on %s (port %d)", self.listen, self.port)
        return self

    def stop(self, grace: float = 0.5) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5)
        if self._admin is not None:
            self._admin.stop()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    # -- admin views -----------------------------------------------------------
    def views(self) -> dict[str, Any]:
        return {"/healthz": self._healthz, "/acks": self.registry.view, "/config": self._config}

    def _healthz(self) -> dict[str, Any]:
        return {"status": "ok", "generation": self.store.generation, "resources": len(self.store.snapshot()),
                "problems": len(self.build.problems), "loads": self.loads, "port": self.port,
                "last_load_ms": round(self.last_load_seconds * 1000, 2), "last_published_at": self.last_published_at,
                "last_load_cpu_ms": round(self.last_load_cpu_seconds * 1000, 2),
                "watcher": self._watcher.kind if self._watcher is not None else "off",
                "last_settle_ms": round(self._watcher.last_settle_ms, 2) if self._watcher is not None else 0.0,
                "work": self.loader.counters.as_dict()}

    def _config(self) -> dict[str, Any]:
        snap = self.store.snapshot()
        return {
            "generation": self.store.generation,
            "resources": {n: {"version": r.version, "route_config": route_config_to_dict(r.config)}
                          for n, r in snap.items()},
            "application_protocols": [asdict(p) for p in self.build.protocols],
            "local_rate_limits": {r.name: asdict(r.local_rate_limit) for r in self.build.routers
                                  if r.local_rate_limit is not None},
            "problems": self.build.problems,
            "files": self.build.files,
        }
