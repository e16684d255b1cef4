"""Benchmark scenarios: one protocol each, with its upstream server and its load generator.

The runner (bench/run.py) knows nothing about any protocol. A scenario says
how to start an upstream server for its protocol, how to configure a
metaproxy listener for it, and how to drive load at an address and read
back a :class:`LoadResult`. Adding Thrift ping, a Dubbo call or
redis-benchmark later is one more subclass registered in ``SCENARIOS``.
"""

from __future__ import annotations

import json
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import Service, start_with_ready_line


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured. ``total_requests`` includes the warm-up, for CPU per request."""

    rps: float
    p50_us: float
    p99_us: float
    requests: int
    total_requests: int
    errors: int
    seconds: float


@dataclass(frozen=True)
class LoadSpec:
    connections: int
    seconds: float
    warmup: float
    depth: int = 1


class Scenario(ABC):
    """One protocol's part of a benchmark run."""

    name: str = ""
    description: str = ""

    def __init__(self, build: Path, workdir: Path) -> None:
        self.build = build
        self.workdir = workdir

    def check(self) -> None:
        """Raise with a helpful message if a tool this scenario needs is missing."""

    @abstractmethod
    def start_server(self) -> Service:
        """Start the upstream server on a free 127.0.0.1 port; the caller stops it."""

    @abstractmethod
    def listener_protocol(self) -> dict[str, Any]:
        """The ``protocol`` section of a metaproxy listener for this scenario."""

    @abstractmethod
    def run_load(self, port: int, spec: LoadSpec) -> LoadResult:
        """Drive load at ``127.0.0.1:port`` and return what was measured."""


class TinyRpcScenario(Scenario):
    """The tutorial codec: C closed-loop load generator against a C echo server."""

    name = "tinyrpc"
    description = "tinyrpc request (16-byte body) -> response (8-byte body)"

    @property
    def load_tool(self) -> Path:
        return self.build / "tinyrpc_load"

    @property
    def server_tool(self) -> Path:
        return self.build / "tinyrpc_server"

    def check(self) -> None:
        for tool in (self.load_tool, self.server_tool):
            if not tool.exists():
                raise RuntimeError(f"{tool} is missing: run `make bench-tools` (or `make bench`)")

    def start_server(self) -> Service:
        return start_with_ready_line("tinyrpc_server", [str(self.server_tool), "-p", "0"],
                                     self.workdir / "tinyrpc_server.log")

    def listener_protocol(self) -> dict[str, Any]:
        return {"codec": "tinyrpc"}

    def run_load(self, port: int, spec: LoadSpec) -> LoadResult:
        cmd = [str(self.load_tool), "-p", str(port), "-c", str(spec.connections), "-d", str(spec.depth),
               "-t", str(spec.seconds), "-w", str(spec.warmup), "-j"]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=spec.seconds + spec.warmup + 30)
        try:
            data = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeError(f"tinyrpc_load failed ({done.returncode}): {done.stderr.strip()}") from None
        if done.returncode != 0:
            raise RuntimeError(f"tinyrpc_load reported failures: {data} {done.stderr.strip()}")
        return LoadResult(rps=data["rps"], p50_us=data["p50_us"], p99_us=data["p99_us"],
                          requests=data["requests"], total_requests=data["total_requests"],
                          errors=data["errors"], seconds=data["seconds"])


SCENARIOS: dict[str, type[Scenario]] = {TinyRpcScenario.name: TinyRpcScenario}
