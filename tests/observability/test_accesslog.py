"""Access logs: format compilation, filters and their errors, the buffered writer (in process)."""

from __future__ import annotations

import json

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaproxy import accesslog
from metaproxy.accesslog import AccessLogger, Sink, compile_format, make_access_loggers, text_renderer
from metaproxy.chain import RequestContext
from metaproxy.config import AccessLogConfig
from metaproxy.message import ErrorType, Metadata, ProxyError, ResponseStatus


def request(method: str = "sayHello", **extra: object) -> RequestContext:
    md = Metadata(request_id=7, service="demo", method=method, **extra)
    md.frame = b"x" * 40
    ctx = RequestContext(md, "in", "tinyrpc")
    ctx.downstream_address = "127.0.0.1:5555"
    return ctx


def answered(ctx: RequestContext, status: ResponseStatus = ResponseStatus.SUCCESS) -> RequestContext:
    ctx.response_metadata = Metadata(response_status=status, **{"x-served-by": "v1"})
    ctx.cluster_name, ctx.upstream_host, ctx.attempts, ctx.bytes_sent = "c1", "127.0.0.1:9191", 1, 55
    return ctx


def failed(ctx: RequestContext, kind: ErrorType, flags: str) -> RequestContext:
    ctx.error = ProxyError(kind, "it failed", flags)
    ctx.response_flags = flags
    return ctx


def test_text_format_renders_every_field_and_dashes_for_empty_ones():
    render = text_renderer("%REQUEST_ID% %PROTOCOL% %SERVICE%/%METHOD% %ROUTE_NAME% %UPSTREAM_CLUSTER% "
                           "%UPSTREAM_HOST% %RESPONSE_STATUS% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% "
                           "%DOWNSTREAM_REMOTE_ADDRESS% %METADATA(x-user)% %RESPONSE_METADATA(x-served-by)% "
                           "%METADATA(absent)%")
    ctx = answered(request(**{"x-user": "bob"}))
    line = render(ctx, ctx.start_time + 0.012)
    assert line == ("7 tinyrpc demo/sayHello - c1 127.0.0.1:9191 success - 40 55 127.0.0.1:5555 bob v1 -\n")
    no_route = failed(request("nope"), ErrorType.ROUTE_NOT_FOUND, "NR")
    assert text_renderer("%RESPONSE_STATUS% %RESPONSE_FLAGS% %ERROR_MESSAGE%")(no_route, 0.0) == \
        "route_not_found NR it failed\n"


def test_duration_and_start_time():
    ctx = request()
    fields = text_renderer("%START_TIME%|%DURATION%")(ctx, ctx.start_time + 0.25).strip().split("|")
    assert fields[1] == "250"
    assert len(fields[0]) == len("2024-01-01T00:00:00.000Z") and fields[0].endswith("Z")


def test_json_format_has_every_field_with_null_for_empty():
    [logger] = make_access_loggers([AccessLogConfig(path="/dev/null", format="json")])
    ctx = failed(request("sleep"), ErrorType.TIMEOUT, "UT")
    record = json.loads(logger.render(ctx, ctx.start_time + 0.2))  # type: ignore[attr-defined]
    logger.close()
    assert record["request_id"] == 7 and record["method"] == "sleep"
    assert record["response_status"] == "timeout" and record["response_flags"] == "UT"
    assert record["route_name"] is None and record["duration"] == 200
    assert set(record) == {name.lower() for name in accesslog.FIELDS}


@pytest.mark.parametrize("fmt, message", [
    ("%NOPE%", "access_log[0].format: unknown field %NOPE%"),
    ("%METHOD(x)%", "access_log[0].format: unknown field %METHOD(...)%"),
    ("%METADATA()%", "access_log[0].format: %METADATA()% needs a key"),
])
def test_bad_format_names_the_key(fmt, message):
    with pytest.raises(ValueError) as exc:
        make_access_loggers([AccessLogConfig(path="/dev/null", format=fmt)])
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("spec, message", [
    ({"status": "oops"}, "access_log[1].filter: status: expected 'error' or 'success'"),
    ({"min_duration": "soon"}, "access_log[1].filter: min_duration: expected a duration"),
    ({"response_flags": 3}, "access_log[1].filter: response_flags: expected a flag"),
    ({"colour": "red"}, "access_log[1].filter: unknown key 'colour'"),
])
def test_bad_filter_names_the_entry(spec, message):
    configs = [AccessLogConfig(path="/dev/null"), AccessLogConfig(path="/dev/null", filter=spec)]
    with pytest.raises(ValueError) as exc:
        make_access_loggers(configs)
    assert str(exc.value).startswith(message)


def test_unwritable_path_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"access_log\[0\]\.path: cannot open"):
        make_access_loggers([AccessLogConfig(path=str(tmp_path / "missing" / "dir" / "a.log"))])


def test_filters_select_errors_slow_requests_and_flags():
    def accepted(spec, ctx, seconds=0.0):
        return accesslog.make_filter(spec)(ctx, ctx.start_time + seconds)  # type: ignore[misc]

    ok = answered(request())
    app_error = answered(request(), ResponseStatus.ERROR)
    no_route = failed(request(), ErrorType.ROUTE_NOT_FOUND, "NR")
    assert [accepted({"status": "error"}, c) for c in (ok, app_error, no_route)] == [False, True, True]
    assert [accepted({"status": "success"}, c) for c in (ok, app_error, no_route)] == [True, False, False]
    assert accepted({"min_duration": "100ms"}, ok, 0.05) is False
    assert accepted({"min_duration": "100ms"}, ok, 0.15) is True
    assert accepted({"response_flags": ["UT", "NR"]}, no_route) is True
    assert accepted({"response_flags": "UT"}, no_route) is False
    assert accepted({"status": "error", "min_duration": "1s"}, no_route, 0.5) is False


def test_lines_are_written_by_the_flusher_greenlet_not_the_request(tmp_path):
    path = tmp_path / "a.log"
    sink = Sink(str(path))
    sink.users += 1
    logger = AccessLogger(sink, text_renderer("%REQUEST_ID% %METHOD%"), flush_interval=0.02)
    for _ in range(5):
        logger.request_end(request())
    assert path.read_text() == ""  # nothing written on the request path
    deadline = 200
    while path.read_text().count("\n") < 5 and deadline:
        gevent.sleep(0.02)
        deadline -= 1
    assert path.read_text() == "7 sayHello\n" * 5
    logger.request_end(request("last"))
    logger.close()  # close flushes what is pending
    assert path.read_text().splitlines()[-1] == "7 last"
    assert (logger.written, logger.dropped) == (6, 0)


def test_a_writer_that_falls_behind_drops_and_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(accesslog, "MAX_PENDING_LINES", 10)
    [logger] = make_access_loggers([AccessLogConfig(path=str(tmp_path / "a.log"), format="%METHOD%")])
    for _ in range(15):  # no yield: the flusher cannot run
        logger.request_end(request())
    logger.close()
    assert (logger.written, logger.dropped) == (10, 5)  # type: ignore[attr-defined]
    assert (tmp_path / "a.log").read_text() == "sayHello\n" * 10


def test_two_logs_may_share_a_file(tmp_path):
    path = str(tmp_path / "shared.log")
    loggers = make_access_loggers([AccessLogConfig(path=path, format="A %METHOD%"),
                                   AccessLogConfig(path=path, format="B %METHOD%")])
    for logger in loggers:
        logger.request_end(request())
    for logger in loggers:
        logger.close()
    assert sorted((tmp_path / "shared.log").read_text().splitlines()) == ["A sayHello", "B sayHello"]


def test_compile_format_keeps_literals():
    parts = compile_format("[%METHOD%] 100%% done")
    assert parts[0] == "[" and parts[2] == "] 100%% done"


def test_check_access_logs_reports_every_problem_without_opening_files(tmp_path):
    from metaproxy.accesslog import check_access_logs

    target = tmp_path / "never.log"
    problems = check_access_logs([AccessLogConfig(path=str(target), format="%X%"),
                                  AccessLogConfig(path=str(target), filter={"status": "maybe"}),
                                  AccessLogConfig(path=str(target))])
    assert problems == ["access_log[0].format: unknown field %X%",
                        "access_log[1].filter: status: expected 'error' or 'success', got 'maybe'"]
    assert not target.exists()


# -- the batched, compiled renderer -----------------------------------------------

def expected_record(ctx: RequestContext, end: float) -> dict:
    """The JSON line of ``ctx`` written the plain way (a dict and json.dumps), to compare with."""
    md, err, resp = ctx.metadata, ctx.error, ctx.response_metadata

    def s(value):
        return None if value in (None, "") else str(value)

    status = err.kind.value if err is not None else (str(resp["response_status"]) if resp else None)
    return {
        "duration": round((end - ctx.start_time) * 1000), "request_id": md.get("request_id"),
        "protocol": s(ctx.protocol), "listener": s(ctx.listener), "service": s(md.get("service")),
        "method": s(md.get("method")), "route_name": s(getattr(ctx.route, "name", None)),
        "upstream_cluster": s(ctx.cluster_name), "upstream_host": s(ctx.upstream_host), "response_status": s(status),
        "response_flags": s(ctx.response_flags), "error_message": s(err.message if err else None),
        "attempts": ctx.attempts, "bytes_received": ctx.bytes_received, "bytes_sent": ctx.bytes_sent,
        "downstream_remote_address": s(ctx.downstream_address), "downstream_peer_identity": s(ctx.peer_identity),
        "trace_id": s(getattr(ctx.trace, "trace_id", None)),
    }


def numbered(request_id: int) -> RequestContext:
    ctx = request()
    ctx.metadata["request_id"] = request_id
    return ctx


class _Route:
    def __init__(self, name: str) -> None:
        self.name = name


class _Trace:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_json_lines_match_a_plain_rendering_key_by_key_and_in_order():
    plan = accesslog.json_renderer()
    ok = answered(request())
    ok.route, ok.trace, ok.peer_identity = _Route("canary"), _Trace(), "spiffe://cluster.local/ns/a/sa/b"
    app_error = answered(request("boom"), ResponseStatus.ERROR)
    timeout = failed(request("sleep"), ErrorType.TIMEOUT, "UT")
    oneway = request("fire")  # no response, no error: status empty
    for ctx in (ok, app_error, timeout, oneway):
        end = ctx.start_time + 0.0125
        line = plan(ctx, end)
        assert line.endswith("}\n") and line.count("\n") == 1
        record = json.loads(line)
        assert list(record) == [name.lower() for name in accesslog.FIELDS]
        del record["start_time"]
        assert record == expected_record(ctx, end)


def test_batches_render_the_same_lines_as_one_at_a_time():
    plan = accesslog.json_renderer()
    contexts = [answered(request(f"m{i % 3}")) for i in range(50)] + [failed(request(), ErrorType.OVER_LIMIT, "RL")]
    records = [plan.capture(ctx, ctx.start_time + 0.001 * i) for i, ctx in enumerate(contexts)]
    one_by_one = "".join(plan.render([record]) for record in records)
    assert plan.render(records) == one_by_one
    assert [json.loads(line)["method"] for line in one_by_one.splitlines()[:4]] == ["m0", "m1", "m2", "m0"]


def test_start_time_is_the_wall_clock_time_of_the_monotonic_start():
    import calendar
    import time

    clock = accesslog._WallClock()
    now_mono, now_wall = time.monotonic(), time.time()
    for delta in (0.0, 0.2501, 0.9995, 1.0, 61.25, -3600.5, 0.5):  # back and forth across seconds
        text = clock.iso(now_mono + delta)
        assert text.endswith("Z") and len(text) == len("2025-01-31T12:00:00.123Z")
        parsed = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:23]) / 1000
        assert abs(parsed - (now_wall + delta)) < 0.01, (delta, text)  # the offset was taken a moment apart
    plan = text_renderer("%START_TIME%")
    ctx = request()
    assert plan(ctx, ctx.start_time) == clock.iso(ctx.start_time) + "\n"


def test_the_wall_clock_offset_ignores_jitter_and_follows_a_step(monkeypatch):
    """Reading two clocks a moment apart jitters by microseconds: a request rendered twice must read
    the same (the CI failure of 2026-11-25); a real clock step of a second must be followed."""
    import time

    clock = accesslog._WallClock()
    before = clock.offset
    real_time = time.time
    monkeypatch.setattr(accesslog.time, "time", lambda: real_time() + 0.0009)  # under 1 ms: jitter
    clock.sync()
    assert clock.offset == before
    monkeypatch.setattr(accesslog.time, "time", lambda: real_time() + 1.5)  # the wall clock was stepped
    clock.sync()
    assert abs(clock.offset - (before + 1.5)) < 0.01


def test_text_literals_are_kept_exactly_braces_quotes_backslashes_and_percent():
    render = text_renderer('{x} "q" \'s\' \\n %% {{%METHOD%}} %PROTOCOL%\t|')
    assert render(request(), 0.0) == '{x} "q" \'s\' \\n %% {{sayHello}} tinyrpc\t|\n'


def test_a_metadata_value_that_cannot_be_a_cache_key_is_still_rendered():
    plan = accesslog.json_renderer()
    ctx = request(method=["not", "hashable"])
    record = json.loads(plan(ctx, ctx.start_time))
    assert record["method"] == "['not', 'hashable']"
    text = text_renderer("%METHOD% %SERVICE%")
    assert text(ctx, 0.0) == "['not', 'hashable'] demo\n"


def test_segment_caches_stay_bounded_and_correct(monkeypatch):
    monkeypatch.setattr(accesslog, "SEGMENT_CACHE_SIZE", 8)
    plan = text_renderer("%METHOD% %UPSTREAM_HOST%")
    contexts = [answered(request(f"m{i}")) for i in range(40)]
    lines = plan.render([plan.capture(ctx, 0.0) for ctx in contexts * 2]).splitlines()
    assert lines == [f"m{i} 127.0.0.1:9191" for i in range(40)] * 2
    table = accesslog._Segments(str, 8)
    for i in range(100):
        assert table[i] == str(i)
    assert len(table) <= 8


def test_the_filter_runs_before_anything_is_captured(tmp_path):
    class Exploding(Metadata):
        """A metadata that fails when read: capturing it would raise."""

        def get(self, key, default=None):
            raise AssertionError(f"captured {key} of a filtered-out request")

        __getitem__ = get_str = get

    [logger] = make_access_loggers([AccessLogConfig(path=str(tmp_path / "a.log"), filter={"status": "error"})])
    ctx = answered(request())
    ctx.metadata = Exploding()  # type: ignore[assignment]
    logger.request_end(ctx)
    assert logger.pending_lines() == 0  # type: ignore[attr-defined]
    logger.close()
    assert (tmp_path / "a.log").read_text() == ""


def test_the_logger_is_still_seen_as_a_request_end_observer(tmp_path):
    from metaproxy.observer import overriding

    [logger] = make_access_loggers([AccessLogConfig(path=str(tmp_path / "a.log"))])
    assert overriding([logger], "request_end") == [logger]
    assert overriding([logger], "request_start") == []
    logger.close()


def test_close_writes_every_pending_line_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(accesslog, "RENDER_CHUNK", 100)
    path = tmp_path / "a.log"
    [logger] = make_access_loggers([AccessLogConfig(path=str(path), format="%REQUEST_ID%")])
    for i in range(3 * accesslog.WAKE_LINES + 7):  # no yield: everything is still pending at close
        logger.request_end(numbered(i))
    logger.close()
    assert path.read_text().split() == [str(i) for i in range(3 * accesslog.WAKE_LINES + 7)]
    assert (logger.written, logger.dropped) == (3 * accesslog.WAKE_LINES + 7, 0)  # type: ignore[attr-defined]


def test_the_flusher_renders_a_backlog_in_chunks_and_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(accesslog, "RENDER_CHUNK", 64)
    path = tmp_path / "a.log"
    sink = Sink(str(path))
    sink.users += 1
    logger = AccessLogger(sink, text_renderer("%REQUEST_ID%"), flush_interval=0.01)
    total = 0
    for _burst in range(5):
        for _ in range(700):
            logger.request_end(numbered(total))
            total += 1
        gevent.sleep(0.005)  # requests yield: the flusher may run between bursts
    deadline = 400
    while len(path.read_text().split()) < total and deadline:
        gevent.sleep(0.01)
        deadline -= 1
    assert path.read_text().split() == [str(i) for i in range(total)]
    logger.close()


def test_a_render_failure_costs_its_lines_not_the_flusher(tmp_path, capsys):
    """The Python path renders in the flusher (the C one renders as a request ends: a failure there
    costs that line, tests/observability/test_accesslog_native.py)."""
    path = tmp_path / "a.log"
    sink = Sink(str(path))
    sink.users += 1
    logger = AccessLogger(sink, text_renderer("%METHOD%", native=False))
    logger.request_end(request("first"))
    real = logger.plan.render_bytes  # type: ignore[attr-defined]
    logger.plan.render_bytes = lambda records: 1 / 0  # type: ignore[attr-defined]
    logger.flush()  # type: ignore[attr-defined]
    logger.plan.render_bytes = real  # type: ignore[attr-defined]
    logger.request_end(request("second"))
    logger.close()
    assert path.read_text() == "second\n"
    assert (logger.written, logger.dropped) == (1, 1)  # type: ignore[attr-defined]
    assert "1 lines not rendered: ZeroDivisionError" in capsys.readouterr().err


_PLAN = accesslog.json_renderer()
_TEXT = text_renderer("%METADATA(x-user)%|%SERVICE%")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service=st.text(), method=st.text(), user=st.text(), message=st.text(), host=st.text(max_size=8))
def test_json_lines_stay_valid_json_for_any_unicode(service, method, user, message, host):
    ctx = request(method, **{"x-user": user})
    ctx.metadata["service"] = service
    ctx.upstream_host = host
    ctx.error = ProxyError(ErrorType.UNSPECIFIED, message)
    line = _PLAN(ctx, ctx.start_time)
    assert line.endswith("}\n") and line.count("\n") == 1  # control characters are escaped
    record = json.loads(line.encode("utf-8", "replace").decode("utf-8"))  # as written to the file
    assert (record["service"], record["method"], record["error_message"], record["upstream_host"]) == \
        tuple(value or None for value in (service, method, ctx.error.message, host))
    # the segment cache answers a second request with the same values identically
    assert _PLAN(ctx, ctx.start_time) == line
    text = _TEXT(ctx, 0.0)
    assert text == f"{user or '-'}|{service or '-'}\n"


# -- the fast render against the value-by-value one ---------------------------------

def test_request_id_is_the_one_the_client_sent():
    """The pool rewrites the Metadata's id for the upstream: the log shows ``ctx.downstream_id``."""
    ctx = answered(request())
    ctx.downstream_id = 7
    ctx.metadata["request_id"] = 90001  # as an upstream connection numbers it
    assert text_renderer("%REQUEST_ID%")(ctx, 0.0) == "7\n"
    assert json.loads(accesslog.json_renderer()(ctx, ctx.start_time))["request_id"] == 7


def _varied_contexts() -> list[tuple[RequestContext, float]]:
    """Requests whose values move between the fast path's cases: small and large sizes and durations,
    a duration below zero, equal values in new objects, alternating keys, ids of other types."""
    cases = []
    for i in range(60):
        ctx = answered(request("".join(["m", str(i % 3)])))  # a new str object each time
        ctx.metadata["service"] = "".join(["de", "mo"])
        ctx.bytes_sent = (0, 1, 2047, 2048, 10**6)[i % 5]
        ctx.downstream_id = (i, None, "abc", 2**70)[i % 4]
        ctx.upstream_host = ("h1", "h2")[i // 7 % 2]
        if i % 11 == 0:
            failed(ctx, ErrorType.TIMEOUT, "UT")
        if i % 13 == 0:
            ctx.trace = _Trace()
        duration = (0.0, 0.0004999, 0.0125, 2.0475, 2.0485, 30.0, -0.3)[i % 7]
        cases.append((ctx, ctx.start_time + duration))
    return cases


@pytest.mark.parametrize("fmt", ["json", "%START_TIME% %DURATION% %REQUEST_ID% %PROTOCOL% %LISTENER% %SERVICE% "
                                 "%METHOD% %ROUTE_NAME% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %RESPONSE_STATUS% "
                                 "%RESPONSE_FLAGS% %ERROR_MESSAGE% %ATTEMPTS% %BYTES_RECEIVED% %BYTES_SENT% "
                                 "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_PEER_IDENTITY% %TRACE_ID% "
                                 "%METHOD% 100%% %RESPONSE_METADATA(x-served-by)%"])
def test_the_fast_render_matches_the_value_by_value_one(fmt):
    plan = accesslog.json_renderer() if fmt == "json" else text_renderer(fmt)
    cases = _varied_contexts()
    records = [plan.capture(ctx, end) for ctx, end in cases]
    fast = plan.render(records)
    assert fast == plan.render_slowly(records)
    assert fast.count("\n") == len(records)
    if fmt == "json":
        lines = [json.loads(line) for line in fast.splitlines()]
        assert [r["duration"] for r in lines] == [round((end - ctx.start_time) * 1000) for ctx, end in cases]
        assert {r["duration"] for r in lines} >= {0, 2048, 30000, -300}
        assert [r["bytes_sent"] for r in lines[:5]] == [0, 1, 2047, 2048, 10**6]
        assert [r["request_id"] for r in lines[:4]] == [0, 7, "abc", 2**70]  # None: the Metadata's id
    else:
        assert all(" 100%% " in line for line in fast.splitlines())  # no escapes in the format language


@pytest.mark.interpreted  # compiled, RequestContext.bytes_sent (an int) refuses a float: the case cannot arise
def test_a_size_that_is_not_an_int_still_renders():
    plan = accesslog.json_renderer()
    ctx = answered(request())
    ctx.bytes_sent = 12.5  # no layer does this; the batch falls back to the value-by-value render
    records = [plan.capture(ctx, ctx.start_time), plan.capture(answered(request()), 0.0)]
    assert plan.render(records) == plan.render_slowly(records)
    assert json.loads(plan.render(records).splitlines()[0])["bytes_sent"] == "12.5"


def test_percent_signs_in_values_and_literals_are_kept():
    ctx = answered(request("100%", **{"x-user": "%s%d%%"}))
    assert text_renderer("%% %METHOD% %METADATA(x-user)% %REQUEST_ID%%%")(ctx, 0.0) == "%% 100% %s%d%% 7%%\n"
    assert json.loads(accesslog.json_renderer()(ctx, 0.0))["method"] == "100%"
