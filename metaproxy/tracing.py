"""OpenTelemetry tracing: a server span per request, a client span per upstream try.

The tracer is a :class:`~metaproxy.observer.RequestObserver`. At
``request_start`` it reads W3C ``traceparent``/``tracestate`` from the request
Metadata (whatever the codec decoded them from: tinyrpc headers, THeader
headers, Dubbo attachments) and starts a SERVER span named ``SERVICE/METHOD``
under it. At each ``upstream_start`` it starts a CLIENT span and writes that
span's context into ``ctx.mutation``, so the codec carries it to the upstream
and the upstream's spans hang under the proxy's.

Sampling: a request that arrives with a ``traceparent`` follows its parent's
decision; one without is sampled at ``sampling_ratio``. An unsampled root
request costs one ``random()`` call and nothing else (no span objects, no
propagation): the upstream then starts its own trace.

Spans leave through :class:`GreenletBatchSpanProcessor`, not the SDK's
BatchSpanProcessor: under ``gevent.monkey.patch_all`` the SDK's worker thread
is a greenlet that runs only when the request path yields, and in a tight loop
its bounded queue (2048) overflowed and dropped most spans. Ours has a large
queue, and when the queue is full the request that ends a span exports a batch
itself (back-pressure) instead of dropping it.

Only the OpenTelemetry *API* is used on the request path; the SDK and the
exporter are chosen by config here, at build time.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import Any

import gevent
from gevent.event import Event
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from metaproxy.chain import RequestContext
from metaproxy.message import Metadata, ProxyError
from metaproxy.observer import RequestObserver
from metaproxy.settings import parse_duration

__all__ = ["GreenletBatchSpanProcessor", "RequestTracer", "make_tracer"]

EXPORTERS = ("otlp", "console", "memory", "none")
DEFAULTS: dict[str, Any] = {
    "service_name": "metaproxy",
    "exporter": "otlp",
    "sampling_ratio": 1.0,
    "endpoint": None,  # otlp: collector address (the exporter's default when absent)
    "path": "stdout",  # console: stdout, stderr or a file (one JSON span per line)
    "max_queue_size": 65536,
    "max_export_batch_size": 512,
    "schedule_delay": 0.5,
}

_PROPAGATOR = TraceContextTextMapPropagator()


class _MetadataGetter(Getter[Metadata]):
    """Read propagation keys from Metadata as strings (values may be typed)."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        value = carrier.get_str(key)
        return [value] if value is not None else None

    def keys(self, carrier: Metadata) -> list[str]:
        return list(carrier.keys())


_GETTER = _MetadataGetter()


class TraceState:
    """What the tracer keeps in ``ctx.trace``: the server span and its trace id (for access logs)."""

    __slots__ = ("span", "trace_id")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.trace_id = format(span.get_span_context().trace_id, "032x")


class RequestTracer(RequestObserver):
    """Makes the spans of every request; see the module docstring."""

    #: Spans carry the response status only: responses may be passed back undecoded.
    reads_response_metadata = False

    def __init__(self, tracer: trace.Tracer, sampling_ratio: float = 1.0, provider: Any = None,
                 exporter: Any = None, processor: Any = None) -> None:
        self.tracer = tracer
        self.sampling_ratio = sampling_ratio
        self.provider = provider
        #: The exporter (the in-memory one lets in-process tests read the spans).
        self.exporter = exporter
        self.processor = processor

    # -- server span -------------------------------------------------------------
    def request_start(self, ctx: RequestContext) -> None:
        md = ctx.metadata
        if "traceparent" in md:
            parent = _PROPAGATOR.extract(md, getter=_GETTER)
        elif self.sampling_ratio >= 1.0 or random.random() < self.sampling_ratio:
            parent = None
        else:
            return
        service = md.get_str("service", "") or ""
        method = md.get_str("method", "") or ""
        # Few attributes: the SDK validates each one, and that is most of a span's cost.
        span = self.tracer.start_span(
            f"{service}/{method}", context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": ctx.protocol, "rpc.service": service, "rpc.method": method},
        )
        ctx.trace = TraceState(span)

    def request_end(self, ctx: RequestContext) -> None:
        state = ctx.trace
        if state is None:
            return
        span = state.span
        if span.is_recording():
            status = _response_status(ctx)
            attributes: dict[str, Any] = {"metaproxy.response_status": status}
            if ctx.route is not None:
                attributes["metaproxy.route"] = ctx.route_name
            if ctx.cluster_name:
                attributes["metaproxy.cluster"] = ctx.cluster_name
            if ctx.upstream_host:
                attributes["metaproxy.upstream_host"] = ctx.upstream_host
            if ctx.response_flags:
                attributes["metaproxy.response_flags"] = ctx.response_flags
            if ctx.attempts > 1:
                attributes["metaproxy.attempts"] = ctx.attempts
            span.set_attributes(attributes)
            if ctx.error is not None:
                span.set_status(Status(StatusCode.ERROR, ctx.error.message))
            elif status == "error":
                span.set_status(Status(StatusCode.ERROR, "application error"))
        span.end()

    # -- client span per try -----------------------------------------------------
    def upstream_start(self, ctx: RequestContext, cluster: str, host: str) -> Any:
        state = ctx.trace
        if state is None:
            return None
        md = ctx.metadata
        span = self.tracer.start_span(
            f"{md.get_str('service', '')}/{md.get_str('method', '')}",
            context=trace.set_span_in_context(state.span), kind=SpanKind.CLIENT,
            attributes={"metaproxy.cluster": cluster, "server.address": host, "metaproxy.attempt": ctx.attempts},
        )
        _PROPAGATOR.inject(ctx.mutation, context=trace.set_span_in_context(span))
        return span

    def upstream_end(self, ctx: RequestContext, token: Any, error: ProxyError | None,
                     response: Metadata | None = None) -> None:
        """End a try's span. ``response`` is the try's response when the router passes it."""
        if token is None:
            return
        if token.is_recording():
            if error is not None:
                token.set_attribute("metaproxy.response_flags", error.flags)
                token.set_status(Status(StatusCode.ERROR, error.message))
            elif response is not None:
                status = response.get_str("response_status", "") or ""
                token.set_attribute("metaproxy.response_status", status)
                if status == "error":
                    token.set_status(Status(StatusCode.ERROR, "application error"))
        token.end()

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def _response_status(ctx: RequestContext) -> str:
    if ctx.error is not None:
        return ctx.error.kind.value
    response = ctx.response_metadata
    return (response.get_str("response_status", "") or "") if response is not None else ""


# -- span processor --------------------------------------------------------------

class GreenletBatchSpanProcessor:
    """Batch ended spans and export them from a greenlet; never drop one for lack of queue space.

    ``exported`` and ``inline_exports`` (batches exported by a request because
    the queue was full) are kept for tests and the admin page.
    """

    def __init__(self, exporter: Any, max_queue_size: int = 65536, max_export_batch_size: int = 512,
                 schedule_delay: float = 0.5) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self.batch_size = max_export_batch_size
        self.schedule_delay = schedule_delay
        self.exported = 0
        self.inline_exports = 0
        self.failed = 0
        self._queue: list[Any] = []
        self._wake = Event()
        self._shutdown = False
        self._worker = gevent.spawn(self._loop)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:  # SDK >= 1.38 calls it; nothing to do
        pass

    def on_end(self, span: Any) -> None:
        if self._shutdown or not span.context.trace_flags.sampled:
            return
        queue = self._queue
        queue.append(span)
        size = len(queue)
        if size >= self.max_queue_size:
            self.inline_exports += 1
            self._export_batch()
        elif size == self.batch_size:
            self._wake.set()

    def _loop(self) -> None:
        while not self._shutdown:
            self._wake.wait(self.schedule_delay)
            self._wake.clear()
            self._export_all()

    def _export_batch(self) -> None:
        batch = self._queue[:self.batch_size]
        del self._queue[:self.batch_size]
        self._send(batch)

    def _send(self, batch: Sequence[Any]) -> None:
        try:
            self.exporter.export(batch)
            self.exported += len(batch)
        except Exception as exc:  # an exporter failure must not reach the request
            self.failed += len(batch)
            sys.stderr.write(f"metaproxy: span export failed: {exc}\n")

    def _export_all(self) -> None:
        while self._queue:
            self._export_batch()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._export_all()
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        self._worker.join(timeout=2.0)
        self._worker.kill(block=False)
        self._export_all()
        self.exporter.shutdown()


# -- building --------------------------------------------------------------------

def read_tracing_config(config: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every value checked; ValueError names the key (``tracing.exporter: ...``)."""
    if not isinstance(config, dict):
        raise ValueError(f"tracing: expected a mapping, got {config!r}")
    for key in config:
        if key not in DEFAULTS:
            raise ValueError(f"tracing: unknown key {key!r} (known: {', '.join(DEFAULTS)})")
    cfg = {**DEFAULTS, **config}
    if cfg["exporter"] not in EXPORTERS:
        raise ValueError(f"tracing.exporter: expected one of {', '.join(EXPORTERS)}, got {cfg['exporter']!r}")
    ratio = cfg["sampling_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"tracing.sampling_ratio: expected a number from 0 to 1, got {ratio!r}")
    for key in ("max_queue_size", "max_export_batch_size"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"tracing.{key}: expected a positive integer, got {value!r}")
    if cfg["max_export_batch_size"] > cfg["max_queue_size"]:
        raise ValueError("tracing.max_export_batch_size: must not exceed max_queue_size")
    try:
        cfg["schedule_delay"] = parse_duration(cfg["schedule_delay"])
    except ValueError as exc:
        raise ValueError(f"tracing.schedule_delay: {exc}") from None
    if not isinstance(cfg["service_name"], str) or not cfg["service_name"]:
        raise ValueError("tracing.service_name: expected a non-empty string")
    return cfg


def _make_exporter(cfg: dict[str, Any]) -> Any:
    kind = cfg["exporter"]
    if kind == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        return InMemorySpanExporter()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        path = cfg["path"]
        if path in ("stdout", "stderr"):
            out = getattr(sys, path)
        else:
            try:
                out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the exporter's owner at exit
            except OSError as exc:
                raise ValueError(f"tracing.path: cannot open {path!r}: {exc.strerror}") from None
        return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore
        except ImportError:
            raise ValueError("tracing.exporter: otlp needs the package opentelemetry-exporter-otlp-proto-grpc "
                             "(or -http); install it, or use exporter: console") from None
    return OTLPSpanExporter(endpoint=cfg["endpoint"]) if cfg["endpoint"] else OTLPSpanExporter()


def make_tracer(config: dict[str, Any]) -> RequestObserver | None:
    """Build the tracer from the ``tracing`` section; None when the exporter is ``none``."""
    cfg = read_tracing_config(config)
    if cfg["exporter"] == "none":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    exporter = _make_exporter(cfg)
    # The ratio is applied by RequestTracer before any span exists; the SDK only follows parents.
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False,
                              resource=Resource.create({"service.name": cfg["service_name"]}))
    processor = GreenletBatchSpanProcessor(exporter, cfg["max_queue_size"], cfg["max_export_batch_size"],
                                           cfg["schedule_delay"])
    provider.add_span_processor(processor)  # type: ignore[arg-type]
    tracer = provider.get_tracer("metaproxy")
    return RequestTracer(tracer, float(cfg["sampling_ratio"]), provider, exporter, processor)
