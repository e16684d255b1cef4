"""ThriftCodec: routes on the message header, forwards the body as the original bytes.

What decode reads: the transport framing (or, unframed, the whole struct walked
to find the message end), the message header (name, type, seqid), THeader
key/value headers, and for replies only the first field id of the result
struct (0: success, anything else: a declared exception) or the message and
type of a TApplicationException. What encode writes: the original frame, with
the seqid patched when the framework rewrote ``request_id``, and with a rebuilt
THeader header section when a Mutation must travel. docs/thrift.md has the why.

Speed (this runs for every message): a framed strict binary message, nearly
all traffic, is read in place by ``_decode_framed_strict``; everything else
takes the general path through the protocol modules. docs/thrift.md "Cost".
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from metaproxy.codec import DONE, WAIT_FOR_DATA, Codec, CodecError, DecodeStatus, Direction, take
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus
from metaproxy_codecs.thrift import binary, compact, header
from metaproxy_codecs.thrift.binary import VERSION_1, VERSION_MASK
from metaproxy_codecs.thrift.detect import BINARY, COMPACT, FRAMED, HEADER, UNFRAMED, detect, detect_protocol
from metaproxy_codecs.thrift.wire import (
    APP_INTERNAL_ERROR,
    APP_UNKNOWN_METHOD,
    CALL,
    EXCEPTION,
    ONEWAY,
    REPLY,
    MessageHead,
    Short,
)

AUTO = "auto"
TRANSPORTS = (AUTO, FRAMED, UNFRAMED, HEADER)
PROTOCOLS = (AUTO, BINARY, COMPACT)
_PROTOCOLS: dict[str, ModuleType] = {BINARY: binary, COMPACT: compact}
_HEADER_PROTOCOLS = {header.PROTO_BINARY: binary, header.PROTO_COMPACT: compact}
_HEADER_IDS = {BINARY: header.PROTO_BINARY, COMPACT: header.PROTO_COMPACT}
_TYPES = {CALL: MessageType.REQUEST, ONEWAY: MessageType.ONEWAY, REPLY: MessageType.RESPONSE,
          EXCEPTION: MessageType.ERROR}
# Read per message: module globals, not enum class attributes (those are slow to read on 3.11).
_SUCCESS = ResponseStatus.SUCCESS
_ERROR = ResponseStatus.ERROR
_REQUEST = MessageType.REQUEST
_RESPONSE = MessageType.RESPONSE
_ONEWAY = MessageType.ONEWAY
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
#: The fast path's frame: length word, then a strict binary header up to the name (version word, name length).
_FRAMED_STRICT = struct.Struct(">III")
#: A framed strict binary message with an empty name is 16 bytes: length, version, name length, seqid.
_FRAMED_STRICT_MIN = 16
#: Keys the codec owns; a THeader header with one of these names is not copied into Metadata.
RESERVED_KEYS = frozenset(("request_id", "message_type", "response_status", "service", "method",
                           "header_size", "body_size", "transport", "protocol",
                           "exception_type", "exception_message"))
#: Separator TMultiplexedProtocol puts between the service and the method name.
SERVICE_SEPARATOR = ":"


class _State:
    """Where things lie in one decoded message, so encode can patch it and on_error can answer it."""

    __slots__ = (
        "info",
        "msg_start",
        "plain",
        "proto",
        "seqid",
        "seqid_end",
        "seqid_pos",
        "strict",
        "transport",
    )

    def __init__(self, transport: str, proto: ModuleType, strict: bool, seqid: int, seqid_pos: int,
                 seqid_end: int, msg_start: int, info: header.HeaderFrame | None, plain: bytes | None) -> None:
        self.transport = transport
        self.proto = proto
        self.strict = strict
        self.seqid = seqid
        self.seqid_pos = seqid_pos  # relative to the message start
        self.seqid_end = seqid_end
        self.msg_start = msg_start  # in the frame (unused when ``plain`` holds the inflated message)
        self.info = info
        self.plain = plain


def _option(options: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = str(options.get(key, AUTO)).lower()
    if value == "buffered":
        value = UNFRAMED
    if value not in allowed:
        raise ValueError(f"{key}: {options.get(key)!r} is not one of {', '.join(allowed)}")
    return value


class ThriftCodec(Codec):
    name = "thrift"

    def __init__(self, options: Mapping[str, Any] | None = None, direction: Direction = Direction.REQUEST,
                 max_message_bytes: int = 4 * 1024 * 1024) -> None:
        super().__init__(options, direction, max_message_bytes)
        self.transport = _option(self.options, "transport", TRANSPORTS)
        self.protocol = _option(self.options, "protocol", PROTOCOLS)
        # Only a transport known to be framed lets responses come back out of order
        # and be matched by seqid; unframed peers answer strictly in order, and with
        # `auto` the framing is unknown until the first bytes arrive, after the
        # server has already chosen its pool.
        self._multiplexing = self.transport in (FRAMED, HEADER)
        #: Whether a framed message starting 0x80 0x01 may take the strict binary fast path (`auto`
        #: would detect it as framed binary too; a codec set to compact or unframed must refuse or
        #: read it otherwise, which the general path does).
        self._strict_fast = self.transport in (FRAMED, AUTO) and self.protocol != COMPACT
        self.mutations_dropped = 0
        self._min_needed = 0  # unframed: the buffer must reach this size before another walk
        self._last: _State | None = None  # what the last message looked like, for on_error

    @property
    def multiplexing(self) -> bool:  # type: ignore[override]
        """Per connection, from the transport (False for unframed and auto, see docs/thrift.md); a
        property because a compiled instance has no ``__dict__`` to shadow the class flag in."""
        return self._multiplexing

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        problems = [f"{key}: unknown option (known: transport, protocol)"
                    for key in options if key not in ("transport", "protocol")]
        for key, allowed in (("transport", TRANSPORTS), ("protocol", PROTOCOLS)):
            try:
                _option(options, key, allowed)
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    # -- decode ------------------------------------------------------------
    def decode(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        size = len(buffer)
        if size < self._min_needed or size < 2:
            return WAIT_FOR_DATA
        # Nearly every message is framed strict binary: try that first, in place (see the method).
        if self._strict_fast and size >= _FRAMED_STRICT_MIN and self._decode_framed_strict(buffer, metadata):
            return DONE
        transport = self.transport
        if transport == AUTO:
            found = detect(buffer)
            if found is None:
                return WAIT_FOR_DATA
            transport = found[0]
        if transport == UNFRAMED:
            return self._decode_unframed(buffer, metadata)
        if size < 4:
            return WAIT_FOR_DATA
        length = _U32.unpack_from(buffer, 0)[0]
        if length & 0x80000000:
            raise CodecError(f"frame length word {length:#010x} is negative: not a framed message", 0)
        self.check_size(length + 4)
        if size < length + 4:
            return WAIT_FOR_DATA
        if length < 2:
            raise CodecError(f"frame of {length} bytes cannot hold a message", 0)
        if transport == HEADER:
            self._decode_header(buffer, length + 4, metadata)
        else:
            proto = self._protocol_at(buffer, 4)
            self._decode_message(buffer, FRAMED, proto, 4, length + 4, None, None, metadata)
        metadata.frame = take(buffer, length + 4)
        return DONE

    def _decode_framed_strict(self, buffer: bytearray, metadata: Metadata) -> bool:
        """Fast path for nearly all traffic: one whole framed, strict binary CALL, ONEWAY or REPLY.

        The general path gets the same result through a dozen small calls (protocol detection,
        ``binary.read_head`` and its MessageHead, ``_fill``, ``first_field``...), and on this path
        each Python call costs about as much as the work it does. Here the header is read in place
        with one unpack. Anything else (a frame not all here, a bad size, a name that is not UTF-8,
        an EXCEPTION, a reply whose first field runs past the frame) returns False having touched
        nothing, and the general path then decodes it or raises the precise error.
        """
        length, word, name_size = _FRAMED_STRICT.unpack_from(buffer, 0)
        end = length + 4
        seqid_pos = 12 + name_size  # in the frame
        body_pos = seqid_pos + 4
        if (word & VERSION_MASK) != VERSION_1 or end > len(buffer) or body_pos > end:
            return False  # not a strict binary header (0x8001....), or not all here, or not fitting
        if end > self.max_message_bytes:
            return False
        mtype = word & 0xFF
        if mtype == CALL:
            message_type = _REQUEST
        elif mtype == REPLY:
            status = _reply_status(buffer, body_pos, end)
            if status is None:
                return False
            message_type = _RESPONSE
        elif mtype == ONEWAY:
            message_type = _ONEWAY
        else:
            return False  # EXCEPTION (its message is read on the general path) or a bad type
        try:
            name = str(buffer[12:seqid_pos], "utf-8")
        except UnicodeDecodeError:
            return False
        seqid = _I32.unpack_from(buffer, seqid_pos)[0]
        metadata["request_id"] = seqid
        metadata["message_type"] = message_type
        service, sep, method = name.partition(SERVICE_SEPARATOR)
        if sep:
            metadata["service"] = service
            metadata["method"] = method
        else:
            metadata["method"] = name
        metadata["transport"] = FRAMED
        metadata["protocol"] = BINARY
        if mtype == REPLY:
            metadata["response_status"] = status
        metadata["header_size"] = body_pos
        metadata["body_size"] = end - body_pos
        self._last = metadata.codec_state = _State(FRAMED, binary, True, seqid, seqid_pos - 4, body_pos - 4, 4,
                                                   None, None)
        metadata.frame = take(buffer, end)
        return True

    def decode_passthrough(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        """A whole framed strict binary reply is matched by its seqid, not read (``Codec.decode_passthrough``).

        Its name is not decoded and only the first byte(s) of the result struct
        are looked at (for the status); everything else goes to ``decode``.
        """
        if self._strict_fast and len(buffer) >= _FRAMED_STRICT_MIN:
            length, word, name_size = _FRAMED_STRICT.unpack_from(buffer, 0)
            end = length + 4
            body_pos = 16 + name_size
            if (word & VERSION_MASK) == VERSION_1 and word & 0xFF == REPLY and end <= len(buffer) \
                    and end <= self.max_message_bytes:
                status = _reply_status(buffer, body_pos, end)
                if status is not None:
                    seqid = _I32.unpack_from(buffer, body_pos - 4)[0]
                    metadata["request_id"] = seqid
                    metadata["message_type"] = _RESPONSE
                    metadata["response_status"] = status
                    self._last = metadata.codec_state = _State(FRAMED, binary, True, seqid, body_pos - 8,
                                                               body_pos - 4, 4, None, None)
                    metadata.frame = take(buffer, end)
                    return DONE
        return self.decode(buffer, metadata)

    def _protocol_at(self, buf: bytearray, pos: int) -> ModuleType:
        found = detect_protocol(buf, pos)
        if self.protocol != AUTO and found != self.protocol:
            raise CodecError(f"message is in the {found} protocol, but the codec is set to {self.protocol}", pos)
        return _PROTOCOLS[found]

    def _decode_unframed(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        proto = self._protocol_at(buffer, 0)
        size = len(buffer)
        try:
            head = proto.read_head(buffer, 0, size)
            end = proto.skip_struct(buffer, head.body_pos, size)
        except Short as short:
            if short.needed > self.max_message_bytes:
                self._min_needed = 0
                self.check_size(short.needed)
            self._min_needed = short.needed
            return DecodeStatus.WAIT_FOR_DATA
        self._min_needed = 0
        self.check_size(end)
        self._decode_message(buffer, UNFRAMED, proto, 0, end, None, None, metadata)
        metadata.frame = take(buffer, end)
        return DecodeStatus.DONE

    def _decode_header(self, buffer: bytearray, frame_end: int, metadata: Metadata) -> None:
        if not header.is_header(buffer, 0):
            raise CodecError("frame has no THeader magic 0x0fff", 4)
        info = header.parse(buffer, frame_end)
        proto = _HEADER_PROTOCOLS[info.proto_id]
        if self.protocol != AUTO and proto.NAME != self.protocol:
            raise CodecError(f"THeader carries the {proto.NAME} protocol, but the codec is set to {self.protocol}",
                             header.FIXED_SIZE)
        plain = header.payload(buffer, info, frame_end, self.max_message_bytes)
        self._decode_message(buffer, HEADER, proto, info.payload_start, frame_end, info, plain, metadata)
        for key, value in info.headers.items():
            if key not in RESERVED_KEYS:
                metadata[key] = value

    def _decode_message(self, buffer: bytearray, transport: str, proto: ModuleType, start: int, end: int,
                        info: header.HeaderFrame | None, plain: bytes | None, metadata: Metadata) -> None:
        """Read the message header (and a reply's status) of the message in ``[start, end)``."""
        buf, msg_start, msg_end = buffer, start, end
        if plain is not None:
            buf, msg_start, msg_end = bytearray(plain), 0, len(plain)
        try:
            head = proto.read_head(buf, msg_start, msg_end)
            self._fill(metadata, transport, proto, head, buf, msg_end)
        except Short:
            raise CodecError("the Thrift message runs past the end of its frame", start) from None
        body_pos = head.body_pos if plain is None else start
        metadata["header_size"] = body_pos
        metadata["body_size"] = end - body_pos
        self._last = metadata.codec_state = _State(transport, proto, head.strict, head.seqid,
                                                   head.seqid_pos - msg_start, head.seqid_end - msg_start,
                                                   msg_start, info, plain)

    @staticmethod
    def _fill(metadata: Metadata, transport: str, proto: ModuleType, head: MessageHead, buf: bytearray,
              end: int) -> None:
        metadata["request_id"] = head.seqid
        metadata["message_type"] = _TYPES[head.mtype]
        service, sep, method = head.name.partition(SERVICE_SEPARATOR)
        if sep:
            metadata["service"] = service
            metadata["method"] = method
        else:
            metadata["method"] = head.name
        metadata["transport"] = transport
        metadata["protocol"] = proto.NAME
        if head.mtype == REPLY:
            fid = proto.first_field(buf, head.body_pos, end)
            ok = fid is None or fid == 0
            metadata["response_status"] = ResponseStatus.SUCCESS if ok else ResponseStatus.ERROR
        elif head.mtype == EXCEPTION:
            message, code = proto.read_app_exception(buf, head.body_pos, end)
            metadata["response_status"] = ResponseStatus.ERROR
            metadata["exception_type"] = code
            metadata["exception_message"] = message

    # -- encode ------------------------------------------------------------
    def encode(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray) -> None:
        state: _State | None = metadata.codec_state
        frame = metadata.frame
        if state is None or not frame:
            self._encode_fresh(metadata, buffer)
            return
        seqid = int(metadata.get("request_id", state.seqid))
        carry = False
        if mutation:
            carry = state.transport == HEADER
            if not carry:
                self.mutations_dropped += 1  # only THeader has somewhere to put them
        info = state.info
        if not carry:
            if seqid == state.seqid:
                buffer += frame
                return
            if state.proto is binary and state.plain is None:
                # The usual case: a binary seqid is a fixed 4-byte word, patched in a copy of the frame.
                start = len(buffer)
                buffer += frame
                _U32.pack_into(buffer, start + state.msg_start + state.seqid_pos, seqid & 0xFFFFFFFF)
                if info is not None and info.seq_id == state.seqid:
                    _I32.pack_into(buffer, start + 8, _signed(seqid))
                return
        new_seq = state.proto.seqid_bytes(seqid)
        same_width = len(new_seq) == state.seqid_end - state.seqid_pos
        if not carry and same_width and state.plain is None:
            start = len(buffer)
            buffer += frame
            pos = start + state.msg_start + state.seqid_pos
            buffer[pos:pos + len(new_seq)] = new_seq
            if info is not None and info.seq_id == state.seqid:
                _I32.pack_into(buffer, start + 8, _signed(seqid))
            return
        body = self._message_with_seqid(state, frame, seqid, new_seq)
        if state.transport == UNFRAMED:
            buffer += body
        elif state.transport == FRAMED:
            buffer += _U32.pack(len(body))
            buffer += body
        else:
            assert info is not None
            section = (header.rebuild_section(frame, info, mutation) if carry
                       else frame[header.FIXED_SIZE:info.payload_start])
            header_seq = _signed(seqid) if info.seq_id == state.seqid else info.seq_id
            header.build(buffer, info.flags, header_seq, section, body)

    @staticmethod
    def _message_with_seqid(state: _State, frame: bytes, seqid: int, new_seq: bytes) -> bytes | memoryview:
        """The message bytes (compressed again when THeader transforms apply) carrying ``seqid``."""
        if seqid == state.seqid and state.info is not None:
            return memoryview(frame)[state.info.payload_start:]
        src, base = (state.plain, 0) if state.plain is not None else (frame, state.msg_start)
        message = src[base:base + state.seqid_pos] + new_seq + src[base + state.seqid_end:]
        if state.plain is not None and state.info is not None:
            return header.compress(message, state.info)
        return message

    # -- local replies -----------------------------------------------------
    def on_error(self, metadata: Metadata, error: ProxyError, buffer: bytearray) -> None:
        """A TApplicationException in the request's own transport and protocol.

        A oneway request gets nothing: its client never reads a reply, and an
        unexpected one would be taken as the answer to its next call.
        """
        if metadata.get("message_type") == MessageType.ONEWAY:
            return
        state: _State | None = metadata.codec_state or self._last
        code = APP_UNKNOWN_METHOD if error.kind is ErrorType.ROUTE_NOT_FOUND else APP_INTERNAL_ERROR
        text = f"metaproxy: {error.kind.value}"
        if error.message and error.message != error.kind.value:
            text += f": {error.message}"
        method = str(metadata.get("method", ""))
        seqid = int(metadata.get("request_id", 0))
        transport, proto, strict = self._shape(state)
        message = bytearray()
        proto.write_head(message, method, EXCEPTION, seqid, strict)
        proto.write_app_exception(message, text, code)
        self._wrap(buffer, transport, proto, message, seqid, state.info if state else None)

    def make_request(self, request_id: int, buffer: bytearray) -> bool:
        """A ``ping`` call with empty arguments, in the configured transport and protocol."""
        transport, proto, _ = self._shape(None)
        message = bytearray()
        proto.write_head(message, "ping", CALL, request_id, True)
        proto.write_empty_struct(message)
        self._wrap(buffer, transport, proto, message, request_id, None)
        return True

    # -- helpers -----------------------------------------------------------
    def _shape(self, state: _State | None) -> tuple[str, ModuleType, bool]:
        if state is not None:
            return state.transport, state.proto, state.strict
        transport = FRAMED if self.transport == AUTO else self.transport
        return transport, _PROTOCOLS[BINARY if self.protocol == AUTO else self.protocol], True

    @staticmethod
    def _wrap(buffer: bytearray, transport: str, proto: ModuleType, message: bytes | bytearray, seqid: int,
              info: header.HeaderFrame | None) -> None:
        if transport == UNFRAMED:
            buffer += message
        elif transport == FRAMED:
            buffer += _U32.pack(len(message))
            buffer += message
        else:
            flags = info.flags if info is not None else 0
            header.build(buffer, flags, _signed(seqid), header.minimal_section(_HEADER_IDS[proto.NAME]), message)

    def _encode_fresh(self, metadata: Metadata, buffer: bytearray) -> None:
        """A message from metadata alone (no decoded frame): a call with empty arguments."""
        name = str(metadata.get("method", ""))
        if metadata.get("service"):
            name = f"{metadata['service']}{SERVICE_SEPARATOR}{name}"
        mtype = {v: k for k, v in _TYPES.items()}.get(metadata.get("message_type"), CALL)  # type: ignore[arg-type]
        transport, proto, _ = self._shape(None)
        message = bytearray()
        proto.write_head(message, name, mtype, int(metadata.get("request_id", 0)), True)
        proto.write_empty_struct(message)
        self._wrap(buffer, transport, proto, message, int(metadata.get("request_id", 0)), None)


def _reply_status(buf: bytearray, body_pos: int, end: int) -> ResponseStatus | None:
    """A binary reply's outcome from its result struct's first field: none or id 0 is the return
    value, any other a declared exception. None when that field runs past ``end``."""
    if body_pos >= end:
        return None
    if buf[body_pos] == 0:
        return _SUCCESS
    if body_pos + 3 > end:
        return None
    return _SUCCESS if buf[body_pos + 1] == 0 and buf[body_pos + 2] == 0 else _ERROR


def _signed(value: int) -> int:
    """A seqid as the signed 32-bit number THeader's header seq id field holds."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
