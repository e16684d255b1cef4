"""A trace crosses a real proxy: client -> proxy server span -> proxy client span -> real upstream headers."""

from __future__ import annotations

import json

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.observability.util import TRACEPARENT, read_lines

pytestmark = pytest.mark.slow

ROUTES = [{"name": "hello", "match": {"metadata": [{"name": "method", "exact": "sayHello"}]},
           "route": {"cluster": "c1"}}]


def spans_by_trace(path, count):
    spans = [json.loads(line) for line in read_lines(path, count)]
    return {(s["context"]["trace_id"][2:], s["kind"]): s for s in spans}


@pytest.mark.timeout(60)
def test_trace_context_reaches_the_upstream_under_the_proxy_client_span(tinyrpc_server, proxy, tmp_path):
    upstream = tinyrpc_server("v1")
    span_file = tmp_path / "spans.jsonl"
    p = proxy({
        "listeners": [tinyrpc_listener(ROUTES)],
        "clusters": [{"name": "c1", "endpoints": [upstream.address]}],
        "tracing": {"service_name": "sidecar", "exporter": "console", "path": str(span_file),
                    "schedule_delay": "20ms"},
    })
    with TinyRpcClient(*p.address()) as client:
        client.call("sayHello", headers={"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
        client.call("sayHello")  # no context: the proxy starts a trace
    continued, started = upstream.received.requests[-2:]

    spans = spans_by_trace(span_file, 4)
    trace_id = TRACEPARENT.split("-")[1]
    server, client_span = spans[(trace_id, "SpanKind.SERVER")], spans[(trace_id, "SpanKind.CLIENT")]
    assert server["name"] == "demo/sayHello"
    assert server["parent_id"] == "0x" + TRACEPARENT.split("-")[2]
    assert client_span["parent_id"] == server["context"]["span_id"]
    assert server["resource"]["attributes"]["service.name"] == "sidecar"
    assert server["attributes"]["metaproxy.route"] == "hello"
    assert server["attributes"]["metaproxy.upstream_host"] == upstream.address
    # What the real upstream read from its tinyrpc headers: the same trace, parented by the proxy's client span.
    version, got_trace, got_parent, flags = continued["traceparent"].split("-")
    assert (version, got_trace, "0x" + got_parent) == ("00", trace_id, client_span["context"]["span_id"])
    assert int(flags, 16) & 1
    assert continued["tracestate"] == "congo=t61rcWkgMzE"

    new_trace = started["traceparent"].split("-")[1]
    assert new_trace != trace_id
    root = spans[(new_trace, "SpanKind.SERVER")]
    assert root["parent_id"] is None
    assert started["traceparent"].split("-")[2] == spans[(new_trace, "SpanKind.CLIENT")]["context"]["span_id"][2:]


@pytest.mark.timeout(90)
def test_under_concurrent_load_every_span_and_log_line_is_written_by_shutdown(tinyrpc_server, tmp_path):
    import threading

    from metaproxy.testing.harness import ProxyProcess

    upstream = tinyrpc_server()
    span_file, log_file = tmp_path / "spans.jsonl", tmp_path / "access.log"
    proc = ProxyProcess({
        "listeners": [tinyrpc_listener(ROUTES)],
        "clusters": [{"name": "c1", "endpoints": [upstream.address]}],
        "access_log": [{"path": str(log_file), "format": "%REQUEST_ID% %TRACE_ID%"}],
        # A small queue and a slow schedule: the queue fills while requests run, as under real load.
        "tracing": {"exporter": "console", "path": str(span_file), "max_queue_size": 64,
                    "max_export_batch_size": 32, "schedule_delay": "5s"},
    }, tmp_path / "p").start()
    clients, per_client = 8, 60
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with TinyRpcClient(*proc.address()) as client:
                for _ in range(per_client):
                    assert client.call("sayHello")[0]["response_status"] == "success"
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert proc.stop() == 0  # SIGTERM: drain, then the observers flush what they hold
    assert not failures
    total = clients * per_client
    spans = [json.loads(line) for line in span_file.read_text().splitlines()]
    assert len(spans) == 2 * total
    log_lines = log_file.read_text().splitlines()
    assert len(log_lines) == total
    traced = {s["context"]["trace_id"][2:] for s in spans}
    assert {line.split(" ")[1] for line in log_lines} == traced
