"""Access logs: one line per request, as JSON or an Envoy-style ``%FIELD%`` format string.

A logger is a :class:`~metaproxy.observer.RequestObserver`. What it does per
request is kept to the least that must happen while the request's objects are
alive: at ``request_end`` it evaluates the optional filter, then *captures*
the raw values its format needs (strings, ints, enum members already held by
the request: no formatting, no dict) into a tuple appended to a list. Holding
values rather than the request context matters: the context holds the
message bytes, which must not outlive the request.

A flusher greenlet renders the captured records in batches and writes them
every ``FLUSH_INTERVAL`` seconds (or sooner when ``WAKE_LINES`` are pending),
handing the write itself to gevent's thread pool, so a slow disk or a full
stdout pipe stalls neither the request nor the event loop. If the writer falls
far behind, records beyond ``MAX_PENDING_LINES`` are dropped and counted
(``dropped``) rather than letting memory grow without bound. ``close`` writes
what is pending, so a drain or shutdown loses no line.

Rendering is what costs (the same CPU, in the same process, whenever it runs),
so a format is compiled once into a :class:`LinePlan`:

* fields whose values repeat from request to request (protocol, service,
  method, route, cluster, host, status, client address...) are grouped with
  the literal text between them into *segments*; the capture builds each
  segment's tuple of values (its key), and a segment is rendered and escaped
  once per distinct key, then found by one dict lookup, or by none when the key
  equals the previous record's;
* the fields that change with every request (start time, duration, request
  id, sizes, trace id) are formatted inline: the start time from a cached
  formatted second plus a table of milliseconds, durations and sizes below
  2048 from a table of numbers, each table entry already followed by the
  literal after the field (fewer pieces to join per line);
* capture and render are generated as Python source from the field table
  (like ``collections.namedtuple`` does), so a line is one f-string with no
  call per field. Only names from the field table enter that source; format
  literals enter it through ``repr``, metadata keys and tables as variables.

Where the instructions of a line go, and why a line built by Python cannot
get much cheaper: docs/observability.md, "Cost".

See docs/observability.md for the fields and formats.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from enum import EnumMeta
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event

from metaproxy.chain import RequestContext
from metaproxy.config import AccessLogConfig
from metaproxy.message import Metadata, as_str
from metaproxy.observer import RequestObserver
from metaproxy.settings import parse_duration

__all__ = ["AccessLogger", "FIELDS", "LinePlan", "compile_format", "json_renderer", "make_access_loggers",
           "make_filter", "text_renderer"]

#: Seconds between two writes of a log when fewer than WAKE_LINES lines wait (Envoy flushes every second too).
FLUSH_INTERVAL = 1.0
#: Pending lines that wake the flusher before its interval ends.
WAKE_LINES = 1024
#: Pending lines kept at most when the writer cannot keep up; more are dropped and counted.
MAX_PENDING_LINES = 100_000
#: Records rendered between two yields of the flusher, so a backlog does not hold the event loop.
RENDER_CHUNK = 1024
#: Distinct values a segment cache keeps; past that it starts over (unbounded cardinality costs speed, not memory).
SEGMENT_CACHE_SIZE = 4096

_monotonic = time.monotonic

def _load_native(source: Path = Path(__file__).resolve().parent / "_accesslog.c") -> tuple[Any, str]:
    """The C capture and render (metaproxy/_accesslog.c, built by setup.py), or None and why not.

    A build is used only while it was made from the source beside it (its ``SOURCE_SHA256``): an
    edited ``_accesslog.c`` that was not rebuilt runs the Python path rather than the old C. An
    installed wheel carries no source, so there is nothing to compare.
    """
    try:
        from metaproxy import _accesslog as native
    except ImportError:  # a build without a compiler
        return None, "not built"
    if source.exists():
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if getattr(native, "SOURCE_SHA256", "") != digest:
            return None, "built from another _accesslog.c (make deps-observability rebuilds it)"
    return native, "built"


_native, NATIVE_REASON = _load_native()


def native_available() -> bool:
    """Whether plans use the C capture and render: built from the current source, and not switched
    off with ``METAPROXY_ACCESSLOG_NATIVE=0`` (the pure-Python path, for comparison)."""
    return _native is not None and os.environ.get("METAPROXY_ACCESSLOG_NATIVE", "") != "0"


def native_state() -> str:
    """``native`` or ``python (why)``: for /config_dump and the start log."""
    if native_available():
        return "native"
    return "python (" + ("METAPROXY_ACCESSLOG_NATIVE=0" if _native is not None else NATIVE_REASON) + ")"


# -- fields ----------------------------------------------------------------------

class Field:
    """One ``%FIELD%``: the expression that captures its raw value at request end, and how it renders.

    ``capture`` is Python source over ``ctx``, ``end`` (monotonic end time),
    ``KEY`` (the field's key, for keyed fields) and the locals of the capture
    prelude (:data:`_PRELUDE`: ``md``, ``rid``, ``status``, ``message``,
    ``resp``). ``kind`` picks the conversion (:func:`_plain`). ``stable``
    fields usually repeat between requests: they are baked into a cached line
    template (see :class:`LinePlan`); the others fill its holes.
    """

    __slots__ = ("name", "key", "capture", "kind", "stable", "native")

    def __init__(self, name: str, capture: str, kind: str, stable: bool, key: str | None = None,
                 native: tuple[int, str | None] = (-1, None)) -> None:
        self.name, self.capture, self.kind, self.stable, self.key = name, capture, kind, stable, key
        #: The C capture's (code, name): a keyed field's name is its key.
        self.native = native if key is None else (native[0], key)

    def keyed(self, key: str) -> Field:
        return Field(self.name, self.capture, self.kind, self.stable, key, self.native)

    def __repr__(self) -> str:
        return f"%{self.name}({self.key})%" if self.key is not None else f"%{self.name}%"


# What the C capture (metaproxy/_accesslog.c) reads for a field: the codes of its ``C_*`` enum.
_C_ATTR, _C_START, _C_DURATION, _C_RID, _C_MD_GET, _C_MD_GET_STR, _C_RESP_GET_STR, _C_ROUTE, _C_STATUS, \
    _C_MESSAGE = range(10)
#: The kinds in the order of the C render's ``K_*`` enum.
_KINDS = ("str", "status", "trace", "time", "duration", "int", "id")

#: Field name -> Field. The JSON format writes every one of them, keys in lower case, in this order.
#: ``native`` is the same capture for the C extension: (code, attribute name or metadata key).
FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("START_TIME", "ctx.start_time", "time", False, native=(_C_START, None)),
    Field("DURATION", "end - ctx.start_time", "duration", False, native=(_C_DURATION, None)),
    Field("REQUEST_ID", "rid", "id", False, native=(_C_RID, None)),
    Field("PROTOCOL", "ctx.protocol", "str", True, native=(_C_ATTR, "protocol")),
    Field("LISTENER", "ctx.listener", "str", True, native=(_C_ATTR, "listener")),
    Field("SERVICE", "md.get('service')", "str", True, native=(_C_MD_GET, "service")),
    Field("METHOD", "md.get('method')", "str", True, native=(_C_MD_GET, "method")),
    Field("ROUTE_NAME", "route", "str", True, native=(_C_ROUTE, None)),
    Field("UPSTREAM_CLUSTER", "ctx.cluster_name", "str", True, native=(_C_ATTR, "cluster_name")),
    Field("UPSTREAM_HOST", "ctx.upstream_host", "str", True, native=(_C_ATTR, "upstream_host")),
    Field("RESPONSE_STATUS", "status", "status", True, native=(_C_STATUS, None)),
    Field("RESPONSE_FLAGS", "ctx.response_flags", "str", True, native=(_C_ATTR, "response_flags")),
    Field("ERROR_MESSAGE", "message", "str", True, native=(_C_MESSAGE, None)),
    Field("ATTEMPTS", "ctx.attempts", "int", True, native=(_C_ATTR, "attempts")),
    Field("BYTES_RECEIVED", "ctx.bytes_received", "int", False, native=(_C_ATTR, "bytes_received")),
    Field("BYTES_SENT", "ctx.bytes_sent", "int", False, native=(_C_ATTR, "bytes_sent")),
    Field("DOWNSTREAM_REMOTE_ADDRESS", "ctx.downstream_address", "str", True,
          native=(_C_ATTR, "downstream_address")),
    Field("DOWNSTREAM_PEER_IDENTITY", "ctx.peer_identity", "str", True, native=(_C_ATTR, "peer_identity")),
    Field("TRACE_ID", "ctx.trace", "trace", False, native=(_C_ATTR, "trace")),
)}
#: Fields that take a key: ``%METADATA(x-user)%``. Captured as strings (``get_str``): a value
#: held past the request must not be a view of a buffer the connection reuses.
KEYED_FIELDS: dict[str, Field] = {
    "METADATA": Field("METADATA", "md.get_str(KEY)", "str", True, native=(_C_MD_GET_STR, None)),
    "RESPONSE_METADATA": Field("RESPONSE_METADATA", "(None if resp is None else resp.get_str(KEY))", "str", True,
                               native=(_C_RESP_GET_STR, None)),
}

#: Locals the capture expressions may use, each with the statements that bind it (in this order).
#: ``rid`` is the id the client sent (``ctx.downstream_id``; a context made outside a connection,
#: as in tests, has only its Metadata's). ``status``/``message`` come from the local reply's error,
#: else from the response. ``route`` is the route's name.
_PRELUDE: tuple[tuple[str, str], ...] = (
    ("md", "md = ctx.metadata\n"),
    ("rid", "rid = ctx.downstream_id\nif rid is None:\n    rid = ctx.metadata.get('request_id')\n"),
    ("route", "route = ctx.route\nif route is not None:\n    route = route.name\n"),
    ("resp", "resp = ctx.response_metadata\n"),
    ("status", "err = ctx.error\nif err is None:\n    message = None\n    status = ctx.response_metadata\n"
               "    if status is not None:\n        status = status.get('response_status')\n"
               "else:\n    status = err.kind\n    message = err.message\n"),
)
_PRELUDE_NEEDS = {"message": "status"}

_FIELD = re.compile(r"%([A-Z_]+)(?:\(([^()%]*)\))?%")


def compile_format(fmt: str) -> list[str | Field]:
    """Split a format string into literals and fields; ValueError names an unknown field."""
    parts: list[str | Field] = []
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
            parts.append(KEYED_FIELDS[name].keyed(key))
        elif name in FIELDS:
            parts.append(FIELDS[name])
        else:
            raise ValueError(f"unknown field %{name}%")
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return parts


# -- values ----------------------------------------------------------------------

#: The decimal text of small ints (durations in ms, sizes): a tuple lookup instead of a conversion.
_NUMBERS = tuple(str(i) for i in range(2048))
#: ".000Z" ... ".999Z", and once more ".999Z" for a fraction whose product rounds up to 1000.
_MILLIS = tuple(f".{i:03d}Z" for i in range(1000)) + (".999Z",)


class _WallClock:
    """Monotonic -> wall time, the formatted second cached: ``2025-01-31T12:00:00.123Z``.

    Request times are monotonic (immune to clock steps); logs want wall time.
    The offset between the two is taken once per rendered batch. The cached
    second is kept as a float range, so a line in the same second costs two
    float comparisons and one table lookup.
    """

    __slots__ = ("offset", "base", "limit", "text")

    def __init__(self) -> None:
        self.offset = 0.0
        self.base = self.limit = 0.0
        self.text = ""
        self.sync()

    def sync(self) -> None:
        """Follow a wall-clock step; ignore the sub-millisecond jitter of reading two clocks.

        Without the threshold one request rendered twice (a retry of a batch, a
        test) could come out a millisecond apart, and consecutive lines could go
        backwards by one.
        """
        offset = time.time() - time.monotonic()
        if abs(offset - self.offset) >= 0.001:
            self.offset = offset

    def second(self, wall: float) -> tuple[float, float, str]:
        """Make ``wall``'s second the cached one: (its start, its end, its text)."""
        second = int(wall)
        self.base = float(second)
        self.limit = self.base + 1.0
        self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self.base, self.limit, self.text

    def iso(self, monotonic: float) -> str:
        wall = monotonic + self.offset
        if wall >= self.limit or wall < self.base:
            self.second(wall)
        return self.text + _MILLIS[int((wall - self.base) * 1000.0)]


def _plain(kind: str, value: Any, clock: _WallClock) -> Any:
    """A captured value as the log shows it (before text/JSON quoting); None or "" when empty."""
    if value is None:
        return None
    if kind == "str":
        return value if type(value) is str else as_str(value)
    if kind == "status":
        return as_str(value)  # the enums are str subclasses whose str() is their value
    if kind == "trace":
        return getattr(value, "trace_id", None)
    if kind == "time":
        return clock.iso(value)
    if kind == "duration":
        return round(value * 1000.0)  # round, not truncate: 0.2 s measured as 0.19999... is 200 ms
    return value  # "int", "id": as captured


def _text(kind: str, value: Any, clock: _WallClock) -> str:
    value = _plain(kind, value, clock)
    if value is None or value == "":
        return "-"
    return value if type(value) is str else str(value)


_escape = json.encoder.encode_basestring  # type: ignore[attr-defined]  # the C string escaper


def _json(kind: str, value: Any, clock: _WallClock) -> str:
    value = _plain(kind, value, clock)
    if type(value) is int:
        return str(value)
    if value is None or value == "":
        return "null"
    return _escape(value if type(value) is str else str(value))


# -- compiled plans --------------------------------------------------------------

class _Segments(dict):  # type: ignore[type-arg]
    """Captured values of the stable fields -> their rendering; a miss renders it (bounded size).

    Keys compare by value, so ``1`` and ``True`` (or ``1.0``) in the same field
    share one rendering; no field of the request holds such mixed types.
    """

    __slots__ = ("render", "limit")

    def __init__(self, render: Callable[[Any], str], limit: int) -> None:
        super().__init__()
        self.render, self.limit = render, limit

    def __missing__(self, key: Any) -> str:
        text = self.render(key)
        if len(self) >= self.limit:
            self.clear()
        self[key] = text
        return text


class LinePlan:
    """A compiled format: what ``request_end`` captures, and how the flusher renders records.

    ``mode`` is ``"text"`` (empty values print ``-``) or ``"json"`` (the parts
    already hold the JSON punctuation; values are JSON literals, empty ones
    ``null``). Calling the plan renders one request's line (tests, tools).

    A record is a flat tuple: the captured values of the fields that change
    with every request (start time, duration, request id, sizes, trace), then
    one *key* per segment. A segment is a run of literals and stable fields;
    its key is the tuple of those fields' values (or the value itself when it
    has one), built at capture, and a segment cache maps a key to the run's
    text, rendered and escaped once. A line is one f-string: the changing
    values formatted inline, each segment a dict lookup (skipped when the key
    equals the previous record's). A batch with a value that cannot be a dict
    key goes through :meth:`render_slowly`, value by value.
    """

    def __init__(self, parts: Sequence[str | Field], mode: str, native: bool | None = None) -> None:
        self.parts = list(parts)
        self.mode = mode
        self.clock = _WallClock()
        convert = _json if mode == "json" else _text
        self._convert = convert
        names: dict[str, Any] = {"CLOCK": self.clock, "CONVERT": convert, "MILLIS": _MILLIS, "NUMBERS": _NUMBERS,
                                 "SMALL": range(len(_NUMBERS)),
                                 "EMPTY": "null" if mode == "json" else "-"}
        self._items = _group(self.parts)
        changing: dict[tuple[str, str | None], int] = {}  # a changing field -> its place in the record
        captures: list[str] = []
        for item in self._items:
            if isinstance(item, Field) and (item.name, item.key) not in changing:
                changing[(item.name, item.key)] = len(captures)
                captures.append(_capture_source(item, names))
        self._changing = changing
        template: list[str] = []  # f-string pieces of a line
        steps: list[str] = []  # statements before a line is built (start times, segment lookups)
        tables: list[_Segments] = []
        items = self._items
        prefixes: list[str] = []  # the literal before each start time: kept with its cached second
        skip = False
        for position, item in enumerate(items):
            if skip:  # a literal already joined to the field before it
                skip = False
                continue
            if isinstance(item, str):
                template.append(_literal(item))
            elif isinstance(item, Field):
                # The literal after a field joins its table's entries (one piece less per line to build).
                after = items[position + 1] if position + 1 < len(items) else None
                suffix = after if isinstance(after, str) and item.kind in _SUFFIXED else ""
                skip = bool(suffix)
                if item.kind == "time":
                    before = items[position - 1] if position and isinstance(items[position - 1], str) else ""
                    if before:
                        template.pop()
                    prefixes.append(before + ('"' if mode == "json" else ""))
                template.append(_inline(item, f"v{changing[(item.name, item.key)]}", mode, names, steps, suffix,
                                        len(prefixes) - 1))
            else:
                index = len(tables)
                fields = [p for p in item if isinstance(p, Field)]
                sources = [_capture_source(f, names) for f in fields]
                captures.append(sources[0] if len(fields) == 1 else f"({', '.join(sources)},)")
                tables.append(_Segments(_segment_renderer(item, len(fields) == 1, convert, self.clock),
                                        SEGMENT_CACHE_SIZE))
                if len(fields) > 2:  # a long key: comparing it with the last one is cheaper than hashing it
                    steps.append(f"            if k{index} != p{index}:\n"
                                 f"                p{index} = k{index}\n"
                                 f"                s{index} = S{index}[k{index}]\n")
                    template.append(f"f'{{s{index}}}'")
                else:
                    template.append(f"f'{{S{index}[k{index}]}}'")
        record = f"({', '.join(captures)},)" if captures else "()"
        target = [f"v{i}" for i in range(len(changing))] + [f"k{i}" for i in range(len(tables))]
        initial = "".join(f"        p{i} = s{i} = _NONE\n" for i in range(len(tables)))
        for i, prefix in enumerate(prefixes):
            names[f"PREFIX{i}"] = prefix
        refresh = "".join(f"t{i} = PREFIX{i} + second; " for i in range(len(prefixes)))
        initial += f"        {refresh}\n" if refresh else ""
        steps = [step.replace("REFRESH", refresh) for step in steps]
        self.source = "\n".join((
            _CAPTURE.format(prelude=_prelude(record, "    "), record=record),
            _REQUEST_END.format(prelude12=_prelude(record, " " * 12), prelude8=_prelude(record, " " * 8),
                                record=record),
            _RENDER.format(tables="".join(f"S{i}, " for i in range(len(tables))), initial=initial,
                           steps="".join(steps), target=f"({', '.join(target)},)" if target else "_",
                           line=" ".join(template) or "''"),
        ))
        namespace = dict(names, _NONE=_NONE)
        exec(compile(self.source, "<access log plan>", "exec"), namespace)  # noqa: S102 - see the module doc
        #: ``capture(ctx, end) -> record``, for rendering one line outside a logger.
        self.capture: Callable[[RequestContext, float], tuple[Any, ...]] = namespace["capture"]
        #: ``make_request_end(logger, pending, accept, limit, wake_at, wake, monotonic) -> request_end(ctx)``
        self.make_request_end: Callable[..., Callable[[RequestContext], None]] = namespace["make_request_end"]
        self._fast = namespace["make_render"](*tables)
        #: Whether capture, render_bytes and a logger's request path run in C (metaproxy/_accesslog.c).
        self.native = native_available() if native is None else (native and _native is not None)
        if self.native:
            self.capture = _native.Capture(self._capture_spec(), Metadata.__dict__["get_str"], as_str)
            self._native_render = self._new_native_render()

    def _new_native_render(self) -> Any:
        return _native.Render(self._render_ops(), self.mode == "json", self.clock, self._convert, _KINDS, EnumMeta)

    def make_writer(self, logger: Any, accept: Callable[[RequestContext, float], bool] | None, limit: int,
                    wake_at: int, wake: Callable[[], None], monotonic: Callable[[], float]) -> Any:
        """A native plan's request path (``_native.Writer``): each line is captured and rendered as its
        request ends, into the batch the flusher takes with ``take() -> (bytes, lines)``; ``lines`` is
        how many wait. Same filter, bound and wake-up as ``make_request_end``; it has a Render of its own."""
        assert self.native, "make_writer needs the C extension"
        return _native.Writer(self.capture, self._new_native_render(), logger, accept, limit, wake_at, wake,
                              monotonic)

    def _capture_spec(self) -> list[tuple[bool, tuple[tuple[int, str | None], ...]]]:
        """The record's layout for the C capture: per slot, (single value?, the fields' (code, name))."""
        spec: list[tuple[bool, tuple[tuple[int, str | None], ...]]] = [
            (True, (field.native,)) for field in self._changing_fields()]
        for item in self._items:
            if isinstance(item, list):
                fields = [p for p in item if isinstance(p, Field)]
                spec.append((len(fields) == 1, tuple(f.native for f in fields)))
        return spec

    def _changing_fields(self) -> list[Field]:
        fields: dict[tuple[str, str | None], Field] = {}
        for item in self._items:
            if isinstance(item, Field):
                fields.setdefault((item.name, item.key), item)
        assert [self._changing[key] for key in fields] == list(range(len(fields)))
        return list(fields.values())

    def _render_ops(self) -> list[tuple[Any, ...]]:
        """The line for the C render, as render_slowly walks it: literals (UTF-8) and (kind, record place)."""
        ops: list[tuple[Any, ...]] = []

        def literal(text: str) -> None:
            data = text.encode("utf-8", "replace")
            if ops and ops[-1][0] == 1:
                ops[-1] = (1, ops[-1][1] + data)
            elif data:
                ops.append((1, data))

        segment = len(self._changing)
        for item in self._items:
            if isinstance(item, str):
                literal(item)
            elif isinstance(item, Field):
                ops.append((0, _KINDS.index(item.kind), self._changing[(item.name, item.key)], -1))
            else:
                fields = sum(isinstance(p, Field) for p in item)
                if fields > 1:  # its text is copied when its key equals the last record's
                    marker = len(ops)
                    ops.append((2, segment, 0))
                place = 0
                for part in item:
                    if isinstance(part, str):
                        literal(part)
                    else:
                        ops.append((0, _KINDS.index(part.kind), segment, -1 if fields == 1 else place))
                        place += 1
                if fields > 1:
                    ops[marker] = (2, segment, len(ops) - marker - 1)
                    ops.append((1, b""))  # the next literal starts outside the segment
                segment += 1
        return [op for op in ops if op != (1, b"")]

    def render_bytes(self, records: list[tuple[Any, ...]]) -> bytes:
        """The lines of captured records as the UTF-8 the sink writes (lone surrogates as ``?``)."""
        if self.native:
            return self._native_render(records)  # type: ignore[no-any-return]
        return self.render(records).encode("utf-8", "replace")

    def render(self, records: list[tuple[Any, ...]]) -> str:
        """The lines of captured records, joined."""
        out: list[str] = []
        try:
            self._fast(records, out)
        except TypeError:  # a captured value that cannot be a dict key (a list in Metadata): no cache
            return self.render_slowly(records)
        return "".join(out)

    def render_slowly(self, records: list[tuple[Any, ...]]) -> str:
        """The same lines, every value converted on its own (the reference the fast path must match)."""
        self.clock.sync()
        convert, clock, changing = self._convert, self.clock, self._changing
        first_key = len(changing)
        lines = []
        for record in records:
            pieces = []
            segment = 0
            for item in self._items:
                if isinstance(item, str):
                    pieces.append(item)
                elif isinstance(item, Field):
                    pieces.append(convert(item.kind, record[changing[(item.name, item.key)]], clock))
                else:
                    key = record[first_key + segment]
                    values = iter((key,) if sum(isinstance(p, Field) for p in item) == 1 else key)
                    pieces.extend(p if isinstance(p, str) else convert(p.kind, next(values), clock) for p in item)
                    segment += 1
            lines.append("".join(pieces))
        return "".join(lines)

    def __call__(self, ctx: RequestContext, end: float) -> str:
        return self.render([self.capture(ctx, end)])


#: "No previous key yet": equal to no captured key.
_NONE = object()

_CAPTURE = """\
def capture(ctx, end):
{prelude}    return {record}
"""

# The request path of a logger: the filter first, then the bound, then one tuple appended.
_REQUEST_END = """\
def make_request_end(logger, pending, accept, limit, wake_at, wake, monotonic):
    append = pending.append
    if accept is None:
        def request_end(ctx):
            n = len(pending)
            if n >= limit:
                logger.dropped += 1
                return
            end = ctx.end_time or monotonic()  # set by the connection before observers run
{prelude12}            append({record})
            if n == wake_at:
                wake()
        return request_end
    def filtered_request_end(ctx):
        end = ctx.end_time or monotonic()
        if not accept(ctx, end):
            return
        n = len(pending)
        if n >= limit:
            logger.dropped += 1
            return
{prelude8}        append({record})
        if n == wake_at:
            wake()
    return filtered_request_end
"""

# The start time: the wall-clock offset taken once per batch, the formatted second cached.
_RENDER = """\
def make_render({tables}):
    def render(records, out):
        append = out.append
        CLOCK.sync()
        offset, base, limit, second = CLOCK.offset, CLOCK.base, CLOCK.limit, CLOCK.text
{initial}        for {target} in records:
{steps}            append({line})
    return render
"""


def _prelude(record: str, indent: str) -> str:
    """Statements binding the locals the capture expressions use (``md``, ``rid``, ``status``...)."""
    used = {name for name, _ in _PRELUDE if re.search(rf"\b{name}\b", record)}
    used |= {_PRELUDE_NEEDS[name] for name in _PRELUDE_NEEDS if re.search(rf"\b{name}\b", record)}
    lines = "".join(source for name, source in _PRELUDE if name in used)
    return "".join(indent + line + "\n" for line in lines.splitlines())


def _literal(text: str) -> str:
    """Python source of an f-string piece that is exactly ``text``."""
    return "f" + repr(text.replace("{", "{{").replace("}", "}}"))


def _group(parts: list[str | Field]) -> list[str | Field | list[str | Field]]:
    """Runs of literals and stable fields become segments; changing fields and lone literals stay."""
    items: list[str | Field | list[str | Field]] = []
    run: list[str | Field] = []

    def close_run() -> None:
        if any(isinstance(p, Field) for p in run):
            items.append(list(run))
        elif run:
            items.append("".join(run))  # type: ignore[arg-type]
        run.clear()

    for part in parts:
        if isinstance(part, Field) and not part.stable:
            close_run()
            items.append(part)
        else:
            run.append(part)
    close_run()
    return items


def _capture_source(field: Field, names: dict[str, Any]) -> str:
    if field.key is None:
        return field.capture
    key_name = f"K{len(names)}"
    names[key_name] = field.key
    return field.capture.replace("KEY", key_name)


#: Kinds whose rendering may take the literal that follows it (see ``_inline``).
_SUFFIXED = frozenset(("time", "duration", "int", "trace"))


def _inline(field: Field, var: str, mode: str, names: dict[str, Any], steps: list[str], suffix: str = "",
            prefix: int = -1) -> str:
    """f-string source rendering a changing field from its captured value ``var``, then ``suffix``.

    A start time renders as ``t{prefix}`` (the literal before it and the cached second) and a
    millisecond table entry that ends with ``suffix``; small ints come from a table of the same kind.
    """
    kind = field.kind
    names[f"KIND_{kind}"] = kind
    slow = f"CONVERT(KIND_{kind}, {var}, CLOCK)"
    n = len(names)
    if suffix:
        names[f"SUFFIX{n}"] = suffix
    tail = f" + SUFFIX{n}" if suffix else ""
    if kind == "time":  # never needs escaping: JSON only adds the quotes
        wall = f"w{var}"
        step = (f"            {wall} = {var} + offset\n"
                f"            if {wall} >= limit or {wall} < base:\n"
                f"                base, limit, second = CLOCK.second({wall})\n"
                f"                REFRESH\n")
        if step not in steps:
            steps.append(step)
        closing = '"' if mode == "json" else ""
        names[f"MILLIS{n}"] = tuple(m + closing + suffix for m in _MILLIS)
        return f"f'{{t{prefix}}}{{MILLIS{n}[int(({wall} - base) * 1000.0)]}}'"
    # Small ints (durations in ms, sizes) come from a table: ``in range`` is one C-level test of an
    # int's bounds; a float in range fails the tuple index (TypeError: the batch renders slowly).
    if kind in ("duration", "int"):
        names[f"NUMBERS{n}"] = tuple(number + suffix for number in _NUMBERS) if suffix else _NUMBERS
        if kind == "duration":  # milliseconds, rounded half to even as round() does
            return f"f'{{NUMBERS{n}[d] if (d := round({var} * 1000.0)) in SMALL else str(d){tail}}}'"
        return f"f'{{NUMBERS{n}[{var}] if {var} in SMALL else {slow}{tail}}}'"
    if kind == "id":
        return f"f'{{{var} if type({var}) is int else {slow}}}'"
    names[f"EMPTY{n}"] = names["EMPTY"] + suffix
    return f"f'{{EMPTY{n} if {var} is None else {slow}{tail}}}'"


def _segment_renderer(parts: list[str | Field], single: bool, convert: Callable[[str, Any, _WallClock], str],
                      clock: _WallClock) -> Callable[[Any], str]:
    def render(key: Any) -> str:
        values = iter((key,) if single else key)
        return "".join(p if isinstance(p, str) else convert(p.kind, next(values), clock) for p in parts)
    return render


def text_renderer(fmt: str, native: bool | None = None) -> LinePlan:
    """The plan of a ``%FIELD%`` format string (a newline is added when missing)."""
    return LinePlan(compile_format(fmt if fmt.endswith("\n") else fmt + "\n"), "text", native)


def json_renderer(native: bool | None = None) -> LinePlan:
    """Every field in FIELDS as one JSON object (keys in lower case, in FIELDS order); empty values are null."""
    parts: list[str | Field] = []
    for index, field in enumerate(FIELDS.values()):
        parts.append(("{" if index == 0 else ",") + json.dumps(field.name.lower()) + ":")
        parts.append(field)
    parts.append("}\n")
    return LinePlan(parts, "json", native)


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
    """One ``access_log`` entry: a compiled plan, an optional filter, and a buffered sink."""

    def __init__(self, sink: Sink, plan: LinePlan,
                 accept: Callable[[RequestContext, float], bool] | None = None,
                 flush_interval: float = FLUSH_INTERVAL) -> None:
        self.sink = sink
        self.plan = plan
        #: Only %RESPONSE_METADATA(key)% reads a response beyond its status (the filter reads the status).
        self.reads_response_metadata = any(isinstance(part, Field) and part.name == "RESPONSE_METADATA"
                                           for part in plan.parts)
        self.accept = accept
        self.flush_interval = flush_interval
        self.written = 0
        self.dropped = 0
        #: Captured records waiting for the flusher (the Python path). Never replaced, only emptied:
        #: request_end keeps its bound ``append``.
        self._pending: list[tuple[Any, ...]] = []
        self._wake = Event()
        self._closed = False
        # The request path; it shadows the method below. Native: the C Writer renders each line as its
        # request ends (while its values are in the cache) into the batch the flusher takes. Python: the
        # generated request_end, with the plan's capture inlined, appends records the flusher renders.
        self._writer = plan.make_writer(self, accept, MAX_PENDING_LINES, WAKE_LINES, self._wake.set,
                                        _monotonic) if plan.native else None
        self.request_end = self._writer if self._writer is not None else plan.make_request_end(  # type: ignore[method-assign]
            self, self._pending, accept, MAX_PENDING_LINES, WAKE_LINES, self._wake.set, _monotonic)
        self._flusher = gevent.spawn(self._flush_loop)

    def request_end(self, ctx: RequestContext) -> None:
        """Filter, then capture the record (the instance's generated ``request_end`` does this)."""
        end = _monotonic()
        if self.accept is not None and not self.accept(ctx, end):
            return
        if len(self._pending) >= MAX_PENDING_LINES:
            self.dropped += 1
            return
        self._pending.append(self.plan.capture(ctx, end))

    def render(self, ctx: RequestContext, end: float) -> str:
        """The line of one request, rendered now (tests and tools; the logger itself renders in batches)."""
        return self.plan(ctx, end)

    def _flush_loop(self) -> None:
        pool = gevent.get_hub().threadpool
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            data = self._take(yielding=True)
            if data:
                try:
                    pool.apply(self.sink.write, (data,))
                except OSError as exc:
                    self._write_failed(exc)

    def pending_lines(self) -> int:
        """Lines waiting for the flusher."""
        return self._writer.lines if self._writer is not None else len(self._pending)

    def _take(self, yielding: bool = False) -> bytes:
        """Render and encode every pending record; ``yielding`` lets requests run between chunks."""
        if self._writer is not None:  # rendered already, as each request ended
            data, lines = self._writer.take()
            self.written += lines
            return data  # type: ignore[no-any-return]
        pending = self._pending
        if not pending:
            return b""
        records = pending.copy()
        pending.clear()
        self.written += len(records)
        chunks = []
        for start in range(0, len(records), RENDER_CHUNK):
            batch = records[start:start + RENDER_CHUNK]
            try:
                chunks.append(self.plan.render_bytes(batch))
            except Exception as exc:  # a bug in rendering must cost lines, never the flusher or a request
                self.written -= len(batch)
                self.dropped += len(batch)
                sys.stderr.write(f"metaproxy: access log {self.sink.path}: {len(batch)} lines not rendered: "
                                 f"{type(exc).__name__}: {exc}\n")
            if yielding and start + RENDER_CHUNK < len(records):
                gevent.sleep(0)
        return b"".join(chunks)

    def _write_failed(self, exc: OSError) -> None:
        sys.stderr.write(f"metaproxy: access log {self.sink.path}: write failed: {exc}\n")

    def flush(self) -> None:
        """Render and write what is pending now, on the caller's greenlet (tests and shutdown)."""
        data = self._take()
        if data:
            try:
                self.sink.write(data)
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
