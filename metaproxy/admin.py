"""The admin HTTP server, Envoy-style: stats, Prometheus, config dump, clusters, readiness, drain, logging.

A plain WSGI app served by ``gevent.pywsgi`` on its own address (loopback
by default): it reads the :class:`~metaproxy.proxy.Proxy` and its
:class:`~metaproxy.stats.StatsStore` when asked, and costs nothing on the
request path. Endpoints (docs/observability.md; ``GET /`` lists them):

    GET  /stats                Envoy text (``?filter=REGEX``, ``?format=json``)
    GET  /stats/prometheus     Prometheus exposition (prometheus-client's writer)
    GET  /config_dump          JSON: listeners, filters, routes in force with version, clusters
    GET  /clusters             endpoints and their health (``?format=json``)
    GET  /ready                200 LIVE when every listener is bound and has routes, else 503
    GET  /healthz              200 while the process serves
    POST /drain                stop accepting, let requests finish (``?timeout=5s``, ``?wait=true``)
    GET|POST /logging          show logger levels; ``?level=debug`` (``&logger=NAME``) sets one
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import gevent
from gevent.pywsgi import WSGIServer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from metaproxy import accesslog, compiled
from metaproxy.settings import parse_duration
from metaproxy.stats import Counter, Gauge, Histogram, StatsStore

log = logging.getLogger("metaproxy.admin")

INDEX = """metaproxy admin
GET  /stats              stats, Envoy text (?filter=REGEX, ?format=json)
GET  /stats/prometheus   stats, Prometheus text exposition
GET  /config_dump        listeners, filters, routes in force (with version), clusters
GET  /clusters           endpoints and health (?format=json)
GET  /ready              200 LIVE when every listener is bound and has routes, else 503
GET  /healthz            200 while the process serves
POST /drain              stop accepting, finish requests in flight (?timeout=5s, ?wait=true)
GET  /logging            logger levels; POST /logging?level=debug[&logger=NAME] sets one
"""

__all__ = ["AdminServer", "StatsCollector", "prometheus_name", "prometheus_text"]

# -- Prometheus mapping ------------------------------------------------------------

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_LISTENER_PREFIX = "metaprotocol."
_CLUSTER_PREFIX = "cluster."
_LOCAL_ERROR = "local_response_error."


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)


def prometheus_name(scope: str, name: str, listeners: Iterable[str] = ()) -> tuple[str, dict[str, str]]:
    """Map one stat to a Prometheus family name and labels (the table in docs/stats.md).

    ``metaprotocol.L`` / ``request`` -> ``metaprotocol_request{listener="L"}``;
    ``metaprotocol.L.method.M`` -> ``metaprotocol_method_*{listener, method}``;
    ``metaprotocol.L.route.R`` -> ``metaprotocol_route_*{listener, route}``;
    ``local_response_error.KIND`` -> ``metaprotocol_local_response_error{listener, error_kind}``;
    ``cluster.C`` / ``upstream_rq`` -> ``cluster_upstream_rq{cluster="C"}``;
    any other ``HEAD.REST`` / ``name`` -> ``HEAD_name{scope="REST"}``.
    Listener names are given so a name with dots in it is still one label.
    """
    if scope.startswith(_CLUSTER_PREFIX):
        return "cluster_" + _safe(name), {"cluster": scope[len(_CLUSTER_PREFIX):]}
    if scope.startswith(_LISTENER_PREFIX):
        rest = scope[len(_LISTENER_PREFIX):]
        listener = ""
        for known in listeners:
            if (rest == known or rest.startswith(known + ".")) and len(known) > len(listener):
                listener = known
        if not listener:
            listener = rest.split(".", 1)[0]
        tail = rest[len(listener) + 1:]
        labels = {"listener": listener}
        prefix = "metaprotocol_"
        if tail.startswith("method."):
            prefix, labels["method"] = "metaprotocol_method_", tail[len("method."):]
        elif tail.startswith("route."):
            prefix, labels["route"] = "metaprotocol_route_", tail[len("route."):]
        elif tail:
            prefix = f"metaprotocol_{_safe(tail)}_"
        if name.startswith(_LOCAL_ERROR):
            labels["error_kind"] = name[len(_LOCAL_ERROR):]
            name = "local_response_error"
        return prefix + _safe(name), labels
    head, _, rest = scope.partition(".")
    return _safe(f"{head}_{name}"), ({"scope": rest} if rest else {})


class StatsCollector:
    """A prometheus-client custom collector over a StatsStore: families built fresh on every scrape."""

    def __init__(self, store: StatsStore, listeners: Callable[[], Iterable[str]] = lambda: ()) -> None:
        self.store = store
        self.listeners = listeners

    def collect(self) -> Iterator[Metric]:
        listeners = list(self.listeners())
        families: dict[str, tuple[Metric, list[str]]] = {}
        for scope, name, stat in self.store.items():
            family_name, labels = prometheus_name(scope, name, listeners)
            found = families.get(family_name)
            if found is None:
                labelnames = list(labels)
                doc = f"metaproxy stat {name} (docs/stats.md)"
                if isinstance(stat, Histogram):
                    family: Metric = HistogramMetricFamily(family_name, doc, labels=labelnames)
                elif isinstance(stat, Gauge):
                    family = GaugeMetricFamily(family_name, doc, labels=labelnames)
                else:
                    family = CounterMetricFamily(family_name, doc, labels=labelnames)
                found = families[family_name] = (family, labelnames)
            family, labelnames = found
            values = [labels.get(key, "") for key in labelnames]
            if isinstance(stat, Histogram) and isinstance(family, HistogramMetricFamily):
                family.add_metric(values, _buckets(stat), stat.sum)
            elif isinstance(stat, (Counter, Gauge)) and not isinstance(family, HistogramMetricFamily):
                family.add_metric(values, stat.value)  # type: ignore[attr-defined]
            else:
                log.debug("stat %s.%s skipped: its family %s has another type", scope, name, family_name)
        for family, _ in families.values():
            yield family


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    out = []
    total = 0
    for bound, n in zip(hist.bounds, hist.counts, strict=False):
        total += n
        out.append((floatToGoString(bound), total))
    out.append(("+Inf", hist.count))
    return out


def prometheus_text(store: StatsStore, listeners: Iterable[str] = ()) -> bytes:
    """The store in the Prometheus text exposition format."""
    names = list(listeners)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(store, lambda: names))  # type: ignore[arg-type]
    return generate_latest(registry)


# -- dumps -------------------------------------------------------------------------

def _stats_json(store: StatsStore, pattern: re.Pattern[str] | None) -> dict[str, Any]:
    stats = []
    for scope, name, stat in store.items():
        full = f"{scope}.{name}"
        if pattern is not None and not pattern.search(full):
            continue
        if isinstance(stat, Histogram):
            stats.append({"name": full, "count": stat.count, "sum": stat.sum, "P50": stat.quantile(0.5),
                          "P99": stat.quantile(0.99)})
        else:
            stats.append({"name": full, "value": stat.value})
    return {"stats": stats}


def _subscription_status(sub: Any) -> dict[str, Any]:
    status = getattr(sub, "status", None)
    if callable(status):
        return dict(status())
    keys = ("version", "nonce", "state", "connected", "updates", "rejected", "last_error")
    return {key: getattr(sub, key) for key in keys if hasattr(sub, key)}


def config_dump(proxy: Any) -> dict[str, Any]:
    """Listeners with their filters and routes in force (and RDS version), clusters with endpoints."""
    listeners = []
    for name, listener in proxy.listeners.items():
        lc = listener.config
        table = listener.routes.current
        server = listener.server
        address = server.address[:2] if server is not None else lc.address
        entry: dict[str, Any] = {
            "name": name,
            "address": f"{address[0]}:{address[1]}",
            "bound": server is not None,
            "draining": listener.draining,
            "protocol": {"name": lc.protocol.name, "codec": lc.protocol.codec, "options": lc.protocol.options},
            "filters": [{"name": fc.name, **fc.options} for fc in lc.filters],
            "route_config": None if table is None else {
                "name": table.name, "version": table.version, "routes": [r.name for r in table.routes],
                "source": table.source,
            },
            "route_updates": getattr(listener.routes, "updates", 0),
            "active_connections": len(getattr(listener, "connections", ())),
            # How plain-socket connections are served: in the loop's callbacks, or on greenlets
            # (a filter that may block, or a protocol that keeps replies in order).
            "serving": "callbacks" if getattr(listener, "evented", False) else "greenlets",
        }
        if lc.rds is not None:
            entry["rds"] = {"route_config_name": lc.rds.route_config_name, "server": lc.rds.server,
                            **_subscription_status(proxy.subscriptions.get(name))}
        listeners.append(entry)
    return {
        "source": proxy.config.source,
        "listeners": listeners,
        "clusters": [_cluster_dump(c) for c in proxy.clusters.clusters.values()],
        "access_log": [vars(a) for a in proxy.config.access_log],
        "tracing": proxy.config.tracing,
        # Whether this process runs the hot path as mypyc compiled it, and if not why (metaproxy/compiled.py).
        "hot_path": {"mode": compiled.STATE["mode"], "reason": compiled.STATE["reason"],
                     "modules": len(compiled.STATE["modules"])},
        # The access log's capture and render: in C (metaproxy/_accesslog.c) or the Python path, and why.
        "access_log_renderer": accesslog.native_state(),
    }


def _cluster_dump(cluster: Any) -> dict[str, Any]:
    cfg = cluster.config
    now = time.monotonic()
    return {
        "name": cluster.name,
        "lb_policy": cfg.lb_policy,
        "connect_timeout": cfg.connect_timeout,
        "circuit_breakers": vars(cfg.circuit_breakers),
        "active_requests": cluster.active_requests,
        "endpoints": [{
            "address": e.address,
            "weight": e.weight,
            "healthy": e.healthy,
            "ejected": bool(e.ejected_until and now < e.ejected_until),
            "in_rotation": e.in_rotation(now),
            "active_requests": e.active_requests,
        } for e in cluster.endpoints],
        #: One per endpoint and protocol in use; "responses": "passed through" while no request
        #: sent there reads its response beyond the status (Codec.decode_passthrough), else "decoded".
        "pools": [{
            "endpoint": address,
            "protocol": protocol_key.split(":", 1)[0],
            "responses": "passed through" if pool.passthrough else "decoded",
        } for (address, protocol_key), pool in list(cluster.pools.items())],
    }


def clusters_text(dump: list[dict[str, Any]]) -> str:
    """Envoy's ``/clusters`` lines: ``CLUSTER::HOST::KEY::VALUE``."""
    lines = []
    for c in dump:
        for e in c["endpoints"]:
            flags = []
            if not e["healthy"]:
                flags.append("/failed_active_hc")
            if e["ejected"]:
                flags.append("/failed_outlier_check")
            prefix = f"{c['name']}::{e['address']}"
            lines.append(f"{prefix}::health_flags::{''.join(flags) or 'healthy'}")
            lines.append(f"{prefix}::weight::{e['weight']}")
            lines.append(f"{prefix}::rq_active::{e['active_requests']}")
    return "\n".join(lines) + "\n"


# -- the server --------------------------------------------------------------------

Response = tuple[str, str, bytes]  # status line, content type, body
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


def _json(data: Any, status: str = "200 OK") -> Response:
    return status, _JSON, (json.dumps(data, indent=2, default=str) + "\n").encode()


def _text(body: str, status: str = "200 OK") -> Response:
    return status, _TEXT, body.encode()


class AdminServer:
    """Serve the admin endpoints for one Proxy on ``address`` (host, port); port 0 picks one."""

    def __init__(self, proxy: Any, address: tuple[str, int]) -> None:
        self.proxy = proxy
        self.requested_address = address
        self.server: WSGIServer | None = None
        self._routes: dict[str, tuple[tuple[str, ...], Callable[[dict[str, list[str]]], Response]]] = {
            "/": (("GET",), self._index),
            "/stats": (("GET",), self._stats),
            "/stats/prometheus": (("GET",), self._prometheus),
            "/config_dump": (("GET",), lambda q: _json(config_dump(self.proxy))),
            "/clusters": (("GET",), self._clusters),
            "/ready": (("GET", "HEAD"), self._ready),
            "/healthz": (("GET", "HEAD"), lambda q: _text("OK\n")),
            "/drain": (("POST",), self._drain),
            "/logging": (("GET", "POST"), self._logging),
        }

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self.server = WSGIServer(self.requested_address, self.app, log=None, error_log=log)
        self.server.start()
        log.info("admin on http://%s:%d/", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.address[:2]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None

    # -- WSGI --------------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        found = self._routes.get(path.rstrip("/") or "/")
        if found is None:
            status, ctype, body = _text(f"no such admin endpoint {path}; see /\n", "404 Not Found")
        elif method not in found[0]:
            status, ctype, body = _text(f"{path} takes {' or '.join(found[0])}\n", "405 Method Not Allowed")
        else:
            try:
                status, ctype, body = found[1](query)
            except ValueError as exc:
                status, ctype, body = _text(f"{exc}\n", "400 Bad Request")
            except Exception:
                log.exception("admin %s failed", path)
                status, ctype, body = _text("internal error, see the proxy log\n", "500 Internal Server Error")
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        if found is not None and method not in found[0]:
            headers.append(("Allow", ", ".join(found[0])))
        start_response(status, headers)
        return [b"" if method == "HEAD" else body]

    # -- handlers ----------------------------------------------------------------
    def _index(self, query: dict[str, list[str]]) -> Response:
        return _text(INDEX)

    def _stats(self, query: dict[str, list[str]]) -> Response:
        store: StatsStore = self.proxy.stats
        pattern = None
        if "filter" in query:
            try:
                pattern = re.compile(query["filter"][0])
            except re.error as exc:
                raise ValueError(f"filter: not a regular expression: {exc}") from None
        if query.get("format", [""])[0] == "json":
            return _json(_stats_json(store, pattern))
        text = store.text()
        if pattern is not None:
            text = "".join(line + "\n" for line in text.splitlines() if pattern.search(line.split(":", 1)[0]))
        return _text(text)

    def _prometheus(self, query: dict[str, list[str]]) -> Response:
        return "200 OK", CONTENT_TYPE_LATEST, prometheus_text(self.proxy.stats, self.proxy.listeners.keys())

    def _clusters(self, query: dict[str, list[str]]) -> Response:
        dump = [_cluster_dump(c) for c in self.proxy.clusters.clusters.values()]
        if query.get("format", [""])[0] == "json":
            return _json({"clusters": dump})
        return _text(clusters_text(dump))

    def _ready(self, query: dict[str, list[str]]) -> Response:
        if self.proxy.ready():
            return _text("LIVE\n")
        state = "DRAINING" if getattr(self.proxy, "draining", False) else "PRE_INITIALIZING"
        return _text(f"{state}\n", "503 Service Unavailable")

    def _drain(self, query: dict[str, list[str]]) -> Response:
        timeout = None
        if "timeout" in query:
            try:
                timeout = parse_duration(query["timeout"][0])
            except ValueError as exc:
                raise ValueError(f"timeout: {exc}") from None
        job = gevent.spawn(self.proxy.drain, timeout)
        if query.get("wait", ["false"])[0] in ("1", "true", "yes"):
            job.join()
            return _json({"draining": True, "finished": bool(job.value)})
        gevent.sleep(0)  # let drain begin, so /ready answers DRAINING from now on
        return _json({"draining": True}, "202 Accepted")

    def _logging(self, query: dict[str, list[str]]) -> Response:
        if "level" in query:
            level_name = query["level"][0].upper()
            level = logging.getLevelName(level_name)
            if not isinstance(level, int):
                raise ValueError(f"level: unknown level {query['level'][0]!r} "
                                 "(debug, info, warning, error, critical)")
            names = query.get("logger") or ["metaproxy"]
            for name in names:
                logging.getLogger(name).setLevel(level)
            if names == ["metaproxy"]:
                logging.getLogger().setLevel(level)
        levels = {"root": logging.getLevelName(logging.getLogger().getEffectiveLevel())}
        for name in sorted(logging.root.manager.loggerDict):
            if name.startswith("metaproxy"):
                levels[name] = logging.getLevelName(logging.getLogger(name).getEffectiveLevel())
        return _json({"levels": levels})


# -- several worker processes ------------------------------------------------------

def snapshot(store: StatsStore) -> list[list[Any]]:
    """A JSON-able copy of every stat, for a worker to hand to the process that serves the admin port."""
    out: list[list[Any]] = []
    for scope, name, stat in store.items():
        if isinstance(stat, Histogram):
            out.append([scope, name, "h", {"bounds": list(stat.bounds), "counts": list(stat.counts),
                                            "sum": stat.sum, "count": stat.count}])
        else:
            out.append([scope, name, "g" if isinstance(stat, Gauge) else "c", stat.value])
    return out


def merge_snapshots(snapshots: Iterable[list[list[Any]]]) -> StatsStore:
    """One store summing the workers' snapshots: counters and gauges add up, histograms add bucket by bucket."""
    merged = StatsStore()
    for snap in snapshots:
        for scope, name, kind, value in snap:
            if kind == "h":
                hist = merged.histogram(scope, name)
                if tuple(value["bounds"]) != hist.bounds:
                    hist.bounds = tuple(value["bounds"])
                hist.merge(list(value["counts"]), value["sum"], value["count"])
            elif kind == "g":
                merged.gauge(scope, name).inc(value)
            else:
                merged.counter(scope, name).inc(value)
    return merged
