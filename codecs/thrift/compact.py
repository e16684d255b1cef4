"""TCompactProtocol as a byte walker: varints, zigzag, field-id deltas, bools in the field header.

Same surface as binary.py (read_head, skip_struct, first_field,
read_app_exception, writers) so the codec does not care which one it has.
"""

from __future__ import annotations

from metaproxy.codec import CodecError
from metaproxy_codecs.thrift.wire import MAX_DEPTH, MessageHead, Short, check_mtype, decode_name

NAME = "compact"
PROTOCOL_ID = 0x82
VERSION = 1
VERSION_MASK = 0x1F
TYPE_SHIFT = 5

C_STOP, C_TRUE, C_FALSE, C_BYTE, C_I16, C_I32, C_I64 = 0, 1, 2, 3, 4, 5, 6
C_DOUBLE, C_BINARY, C_LIST, C_SET, C_MAP, C_STRUCT, C_UUID = 7, 8, 9, 10, 11, 12, 13

_VARINT_TYPES = frozenset((C_I16, C_I32, C_I64))
#: Fixed widths of container elements (a bool element is one byte, unlike a bool field).
_ELEM_FIXED = {C_TRUE: 1, C_FALSE: 1, C_BYTE: 1, C_DOUBLE: 8, C_UUID: 16}
_MIN_WIDTH = {C_DOUBLE: 8, C_UUID: 16}
_KNOWN = frozenset(range(C_TRUE, C_UUID + 1))


def _need(pos: int, size: int, end: int) -> int:
    if pos + size > end:
        raise Short(pos + size)
    return pos + size


def read_varint(buf: bytearray, pos: int, end: int) -> tuple[int, int]:
    """(unsigned value, next offset); at most 10 bytes."""
    result = shift = 0
    start = pos
    while True:
        _need(pos, 1, end)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise CodecError("varint longer than 10 bytes", start)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        if value < 0x80:
            out.append(value)
            return bytes(out)
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def zigzag32(value: int) -> int:
    return ((value << 1) ^ (value >> 31)) & 0xFFFFFFFF


def unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def _binary(buf: bytearray, pos: int, end: int) -> tuple[bytes, int]:
    size, p = read_varint(buf, pos, end)
    stop = _need(p, size, end)
    return bytes(buf[p:stop]), stop


def read_head(buf: bytearray, pos: int, end: int) -> MessageHead:
    _need(pos, 2, end)
    if buf[pos] != PROTOCOL_ID:
        raise CodecError(f"compact protocol id {buf[pos]:#04x}, expected 0x82", pos)
    if buf[pos + 1] & VERSION_MASK != VERSION:
        raise CodecError(f"compact protocol version {buf[pos + 1] & VERSION_MASK}, expected 1", pos + 1)
    mtype = check_mtype(buf[pos + 1] >> TYPE_SHIFT, pos + 1)
    seqid, p = read_varint(buf, pos + 2, end)
    if seqid > 0xFFFFFFFF:
        raise CodecError("seqid varint does not fit 32 bits", pos + 2)
    if seqid & 0x80000000:
        seqid -= 1 << 32
    raw, body = _binary(buf, p, end)
    return MessageHead(decode_name(raw, p), mtype, seqid, pos + 2, p, body, True)


def skip(buf: bytearray, pos: int, end: int, ctype: int, depth: int = 0, element: bool = False) -> int:
    """Offset after one value of compact type ``ctype``; ``element``: inside a list/set/map."""
    if ctype in (C_TRUE, C_FALSE):
        return _need(pos, 1, end) if element else pos
    if ctype == C_BYTE:
        return _need(pos, 1, end)
    if ctype in _VARINT_TYPES:
        return read_varint(buf, pos, end)[1]
    if ctype == C_DOUBLE:
        return _need(pos, 8, end)
    if ctype == C_UUID:
        return _need(pos, 16, end)
    if ctype == C_BINARY:
        size, p = read_varint(buf, pos, end)
        return _need(p, size, end)
    if depth >= MAX_DEPTH:
        raise CodecError(f"values nested deeper than {MAX_DEPTH} levels", pos)
    if ctype == C_STRUCT:
        return skip_struct(buf, pos, end, depth + 1)
    if ctype in (C_LIST, C_SET):
        _need(pos, 1, end)
        head = buf[pos]
        count, etype = head >> 4, head & 0x0F
        pos += 1
        if count == 15:
            count, pos = read_varint(buf, pos, end)
        return _skip_elements(buf, pos, end, count, (etype,), depth)
    if ctype == C_MAP:
        count, pos = read_varint(buf, pos, end)
        if count == 0:
            return pos
        _need(pos, 1, end)
        kv = buf[pos]
        return _skip_elements(buf, pos + 1, end, count, (kv >> 4, kv & 0x0F), depth)
    raise CodecError(f"unknown compact protocol type id {ctype}", pos)


def _skip_elements(buf: bytearray, pos: int, end: int, count: int, types: tuple[int, ...], depth: int) -> int:
    for ctype in types:
        if ctype not in _KNOWN:
            raise CodecError(f"unknown compact protocol element type id {ctype}", pos)
    widths = [_ELEM_FIXED.get(t, 0) for t in types]
    if all(widths):
        return _need(pos, count * sum(widths), end)
    _need(pos, count * sum(_MIN_WIDTH.get(t, 1) for t in types), end)
    for _ in range(count):
        for ctype in types:
            pos = skip(buf, pos, end, ctype, depth + 1, element=True)
    return pos


def _field_head(buf: bytearray, pos: int, end: int, last: int) -> tuple[int, int, int]:
    """(type, field id, offset of the value) of the field header at ``pos``; type 0 is stop."""
    _need(pos, 1, end)
    byte = buf[pos]
    ctype, delta = byte & 0x0F, byte >> 4
    if ctype == C_STOP:
        return C_STOP, 0, pos + 1
    if delta:
        return ctype, last + delta, pos + 1
    raw, p = read_varint(buf, pos + 1, end)
    return ctype, unzigzag(raw), p


def skip_struct(buf: bytearray, pos: int, end: int, depth: int = 0) -> int:
    last = 0
    while True:
        ctype, last, pos = _field_head(buf, pos, end, last)
        if ctype == C_STOP:
            return pos
        pos = skip(buf, pos, end, ctype, depth)


def first_field(buf: bytearray, pos: int, end: int) -> int | None:
    ctype, fid, _ = _field_head(buf, pos, end, 0)
    return None if ctype == C_STOP else fid


def read_app_exception(buf: bytearray, pos: int, end: int) -> tuple[str, int]:
    message, code, last = "", 0, 0
    while True:
        ctype, last, pos = _field_head(buf, pos, end, last)
        if ctype == C_STOP:
            return message, code
        if last == 1 and ctype == C_BINARY:
            raw, pos = _binary(buf, pos, end)
            message = raw.decode("utf-8", "replace")
        elif last == 2 and ctype == C_I32:
            raw_code, pos = read_varint(buf, pos, end)
            code = unzigzag(raw_code)
        else:
            pos = skip(buf, pos, end, ctype, 1)


def seqid_bytes(seqid: int) -> bytes:
    return varint(seqid & 0xFFFFFFFF)


def write_head(out: bytearray, name: str, mtype: int, seqid: int, strict: bool = True) -> None:
    raw = name.encode("utf-8")
    out.append(PROTOCOL_ID)
    out.append((mtype << TYPE_SHIFT) | VERSION)
    out += seqid_bytes(seqid)
    out += varint(len(raw)) + raw


def write_app_exception(out: bytearray, message: str, code: int) -> None:
    raw = message.encode("utf-8")
    out.append((1 << 4) | C_BINARY)
    out += varint(len(raw)) + raw
    out.append((1 << 4) | C_I32)
    out += varint(zigzag32(code))
    out.append(C_STOP)


def write_empty_struct(out: bytearray) -> None:
    out.append(C_STOP)

