"""Soak: hours-shaped mixed traffic through one real ``metaproxy run`` while routes and filters change under it.

One proxy process carries four listeners at once, each with a Lua filter
(``directory:`` mode, one watched folder) and a weighted route to two upstreams
of its protocol:

* ``tiny``: tinyrpc (the demo peers in metaproxy_codecs.tinyrpc.sample);
* ``thrift``: framed binary, clients Apache Thrift and thriftpy2 in turn,
  upstreams an Apache and a thriftpy2 threaded server (tests/e2e/thrift_support);
* ``thrift-header``: THeader binary, Apache client and servers (the only Thrift
  dialect that carries headers, so clients can see the Lua stamp);
* ``dubbo``: dubbo-ssl-python's client, providers whose Hessian2 is
  dubbo-ssl-python's (tests/e2e/dubbo_support).

Client threads call in a loop on long-lived connections (tinyrpc and Thrift
reconnect every ``RECONNECT_EVERY`` calls; dubbo-ssl-python keeps one pooled
connection per proxy address). Each response must say which upstream served it
and, where the protocol carries headers, which Lua version stamped it. While it
runs:

* every ``--route-every`` seconds every listener's weights flip (80/20 <-> 20/80)
  in the config file and the proxy gets SIGHUP (a reload that swaps route tables);
* every ``--lua-every`` seconds the Lua file in the watched directory is
  rewritten (hot reload): the header it stamps changes, and clients check they
  see a version that was written.

Reported: requests per interval per protocol (throughput over time), errors,
proxy RSS and open file descriptors after warm-up and at the end. Pass: no error,
every SIGHUP applied, RSS growth under ``--max-rss-growth`` (10%), descriptors
flat (within ``--fd-slack``).

    python bench/soak.py --seconds 1800          # `make soak`
    python bench/soak.py --seconds 120 --json    # what tests/reliability/test_soak.py runs (SOAK_SECONDS)
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dubbo_ssl.client import DubboClient  # noqa: E402

from metaproxy.message import MessageType  # noqa: E402
from metaproxy.testing.harness import ProxyProcess  # noqa: E402
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient, TinyRpcServer  # noqa: E402
from tests.e2e.dubbo_support.provider import DubboProvider  # noqa: E402
from tests.e2e.thrift_support.peers import EchoClient, EchoServer  # noqa: E402

PROTOCOLS = ("tiny", "thrift", "thrift-header", "dubbo")
RECONNECT_EVERY = 5000
DUBBO_INTERFACE = "org.example.Soak"
STAMP = "x-filter-version"
LUA = """
-- written by bench/soak.py: stamps the version on requests and responses
function on_request(handle)
  handle:mutation():set("x-filter-version", "{version}")
end
function on_response(handle)
  handle:mutation():set("x-filter-version", "{version}")
end
"""


class SoakError(Exception):
    """A response that is not what the upstream sent (wrong type, body, or missing stamp)."""


@dataclass
class Tally:
    """What one protocol's clients saw."""

    requests: int = 0
    errors: int = 0
    served_by: dict[str, int] = field(default_factory=dict)
    versions_seen: set[str] = field(default_factory=set)


@dataclass
class SoakReport:
    seconds: float
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    per_protocol: dict[str, dict[str, Any]] = field(default_factory=dict)  # requests, errors, served_by, versions
    throughput: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (elapsed s, {protocol: req/s})
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    fds_start: int = 0
    fds_end: int = 0
    route_reloads: int = 0
    reloads_applied: int = 0  # the proxy's own count (admin stat server.reload)
    filter_reloads: int = 0
    filter_versions_seen: int = 0  # fewest distinct Lua versions any header-carrying protocol saw
    upstream: dict[str, int] = field(default_factory=dict)  # UPSTREAM_STATS of every cluster, at the end

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kib - self.rss_start_kib) / max(1, self.rss_start_kib)

    def passed(self, max_rss_growth: float = 0.10, fd_slack: int = 4) -> bool:
        every_protocol_served = all(self.per_protocol.get(p, {}).get("requests", 0) > 0 for p in PROTOCOLS)
        return (self.errors == 0 and self.rss_growth < max_rss_growth and self.reloads_applied == self.route_reloads
                and abs(self.fds_end - self.fds_start) <= fd_slack and every_protocol_served)

    def text(self) -> str:
        lines = [f"soak: {self.seconds:.0f}s, {self.requests} requests, {self.errors} errors, "
                 f"{self.route_reloads} route reloads (SIGHUP; {self.reloads_applied} applied), "
                 f"{self.filter_reloads} Lua reloads"]
        for t, rates in self.throughput:
            lines.append(f"  t={t:6.0f}s  " + "  ".join(f"{p} {rates.get(p, 0):6.0f}" for p in PROTOCOLS)
                         + f"  total {sum(rates.values()):6.0f} req/s")
        lines.append(f"  RSS {self.rss_start_kib / 1024:.1f} MiB -> {self.rss_end_kib / 1024:.1f} MiB "
                     f"({self.rss_growth * 100:+.1f}%), fds {self.fds_start} -> {self.fds_end}")
        for name, tally in self.per_protocol.items():
            lines.append(f"  {name}: {tally['requests']} requests, {tally['errors']} errors, "
                         f"served by {tally['served_by']}, Lua versions seen {tally['versions_seen']}")
        if self.upstream:
            lines.append("  upstream: " + ", ".join(f"{k} {v}" for k, v in sorted(self.upstream.items())))
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


def _stats(proxy: ProxyProcess) -> dict[str, float]:
    """The proxy's admin /stats (``name: value`` lines; histograms are skipped)."""
    host, port = proxy.admin_address
    found = {}
    with urllib.request.urlopen(f"http://{host}:{port}/stats", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            try:
                found[key] = float(value)
            except ValueError:
                continue
    return found


#: Per-cluster stats reported: connections opened (more than connections_per_endpoint means some were closed
#: under the proxy, e.g. by an upstream's idle timeout) and connections that closed with requests in flight.
UPSTREAM_STATS = ("upstream_cx_total", "upstream_cx_destroy_with_active_rq")


# -- the clients: one call returns (upstream that served it, Lua version or None) ---------------------------
class Session(Protocol):
    def call(self) -> tuple[str, str | None]: ...

    def close(self) -> None: ...


class TinySession:
    def __init__(self, address: tuple[str, int], index: int) -> None:
        self.client = TinyRpcClient(*address, timeout=10)
        self.headers = {"x-client": str(index)}

    def call(self) -> tuple[str, str | None]:
        md, _body = self.client.call("work", headers=self.headers)
        if md["message_type"] is not MessageType.RESPONSE:
            raise SoakError(f"not a response: {dict(md)}")
        return md.get("x-served-by", "?"), md.get(STAMP)

    def close(self) -> None:
        self.client.close()


class ThriftSession:
    """``whoami`` names the upstream; every 8th call is an ``echo`` of a struct that must come back equal."""

    def __init__(self, address: tuple[str, int], index: int, transport: str) -> None:
        self.lib = "apache" if transport == "header" or index % 2 == 0 else "thriftpy2"
        self.header = transport == "header"
        self.client = EchoClient(self.lib, address[1], transport=transport, host=address[0])
        self.calls = 0
        self.index = index

    def call(self) -> tuple[str, str | None]:
        self.calls += 1
        if self.calls % 8 == 0:
            item = self.client.Item(name=f"c{self.index}", counts={"n": self.calls}, tags=["soak", self.lib])
            back = self.client.echo.echo(item)
            if (back.name, back.counts, back.tags) != (item.name, item.counts, item.tags):
                raise SoakError(f"{self.lib}: echo changed {item!r} into {back!r}")
        served = self.client.echo.whoami()
        version = None
        if self.header:
            raw = self.client.protocol.get_headers().get(STAMP.encode())
            version = raw.decode() if raw is not None else None
        return served, version

    def close(self) -> None:
        self.client.close()


class DubboSession:
    """dubbo-ssl-python's client: the provider answers with JSON naming itself and the attachments it got."""

    def __init__(self, address: tuple[str, int], index: int) -> None:
        self.client = DubboClient(DUBBO_INTERFACE, None, version="1.0.0", host=f"{address[0]}:{address[1]}")
        self.index = index
        self.calls = 0

    def call(self) -> tuple[str, str | None]:
        self.calls += 1
        seen = json.loads(self.client.call("work", [f"c{self.index}", self.calls], timeout=10))
        if seen.get("args") != [f"c{self.index}", self.calls] or seen.get("method") != "work":
            raise SoakError(f"dubbo: provider saw {seen}")
        return seen.get("provider", "?"), (seen.get("attachments") or {}).get(STAMP)

    def close(self) -> None:  # the library's pool owns the connection
        pass


# -- load ----------------------------------------------------------------------------------------------
class Load:
    """Client threads per protocol in a loop; counts per protocol; remembers errors."""

    def __init__(self, factories: dict[str, Callable[[int], Session]], clients: dict[str, int], versions: set[str],
                 header_protocols: set[str], think: float = 0.0) -> None:
        self.versions = versions  # every Lua version ever written (a client may see any live one)
        self.header_protocols = header_protocols  # protocols whose responses must carry the Lua stamp
        self.think = think  # pause between calls (keeps the short test's CPU moderate)
        self.lock = threading.Lock()
        self.tallies = {name: Tally() for name in factories}
        self.samples: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(name, factory, i), daemon=True,
                                         name=f"soak-{name}-{i}")
                        for name, factory in factories.items() for i in range(clients.get(name, 1))]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.tallies.values())

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {name: t.requests for name, t in self.tallies.items()}

    def reset(self) -> None:
        """Forget the warm-up."""
        with self.lock:
            self.tallies = {name: Tally() for name in self.tallies}
            self.samples = []

    def _error(self, name: str, text: str) -> None:
        with self.lock:
            self.tallies[name].errors += 1
            if len(self.samples) < 10:
                self.samples.append(f"{name}: {text}")

    def _run(self, name: str, factory: Callable[[int], Session], index: int) -> None:
        session: Session | None = None
        calls = 0
        while not self.stop.is_set():
            try:
                if session is None or calls % RECONNECT_EVERY == RECONNECT_EVERY - 1:  # now and then a fresh one
                    if session is not None:
                        session.close()
                    session = factory(index)
                served, version = session.call()
                calls += 1
                if name in self.header_protocols and version not in self.versions:
                    self._error(name, f"client {index}: unknown filter version {version!r}")
                with self.lock:
                    tally = self.tallies[name]
                    tally.requests += 1
                    tally.served_by[served] = tally.served_by.get(served, 0) + 1
                    if version is not None:
                        tally.versions_seen.add(version)
            except Exception as exc:  # noqa: BLE001 - every failure is a soak error, with its text
                self._error(name, f"client {index}: {type(exc).__name__}: {exc}")
                if session is not None:
                    try:
                        session.close()
                    except Exception:  # noqa: BLE001 - already failed; the error is counted
                        pass
                session = None
                self.stop.wait(0.1)
            if self.think:
                self.stop.wait(self.think)
        if session is not None:
            session.close()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


# -- the proxy and its peers ---------------------------------------------------------------------------
def _listener(name: str, protocol: dict[str, Any], lua_dir: Path, weight_a: int) -> dict[str, Any]:
    return {
        "name": name, "address": "127.0.0.1:0", "protocol": protocol,
        "filters": [{"name": "lua", "directory": str(lua_dir), "reload_interval": "200ms"}, {"name": "router"}],
        "route_config": {"name": name, "routes": [{"name": "split", "match": {}, "route": {
            "weighted_clusters": _weights(name, weight_a), "timeout": "5s"}}]},
    }


def _weights(name: str, weight_a: int) -> list[dict[str, Any]]:
    return [{"name": f"{name}-a", "weight": weight_a}, {"name": f"{name}-b", "weight": 100 - weight_a}]


def proxy_config(upstreams: dict[str, tuple[str, str]], lua_dir: Path, weight_a: int) -> dict[str, Any]:
    """Four listeners (PROTOCOLS), each routing by weight to clusters ``<listener>-a`` and ``<listener>-b``."""
    protocols = {
        "tiny": {"codec": "tinyrpc"},
        "thrift": {"codec": "thrift", "options": {"transport": "framed", "protocol": "binary"}},
        "thrift-header": {"codec": "thrift", "options": {"transport": "header", "protocol": "binary"}},
        "dubbo": {"codec": "dubbo"},
    }
    clusters = []
    for name, (a, b) in upstreams.items():
        # idle_timeout below thriftpy2's 3 s server-side cutoff: the proxy closes idle pooled
        # connections first (the race the first 30-minute run found; docs/reliability.md).
        clusters += [{"name": f"{name}-a", "endpoints": [a], "connect_timeout": "1s", "idle_timeout": "2s"},
                     {"name": f"{name}-b", "endpoints": [b], "connect_timeout": "1s", "idle_timeout": "2s"}]
    return {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [_listener(name, protocols[name], lua_dir, weight_a) for name in upstreams],
        "clusters": clusters,
    }


class Upstreams:
    """Two real servers per protocol, named ``<listener>-a`` / ``<listener>-b`` (the name each answers with)."""

    def __init__(self) -> None:
        self.tiny = [TinyRpcServer(0, "tiny-a").start(), TinyRpcServer(0, "tiny-b").start()]
        self.thrift = [EchoServer("thrift-a", "apache").start(), EchoServer("thrift-b", "thriftpy2").start()]
        self.header = [EchoServer("thrift-header-a", "apache", "header").start(),
                       EchoServer("thrift-header-b", "apache", "header").start()]
        self.dubbo = [DubboProvider("dubbo-a").__enter__(), DubboProvider("dubbo-b").__enter__()]

    def addresses(self) -> dict[str, tuple[str, str]]:
        def pair(servers: list[Any]) -> tuple[str, str]:
            return servers[0].address, servers[1].address
        return {"tiny": pair(self.tiny), "thrift": pair(self.thrift), "thrift-header": pair(self.header),
                "dubbo": pair(self.dubbo)}

    def forget(self) -> None:
        """Drop what the test peers record per call, so a long soak does not grow the runner's own memory."""
        for server in self.thrift + self.header:
            server.handler.calls.clear()
            server.headers_seen.clear()
        for provider in self.dubbo:
            with provider._lock:
                provider.calls.clear()

    def stop(self) -> None:
        for server in self.tiny + self.thrift + self.header:
            server.stop()
        for provider in self.dubbo:
            provider.__exit__(None, None, None)


def run_soak(seconds: float, workdir: str | None = None, clients: int | dict[str, int] = 2,
             route_every: float = 20.0, lua_every: float = 30.0, interval: float = 10.0,
             warmup: float | None = None, think: float = 0.0, log: Callable[[str], None] | None = None) -> SoakReport:
    """Run the soak for ``seconds`` (after a warm-up) and return the report.

    ``clients`` is threads per protocol (an int for all, or a dict by listener name).
    """
    work = Path(workdir or tempfile.mkdtemp(prefix="metaproxy-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    warmup = min(20.0, max(5.0, seconds * 0.1)) if warmup is None else warmup
    per_protocol = clients if isinstance(clients, dict) else {name: clients for name in PROTOCOLS}
    lua_dir = work / "lua"
    lua_dir.mkdir(exist_ok=True)
    script = lua_dir / "stamp.lua"
    version = 0
    versions = {"v0"}
    script.write_text(LUA.format(version="v0"))
    weight = 80
    upstreams = Upstreams()
    proxy = ProxyProcess(proxy_config(upstreams.addresses(), lua_dir, weight), work / "proxy")
    load: Load | None = None
    report = SoakReport(seconds=seconds)
    try:
        proxy.start()
        factories: dict[str, Callable[[int], Session]] = {
            "tiny": lambda i: TinySession(proxy.address("tiny"), i),
            "thrift": lambda i: ThriftSession(proxy.address("thrift"), i, "framed"),
            "thrift-header": lambda i: ThriftSession(proxy.address("thrift-header"), i, "header"),
            "dubbo": lambda i: DubboSession(proxy.address("dubbo"), i),
        }
        load = Load(factories, per_protocol, versions, {"tiny", "thrift-header", "dubbo"}, think=think)
        load.start()
        time.sleep(warmup)
        pid = proxy.proc.pid  # type: ignore[union-attr]
        report.rss_start_kib, report.fds_start = rss_kib(pid), fd_count(pid)
        load.reset()
        start = last = time.monotonic()
        next_route, next_lua = start + route_every, start + lua_every
        last_counts = load.counts()
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            if now >= next_route:
                weight = 100 - weight
                for listener in proxy.config["listeners"]:
                    listener["route_config"]["routes"][0]["route"]["weighted_clusters"] = _weights(
                        listener["name"], weight)
                proxy.write_config()
                proxy.send_signal(signal.SIGHUP)
                report.route_reloads += 1
                next_route += route_every
            if now >= next_lua:
                version += 1
                versions.add(f"v{version}")
                tmp = lua_dir / ".stamp.lua.tmp"  # not *.lua: the watcher never sees a half-written file
                tmp.write_text(LUA.format(version=f"v{version}"))
                os.replace(tmp, script)
                report.filter_reloads += 1
                next_lua += lua_every
            if now - last >= interval:
                counts = load.counts()
                rates = {p: (counts[p] - last_counts.get(p, 0)) / (now - last) for p in counts}
                report.throughput.append((now - start, rates))
                upstreams.forget()
                if log:
                    log(f"t={now - start:6.0f}s " + " ".join(f"{p}={r:.0f}" for p, r in rates.items())
                        + f" req/s errors={load.errors} rss={rss_kib(pid) / 1024:.1f} MiB fds={fd_count(pid)}")
                last, last_counts = now, counts
            time.sleep(0.05)
        report.rss_end_kib, report.fds_end = rss_kib(pid), fd_count(pid)  # same clients connected as at start
        stats = _stats(proxy)
        report.reloads_applied = int(stats.get("server.reload", 0))
        report.upstream = {key: int(value) for key, value in stats.items()
                           if key.startswith("cluster.") and key.endswith(UPSTREAM_STATS) and value}
        load.join()
        with load.lock:
            for name, tally in load.tallies.items():
                report.per_protocol[name] = {"requests": tally.requests, "errors": tally.errors,
                                             "served_by": dict(tally.served_by),
                                             "versions_seen": len(tally.versions_seen)}
            report.error_samples = list(load.samples)
        report.requests = sum(t["requests"] for t in report.per_protocol.values())
        report.errors = sum(t["errors"] for t in report.per_protocol.values())
        report.filter_versions_seen = min(report.per_protocol[p]["versions_seen"]
                                          for p in ("tiny", "thrift-header", "dubbo"))
        if proxy.proc.poll() is not None:  # type: ignore[union-attr]
            report.errors += 1
            report.error_samples.append(f"proxy exited with {proxy.proc.returncode}")  # type: ignore[union-attr]
    finally:
        if load is not None:
            load.stop.set()
        proxy.stop()
        upstreams.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--clients", type=int, default=2, help="client threads per protocol")
    parser.add_argument("--route-every", type=float, default=20.0)
    parser.add_argument("--lua-every", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=60.0, help="throughput report period")
    parser.add_argument("--think", type=float, default=0.0, help="seconds each client waits between calls")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--fd-slack", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run_soak(args.seconds, clients=args.clients, route_every=args.route_every, lua_every=args.lua_every,
                      interval=args.interval, think=args.think, log=lambda line: print(line, flush=True))
    print(report.text())
    ok = report.passed(args.max_rss_growth, args.fd_slack)
    if args.json:
        print(json.dumps({**asdict(report), "rss_growth": report.rss_growth, "passed": ok}))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
