"""The properties every codec must have, as plain functions each codec's test module calls.

* round trip: a valid message decodes to what its writer put in, encodes back to
  the same bytes, and a rewritten request id reads back;
* robustness: any bytes at all either decode, wait for more, or raise
  CodecError — never another exception — and whatever decodes can be encoded;
* split invariance: how the bytes are cut into reads never changes what is decoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import settings

from metaproxy.codec import Codec, CodecError, DecodeStatus, Direction
from metaproxy.message import Metadata

#: Fast enough that tests/fuzz stays well under a minute; atheris (make fuzz) goes deeper.
FAST = settings(max_examples=150, deadline=None)
VOLATILE = frozenset({"header_size", "body_size"})


def make(codec_class: type[Codec], options: dict[str, Any], direction: Direction,
         max_message_bytes: int = 4 * 1024 * 1024) -> Codec:
    return codec_class(dict(options), direction, max_message_bytes)


def decode_whole(codec: Codec, frame: bytes) -> Metadata:
    buf = bytearray(frame)
    md = Metadata()
    status = codec.decode(buf, md)
    assert status is DecodeStatus.DONE, f"a whole valid message returned {status.name}: {frame.hex()}"
    assert not buf, f"decode left {len(buf)} of {len(frame)} bytes"
    assert md.frame == frame
    return md


def check_round_trip(codec_class: type[Codec], sample: Any) -> None:
    codec = make(codec_class, sample.options, sample.direction)
    md = decode_whole(codec, sample.frame)
    for key, value in sample.expected.items():
        assert md.get(key) == value, f"{key}: decoded {md.get(key)!r}, the writer put {value!r}"
    out = bytearray()
    make(codec_class, sample.options, sample.direction).encode(md, {}, out)
    assert bytes(out) == sample.frame, "encode without changes must forward the original bytes"
    if codec.multiplexing and "request_id" in md:
        before = {k: v for k, v in md.items() if k not in VOLATILE}
        new_id = (int(md["request_id"]) + 1) % (2**31)
        md["request_id"] = new_id
        out = bytearray()
        make(codec_class, sample.options, sample.direction).encode(md, {}, out)
        again = decode_whole(make(codec_class, sample.options, sample.direction), bytes(out))
        before["request_id"] = new_id
        assert {k: v for k, v in again.items() if k not in VOLATILE} == before


def decode_stream(codec: Codec, chunks: Iterable[bytes], limit: int = 64) -> list[tuple[dict, bytes]]:
    """Feed ``chunks`` one read at a time; decode everything decodable after each read."""
    buf = bytearray()
    out: list[tuple[dict, bytes]] = []
    for chunk in chunks:
        buf += chunk
        while buf and len(out) < limit:
            md = Metadata()
            before = bytes(buf)
            if codec.decode(buf, md) is not DecodeStatus.DONE:
                assert bytes(buf) == before, "WAIT_FOR_DATA must leave the buffer untouched"
                break
            out.append((dict(md), md.frame))
    return out


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    """``data`` split at the given offsets (taken modulo its length, deduplicated)."""
    offsets = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(offsets, offsets[1:], strict=False)]


def check_splits(codec_class: type[Codec], samples: list[Any], points: list[int]) -> None:
    """Several messages back to back, cut anywhere: the same messages come out."""
    direction, options = samples[0].direction, samples[0].options
    data = b"".join(s.frame for s in samples)
    whole = decode_stream(make(codec_class, options, direction), [data])
    assert [frame for _, frame in whole] == [s.frame for s in samples]
    pieces = decode_stream(make(codec_class, options, direction), cut(data, points))
    assert pieces == whole, f"cut at {sorted(points)} decoded differently"
    if len(data) <= 400:  # an unframed walk restarts per read: keep the quadratic case small
        bytewise = decode_stream(make(codec_class, options, direction), [data[i:i + 1] for i in range(len(data))])
        assert bytewise == whole, "one byte per read decoded differently"


def check_arbitrary(codec_class: type[Codec], options: dict[str, Any], data: bytes,
                    max_message_bytes: int = 4 * 1024 * 1024) -> int:
    """Decode ``data`` both ways; only CodecError may escape, and what decodes must encode.

    Returns how many messages decoded (so callers can see the input was exercised).
    """
    decoded = 0
    for direction in Direction:
        codec = make(codec_class, options, direction, max_message_bytes)
        buf = bytearray(data)
        try:
            for _ in range(64):
                md = Metadata()
                if codec.decode(buf, md) is not DecodeStatus.DONE:
                    break
                decoded += 1
                out = bytearray()
                make(codec_class, options, direction, max_message_bytes).encode(md, {}, out)
                assert bytes(out) == md.frame, (
                    f"decoded {bytes(md.frame).hex()} but encode forwarded {bytes(out).hex()}")
        except CodecError:
            pass
    return decoded


def mutate(frame: bytes, edits: list[tuple[int, int]], truncate: int | None) -> bytes:
    """A valid frame with some bytes overwritten and maybe cut short: the likeliest hostile input."""
    data = bytearray(frame)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    if truncate is not None and data:
        del data[truncate % len(data):]
    return bytes(data)


def same_side(samples: list[Any]) -> list[Any]:
    """The samples one codec instance can read in a row: the first one's direction, with its options."""
    first = samples[0]
    return [type(s)(s.frame, s.direction, s.expected, first.options) for s in samples
            if s.direction is first.direction]
