"""Helpers of the reliability tests: admin stats, /proc measurements, polling, and config shapes."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from typing import Any

from metaproxy.message import MessageType
from metaproxy.testing.harness import ProxyProcess, wait_until
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient


def stats(proxy: ProxyProcess) -> dict[str, float]:
    """Every counter and gauge of ``GET /stats`` (``scope.name: value`` lines)."""
    host, port = proxy.admin_address
    with urllib.request.urlopen(f"http://{host}:{port}/stats", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        try:
            out[name] = float(value)
        except ValueError:
            continue  # histograms
    return out


def stat(proxy: ProxyProcess, name: str) -> float:
    return stats(proxy).get(name, 0.0)


def wait_stat(proxy: ProxyProcess, name: str, at_least: float = 1, timeout: float = 10.0) -> float:
    return wait_until(lambda: stat(proxy, name) >= at_least and stat(proxy, name), timeout, f"{name} >= {at_least}")



def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closed ``sock`` (EOF or reset), or None if it stayed open for ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except TimeoutError:
        return None


def served(proxy: ProxyProcess, method: str = "ping") -> None:
    """A well-behaved client gets its answer: the proof that one bad peer hurt only itself."""
    with TinyRpcClient(*proxy.address(), timeout=5) as client:
        md, body = client.call(method)
        assert md["message_type"] is MessageType.RESPONSE, dict(md)
        assert body.endswith(f":{method}:".encode())


def listener(cluster: str = "c1", route: dict[str, Any] | None = None, **knobs: Any) -> dict[str, Any]:
    """A tinyrpc listener sending everything to ``cluster``, with listener knobs (timeouts, limits)."""
    return {"name": "in", "address": "127.0.0.1:0", "protocol": {"codec": "tinyrpc"},
            "route_config": {"name": "r", "routes": [{"name": "all", "match": {},
                                                      "route": {"cluster": cluster, **(route or {})}}]},
            **knobs}


def config(endpoints: list[str], cluster: dict[str, Any] | None = None, **knobs: Any) -> dict[str, Any]:
    """A whole proxy config: admin on a free port, one tinyrpc listener, one cluster."""
    route = knobs.pop("route", None)
    return {"admin": {"address": "127.0.0.1:0"},
            "listeners": [listener(route=route, **knobs)],
            "clusters": [{"name": "c1", "endpoints": endpoints, "connect_timeout": "1s", **(cluster or {})}]}
