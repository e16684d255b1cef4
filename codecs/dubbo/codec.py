"""The Dubbo2 (Hessian2) codec: routes on interface, method, version and attachments.

What is read (see protocol.py for the header): a request body is the Hessian2
sequence ``dubbo version, service path, service version, method, parameter
descriptor, arguments..., attachment map``. The arguments are only skipped
(their count comes from the descriptor); the attachment map is read into
Metadata with string values. An OK response body is ``flag [value] [map]``
where flags 3/4/5 carry an attachment map; other statuses carry an error string.

What is written back: with no mutation, the original frame with the request id
patched in. With a mutation, every byte before the attachment map is copied,
then the map is rebuilt (existing pairs copied as bytes, mutated values
replaced, new keys appended) and the body length fixed. A response without
attachments gains them by switching to the *_WITH_ATTACHMENTS flag, unless the
client's protocol version is known not to read those flags (then the mutation
is counted as dropped).

Mutation keys always become attachments: the body's own version field is never
rewritten, and an attachment never overrides a key the body header defines.

Speed (this runs for every message): short ASCII strings are read in one loop
(``hessian2.read_plain``), and a connection's last request head and attachment
map are remembered so that the same bytes are not read twice; every other form
goes through ``Hessian2Reader``. docs/dubbo.md "Cost" has the numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from metaproxy.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DONE,
    WAIT_FOR_DATA,
    Codec,
    CodecError,
    DecodeStatus,
    Direction,
    take,
)
from metaproxy.message import MessageType, Metadata, ProxyError, ResponseStatus
from metaproxy_codecs.dubbo import protocol as p
from metaproxy_codecs.dubbo.hessian2 import (
    COMPLEX,
    Hessian2Reader,
    HessianError,
    read_plain,
    skip_plain,
    write_int,
    write_string,
)
from metaproxy_codecs.dubbo.protocol import (
    FLAG_EVENT,
    FLAG_REQUEST,
    FLAG_TWOWAY,
    HEADER,
    HEADER_SIZE,
    HESSIAN2,
    MAGIC,
    SERIALIZATION_MASK,
    WITH_ATTACHMENTS,
)

_ID = struct.Struct(">Q")
_LEN = struct.Struct(">I")
_HEARTBEAT_BODY = b"N"

#: Keys the codec itself sets; an attachment with the same name does not replace them.
RESERVED_KEYS = frozenset((
    "request_id", "message_type", "response_status", "service", "method", "interface", "version",
    "dubbo_version", "parameter_types", "header_size", "body_size", "status", "error_message",
))
_RESPONSE_ATTACHMENTS = ("auto", "always", "never")
_PRIMITIVES = frozenset("ZBCDFIJSV")
_DESC_CACHE: dict[str, int] = {}
# Read per message: module globals, not enum class attributes (those are slow to read on 3.11).
_REQUEST = MessageType.REQUEST
_ONEWAY = MessageType.ONEWAY
_RESPONSE = MessageType.RESPONSE
_ERROR_MESSAGE = MessageType.ERROR
_HEARTBEAT = MessageType.HEARTBEAT
_SUCCESS = ResponseStatus.SUCCESS
_ERROR = ResponseStatus.ERROR
#: The five strings that open a request body: dubbo version, service path, service version, method, descriptor.
_REQUEST_FIELDS = 5
#: Largest request head or attachment map a connection remembers (so a memo never holds much memory).
_MEMO_LIMIT = 4096


class _State:
    """Where the attachment map lies in the frame, so encode can rebuild just that part.

    Every field starts as its class-level default (two are made per proxied
    request: a Python-level ``__init__`` cost as much as the rest of a short
    response's decode); decode sets what differs.
    """

    flag = 0  # header flag byte
    result_flag = -1  # OK responses: the body's first value
    attach_start = -1  # frame offset of the map (or of where one would go), -1: cannot carry
    pairs_start = -1  # frame offset after 'H' / 'M'+type; -1 when the map is null or absent
    attach_end = -1
    #: The map's keys and values in turn (as routes see them: None for a null or a complex
    #: value), and where each one ends, counted from ``pairs_start``: relative, so that
    #: messages carrying the same map share the lists (see _read_attachments). Never modified.
    map_items: list[str | None] = []
    map_ends: list[int] = []


#: Result flags of a response that carries an exception (with or without attachments).
_EXCEPTION_FLAGS = frozenset((p.RESPONSE_WITH_EXCEPTION, p.RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS))
#: An OK response's first body byte, a result flag as Java writes it (a one-octet int) -> its outcome.
_RESULT_OUTCOMES = {0x90 + flag: _ERROR if flag in _EXCEPTION_FLAGS else _SUCCESS for flag in range(6)}
#: The codec state of a response decoded by ``decode_passthrough``: where its parts lie is unknown.
_PASSED = _State()


def count_parameters(desc: str) -> int:
    """Number of arguments a JVM parameter descriptor names ('Ljava/lang/String;[IJ' -> 3)."""
    cached = _DESC_CACHE.get(desc)
    if cached is not None:
        return cached
    count, i, size = 0, 0, len(desc)
    while i < size:
        while i < size and desc[i] == "[":
            i += 1
        if i >= size:
            raise CodecError(f"parameter descriptor {desc!r} ends inside an array type")
        if desc[i] == "L":
            end = desc.find(";", i)
            if end < 0:
                raise CodecError(f"parameter descriptor {desc!r} has an unterminated class name")
            i = end + 1
        elif desc[i] in _PRIMITIVES:
            i += 1
        else:
            raise CodecError(f"parameter descriptor {desc!r} has unknown type code {desc[i]!r}")
        count += 1
    if len(_DESC_CACHE) < 4096:
        _DESC_CACHE[desc] = count
    return count


def _as_text(value: Any) -> str | None:
    """An attachment value as routes see it; None for null and for values with no text form."""
    if value is None or value is COMPLEX:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class DubboCodec(Codec):
    """One connection's Dubbo2 codec; remembers whether its client reads response attachments."""

    name = "dubbo"
    multiplexing = True

    def __init__(self, options: Mapping[str, Any] | None = None, direction: Direction = Direction.REQUEST,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(options, direction, max_message_bytes)
        self._response_attachments = self.options.get("response_attachments", "auto")
        #: Whether the client on this connection reads response attachments (None: not known yet).
        self._peer_reads_attachments: bool | None = None
        #: The last request's five body header strings: their bytes, the metadata they give, the
        #: number of arguments their descriptor names, and whether that client reads response
        #: attachments (None when it sent no Dubbo version).
        self._request_head: tuple[bytes, dict[str, str], int, bool | None] | None = None
        #: The last attachment map, when it was all plain strings: (its bytes from the map's tag to
        #: the end of the body, pairs_start - map start, map_items, map_ends, the metadata it set).
        self._attachments: tuple[bytes, int, list[str | None], list[int], list[tuple[str, str]]] | None = None

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        problems = []
        for key, value in options.items():
            if key != "response_attachments":
                problems.append(f"{key}: unknown option")
            elif value not in _RESPONSE_ATTACHMENTS:
                problems.append(f"{key}: must be one of {', '.join(_RESPONSE_ATTACHMENTS)}, got {value!r}")
        return problems

    # -- decode --------------------------------------------------------------------
    def decode(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        if len(buffer) < HEADER_SIZE:
            if len(buffer) >= 2 and (buffer[0] != 0xDA or buffer[1] != 0xBB):
                raise CodecError(f"bad magic 0x{buffer[0]:02x}{buffer[1]:02x}, expected 0xdabb", 0)
            return WAIT_FOR_DATA
        magic, flag, status, request_id, length = HEADER.unpack_from(buffer, 0)
        if magic != MAGIC:
            raise CodecError(f"bad magic 0x{magic:04x}, expected 0xdabb", 0)
        size = HEADER_SIZE + length
        if size > self.max_message_bytes:
            self.check_size(size)
        if len(buffer) < size:
            return WAIT_FOR_DATA
        frame = take(buffer, size)
        metadata["request_id"] = request_id
        state = _State()
        state.flag = flag
        if flag & FLAG_EVENT:
            metadata["message_type"] = _HEARTBEAT
            if not flag & FLAG_REQUEST:
                metadata["status"] = status
                metadata["response_status"] = _SUCCESS if status == p.OK else _ERROR
        else:
            serialization = flag & SERIALIZATION_MASK
            if serialization != HESSIAN2:
                raise CodecError(f"serialization id {serialization} is not supported (only hessian2 = 2)", 2)
            try:
                if flag & FLAG_REQUEST:
                    self._decode_request(frame, flag, metadata, state)
                else:
                    self._decode_response(frame, status, metadata, state)
            except HessianError as exc:
                raise CodecError(f"bad Hessian2 body: {exc}", HEADER_SIZE + exc.offset) from None
        metadata["header_size"] = HEADER_SIZE
        metadata["body_size"] = length
        metadata.codec_state = state
        metadata.frame = frame
        return DONE

    def decode_passthrough(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        """A response is framed and matched, its value and attachments not read (``Codec.decode_passthrough``).

        The header gives the id and status; an OK response's outcome is its
        first body byte, a result flag in the one-octet form Java writes. Events,
        requests, other serializations and any header ``decode`` would refuse go
        to ``decode``. ``encode`` reads the body if a mutation needs it.
        """
        if len(buffer) <= HEADER_SIZE or buffer[2] != HESSIAN2:  # not a Hessian2 response (no flag bit set)
            return self.decode(buffer, metadata)
        magic, _, status, request_id, length = HEADER.unpack_from(buffer, 0)
        size = HEADER_SIZE + length
        if status == p.OK:
            outcome = _RESULT_OUTCOMES.get(buffer[HEADER_SIZE])
            message_type = _RESPONSE
        else:
            outcome = _ERROR
            message_type = _ERROR_MESSAGE
        if outcome is None or magic != MAGIC or size > self.max_message_bytes or length < 1:
            return self.decode(buffer, metadata)  # which raises what is wrong, or reads what this does not
        if len(buffer) < size:
            return WAIT_FOR_DATA
        metadata.frame = take(buffer, size)
        metadata["request_id"] = request_id
        metadata["message_type"] = message_type
        metadata["response_status"] = outcome
        metadata.codec_state = _PASSED
        return DONE

    def _decode_request(self, frame: bytes, flag: int, metadata: Metadata, state: _State) -> None:
        memo = self._request_head
        items: dict[str, str]
        reader: Hessian2Reader | None
        if memo is not None and frame.startswith(memo[0], HEADER_SIZE):
            # The same five strings as this connection's last request (clients call the same
            # method over and over): the same bytes read the same, so they are not read again,
            # nor is what follows from them (the metadata they give, the argument count).
            prefix, items, arguments, peer_reads = memo
            pos = HEADER_SIZE + len(prefix)
        else:
            fields: list[str | None] = []
            # Fast path: the five strings are nearly always short ASCII; any that is not (and
            # any error) is left to the reader, from the first such value on.
            pos = read_plain(frame, HEADER_SIZE, _REQUEST_FIELDS, fields, [])
            if len(fields) < _REQUEST_FIELDS:
                reader = Hessian2Reader(frame, pos)
                while len(fields) < _REQUEST_FIELDS:
                    fields.append(reader.read_string())
                pos = reader.pos
            dubbo_version, interface, version, method, desc = fields
            items = {}
            if dubbo_version is not None:
                items["dubbo_version"] = dubbo_version
            if interface is not None:
                items["interface"] = interface
                items["service"] = interface
            if version is not None:
                items["version"] = version
            if method is not None:
                items["method"] = method
            items["parameter_types"] = desc or ""
            arguments = count_parameters(desc or "")
            peer_reads = None if dubbo_version is None else p.supports_response_attachments(dubbo_version)
            if pos - HEADER_SIZE <= _MEMO_LIMIT:
                self._request_head = (frame[HEADER_SIZE:pos], items, arguments, peer_reads)
        metadata["message_type"] = _REQUEST if flag & FLAG_TWOWAY else _ONEWAY
        metadata.update(items)
        if peer_reads is not None:
            self._peer_reads_attachments = peer_reads
        pos, skipped = skip_plain(frame, pos, arguments)
        reader = None
        if skipped < arguments:
            reader = Hessian2Reader(frame, pos)
            for _ in range(arguments - skipped):
                reader.skip()
            pos = reader.pos
        state.attach_start = pos
        if pos < len(frame):
            self._read_attachments(frame, pos, metadata, state, reader)

    def _decode_response(self, frame: bytes, status: int, metadata: Metadata, state: _State) -> None:
        metadata["status"] = status
        if status != p.OK:
            metadata["message_type"] = _ERROR_MESSAGE
            metadata["response_status"] = _ERROR
            if len(frame) > HEADER_SIZE:
                message = Hessian2Reader(frame, HEADER_SIZE).read_scalar()
                if isinstance(message, str):
                    metadata["error_message"] = message
            return
        pos = HEADER_SIZE
        reader: Hessian2Reader | None
        if len(frame) > pos and 0x90 <= frame[pos] <= 0x95:
            result_flag = frame[pos] - 0x90  # flags 0-5 as Java writes them: one-octet ints
            pos += 1
        else:
            reader = Hessian2Reader(frame, pos)
            result_flag = reader.read_int()
            pos = reader.pos
        if not 0 <= result_flag <= 5:
            raise CodecError(f"unknown response flag {result_flag}", HEADER_SIZE)
        state.result_flag = result_flag
        metadata["message_type"] = _RESPONSE
        failed = result_flag in _EXCEPTION_FLAGS
        metadata["response_status"] = _ERROR if failed else _SUCCESS
        reader = None
        if result_flag != p.RESPONSE_NULL_VALUE and result_flag != p.RESPONSE_NULL_VALUE_WITH_ATTACHMENTS:
            pos, skipped = skip_plain(frame, pos, 1)
            if not skipped:
                reader = Hessian2Reader(frame, pos)
                pos = reader.skip()
        state.attach_start = pos
        if result_flag >= WITH_ATTACHMENTS:
            self._read_attachments(frame, pos, metadata, state, reader)
        elif pos != len(frame):
            raise CodecError(f"{len(frame) - pos} bytes after the response value", pos)

    def _read_attachments(self, buf: bytes, start: int, metadata: Metadata, state: _State,
                          reader: Hessian2Reader | None = None) -> None:
        """Read the attachment map at ``start`` into metadata, remembering where each key and value ends.

        ``reader``: the one that read the values before the map, if any did (class definitions
        persist through a body). Without one, only plain values came before, which define no
        classes, and a reader is made only if the map is not the memo's.
        """
        tag = buf[start] if start < len(buf) else -1
        items: list[tuple[str, str]]
        if tag == 0x48 or tag == 0x4D:
            memo = self._attachments
            if memo is not None and len(buf) - start == len(memo[0]) and buf.endswith(memo[0]):
                # The same map as this connection's last one (clients send the same attachments
                # with every call): the same bytes read the same, so they are not read again.
                _, pairs_offset, state.map_items, state.map_ends, items = memo
                state.attach_start = start
                state.pairs_start = start + pairs_offset
                state.attach_end = len(buf)
                metadata.update(items)
                return
        if reader is None:
            reader = Hessian2Reader(buf, start)
        if tag == 0x4E:  # null: no attachments
            reader.pos += 1
        elif tag == 0x48 or tag == 0x4D:
            reader.pos += 1
            if tag == 0x4D:
                reader.read_scalar()  # the map's type name (or type reference)
            pairs_start = state.pairs_start = reader.pos
            # Fast path: keys and values that are short ASCII strings or nulls (nearly always),
            # read in one loop. Whole pairs are kept; the reader goes on from the first value
            # that is anything else, and reads the 'Z' end marker.
            values: list[str | None] = []
            ends: list[int] = []
            read_plain(buf, pairs_start, len(buf), values, ends)
            if len(values) & 1:  # a key whose value is not plain: the reader reads that pair
                values.pop()
                ends.pop()
            reader.pos = pairs_start + ends[-1] if ends else pairs_start
            plain = tag == 0x48
            while True:
                if reader.pos >= len(buf):
                    raise CodecError("attachment map has no end marker", reader.pos)
                if buf[reader.pos] == 0x5A:
                    break
                plain = False  # a value the fast path could not read: it may depend on earlier classes
                values.append(_as_text(reader.read_scalar()))
                ends.append(reader.pos - pairs_start)
                values.append(_as_text(reader.read_scalar()))
                ends.append(reader.pos - pairs_start)
            reader.pos += 1
            items = []
            pairs = iter(values)
            for key in pairs:
                value = next(pairs)
                if key is not None and value is not None and key not in RESERVED_KEYS:
                    items.append((key, value))
            metadata.update(items)
            state.attach_start = start
            state.map_items = values
            state.map_ends = ends
            if plain and reader.pos == len(buf) and reader.pos - start <= _MEMO_LIMIT:
                self._attachments = (buf[start:], pairs_start - start, values, ends, items)
        else:
            raise CodecError(f"attachments must be a map, found tag 0x{tag:02x}", reader.pos)
        state.attach_end = reader.pos
        if reader.pos != len(buf):
            raise CodecError(f"{len(buf) - reader.pos} bytes after the attachment map", reader.pos)

    # -- encode --------------------------------------------------------------------
    def encode(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray) -> None:
        state: _State | None = metadata.codec_state
        frame = metadata.frame
        if state is None or not frame:
            self._encode_fresh(metadata, mutation, buffer)
            return
        start = len(buffer)
        if mutation and state is _PASSED:  # decode_passthrough did not read the body: read it now
            state = self.decoded_state(frame)
        if mutation and self._can_carry(state):
            self._encode_mutated(frame, state, mutation, buffer)
        else:
            if mutation:
                self.mutations_dropped += len(mutation)
            buffer += frame
        _ID.pack_into(buffer, start + p.ID_OFFSET, metadata["request_id"])

    def _can_carry(self, state: _State) -> bool:
        if state.attach_start < 0:
            return False  # events and error statuses have nowhere to put attachments
        if state.flag & p.FLAG_REQUEST or state.result_flag >= p.WITH_ATTACHMENTS:
            return True
        if self._response_attachments == "auto":
            return self._peer_reads_attachments is not False
        return self._response_attachments == "always"

    @staticmethod
    def _encode_mutated(frame: bytes, state: _State, mutation: Mapping[str, str], buffer: bytearray) -> None:
        start = len(buffer)
        if state.flag & p.FLAG_REQUEST or state.result_flag >= p.WITH_ATTACHMENTS:
            buffer += memoryview(frame)[:state.attach_start]
        else:  # switch VALUE/NULL/EXCEPTION to its *_WITH_ATTACHMENTS form
            flag_reader = Hessian2Reader(frame, p.HEADER_SIZE)
            flag_reader.read_int()  # the flag as it was written (one octet from Java, up to five elsewhere)
            buffer += memoryview(frame)[:p.HEADER_SIZE]
            write_int(buffer, state.result_flag + p.WITH_ATTACHMENTS)
            buffer += memoryview(frame)[flag_reader.pos:state.attach_start]
        remaining = dict(mutation)
        if state.pairs_start < 0:
            buffer.append(0x48)
        else:
            base = pair_start = state.pairs_start
            buffer += memoryview(frame)[state.attach_start:base]
            items, ends = state.map_items, state.map_ends
            for i in range(0, len(items), 2):
                key, value_start, pair_end = items[i], base + ends[i], base + ends[i + 1]
                if key is not None and key in remaining:
                    buffer += memoryview(frame)[pair_start:value_start]
                    write_string(buffer, remaining.pop(key))
                else:
                    buffer += memoryview(frame)[pair_start:pair_end]
                pair_start = pair_end
        for key, value in remaining.items():
            write_string(buffer, key)
            write_string(buffer, value)
        buffer.append(0x5A)
        _LEN.pack_into(buffer, start + p.LENGTH_OFFSET, len(buffer) - start - p.HEADER_SIZE)

    def _encode_fresh(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray) -> None:
        """A request with no arguments from metadata alone (tools, make_request)."""
        attachments = {k: v for k, v in metadata.str_items() if k not in RESERVED_KEYS}
        attachments.update(mutation)
        buffer += build_request(
            int(metadata.get("request_id", 0)), str(metadata.get("interface") or metadata.get("service", "")),
            str(metadata.get("method", "")), version=metadata.get_str("version"), attachments=attachments,
            two_way=metadata.get("message_type") != MessageType.ONEWAY)

    # -- local replies -----------------------------------------------------------------
    def on_error(self, metadata: Metadata, error: ProxyError, buffer: bytearray) -> None:
        body = bytearray()
        write_string(body, error.message)
        request_id = int(metadata.get("request_id", 0))
        buffer += p.HEADER.pack(p.MAGIC, p.HESSIAN2, p.error_status(error.kind), request_id, len(body))
        buffer += body

    def heartbeat_reply(self, metadata: Metadata, buffer: bytearray) -> None:
        state: _State | None = metadata.codec_state
        if state is not None and (state.flag & (p.FLAG_REQUEST | p.FLAG_TWOWAY)) != p.FLAG_REQUEST | p.FLAG_TWOWAY:
            return  # a one-way event, or an event response, expects no answer
        flag = p.FLAG_EVENT | ((state.flag if state else p.HESSIAN2) & p.SERIALIZATION_MASK)
        buffer += p.HEADER.pack(p.MAGIC, flag, p.OK, int(metadata["request_id"]), len(_HEARTBEAT_BODY))
        buffer += _HEARTBEAT_BODY

    def make_heartbeat(self, request_id: int, buffer: bytearray) -> bool:
        flag = p.FLAG_REQUEST | p.FLAG_TWOWAY | p.FLAG_EVENT | p.HESSIAN2
        buffer += p.HEADER.pack(p.MAGIC, flag, 0, request_id, len(_HEARTBEAT_BODY))
        buffer += _HEARTBEAT_BODY
        return True

    def make_request(self, request_id: int, buffer: bytearray) -> bool:
        buffer += build_request(request_id, "metaproxy.Ping", "ping", version="0.0.0")
        return True


def build_request(request_id: int, interface: str, method: str, *, version: str | None = None,
                  attachments: Mapping[str, str] | None = None, two_way: bool = True,
                  dubbo_version: str = "2.0.2") -> bytes:
    """A complete request frame for a call with no arguments."""
    body = bytearray()
    for text in (dubbo_version, interface):
        write_string(body, text)
    if version is None:
        body.append(0x4E)
    else:
        write_string(body, version)
    write_string(body, method)
    write_string(body, "")
    body.append(0x48)
    pairs = {"path": interface, "interface": interface}
    if version is not None:
        pairs["version"] = version
    pairs.update(attachments or {})
    for key, value in pairs.items():
        write_string(body, key)
        write_string(body, value)
    body.append(0x5A)
    flag = p.FLAG_REQUEST | p.HESSIAN2 | (p.FLAG_TWOWAY if two_way else 0)
    return p.HEADER.pack(p.MAGIC, flag, 0, request_id, len(body)) + bytes(body)
