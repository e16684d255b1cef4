"""Write the seed corpus: valid frames from each protocol's real peer library (run once; files are committed).

A corpus file is ``selector byte, split byte, message bytes`` (tests/fuzz/target.py).
Usage: ``python -m tests.fuzz.atheris_targets.seeds tests/fuzz/corpus``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dubbo_ssl.codec.encoder import Request as DubboRequest
from thrift.Thrift import TMessageType, TType

from metaproxy.message import MessageType, Metadata, ResponseStatus
from tests.fuzz.messages import _serializer, encode_message, thrift_frame

REQUEST, RESPONSE = 1, 0  # selector bit 0


def _thrift() -> list[tuple[int, bytes]]:
    fields = [(1, TType.STRING, "hello"), (2, TType.LIST, (TType.I32, [1, 2, 3])),
              (3, TType.STRUCT, [(1, TType.MAP, (TType.STRING, TType.I64, [("a", 1)]))])]
    out = []
    shapes = [(t, p) for t in ("framed", "unframed", "header") for p in ("binary", "compact")]
    for index, (transport, protocol) in enumerate(shapes):
        # index in target._THRIFT_OPTIONS of {transport: this one, protocol: auto}, in selector bits 2+
        selector = (("auto", "framed", "unframed", "header").index(transport) * 3) << 2
        frame = thrift_frame("Svc:echo", TMessageType.CALL, index + 1, fields, transport, protocol,
                             {"x-user": "u"} if transport == "header" else None)
        out.append((selector | REQUEST, frame))
        reply = thrift_frame("echo", TMessageType.REPLY, index + 1, [(0, TType.STRING, "ok")], transport, protocol)
        out.append((selector | RESPONSE, reply))
    return out


def _dubbo() -> list[tuple[int, bytes]]:
    req = DubboRequest({"dubbo_version": "2.4.10", "version": "1.0.0", "method": "sayHello",
                        "path": "org.example.Greeter", "arguments": ["world", 7, [1, 2]], "group": "g",
                        "context": {"x-user": "u"}})
    req.invoke_id = 42
    enc = req._encode_single_value
    body = bytes(b & 0xFF for b in [*enc(4), *enc("hi"), ord("H"), *enc("k"), *enc("v"), ord("Z")])
    response = bytes.fromhex("dabb0214000000000000002a") + len(body).to_bytes(4, "big") + body
    return [(REQUEST, bytes(req.encode())), (RESPONSE, response)]


def _redis() -> list[tuple[int, bytes]]:
    return [(REQUEST, b"".join(_serializer.pack("SET", "user:1", "alice"))), (REQUEST, b"PING\r\n"),
            (RESPONSE, b"*3\r\n$1\r\na\r\n%1\r\n+k\r\n:1\r\n|1\r\n+ttl\r\n:3\r\n,3.5\r\n"),
            (RESPONSE, b"-ERR nope\r\n")]


def _tinyrpc() -> list[tuple[int, bytes]]:
    req = Metadata(request_id=5, message_type=MessageType.REQUEST, service="demo", method="ping")
    req["x-user"] = "u"
    resp = Metadata(request_id=5, message_type=MessageType.RESPONSE, service="demo", method="ping",
                    response_status=ResponseStatus.SUCCESS)
    return [(REQUEST, encode_message(req, b"body")), (RESPONSE, encode_message(resp, b"ok"))]


SEEDS = {"thrift": _thrift, "dubbo": _dubbo, "redis": _redis, "tinyrpc": _tinyrpc}


def main(root: str) -> None:
    for codec, make in SEEDS.items():
        folder = Path(root) / codec
        folder.mkdir(parents=True, exist_ok=True)
        for index, (selector, frame) in enumerate(make()):
            (folder / f"seed-{index:02d}").write_bytes(bytes([selector, len(frame) // 2 & 0xFF]) + frame + frame)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus")
