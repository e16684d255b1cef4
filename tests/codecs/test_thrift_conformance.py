"""The Thrift codec passes the conformance kit for every transport x protocol combination.

Every sample is written by the real Apache Thrift library (TMemoryBuffer,
TFramedTransport, THeaderTransport, TBinaryProtocol strict and lax,
TCompactProtocol), driven through its protocol API: no hand-written bytes.
The helpers here are reused by test_thrift_codec.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID, THeaderTransformID
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer

from metaproxy.testing.conformance import CodecConformance
from metaproxy_codecs.thrift import ThriftCodec

# -- values: (ttype, value); struct = [(fid, ttype, value)], list/set = (etype, [v]), map = (kt, vt, [(k, v)])
Struct = list[tuple[int, int, Any]]

KITCHEN_SINK: Struct = [
    (1, TType.BOOL, True),
    (2, TType.BOOL, False),
    (3, TType.BYTE, -7),
    (4, TType.I16, -300),
    (5, TType.I32, 123456),
    (6, TType.I64, -(2**40)),
    (7, TType.DOUBLE, 3.25),
    (8, TType.STRING, "héllo"),
    (9, TType.STRING, b"\x00\x01\xff binary"),
    (10, TType.LIST, (TType.STRING, [f"s{i}" for i in range(20)])),  # > 14: compact long list form
    (11, TType.SET, (TType.I32, [1, -2, 3])),
    (12, TType.MAP, (TType.STRING, TType.LIST, [("a", (TType.DOUBLE, [1.5, 2.5])), ("b", (TType.DOUBLE, []))])),
    (13, TType.STRUCT, [
        (1, TType.STRING, "inner"),
        (2, TType.MAP, (TType.I32, TType.BOOL, [(1, True), (2, False)])),
        (3, TType.STRUCT, [(1, TType.LIST, (TType.BOOL, [True, False, True]))]),
    ]),
    (14, TType.UUID, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    (15, TType.LIST, (TType.MAP, [])),
    (16, TType.MAP, (TType.STRING, TType.I64, [])),
    (300, TType.I32, 42),  # a field id jump too big for a compact delta
    (17, TType.LIST, (TType.STRUCT, [[(1, TType.I64, i)] for i in range(3)])),
    (18, TType.SET, (TType.UUID, [uuid.UUID(int=5)])),
]
ITEM: Struct = [(1, TType.STRING, "widget"), (2, TType.MAP, (TType.STRING, TType.I64, [("red", 1), ("blue", 2)]))]


def write_value(proto: Any, ttype: int, value: Any) -> None:
    if ttype == TType.BOOL:
        proto.writeBool(value)
    elif ttype == TType.BYTE:
        proto.writeByte(value)
    elif ttype == TType.I16:
        proto.writeI16(value)
    elif ttype == TType.I32:
        proto.writeI32(value)
    elif ttype == TType.I64:
        proto.writeI64(value)
    elif ttype == TType.DOUBLE:
        proto.writeDouble(value)
    elif ttype == TType.STRING:
        proto.writeBinary(value) if isinstance(value, bytes) else proto.writeString(value)
    elif ttype == TType.UUID:
        proto.writeUuid(value)
    elif ttype == TType.STRUCT:
        write_struct(proto, value)
    elif ttype in (TType.LIST, TType.SET):
        etype, items = value
        (proto.writeListBegin if ttype == TType.LIST else proto.writeSetBegin)(etype, len(items))
        for item in items:
            write_value(proto, etype, item)
        (proto.writeListEnd if ttype == TType.LIST else proto.writeSetEnd)()
    elif ttype == TType.MAP:
        ktype, vtype, items = value
        proto.writeMapBegin(ktype, vtype, len(items))
        for key, item in items:
            write_value(proto, ktype, key)
            write_value(proto, vtype, item)
        proto.writeMapEnd()
    else:
        raise ValueError(ttype)


def write_struct(proto: Any, fields: Struct) -> None:
    proto.writeStructBegin("s")
    for fid, ttype, value in fields:
        proto.writeFieldBegin("f", ttype, fid)
        write_value(proto, ttype, value)
        proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def write_app_exception(proto: Any, message: str, code: int) -> None:
    TApplicationException(code, message).write(proto)


def message(name: str, mtype: int, seqid: int, body: Callable[[Any], None] | Struct, *,
            transport: str = "framed", protocol: str = "binary", strict: bool = True,
            headers: dict[str, str] | None = None, zlib: bool = False) -> bytes:
    """One message as the Apache library writes it in the given transport and protocol."""
    mem = TMemoryBuffer()
    if transport == "header":
        sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        proto = THeaderProtocol(mem, [THeaderClientType.HEADERS], sub)
        for key, value in (headers or {}).items():
            proto.set_header(key.encode(), value.encode())
        if zlib:
            proto.add_transform(THeaderTransformID.ZLIB)
        trans = proto.trans
    else:
        trans = TFramedTransport(mem) if transport == "framed" else mem
        if protocol == "compact":
            proto = TCompactProtocol(trans)
        else:
            proto = TBinaryProtocol(trans, strictWrite=strict)
    proto.writeMessageBegin(name, mtype, seqid)
    if callable(body):
        body(proto)
    else:
        write_struct(proto, body)
    proto.writeMessageEnd()
    trans.flush()
    return mem.getvalue()


def requests_for(**shape: Any) -> list[bytes]:
    return [
        message("echo", TMessageType.CALL, 1, [(1, TType.STRUCT, KITCHEN_SINK)], **shape),
        message("Echo:find", TMessageType.CALL, 2**31 - 1, [(1, TType.STRING, "widget")], **shape),
        message("fire", TMessageType.ONEWAY, 3, [(1, TType.STRING, "note")], **shape),
        message("ping", TMessageType.CALL, 0, [], **shape),
    ]


def responses_for(**shape: Any) -> list[bytes]:
    return [
        message("echo", TMessageType.REPLY, 1, [(0, TType.STRUCT, ITEM)], **shape),
        message("find", TMessageType.REPLY, 2**31 - 1, [(1, TType.STRUCT, [(1, TType.STRING, "nope")])], **shape),
        message("ping", TMessageType.REPLY, 0, [], **shape),
        message("gone", TMessageType.EXCEPTION, 9,
                lambda p: write_app_exception(p, "unknown method gone", TApplicationException.UNKNOWN_METHOD),
                **shape),
    ]


def _conformance(transport: str, protocol: str, options: dict[str, str] | None = None, **extra: Any) -> type:
    shape = dict(transport=transport, protocol=protocol, **extra)
    return type(f"Conformance_{transport}_{protocol}", (CodecConformance,), {
        "codec_class": ThriftCodec,
        "request_ids": True,  # every transport carries the seqid (unframed ones just answer in order)
        "options": options if options is not None else {"transport": transport, "protocol": protocol},
        "requests": requests_for(**shape),
        "responses": responses_for(**shape),
        "carries_mutation": transport == "header",
        "garbage_rounds": 200,
    })


TestFramedBinary = _conformance("framed", "binary")
TestFramedCompact = _conformance("framed", "compact")
TestUnframedBinary = _conformance("unframed", "binary")
TestUnframedCompact = _conformance("unframed", "compact")
TestHeaderBinary = _conformance("header", "binary", headers={"x-user": "alice", "version": "v2"})
TestHeaderCompact = _conformance("header", "compact", headers={"x-user": "bob"})
TestHeaderZlib = _conformance("header", "binary", headers={"k": "v"}, zlib=True)
TestFramedLaxBinary = _conformance("framed", "binary", strict=False)
TestUnframedLaxBinary = _conformance("unframed", "binary", strict=False)
TestAutoFramedBinary = _conformance("framed", "binary", options={})
TestAutoUnframedCompact = _conformance("unframed", "compact", options={"transport": "auto"})
TestAutoUnframedLax = _conformance("unframed", "binary", options={}, strict=False)
TestAutoFramedLax = _conformance("framed", "binary", options={}, strict=False)
TestAutoHeaderCompact = _conformance("header", "compact", options={"protocol": "auto"}, headers={"a": "b"})
