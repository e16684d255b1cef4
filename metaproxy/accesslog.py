"""Access logs: one line per request, as JSON or an Envoy-style ``%FIELD%`` format string.

A logger is a :class:`~metaproxy.observer.RequestObserver`: at ``request_end``
it renders the line and appends it to an in-memory list; nothing else happens
on the request path. A flusher greenlet writes the list out every
``FLUSH_INTERVAL`` seconds (or sooner when it grows), handing the write itself
to gevent's thread pool, so a slow disk or a full stdout pipe stalls neither
the request nor the event loop. If the writer falls far behind, lines beyond
``MAX_PENDING_LINES`` are dropped and counted (``dropped``) rather than
letting memory grow without bound.

Format strings are compiled once into a list of literals and field getters;
see docs/observability.md for the fields.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import gevent
from gevent.event import Event

from metaproxy.chain import RequestContext
from metaproxy.config import AccessLogConfig
from metaproxy.observer import RequestObserver
from metaproxy.settings import parse_duration

__all__ = ["AccessLogger", "FIELDS", "compile_format", "make_access_loggers", "make_filter"]

FLUSH_INTERVAL = 0.2
#: Pending lines that wake the flusher before its interval ends.
WAKE_LINES = 1024
#: Pending lines kept at most when the writer cannot keep up; more are dropped and counted.
MAX_PENDING_LINES = 100_000

Getter = Callable[[RequestContext, float], Any]


# -- fields ----------------------------------------------------------------------

class _WallClock:
    """Monotonic -> wall time by an offset refreshed once per second, and the formatted second cached.

    ``ctx.start_time`` is monotonic (immune to clock steps); logs want wall time.
    """

    __slots__ = ("offset", "refresh_at", "second", "text")

    def __init__(self) -> None:
        self.offset = 0.0
        self.refresh_at = -1.0
        self.second = -1
        self.text = ""

    def iso(self, monotonic: float, now: float) -> str:
        if now >= self.refresh_at:
            self.offset = time.time() - time.monotonic()
            self.refresh_at = now + 1.0
        wall = monotonic + self.offset
        second = int(wall)
        if second != self.second:
            self.second, self.text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int((wall - second) * 1000):03d}Z"


_CLOCK = _WallClock()


def _start_time(ctx: RequestContext, end: float) -> str:
    return _CLOCK.iso(ctx.start_time, end)


def _duration(ctx: RequestContext, end: float) -> int:
    # round, not truncate: 0.2 s measured as 0.19999... is 200 ms
    return round((end - ctx.start_time) * 1000.0)


def response_status(ctx: RequestContext) -> str:
    """``success``/``error`` from the upstream, the error kind of a local reply, or ``-`` (oneway)."""
    if ctx.error is not None:
        return ctx.error.kind.value
    response = ctx.response_metadata
    if response is None:
        return ""
    status = response.get("response_status")
    if status is None:
        return ""
    return status.value if isinstance(status, Enum) else str(status)


def _md(key: str) -> Getter:
    return lambda ctx, end: ctx.metadata.get_str(key, "")


def _response_md(key: str) -> Getter:
    def get(ctx: RequestContext, end: float) -> str:
        response = ctx.response_metadata
        return response.get_str(key, "") if response is not None else ""
    return get


def _trace_id(ctx: RequestContext, end: float) -> str:
    return getattr(ctx.trace, "trace_id", "") or ""


#: Field name -> getter. The JSON format writes every one of them, keys in lower case.
FIELDS: dict[str, Getter] = {
    "START_TIME": _start_time,
    "DURATION": _duration,
    "REQUEST_ID": lambda ctx, end: ctx.metadata.get("request_id", ""),
    "PROTOCOL": lambda ctx, end: ctx.protocol,
    "LISTENER": lambda ctx, end: ctx.listener,
    "SERVICE": lambda ctx, end: ctx.metadata.get_str("service", ""),
    "METHOD": lambda ctx, end: ctx.metadata.get_str("method", ""),
    "ROUTE_NAME": lambda ctx, end: ctx.route_name,
    "UPSTREAM_CLUSTER": lambda ctx, end: ctx.cluster_name,
    "UPSTREAM_HOST": lambda ctx, end: ctx.upstream_host,
    "RESPONSE_STATUS": lambda ctx, end: response_status(ctx),
    "RESPONSE_FLAGS": lambda ctx, end: ctx.response_flags,
    "ERROR_MESSAGE": lambda ctx, end: ctx.error.message if ctx.error is not None else "",
    "ATTEMPTS": lambda ctx, end: ctx.attempts,
    "BYTES_RECEIVED": lambda ctx, end: ctx.bytes_received,
    "BYTES_SENT": lambda ctx, end: ctx.bytes_sent,
    "DOWNSTREAM_REMOTE_ADDRESS": lambda ctx, end: ctx.downstream_address,
    "DOWNSTREAM_PEER_IDENTITY": lambda ctx, end: ctx.peer_identity,
    "TRACE_ID": _trace_id,
}
#: Fields that take a key: ``%METADATA(x-user)%``.
KEYED_FIELDS: dict[str, Callable[[str], Getter]] = {
    "METADATA": _md,
    "RESPONSE_METADATA": _response_md,
}

_FIELD = re.compile(r"%([A-Z_]+)(?:\(([^()%]*)\))?%")


def compile_format(fmt: str) -> list[str | Getter]:
    """Split a format string into literals and getters; ValueError names an unknown field."""
    parts: list[str | Getter] = []
    pos = 0
    for m in _FIELD.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos:m.start()])
        name, key = m.group(1), m.group(2)
        if key is not None:
            if name not in KEYED_FIELDS:
                raise ValueError(f"unknown field %{name}(...)% (keyed fields: {', '.join(KEYED_FIELDS)})")
            if not key:
                raise ValueError(f"%{name}()% needs a key, like %{name}(x-user)%")
            parts.append(KEYED_FIELDS[name](key))
        elif name in FIELDS:
            parts.append(FIELDS[name])
        else:
            raise ValueError(f"unknown field %{name}%")
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return parts


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return value if type(value) is str else str(value)


def text_renderer(fmt: str) -> Callable[[RequestContext, float], str]:
    parts = compile_format(fmt if fmt.endswith("\n") else fmt + "\n")

    def render(ctx: RequestContext, end: float) -> str:
        return "".join(p if type(p) is str else _text(p(ctx, end)) for p in parts)  # type: ignore[operator]
    return render


_escape = json.encoder.encode_basestring  # type: ignore[attr-defined]  # the C string escaper


def _js(value: str | None) -> str:
    return _escape(value) if value else "null"


def _jv(value: Any) -> str:
    if type(value) is int:
        return str(value)
    if value is None or value == "":
        return "null"
    return _escape(value if type(value) is str else str(value))


def json_renderer() -> Callable[[RequestContext, float], str]:
    """Every field in FIELDS as one JSON object (keys in lower case); empty values are null.

    One f-string with the C string escaper, not a dict and ``json.dumps``:
    this is the per-request cost of a JSON access log. A test checks that
    its keys are exactly FIELDS.
    """
    def render(ctx: RequestContext, end: float) -> str:
        md = ctx.metadata
        err = ctx.error
        service, method = md.get("service"), md.get("method")
        if type(service) is not str:
            service = md.get_str("service")
        if type(method) is not str:
            method = md.get_str("method")
        trace = ctx.trace
        return (
            f'{{"start_time":"{_CLOCK.iso(ctx.start_time, end)}","duration":{round((end - ctx.start_time) * 1000.0)},'
            f'"request_id":{_jv(md.get("request_id"))},"protocol":{_js(ctx.protocol)},'
            f'"listener":{_js(ctx.listener)},"service":{_js(service)},"method":{_js(method)},'
            f'"route_name":{_js(ctx.route.name if ctx.route is not None else None)},'
            f'"upstream_cluster":{_js(ctx.cluster_name)},"upstream_host":{_js(ctx.upstream_host)},'
            f'"response_status":{_js(response_status(ctx))},"response_flags":{_js(ctx.response_flags)},'
            f'"error_message":{_js(err.message if err is not None else None)},"attempts":{ctx.attempts},'
            f'"bytes_received":{ctx.bytes_received},"bytes_sent":{ctx.bytes_sent},'
            f'"downstream_remote_address":{_js(ctx.downstream_address)},'
            f'"downstream_peer_identity":{_js(ctx.peer_identity)},'
            f'"trace_id":{_js(getattr(trace, "trace_id", None) if trace is not None else None)}}}\n'
        )
    return render


# -- filters ---------------------------------------------------------------------

def make_filter(spec: dict[str, Any]) -> Callable[[RequestContext, float], bool] | None:
    """Turn ``{status: error, min_duration: 100ms, response_flags: [NR]}`` into a predicate (all must hold).

    ``status``: ``error`` (a local reply or an application error) or
    ``success``. ValueError says which key is wrong.
    """
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f"expected a mapping, got {spec!r}")
    tests: list[Callable[[RequestContext, float], bool]] = []
    for key, value in spec.items():
        if key == "status":
            if value not in ("error", "success"):
                raise ValueError(f"status: expected 'error' or 'success', got {value!r}")
            want_error = value == "error"
            tests.append(lambda ctx, end, w=want_error: _is_error(ctx) is w)
        elif key == "min_duration":
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"min_duration: {exc}") from None
            tests.append(lambda ctx, end, s=seconds: end - ctx.start_time >= s)
        elif key == "response_flags":
            flags = [value] if isinstance(value, str) else value
            if not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags):
                raise ValueError(f"response_flags: expected a flag or a list of flags like [NR, UT], got {value!r}")
            wanted = frozenset(flags)
            tests.append(lambda ctx, end, w=wanted: ctx.response_flags in w)
        else:
            raise ValueError(f"unknown key {key!r} (known: status, min_duration, response_flags)")
    if len(tests) == 1:
        return tests[0]
    return lambda ctx, end: all(t(ctx, end) for t in tests)


def _is_error(ctx: RequestContext) -> bool:
    if ctx.error is not None:
        return True
    response = ctx.response_metadata
    return response is not None and str(response.get("response_status", "")) == "error"


# -- output ----------------------------------------------------------------------

class Sink:
    """Where lines go: stdout, stderr or a file opened for append. Written whole, from a worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0  # loggers sharing this sink; the last to close closes the file
        if path == "stdout":
            self.fd, self.owned = sys.stdout.fileno(), False
        elif path == "stderr":
            self.fd, self.owned = sys.stderr.fileno(), False
        else:
            self.fd, self.owned = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), True

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> None:
        self.users -= 1
        if self.users <= 0 and self.owned:
            os.close(self.fd)
            self.owned = False


class AccessLogger(RequestObserver):
    """One ``access_log`` entry: a renderer, an optional filter, and a buffered sink."""

    def __init__(self, sink: Sink, render: Callable[[RequestContext, float], str],
                 accept: Callable[[RequestContext, float], bool] | None = None,
                 flush_interval: float = FLUSH_INTERVAL) -> None:
        self.sink = sink
        self.render = render
        self.accept = accept
        self.flush_interval = flush_interval
        self.written = 0
        self.dropped = 0
        self._pending: list[str] = []
        self._wake = Event()
        self._closed = False
        self._flusher = gevent.spawn(self._flush_loop)

    def request_end(self, ctx: RequestContext) -> None:
        end = time.monotonic()
        if self.accept is not None and not self.accept(ctx, end):
            return
        pending = self._pending
        if len(pending) >= MAX_PENDING_LINES:
            self.dropped += 1
            return
        pending.append(self.render(ctx, end))
        if len(pending) == WAKE_LINES:
            self._wake.set()

    def _flush_loop(self) -> None:
        pool = gevent.get_hub().threadpool
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            lines = self._take()
            if lines:
                try:
                    pool.apply(self.sink.write, (lines,))
                except OSError as exc:
                    self._write_failed(exc)

    def _take(self) -> bytes:
        lines, self._pending = self._pending, []
        self.written += len(lines)
        return "".join(lines).encode("utf-8", "replace")

    def _write_failed(self, exc: OSError) -> None:
        sys.stderr.write(f"metaproxy: access log {self.sink.path}: write failed: {exc}\n")

    def flush(self) -> None:
        """Write what is pending now, on the caller's greenlet (tests and shutdown)."""
        lines = self._take()
        if lines:
            try:
                self.sink.write(lines)
            except OSError as exc:
                self._write_failed(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._flusher.join(timeout=2.0)
        self._flusher.kill(block=False)
        self.flush()
        self.sink.close()


def make_access_loggers(configs: Iterable[AccessLogConfig]) -> list[RequestObserver]:
    """Build one logger per ``access_log`` entry; ValueError names the entry and key (``access_log[0].format``)."""
    loggers: list[RequestObserver] = []
    sinks: dict[str, Sink] = {}
    try:
        for index, cfg in enumerate(configs):
            where = f"access_log[{index}]"
            if cfg.format == "json":
                render = json_renderer()
            else:
                try:
                    render = text_renderer(cfg.format)
                except ValueError as exc:
                    raise ValueError(f"{where}.format: {exc}") from None
            try:
                accept = make_filter(cfg.filter)
            except ValueError as exc:
                raise ValueError(f"{where}.filter: {exc}") from None
            sink = sinks.get(cfg.path)
            if sink is None:
                try:
                    sink = sinks[cfg.path] = Sink(cfg.path)
                except OSError as exc:
                    raise ValueError(f"{where}.path: cannot open {cfg.path!r}: {exc.strerror}") from None
            sink.users += 1
            loggers.append(AccessLogger(sink, render, accept))
    except ValueError:
        for logger in loggers:
            logger.close()
        raise
    return loggers


def check_access_logs(configs: Iterable[AccessLogConfig]) -> list[str]:
    """Problems with formats and filters, without opening any file (for ``metaproxy validate``)."""
    problems = []
    for index, cfg in enumerate(configs):
        where = f"access_log[{index}]"
        if cfg.format != "json":
            try:
                compile_format(cfg.format)
            except ValueError as exc:
                problems.append(f"{where}.format: {exc}")
        try:
            make_filter(cfg.filter)
        except ValueError as exc:
            problems.append(f"{where}.filter: {exc}")
    return problems
