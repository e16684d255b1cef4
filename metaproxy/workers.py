"""Multi-core serving: a supervisor runs ``workers: N|auto`` proxy processes that share each listener port.

Why processes: one Python process serves on one core (the GIL), so a proxy
that must use N cores runs N processes. Each worker binds every listener
with ``SO_REUSEPORT`` and the kernel spreads new connections across them; no
file descriptor passing, no shared state.

The supervisor (this module, started by ``metaproxy run`` when ``workers`` is
not 1):

- starts worker k as ``python -m metaproxy.workers -c FILE --admin 127.0.0.1:P``
  (a worker is ``metaproxy run --single --reuse-port`` whose admin server is
  moved to its own loopback port P, so workers never fight over the configured
  admin port and relative paths in the config still resolve against the
  config file's folder);
- restarts a worker that dies, with exponential backoff (0.5 s doubling to
  30 s; reset once a worker has lived 10 s);
- forwards SIGHUP (reload) to every worker, and on SIGTERM/SIGINT forwards
  SIGTERM so each worker drains, waits for all of them (bounded by
  ``drain_timeout`` plus a margin, then SIGKILL) and exits 0 when every
  worker exited 0;
- serves the configured admin address itself, aggregating the workers'
  admin endpoints: ``/stats`` and ``/stats/prometheus`` are summed across
  workers (histogram buckets, counts and sums add up; P50/P99 in ``/stats``
  are the maximum over workers; gauges are summed), ``/config_dump`` is one
  worker's dump plus a ``workers`` section with each worker's pid, restarts
  and route versions, ``/ready`` is LIVE when every running worker is (a
  worker being restarted is left out: the others take its connections),
  ``POST /drain`` is sent to every worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import gevent
from gevent.event import Event

from metaproxy.config import ProxyConfig

log = logging.getLogger("metaproxy.workers")

__all__ = ["Supervisor", "WorkerProcess", "merge_prometheus", "merge_stats_json", "run_workers", "worker_count"]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 10.0       # a worker that lived this long resets its backoff
START_TIMEOUT = 30.0       # a worker's admin must answer within this after spawn
FETCH_TIMEOUT = 2.0        # one admin request to one worker
STOP_MARGIN = 5.0          # beyond drain_timeout before SIGKILL


def worker_count(workers: int | str) -> int:
    """``auto`` is one worker per core; a number is itself."""
    if workers == "auto":
        return max(1, os.cpu_count() or 1)
    return max(1, int(workers))


def _pick_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends the worker SIGTERM if the supervisor dies (Linux), so none is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# -- one worker process ---------------------------------------------------------------

@dataclass
class WorkerProcess:
    """One worker slot: its current process, its admin address, and its restart history."""

    index: int
    config_path: str
    log_level: str = "info"
    proc: subprocess.Popen | None = None
    admin: tuple[str, int] = ("127.0.0.1", 0)
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0          # consecutive exits before HEALTHY_AFTER
    last_exit: int | None = None
    ready: Event = field(default_factory=Event)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "metaproxy.workers", "-c", self.config_path,
                "--admin", f"{self.admin[0]}:{self.admin[1]}", "--log-level", self.log_level]

    def spawn(self) -> None:
        self.ready.clear()
        self.admin = ("127.0.0.1", _pick_port())
        env = dict(os.environ, METAPROXY_WORKER=str(self.index))
        self.proc = subprocess.Popen(self.command(), env=env, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        log.info("worker %d started: pid %d, admin %s:%d", self.index, self.proc.pid, *self.admin)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Poll the worker's admin port: it opens after every listener is bound (Proxy.start order)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                return False
            try:
                with socket.create_connection(self.admin, timeout=0.5):
                    self.ready.set()
                    return True
            except OSError:
                gevent.sleep(0.05)
        return False

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def next_backoff(self) -> float:
        """Delay before the next restart; quick deaths double it, a long life resets it."""
        lived = time.monotonic() - self.started_at
        if lived >= HEALTHY_AFTER:
            self.failures = 0
        delay = min(BACKOFF_FIRST * (2 ** self.failures), BACKOFF_MAX)
        self.failures += 1
        return delay


# -- talking to worker admins ---------------------------------------------------------

def fetch(address: tuple[str, int], path: str, method: str = "GET",
          timeout: float = FETCH_TIMEOUT) -> tuple[int, bytes]:
    """One HTTP request to a worker's admin; (status, body), status 0 when unreachable."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def merge_stats_json(dumps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum ``/stats?format=json`` of several workers: values and histogram count/sum add, quantiles take the max."""
    merged: dict[str, dict[str, Any]] = {}
    for dump in dumps:
        for stat in dump.get("stats", []):
            name = stat["name"]
            into = merged.get(name)
            if into is None:
                merged[name] = dict(stat)
                continue
            for key in ("value", "count", "sum"):
                if key in stat:
                    into[key] = into.get(key, 0) + stat[key]
            for key in ("P50", "P99"):
                if key in stat:
                    into[key] = max(into.get(key, 0), stat[key])
    return {"stats": [merged[name] for name in sorted(merged)]}


def stats_text(merged: dict[str, Any]) -> str:
    """The Envoy text form of merged stats (the same lines a single process prints)."""
    lines = []
    for stat in merged["stats"]:
        if "value" in stat:
            lines.append(f"{stat['name']}: {stat['value']}")
        else:
            lines.append(f"{stat['name']}: count={stat['count']} sum={stat['sum']:.3f} "
                         f"P50={stat['P50']} P99={stat['P99']}")
    return "\n".join(lines) + "\n"


def merge_prometheus(texts: Iterable[str], extra: Iterable[tuple[str, str, str, float]] = ()) -> bytes:
    """Sum Prometheus expositions sample by sample (same name and labels); ``extra``: (name, type, help, value)."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            bucket = values[fam.name]
            for sample in fam.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                bucket[key] = bucket.get(key, 0.0) + sample.value
    for name, typ, doc, value in extra:
        families[name] = Metric(name, doc, typ)
        values[name] = {(name + ("_total" if typ == "counter" else ""), ()): value}
    for name, fam in families.items():
        for (sample_name, labels), value in values[name].items():
            fam.add_sample(sample_name, dict(labels), value)

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)


# -- the supervisor -------------------------------------------------------------------

class Supervisor:
    """Start, watch, restart, signal and stop the worker processes; serve the aggregating admin."""

    def __init__(self, config_path: str, config: ProxyConfig, count: int | None = None,
                 log_level: str = "info") -> None:
        self.config_path = os.path.abspath(config_path)
        self.config = config
        n = worker_count(config.workers) if count is None else count
        self.workers = [WorkerProcess(i, self.config_path, log_level) for i in range(n)]
        self.stopping = False
        self.draining = False
        self.done = Event()
        self.admin: Any = None
        self._watchers: list[gevent.Greenlet] = []

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Spawn every worker and wait until each has bound its listeners; raise if one dies first."""
        for worker in self.workers:
            worker.spawn()
        for worker in self.workers:
            if not worker.wait_ready():
                code = worker.proc.poll() if worker.proc is not None else None
                self._kill_all()
                raise RuntimeError(f"worker {worker.index} did not start (exit status {code}); see its log above")
        self._watchers = [gevent.spawn(self._watch, w) for w in self.workers]
        if self.config.admin_address is not None:
            self.admin = SupervisorAdmin(self, self.config.admin_address)
            self.admin.start()
        log.info("%d workers serving (pids %s)", len(self.workers), " ".join(str(w.pid) for w in self.workers))

    def _watch(self, worker: WorkerProcess) -> None:
        while True:
            assert worker.proc is not None
            code = worker.proc.wait()
            worker.last_exit = code
            worker.ready.clear()
            if self.stopping:
                return
            delay = worker.next_backoff()
            log.warning("worker %d (pid %d) exited with %s; restarting in %.1fs",
                        worker.index, worker.proc.pid, code, delay)
            gevent.sleep(delay)
            if self.stopping:
                return
            worker.restarts += 1
            worker.spawn()
            gevent.spawn(worker.wait_ready)

    def reload(self) -> None:
        """SIGHUP: every worker re-reads the config file itself (and rejects a bad one itself)."""
        log.info("SIGHUP: reloading %d workers", len(self.workers))
        for worker in self.workers:
            worker.signal(signal.SIGHUP)

    def stop(self, timeout: float | None = None) -> int:
        """Forward SIGTERM (each worker drains), wait bounded, SIGKILL stragglers; 0 when every worker exited 0."""
        self.stopping = True
        self.draining = True
        bound = (self.config.drain_timeout + STOP_MARGIN) if timeout is None else timeout
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + bound
        status = 0
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not drain in %.1fs: killed", worker.index, worker.pid, bound)
                worker.proc.kill()
                code = worker.proc.wait()
            worker.last_exit = code
            if code != 0:
                status = 1
        gevent.killall(self._watchers, block=False)
        if self.admin is not None:
            self.admin.stop()
        self.done.set()
        return status

    def _kill_all(self) -> None:
        self.stopping = True
        for worker in self.workers:
            if worker.alive:
                worker.signal(signal.SIGKILL)
                assert worker.proc is not None
                worker.proc.wait()

    def serve_forever(self) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP is forwarded. Returns the exit status."""
        result: list[int] = []

        def on_term() -> None:
            if not self.stopping:
                log.info("stopping: draining %d workers", len(self.workers))
                gevent.spawn(lambda: result.append(self.stop()))

        gevent.signal_handler(signal.SIGTERM, on_term)
        gevent.signal_handler(signal.SIGINT, on_term)
        gevent.signal_handler(signal.SIGHUP, self.reload)
        self.done.wait()
        return result[0] if result else 0

    # -- admin helpers ---------------------------------------------------------------
    def fan_out(self, path: str, method: str = "GET") -> list[tuple[WorkerProcess, int, bytes]]:
        """The same admin request to every live worker, concurrently."""
        live = [w for w in self.workers if w.alive and w.ready.is_set()]
        jobs = [gevent.spawn(fetch, w.admin, path, method) for w in live]
        gevent.joinall(jobs, timeout=FETCH_TIMEOUT + 1)
        return [(w, *(j.value if j.successful() and j.value else (0, b""))) for w, j in zip(live, jobs, strict=True)]

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"index": w.index, "pid": w.pid, "alive": w.alive, "ready": w.ready.is_set(),
                 "admin": f"{w.admin[0]}:{w.admin[1]}", "restarts": w.restarts, "last_exit": w.last_exit,
                 "uptime_s": round(now - w.started_at, 3) if w.alive else 0.0} for w in self.workers]


# -- the aggregating admin server -----------------------------------------------------

Response = tuple[str, str, bytes]
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"

INDEX = """metaproxy admin (supervisor of {n} workers: values are summed across workers)
GET  /stats              stats, Envoy text (?filter=REGEX, ?format=json)
GET  /stats/prometheus   stats, Prometheus text exposition
GET  /config_dump        one worker's config dump plus every worker's pid, restarts and route versions
GET  /clusters           endpoints and health, per worker (?format=json)
GET  /workers            the worker processes
GET  /ready              200 LIVE when every running worker is ready (one at least), else 503
GET  /healthz            200 while at least one worker process is alive
POST /drain              drain every worker (?timeout=5s, ?wait=true)
GET  /logging            logger levels; POST /logging?level=debug[&logger=NAME] sets them in every worker
"""


def _json(data: Any, status: str = "200 OK") -> Response:
    return status, _JSON, (json.dumps(data, indent=2, default=str) + "\n").encode()


def _text(body: str, status: str = "200 OK") -> Response:
    return status, _TEXT, body.encode()


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class SupervisorAdmin:
    """The admin endpoints on the configured address, answered by asking every worker's own admin."""

    def __init__(self, supervisor: Supervisor, address: tuple[str, int]) -> None:
        self.sup = supervisor
        self.requested_address = address
        self.server: Any = None
        self._routes: dict[str, tuple[tuple[str, ...], Callable[[dict[str, list[str]], str], Response]]] = {
            "/": (("GET",), lambda q, s: _text(INDEX.format(n=len(self.sup.workers)))),
            "/stats": (("GET",), self._stats),
            "/stats/prometheus": (("GET",), self._prometheus),
            "/config_dump": (("GET",), self._config_dump),
            "/clusters": (("GET",), self._clusters),
            "/workers": (("GET",), lambda q, s: _json({"workers": self.sup.describe()})),
            "/ready": (("GET", "HEAD"), self._ready),
            "/healthz": (("GET", "HEAD"), self._healthz),
            "/drain": (("POST",), self._drain),
            "/logging": (("GET", "POST"), self._logging),
        }

    def start(self) -> None:
        from gevent.pywsgi import WSGIServer

        self.server = WSGIServer(self.requested_address, self.app, log=None, error_log=log)
        self.server.start()
        log.info("admin (aggregating %d workers) on http://%s:%d/", len(self.sup.workers), *self.address)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[:2]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = (environ.get("PATH_INFO", "/") or "/").rstrip("/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        qs = environ.get("QUERY_STRING", "")
        found = self._routes.get(path)
        if found is None:
            status, ctype, body = _text(f"no such admin endpoint {path}; see /\n", "404 Not Found")
        elif method not in found[0]:
            status, ctype, body = _text(f"{path} takes {' or '.join(found[0])}\n", "405 Method Not Allowed")
        else:
            try:
                status, ctype, body = found[1](parse_qs(qs), qs)
            except Exception:
                log.exception("admin %s failed", path)
                status, ctype, body = _text("internal error, see the supervisor log\n", "500 Internal Server Error")
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [b"" if method == "HEAD" else body]

    # -- handlers --------------------------------------------------------------------
    def _stats(self, query: dict[str, list[str]], qs: str) -> Response:
        params = {"format": "json"}
        if "filter" in query:
            params["filter"] = query["filter"][0]
        answers = self.sup.fan_out("/stats?" + urlencode(params))
        bad = [body.decode(errors="replace") for _, status, body in answers if status == 400]
        if bad:
            return _text(bad[0], "400 Bad Request")
        merged = merge_stats_json(d for _, status, body in answers if status == 200 and (d := _loads(body)))
        live = sum(1 for w in self.sup.workers if w.alive)
        restarts = sum(w.restarts for w in self.sup.workers)
        merged["stats"] += [{"name": "server.workers_live", "value": live},
                            {"name": "server.worker_restarts", "value": restarts}]
        if query.get("format", [""])[0] == "json":
            return _json(merged)
        return _text(stats_text(merged))

    def _prometheus(self, query: dict[str, list[str]], qs: str) -> Response:
        answers = self.sup.fan_out("/stats/prometheus")
        live = sum(1 for w in self.sup.workers if w.alive)
        restarts = sum(w.restarts for w in self.sup.workers)
        body = merge_prometheus(
            (body.decode() for _, status, body in answers if status == 200),
            [("metaproxy_workers_live", "gauge", "worker processes alive", live),
             ("metaproxy_worker_restarts", "counter", "worker processes restarted by the supervisor", restarts)])
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", body

    def _config_dump(self, query: dict[str, list[str]], qs: str) -> Response:
        answers = self.sup.fan_out("/config_dump")
        dumps = {w.index: d for w, status, body in answers if status == 200 and (d := _loads(body))}
        workers = self.sup.describe()
        versions: set[tuple[tuple[str, Any], ...]] = set()
        for entry in workers:
            dump = dumps.get(entry["index"])
            if dump is None:
                entry["route_versions"] = None
                continue
            entry["route_versions"] = {
                lst["name"]: (lst.get("route_config") or {}).get("version") for lst in dump.get("listeners", [])}
            versions.add(tuple(sorted(entry["route_versions"].items())))
        base = dict(dumps[min(dumps)]) if dumps else {"source": self.sup.config_path, "listeners": [], "clusters": []}
        base["workers"] = workers
        base["routes_consistent"] = len(versions) <= 1
        return _json(base)

    def _clusters(self, query: dict[str, list[str]], qs: str) -> Response:
        as_json = query.get("format", [""])[0] == "json"
        answers = self.sup.fan_out("/clusters?format=json" if as_json else "/clusters")
        if as_json:
            return _json({"workers": [{"index": w.index, "pid": w.pid, **(_loads(body) or {})}
                                      for w, status, body in answers if status == 200]})
        parts = [f"# worker {w.index} (pid {w.pid})\n{body.decode(errors='replace')}"
                 for w, status, body in answers if status == 200]
        return _text("".join(parts))

    def _ready(self, query: dict[str, list[str]], qs: str) -> Response:
        if self.sup.draining:
            return _text("DRAINING\n", "503 Service Unavailable")
        # A worker being restarted is left out: its socket is closed, the others take its connections.
        answers = self.sup.fan_out("/ready")
        if answers and all(status == 200 for _, status, _ in answers):
            return _text("LIVE\n")
        return _text(f"PRE_INITIALIZING ({sum(s == 200 for _, s, _ in answers)}/{len(self.sup.workers)} "
                     "workers ready)\n", "503 Service Unavailable")

    def _healthz(self, query: dict[str, list[str]], qs: str) -> Response:
        if any(w.alive for w in self.sup.workers):
            return _text("OK\n")
        return _text("no worker alive\n", "503 Service Unavailable")

    def _drain(self, query: dict[str, list[str]], qs: str) -> Response:
        self.sup.draining = True
        answers = self.sup.fan_out("/drain" + (f"?{qs}" if qs else ""), "POST")
        results = [{"index": w.index, "pid": w.pid, "status": status, **(_loads(body) or {})}
                   for w, status, body in answers]
        if any(r["status"] == 400 for r in results):
            return _json({"draining": True, "workers": results}, "400 Bad Request")
        waited = query.get("wait", ["false"])[0] in ("1", "true", "yes")
        return _json({"draining": True, "workers": results}, "200 OK" if waited else "202 Accepted")

    def _logging(self, query: dict[str, list[str]], qs: str) -> Response:
        method = "POST" if "level" in query else "GET"
        answers = self.sup.fan_out("/logging" + (f"?{qs}" if qs else ""), method)
        for _, status, body in answers:
            if status != 200:
                return _text(body.decode(errors="replace") or "worker unreachable\n", f"{status or 502} Error")
        return _json({"workers": [{"index": w.index, **(_loads(body) or {})} for w, _, body in answers]})


# -- entry points ---------------------------------------------------------------------

def run_workers(config_path: str, config: ProxyConfig, log_level: str | None = None) -> int:
    """``metaproxy run`` with ``workers`` not 1: supervise the workers until SIGTERM; the exit status.

    Workers log at the supervisor's level (``--log-level`` was applied to the root logger by the CLI).
    """
    if log_level is None:
        log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    supervisor = Supervisor(config_path, config, log_level=log_level)
    try:
        supervisor.start()
    except (RuntimeError, OSError) as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return 1
    return supervisor.serve_forever()


def worker_main(argv: list[str] | None = None) -> int:
    """One worker: ``metaproxy run --single --reuse-port`` with its admin moved to ``--admin``."""
    parser = argparse.ArgumentParser(prog="python -m metaproxy.workers", description="one metaproxy worker")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--admin", required=True, help="HOST:PORT of this worker's own admin server")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from metaproxy.cli import _logging, _patch

    _patch()
    _logging(args.log_level)
    worker = os.environ.get("METAPROXY_WORKER", "?")
    for handler in logging.getLogger().handlers:  # the workers share the supervisor's stderr: say whose line
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [worker {worker}] %(name)s: %(message)s"))
    from metaproxy.cli import load_or_report
    from metaproxy.proxy import Proxy
    from metaproxy.settings import parse_address

    config = load_or_report(args.config)
    if config is None:
        return 1
    config.admin_address = parse_address(args.admin)
    config.workers = 1
    try:
        proxy = Proxy(config, reuse_port=True)
        proxy.start()
    except (ValueError, OSError) as exc:
        print(f"{args.config}: worker {worker}: {exc}", file=sys.stderr)
        return 1
    return proxy.serve_forever()


if __name__ == "__main__":
    sys.exit(worker_main())
