"""The tracer observer, called directly as the server and router call it, with the in-memory exporter."""

from __future__ import annotations

import gevent
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from metaproxy.chain import RequestContext
from metaproxy.message import ErrorType, Metadata, ProxyError, ResponseStatus
from metaproxy.tracing import GreenletBatchSpanProcessor, make_tracer
from tests.observability.util import TRACEPARENT

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"


def tracer(**config):
    obs = make_tracer({"exporter": "memory", "service_name": "test-proxy", **config})
    assert obs is not None
    return obs


def one_request(obs, headers=None, error=None, upstream_error=None, tries=1):
    """Drive the hooks in the order server.py and filters/router.py call them."""
    md = Metadata(request_id=1, service="demo", method="sayHello", **(headers or {}))
    ctx = RequestContext(md, "in", "tinyrpc")
    obs.request_start(ctx)
    injected = []
    for attempt in range(tries):
        ctx.attempts = attempt + 1
        token = obs.upstream_start(ctx, "c1", "127.0.0.1:9191")
        injected.append(ctx.mutation.get("traceparent"))
        obs.upstream_end(ctx, token, upstream_error)
    if error is not None:
        ctx.error = error
        ctx.response_flags = error.flags
    else:
        ctx.response_metadata = Metadata(response_status=ResponseStatus.SUCCESS)
    obs.request_end(ctx)
    return ctx, injected


def finished(obs):
    obs.processor.force_flush()
    return obs.exporter.get_finished_spans()


def test_server_span_continues_the_incoming_trace_and_the_client_span_is_injected():
    obs = tracer()
    ctx, [injected] = one_request(obs, {"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    client, server = finished(obs)
    assert (server.name, server.kind, client.name, client.kind) == \
        ("demo/sayHello", SpanKind.SERVER, "demo/sayHello", SpanKind.CLIENT)
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_SPAN and server.parent.is_remote
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert injected == f"00-{TRACE_ID}-{client.context.span_id:016x}-01"
    assert ctx.mutation["tracestate"] == "vendor=1"
    assert ctx.trace.trace_id == TRACE_ID
    assert server.attributes["rpc.method"] == "sayHello" and server.attributes["rpc.system"] == "tinyrpc"
    assert server.attributes["metaproxy.response_status"] == "success"
    assert client.attributes["server.address"] == "127.0.0.1:9191"
    assert server.resource.attributes["service.name"] == "test-proxy"
    obs.close()


def test_a_request_without_context_starts_a_trace_and_each_try_gets_its_own_client_span():
    obs = tracer()
    timeout = ProxyError(ErrorType.TIMEOUT, "upstream request timeout", "UT")
    ctx, injected = one_request(obs, error=timeout, upstream_error=timeout, tries=3)
    spans = finished(obs)
    server = [s for s in spans if s.kind is SpanKind.SERVER][0]
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert server.parent is None and len(clients) == 3
    assert {c.parent.span_id for c in clients} == {server.context.span_id}
    # Flags: sampled (01), and the SDK may add W3C level 2's "random trace id" bit (02).
    expected = [f"00-{server.context.trace_id:032x}-{c.context.span_id:016x}" for c in clients]
    assert [i[:-3] for i in injected] == expected
    assert all(int(i[-2:], 16) & 1 for i in injected)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["metaproxy.response_flags"] == "UT"
    assert server.attributes["metaproxy.response_status"] == "timeout"
    assert [c.attributes["metaproxy.attempt"] for c in clients] == [1, 2, 3]
    assert all(c.status.status_code is StatusCode.ERROR for c in clients)
    obs.close()


def test_sampling_ratio_zero_makes_no_spans_and_injects_nothing():
    obs = tracer(sampling_ratio=0)
    ctx, [injected] = one_request(obs)
    assert injected is None and ctx.trace is None
    assert finished(obs) == ()
    obs.close()


def test_an_incoming_sampled_parent_wins_over_the_ratio():
    obs = tracer(sampling_ratio=0)
    one_request(obs, {"traceparent": TRACEPARENT})
    assert len(finished(obs)) == 2
    obs.close()


def test_an_incoming_unsampled_parent_is_propagated_but_not_exported():
    obs = tracer()
    _, [injected] = one_request(obs, {"traceparent": TRACEPARENT[:-2] + "00"})
    assert injected.startswith(f"00-{TRACE_ID}-") and injected.endswith("-00")
    assert finished(obs) == ()
    obs.close()


def test_sampling_ratio_samples_about_that_share():
    obs = tracer(sampling_ratio=0.1)
    for _ in range(2000):
        one_request(obs)
    servers = [s for s in finished(obs) if s.kind is SpanKind.SERVER]
    assert 100 < len(servers) < 320
    obs.close()


def test_no_span_is_lost_in_a_tight_loop_that_never_yields():
    # Under patch_all the SDK's BatchSpanProcessor worker only runs when the loop yields; with a bounded
    # queue it dropped spans. Ours exports inline when its queue is full instead of dropping.
    obs = tracer(max_queue_size=1000, max_export_batch_size=100)
    for _ in range(5000):
        one_request(obs)
    assert obs.processor.inline_exports > 0
    obs.close()
    assert len(obs.exporter.get_finished_spans()) == 10000
    assert obs.processor.failed == 0


def test_no_span_is_lost_with_many_greenlets_and_a_slow_exporter():
    obs = tracer(max_queue_size=256, max_export_batch_size=64, schedule_delay="10ms")
    exporter = obs.exporter
    real_export = exporter.export

    def slow_export(batch):
        gevent.sleep(0.001)  # a network exporter yields while it sends
        return real_export(batch)

    exporter.export = slow_export

    def client():
        for _ in range(50):
            one_request(obs)
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(client) for _ in range(100)], timeout=60, raise_error=True)
    obs.close()
    assert len(exporter.get_finished_spans()) == 100 * 50 * 2


def test_processor_worker_exports_without_being_asked():
    obs = tracer(schedule_delay="10ms")
    one_request(obs)
    for _ in range(200):
        if obs.processor.exported == 2:
            break
        gevent.sleep(0.01)
    assert obs.processor.exported == 2
    obs.close()


def test_an_exporter_failure_is_counted_not_raised():
    class Broken:
        def export(self, batch):
            raise ConnectionError("collector down")

        def shutdown(self):
            pass

    processor = GreenletBatchSpanProcessor(Broken(), max_queue_size=2, max_export_batch_size=2)
    obs = tracer()
    obs.provider.add_span_processor(processor)
    one_request(obs)  # two spans: the second fills the queue and exports inline
    processor.shutdown()
    assert processor.failed == 2
    obs.close()


@pytest.mark.parametrize("config, message", [
    ({"exporter": "zipkin"}, "tracing.exporter: expected one of otlp, console, memory, none"),
    ({"sampling_ratio": 2}, "tracing.sampling_ratio: expected a number from 0 to 1"),
    ({"sampling_ratio": "all"}, "tracing.sampling_ratio: expected a number from 0 to 1"),
    ({"max_queue_size": 0}, "tracing.max_queue_size: expected a positive integer"),
    ({"max_queue_size": 10, "max_export_batch_size": 20}, "tracing.max_export_batch_size: must not exceed"),
    ({"schedule_delay": "often"}, "tracing.schedule_delay: expected a duration"),
    ({"sample": 1}, "tracing: unknown key 'sample'"),
])
def test_bad_tracing_config_names_the_key(config, message):
    with pytest.raises(ValueError) as exc:
        make_tracer(config)
    assert str(exc.value).startswith(message)


def test_exporter_none_means_no_tracer():
    assert make_tracer({"exporter": "none"}) is None


def test_a_try_answered_with_an_application_error_is_an_error_span_when_the_router_passes_the_response():
    obs = tracer()
    md = Metadata(request_id=1, service="demo", method="fail")
    ctx = RequestContext(md, "in", "tinyrpc")
    obs.request_start(ctx)
    token = obs.upstream_start(ctx, "c1", "127.0.0.1:9191")
    obs.upstream_end(ctx, token, None, Metadata(response_status=ResponseStatus.ERROR))
    obs.request_end(ctx)
    client = [s for s in finished(obs) if s.kind is SpanKind.CLIENT][0]
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes["metaproxy.response_status"] == "error"
    obs.close()
