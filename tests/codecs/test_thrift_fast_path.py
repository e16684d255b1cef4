"""The Thrift codec's framed strict binary fast path decodes exactly what the general path does.

``ThriftCodec._decode_framed_strict`` reads the common message shape in place
and hands everything else to the general path. Each case here runs the same
bytes through a codec with the fast path and one without it, and requires the
same outcome: status, every Metadata key, the frame taken, the bytes left,
the same CodecError, and the same bytes from encode (with and without a new
seqid or a Mutation) and from on_error. The boundaries are where the fast path
stops: an empty name, a body that ends right after the seqid, a reply whose
first field is cut short, field ids that are zero in only one byte, names
that are not ASCII or not UTF-8, sizes at the limit.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from thrift.Thrift import TApplicationException, TMessageType, TType

from metaproxy.codec import CodecError, DecodeStatus, Direction
from metaproxy.message import ErrorType, Metadata, ProxyError, ResponseStatus
from metaproxy_codecs.thrift import ThriftCodec
from metaproxy_codecs.thrift import codec as thrift_codec
from tests.fuzz import messages as m
from tests.fuzz.props import FAST, mutate

OPTIONS = [{"transport": t, "protocol": p} for t in ("auto", "framed", "unframed", "header")
           for p in ("auto", "binary", "compact")]


def strict(name: bytes, mtype: int, seqid: int, body: bytes = b"\x00", version: int = 0x8001) -> bytes:
    """A framed strict binary message, written by hand so that it can be wrong in any chosen way."""
    message = struct.pack(">HBBI", version, 0, mtype, len(name)) + name + struct.pack(">i", seqid) + body
    return struct.pack(">I", len(message)) + message


def outcome(data: bytes, options: dict[str, Any], fast: bool, direction: Direction = Direction.REQUEST,
            limit: int = 1 << 20) -> tuple:
    """Everything observable about decoding ``data`` (and re-encoding what was decoded)."""
    codec = ThriftCodec(options, direction, limit)
    if not fast:
        codec._strict_fast = False
    buf = bytearray(data)
    md = Metadata()
    try:
        status = codec.decode(buf, md)
    except CodecError as exc:
        return ("error", str(exc), exc.offset, bytes(buf), dict(md))
    if status is not DecodeStatus.DONE:
        return (status, bytes(buf), dict(md))
    encoded = []
    for seqid in (md["request_id"], 7, 2**31 - 1, 2**32 + 5):
        for mutation in ({}, {"x-user": "bob"}):
            again = Metadata(md)
            again.frame, again.codec_state = md.frame, md.codec_state
            again["request_id"] = seqid
            out = bytearray()
            codec.encode(again, mutation, out)
            encoded.append(bytes(out))
    reply = bytearray()
    codec.on_error(md, ProxyError(ErrorType.TIMEOUT, "slow"), reply)
    return (status, list(md.items()), md.frame, bytes(buf), encoded, bytes(reply), codec.mutations_dropped)


def same_both_ways(data: bytes, options: dict[str, Any] | None = None, **kwargs: Any) -> tuple:
    fast = outcome(data, options or {"transport": "framed", "protocol": "binary"}, True, **kwargs)
    general = outcome(data, options or {"transport": "framed", "protocol": "binary"}, False, **kwargs)
    assert fast == general
    return fast


@pytest.mark.interpreted  # swaps a method of the class: compiled, its callers call the method directly
def test_the_fast_path_is_taken_for_the_common_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    def general_path(*args: Any) -> None:
        raise AssertionError("the general path ran")

    monkeypatch.setattr(ThriftCodec, "_decode_message", general_path)
    for options in ({"transport": "framed"}, {}, {"transport": "framed", "protocol": "binary"}):
        md = Metadata()
        assert ThriftCodec(options).decode(bytearray(strict(b"Echo:ping", TMessageType.CALL, 3)), md) \
            is DecodeStatus.DONE
        assert (md["service"], md["method"], md["request_id"]) == ("Echo", "ping", 3)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o['transport']}-{o['protocol']}")
@pytest.mark.parametrize("mtype", [TMessageType.CALL, TMessageType.ONEWAY, TMessageType.REPLY])
def test_every_option_agrees(options: dict[str, Any], mtype: int) -> None:
    same_both_ways(strict(b"Svc:echo", mtype, 41), options)


@pytest.mark.parametrize("name", [b"", b"p", b"Svc:m", b"a:b:c", b":m", b"m:", "h\u00e9llo".encode(),
                                  "\u6f22:\u5b57".encode(), b"x" * 300])
def test_names(name: bytes) -> None:
    result = same_both_ways(strict(name, TMessageType.CALL, 5))
    assert result[0] is DecodeStatus.DONE


@pytest.mark.parametrize("name", [b"\xff", b"ok\xc3", b"\xed\xa0\x80"])
def test_a_name_that_is_not_utf8_is_a_codec_error(name: bytes) -> None:
    assert same_both_ways(strict(name, TMessageType.CALL, 5))[0] == "error"


@pytest.mark.parametrize("body,status", [
    (b"\x00", ResponseStatus.SUCCESS),                   # void: empty result struct
    (b"\x0c\x00\x00\x00\x00", ResponseStatus.SUCCESS),    # field 0: the return value
    (b"\x0c\x00\x01\x00\x00", ResponseStatus.ERROR),      # field 1: a declared exception
    (b"\x0c\x01\x00\x00\x00", ResponseStatus.ERROR),      # field 256: zero in the low byte only
    (b"\x0c\xff\xff\x00\x00", ResponseStatus.ERROR),      # field -1
])
def test_reply_status_from_the_first_field(body: bytes, status: ResponseStatus) -> None:
    result = same_both_ways(strict(b"echo", TMessageType.REPLY, 9, body), direction=Direction.RESPONSE)
    assert dict(result[1])["response_status"] is status


@pytest.mark.parametrize("body", [b"", b"\x0c", b"\x0c\x00"])
def test_a_reply_cut_inside_its_first_field_is_a_codec_error(body: bytes) -> None:
    assert same_both_ways(strict(b"echo", TMessageType.REPLY, 9, body), direction=Direction.RESPONSE)[0] == "error"


def test_a_call_with_nothing_after_the_seqid_is_taken_as_the_general_path_takes_it() -> None:
    same_both_ways(strict(b"echo", TMessageType.CALL, 9, b""))
    same_both_ways(strict(b"", TMessageType.ONEWAY, 0, b""))  # the smallest frame: 16 bytes


def test_an_exception_reply_goes_the_general_way() -> None:
    body = (struct.pack(">bhi", TType.STRING, 1, 4) + b"boom" + struct.pack(">bhi", TType.I32, 2, 6) + b"\x00")
    result = same_both_ways(strict(b"echo", TMessageType.EXCEPTION, 9, body), direction=Direction.RESPONSE)
    assert dict(result[1])["exception_type"] == TApplicationException.INTERNAL_ERROR


@pytest.mark.parametrize("data", [
    strict(b"echo", 0, 1), strict(b"echo", 5, 1), strict(b"echo", TMessageType.CALL, 1, version=0x8002),
    strict(b"echo", TMessageType.CALL, 1, version=0x7001),
    struct.pack(">I", 12) + struct.pack(">II", 0x80010001, 0xFFFFFFF0) + b"abcd",  # name far past the frame
    struct.pack(">I", 0x80000010) + bytes(16),  # negative length word
    struct.pack(">I", 5) + b"\x80\x01\x00\x01\x00",  # frame shorter than a strict header
])
def test_bad_headers_raise_the_same_error(data: bytes) -> None:
    for options in OPTIONS:
        same_both_ways(data, options)


@pytest.mark.parametrize("over", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("follow", [b"", strict(b"next", TMessageType.CALL, 2)])
def test_a_seqid_that_overruns_its_frame_is_an_error_even_with_bytes_after_it(over: int, follow: bytes) -> None:
    frame = bytearray(strict(b"echo", TMessageType.CALL, 1, b""))
    struct.pack_into(">I", frame, 8, 4 + over)  # the name now eats ``over`` bytes of the seqid (or beyond)
    assert same_both_ways(bytes(frame) + follow)[0] == "error"


@pytest.mark.parametrize("cut", range(0, 26))
def test_every_partial_buffer_waits_or_fails_the_same(cut: int) -> None:
    frame = strict(b"Svc:echo", TMessageType.CALL, 77, b"\x0b\x00\x01\x00\x00\x00\x01a\x00")
    same_both_ways(frame[:cut])


def test_two_messages_in_one_buffer_leave_the_second() -> None:
    first, second = strict(b"a", TMessageType.CALL, 1), strict(b"b", TMessageType.CALL, 2)
    result = same_both_ways(first + second)
    assert result[2] == first and result[3] == second


@pytest.mark.parametrize("limit_delta", [-1, 0])
def test_the_size_limit_holds_at_the_boundary(limit_delta: int) -> None:
    frame = strict(b"echo", TMessageType.CALL, 1, b"\x00" * 40)
    result = same_both_ways(frame, limit=len(frame) + limit_delta)
    assert (result[0] == "error") == (limit_delta < 0)
    assert same_both_ways(frame[:20], limit=len(frame) - 1)[0] == "error"  # refused before it is all here


@FAST
@given(st.sampled_from([("framed", "binary"), ("framed", "compact"), ("header", "binary"), ("unframed", "binary")])
       .flatmap(lambda shape: m.thrift_messages(*shape)),
       st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=3),
       st.none() | st.integers(0, 100_000), st.sampled_from(OPTIONS[:3] + OPTIONS[3:6]))
def test_generated_and_damaged_messages_agree(sample: m.Sample, edits: list, truncate: int | None,
                                              options: dict[str, Any]) -> None:
    same_both_ways(sample.frame, options, direction=sample.direction)
    same_both_ways(mutate(sample.frame, edits, truncate), options, direction=sample.direction)


def test_the_fast_path_flag_follows_the_options() -> None:
    flags = {(o["transport"], o["protocol"]): ThriftCodec(o)._strict_fast for o in OPTIONS}
    assert {shape for shape, on in flags.items() if on} == {
        ("auto", "auto"), ("auto", "binary"), ("framed", "auto"), ("framed", "binary")}
    assert thrift_codec._FRAMED_STRICT_MIN == len(strict(b"", TMessageType.CALL, 0, b""))


# -- decode_passthrough (responses nobody reads beyond their status) --------------------------------
def _passthrough_agrees(frame: bytes, options: dict[str, str], mutation: dict[str, str]) -> None:
    full, passed = Metadata(), Metadata()
    try:
        full_status = ThriftCodec(options, Direction.RESPONSE).decode(bytearray(frame), full)
    except CodecError as exc:
        full_status = ("error", str(exc))
    buf = bytearray(frame)
    try:
        passed_status = ThriftCodec(options, Direction.RESPONSE).decode_passthrough(buf, passed)
    except CodecError as exc:
        passed_status = ("error", str(exc))
    if passed_status is not DecodeStatus.DONE:
        assert passed_status == full_status  # what it does not pass through, decode decides
        return
    assert not buf
    if full_status != DecodeStatus.DONE:  # only what passthrough does not read may be wrong: the name
        assert full_status == ("error", "method name is not valid UTF-8"), full_status
        return
    assert {k: full.get(k) for k in passed} == dict(passed)
    for key in ("request_id", "message_type", "response_status"):
        assert (key in passed) == (key in full)
    outputs = []
    for md in (full, passed):
        again = Metadata(md, request_id=4242)
        again.frame, again.codec_state = md.frame, md.codec_state
        out = bytearray()
        ThriftCodec(options, Direction.REQUEST).encode(again, dict(mutation), out)
        outputs.append(bytes(out))
    assert outputs[0] == outputs[1]


@FAST
@given(m.thrift_messages(), st.sampled_from(OPTIONS), st.sampled_from([{}, {"x-user": "bob"}]))
def test_passthrough_agrees_with_decode(sample: m.Sample, options: dict[str, str], mutation: dict) -> None:
    _passthrough_agrees(sample.frame, options, mutation)


@pytest.mark.parametrize("body", [b"\x00", b"\x0b\x00\x00\x00\x00\x00\x02ok\x00", b"\x0c\x00\x01\x00\x00",
                                  b"\x0c\x00", b"\x0c", b"\x0c\x01\x00\x00", b""])
@pytest.mark.parametrize("name", [b"ping", b"Svc:ping", b"", b"\xff\xfe"])
def test_passthrough_at_the_fast_path_boundaries(body: bytes, name: bytes) -> None:
    for options in ({"transport": "framed", "protocol": "binary"}, {"transport": "auto", "protocol": "auto"}):
        _passthrough_agrees(strict(name, TMessageType.REPLY, 7, body), options, {})


def test_a_framed_binary_reply_is_not_read() -> None:
    frame = strict(b"\xff\xfe", TMessageType.REPLY, 7, b"\x0c\x00\x01\x00\x00")  # a name decode would refuse
    md = Metadata()
    codec = ThriftCodec({"transport": "framed", "protocol": "binary"}, Direction.RESPONSE)
    assert codec.decode_passthrough(bytearray(frame), md) is DecodeStatus.DONE
    assert dict(md) == {"request_id": 7, "message_type": md["message_type"], "response_status": ResponseStatus.ERROR}
