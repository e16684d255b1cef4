"""Redis with its own tools: a real ``redis-server`` upstream and ``redis-benchmark`` as the client (issue 12).

redis-benchmark has no fixed-duration mode, so a short probe run (which is
also the warm-up) estimates the rate and the measured run asks for about
``seconds`` worth of requests. It does not check replies, so a PING through
the path must answer +PONG before any load is trusted.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from procs import Service, free_port, start_listening
from scenarios import LoadResult, LoadSpec, Scenario


def _ping(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = sock.recv(64)
    if not reply.startswith(b"+PONG"):
        raise RuntimeError(f"PING through port {port} answered {reply!r}")


class RedisScenario(Scenario):
    """``redis-benchmark -t <command> -P 16`` (pipelined 16 deep, as issue 12 asks)."""

    command = ""  # redis-benchmark -t name
    depth = 16

    def required_tools(self) -> list[Path]:
        return [Path(shutil.which(tool) or f"/usr/bin/{tool}") for tool in ("redis-server", "redis-benchmark")]

    def start_server(self) -> Service:
        port = free_port()
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir)]
        return start_listening("redis-server", cmd, port, self.workdir / "redis-server.log")

    def listener_protocol(self) -> dict[str, Any]:
        return {"codec": "redis"}

    def _benchmark(self, port: int, connections: int, depth: int, requests: int,
                   timeout: float) -> dict[str, float]:
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(connections), "-P", str(depth),
               "-n", str(requests), "-t", self.command, "--csv"]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        rows = list(csv.DictReader(io.StringIO(done.stdout)))
        if done.returncode != 0 or not rows:
            raise RuntimeError(f"redis-benchmark failed ({done.returncode}): {done.stderr.strip()} {done.stdout}")
        return {key: float(value) for key, value in rows[0].items() if key != "test"}

    def run_load(self, port: int, spec: LoadSpec) -> LoadResult:
        _ping(port)
        depth = spec.depth
        probe_n = max(2000, spec.connections * depth * 20)
        probe = self._benchmark(port, spec.connections, depth, probe_n, timeout=30)
        n = max(probe_n, int(probe["rps"] * spec.seconds))
        main = self._benchmark(port, spec.connections, depth, n, timeout=spec.seconds * 5 + 30)
        return LoadResult(rps=main["rps"], p50_us=main["p50_latency_ms"] * 1000, p99_us=main["p99_latency_ms"] * 1000,
                          requests=n, total_requests=n + probe_n, errors=0, seconds=n / main["rps"])

    def effective_spec(self, spec: LoadSpec) -> LoadSpec:
        return LoadSpec(spec.connections, spec.seconds, spec.warmup, self.depth)


class RedisGetScenario(RedisScenario):
    name = "redis-get"
    command = "get"
    description = "redis-benchmark -t get -P 16 against redis-server"


class RedisSetScenario(RedisScenario):
    name = "redis-set"
    command = "set"
    description = "redis-benchmark -t set -P 16 against redis-server"
