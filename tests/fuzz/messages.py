"""Hypothesis strategies of valid messages, written by each protocol's real peer library.

A strategy yields ``Sample(frame, direction, expected, options)``: the bytes a
real client or server sends, which side decodes them, and the metadata the
codec must read from them. Thrift frames come from Apache Thrift
(TMemoryBuffer + TBinaryProtocol/TCompactProtocol/THeaderProtocol), Dubbo
requests from dubbo-ssl-python's Hessian2 encoder, Redis commands from
redis-py's serializer, tinyrpc from the sample peer's encoder. Nothing here is
hand-assembled except what no library writes (Dubbo response and Redis
response framing), and those use the library's value encoder for the body.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from dubbo_ssl.codec.encoder import Object as HessianObject
from dubbo_ssl.codec.encoder import Request as DubboRequest
from hypothesis import strategies as st
from redis.connection import Encoder, PythonRespSerializer
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer

from metaproxy.codec import Direction
from metaproxy.message import MessageType, Metadata, ResponseStatus
from metaproxy_codecs.tinyrpc.sample import encode_message


@dataclass
class Sample:
    """One valid message and what a codec must read from it."""

    frame: bytes
    direction: Direction
    expected: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


# Short printable names: the codecs route on them, and Thrift/Dubbo names are identifiers.
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_", min_size=1, max_size=12)
header_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=10).filter(
    lambda k: k not in {"status", "path", "interface", "service", "version", "group", "method", "key", "command",
                        "transport", "protocol", "session", "request_id", "message_type", "response_status",
                        "header_size", "body_size", "dubbo", "timeout", "error_kind", "error_message",
                        "exception_type", "exception_message", "dubbo_version", "parameter_types"})
header_values = st.text(max_size=20)
headers = st.dictionaries(header_keys, header_values, max_size=4)


# -- tinyrpc -------------------------------------------------------------------------------------
_TINY_TYPES = [MessageType.REQUEST, MessageType.ONEWAY, MessageType.RESPONSE, MessageType.ERROR]


@st.composite
def tinyrpc_messages(draw: st.DrawFn) -> Sample:
    mtype = draw(st.sampled_from(_TINY_TYPES))
    md = Metadata(request_id=draw(st.integers(0, 2**64 - 1)), message_type=mtype,
                  service=draw(st.text(max_size=12)), method=draw(st.text(max_size=12)))
    hdrs = draw(headers)
    md.update(hdrs)
    expected = dict(md)
    if mtype in (MessageType.RESPONSE, MessageType.ERROR):
        status = draw(st.sampled_from([ResponseStatus.SUCCESS, ResponseStatus.ERROR]))
        if mtype is MessageType.ERROR:
            status = ResponseStatus.ERROR
        md["response_status"] = expected["response_status"] = status
    direction = Direction.RESPONSE if mtype in (MessageType.RESPONSE, MessageType.ERROR) else Direction.REQUEST
    frame = encode_message(md, draw(st.binary(max_size=64)))
    return Sample(frame, direction, expected)


# -- thrift --------------------------------------------------------------------------------------
_SCALARS = {
    TType.BOOL: st.booleans(),
    TType.BYTE: st.integers(-128, 127),
    TType.I16: st.integers(-(2**15), 2**15 - 1),
    TType.I32: st.integers(-(2**31), 2**31 - 1),
    TType.I64: st.integers(-(2**63), 2**63 - 1),
    TType.DOUBLE: st.floats(allow_nan=False),
    TType.STRING: st.text(max_size=16),
}


def _thrift_value(depth: int) -> st.SearchStrategy[tuple[int, Any]]:
    scalars = st.sampled_from(sorted(_SCALARS)).flatmap(lambda t: _SCALARS[t].map(lambda v: (t, v)))
    if depth <= 0:
        return scalars
    inner = _thrift_value(depth - 1)

    def homogeneous(etype: int) -> st.SearchStrategy[list[Any]]:
        return st.lists(_SCALARS[etype], max_size=4) if etype in _SCALARS else st.just([])

    element_types = st.sampled_from(sorted(_SCALARS))
    lists = st.tuples(st.sampled_from([TType.LIST, TType.SET]), element_types).flatmap(
        lambda kt: homogeneous(kt[1]).map(lambda items: (kt[0], (kt[1], items))))
    maps = st.tuples(element_types, element_types).flatmap(
        lambda kv: st.lists(st.tuples(_SCALARS[kv[0]], _SCALARS[kv[1]]), max_size=3).map(
            lambda items: (TType.MAP, (kv[0], kv[1], items))))
    structs = thrift_structs(inner).map(lambda fields: (TType.STRUCT, fields))
    return st.one_of(scalars, lists, maps, structs)


def thrift_structs(values: st.SearchStrategy[tuple[int, Any]] | None = None) -> st.SearchStrategy[list]:
    values = values if values is not None else _thrift_value(2)
    return st.lists(st.tuples(st.integers(1, 32767), values), max_size=5, unique_by=lambda f: f[0]).map(
        lambda fs: [(fid, tv[0], tv[1]) for fid, tv in fs])


def _write_value(proto: Any, ttype: int, value: Any) -> None:
    writers = {TType.BOOL: proto.writeBool, TType.BYTE: proto.writeByte, TType.I16: proto.writeI16,
               TType.I32: proto.writeI32, TType.I64: proto.writeI64, TType.DOUBLE: proto.writeDouble,
               TType.STRING: proto.writeString}
    if ttype in writers:
        writers[ttype](value)
    elif ttype == TType.STRUCT:
        _write_struct(proto, value)
    elif ttype in (TType.LIST, TType.SET):
        etype, items = value
        (proto.writeListBegin if ttype == TType.LIST else proto.writeSetBegin)(etype, len(items))
        for item in items:
            _write_value(proto, etype, item)
        (proto.writeListEnd if ttype == TType.LIST else proto.writeSetEnd)()
    else:
        ktype, vtype, items = value
        proto.writeMapBegin(ktype, vtype, len(items))
        for k, v in items:
            _write_value(proto, ktype, k)
            _write_value(proto, vtype, v)
        proto.writeMapEnd()


def _write_struct(proto: Any, fields: list) -> None:
    proto.writeStructBegin("s")
    for fid, ttype, value in fields:
        proto.writeFieldBegin("f", ttype, fid)
        _write_value(proto, ttype, value)
        proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def thrift_frame(name: str, mtype: int, seqid: int, fields: list, transport: str, protocol: str,
                 hdrs: dict[str, str] | None = None, strict: bool = True) -> bytes:
    """One message exactly as Apache Thrift writes it."""
    mem = TMemoryBuffer()
    if transport == "header":
        sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        proto = THeaderProtocol(mem, [THeaderClientType.HEADERS], sub)
        for key, value in (hdrs or {}).items():
            proto.set_header(key.encode(), value.encode())
        trans = proto.trans
    else:
        trans = TFramedTransport(mem) if transport == "framed" else mem
        proto = TCompactProtocol(trans) if protocol == "compact" else TBinaryProtocol(trans, strictWrite=strict)
    proto.writeMessageBegin(name, mtype, seqid)
    _write_struct(proto, fields)
    proto.writeMessageEnd()
    trans.flush()
    return mem.getvalue()


_THRIFT_TYPES = {TMessageType.CALL: MessageType.REQUEST, TMessageType.ONEWAY: MessageType.ONEWAY,
                 TMessageType.REPLY: MessageType.RESPONSE}


@st.composite
def thrift_messages(draw: st.DrawFn, transport: str | None = None, protocol: str | None = None) -> Sample:
    transport = transport or draw(st.sampled_from(["framed", "unframed", "header"]))
    protocol = protocol or draw(st.sampled_from(["binary", "compact"]))
    mtype = draw(st.sampled_from(sorted(_THRIFT_TYPES)))
    method = draw(names)
    service = draw(st.none() | names)
    wire_name = f"{service}:{method}" if service else method
    seqid = draw(st.integers(-(2**31), 2**31 - 1) if protocol == "binary" else st.integers(0, 2**31 - 1))
    fields = draw(thrift_structs())
    if mtype == TMessageType.REPLY:  # a result struct: field 0 is success, anything else an exception
        fields = [(0, TType.STRING, "ok")] if draw(st.booleans()) else [(1, TType.STRUCT, [])]
    hdrs = draw(headers) if transport == "header" else {}
    strict = draw(st.booleans()) if protocol == "binary" else True
    frame = thrift_frame(wire_name, mtype, seqid, fields, transport, protocol, hdrs, strict)
    expected: dict[str, Any] = {"request_id": seqid, "message_type": _THRIFT_TYPES[mtype], "method": method,
                                "transport": transport, "protocol": protocol, **hdrs}
    if service:
        expected["service"] = service
    if mtype == TMessageType.REPLY:
        expected["response_status"] = ResponseStatus.SUCCESS if fields[0][0] == 0 else ResponseStatus.ERROR
    direction = Direction.RESPONSE if mtype == TMessageType.REPLY else Direction.REQUEST
    options = {"transport": draw(st.sampled_from([transport, "auto"])), "protocol": draw(st.sampled_from(
        [protocol, "auto"]))}
    return Sample(frame, direction, expected, options)


# -- dubbo ---------------------------------------------------------------------------------------
# Hessian2 strings are Java (UTF-16) strings; dubbo-ssl-python writes a character beyond the BMP as
# one 3-byte unit (not a surrogate pair), which no Java peer could read: keep to the BMP.
_bmp = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",))
bmp_text = st.text(_bmp, max_size=40)
dubbo_headers = st.dictionaries(header_keys, st.text(_bmp, max_size=20), max_size=4)
_hessian_scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), bmp_text,
                             st.floats(-1e12, 1e12), st.none())  # the library overflows near 1e305
# dubbo-ssl-python cannot encode an empty or mixed list argument: lists are non-empty and typed
_hessian_lists = st.one_of(st.lists(st.integers(-1000, 1000), min_size=1, max_size=5),
                           st.lists(st.text(_bmp, max_size=8), min_size=1, max_size=5))


def _class_for(fields: dict[str, Any]) -> str:
    """dubbo-ssl-python defines a class once per name, so one name must always have the same fields."""
    return "org.example.V_" + "_".join(fields)


_hessian_objects = st.dictionaries(names, st.one_of(st.integers(-1000, 1000), st.text(_bmp, max_size=8)),
                                   max_size=3).map(lambda d: HessianObject(_class_for(d), d))
hessian_args = st.lists(st.one_of(_hessian_scalars.filter(lambda v: v is not None), _hessian_lists,
                                  _hessian_objects), max_size=4)
_DUBBO_OK, _DUBBO_RESPONSE_FLAGS = 20, (0, 1, 2, 3, 4, 5)


@st.composite
def dubbo_requests(draw: st.DrawFn) -> Sample:
    path = "org.example." + draw(names)
    method = draw(names)
    version = draw(st.sampled_from(["1.0.0", "2.0", "0.0.0"]))
    group = draw(st.none() | names)
    context = draw(dubbo_headers)
    request = DubboRequest({"dubbo_version": "2.4.10", "version": version, "method": method, "path": path,
                            "arguments": draw(hessian_args), "group": group, "context": context})
    request.invoke_id = draw(st.integers(0, 2**63 - 1))
    expected: dict[str, Any] = {"request_id": request.invoke_id, "message_type": MessageType.REQUEST,
                                "interface": path, "service": path, "method": method, "version": version,
                                **context}
    if group is not None:
        expected["group"] = group
    return Sample(bytes(request.encode()), Direction.REQUEST, expected)


@st.composite
def dubbo_responses(draw: st.DrawFn) -> Sample:
    """A response frame: 16-byte Dubbo header, then the Hessian2 body dubbo-ssl-python's encoder writes."""
    enc = DubboRequest({})._encode_single_value  # the library's Hessian2 value encoder
    flag = draw(st.sampled_from(_DUBBO_RESPONSE_FLAGS))
    body = list(enc(flag))
    if flag in (1, 4):  # value
        body += enc(draw(st.one_of(_hessian_scalars, _hessian_lists)))
    elif flag in (0, 3):  # exception, written as a string here
        body += enc(draw(bmp_text))
    attachments = draw(dubbo_headers)
    if flag in (3, 4, 5):
        body.append(ord("H"))
        for key, value in attachments.items():
            body += enc(key)
            body += enc(value)
        body.append(ord("Z"))
    else:
        attachments = {}
    request_id = draw(st.integers(0, 2**63 - 1))
    payload = bytes(b & 0xFF for b in body)
    frame = struct.pack(">HBBqI", 0xDABB, 0x02, _DUBBO_OK, request_id, len(payload)) + payload
    status = ResponseStatus.ERROR if flag in (0, 3) else ResponseStatus.SUCCESS
    expected = {"request_id": request_id, "message_type": MessageType.RESPONSE, "response_status": status,
                **attachments}
    return Sample(frame, Direction.RESPONSE, expected)


dubbo_messages = st.one_of(dubbo_requests(), dubbo_responses())


# -- redis ---------------------------------------------------------------------------------------
_serializer = PythonRespSerializer(1 << 20, Encoder("utf-8", "strict", False).encode)
_redis_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz:0123456789", min_size=1, max_size=10)
_redis_args = st.one_of(st.binary(max_size=30), st.text(max_size=20), st.integers(-(2**40), 2**40))


@st.composite
def redis_requests(draw: st.DrawFn) -> Sample:
    command = draw(st.sampled_from(["GET", "SET", "HSET", "DEL", "INCR", "LPUSH", "MGET", "EXPIRE"]))
    key = draw(_redis_words)
    args = draw(st.lists(_redis_args, max_size=4))
    frame = b"".join(_serializer.pack(command, key, *args))
    expected = {"message_type": MessageType.REQUEST, "command": command, "method": command, "key": key}
    return Sample(frame, Direction.REQUEST, expected)


def _resp_line(kind: bytes, text: str) -> bytes:
    return kind + text.encode() + b"\r\n"


_resp_simple = st.one_of(
    st.text(alphabet="abcdefghij OK", max_size=10).map(lambda s: _resp_line(b"+", s)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: _resp_line(b":", str(i))),
    st.binary(max_size=40).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.just(b"$-1\r\n"), st.just(b"_\r\n"), st.sampled_from([b"#t\r\n", b"#f\r\n"]),
    st.floats(allow_nan=False).map(lambda f: _resp_line(b",", repr(f))),
    st.integers(-(2**100), 2**100).map(lambda i: _resp_line(b"(", str(i))),
    st.binary(max_size=20).map(lambda b: b"=%d\r\ntxt:%s\r\n" % (len(b) + 4, b)),
)
_resp_values = st.recursive(
    _resp_simple,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs)),
        st.lists(inner, max_size=4).map(lambda xs: b"~%d\r\n" % len(xs) + b"".join(xs)),
        st.lists(st.tuples(inner, inner), max_size=3).map(
            lambda kv: b"%%%d\r\n" % len(kv) + b"".join(k + v for k, v in kv)),
    ),
    max_leaves=12,
)


@st.composite
def redis_responses(draw: st.DrawFn) -> Sample:
    if draw(st.integers(0, 5)) == 0:
        frame = _resp_line(b"-", "ERR " + draw(st.text(alphabet="abcdefgh ", max_size=20)))
        status = ResponseStatus.ERROR
    else:
        frame = draw(_resp_values)
        status = ResponseStatus.SUCCESS
    return Sample(frame, Direction.RESPONSE, {"message_type": MessageType.RESPONSE, "response_status": status})


redis_messages = st.one_of(redis_requests(), redis_responses())
