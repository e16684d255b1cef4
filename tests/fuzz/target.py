"""The one fuzz property all codecs share: only CodecError may escape, and the result never depends on reads.

Each input's first byte picks the decoding side, the codec options (Thrift:
transport x protocol) and the message size limit; the second byte picks a
split point. The rest is the bytes. For every input:

* decoding raises nothing but CodecError;
* every message that decodes re-encodes to its own bytes, and a decoded
  request can be answered with ``on_error`` without an exception;
* cutting the bytes in two reads gives the same messages as one read.

atheris drives it (atheris_targets/, ``make fuzz``); test_corpus.py replays
every committed input (seeds and past crashes) in ``make test``.
"""

from __future__ import annotations

from typing import Any

from metaproxy.codec import Codec, CodecError, DecodeStatus, Direction
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError
from metaproxy_codecs.dubbo import DubboCodec
from metaproxy_codecs.redis import RedisCodec
from metaproxy_codecs.thrift import ThriftCodec
from metaproxy_codecs.tinyrpc import TinyRpcCodec

CODECS: dict[str, type[Codec]] = {"tinyrpc": TinyRpcCodec, "thrift": ThriftCodec, "dubbo": DubboCodec,
                                  "redis": RedisCodec}
_THRIFT_OPTIONS = [{"transport": t, "protocol": p} for t in ("auto", "framed", "unframed", "header")
                   for p in ("auto", "binary", "compact")]
_REQUESTS = (MessageType.REQUEST, MessageType.ONEWAY)


def setup_of(codec: str, selector: int) -> tuple[Direction, dict[str, Any], int]:
    """Direction, options and max_message_bytes chosen by one input byte."""
    direction = Direction.REQUEST if selector & 1 else Direction.RESPONSE
    max_bytes = 64 if selector & 2 else 4 * 1024 * 1024
    options = _THRIFT_OPTIONS[(selector >> 2) % len(_THRIFT_OPTIONS)] if codec == "thrift" else {}
    return direction, options, max_bytes


def decode_all(codec_class: type[Codec], setup: tuple[Direction, dict[str, Any], int],
               chunks: list[bytes]) -> tuple[list[tuple[dict, bytes]], str | None]:
    """Messages decoded from ``chunks`` fed as successive reads, and the CodecError text (if any)."""
    direction, options, max_bytes = setup
    codec = codec_class(dict(options), direction, max_bytes)
    buf = bytearray()
    out: list[tuple[dict, bytes]] = []
    try:
        for chunk in chunks:
            buf += chunk
            while buf and len(out) < 32:
                md = Metadata()
                before = bytes(buf)
                if codec.decode(buf, md) is not DecodeStatus.DONE:
                    if bytes(buf) != before:
                        raise AssertionError("WAIT_FOR_DATA changed the buffer")
                    break
                out.append((dict(md), md.frame))
                check_message(codec_class, setup, md)
    except CodecError:
        return out, "error"
    return out, None


def check_message(codec_class: type[Codec], setup: tuple[Direction, dict[str, Any], int], md: Metadata) -> None:
    direction, options, max_bytes = setup
    encoded = bytearray()
    codec_class(dict(options), direction, max_bytes).encode(md, {}, encoded)
    if bytes(encoded) != md.frame:
        raise AssertionError(f"decoded {md.frame.hex()} but encode wrote {bytes(encoded).hex()}")
    if direction is Direction.REQUEST and md.get("message_type") in _REQUESTS:
        reply = bytearray()
        codec_class(dict(options), direction, max_bytes).on_error(md, ProxyError(ErrorType.TIMEOUT, "fuzz"), reply)


def one_input(codec: str, data: bytes) -> None:
    """The property check for one fuzz input (also called by tests/fuzz/test_corpus.py)."""
    if len(data) < 2:
        return
    codec_class = CODECS[codec]
    setup = setup_of(codec, data[0])
    body = data[2:]
    point = data[1] % (len(body) + 1)
    whole, whole_error = decode_all(codec_class, setup, [body])
    split, split_error = decode_all(codec_class, setup, [body[:point], body[point:]])
    if whole_error is None and split_error is None and whole != split:
        raise AssertionError(f"split at {point} decoded {len(split)} messages, one read {len(whole)}")
    if (whole_error is None) != (split_error is None):
        raise AssertionError(f"split at {point}: CodecError in one run only (one read: {whole_error}, "
                             f"two reads: {split_error})")
    # When one read fails, the split run may fail at the same message or legitimately wait: compare prefixes.
    common = min(len(whole), len(split))
    if whole[:common] != split[:common]:
        raise AssertionError(f"split at {point} decoded different messages")

