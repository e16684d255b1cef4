"""Dubbo2 wire constants and the fixed 16-byte header.

Header (big-endian)::

    u16 magic 0xdabb
    u8  flag     0x80 request, 0x40 two-way, 0x20 event, low 5 bits: serialization id (hessian2 = 2)
    u8  status   responses only: 20 OK, 30/31 timeouts, 40 bad request, 50 bad response,
                 60 service not found, 70 service error, 80 server error, 90 client error,
                 100 server thread pool exhausted
    u64 request id
    u32 body length

Kept apart from the codec so tests, tools and the test provider's framing can
share the numbers without importing the codec.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from metaproxy.message import ErrorType

HEADER = struct.Struct(">HBBQI")
HEADER_SIZE = HEADER.size  # 16
MAGIC = 0xDABB
ID_OFFSET = 4
LENGTH_OFFSET = 12

FLAG_REQUEST = 0x80
FLAG_TWOWAY = 0x40
FLAG_EVENT = 0x20
SERIALIZATION_MASK = 0x1F
HESSIAN2 = 2

OK = 20
CLIENT_TIMEOUT = 30
SERVER_TIMEOUT = 31
BAD_REQUEST = 40
BAD_RESPONSE = 50
SERVICE_NOT_FOUND = 60
SERVICE_ERROR = 70
SERVER_ERROR = 80
CLIENT_ERROR = 90
SERVER_THREADPOOL_EXHAUSTED = 100

# Result flags: the first value of an OK response body.
RESPONSE_WITH_EXCEPTION = 0
RESPONSE_VALUE = 1
RESPONSE_NULL_VALUE = 2
RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS = 3
RESPONSE_VALUE_WITH_ATTACHMENTS = 4
RESPONSE_NULL_VALUE_WITH_ATTACHMENTS = 5
WITH_ATTACHMENTS = 3  # flag + 3 is the same outcome with an attachment map after it

#: The Dubbo status a local reply carries, by why the proxy answers itself.
ERROR_STATUS = {
    ErrorType.ROUTE_NOT_FOUND: SERVICE_NOT_FOUND,
    ErrorType.CLUSTER_NOT_FOUND: SERVICE_NOT_FOUND,
    ErrorType.TIMEOUT: SERVER_TIMEOUT,
    ErrorType.OVER_LIMIT: SERVER_THREADPOOL_EXHAUSTED,
    ErrorType.BAD_RESPONSE: BAD_RESPONSE,
}


def error_status(kind: ErrorType) -> int:
    """Dubbo status for a local reply of this kind (SERVICE_ERROR when nothing closer exists)."""
    return ERROR_STATUS.get(kind, SERVICE_ERROR)


def int_version(version: str) -> int:
    """Dubbo's numeric form of a protocol version: '2.0.2' -> 2000200 (two digits per part, four parts)."""
    parts = version.split(".")[:4]
    parts += ["0"] * (4 - len(parts))
    total = 0
    for part in parts:
        digits = "".join(ch for ch in part if ch.isdigit())[:2] or "0"
        total = total * 100 + int(digits)
    return total


@lru_cache(maxsize=64)
def supports_response_attachments(version: str | None) -> bool:
    """Whether a client speaking this Dubbo protocol version reads the *_WITH_ATTACHMENTS flags.

    Same rule as Dubbo's own provider: protocol versions 2.0.2 up to 2.0.99.
    """
    if not version:
        return False
    return 2000200 <= int_version(version) <= 2009900
