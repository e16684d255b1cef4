"""What the Thrift codec writes is read back correctly by the real Apache Thrift library.

The conformance kit proves the codec agrees with itself; these tests prove it
agrees with Thrift: rewritten seqids, THeader mutations, local error replies,
and the limits that keep bad bytes from costing memory or time.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_thrift_conformance import ITEM, KITCHEN_SINK, message
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer

from metaproxy.codec import CodecError, DecodeStatus, Direction
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus
from metaproxy_codecs.thrift import ThriftCodec

SHAPES = [("framed", "binary"), ("framed", "compact"), ("unframed", "binary"), ("unframed", "compact"),
          ("header", "binary"), ("header", "compact")]


def apache_reader(data: bytes, transport: str, protocol: str) -> Any:
    """An Apache protocol positioned at the start of ``data``."""
    mem = TMemoryBuffer(data)
    if transport == "header":
        return THeaderProtocol(mem, [THeaderClientType.HEADERS])
    trans = TFramedTransport(mem) if transport == "framed" else mem
    return TCompactProtocol(trans) if protocol == "compact" else TBinaryProtocol(trans)


def decode(frame: bytes, options: dict | None = None, direction: Direction = Direction.REQUEST) -> Metadata:
    md = Metadata()
    buf = bytearray(frame)
    assert ThriftCodec(options or {}, direction).decode(buf, md) is DecodeStatus.DONE
    assert not buf
    return md


@pytest.mark.parametrize("transport,protocol", SHAPES)
def test_rewritten_seqid_is_what_apache_reads(transport: str, protocol: str) -> None:
    # Apache's skip() reads strings as UTF-8, so leave out the raw binary field here.
    text_only = [field for field in KITCHEN_SINK if field[0] != 9]
    frame = message("echo", TMessageType.CALL, 5, [(1, TType.STRUCT, text_only)],
                    transport=transport, protocol=protocol)
    for new_id in (7, 2**31 - 1, 300):  # compact: the varint grows from 1 to 5 and 2 bytes
        md = decode(frame)
        md["request_id"] = new_id
        out = bytearray()
        ThriftCodec({}).encode(md, {}, out)
        reader = apache_reader(bytes(out), transport, protocol)
        assert reader.readMessageBegin() == ("echo", TMessageType.CALL, new_id)
        reader.skip(TType.STRUCT)  # the body is still a whole, valid struct
        if transport == "header":
            assert reader.trans.sequence_id == new_id


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("zlib", [False, True])
def test_theader_mutation_reaches_apache_as_headers(protocol: str, zlib: bool) -> None:
    frame = message("Echo:echo", TMessageType.CALL, 11, [(1, TType.STRUCT, ITEM)], transport="header",
                    protocol=protocol, headers={"x-user": "alice", "keep": "me"}, zlib=zlib)
    md = decode(frame, {"transport": "header"})
    assert (md["x-user"], md["keep"], md["service"], md["method"]) == ("alice", "me", "Echo", "echo")
    md["request_id"] = 99
    out = bytearray()
    codec = ThriftCodec({"transport": "header"})
    codec.encode(md, {"x-user": "bob", "x-route": "canary"}, out)
    assert codec.mutations_dropped == 0
    reader = apache_reader(bytes(out), "header", protocol)
    assert reader.readMessageBegin() == ("Echo:echo", TMessageType.CALL, 99)
    assert reader.get_headers() == {b"x-user": b"bob", b"keep": b"me", b"x-route": b"canary"}
    reader.skip(TType.STRUCT)


@pytest.mark.parametrize("transport,protocol", SHAPES[:4])
def test_mutation_without_theader_is_counted_and_the_frame_is_untouched(transport: str, protocol: str) -> None:
    frame = message("ping", TMessageType.CALL, 1, [], transport=transport, protocol=protocol)
    codec = ThriftCodec({})
    out = bytearray()
    codec.encode(decode(frame), {"x-route": "canary"}, out)
    assert bytes(out) == frame
    assert codec.mutations_dropped == 1


@pytest.mark.parametrize("transport,protocol", SHAPES)
@pytest.mark.parametrize("kind,code", [(ErrorType.ROUTE_NOT_FOUND, TApplicationException.UNKNOWN_METHOD),
                                       (ErrorType.TIMEOUT, TApplicationException.INTERNAL_ERROR),
                                       (ErrorType.OVER_LIMIT, TApplicationException.INTERNAL_ERROR)])
def test_on_error_is_an_apache_tapplicationexception(transport: str, protocol: str, kind: ErrorType,
                                                      code: int) -> None:
    frame = message("Calc:add", TMessageType.CALL, 41, [(1, TType.I32, 1)], transport=transport, protocol=protocol)
    codec = ThriftCodec({})
    request = decode(frame)
    codec.decode(bytearray(frame), Metadata())  # on_error is called on the instance that decoded
    out = bytearray()
    codec.on_error(request, ProxyError(kind, "no route for Calc:add"), out)
    reader = apache_reader(bytes(out), transport, protocol)
    assert reader.readMessageBegin() == ("add", TMessageType.EXCEPTION, 41)
    exc = TApplicationException()
    exc.read(reader)
    assert exc.type == code
    assert exc.message == f"metaproxy: {kind.value}: no route for Calc:add"


def test_on_error_without_a_decoded_request_uses_what_the_connection_spoke() -> None:
    codec = ThriftCodec({})
    codec.decode(bytearray(message("ping", TMessageType.CALL, 1, [], transport="unframed", protocol="compact")),
                 Metadata())
    out = bytearray()
    codec.on_error(Metadata(), ProxyError(ErrorType.UNSPECIFIED, "malformed request"), out)
    reader = apache_reader(bytes(out), "unframed", "compact")
    assert reader.readMessageBegin()[1] == TMessageType.EXCEPTION


def test_on_error_for_a_oneway_request_writes_nothing() -> None:
    md = decode(message("fire", TMessageType.ONEWAY, 3, [], transport="framed"))
    out = bytearray()
    ThriftCodec({}).on_error(md, ProxyError(ErrorType.ROUTE_NOT_FOUND), out)
    assert out == b""


def test_lax_binary_error_reply_stays_lax() -> None:
    md = decode(message("ping", TMessageType.CALL, 8, [], transport="framed", strict=False))
    out = bytearray()
    ThriftCodec({}).on_error(md, ProxyError(ErrorType.TIMEOUT), out)
    assert out[4] == 0  # a name length, not the 0x80 of a version word
    assert apache_reader(bytes(out), "framed", "binary").readMessageBegin() == ("ping", TMessageType.EXCEPTION, 8)


def test_response_status_and_exception_keys() -> None:
    ok = decode(message("echo", TMessageType.REPLY, 1, [(0, TType.STRUCT, ITEM)]), direction=Direction.RESPONSE)
    declared = decode(message("find", TMessageType.REPLY, 1, [(1, TType.STRUCT, [])]), direction=Direction.RESPONSE)
    void = decode(message("ping", TMessageType.REPLY, 1, []), direction=Direction.RESPONSE)
    app = decode(message("x", TMessageType.EXCEPTION, 1,
                         lambda p: TApplicationException(TApplicationException.INTERNAL_ERROR, "boom").write(p)))
    assert ok["response_status"] is ResponseStatus.SUCCESS and ok["message_type"] is MessageType.RESPONSE
    assert declared["response_status"] is ResponseStatus.ERROR and declared["message_type"] is MessageType.RESPONSE
    assert void["response_status"] is ResponseStatus.SUCCESS
    assert app["message_type"] is MessageType.ERROR and app["response_status"] is ResponseStatus.ERROR
    assert (app["exception_type"], app["exception_message"]) == (TApplicationException.INTERNAL_ERROR, "boom")


def test_theader_headers_never_shadow_codec_keys() -> None:
    md = decode(message("ping", TMessageType.CALL, 1, [], transport="header",
                        headers={"method": "evil", "request_id": "x", "x-ok": "1"}))
    assert (md["method"], md["request_id"], md["x-ok"]) == ("ping", 1, "1")


@pytest.mark.parametrize("options,expected", [({}, False), ({"transport": "auto"}, False),
                                              ({"transport": "unframed"}, False), ({"transport": "buffered"}, False),
                                              ({"transport": "framed"}, True), ({"transport": "header"}, True)])
def test_multiplexing_follows_the_transport(options: dict, expected: bool) -> None:
    assert ThriftCodec(options).multiplexing is expected


def test_check_options_names_the_bad_key() -> None:
    assert ThriftCodec.check_options({"transport": "framed", "protocol": "compact"}) == []
    problems = ThriftCodec.check_options({"transport": "http", "protocol": "json", "strict": True})
    assert any(p.startswith("transport:") for p in problems)
    assert any(p.startswith("protocol:") for p in problems)
    assert any(p.startswith("strict:") for p in problems)


def test_fixed_protocol_refuses_the_other_one() -> None:
    frame = message("ping", TMessageType.CALL, 1, [], transport="framed", protocol="compact")
    with pytest.raises(CodecError, match="compact"):
        ThriftCodec({"transport": "framed", "protocol": "binary"}).decode(bytearray(frame), Metadata())


def test_unframed_waits_without_rewalking_until_the_needed_bytes_arrive() -> None:
    big = "x" * 100_000
    frame = message("echo", TMessageType.CALL, 1, [(1, TType.STRING, big)], transport="unframed")
    codec = ThriftCodec({"transport": "unframed"})
    buf = bytearray(frame[:1000])
    assert codec.decode(buf, Metadata()) is DecodeStatus.WAIT_FOR_DATA
    assert codec._min_needed == len(frame) - 1  # the string's declared end (the stop byte follows)
    buf += frame[1000:]
    md = Metadata()
    assert codec.decode(buf, md) is DecodeStatus.DONE and md.frame == frame


def test_unframed_declared_size_beyond_the_limit_fails_at_once() -> None:
    frame = message("echo", TMessageType.CALL, 1, [(1, TType.STRING, "y" * 5000)], transport="unframed")
    with pytest.raises(CodecError, match="max_message_bytes"):
        ThriftCodec({"transport": "unframed"}, max_message_bytes=1024).decode(bytearray(frame[:64]), Metadata())


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_nesting_deeper_than_the_limit_is_refused(protocol: str) -> None:
    nested: list = []
    for _ in range(80):
        nested = [(1, TType.STRUCT, nested)]
    frame = message("deep", TMessageType.CALL, 1, nested, transport="unframed", protocol=protocol)
    with pytest.raises(CodecError, match="nested"):
        ThriftCodec({"transport": "unframed"}).decode(bytearray(frame), Metadata())


def test_auto_detects_each_dialect_per_message() -> None:
    codec = ThriftCodec({})
    seen = []
    for transport, protocol in SHAPES:
        md = decode(message("ping", TMessageType.CALL, 1, [], transport=transport, protocol=protocol))
        buf = bytearray(md.frame)
        codec.decode(buf, md)
        seen.append((md["transport"], md["protocol"]))
    assert seen == SHAPES


def test_make_request_is_a_ping_apache_can_read() -> None:
    out = bytearray()
    assert ThriftCodec({"transport": "framed", "protocol": "compact"}).make_request(12, out)
    assert apache_reader(bytes(out), "framed", "compact").readMessageBegin() == ("ping", TMessageType.CALL, 12)
