"""Access log lines of a real proxy for a success, a request without a route and a timeout."""

from __future__ import annotations

import json
import re

import pytest

from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.observability.util import read_lines

pytestmark = pytest.mark.slow

ROUTES = [
    {"name": "hello", "match": {"metadata": [{"name": "method", "exact": "sayHello"}]}, "route": {"cluster": "c1"}},
    {"name": "slow", "match": {"metadata": [{"name": "method", "exact": "sleep"}]},
     "route": {"cluster": "c1", "timeout": "200ms"}},
]
TEXT = ("%START_TIME% %DURATION% %REQUEST_ID% %PROTOCOL% %SERVICE% %METHOD% %ROUTE_NAME% %UPSTREAM_CLUSTER% "
        "%UPSTREAM_HOST% %RESPONSE_STATUS% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% "
        "%DOWNSTREAM_REMOTE_ADDRESS% %METADATA(x-user)%")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.timeout(60)
def test_access_log_lines_field_by_field(tinyrpc_server, proxy, tmp_path):
    upstream = tinyrpc_server("v1")
    text_log, json_log, errors_log, slow_log = (tmp_path / n for n in ("a.log", "a.json", "err.log", "slow.log"))
    p = proxy({
        "listeners": [tinyrpc_listener(ROUTES)],
        "clusters": [{"name": "c1", "endpoints": [upstream.address]}],
        "access_log": [
            {"path": str(text_log), "format": TEXT},
            {"path": str(json_log), "format": "json"},
            {"path": str(errors_log), "format": "%METHOD% %RESPONSE_FLAGS%", "filter": {"status": "error"}},
            {"path": str(slow_log), "format": "%METHOD%", "filter": {"min_duration": "150ms"}},
        ],
    })
    with TinyRpcClient(*p.address()) as client:
        client_port = client.sock.getsockname()[1]
        client.call("sayHello", headers={"x-user": "bob"}, request_id=101)
        client.call("nope", request_id=102)
        client.call("sleep", body=b"0.6", request_id=103)

    lines = [line.split(" ") for line in read_lines(text_log, 3)]
    ok, no_route, timeout = lines
    names = ["start", "duration", "id", "protocol", "service", "method", "route", "cluster", "host", "status",
             "flags", "rx", "tx", "peer", "user"]
    ok, no_route, timeout = (dict(zip(names, fields, strict=True)) for fields in lines)
    for entry in (ok, no_route, timeout):
        assert TIME.match(entry["start"]), entry
        assert entry["protocol"] == "tinyrpc" and entry["service"] == "demo"
        assert entry["peer"] == f"127.0.0.1:{client_port}"
        assert int(entry["rx"]) > 0 and int(entry["tx"]) > 0
    assert (ok["id"], ok["method"], ok["route"], ok["cluster"], ok["host"], ok["status"], ok["flags"], ok["user"]) \
        == ("101", "sayHello", "hello", "c1", upstream.address, "success", "-", "bob")
    assert (no_route["id"], no_route["method"], no_route["route"], no_route["cluster"], no_route["host"],
            no_route["status"], no_route["flags"], no_route["user"]) \
        == ("102", "nope", "-", "-", "-", "route_not_found", "NR", "-")
    assert (timeout["id"], timeout["method"], timeout["route"], timeout["cluster"], timeout["host"],
            timeout["status"], timeout["flags"]) == ("103", "sleep", "slow", "c1", upstream.address, "timeout", "UT")
    assert 200 <= int(timeout["duration"]) < 600
    assert int(ok["duration"]) < 200

    records = [json.loads(line) for line in read_lines(json_log, 3)]
    assert [(r["request_id"], r["route_name"], r["response_status"], r["response_flags"]) for r in records] == [
        (101, "hello", "success", None), (102, None, "route_not_found", "NR"), (103, "slow", "timeout", "UT")]
    assert records[2]["upstream_host"] == upstream.address and records[2]["attempts"] == 1

    assert read_lines(errors_log, 2) == ["nope NR", "sleep UT"]
    assert read_lines(slow_log, 1) == ["sleep"]


@pytest.mark.timeout(30)
def test_bad_access_log_filter_stops_the_proxy_with_the_key_path(tinyrpc_server, tmp_path):
    from metaproxy.testing.harness import ProxyProcess

    proc = ProxyProcess({
        "listeners": [tinyrpc_listener(ROUTES)],
        "clusters": [{"name": "c1", "endpoints": ["127.0.0.1:1"]}],
        "access_log": [{"path": str(tmp_path / "a.log"), "filter": {"status": "sometimes"}}],
    }, tmp_path / "p")
    with pytest.raises(RuntimeError) as exc:
        proc.start(timeout=15)
    assert "access_log[0].filter: status: expected 'error' or 'success'" in str(exc.value)
