"""tinyrpc: the tutorial codec, and the model every other codec follows.

Wire format (all integers big-endian), one frame per message::

    u32  length       bytes after this field
    u8   version      1
    u8   type         1 request, 2 oneway, 3 response, 4 error, 5 heartbeat, 6 heartbeat reply
    u8   status       responses: 0 ok, 1 application error; errors: an ErrorType code
    u8   reserved     0
    u64  request_id
    str  service      (u16 length + UTF-8)
    str  method
    u16  header count, then per header: str key, str value
    ...  body         opaque bytes up to the end of the frame

It is read by walking the header part only: the body is never looked at, and
on encode the original frame is forwarded with the request id patched in,
or with only the header section rebuilt when a Mutation changes it.
docs/writing-a-codec.md walks through this file.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from mypy_extensions import mypyc_attr

from metaproxy.codec import DONE, WAIT_FOR_DATA, Codec, CodecError, DecodeStatus, take
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus

VERSION = 1
_FIXED = struct.Struct(">IBBBBQ")  # length, version, type, status, reserved, request_id
FIXED_SIZE = _FIXED.size  # 16
_ID_OFFSET = 8
#: The shortest frame's length field: the fixed header, then service, method and header count
#: lengths (two bytes each).
_MIN_LENGTH = FIXED_SIZE - 4 + 6
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")

TYPE_REQUEST, TYPE_ONEWAY, TYPE_RESPONSE, TYPE_ERROR, TYPE_HEARTBEAT, TYPE_HEARTBEAT_REPLY = range(1, 7)
_TYPES = {
    TYPE_REQUEST: MessageType.REQUEST,
    TYPE_ONEWAY: MessageType.ONEWAY,
    TYPE_RESPONSE: MessageType.RESPONSE,
    TYPE_ERROR: MessageType.ERROR,
    TYPE_HEARTBEAT: MessageType.HEARTBEAT,
    TYPE_HEARTBEAT_REPLY: MessageType.HEARTBEAT,
}
#: Error status codes carried by TYPE_ERROR frames, one per ErrorType.
ERROR_CODES = {kind: code for code, kind in enumerate(ErrorType, start=10)}
ERROR_KINDS = {code: kind for kind, code in ERROR_CODES.items()}
# Read per message: module globals, not enum class attributes (those are slow to read on 3.11).
_SUCCESS = ResponseStatus.SUCCESS
_ERROR = ResponseStatus.ERROR
_RESERVED_KEYS = frozenset(("request_id", "message_type", "response_status", "service", "method",
                            "header_size", "body_size", "status"))


@mypyc_attr(native_class=False)  # a tuple subclass: compiled, it stays a Python class
class _State(tuple):
    """Where the header section lies in the frame, so encode can patch or rebuild it.

    ``_State((headers_start, body_start, type))``: a tuple with named fields,
    made without a Python-level constructor (one is made per message).
    """

    __slots__ = ()
    headers_start = property(itemgetter(0))
    body_start = property(itemgetter(1))
    type = property(itemgetter(2))


#: The codec state of a reply decoded by ``decode_passthrough``: its header offsets unknown.
_PASSED = _State((-1, -1, TYPE_RESPONSE))
_RESPONSE = MessageType.RESPONSE


def _read_str(buf: bytes | bytearray, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise CodecError("string length runs past the end of the frame", pos)
    size = buf[pos] << 8 | buf[pos + 1]
    pos += 2
    stop = pos + size
    if stop > end:
        raise CodecError(f"string of {size} bytes runs past the end of the frame", pos)
    try:
        return buf[pos:stop].decode(), stop  # UTF-8
    except UnicodeDecodeError:
        raise CodecError("string is not valid UTF-8", pos) from None


def _write_str(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("tinyrpc strings are at most 65535 bytes")
    out += _U16.pack(len(data))
    out += data


def _write_headers(out: bytearray, headers: Mapping[str, str]) -> None:
    out += _U16.pack(len(headers))
    for key, value in headers.items():
        _write_str(out, key)
        _write_str(out, value)


class TinyRpcCodec(Codec):
    name = "tinyrpc"
    multiplexing = True

    def decode(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        size = len(buffer)
        if size < FIXED_SIZE:
            if size >= 4:  # a bad length fails now, not once more bytes come
                self._check_length(int.from_bytes(buffer[:4], "big"))
            return WAIT_FOR_DATA
        length, version, type_, status, _, request_id = _FIXED.unpack_from(buffer)
        end = length + 4
        if end > self.max_message_bytes or length < _MIN_LENGTH:
            self._check_length(length)
        if size < end:
            return WAIT_FOR_DATA
        if version != VERSION:
            raise CodecError(f"unsupported version {version}", 4)
        message_type = _TYPES.get(type_)
        if message_type is None:
            raise CodecError(f"unknown message type {type_}", 5)
        # Parse the frame's own bytes (slicing bytes is cheaper than slicing the bytearray).
        # Service and method are read inline: every message has them, and this runs twice
        # per proxied request. _MIN_LENGTH guarantees their two length fields are there.
        frame = take(buffer, end)
        method_at = FIXED_SIZE + 2 + (frame[FIXED_SIZE] << 8 | frame[FIXED_SIZE + 1])
        if method_at + 2 > end:
            raise CodecError("service runs past the end of the frame", FIXED_SIZE)
        pos = method_at + 2 + (frame[method_at] << 8 | frame[method_at + 1])
        if pos + 2 > end:
            raise CodecError("method runs past the end of the frame", method_at)
        try:
            metadata["service"] = frame[FIXED_SIZE + 2:method_at].decode()
            metadata["method"] = frame[method_at + 2:pos].decode()
        except UnicodeDecodeError:
            raise CodecError("service or method is not valid UTF-8", FIXED_SIZE) from None
        metadata["request_id"] = request_id
        metadata["message_type"] = message_type
        headers_start = pos
        count = frame[pos] << 8 | frame[pos + 1]
        pos += 2
        for _ in range(count):
            key, pos = _read_str(frame, pos, end)
            value, pos = _read_str(frame, pos, end)
            if key not in _RESERVED_KEYS:
                metadata[key] = value
        if type_ == TYPE_RESPONSE:
            metadata["response_status"] = _SUCCESS if status == 0 else _ERROR
        elif type_ == TYPE_ERROR:
            metadata["response_status"] = _ERROR
            kind = ERROR_KINDS.get(status)
            if kind is not None:
                metadata["error_kind"] = kind.value
        metadata["header_size"] = pos
        metadata["body_size"] = end - pos
        metadata.codec_state = _State((headers_start, pos, type_))
        metadata.frame = frame
        return DONE

    def decode_passthrough(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        """A reply is framed and matched, not read (see ``Codec.decode_passthrough``).

        Only the fixed header is looked at; every other message, and any fixed
        header ``decode`` would refuse, goes to ``decode``. The header section's
        offsets are left unknown (``_PASSED``): ``encode`` reads them if a
        mutation needs them.
        """
        if len(buffer) < FIXED_SIZE or buffer[5] != TYPE_RESPONSE:
            return self.decode(buffer, metadata)
        length, version, _, status, _, request_id = _FIXED.unpack_from(buffer)
        end = length + 4
        if end > self.max_message_bytes or length < _MIN_LENGTH or version != VERSION:
            return self.decode(buffer, metadata)  # which raises what is wrong
        if len(buffer) < end:
            return WAIT_FOR_DATA
        metadata.frame = take(buffer, end)
        metadata["request_id"] = request_id
        metadata["message_type"] = _RESPONSE
        metadata["response_status"] = _SUCCESS if status == 0 else _ERROR
        metadata.codec_state = _PASSED
        return DONE

    def encode(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray) -> None:
        state: _State | None = metadata.codec_state
        frame = metadata.frame
        if state is None or not frame:
            self._encode_fresh(metadata, mutation, buffer)
            return
        request_id = metadata["request_id"]
        if not mutation:
            start = len(buffer)
            buffer += frame
            _U64.pack_into(buffer, start + _ID_OFFSET, request_id)
            return
        if state is _PASSED:  # the header section was not read: read it now
            state = self.decoded_state(frame)
        # Rebuild only the header section: old headers with the mutation applied.
        headers = self._headers_of(frame, state)
        headers.update(mutation)
        section = bytearray()
        _write_headers(section, headers)
        body = memoryview(frame)[state.body_start:]
        length = state.headers_start - 4 + len(section) + len(body)
        start = len(buffer)
        buffer += frame[:state.headers_start]
        struct.pack_into(">IQ", buffer, start, length, 0)
        struct.pack_into(">BBBB", buffer, start + 4, *frame[4:8])
        _U64.pack_into(buffer, start + _ID_OFFSET, request_id)
        buffer += section
        buffer += body

    def on_error(self, metadata: Metadata, error: ProxyError, buffer: bytearray) -> None:
        reply = Metadata(
            request_id=metadata.get("request_id", 0),
            message_type=MessageType.ERROR,
            service=metadata.get("service", ""),
            method=metadata.get("method", ""),
        )
        reply["error_kind"] = error.kind.value
        self._encode_fresh(reply, {}, buffer, body=error.message.encode("utf-8"),
                           status=ERROR_CODES[error.kind])

    def heartbeat_reply(self, metadata: Metadata, buffer: bytearray) -> None:
        state = metadata.codec_state
        if state is not None and state.type == TYPE_HEARTBEAT_REPLY:
            return  # a reply is never answered (no ping-pong)
        reply = Metadata(request_id=metadata["request_id"], message_type=MessageType.HEARTBEAT)
        self._encode_fresh(reply, {}, buffer, type_=TYPE_HEARTBEAT_REPLY)

    def make_heartbeat(self, request_id: int, buffer: bytearray) -> bool:
        self._encode_fresh(Metadata(request_id=request_id), {}, buffer, type_=TYPE_HEARTBEAT)
        return True

    def make_request(self, request_id: int, buffer: bytearray) -> bool:
        md = Metadata(request_id=request_id, message_type=MessageType.REQUEST,
                      service="demo", method="ping")
        self._encode_fresh(md, {}, buffer)
        return True

    # -- helpers -------------------------------------------------------------
    def _check_length(self, length: int) -> None:
        self.check_size(length + 4)
        if length < _MIN_LENGTH:
            raise CodecError(f"frame length {length} is shorter than the fixed header", 0)

    @staticmethod
    def _headers_of(frame: bytes, state: _State) -> dict[str, str]:
        buf = bytearray(frame[:state.body_start])
        pos = state.headers_start
        (count,) = _U16.unpack_from(buf, pos)
        pos += 2
        headers = {}
        for _ in range(count):
            key, pos = _read_str(buf, pos, len(buf))
            value, pos = _read_str(buf, pos, len(buf))
            headers[key] = value
        return headers

    def _encode_fresh(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray,
                      body: bytes = b"", status: int | None = None, type_: int | None = None) -> None:
        """Write a message from metadata alone (local replies, tools, tests)."""
        if type_ is None:
            type_ = {v: k for k, v in _TYPES.items() if k != TYPE_HEARTBEAT_REPLY}.get(
                metadata.get("message_type"), TYPE_REQUEST)  # type: ignore[arg-type]
        if status is None:
            status = 1 if metadata.get("response_status") == ResponseStatus.ERROR else 0
        headers: dict[str, Any] = {k: str(v) for k, v in metadata.str_items()
                                   if k not in _RESERVED_KEYS and k != "error_kind"}
        headers.update(mutation)
        out = bytearray(_FIXED.pack(0, VERSION, type_, status, 0, int(metadata.get("request_id", 0))))
        _write_str(out, str(metadata.get("service", "")))
        _write_str(out, str(metadata.get("method", "")))
        _write_headers(out, headers)
        out += body
        struct.pack_into(">I", out, 0, len(out) - 4)
        buffer += out
