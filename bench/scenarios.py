"""Benchmark scenarios: one protocol each, with its upstream server and its load generator.

The runner (bench/run.py) knows nothing about any protocol. A scenario says
how to start an upstream server for its protocol, how to configure a
metaproxy listener for it, and how to drive load at an address and read
back a :class:`LoadResult`. A new protocol is one more subclass, listed in
catalog.py.
"""

from __future__ import annotations

import json
import socket
import struct
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

    def required_tools(self) -> list[Path]:
        """Executables this scenario runs; :meth:`check` insists they exist."""
        return []

    def check(self) -> None:
        """Raise with a helpful message if a tool this scenario needs is missing."""
        for tool in self.required_tools():
            if not tool.exists():
                raise RuntimeError(f"{tool} is missing: run `make bench-tools` (or `make bench`)")

    def effective_spec(self, spec: LoadSpec) -> LoadSpec:
        """The load this scenario really runs for ``spec`` (a scenario may fix its own pipelining depth)."""
        return spec

    @abstractmethod
    def start_server(self) -> Service:
        """Start the upstream server on a free 127.0.0.1 port; the caller stops it."""

    @abstractmethod
    def listener_protocol(self) -> dict[str, Any]:
        """The ``protocol`` section of a metaproxy listener for this scenario."""

    @abstractmethod
    def run_load(self, port: int, spec: LoadSpec) -> LoadResult:
        """Drive load at ``127.0.0.1:port`` and return what was measured."""

    def open_idle(self, port: int, count: int) -> list[socket.socket]:
        """Open ``count`` connections that each served one request and now sit idle.

        The default only connects; a scenario that can make a request should,
        so the proxy has allocated what a used connection holds.
        """
        return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


class RpcScenario(Scenario):
    """A protocol spoken by the C tools (bench/rpc_load.c, bench/rpc_server.c, facts in bench/rpcproto.h)."""

    protocol = ""  # the -P name of the C tools

    @property
    def load_tool(self) -> Path:
        return self.build / "rpc_load"

    @property
    def server_tool(self) -> Path:
        return self.build / "rpc_server"

    def required_tools(self) -> list[Path]:
        return [self.load_tool, self.server_tool]

    def start_server(self) -> Service:
        return start_with_ready_line(f"rpc_server -P {self.protocol}",
                                     [str(self.server_tool), "-P", self.protocol, "-p", "0"],
                                     self.workdir / "rpc_server.log")

    def run_load(self, port: int, spec: LoadSpec) -> LoadResult:
        cmd = [str(self.load_tool), "-P", self.protocol, "-p", str(port), "-c", str(spec.connections),
               "-d", str(spec.depth), "-t", str(spec.seconds), "-w", str(spec.warmup), "-j"]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True,
                              timeout=spec.seconds + spec.warmup + 30)
        try:
            data = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeError(f"rpc_load failed ({done.returncode}): {done.stderr.strip()}") from None
        if done.returncode != 0:
            raise RuntimeError(f"rpc_load reported failures: {data} {done.stderr.strip()}")
        return LoadResult(rps=data["rps"], p50_us=data["p50_us"], p99_us=data["p99_us"],
                          requests=data["requests"], total_requests=data["total_requests"],
                          errors=data["errors"], seconds=data["seconds"])


class TinyRpcScenario(RpcScenario):
    """The tutorial codec: request with a 16-byte body, response with an 8-byte body."""

    name = protocol = "tinyrpc"
    description = "tinyrpc request (16-byte body) -> response (8-byte body)"

    def listener_protocol(self) -> dict[str, Any]:
        return {"codec": "tinyrpc"}

    def open_idle(self, port: int, count: int) -> list[socket.socket]:
        socks = []
        try:
            for i in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                socks.append(sock)
                sock.sendall(tinyrpc_request(i + 1))
                _recv_frame(sock)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks


class ThriftScenario(RpcScenario):
    """Thrift ``void ping()``, framed transport, binary protocol (issue 3)."""

    name = protocol = "thrift"
    description = "Thrift ping(), framed + binary"

    def listener_protocol(self) -> dict[str, Any]:
        return {"codec": "thrift", "options": {"transport": "framed", "protocol": "binary"}}


class DubboScenario(RpcScenario):
    """A Dubbo2 call with one 16-character String argument, answered with an 8-character String (issue 4)."""

    name = protocol = "dubbo"
    description = "Dubbo2/Hessian2 ping(String) -> String"

    def listener_protocol(self) -> dict[str, Any]:
        return {"codec": "dubbo"}


def tinyrpc_request(request_id: int, service: str = "bench", method: str = "ping", body: bytes = b"") -> bytes:
    """One tinyrpc request frame (the layout documented in codecs/tinyrpc/codec.py), built independently."""
    names = b"".join(struct.pack(">H", len(s)) + s for s in (service.encode(), method.encode()))
    rest = struct.pack(">BBBBQ", 1, 1, 0, 0, request_id) + names + struct.pack(">H", 0) + body
    return struct.pack(">I", len(rest)) + rest


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed before a whole reply arrived")
        data += chunk
    return bytes(data)


def _recv_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _recv_exact(sock, 4))
    return _recv_exact(sock, length)

