"""THeader transport frames: parse the header section, rebuild it with new key/value headers.

Layout (all big-endian; see Apache Thrift's doc/specs/HeaderFormat.md)::

    u32 length | u16 0x0FFF | u16 flags | u32 header seq id | u16 header size / 4
    header: varint protocol id, varint transform count, varint transform ids...,
            info blocks (varint type; type 1 and 2 are key/value maps:
            varint count, then varint-length key and value strings), zero padding
    payload: the protocol message (zlib-compressed when transform 1 is listed)

Info blocks of unknown type end the parse (as Apache's reader does); their
bytes are kept as they are when the header is rebuilt.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

from metaproxy.codec import CodecError
from metaproxy_codecs.thrift.compact import read_varint, varint
from metaproxy_codecs.thrift.wire import Short

MAGIC = 0x0FFF
FIXED_SIZE = 14  # length, magic, flags, seq id, header words
PROTO_BINARY, PROTO_COMPACT = 0x00, 0x02
TRANSFORM_ZLIB = 0x01
INFO_KEYVALUE, INFO_PKEYVALUE = 0x01, 0x02

_FIXED = struct.Struct(">IHHiH")


class HeaderFrame:
    """The parsed header section of one THeader frame (offsets relative to the frame start)."""

    __slots__ = (
        "blocks",
        "flags",
        "headers",
        "info_start",
        "parsed_end",
        "payload_start",
        "proto_id",
        "seq_id",
        "transforms",
    )

    def __init__(self) -> None:
        self.flags = 0
        self.seq_id = 0
        self.proto_id = PROTO_BINARY
        self.transforms: list[int] = []
        self.headers: dict[str, str] = {}
        self.info_start = 0  # first info block
        self.blocks: list[tuple[int, int, int]] = []  # (type, start, end) of every known info block
        self.parsed_end = 0  # where the known blocks stop (padding or an unknown block follows)
        self.payload_start = 0


def is_header(buf: bytearray, pos: int) -> bool:
    """Whether the frame whose length word is at ``pos`` carries the THeader magic."""
    return buf[pos + 4] == 0x0F and buf[pos + 5] == 0xFF


def parse(buf: bytearray, frame_end: int) -> HeaderFrame:
    """Parse the THeader frame at the front of ``buf`` (complete up to ``frame_end``)."""
    if frame_end < FIXED_SIZE:
        raise CodecError(f"THeader frame of {frame_end} bytes is shorter than its fixed part", 0)
    _, magic, flags, seq_id, words = _FIXED.unpack_from(buf, 0)
    if magic != MAGIC:
        raise CodecError(f"THeader magic {magic:#06x}, expected 0x0fff", 4)
    info = HeaderFrame()
    info.flags, info.seq_id = flags, seq_id
    info.payload_start = end = FIXED_SIZE + words * 4
    if end > frame_end:
        raise CodecError(f"THeader header of {words * 4} bytes is larger than its frame", 12)
    try:
        _parse_section(buf, info, end)
    except Short:
        raise CodecError("THeader header section is truncated", FIXED_SIZE) from None
    return info


def _parse_section(buf: bytearray, info: HeaderFrame, end: int) -> None:
    info.proto_id, pos = read_varint(buf, FIXED_SIZE, end)
    if info.proto_id not in (PROTO_BINARY, PROTO_COMPACT):
        raise CodecError(f"THeader protocol id {info.proto_id} is neither binary (0) nor compact (2)", FIXED_SIZE)
    count, pos = read_varint(buf, pos, end)
    for _ in range(count):
        transform, pos = read_varint(buf, pos, end)
        if transform != TRANSFORM_ZLIB:
            raise CodecError(f"THeader transform {transform} is not supported (only zlib, 1)", pos)
        info.transforms.append(transform)
    info.info_start = info.parsed_end = pos
    while pos < end:
        block_type, body = read_varint(buf, pos, end)
        if block_type not in (INFO_KEYVALUE, INFO_PKEYVALUE):
            break  # padding (0) or a block we cannot size: the rest is kept as it is
        count, p = read_varint(buf, body, end)
        for _ in range(count):
            key, p = _string(buf, p, end)
            value, p = _string(buf, p, end)
            info.headers[key] = value
        info.blocks.append((block_type, pos, p))
        pos = info.parsed_end = p


def _string(buf: bytearray, pos: int, end: int) -> tuple[str, int]:
    size, pos = read_varint(buf, pos, end)
    if pos + size > end:
        raise Short(pos + size)
    return bytes(buf[pos:pos + size]).decode("utf-8", "replace"), pos + size


def payload(frame: bytes | bytearray, info: HeaderFrame, frame_end: int, max_bytes: int) -> bytes | None:
    """The plain payload when transforms are applied (None when the payload is the frame's own bytes)."""
    if not info.transforms:
        return None
    data = bytes(frame[info.payload_start:frame_end])
    for _ in info.transforms:  # only zlib exists; applied once per listing, undone in reverse
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(data, max_bytes)
        except zlib.error as exc:
            raise CodecError(f"THeader zlib payload does not inflate: {exc}", info.payload_start) from None
        if inflater.unconsumed_tail:
            raise CodecError(f"THeader payload inflates past max_message_bytes {max_bytes}", info.payload_start)
        if not inflater.eof:
            raise CodecError("THeader zlib payload is truncated", info.payload_start)
    return data


def compress(data: bytes, info: HeaderFrame) -> bytes:
    for _ in info.transforms:
        data = zlib.compress(data)
    return data


def rebuild_section(frame: bytes, info: HeaderFrame, mutation: Mapping[str, str]) -> bytes:
    """The header section (unpadded) with ``mutation`` merged into the key/value headers.

    Persistent (type 2) blocks are copied as they are, then one type-1 block with
    the old type-1 headers updated by the mutation (later blocks win on read),
    then whatever followed the known blocks.
    """
    out = bytearray(frame[FIXED_SIZE:info.info_start])
    merged: dict[str, str] = {}
    for block_type, start, end in info.blocks:
        if block_type == INFO_PKEYVALUE:
            out += frame[start:end]
        else:
            merged.update(_block_headers(frame, start, end))
    merged.update(mutation)
    out += varint(INFO_KEYVALUE) + varint(len(merged))
    for key, value in merged.items():
        for text in (key, value):
            raw = text.encode("utf-8")
            out += varint(len(raw)) + raw
    out += frame[info.parsed_end:info.payload_start].rstrip(b"\x00")
    return bytes(out)


def _block_headers(frame: bytes, start: int, end: int) -> dict[str, str]:
    buf = bytearray(frame[:end])
    _, pos = read_varint(buf, start, end)
    count, pos = read_varint(buf, pos, end)
    headers = {}
    for _ in range(count):
        key, pos = _string(buf, pos, end)
        headers[key], pos = _string(buf, pos, end)
    return headers


def build(out: bytearray, flags: int, seq_id: int, section: bytes, body: bytes | bytearray | memoryview) -> None:
    """Append a THeader frame: ``section`` is padded to a multiple of 4 here."""
    pad = (-len(section)) % 4
    words = (len(section) + pad) // 4
    if words > 0xFFFF:
        raise ValueError("THeader header section exceeds 262140 bytes")
    out += _FIXED.pack(10 + len(section) + pad + len(body), MAGIC, flags, seq_id, words)
    out += section
    out += b"\x00" * pad
    out += body


def minimal_section(proto_id: int) -> bytes:
    """Protocol id and no transforms, no headers: what a local reply carries."""
    return varint(proto_id) + varint(0)
