"""Admin pieces in process: the Prometheus mapping, the WSGI app over an unstarted Proxy, worker merging."""

from __future__ import annotations

import io
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaproxy import accesslog
from metaproxy.admin import AdminServer, merge_snapshots, prometheus_name, prometheus_text, snapshot
from metaproxy.config import parse_config
from metaproxy.proxy import Proxy
from metaproxy.router import parse_route_config
from metaproxy.stats import ClusterStats, ListenerStats, StatsStore
from tests.observability.util import sample, samples


@pytest.mark.parametrize("scope, name, expected", [
    ("metaprotocol.in", "request", ("metaprotocol_request", {"listener": "in"})),
    ("metaprotocol.in.v2", "request", ("metaprotocol_request", {"listener": "in.v2"})),
    ("metaprotocol.in.method.sayHello", "request_time_ms",
     ("metaprotocol_method_request_time_ms", {"listener": "in", "method": "sayHello"})),
    ("metaprotocol.in.route.canary", "request", ("metaprotocol_route_request", {"listener": "in", "route": "canary"})),
    ("metaprotocol.in", "local_response_error.over_limit",
     ("metaprotocol_local_response_error", {"listener": "in", "error_kind": "over_limit"})),
    ("cluster.outbound|9090|v1|reviews.default.svc", "upstream_rq",
     ("cluster_upstream_rq", {"cluster": "outbound|9090|v1|reviews.default.svc"})),
    ("cluster.c1", "outlier_detection.ejections_total", ("cluster_outlier_detection_ejections_total",
                                                          {"cluster": "c1"})),
    ("ratelimit.in", "over_limit", ("ratelimit_over_limit", {"scope": "in"})),
    ("server", "uptime", ("server_uptime", {})),
])
def test_prometheus_name_mapping(scope, name, expected):
    assert prometheus_name(scope, name, ["in", "in.v2"]) == expected


def test_prometheus_text_types_and_histogram_buckets():
    store = StatsStore()
    ls = ListenerStats(store, "in")
    cs = ClusterStats(store, "outbound|80||a.b")
    ls.request.inc(3)
    ls.request_active.set(2)
    for ms in (0.3, 4, 700):
        ls.request_time_ms.observe(ms)
    cs.upstream_rq.inc()
    text = prometheus_text(store, ["in"]).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["metaprotocol_request"] == "counter"
    assert types["metaprotocol_request_active"] == "gauge"
    assert types["metaprotocol_request_time_ms"] == "histogram"
    values = samples(text)
    assert sample(values, "metaprotocol_request_total", listener="in") == 3
    assert sample(values, "metaprotocol_request_active", listener="in") == 2
    assert sample(values, "metaprotocol_request_time_ms_bucket", listener="in", le="0.5") == 1
    assert sample(values, "metaprotocol_request_time_ms_bucket", listener="in", le="5.0") == 2
    assert sample(values, "metaprotocol_request_time_ms_bucket", listener="in", le="500.0") == 2
    assert sample(values, "metaprotocol_request_time_ms_bucket", listener="in", le="+Inf") == 3
    assert sample(values, "metaprotocol_request_time_ms_sum", listener="in") == pytest.approx(704.3)
    assert sample(values, "cluster_upstream_rq_total", cluster="outbound|80||a.b") == 1


def test_worker_snapshots_merge_by_summing():
    stores = [StatsStore(), StatsStore()]
    for n, store in enumerate(stores, start=1):
        ls = ListenerStats(store, "in")
        ls.request.inc(n)
        ls.cx_active.set(n)
        ls.request_time_ms.observe(n * 10)
    merged = merge_snapshots(json.loads(json.dumps(snapshot(s))) for s in stores)
    assert merged.value("metaprotocol.in", "request") == 3
    assert merged.value("metaprotocol.in", "cx_active") == 3
    hist = merged.histogram("metaprotocol.in", "request_time_ms")
    assert (hist.count, hist.sum, sum(hist.counts)) == (2, 30.0, 2)


def make_proxy() -> Proxy:
    return Proxy(parse_config({
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [{"name": "in", "address": "127.0.0.1:0", "protocol": {"codec": "tinyrpc"},
                       "route_config": {"name": "r", "routes": [{"name": "a", "route": {"cluster": "c1"}}]}}],
        "clusters": [{"name": "c1", "endpoints": ["127.0.0.1:9"]}],
    }))


def call(server: AdminServer, path: str, method: str = "GET") -> tuple[str, str]:
    path, _, query = path.partition("?")
    got: list[str] = []
    body = server.app({"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method,
                       "wsgi.input": io.BytesIO()}, lambda status, headers: got.append(status))
    return got[0], b"".join(body).decode()


def test_config_dump_shows_a_route_update_with_its_version():
    proxy = make_proxy()
    server = AdminServer(proxy, ("127.0.0.1", 0))
    status, body = call(server, "/config_dump")
    routes = json.loads(body)["listeners"][0]["route_config"]
    assert status == "200 OK" and (routes["version"], routes["routes"]) == ("static", ["a"])
    proxy.listeners["in"].routes.set(parse_route_config(
        {"name": "r", "routes": [{"name": "b", "route": {"cluster": "c1"}}, {"name": "a", "route": {"cluster": "c1"}}]},
        version="7"))
    dump = json.loads(call(server, "/config_dump")[1])["listeners"][0]
    assert (dump["route_config"]["version"], dump["route_config"]["routes"]) == ("7", ["b", "a"])
    assert dump["route_updates"] == 1
    whole = json.loads(call(server, "/config_dump")[1])
    assert whole["hot_path"]["mode"] in ("compiled", "interpreted")
    assert whole["access_log_renderer"] == accesslog.native_state()
    proxy.shutdown()


def test_ready_is_503_until_listeners_are_bound():
    proxy = make_proxy()
    server = AdminServer(proxy, ("127.0.0.1", 0))
    assert call(server, "/ready") == ("503 Service Unavailable", "PRE_INITIALIZING\n")
    assert call(server, "/healthz") == ("200 OK", "OK\n")
    assert call(server, "/stats/prometheus", "POST")[0] == "405 Method Not Allowed"
    assert call(server, "/drain?timeout=soon", "POST")[0] == "400 Bad Request"
    assert "/stats/prometheus" in call(server, "/")[1]
    proxy.shutdown()
