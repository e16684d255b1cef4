"""The codec contract: everything a protocol author implements, and how codecs are found.

A codec is sans-IO (the h11 shape): it never touches a socket. ``decode`` gets
a ``bytearray`` of received bytes, and either consumes exactly one message from
its front and fills Metadata (DONE) or leaves it untouched (WAIT_FOR_DATA).
``encode`` appends the bytes of one message to an output ``bytearray``.
``on_error`` appends the protocol's own error reply for a request.

The framework rewrites ``metadata["request_id"]`` before encoding a request
upstream and before encoding its response downstream: ``encode`` must always
write the request id found in the metadata (patch it into the original frame).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from metaproxy.message import ErrorType, MessageType, Metadata, Mutation, ProxyError

__all__ = [
    "Codec",
    "CodecError",
    "DONE",
    "DecodeStatus",
    "WAIT_FOR_DATA",
    "Direction",
    "ErrorType",
    "MessageType",
    "Metadata",
    "Mutation",
    "ProxyError",
    "load_codec_class",
    "take",
]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class DecodeStatus(Enum):
    DONE = "done"
    WAIT_FOR_DATA = "wait_for_data"


# The two results as module constants, for hot paths: on Python 3.11 reading an enum member
# through its class costs ~150 ns (the enum metaclass's ``__getattr__`` puts every class
# attribute read on a slow path), a module global ~15 ns. ``return DONE`` in a codec.
DONE = DecodeStatus.DONE
WAIT_FOR_DATA = DecodeStatus.WAIT_FOR_DATA


class Direction(str, Enum):
    """Which messages a codec instance decodes: requests (downstream side) or responses."""

    REQUEST = "request"
    RESPONSE = "response"


class CodecError(Exception):
    """Bytes that are not a valid message. The connection that sent them is closed.

    ``offset`` (when known) is where in the buffer the problem was found, for
    ``metaproxy decode`` and the conformance kit's reports.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (metaproxy/compiled.py), yet every codec subclasses it
class Codec:
    """Base class of every protocol codec. One instance belongs to one connection."""

    #: The protocol name used in config (``protocol: {codec: NAME}``).
    name: ClassVar[str] = ""
    #: True when responses carry the request id, so many requests can share
    #: an upstream connection and the id can be rewritten. False means
    #: responses come back strictly in order: one request per connection at a time.
    multiplexing: ClassVar[bool] = True

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        direction: Direction = Direction.REQUEST,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.options: Mapping[str, Any] = options or {}
        self.direction = direction
        self.max_message_bytes = max_message_bytes

    # -- configuration ---------------------------------------------------
    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        """Problems with ``options``, each as ``"key: what is wrong"``. Called at config load."""
        if options:
            return [f"{key}: unknown option" for key in options]
        return []

    # -- the three operations ---------------------------------------------
    def decode(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        """Consume one message from the front of ``buffer`` into ``metadata``."""
        raise NotImplementedError

    def encode(self, metadata: Metadata, mutation: Mapping[str, str], buffer: bytearray) -> None:
        """Append the bytes of the message ``metadata`` describes, with ``mutation`` applied."""
        raise NotImplementedError

    def on_error(self, metadata: Metadata, error: ProxyError, buffer: bytearray) -> None:
        """Append the protocol's error reply to the request ``metadata``."""
        raise NotImplementedError

    # -- optional ----------------------------------------------------------
    def heartbeat_reply(self, metadata: Metadata, buffer: bytearray) -> None:
        """Append the answer to a heartbeat request. Default: no answer."""

    def make_heartbeat(self, request_id: int, buffer: bytearray) -> bool:
        """Append a heartbeat request for active health checks; False if the protocol has none."""
        return False

    def make_request(self, request_id: int, buffer: bytearray) -> bool:
        """Append a minimal request (for tests/tools); False if the codec cannot."""
        return False

    def decode_passthrough(self, buffer: bytearray, metadata: Metadata) -> DecodeStatus:
        """Decode an upstream's message that the proxy will only pass back: as little as that needs.

        When nothing on a listener reads a response beyond its status (no
        response filters, no response mutation on the route, no observer of
        response metadata), the upstream connection decodes with this instead
        of :meth:`decode`. It must consume exactly what ``decode`` consumes and
        set at least ``request_id``, ``message_type`` and (responses and errors)
        ``response_status``, each as ``decode`` would; any other key it sets
        must have ``decode``'s value too. ``frame`` and ``codec_state`` must let
        :meth:`encode` write, for any request id and any mutation, the bytes it
        writes after ``decode`` (an encoder may re-read the frame when a
        mutation needs more than the passthrough read). Heartbeats must still
        decode as heartbeats. The conformance kit checks all of this.

        Why: reading a reply's headers, names and values cost about 5% of a
        proxied request (docs/performance.md), for Metadata nobody looked at.
        The default is the full decode.
        """
        return self.decode(buffer, metadata)

    def decoded_state(self, frame: bytes) -> Any:
        """The ``codec_state`` a whole :meth:`decode` of ``frame`` gives: for an ``encode`` that needs
        more than ``decode_passthrough`` read (a mutation of a passed-through reply)."""
        metadata = Metadata()
        self.decode(bytearray(frame), metadata)
        return metadata.codec_state

    #: Mutations this connection could not carry (counted into stats).
    mutations_dropped: int = 0

    # -- helpers for subclasses -------------------------------------------
    def check_size(self, size: int, offset: int = 0) -> None:
        """Refuse a message that declares more than ``max_message_bytes``."""
        if size > self.max_message_bytes:
            raise CodecError(
                f"message of {size} bytes exceeds max_message_bytes {self.max_message_bytes}",
                offset,
            )


def take(buffer: bytearray, size: int) -> bytes:
    """Remove and return the first ``size`` bytes of ``buffer`` (the frame a decoder read)."""
    if size == len(buffer):  # the usual case: the read held exactly one message
        frame = bytes(buffer)
        buffer.clear()
        return frame
    frame = bytes(buffer[:size])
    del buffer[:size]
    return frame


_BUILTIN = {
    "tinyrpc": "metaproxy_codecs.tinyrpc:TinyRpcCodec",
    "thrift": "metaproxy_codecs.thrift:ThriftCodec",
    "dubbo": "metaproxy_codecs.dubbo:DubboCodec",
    "redis": "metaproxy_codecs.redis:RedisCodec",
}


def load_codec_class(spec: str) -> type[Codec]:
    """Find a codec by entry-point name (group ``metaproxy.codecs``) or ``module.path:Class``.

    Raises LookupError with a readable message when it cannot.
    """
    return _load(spec, "metaproxy.codecs", _BUILTIN, Codec)  # type: ignore[return-value]


def _load(spec: str, group: str, builtin: Mapping[str, str], base: type) -> type:
    target = None
    if ":" in spec:
        target = spec
    else:
        for ep in entry_points(group=group):
            if ep.name == spec:
                try:
                    cls = ep.load()
                except Exception as exc:  # a broken plugin must say which one
                    raise LookupError(f"{group} entry point {spec!r} failed to load: {exc}") from exc
                break
        else:
            target = builtin.get(spec)
            if target is None:
                raise LookupError(f"no {group} entry point named {spec!r}")
    if target is not None:
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"cannot load {target!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise LookupError(f"{spec!r} is not a {base.__name__} subclass")
    return cls
