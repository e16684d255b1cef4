"""The Dubbo codec: conformance kit with frames from real peers' encoders, then Dubbo-specific behaviour."""

from __future__ import annotations

import json
import struct
from functools import lru_cache

import pytest
from dubbo_ssl.codec.decoder import Response as SslDecoder
from dubbo_ssl.codec.decoder import parse_response_head
from dubbo_ssl.codec.encoder import Object as SslObject
from dubbo_ssl.codec.encoder import Request as SslRequest
from dubbo_ssl.common.constants import CLI_HEARTBEAT_REQ_HEAD, CLI_HEARTBEAT_TAIL
from dubbo_ssl.common.exceptions import DubboResponseException
from test_dubbo_hessian2 import run_node

from metaproxy.codec import CodecError, DecodeStatus, Direction
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus
from metaproxy.testing.conformance import CodecConformance
from metaproxy_codecs.dubbo import DubboCodec
from metaproxy_codecs.dubbo import protocol as p
from metaproxy_codecs.dubbo.codec import build_request, count_parameters


@lru_cache(maxsize=1)
def js_frames() -> dict[str, bytes]:
    return {name: bytes.fromhex(h) for name, h in json.loads(run_node("dubbo_frames.js")).items()}


def ssl_request(method: str, args: list, *, path: str = "org.example.Greeter", version: str = "1.0.0",
                group: str | None = "g1", context: dict | None = None, dubbo_version: str = "2.4.10") -> bytes:
    """A request frame encoded by dubbo-ssl-python, exactly as its client sends it."""
    return bytes(SslRequest({"dubbo_version": dubbo_version, "version": version, "method": method, "path": path,
                             "arguments": args, "group": group, "context": context}).encode())


def decode(frame: bytes, direction: Direction = Direction.REQUEST, codec: DubboCodec | None = None) -> Metadata:
    md = Metadata()
    buf = bytearray(frame)
    assert (codec or DubboCodec(direction=direction)).decode(buf, md) is DecodeStatus.DONE
    assert not buf
    return md


SSL_REQUESTS = [
    ssl_request("sayHello", ["world"]),
    ssl_request("add", [1, 2**40, 2.5, True], context={"x-user": "test-1", "tenant": "acme"}),
    ssl_request("save", [SslObject("org.example.User", {"id": 7, "name": "ann", "tags": ["a", "b"]}),
                         ["x", "y", "z"], "é" * 40], group=None),
]


class TestDubboConformance(CodecConformance):
    codec_class = DubboCodec
    requests = [*SSL_REQUESTS, js_frames()["sayHello"], js_frames()["all argument types"],
                js_frames()["no arguments"]]
    responses = [js_frames()[name] for name in ("value", "null value", "value with attachments",
                                                "null with attachments", "exception", "exception with attachments")]


# -- requests ---------------------------------------------------------------------------------
def test_request_metadata_from_dubbo_ssl_python() -> None:
    md = decode(ssl_request("add", [1, 2**40], context={"x-user": "test-1", "timeout": "3000"}))
    assert md["message_type"] is MessageType.REQUEST
    assert md["interface"] == md["service"] == "org.example.Greeter"
    assert (md["method"], md["version"], md["group"]) == ("add", "1.0.0", "g1")
    assert md["parameter_types"] == "IJ"
    assert (md["x-user"], md["timeout"], md["path"], md["dubbo_version"]) == ("test-1", "3000", md["interface"],
                                                                              "2.4.10")
    assert md["header_size"] == 16 and md["body_size"] == len(md.frame) - 16


def test_request_metadata_from_dubbo2_js() -> None:
    md = decode(js_frames()["all argument types"])
    assert (md["interface"], md["method"], md["version"]) == ("org.example.Kitchen", "sink", "2.1")
    assert md["parameter_types"].startswith("Ljava/lang/String;IJ[I")
    assert count_parameters(md["parameter_types"]) == 10
    assert (md["x-user"], md["tenant"], md["application"]) == ("test-7", "acme", "dubbo2.js")
    assert md["request_id"] == 77
    none = decode(js_frames()["no arguments"])
    assert "version" not in none and none["parameter_types"] == "" and none["request_id"] == 2**40


def test_non_string_attachments_are_stringified_and_null_ones_absent() -> None:
    md = decode(js_frames()["sayHello"])
    assert md["timeout"] == "3000"  # dubbo2.js writes the timeout as an int
    no_group = decode(SSL_REQUESTS[2])  # dubbo-ssl-python writes group=None as a null value
    assert "group" not in no_group


def test_attachments_do_not_override_body_fields() -> None:
    md = decode(ssl_request("m", [], context={"method": "evil", "interface": "x", "request_id": "9"}))
    assert (md["method"], md["interface"]) == ("m", "org.example.Greeter")
    assert isinstance(md["request_id"], int) and md["request_id"] != "9"


def test_oneway_request() -> None:
    frame = build_request(3, "a.B", "fire", two_way=False)
    assert decode(frame)["message_type"] is MessageType.ONEWAY


def test_mutation_rewrites_only_the_attachment_map() -> None:
    frame = ssl_request("add", [1, 2], context={"x-user": "u1"})
    md = decode(frame)
    out = bytearray()
    DubboCodec().encode(md, {"x-user": "u2", "x-route": "canary"}, out)
    again = decode(bytes(out))
    assert (again["x-user"], again["x-route"], again["group"]) == ("u2", "canary", "g1")
    attach_start = md.codec_state.attach_start
    assert out[16:attach_start] == frame[16:attach_start], "bytes before the attachment map must not change"
    assert struct.unpack_from(">I", out, 12)[0] == len(out) - 16
    # the independent decoder reads the mutated body: args then the map
    body = SslDecoder(bytes(out[16:]))
    assert [body.read_next() for _ in range(7)][-2:] == [1, 2]
    attachments = body.read_next()
    assert attachments["x-route"] == "canary" and attachments["x-user"] == "u2"


def test_mutation_adds_a_map_when_attachments_are_null() -> None:
    body = bytearray()
    for text in ("2.0.2", "a.B", "1.0", "m", ""):
        body += bytes([len(text)]) + text.encode()
    body += b"N"
    frame = p.HEADER.pack(p.MAGIC, 0xC2, 0, 1, len(body)) + bytes(body)
    md = decode(frame)
    out = bytearray()
    DubboCodec().encode(md, {"k": "v"}, out)
    assert decode(bytes(out))["k"] == "v"


def test_request_id_is_always_written() -> None:
    md = decode(js_frames()["sayHello"])
    md["request_id"] = 2**63 + 5
    out = bytearray()
    DubboCodec().encode(md, {"x": "y"}, out)
    assert decode(bytes(out))["request_id"] == 2**63 + 5


def test_bad_frames_raise_codec_error() -> None:
    frame = js_frames()["sayHello"]
    with pytest.raises(CodecError, match="magic"):
        DubboCodec().decode(bytearray(b"\xca\xfe" + frame[2:]), Metadata())
    with pytest.raises(CodecError, match="magic"):
        DubboCodec().decode(bytearray(b"GET / HTTP"), Metadata())  # early, before 16 bytes
    with pytest.raises(CodecError, match="serialization"):
        DubboCodec().decode(bytearray(frame[:2] + bytes([0xC6]) + frame[3:]), Metadata())
    with pytest.raises(CodecError, match="exceeds"):
        DubboCodec(max_message_bytes=64).decode(bytearray(frame[:16]), Metadata())
    with pytest.raises(CodecError, match="descriptor"):
        count_parameters("Ljava/lang/String")


# -- responses ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, flag, status, attachments", [
    ("value", 1, ResponseStatus.SUCCESS, {}),
    ("null value", 2, ResponseStatus.SUCCESS, {}),
    ("value with attachments", 4, ResponseStatus.SUCCESS, {"x-served-by": "p1", "dubbo": "2.0.2"}),
    ("null with attachments", 5, ResponseStatus.SUCCESS, {"k": "v"}),
    ("exception", 0, ResponseStatus.ERROR, {}),
    ("exception with attachments", 3, ResponseStatus.ERROR, {"k": "v"}),
])
def test_response_forms(name: str, flag: int, status: ResponseStatus, attachments: dict) -> None:
    md = decode(js_frames()[name], Direction.RESPONSE)
    assert md["message_type"] is MessageType.RESPONSE
    assert md["response_status"] is status and md["status"] == p.OK
    assert md.codec_state.result_flag == flag
    for key, value in attachments.items():
        assert md[key] == value


def test_error_status_response() -> None:
    md = decode(js_frames()["service not found"], Direction.RESPONSE)
    assert md["message_type"] is MessageType.ERROR and md["response_status"] is ResponseStatus.ERROR
    assert md["status"] == p.SERVICE_NOT_FOUND
    assert md["error_message"] == "no provider for org.example.Missing"
    out = bytearray()
    codec = DubboCodec(direction=Direction.RESPONSE)
    codec.encode(md, {"x": "y"}, out)  # an error string has no room for attachments
    assert bytes(out) == js_frames()["service not found"] and codec.mutations_dropped == 1


def test_response_mutation_switches_to_the_attachment_form() -> None:
    md = decode(js_frames()["value"], Direction.RESPONSE)
    out = bytearray()
    DubboCodec(direction=Direction.RESPONSE).encode(md, {"x-served-by": "metaproxy"}, out)
    again = decode(bytes(out), Direction.RESPONSE)
    assert again.codec_state.result_flag == p.RESPONSE_VALUE_WITH_ATTACHMENTS
    assert again["x-served-by"] == "metaproxy"
    values = json.loads(run_node("hessian_decode.js", json.dumps({"hex": out[16:].hex(), "count": 3})))
    assert values == [4, "hello world", {"x-served-by": "metaproxy"}]


def test_response_mutation_is_dropped_for_clients_that_cannot_read_it() -> None:
    codec = DubboCodec()
    decode(ssl_request("m", []), codec=codec)  # dubbo-ssl-python says protocol 2.4.10: no response attachments
    md = decode(js_frames()["value"], Direction.RESPONSE)
    out = bytearray()
    codec.encode(md, {"x": "y"}, out)
    assert bytes(out) == js_frames()["value"] and codec.mutations_dropped == 1
    forced = DubboCodec({"response_attachments": "always"})
    decode(ssl_request("m", []), codec=forced)
    out = bytearray()
    forced.encode(md, {"x": "y"}, out)
    assert decode(bytes(out), Direction.RESPONSE)["x"] == "y"
    never = DubboCodec({"response_attachments": "never"})
    out = bytearray()
    never.encode(md, {"x": "y"}, out)
    assert bytes(out) == js_frames()["value"]
    assert DubboCodec.check_options({"response_attachments": "sometimes", "bogus": 1}) == [
        "response_attachments: must be one of auto, always, never, got 'sometimes'", "bogus: unknown option"]


def test_protocol_version_rule() -> None:
    assert p.int_version("2.0.2") == 2000200 and p.int_version("2.4.10") == 2041000
    assert p.supports_response_attachments("2.0.2")
    assert not p.supports_response_attachments("2.0.1") and not p.supports_response_attachments("2.6.5")


# -- heartbeats and local replies ------------------------------------------------------------------
def test_heartbeat_from_dubbo_ssl_python_is_answered_the_way_it_expects() -> None:
    frame = bytes(CLI_HEARTBEAT_REQ_HEAD + list(struct.pack("!q", 42)) + CLI_HEARTBEAT_TAIL)
    codec = DubboCodec()
    md = decode(frame, codec=codec)
    assert md["message_type"] is MessageType.HEARTBEAT and md["request_id"] == 42
    out = bytearray()
    codec.heartbeat_reply(md, out)
    heartbeat, body_length = parse_response_head(bytes(out[:16]))
    assert heartbeat == 1 and body_length == 1 and out[4:12] == frame[4:12]
    reply = decode(bytes(out), Direction.RESPONSE)
    assert reply["message_type"] is MessageType.HEARTBEAT and reply["response_status"] is ResponseStatus.SUCCESS


def test_heartbeat_from_dubbo2_js_and_oneway_events() -> None:
    md = decode(js_frames()["heartbeat"])
    assert md["message_type"] is MessageType.HEARTBEAT
    oneway = bytearray(js_frames()["heartbeat"])
    oneway[2] &= ~p.FLAG_TWOWAY
    out = bytearray()
    DubboCodec().heartbeat_reply(decode(bytes(oneway)), out)
    assert out == b""
    # an upstream's answer to our heartbeat is itself an event: answering it would ping-pong forever
    answer = bytearray()
    DubboCodec().heartbeat_reply(md, answer)
    DubboCodec(direction=Direction.RESPONSE).heartbeat_reply(decode(bytes(answer), Direction.RESPONSE), out)
    assert out == b""


def test_make_heartbeat_is_what_dubbo2_js_sends() -> None:
    out = bytearray()
    assert DubboCodec().make_heartbeat(0, out)
    assert bytes(out) == js_frames()["heartbeat"]


def test_event_responses_pass_through() -> None:
    reply = bytearray()
    DubboCodec().heartbeat_reply(decode(js_frames()["heartbeat"]), reply)
    md = decode(bytes(reply), Direction.RESPONSE)
    out = bytearray()
    DubboCodec().encode(md, {}, out)
    assert out == reply


@pytest.mark.parametrize("kind, status", [
    (ErrorType.ROUTE_NOT_FOUND, 60), (ErrorType.CLUSTER_NOT_FOUND, 60), (ErrorType.TIMEOUT, 31),
    (ErrorType.OVER_LIMIT, 100), (ErrorType.BAD_RESPONSE, 50), (ErrorType.NO_HEALTHY_UPSTREAM, 70),
    (ErrorType.PERMISSION_DENIED, 70), (ErrorType.UNSPECIFIED, 70),
])
def test_on_error_statuses(kind: ErrorType, status: int) -> None:
    request = decode(ssl_request("m", []))
    out = bytearray()
    DubboCodec().on_error(request, ProxyError(kind, f"no luck: {kind.value}"), out)
    assert out[2] == p.HESSIAN2 and out[3] == status and out[4:12] == request.frame[4:12]
    reply = decode(bytes(out), Direction.RESPONSE)
    assert reply["error_message"] == f"no luck: {kind.value}" and reply["status"] == status


def test_on_error_is_what_dubbo_ssl_python_reports_as_an_error() -> None:
    out = bytearray()
    DubboCodec().on_error(decode(ssl_request("m", [])), ProxyError(ErrorType.ROUTE_NOT_FOUND, "no route"), out)
    with pytest.raises(DubboResponseException, match="SERVICE_NOT_FOUND"):
        parse_response_head(bytes(out[:16]))
    assert SslDecoder(bytes(out[16:])).read_next() == "no route"


def test_make_request_round_trips() -> None:
    out = bytearray()
    assert DubboCodec().make_request(9, out)
    md = decode(bytes(out))
    assert (md["request_id"], md["interface"], md["method"]) == (9, "metaproxy.Ping", "ping")
