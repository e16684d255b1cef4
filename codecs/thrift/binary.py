"""TBinaryProtocol, strict (versioned) and lax (old style) message headers, as a byte walker.

Only what routing needs is read: the message header, the first field id of a
reply's result struct, and a TApplicationException's message and type. The
rest is skipped (never built into objects) to find where a message ends on an
unframed stream.
"""

from __future__ import annotations

import struct

from metaproxy.codec import CodecError
from metaproxy_codecs.thrift.wire import MAX_DEPTH, MessageHead, Short, check_mtype, decode_name

NAME = "binary"
VERSION_1 = 0x80010000
VERSION_MASK = 0xFFFF0000

T_STOP, T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64 = 0, 2, 3, 4, 6, 8, 10
T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST, T_UUID = 11, 12, 13, 14, 15, 16

_FIXED = {T_BOOL: 1, T_BYTE: 1, T_DOUBLE: 8, T_I16: 2, T_I32: 4, T_I64: 8, T_UUID: 16}
#: Smallest encoding of a value of each variable-size type (to bound garbage counts).
_MIN = {T_STRING: 4, T_STRUCT: 1, T_MAP: 6, T_SET: 5, T_LIST: 5}

_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")
_HEAD = struct.Struct(">iI")  # version word, name length


def _need(pos: int, size: int, end: int) -> int:
    if pos + size > end:
        raise Short(pos + size)
    return pos + size


def _i32(buf: bytearray, pos: int, end: int) -> int:
    _need(pos, 4, end)
    return _I32.unpack_from(buf, pos)[0]


def _string(buf: bytearray, pos: int, end: int) -> tuple[bytes, int]:
    size = _i32(buf, pos, end)
    if size < 0:
        raise CodecError(f"negative string length {size}", pos)
    stop = _need(pos + 4, size, end)
    return bytes(buf[pos + 4:stop]), stop


def read_head(buf: bytearray, pos: int, end: int) -> MessageHead:
    """The message header at ``pos``: strict (0x8001 version word) or lax (name first)."""
    if pos + 8 <= end:  # the common case, a whole strict header, in two unpacks
        word, size = _HEAD.unpack_from(buf, pos)
        seqid_pos = pos + 8 + size
        if word < 0 and (word & VERSION_MASK) == VERSION_1 and seqid_pos + 4 <= end:
            name = decode_name(buf[pos + 8:seqid_pos], pos + 8)
            seqid = _I32.unpack_from(buf, seqid_pos)[0]
            return MessageHead(name, check_mtype(word & 0xFF, pos + 3), seqid, seqid_pos, seqid_pos + 4,
                               seqid_pos + 4, True)
    word = _i32(buf, pos, end)
    if word < 0:
        if (word & VERSION_MASK) != VERSION_1:
            raise CodecError(f"bad binary protocol version word {word & 0xFFFFFFFF:#010x}", pos)
        mtype = check_mtype(word & 0xFF, pos + 3)
        raw, p = _string(buf, pos + 4, end)
        strict = True
    else:
        raw, p = _string(buf, pos, end)
        _need(p, 1, end)
        mtype = check_mtype(buf[p], p)
        p += 1
        strict = False
    seqid = _i32(buf, p, end)
    return MessageHead(decode_name(raw, pos), mtype, seqid, p, p + 4, p + 4, strict)


def skip(buf: bytearray, pos: int, end: int, ttype: int, depth: int = 0) -> int:
    """Offset just after one value of type ``ttype`` at ``pos`` (containers and structs nested)."""
    width = _FIXED.get(ttype)
    if width is not None:
        return _need(pos, width, end)
    if ttype == T_STRING:
        return _string_end(buf, pos, end)
    if depth >= MAX_DEPTH:
        raise CodecError(f"values nested deeper than {MAX_DEPTH} levels", pos)
    if ttype == T_STRUCT:
        return skip_struct(buf, pos, end, depth + 1)
    if ttype == T_MAP:
        _need(pos, 6, end)
        ktype, vtype = buf[pos], buf[pos + 1]
        count = _count(buf, pos + 2, end)
        pos += 6
        kw, vw = _elem_width(ktype, pos), _elem_width(vtype, pos)
        if kw and vw:
            return _need(pos, count * (kw + vw), end)
        _need(pos, count * ((kw or _MIN[ktype]) + (vw or _MIN[vtype])), end)
        for _ in range(count):
            pos = skip(buf, pos, end, ktype, depth + 1)
            pos = skip(buf, pos, end, vtype, depth + 1)
        return pos
    if ttype in (T_SET, T_LIST):
        _need(pos, 5, end)
        etype = buf[pos]
        count = _count(buf, pos + 1, end)
        pos += 5
        width = _elem_width(etype, pos)
        if width:
            return _need(pos, count * width, end)
        _need(pos, count * _MIN[etype], end)
        for _ in range(count):
            pos = skip(buf, pos, end, etype, depth + 1)
        return pos
    raise CodecError(f"unknown binary protocol type id {ttype}", pos)


def skip_struct(buf: bytearray, pos: int, end: int, depth: int = 0) -> int:
    """Offset just after the struct at ``pos`` (its field-stop byte included)."""
    while True:
        _need(pos, 1, end)
        ttype = buf[pos]
        if ttype == T_STOP:
            return pos + 1
        pos = skip(buf, _need(pos, 3, end), end, ttype, depth)


def first_field(buf: bytearray, pos: int, end: int) -> int | None:
    """Id of the first field of the struct at ``pos`` (None for an empty struct)."""
    _need(pos, 1, end)
    if buf[pos] == T_STOP:
        return None
    _need(pos, 3, end)
    return _I16.unpack_from(buf, pos + 1)[0]


def read_app_exception(buf: bytearray, pos: int, end: int) -> tuple[str, int]:
    """(message, type) of the TApplicationException struct at ``pos``."""
    message, code = "", 0
    while True:
        _need(pos, 1, end)
        ttype = buf[pos]
        if ttype == T_STOP:
            return message, code
        _need(pos, 3, end)
        fid = _I16.unpack_from(buf, pos + 1)[0]
        pos += 3
        if fid == 1 and ttype == T_STRING:
            raw, pos = _string(buf, pos, end)
            message = raw.decode("utf-8", "replace")
        elif fid == 2 and ttype == T_I32:
            code = _i32(buf, pos, end)
            pos += 4
        else:
            pos = skip(buf, pos, end, ttype, 1)


def seqid_bytes(seqid: int) -> bytes:
    return _U32.pack(seqid & 0xFFFFFFFF)


def write_head(out: bytearray, name: str, mtype: int, seqid: int, strict: bool = True) -> None:
    raw = name.encode("utf-8")
    if strict:
        out += _U32.pack(VERSION_1 | mtype)
        out += _I32.pack(len(raw)) + raw
    else:
        out += _I32.pack(len(raw)) + raw
        out.append(mtype)
    out += seqid_bytes(seqid)


def write_app_exception(out: bytearray, message: str, code: int) -> None:
    raw = message.encode("utf-8")
    out += bytes((T_STRING,)) + _I16.pack(1) + _I32.pack(len(raw)) + raw
    out += bytes((T_I32,)) + _I16.pack(2) + _I32.pack(code)
    out.append(T_STOP)


def write_empty_struct(out: bytearray) -> None:
    out.append(T_STOP)


def _string_end(buf: bytearray, pos: int, end: int) -> int:
    size = _i32(buf, pos, end)
    if size < 0:
        raise CodecError(f"negative string length {size}", pos)
    return _need(pos + 4, size, end)


def _count(buf: bytearray, pos: int, end: int) -> int:
    count = _I32.unpack_from(buf, pos)[0]
    if count < 0:
        raise CodecError(f"negative container size {count}", pos)
    return count


def _elem_width(ttype: int, pos: int) -> int:
    """Fixed width of a container element type, 0 when variable; CodecError when unknown."""
    width = _FIXED.get(ttype)
    if width is not None:
        return width
    if ttype not in _MIN:
        raise CodecError(f"unknown binary protocol element type id {ttype}", pos)
    return 0
