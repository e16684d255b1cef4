"""Shared pieces of the Thrift wire formats: type ids, message types, and the reader errors.

The protocol readers (binary.py, compact.py) walk bytes inside ``[pos, end)``
of a ``bytearray``. Running past ``end`` raises :class:`Short` with how many
bytes the walk needed; the codec turns that into WAIT_FOR_DATA on an
unframed stream (the message is not all here yet) or into a CodecError inside
a frame (the frame is truncated). Malformed bytes raise CodecError directly.
"""

from __future__ import annotations

from metaproxy.codec import CodecError

# Message types (TMessageType).
CALL, REPLY, EXCEPTION, ONEWAY = 1, 2, 3, 4

# TApplicationException type codes (the ones the proxy writes).
APP_UNKNOWN_METHOD = 1
APP_INTERNAL_ERROR = 6

#: Deepest nesting of structs/containers the skipper follows; deeper is treated as garbage.
MAX_DEPTH = 64


class Short(Exception):
    """The walk needs bytes up to ``needed`` (an absolute offset) that are not there."""

    __slots__ = ("needed",)

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class MessageHead:
    """What a protocol reader found in a message header."""

    __slots__ = ("body_pos", "mtype", "name", "seqid", "seqid_end", "seqid_pos", "strict")

    def __init__(self, name: str, mtype: int, seqid: int, seqid_pos: int, seqid_end: int,
                 body_pos: int, strict: bool) -> None:
        self.name = name
        self.mtype = mtype
        self.seqid = seqid
        self.seqid_pos = seqid_pos  # offset of the seqid field (to patch it)
        self.seqid_end = seqid_end  # first byte after it (compact varints change length)
        self.body_pos = body_pos  # first byte of the args/result struct
        self.strict = strict  # binary: versioned header; compact: always True


def decode_name(raw: bytes | bytearray, pos: int) -> str:
    """Method names are UTF-8; anything else is garbage, not a message."""
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("method name is not valid UTF-8", pos) from None


def check_mtype(mtype: int, pos: int) -> int:
    if mtype not in (CALL, REPLY, EXCEPTION, ONEWAY):
        raise CodecError(f"unknown Thrift message type {mtype}", pos)
    return mtype
