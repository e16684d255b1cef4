"""The access log's C capture and render (metaproxy/_accesslog.c) against the Python ones.

The C render must give, byte for byte, ``LinePlan.render_slowly(records).encode("utf-8", "replace")``
(the reference) for any record, and the C capture the same record tuple as the Python capture, for
any request. Bad input must raise, never crash. The Python path (no extension, or
``METAPROXY_ACCESSLOG_NATIVE=0``) is what the other access log tests run when the extension is
missing; here it is also run side by side.
"""

from __future__ import annotations

import gc
import os
import sys
import weakref
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaproxy import accesslog
from metaproxy.accesslog import FIELDS, KEYED_FIELDS, AccessLogger, LinePlan, Sink, json_renderer, text_renderer
from metaproxy.chain import RequestContext
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus

native = pytest.mark.skipif(accesslog._native is None, reason="metaproxy/_accesslog.c is not built")


def test_the_extension_is_built():
    """`make deps-observability` (and `pip install -e .`) build it: a missing one is a build problem
    to see, not a silent fallback (``METAPROXY_ACCESSLOG_NATIVE=0`` runs the Python path on purpose)."""
    if os.environ.get("METAPROXY_ACCESSLOG_NATIVE") == "0":
        assert not accesslog.native_available() and not json_renderer().native
        return
    assert accesslog._native is not None, "build it: make accesslog-ext"
    assert accesslog.native_available() and json_renderer().native


def test_a_build_of_another_source_is_not_used(tmp_path):
    """An edited _accesslog.c that was not rebuilt runs the Python path, never the old C."""
    real = Path(accesslog.__file__).with_name("_accesslog.c")
    module, why = accesslog._load_native(real)
    assert module is not None and why == "built"
    edited = tmp_path / "_accesslog.c"
    edited.write_bytes(real.read_bytes() + b"/* edited */\n")
    module, why = accesslog._load_native(edited)
    assert module is None and "another _accesslog.c" in why
    module, why = accesslog._load_native(tmp_path / "absent.c")  # an installed wheel: nothing to compare
    assert module is not None


def test_the_admin_and_the_log_say_which_renderer_runs():
    expected = "python (METAPROXY_ACCESSLOG_NATIVE=0)" if os.environ.get("METAPROXY_ACCESSLOG_NATIVE") == "0" \
        else "native"
    assert accesslog.native_state() == expected


def outcome(call):
    """The result of ``call()``, or the type of the exception it raised (the two paths must agree)."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - the exception's type is what is compared
        return ("raised", type(exc))


def reference(plan: LinePlan, records) -> object:
    return outcome(lambda: plan.render_slowly(records).encode("utf-8", "replace"))


def rendered(plan: LinePlan, records) -> object:
    return outcome(lambda: plan._native_render(records))


# -- values -------------------------------------------------------------------------------

#: Any code point, lone surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
big_text = st.text(st.characters(exclude_categories=()), min_size=200, max_size=5000)


class _Trace:
    def __init__(self, trace_id: object) -> None:
        self.trace_id = trace_id


class _Weird:
    """An object whose str() is odd and which says it equals ''."""

    def __str__(self) -> str:
        return 'we"ird\n'

    def __eq__(self, other: object) -> bool:
        return other == ""

    __hash__ = object.__hash__


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


values = st.one_of(
    st.none(), any_text, big_text, st.just(""),
    st.integers(), st.integers(min_value=-(2**200), max_value=2**200), st.integers(-3, 3000),
    st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e6, 1e10),
    st.sampled_from(list(ResponseStatus) + list(ErrorType) + list(MessageType)),
    st.binary(max_size=20), st.lists(st.integers(), max_size=3),
    any_text.map(_Trace), st.just(_Trace(None)), st.just(_Weird()), st.just(_BadStr()),
)
#: Values that times and durations usually hold, so the fast paths are what most examples test.
times = st.one_of(st.floats(0, 4e9), st.floats(-1e6, 1e6), values)


def records_for(plan: LinePlan, draw_value):
    """A record of ``plan``'s layout with every value drawn."""
    record = []
    for field in plan._changing_fields():
        record.append(draw_value(times if field.kind in ("time", "duration") else values))
    for item in plan._items:
        if isinstance(item, list):
            n = sum(isinstance(p, accesslog.Field) for p in item)
            keys = tuple(draw_value(values) for _ in range(n))
            record.append(keys[0] if n == 1 else keys)
    return tuple(record)


literals = st.text(st.characters(exclude_categories=(), exclude_characters="%"), max_size=6)
field_names = st.sampled_from(sorted(FIELDS) + [f"{name}(x-user)" for name in KEYED_FIELDS])


@st.composite
def formats(draw) -> str:
    pieces = draw(st.lists(st.tuples(literals, field_names), min_size=1, max_size=12))
    return "".join(f"{lit}%{name}%" for lit, name in pieces) + draw(literals)


_JSON = json_renderer(native=True)


@native
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_json_render_matches_the_reference_for_any_record(data):
    records = [records_for(_JSON, data.draw) for _ in range(data.draw(st.integers(1, 4)))]
    assert rendered(_JSON, records) == reference(_JSON, records)


@native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), formats())
def test_text_render_matches_the_reference_for_any_format_and_record(data, fmt):
    plan = text_renderer(fmt, native=True)
    records = [records_for(plan, data.draw) for _ in range(data.draw(st.integers(1, 4)))]
    assert rendered(plan, records) == reference(plan, records)


@native
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), formats())
def test_a_json_plan_of_any_fields_matches_too(data, fmt):
    """JSON-mode plans of other field sets (the punctuation comes from the parts)."""
    parts = accesslog.compile_format(fmt)
    plan = LinePlan(parts, "json", native=True)
    records = [records_for(plan, data.draw) for _ in range(3)]
    assert rendered(plan, records) == reference(plan, records)


@native
def test_escapes_every_control_character_quote_and_backslash_like_json():
    import json

    text = "".join(chr(c) for c in range(0x00, 0x80)) + "é漢\U0001f600\ud800\udfff\x7f"
    plan = text_renderer("%METHOD%", native=True)  # text mode: written as is
    jplan = LinePlan(accesslog.compile_format("%METHOD%"), "json", native=True)
    record = [(text,)]
    assert rendered(plan, record) == reference(plan, record)
    assert rendered(jplan, record) == reference(jplan, record)
    assert jplan._native_render(record) == json.encoder.encode_basestring(text).encode("utf-8", "replace")


@native
def test_times_across_seconds_and_odd_clock_values():
    import time

    plan = text_renderer("%START_TIME% %DURATION%", native=True)
    now = time.monotonic()
    starts = [now + d for d in (0.0, 0.0004, 0.9995, 0.99999999, 1.0, 61.25, -3600.5, 0.5, 1e-9)]
    odd = [0.0, -1.0, -1e9, -2e9, -2e9 - 0.5, 1e300, float("inf"), float("nan"), 5, True]
    for start in starts + odd:
        for duration in (0.0, 0.0005, 0.0015, 0.0025, -0.0005, 2.0475, 1e12, float("nan"), 3):
            records = [(start, duration)]
            assert rendered(plan, records) == reference(plan, records), (start, duration)


@native
def test_large_batches_and_large_values():
    plan = json_renderer(native=True)
    ctx = RequestContext(Metadata(service="s" * 20_000, method="m\n" * 2_000, request_id=1), "in", "tinyrpc")
    records = [plan.capture(ctx, ctx.start_time + i / 1000) for i in range(300)]
    out = plan._native_render(records)
    assert out == plan.render_slowly(records).encode()
    assert out.count(b"\n") == 300


# -- captures -----------------------------------------------------------------------------

metadata_values = st.one_of(st.none(), any_text, st.integers(), st.booleans(), st.binary(max_size=8),
                            st.sampled_from(list(ResponseStatus)), st.lists(st.integers(), max_size=2))
plain_text = st.text(max_size=12)


class _Route:
    def __init__(self, name: object) -> None:
        self.name = name


@st.composite
def contexts(draw) -> tuple[RequestContext, float]:
    md = Metadata()
    for key in draw(st.lists(st.sampled_from(["service", "method", "request_id", "x-user", "other"]), max_size=5)):
        md[key] = draw(metadata_values)
    ctx = RequestContext(md, draw(plain_text), draw(plain_text))
    ctx.cluster_name, ctx.upstream_host = draw(plain_text), draw(plain_text)
    ctx.response_flags, ctx.downstream_address, ctx.peer_identity = draw(plain_text), draw(plain_text), draw(plain_text)
    ctx.attempts, ctx.bytes_sent = draw(st.integers(0, 5)), draw(st.integers(0, 10**9))
    ctx.downstream_id = draw(st.one_of(st.none(), st.integers(), plain_text))
    if draw(st.booleans()):
        ctx.route = _Route(draw(st.one_of(st.none(), plain_text)))
    if draw(st.booleans()):
        resp = Metadata()
        if draw(st.booleans()):
            resp["response_status"] = draw(st.sampled_from(list(ResponseStatus)))
        if draw(st.booleans()):
            resp["x-user"] = draw(metadata_values)
        ctx.response_metadata = resp
    if draw(st.booleans()):
        ctx.error = ProxyError(draw(st.sampled_from(list(ErrorType))), draw(plain_text), "UT")
    if draw(st.booleans()):
        ctx.trace = _Trace(draw(plain_text))
    ctx.end_time = draw(st.sampled_from([0.0, ctx.start_time + 0.25]))
    end = draw(st.one_of(st.floats(0, 1e6), st.just(ctx.start_time + 0.01), st.integers(0, 10)))
    return ctx, end


_EVERY_FIELD = " ".join(f"%{name}%" for name in FIELDS) + " %METADATA(x-user)% %RESPONSE_METADATA(x-user)%"
def _pair(fmt: str) -> tuple[LinePlan, LinePlan]:
    parts = accesslog.compile_format(fmt) if fmt != "json" else json_renderer().parts
    mode = "json" if fmt == "json" else "text"
    return LinePlan(parts, mode, native=True), LinePlan(parts, mode, native=False)


_PAIRS = {fmt: _pair(fmt) for fmt in ("json", _EVERY_FIELD, "%METHOD% %METADATA(x-user)%|%METHOD%")}


def _same(a: tuple, b: tuple) -> bool:
    """Equal, and of the same types all the way down (1 == True == 1.0 would hide a difference)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if type(x) is not type(y):
            return False
        if isinstance(x, tuple):
            if not _same(x, y):
                return False
        elif x != y and not (x != x and y != y):
            return False
    return True


@native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contexts())
def test_the_c_capture_builds_the_python_record(case):
    ctx, end = case
    for fast, slow in _PAIRS.values():
        a, b = fast.capture(ctx, end), slow.capture(ctx, end)
        assert _same(a, b), (a, b)
        # (the Python fast render shares one cached rendering between equal keys like 0 and False)
        assert fast.render_bytes([a]) == fast.render_slowly([b]).encode("utf-8", "replace")  # (one clock)


@native
def test_a_metadata_with_its_own_get_is_asked():
    class Shouting(Metadata):
        def get(self, key, default=None):
            value = super().get(key, default)
            return value.upper() if isinstance(value, str) else value

    class Quiet(Metadata):
        def get_str(self, key, default=None):
            return "quiet"

    fast, slow = _pair("%METHOD% %METADATA(x-user)% %RESPONSE_STATUS% %REQUEST_ID%")
    for cls in (Shouting, Quiet, Metadata, Shouting):  # the type cache follows the type
        ctx = RequestContext(cls(method="hi", **{"x-user": "bob"}), "in", "p")
        ctx.response_metadata = cls(response_status="ok")
        assert fast.capture(ctx, 0.0) == slow.capture(ctx, 0.0)
    Shouting.get = lambda self, key, default=None: "patched"  # a changed class is seen at once
    ctx = RequestContext(Shouting(method="hi"), "in", "p")
    assert fast.capture(ctx, 0.0) == slow.capture(ctx, 0.0)


@native
def test_a_context_that_is_not_one_raises_as_python_does():
    fast, slow = _pair("json")

    class Partial:
        metadata = Metadata()
        start_time = 0.0

    for ctx in (object(), Partial(), None):
        assert outcome(lambda c=ctx: fast.capture(c, 0.0))[0] == "raised"
        assert outcome(lambda c=ctx: fast.capture(c, 0.0)) == outcome(lambda c=ctx: slow.capture(c, 0.0))
    ctx = RequestContext(Metadata(), "in", "p")
    try:
        ctx.metadata = {"method": "plain dict"}  # type: ignore[assignment]  # not a Metadata: dict.get works
    except TypeError:
        pass  # compiled, the attribute takes only a Metadata
    assert outcome(lambda: fast.capture(ctx, 0.0)) == outcome(lambda: slow.capture(ctx, 0.0))
    with pytest.raises(TypeError):
        fast.capture(ctx)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fast.capture(ctx, 0.0, 1)  # type: ignore[call-arg]


@native
def test_no_reference_is_leaked_by_capture_or_render():
    plan = json_renderer(native=True)
    service = "svc-" + "x" * 10
    ctx = RequestContext(Metadata(service=service, method="m", request_id=3), "in", "tinyrpc")
    ctx.error = ProxyError(ErrorType.TIMEOUT, "slow", "UT")
    plan._native_render([plan.capture(ctx, 1.0)])  # warm the caches (they hold types and members)
    before = sys.getrefcount(service), sys.getrefcount(ctx), sys.getrefcount(ErrorType.TIMEOUT)
    for _ in range(1000):
        plan._native_render([plan.capture(ctx, 1.0)])
    assert (sys.getrefcount(service), sys.getrefcount(ctx), sys.getrefcount(ErrorType.TIMEOUT)) == before


# -- bad input ----------------------------------------------------------------------------

@native
@pytest.mark.parametrize("records", [
    None, 5, "abc", b"abc", {1: 2}, [None], [5], [()], [(1.0,)], [[1.0, 2.0, ("a",) * 11, ("b",) * 2]],
    [(1.0, 0.1, 1, 2, 3, None, "not a tuple", ("a", "b"))],
    [(1.0, 0.1, 1, 2, 3, None, ("short",), ("a", "b"))],
    [(1.0, 0.1, 1, 2, 3, None, ("a",) * 11, ("b",) * 2), "x"],
])
def test_bad_records_raise_and_never_crash(records):
    with pytest.raises((TypeError, ValueError)):
        _JSON._native_render(records)


@native
def test_a_record_with_more_values_than_needed_still_renders_what_the_plan_reads():
    plan = text_renderer("%METHOD%", native=True)
    assert plan._native_render([("a", "extra", 3)]) == b"a\n"


@native
def test_a_converter_that_mutates_the_batch_does_not_crash_the_render():
    records: list = []

    class Evil:
        def __str__(self) -> str:
            records.clear()  # the batch shrinks under the render
            gc.collect()
            return "evil"

    plan = text_renderer("%METHOD%", native=True)
    records.extend([(Evil(),), ("after",), ("more",)])
    assert plan._native_render(records) == b"evil\n"


@native
@pytest.mark.parametrize("args", [
    (), (None, None, None), ([(True, ((99, None),))], None, str), ([(True, ((0, 5),))], None, str),
    ([(True, ())], None, str), ([(True, ((0, "a"), (0, "b")))], None, str), ([("x",)], None, str),
    ([(False, ((4, None),))], None, str), ([], None, 5),
])
def test_bad_capture_specs_raise(args):
    with pytest.raises((TypeError, ValueError)):
        accesslog._native.Capture(*args)


@native
@pytest.mark.parametrize("ops", [
    [(0, 99, 0, -1)], [(0, 0, -1, -1)], [(0, 0, 0, -2)], [(1, "not bytes")], [(0,)], [5], [(0, 0, 0)],
    [(0, 0, 2**70, -1)],
])
def test_bad_render_ops_raise(ops):
    with pytest.raises((TypeError, ValueError, OverflowError)):
        accesslog._native.Render(ops, False, accesslog._WallClock(), accesslog._text, accesslog._KINDS, None)


@native
def test_a_converter_that_returns_no_str_is_an_error():
    render = accesslog._native.Render([(0, 2, 0, -1)], False, accesslog._WallClock(), lambda *a: 5,
                                      accesslog._KINDS, None)
    with pytest.raises(TypeError, match="not str"):
        render([(_Trace("x"),)])
    render = accesslog._native.Render([(0, 2, 0, -1)], False, accesslog._WallClock(), lambda *a: 1 / 0,
                                      accesslog._KINDS, None)
    with pytest.raises(ZeroDivisionError):
        render([(_Trace("x"),)])


@native
def test_a_clock_that_misbehaves_is_an_error():
    class Clock:
        offset, base, limit, text = 0.0, 0.0, 0.0, "t"

        def sync(self) -> None:
            pass

        def second(self, wall: float):
            return "nope"

    render = accesslog._native.Render([(0, 3, 0, -1)], False, Clock(), accesslog._text, accesslog._KINDS, None)
    with pytest.raises(TypeError, match="clock.second"):
        render([(5.0,)])
    Clock.offset = "x"  # type: ignore[assignment]
    with pytest.raises(TypeError):
        render([(5.0,)])


# -- the logger's request path in C ---------------------------------------------------------

def _logger(tmp_path, fmt: str, native_: bool, **kw) -> AccessLogger:
    sink = Sink(str(tmp_path / f"{native_}.log"))
    sink.users += 1
    plan = json_renderer() if fmt == "json" else text_renderer(fmt)
    plan = LinePlan(plan.parts, plan.mode, native=native_)
    return AccessLogger(sink, plan, **kw)


@pytest.mark.parametrize("native_", [pytest.param(True, marks=native), False])
def test_request_end_bound_wake_and_filter_in_both_paths(tmp_path, monkeypatch, native_):
    monkeypatch.setattr(accesslog, "MAX_PENDING_LINES", 5)
    monkeypatch.setattr(accesslog, "WAKE_LINES", 2)
    logger = _logger(tmp_path, "%REQUEST_ID% %DURATION%", native_, flush_interval=60)
    assert type(logger.request_end).__name__ == ("Writer" if native_ else "function")
    woken = []
    wake = lambda: woken.append(logger.pending_lines())  # noqa: E731
    if native_:
        logger._writer = logger.request_end = logger.plan.make_writer(  # type: ignore[method-assign]
            logger, None, 5, 2, wake, lambda: 100.0)
    else:
        logger.request_end = logger.plan.make_request_end(  # type: ignore[method-assign]
            logger, logger._pending, None, 5, 2, wake, lambda: 100.0)
    for i in range(8):
        ctx = RequestContext(Metadata(request_id=i), "in", "p")
        ctx.start_time = 99.0
        ctx.end_time = 99.5 if i % 2 else 0.0  # 0: the logger reads its clock (100.0)
        logger.request_end(ctx)
    assert woken == [3]  # the wake comes with the line that makes WAKE_LINES + 1 pending
    assert (logger.pending_lines(), logger.dropped) == (5, 3)
    logger.close()
    assert (tmp_path / f"{native_}.log").read_text().splitlines() == ["0 1000", "1 500", "2 1000", "3 500", "4 1000"]


@native
def test_the_writer_renders_each_line_as_render_does_the_batch(monkeypatch):
    """Lines rendered one by one as requests end, across takes, are the bytes of one batch render."""
    from tests.observability.test_accesslog import _varied_contexts

    for fmt in ("json", _EVERY_FIELD):
        plan = json_renderer(native=True) if fmt == "json" else text_renderer(fmt, native=True)
        writer = plan.make_writer(object(), None, 1000, 1000, lambda: None, lambda: 0.0)
        records, taken = [], b""
        for i, (ctx, end) in enumerate(_varied_contexts()):
            ctx.end_time = end
            records.append(plan.capture(ctx, end))
            writer(ctx)
            if i % 3 == 2:  # a take between lines starts the copy-from-the-last-line memory again
                data, lines = writer.take()
                assert lines == 3 and writer.lines == 0
                taken += data
        taken += writer.take()[0]
        assert taken == plan.render_bytes(records)
        assert writer.take() == (b"", 0)


@native
def test_a_line_that_fails_to_render_is_dropped_not_raised_into_the_request():
    plan = text_renderer("%METHOD% %METADATA(x)%", native=True)

    class Logger:
        dropped = 0

    class Bad:
        def __str__(self) -> str:
            raise ValueError("no text")

    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        logger = Logger()
        writer = plan.make_writer(logger, None, 10, 5, lambda: None, lambda: 1.0)
        for method in ("a", Bad(), "b"):
            ctx = RequestContext(Metadata(method=method, x="v"), "in", "p")
            ctx.end_time = 1.0
            assert writer(ctx) is None
    finally:
        sys.unraisablehook = old_hook
    assert writer.take() == (b"a v\nb v\n", 2)
    assert logger.dropped == 1 and len(unraisable) == 1 and isinstance(unraisable[0].exc_value, ValueError)


@native
def test_a_render_owned_by_a_writer_is_refused_elsewhere():
    plan = text_renderer("%METHOD%", native=True)
    render = plan._new_native_render()
    writer = accesslog._native.Writer(plan.capture, render, object(), None, 10, 5, len, len)
    with pytest.raises(RuntimeError):
        render([(("a",),)])
    with pytest.raises(RuntimeError, match="in use"):
        accesslog._native.Writer(plan.capture, render, object(), None, 10, 5, len, len)
    del writer
    gc.collect()
    assert render([("a",)]) == b"a\n"  # free again once its writer is gone
    with pytest.raises(ValueError):
        accesslog._native.Writer(plan.capture, plan._new_native_render(), object(), None, -1, 5, len, len)


@pytest.mark.parametrize("native_", [pytest.param(True, marks=native), False])
def test_the_filter_sees_the_end_time_and_can_refuse(tmp_path, native_):
    seen = []

    def accept(ctx, end):
        seen.append(end)
        return ctx.metadata.get("request_id") % 2 == 0

    logger = _logger(tmp_path, "%REQUEST_ID%", native_, accept=accept, flush_interval=60)
    for i in range(4):
        ctx = RequestContext(Metadata(request_id=i), "in", "p")
        ctx.end_time = 7.0
        logger.request_end(ctx)
    logger.close()
    assert seen == [7.0] * 4
    assert (tmp_path / f"{native_}.log").read_text() == "0\n2\n"


@native
def test_a_filter_that_raises_or_returns_odd_values():
    class Falsy:
        def __bool__(self) -> bool:
            raise ValueError("no truth")

    plan = json_renderer(native=True)
    for accept, expect in ((lambda c, e: 1 / 0, ZeroDivisionError), (lambda c, e: Falsy(), ValueError)):
        writer = plan.make_writer(object(), accept, 10, 5, lambda: None, lambda: 1.0)
        with pytest.raises(expect):
            writer(RequestContext(Metadata(), "in", "p"))
        assert writer.lines == 0
        del writer
    with pytest.raises(TypeError):
        accesslog._native.Writer(plan.capture, object(), object(), None, 10, 5, len, len)


@native
def test_the_loggers_cycle_is_collected():
    """logger -> its request_end (C) -> logger: the collector must see through the C object."""
    sink = Sink("/dev/null")
    sink.users += 1
    logger = AccessLogger(sink, json_renderer(native=True), flush_interval=60)
    logger.close()
    ref = weakref.ref(logger)
    del logger
    for _ in range(3):
        gc.collect()
    assert ref() is None


def test_both_paths_write_the_same_file(tmp_path, monkeypatch):
    """The whole logger, C and Python, over the same requests: the same bytes in the file."""
    import time as real_time

    from tests.observability.test_accesslog import _varied_contexts

    class Clocks:  # one wall-clock offset for every plan (each reads the two clocks a moment apart)
        strftime, gmtime = real_time.strftime, real_time.gmtime

        @staticmethod
        def time() -> float:
            return 1_800_000_000.0

        @staticmethod
        def monotonic() -> float:
            return 0.0

    monkeypatch.setattr(accesslog, "time", Clocks)
    outputs = []
    for native_ in ([True, False] if accesslog._native is not None else [False]):
        for fmt in ("json", _EVERY_FIELD):
            logger = _logger(tmp_path, fmt, native_, flush_interval=60)
            for i, (ctx, end) in enumerate(_varied_contexts()):
                duration = end - ctx.start_time
                ctx.start_time = 5000.0 + i * 0.0371  # the same times in every round
                ctx.end_time = ctx.start_time + duration
                logger.request_end(ctx)
            logger.close()
            outputs.append((fmt, (tmp_path / f"{native_}.log").read_bytes()))
            (tmp_path / f"{native_}.log").unlink()
    if len(outputs) == 4:
        assert outputs[0] == outputs[2] and outputs[1] == outputs[3]


@native
def test_a_converter_that_renders_again_is_refused():
    plan = text_renderer("%METHOD%|%METHOD%", native=True)

    class Again:
        def __str__(self) -> str:
            plan._native_render([(("x", "x"),)])  # re-entering the same render: refused, not a corrupted buffer
            return "never"

    with pytest.raises(RuntimeError, match="again"):
        plan._native_render([(("a", "a"),), ((Again(), "a"),)])
    records = [(("a", "a"),), (("a", "b"),), (("b", "b"),)]
    assert plan._native_render(records) == b"a|a\na|b\nb|b\n"  # and it still works


@native
def test_repeated_segments_and_values_are_copied_only_when_they_render_the_same():
    """The render copies a segment's (or a value's) text when the record repeats the last key: same
    objects or equal strs. Anything else (a changed value, a list, an int equal to a bool) renders anew."""
    plan = json_renderer(native=True)
    base = list(records_for(plan, lambda strategy: None))
    key = ("tinyrpc", "in", "demo", "sayHello", None, "c1", "h1", ResponseStatus.SUCCESS, "", None, 1)
    variants = [key, tuple("".join(["de", "mo"]) if v == "demo" else v for v in key),  # equal, not identical
                key[:10] + (True,), key[:10] + (1,), key[:3] + (["a"],) + key[4:], key[:3] + (["a"],) + key[4:],
                key[:7] + (ResponseStatus.ERROR,) + key[8:], key, key]
    records = []
    for i, variant in enumerate(variants * 3):
        record = list(base)
        record[:6] = [5000.0 + i * 0.001, 0.0012, i, 40, 55, None]
        record[6], record[7] = variant, ("127.0.0.1:5555", "")
        records.append(tuple(record))
    assert rendered(plan, records) == reference(plan, records)
    text = text_renderer("%METHOD% %RESPONSE_FLAGS%|%ATTEMPTS%", native=True)
    records = [(("m", "UT", 1),), (("m", "UT", True),), (("m", "UT", 1),), (("m", "".join("UT"), 2),)]
    assert text._native_render(records) == b"m UT|1\nm UT|True\nm UT|1\nm UT|2\n"
