"""Access logs: format compilation, filters and their errors, the buffered writer (in process)."""

from __future__ import annotations

import json

import gevent
import pytest

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
