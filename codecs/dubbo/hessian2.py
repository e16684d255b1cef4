"""A Hessian2 reader that skips values without building them, and the few writers Dubbo needs.

Why skip instead of decode: a proxy routes on the Dubbo header fields and the
attachment map; the call arguments in between are forwarded as the original
bytes. Walking them only to find where they end must be cheap and must never
build Python objects, whatever a client sends.

Grammar (Hessian 2.0 serialization protocol, by first octet):

=========  =============================================================
0x00-0x1f  string, 0-31 chars          0x30-0x33  string, 0-1023 chars
0x20-0x2f  binary, 0-15 bytes          0x34-0x37  binary, 0-1023 bytes
0x38-0x3f  long, 3 octets              'A' / 'B'  binary chunk / final chunk
'C'        class definition, then a value
'D'        double, 8 octets            'F' / 'T'  false / true
'H' / 'M'  untyped / typed map ... 'Z' 'I'        int, 4 octets
'J' / 'K'  date in ms (8) / minutes (4)  'L'      long, 8 octets
'N'        null                        'O'        object, class index int
'Q'        reference, int              'R' / 'S'  string chunk / final chunk
'U' / 'W'  typed / untyped variable list ... 'Z'
'V' / 'X'  typed / untyped fixed list with an int length
'Y'        long as 4 octets            0x5b-0x5f  double 0.0, 1.0, 1, 2, 4 octets
0x60-0x6f  object, class index 0-15    0x70-0x77  typed fixed list, 0-7 items
0x78-0x7f  untyped fixed list, 0-7     0x80-0xbf  int, 1 octet
0xc0-0xcf  int, 2 octets               0xd0-0xd7  int, 3 octets
0xd8-0xef  long, 1 octet               0xf0-0xff  long, 2 octets
=========  =============================================================

String lengths count UTF-16 code units; the bytes are UTF-8 of each unit (a
character outside the BMP is two 3-byte surrogates, as Java writes it).

Every reader works on ``bytes`` that end where the Dubbo body ends, so running
off the end raises IndexError; :class:`Hessian2Reader` turns every such
failure into :class:`HessianError`.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["COMPLEX", "Hessian2Reader", "HessianError", "read_plain", "write_int", "write_null", "write_string"]

MAX_DEPTH = 200
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_I16 = struct.Struct(">h")
_I8 = struct.Struct(">b")


class HessianError(ValueError):
    """Bytes that are not valid Hessian2; ``offset`` is where the reader was."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at body offset {offset})")
        self.offset = offset


class _Complex:
    """Marker returned by :meth:`Hessian2Reader.read_scalar` for a list, map, object or binary."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "COMPLEX"


COMPLEX = _Complex()


def _skip_utf16_units(buf: bytes, pos: int, units: int) -> int:
    """End offset of ``units`` UTF-16 code units written as (CESU-)UTF-8 from ``pos``."""
    if units == 0:
        return pos
    end = pos + units
    if end <= len(buf) and buf[pos:end].isascii():
        return end
    while units > 0:
        lead = buf[pos]
        if lead < 0x80:
            pos += 1
        elif lead < 0xC0:
            raise HessianError(f"byte 0x{lead:02x} cannot start a UTF-8 character", pos)
        elif lead < 0xE0:
            pos += 2
        elif lead < 0xF0:
            pos += 3
        else:
            pos += 4  # a 4-byte sequence is one supplementary character: two UTF-16 units
            units -= 1
        units -= 1
    if pos > len(buf):
        raise IndexError(pos)
    return pos


def _decode_text(data: bytes) -> str:
    """UTF-8 text where surrogate pairs may be written as two 3-byte sequences (Java's way)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")  # not text at all: keep what can be shown
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def read_plain(buf: bytes, pos: int, count: int, values: list[str | None], ends: list[int]) -> int:
    """Fast path: read up to ``count`` values that are nulls or one-chunk ASCII strings.

    Dubbo's body header fields (versions, names, the parameter descriptor) and its
    attachment pairs are exactly that, and reading them here in one loop saves
    the reader's per-value dispatch and calls. Each
    value is appended to ``values`` and its end, counted from ``pos``, to ``ends``.
    The loop stops at the first other value (a chunked, long or non-ASCII string,
    a number, a map's 'Z'...) or where the bytes run out, and returns its offset:
    the caller reads from there with :class:`Hessian2Reader`, which handles every
    form and raises the errors. Plain values define no classes, so a reader
    started after them is in the same state as one that read them.
    """
    size = len(buf)
    origin = pos
    for _ in range(count):
        if pos >= size:
            break
        tag = buf[pos]
        if tag < 0x20:  # 0-31 chars: the tag is the length
            end = pos + 1 + tag
            data = buf[pos + 1:end]
        elif 0x30 <= tag <= 0x33 and pos + 1 < size:  # 0-1023 chars: two-byte length
            end = pos + 2 + (((tag - 0x30) << 8) | buf[pos + 1])
            data = buf[pos + 2:end]
        elif tag == 0x4E:  # 'N' null
            pos += 1
            values.append(None)
            ends.append(pos - origin)
            continue
        else:
            break
        # The length counts UTF-16 units: as many bytes only when every one is ASCII.
        if end > size or not data.isascii():
            break
        pos = end
        values.append(data.decode("ascii"))
        ends.append(end - origin)
    return pos


def skip_plain(buf: bytes, pos: int, count: int) -> tuple[int, int]:
    """Fast path: skip up to ``count`` values that are short ASCII strings, nulls, booleans or one-octet ints.

    Those are the usual arguments and results of a call; skipping them here
    saves making a reader. Returns the offset after the skipped values and how
    many were skipped; the caller skips the rest with :class:`Hessian2Reader`
    from there (plain values define no classes, so that reader is in the same
    state as one that read them). Nothing past the end of ``buf`` is skipped.
    """
    size = len(buf)
    for done in range(count):
        if pos >= size:
            return pos, done
        tag = buf[pos]
        if tag < 0x20:  # a string of 0-31 UTF-16 units: as many bytes when all are ASCII
            end = pos + 1 + tag
            if end > size or not buf[pos + 1:end].isascii():
                return pos, done
            pos = end
        elif 0x80 <= tag <= 0xBF or tag == 0x4E or tag == 0x54 or tag == 0x46:  # int -16..47, null, true, false
            pos += 1
        else:
            return pos, done
    return pos, count


class Hessian2Reader:
    """Walks one Hessian2 stream (a Dubbo body). Class definitions persist across values, as in Java."""

    __slots__ = ("_class_fields", "buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        #: number of fields of each class definition seen so far, in order
        self._class_fields: list[int] = []

    # -- public -------------------------------------------------------------------
    def skip(self) -> int:
        """Skip one value (a class definition counts with the value after it); return the new offset."""
        pos = self.pos
        buf = self.buf
        if pos < len(buf) and buf[pos] < 0x20:  # a short ASCII string (the usual argument or result):
            end = pos + 1 + buf[pos]            # one byte per character, no walk, no call
            if end <= len(buf) and buf[pos + 1:end].isascii():
                self.pos = end
                return end
        try:
            self.pos = self._skip(self.pos, 0)
        except (IndexError, struct.error):
            raise HessianError("value runs past the end of the body", self.pos) from None
        except RecursionError:
            raise HessianError("values nested too deeply", self.pos) from None
        if self.pos > len(self.buf):
            raise HessianError("value runs past the end of the body", self.pos)
        return self.pos

    def read_string(self, allow_null: bool = True) -> str | None:
        """Read a string (or null if allowed), the form Dubbo uses for its body header fields."""
        start = self.pos
        buf = self.buf
        try:
            tag = buf[start]
            # fast path: a one-chunk string, almost always ASCII (names, versions, tags)
            if tag < 0x20:
                first, end = start + 1, start + 1 + tag
            elif 0x30 <= tag <= 0x33:
                first = start + 2
                end = first + (((tag - 0x30) << 8) | buf[start + 1])
            else:
                end = -1
            if 0 <= end <= len(buf):
                data = buf[first:end]
                if data.isascii():
                    self.pos = end
                    return data.decode("ascii")
            if tag == 0x4E and allow_null:
                self.pos = start + 1
                return None
            if not (tag < 0x20 or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53)):
                raise HessianError(f"expected a string, found tag 0x{tag:02x}", start)
            parts: list[bytes] = []
            self.pos = self._string(start, parts)
        except (IndexError, struct.error):
            raise HessianError("string runs past the end of the body", start) from None
        if self.pos > len(self.buf):
            raise HessianError("string runs past the end of the body", start)
        return _decode_text(b"".join(parts))

    def read_int(self) -> int:
        """Read an int or long in any of its encodings."""
        start = self.pos
        try:
            value, self.pos = self._number(start)
        except (IndexError, struct.error):
            raise HessianError("number runs past the end of the body", start) from None
        if value is None:
            raise HessianError(f"expected an int, found tag 0x{self.buf[start]:02x}", start)
        return value

    def read_scalar(self) -> Any:
        """Read a null, bool, number, date (ms), or string; skip anything else and return COMPLEX.

        Used for attachment keys and values, which routes see as strings.
        """
        start = self.pos
        buf = self.buf
        try:
            tag = buf[start]
            if tag < 0x20 or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53):
                return self.read_string()
            if tag == 0x4E:
                self.pos = start + 1
                return None
            if tag == 0x54 or tag == 0x46:
                self.pos = start + 1
                return tag == 0x54
            value, pos = self._number(start)
            if value is not None:
                self.pos = pos
                return value
            if 0x5B <= tag <= 0x5F or tag == 0x44:
                self.pos = self._skip(start, 0)
                return self._double(start)
            if tag == 0x4A:
                self.pos = start + 9
                return _I64.unpack_from(buf, start + 1)[0]
            if tag == 0x4B:
                self.pos = start + 5
                return _I32.unpack_from(buf, start + 1)[0] * 60000
        except (IndexError, struct.error):
            raise HessianError("value runs past the end of the body", start) from None
        self.skip()
        return COMPLEX

    def peek(self) -> int:
        """The next tag byte, or -1 at the end of the buffer."""
        return self.buf[self.pos] if self.pos < len(self.buf) else -1

    # -- internals ------------------------------------------------------------------
    def _number(self, pos: int) -> tuple[int | None, int]:
        buf = self.buf
        tag = buf[pos]
        if 0x80 <= tag <= 0xBF:
            return tag - 0x90, pos + 1
        if 0xC0 <= tag <= 0xCF:
            return ((tag - 0xC8) << 8) | buf[pos + 1], pos + 2
        if 0xD0 <= tag <= 0xD7:
            return ((tag - 0xD4) << 16) | (buf[pos + 1] << 8) | buf[pos + 2], pos + 3
        if tag == 0x49 or tag == 0x59:
            return _I32.unpack_from(buf, pos + 1)[0], pos + 5
        if 0xD8 <= tag <= 0xEF:
            return tag - 0xE0, pos + 1
        if tag >= 0xF0:
            return ((tag - 0xF8) << 8) | buf[pos + 1], pos + 2
        if 0x38 <= tag <= 0x3F:
            return ((tag - 0x3C) << 16) | (buf[pos + 1] << 8) | buf[pos + 2], pos + 3
        if tag == 0x4C:
            return _I64.unpack_from(buf, pos + 1)[0], pos + 9
        return None, pos

    def _double(self, pos: int) -> float:
        buf = self.buf
        tag = buf[pos]
        if tag == 0x5B:
            return 0.0
        if tag == 0x5C:
            return 1.0
        if tag == 0x5D:
            return float(_I8.unpack_from(buf, pos + 1)[0])
        if tag == 0x5E:
            return float(_I16.unpack_from(buf, pos + 1)[0])
        if tag == 0x5F:
            return _I32.unpack_from(buf, pos + 1)[0] * 0.001
        return _F64.unpack_from(buf, pos + 1)[0]

    def _int_at(self, pos: int) -> tuple[int, int]:
        value, end = self._number(pos)
        if value is None:
            raise HessianError(f"expected an int, found tag 0x{self.buf[pos]:02x}", pos)
        return value, end

    def _string(self, pos: int, parts: list[bytes] | None) -> int:
        """Skip (and collect into ``parts`` when given) a possibly chunked string starting at ``pos``."""
        buf = self.buf
        while True:
            tag = buf[pos]
            if tag < 0x20:
                units, pos = tag, pos + 1
                final = True
            elif 0x30 <= tag <= 0x33:
                units, pos = ((tag - 0x30) << 8) | buf[pos + 1], pos + 2
                final = True
            elif tag == 0x53 or tag == 0x52:
                units, pos = _U16.unpack_from(buf, pos + 1)[0], pos + 3
                final = tag == 0x53
            else:
                raise HessianError(f"expected a string chunk, found tag 0x{tag:02x}", pos)
            end = pos + units
            # ASCII (the usual case): one byte per unit, no walk. Otherwise walk the UTF-8.
            if end > len(buf) or not buf[pos:end].isascii():
                end = _skip_utf16_units(buf, pos, units)
            if parts is not None:
                parts.append(buf[pos:end])
            pos = end
            if final:
                return pos

    def _type(self, pos: int) -> int:
        """Skip a list/map type: a string, or an int naming an earlier type."""
        tag = self.buf[pos]
        if tag < 0x20 or 0x30 <= tag <= 0x33 or tag == 0x52 or tag == 0x53:
            return self._string(pos, None)
        return self._int_at(pos)[1]

    def _skip(self, pos: int, depth: int) -> int:
        buf = self.buf
        tag = buf[pos]
        if tag < 0x20 or 0x30 <= tag <= 0x33 or tag == 0x52 or tag == 0x53:
            return self._string(pos, None)
        if 0x80 <= tag <= 0xBF or 0xD8 <= tag <= 0xEF or tag in (0x4E, 0x54, 0x46, 0x5B, 0x5C):
            return pos + 1
        if 0xC0 <= tag <= 0xCF or tag >= 0xF0 or tag == 0x5D:
            return pos + 2
        if 0xD0 <= tag <= 0xD7 or 0x38 <= tag <= 0x3F or tag == 0x5E:
            return pos + 3
        if tag in (0x49, 0x59, 0x4B, 0x5F):
            return pos + 5
        if tag in (0x4C, 0x44, 0x4A):
            return pos + 9
        if 0x20 <= tag <= 0x2F:
            return pos + 1 + (tag - 0x20)
        if 0x34 <= tag <= 0x37:
            return pos + 2 + (((tag - 0x34) << 8) | buf[pos + 1])
        if tag == 0x41 or tag == 0x42:
            while True:
                size = _U16.unpack_from(buf, pos + 1)[0]
                pos += 3 + size
                if tag == 0x42:
                    return pos
                tag = buf[pos]
                if tag == 0x41 or tag == 0x42:
                    continue
                if 0x20 <= tag <= 0x2F:
                    return pos + 1 + (tag - 0x20)
                if 0x34 <= tag <= 0x37:
                    return pos + 2 + (((tag - 0x34) << 8) | buf[pos + 1])
                raise HessianError(f"expected a binary chunk, found tag 0x{tag:02x}", pos)
        if depth >= MAX_DEPTH:
            raise HessianError(f"values nested deeper than {MAX_DEPTH}", pos)
        depth += 1
        if tag == 0x51:  # 'Q' reference
            return self._int_at(pos + 1)[1]
        if 0x60 <= tag <= 0x6F or tag == 0x4F:
            if tag == 0x4F:
                index, pos = self._int_at(pos + 1)
            else:
                index, pos = tag - 0x60, pos + 1
            if not 0 <= index < len(self._class_fields):
                raise HessianError(f"object refers to undefined class #{index}", pos)
            for _ in range(self._class_fields[index]):
                pos = self._skip(pos, depth)
            return pos
        if tag == 0x43:  # 'C' class definition, followed by the value that uses it
            pos = self._string(pos + 1, None)
            count, pos = self._int_at(pos)
            if count < 0 or count > len(buf):
                raise HessianError(f"class definition declares {count} fields", pos)
            for _ in range(count):
                pos = self._string(pos, None)
            self._class_fields.append(count)
            return self._skip(pos, depth - 1)
        if tag == 0x48 or tag == 0x4D or tag == 0x55 or tag == 0x57:  # H, M, U, W: items until 'Z'
            pos += 1
            if tag == 0x4D or tag == 0x55:
                pos = self._type(pos)
            while buf[pos] != 0x5A:
                pos = self._skip(pos, depth)
            return pos + 1
        if 0x70 <= tag <= 0x7F or tag == 0x56 or tag == 0x58:
            pos += 1
            if 0x70 <= tag <= 0x77:
                pos, count = self._type(pos), tag - 0x70
            elif tag >= 0x78:
                count = tag - 0x78
            else:
                if tag == 0x56:
                    pos = self._type(pos)
                count, pos = self._int_at(pos)
                if count < 0 or count > len(buf):
                    raise HessianError(f"list declares {count} items", pos)
            for _ in range(count):
                pos = self._skip(pos, depth)
            return pos
        raise HessianError(f"tag 0x{tag:02x} does not start a Hessian2 value", pos)


# -- writers ----------------------------------------------------------------------
_CHUNK_UNITS = 0x8000


def write_string(out: bytearray, text: str) -> None:
    """Append ``text`` as a Hessian2 string, chunked when longer than 0x8000 UTF-16 units."""
    units = len(text)
    if not text.isascii() or units > _CHUNK_UNITS:
        _write_string_chunked(out, text)
        return
    if units < 0x20:
        out.append(units)
    elif units < 0x400:
        out.append(0x30 + (units >> 8))
        out.append(units & 0xFF)
    else:
        out.append(0x53)
        out += _U16.pack(units)
    out += text.encode("ascii")


def _write_string_chunked(out: bytearray, text: str) -> None:
    """General path: non-ASCII or long text, written as 'R' chunks then one final chunk."""
    raw = text.encode("utf-16-be")
    codes = struct.unpack(f">{len(raw) // 2}H", raw)
    start = 0
    while True:
        stop = min(start + _CHUNK_UNITS, len(codes))
        if stop < len(codes) and 0xD800 <= codes[stop - 1] <= 0xDBFF:
            stop -= 1  # never split a surrogate pair across chunks
        chunk = "".join(chr(c) for c in codes[start:stop]).encode("utf-8", "surrogatepass")
        units = stop - start
        final = stop == len(codes)
        if final and units < 0x20:
            out.append(units)
        elif final and units < 0x400:
            out.append(0x30 + (units >> 8))
            out.append(units & 0xFF)
        else:
            out.append(0x53 if final else 0x52)
            out += _U16.pack(units)
        out += chunk
        if final:
            return
        start = stop


def write_int(out: bytearray, value: int) -> None:
    """Append a 32-bit int in its most compact form."""
    if -0x10 <= value <= 0x2F:
        out.append(0x90 + value)
    elif -0x800 <= value <= 0x7FF:
        out.append(0xC8 + (value >> 8))
        out.append(value & 0xFF)
    elif -0x40000 <= value <= 0x3FFFF:
        out.append(0xD4 + (value >> 16))
        out += (value & 0xFFFF).to_bytes(2, "big")
    else:
        out.append(0x49)
        out += _I32.pack(value)


def write_null(out: bytearray) -> None:
    out.append(0x4E)
