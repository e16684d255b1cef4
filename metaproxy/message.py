"""The data every layer shares: Metadata, Mutation and the small enums around them.

This module is part of the extension contract (with codec.py and chain.py): it
imports nothing from the rest of the framework, so a codec or filter author can
read it alone.

Metadata is what a decoder read from one message; Mutation is what filters want
written back into it. Python filters may read typed values (``request_id`` is an
int, ``message_type`` a MessageType); Lua and WASM filters see every value as a
string through :meth:`Metadata.get_str`, so the three languages agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any

from mypy_extensions import mypyc_attr


class MessageType(str, Enum):
    """What a decoded message is. The values are the strings filters see."""

    REQUEST = "request"
    RESPONSE = "response"
    ONEWAY = "oneway"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    STREAM_INIT = "stream_init"
    STREAM_DATA = "stream_data"
    STREAM_CLOSE = "stream_close"

    def __str__(self) -> str:
        return self.value


class ResponseStatus(str, Enum):
    """Outcome a codec reads from a response: the app answered, or it failed."""

    SUCCESS = "success"
    ERROR = "error"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class ErrorType(str, Enum):
    """Why the proxy answers a request itself. Codecs map each to their own error."""

    ROUTE_NOT_FOUND = "route_not_found"
    CLUSTER_NOT_FOUND = "cluster_not_found"
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
    TIMEOUT = "timeout"
    OVER_LIMIT = "over_limit"
    BAD_RESPONSE = "bad_response"
    PERMISSION_DENIED = "permission_denied"
    UNSPECIFIED = "unspecified"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: str) -> ErrorType:
        """Accept the value in any case (``over_limit``, ``OVER_LIMIT``); unknown -> ValueError."""
        try:
            return cls(name.lower())
        except ValueError:
            known = ", ".join(e.value for e in cls)
            raise ValueError(f"unknown error kind {name!r} (one of: {known})") from None


class ProxyError(Exception):
    """A failure that ends in a local reply: a value with a kind, not a bare exception.

    Filters return or raise it to stop the chain; the router raises it for no
    route, timeouts and so on; the server hands it to ``codec.on_error`` which
    writes the protocol's own error message.
    """

    def __init__(self, kind: ErrorType, message: str = "", flags: str = "") -> None:
        super().__init__(message or kind.value)
        self.kind = kind
        self.message = message or kind.value
        #: Envoy-style response flag for access logs (NR, UT, UO, UH, UF, ...).
        self.flags = flags

    def __repr__(self) -> str:
        return f"ProxyError({self.kind.value}, {self.message!r})"

    @classmethod
    def internal(cls, exc: BaseException) -> ProxyError:
        """The error that answers a request a bug failed (a filter's, a codec's, an observer's): its
        type only, the details go to the log."""
        return cls(ErrorType.UNSPECIFIED, f"internal error: {type(exc).__name__}")


# Compiled (metaproxy/compiled.py), it stays a Python class: a native dict subclass would set its two
# defaults in an __init__, and measured it was slower to make (222 vs 93 ns) and to read (79 vs 51 ns).
@mypyc_attr(native_class=False)
class Metadata(dict):
    """Key -> value read from one message.

    Besides its keys it carries two attributes that are not keys:

    * ``frame``: the original bytes of the whole message, so an encoder can
      forward what it did not change;
    * ``codec_state``: anything the codec that decoded it wants to remember
      (offsets of fields it may patch on encode). Other layers never read it.

    Both default at class level rather than in an ``__init__``: two are made
    per request, and a Python-level constructor cost three times the dict's.
    """

    frame: bytes = b""
    codec_state: Any = None

    def get_str(self, key: str, default: str | None = None) -> str | None:
        """The value as Lua and WASM filters see it: always a string (or default)."""
        value = self.get(key)
        if value is None:
            return default
        return as_str(value)

    def str_items(self) -> Iterator[tuple[str, str]]:
        """Every key with its string value, in insertion order."""
        for key, value in self.items():
            if value is not None:
                yield key, as_str(value)

    @property
    def request_id(self) -> Any:
        return self.get("request_id")

    @property
    def message_type(self) -> MessageType | None:
        return self.get("message_type")


@mypyc_attr(native_class=False)  # a dict subclass with its own __setitem__: a Python class, compiled
class Mutation(dict):
    """Ordered key -> string map that an encoder writes into the message.

    Dubbo writes it as attachments, Thrift as THeader headers, tinyrpc as
    headers. A codec whose wire format cannot carry it counts it as dropped.
    """

    __slots__ = ()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(str(key), as_str(value))


def as_str(value: Any) -> str:
    """One canonical string form for a metadata value, shared by Lua, WASM and config matchers."""
    if isinstance(value, str):
        return value if type(value) is str else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
