"""Redis (RESP2 and RESP3): an ordered protocol with no request ids.

Requests are arrays of bulk strings (or inline commands); the codec reads the
command and its first key for routing, and forwards the original bytes.
Responses are any RESP value, walked only to find where they end. Redis has
no request ids, so ``multiplexing = False``: each downstream connection leases
its own upstream connection per endpoint, which keeps pipelining, MULTI/EXEC
and SELECT working. Pub/sub pushes are refused clearly (the proxy is
request/response). Mutations cannot travel in RESP: they are counted as
dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from metaproxy.codec import Codec, CodecError, DecodeStatus, Direction, take
from metaproxy.message import ErrorType, MessageType, Metadata, ProxyError, ResponseStatus

_MAX_DEPTH = 64
_AGGREGATES = frozenset(b"*~>%|")  # array, set, push, map, attribute (maps count pairs)
_SIMPLE = frozenset(b"+-:_,#(")  # simple string, error, integer, null, double, boolean, big number
_BLOBS = frozenset(b"$!=")  # bulk string, bulk error, verbatim string
#: Commands whose first argument is not a key.
_NO_KEY = frozenset({
    "PING", "ECHO", "MULTI", "EXEC", "DISCARD", "SELECT", "AUTH", "HELLO", "INFO", "CONFIG", "CLIENT",
    "COMMAND", "DBSIZE", "FLUSHDB", "FLUSHALL", "SCAN", "TIME", "QUIT", "SCRIPT", "EVAL", "EVALSHA",
    "WAIT", "RESET", "SAVE", "BGSAVE", "LASTSAVE", "DEBUG", "SLOWLOG", "MEMORY", "LATENCY", "PUBLISH",
})
#: Commands that set per-connection state: replayed on every upstream connection the client uses.
SESSION = frozenset({"HELLO", "SELECT", "AUTH", "CLIENT", "READONLY", "READWRITE"})
#: Commands that turn a connection into a push stream: refused.
PUBSUB = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"})
_MESSAGES = {
    ErrorType.ROUTE_NOT_FOUND: "no route",
    ErrorType.CLUSTER_NOT_FOUND: "no such cluster",
    ErrorType.NO_HEALTHY_UPSTREAM: "no healthy upstream",
    ErrorType.TIMEOUT: "upstream timeout",
    ErrorType.OVER_LIMIT: "over limit",
    ErrorType.BAD_RESPONSE: "bad upstream response",
    ErrorType.PERMISSION_DENIED: "permission denied",
}


class _Reader:
    """Walks one RESP value in a buffer; ``None`` from a method means: not all there yet."""

    __slots__ = ("buf", "limit")

    def __init__(self, buf: bytearray, limit: int) -> None:
        self.buf = buf
        self.limit = limit

    def line(self, pos: int) -> tuple[bytes, int] | None:
        end = self.buf.find(b"\r\n", pos)
        if end < 0:
            if len(self.buf) - pos > 65536:
                raise CodecError("RESP line longer than 64 KiB", pos)
            return None
        return bytes(self.buf[pos:end]), end + 2

    def number(self, pos: int) -> tuple[int, int] | None:
        found = self.line(pos)
        if found is None:
            return None
        text, nxt = found
        try:
            return int(text), nxt
        except ValueError:
            raise CodecError(f"bad RESP length {text[:20]!r}", pos) from None

    def skip(self, pos: int, depth: int = 0) -> int | None:
        """End offset of the value starting at ``pos``."""
        if depth > _MAX_DEPTH:
            raise CodecError("RESP nesting deeper than 64", pos)
        if pos >= len(self.buf):
            return None
        kind = self.buf[pos]
        if kind in _SIMPLE:
            found = self.line(pos + 1)
            return None if found is None else found[1]
        if kind in _BLOBS:
            found = self.number(pos + 1)
            if found is None:
                return None
            size, nxt = found
            if size < 0:
                return nxt
            if nxt + size > self.limit:
                raise CodecError(f"RESP blob of {size} bytes exceeds max_message_bytes", pos)
            if len(self.buf) < nxt + size + 2:
                return None
            if self.buf[nxt + size:nxt + size + 2] != b"\r\n":
                raise CodecError("RESP blob not terminated by CRLF", nxt + size)
            return nxt + size + 2
        if kind in _AGGREGATES:
            found = self.number(pos + 1)
            if found is None:
                return None
            count, nxt = found
            if kind in b"%|":
                count *= 2
            if count > self.limit:
                raise CodecError(f"RESP aggregate of {count} elements is too large", pos)
            for _ in range(max(count, 0)):
                end = self.skip(nxt, depth + 1)
                if end is None:
                    return None
                nxt = end
            if kind == ord("|"):  # an attribute annotates the value that follows it
                return self.skip(nxt, depth + 1)
            return nxt
        raise CodecError(f"unknown RESP type byte {kind:#04x}", pos)


class RedisCodec(Codec):
    name = "redis"
    multiplexing = False

    def decode(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        if not buffer:
            return DecodeStatus.WAIT_FOR_DATA
        reader = _Reader(buffer, self.max_message_bytes)
        if self.direction is Direction.REQUEST and buffer[0] != ord("*"):
            return self._decode_inline(reader, buffer, metadata)
        end = reader.skip(0)
        if end is None:
            self.check_size(len(buffer))
            return DecodeStatus.WAIT_FOR_DATA
        self.check_size(end)
        if self.direction is Direction.REQUEST:
            self._read_command(reader, metadata)
        else:
            kind = buffer[0]
            metadata["message_type"] = MessageType.STREAM_DATA if kind == ord(">") else MessageType.RESPONSE
            is_error = kind in (ord("-"), ord("!"))
            metadata["response_status"] = ResponseStatus.ERROR if is_error else ResponseStatus.SUCCESS
        metadata.frame = take(buffer, end)
        return DecodeStatus.DONE

    def _read_command(self, reader: _Reader, metadata: Metadata) -> None:
        count, pos = reader.number(1)  # type: ignore[misc]  # the whole value is there
        args: list[str] = []
        for _ in range(min(count, 2)):
            if reader.buf[pos] != ord("$"):
                raise CodecError("a Redis command must be an array of bulk strings", pos)
            size, pos = reader.number(pos + 1)  # type: ignore[misc]
            args.append(reader.buf[pos:pos + max(size, 0)].decode("utf-8", "replace"))
            pos += max(size, 0) + 2
        self._fill(metadata, args)

    def _decode_inline(self, reader: _Reader, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        found = reader.line(0)
        if found is None:
            self.check_size(len(buffer))
            return DecodeStatus.WAIT_FOR_DATA
        text, end = found
        self.check_size(end)
        self._fill(metadata, text.decode("utf-8", "replace").split()[:2] or [""])
        metadata.frame = take(buffer, end)
        return DecodeStatus.DONE

    @staticmethod
    def _fill(metadata: Metadata, args: list[str]) -> None:
        command = args[0].upper() if args else ""
        # Pub/sub turns the connection into a push stream: marked as one, the proxy refuses it.
        metadata["message_type"] = MessageType.STREAM_INIT if command in PUBSUB else MessageType.REQUEST
        metadata["command"] = command
        metadata["method"] = command
        metadata["service"] = "redis"
        if command in SESSION:
            metadata["session"] = True
        if len(args) > 1 and command not in _NO_KEY:
            metadata["key"] = args[1]

    def encode(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray) -> None:
        if mutation:
            self.mutations_dropped += 1
        if metadata.frame:
            buffer += metadata.frame
        elif metadata.get("message_type") is MessageType.ERROR:
            buffer += b"-ERR " + str(metadata.get("message", "error")).encode() + b"\r\n"
        else:
            raise ValueError("a Redis message can only be forwarded, not made from metadata alone")

    def on_error(self, metadata: Metadata, error: ProxyError, buffer: bytearray) -> None:
        text = _MESSAGES.get(error.kind, "error")
        detail = error.message.replace("\r", " ").replace("\n", " ")
        buffer += f"-ERR metaproxy: {text}: {detail}\r\n".encode("utf-8", "replace")
