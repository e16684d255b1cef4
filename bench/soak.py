"""Soak: hours-shaped traffic through a real ``metaproxy run`` while routes and filters change under it.

Client threads call a tinyrpc listener in a loop (each on its own long-lived
connection, plus a short-lived connection now and then). The listener runs a Lua
filter and routes by weight to two upstream clusters. While it runs:

* every ``--route-every`` seconds the config file's weights flip and the proxy
  gets SIGHUP (a reload that swaps the route table in place);
* every ``--lua-every`` seconds the Lua script is rewritten (hot reload): the
  header it stamps on each request changes, and clients check they see a
  version that was live.

Reported: requests per interval (throughput over time), errors, proxy RSS and
open file descriptors after warm-up and at the end. Pass: no error, RSS growth
under ``--max-rss-growth`` (10%), descriptors flat (within ``--fd-slack``).

    python bench/soak.py --seconds 1800          # `make soak`
    python bench/soak.py --seconds 120 --json    # what tests/reliability/test_soak.py runs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaproxy.message import MessageType  # noqa: E402
from metaproxy.testing.harness import ProxyProcess  # noqa: E402
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient, TinyRpcServer  # noqa: E402

LUA = """
function on_request(handle)
  handle:mutation():set("x-filter-version", "{version}")
end
"""


@dataclass
class SoakReport:
    seconds: float
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    throughput: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, requests/s)
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    fds_start: int = 0
    fds_end: int = 0
    route_reloads: int = 0
    reloads_applied: int = 0  # the proxy's own count (admin stat server.reload)
    filter_reloads: int = 0
    served_by: dict[str, int] = field(default_factory=dict)
    filter_versions_seen: int = 0

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kib - self.rss_start_kib) / max(1, self.rss_start_kib)

    def passed(self, max_rss_growth: float = 0.10, fd_slack: int = 4) -> bool:
        return (self.errors == 0 and self.rss_growth < max_rss_growth and self.reloads_applied == self.route_reloads
                and abs(self.fds_end - self.fds_start) <= fd_slack and self.requests > 0)

    def text(self) -> str:
        lines = [f"soak: {self.seconds:.0f}s, {self.requests} requests, {self.errors} errors, "
                 f"{self.route_reloads} route reloads (SIGHUP; {self.reloads_applied} applied), "
                 f"{self.filter_reloads} Lua reloads"]
        lines += [f"  t={t:6.0f}s  {rps:8.0f} req/s" for t, rps in self.throughput]
        lines.append(f"  RSS {self.rss_start_kib / 1024:.1f} MiB -> {self.rss_end_kib / 1024:.1f} MiB "
                     f"({self.rss_growth * 100:+.1f}%), fds {self.fds_start} -> {self.fds_end}")
        lines.append(f"  served by {self.served_by}, filter versions seen {self.filter_versions_seen}")
        lines += [f"  error: {e}" for e in self.error_samples]
        return "\n".join(lines)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _stat(proxy: ProxyProcess, name: str) -> float:
    host, port = proxy.admin_address
    with urllib.request.urlopen(f"http://{host}:{port}/stats", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return float(value)
    return 0.0


def proxy_config(v1: str, v2: str, script: str, weight_v1: int) -> dict[str, Any]:
    return {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [{
            "name": "soak", "address": "127.0.0.1:0", "protocol": {"codec": "tinyrpc"},
            "filters": [{"name": "lua", "script": script, "reload_interval": "200ms"}, {"name": "router"}],
            "route_config": {"name": "soak", "routes": [{"name": "split", "match": {}, "route": {
                "weighted_clusters": [{"name": "v1", "weight": weight_v1}, {"name": "v2", "weight": 100 - weight_v1}],
                "timeout": "5s"}}]},
        }],
        "clusters": [{"name": "v1", "endpoints": [v1]}, {"name": "v2", "endpoints": [v2]}],
    }


class Load:
    """Client threads in a loop; counts per interval; remembers errors."""

    def __init__(self, address: tuple[str, int], clients: int, versions: set[str]) -> None:
        self.address = address
        self.clients = clients
        self.versions = versions  # every Lua version ever written (a client may see any live one)
        self.lock = threading.Lock()
        self.count = 0
        self.errors = 0
        self.samples: list[str] = []
        self.served_by: dict[str, int] = {}
        self.seen_versions: set[str] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _error(self, text: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.samples) < 10:
                self.samples.append(text)

    def _run(self, index: int) -> None:
        client: TinyRpcClient | None = None
        calls = 0
        while not self.stop.is_set():
            try:
                if client is None or calls % 5000 == 4999:  # now and then a fresh connection
                    if client is not None:
                        client.close()
                    client = TinyRpcClient(*self.address, timeout=10)
                md, body = client.call("work", headers={"x-client": str(index)})
                calls += 1
                if md["message_type"] is not MessageType.RESPONSE:
                    self._error(f"client {index}: {dict(md)}")
                    continue
                version = md.get("x-filter-version")
                if version not in self.versions:
                    self._error(f"client {index}: unknown filter version {version!r}")
                with self.lock:
                    self.count += 1
                    served = md.get("x-served-by", "?")
                    self.served_by[served] = self.served_by.get(served, 0) + 1
                    self.seen_versions.add(version)
            except Exception as exc:  # noqa: BLE001 - every failure is a soak error, with its text
                self._error(f"client {index}: {type(exc).__name__}: {exc}")
                if client is not None:
                    client.close()
                client = None
        if client is not None:
            client.close()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def run_soak(seconds: float, workdir: str | None = None, clients: int = 4, route_every: float = 20.0,
             lua_every: float = 30.0, interval: float = 10.0, warmup: float | None = None,
             log: Any = None) -> SoakReport:
    """Run the soak for ``seconds`` (after a warm-up) and return the report."""
    work = Path(workdir or tempfile.mkdtemp(prefix="metaproxy-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    warmup = min(20.0, max(5.0, seconds * 0.1)) if warmup is None else warmup
    v1, v2 = TinyRpcServer(0, "v1").start(), TinyRpcServer(0, "v2").start()
    script = work / "stamp.lua"
    version = 0
    versions = {"v0"}
    script.write_text(LUA.format(version="v0"))
    weight = 80
    proxy = ProxyProcess(proxy_config(v1.address, v2.address, str(script), weight), work / "proxy")
    proxy.start()
    report = SoakReport(seconds=seconds)
    load = Load(proxy.address(), clients, versions)
    try:
        load.start()
        time.sleep(warmup)
        pid = proxy.proc.pid  # type: ignore[union-attr]
        report.rss_start_kib, report.fds_start = rss_kib(pid), fd_count(pid)
        with load.lock:
            load.count, load.errors, load.samples = 0, 0, []
        start = last = time.monotonic()
        next_route, next_lua = start + route_every, start + lua_every
        last_count = 0
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            if now >= next_route:
                weight = 100 - weight
                route = proxy.config["listeners"][0]["route_config"]["routes"][0]["route"]
                route["weighted_clusters"] = [{"name": "v1", "weight": weight}, {"name": "v2", "weight": 100 - weight}]
                proxy.write_config()
                proxy.send_signal(signal.SIGHUP)
                report.route_reloads += 1
                next_route += route_every
            if now >= next_lua:
                version += 1
                versions.add(f"v{version}")
                script.write_text(LUA.format(version=f"v{version}"))
                report.filter_reloads += 1
                next_lua += lua_every
            if now - last >= interval:
                with load.lock:
                    count = load.count
                report.throughput.append((now - start, (count - last_count) / (now - last)))
                if log:
                    log(f"t={now - start:6.0f}s {report.throughput[-1][1]:8.0f} req/s  errors={load.errors}  "
                        f"rss={rss_kib(pid) / 1024:.1f} MiB fds={fd_count(pid)}")
                last, last_count = now, count
            time.sleep(0.05)
        report.rss_end_kib, report.fds_end = rss_kib(pid), fd_count(pid)  # same clients connected as at start
        report.reloads_applied = int(_stat(proxy, "server.reload"))
        load.join()
        report.requests, report.errors, report.error_samples = load.count, load.errors, load.samples
        report.served_by = dict(load.served_by)
        report.filter_versions_seen = len(load.seen_versions)
        if proxy.proc.poll() is not None:  # type: ignore[union-attr]
            report.errors += 1
            report.error_samples.append(f"proxy exited with {proxy.proc.returncode}")  # type: ignore[union-attr]
    finally:
        load.stop.set()
        proxy.stop()
        v1.stop()
        v2.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--route-every", type=float, default=20.0)
    parser.add_argument("--lua-every", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=60.0, help="throughput report period")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--fd-slack", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run_soak(args.seconds, clients=args.clients, route_every=args.route_every, lua_every=args.lua_every,
                      interval=args.interval, log=lambda line: print(line, flush=True))
    print(report.text())
    ok = report.passed(args.max_rss_growth, args.fd_slack)
    if args.json:
        print(json.dumps({**asdict(report), "rss_growth": report.rss_growth, "passed": ok}))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
