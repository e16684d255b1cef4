"""Tell the transport and protocol of a Thrift message from its first bytes (``auto`` options).

Every Thrift dialect starts differently enough:

* ``80 01``            unframed strict binary (the version word)
* ``82``               unframed compact (the protocol id)
* ``LL LL LL LL ...``  a positive length word, i.e. framed; the next bytes say what is inside:
  ``0F FF`` THeader, ``80 01`` strict binary, ``82`` compact, ``00`` lax binary
  (the high byte of the method name length);
* anything else that starts positive is an unframed lax binary message (name length
  then the name's first character, which is never zero for a real method).

Six bytes always suffice, and every real message is longer than six bytes, so
waiting for them never stalls a connection.
"""

from __future__ import annotations

from metaproxy.codec import CodecError

FRAMED, UNFRAMED, HEADER = "framed", "unframed", "header"
BINARY, COMPACT = "binary", "compact"
NEED = 6


def detect_protocol(buf: bytearray, pos: int) -> str:
    """Protocol of the message starting at ``pos`` (at least 2 bytes must be there)."""
    first = buf[pos]
    if first == 0x80:
        if buf[pos + 1] != 0x01:
            raise CodecError(f"bytes {first:02x} {buf[pos + 1]:02x} are not a binary protocol version", pos)
        return BINARY
    if first == 0x82:
        return COMPACT
    if first & 0x80:
        raise CodecError(f"byte {first:#04x} starts no Thrift binary or compact message", pos)
    return BINARY  # lax binary: a non-negative name length


def detect(buf: bytearray) -> tuple[str, str] | None:
    """(transport, protocol) of the message at the front of ``buf``; None: need more bytes.

    For THeader the protocol is read later from the header, and "" is returned for it.
    """
    if len(buf) < 2:
        return None
    if buf[0] & 0x80:
        return UNFRAMED, detect_protocol(buf, 0)
    if len(buf) < NEED:
        return None
    if buf[4] == 0x0F and buf[5] == 0xFF:
        return HEADER, ""
    if buf[4] in (0x80, 0x82) or buf[4] == 0:
        return FRAMED, detect_protocol(buf, 4)
    return UNFRAMED, BINARY
