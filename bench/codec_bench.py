"""Codec micro-benchmark: CPU µs per decode and encode of one request and one response.

The codec is one of the largest per-request costs on the proxy's hot path, and its
cost is easy to measure alone: this times ``decode`` of a request and of a
response frame and ``encode`` of each back (with the request id rewritten, as
the proxy does on every message), for each codec. The frames are the bytes the
benchmark peers send (bench/rpc_load.c requests, bench/rpc_server.c responses),
written here as literals so the script needs nothing but the project.

Times are CPU time (``time.process_time``), the best of ``--repeat`` runs of
``N`` operations each, because the machine is shared and wall-clock is noisy.
A decode includes making the input ``bytearray`` and a fresh ``Metadata``, as the
server does per message.

    .venv/bin/python bench/codec_bench.py [CODECS] [N] [--repeat R]
    .venv/bin/python bench/codec_bench.py thrift,dubbo 50000
"""

from __future__ import annotations

import argparse
import itertools
import struct
import time
from collections.abc import Callable
from typing import Any

from metaproxy.codec import DONE, Codec, Direction
from metaproxy.message import Metadata, Mutation


def _tinyrpc() -> type[Codec]:
    from metaproxy_codecs.tinyrpc import TinyRpcCodec
    return TinyRpcCodec


def _thrift() -> type[Codec]:
    from metaproxy_codecs.thrift import ThriftCodec
    return ThriftCodec


def _dubbo() -> type[Codec]:
    from metaproxy_codecs.dubbo import DubboCodec
    return DubboCodec


def _redis() -> type[Codec]:
    from metaproxy_codecs.redis import RedisCodec
    return RedisCodec


def _hessian_str(text: str) -> bytes:
    """A short ASCII Hessian2 string (what the Dubbo frames below are made of)."""
    assert text.isascii() and len(text) < 32
    return bytes((len(text),)) + text.encode()


def _dubbo_request(method: str, attachments: dict[str, str], request_id: int = 0x100) -> bytes:
    """A two-way Dubbo request for bench.EchoService with one 16-char String argument."""
    body = b"".join(_hessian_str(t) for t in ("2.0.2", "bench.EchoService", "0.0.0", method, "Ljava/lang/String;",
                                              "q" * 16))
    body += b"H" + b"".join(_hessian_str(k) + _hessian_str(v) for k, v in attachments.items()) + b"Z"
    return struct.pack(">HBBQI", 0xDABB, 0xC2, 0, request_id, len(body)) + body


_DUBBO_ATTACHMENTS = {"path": "bench.EchoService", "interface": "bench.EchoService"}

#: name -> (codec class loader, options, request frame(s), response frame). Several request frames
#: are decoded in turn (to defeat per-connection memos); encode uses the first.
CASES: dict[str, tuple[Callable[[], type[Codec]], dict[str, Any], bytes | tuple[bytes, ...], bytes]] = {
    # rpc_load: service "bench", method "ping", no headers, 16-byte body; rpc_server: 8-byte body.
    "tinyrpc": (_tinyrpc, {},
                bytes.fromhex("0000002b 01010000 0000000000000100 0005") + b"bench\x00\x04ping\x00\x00" + b"q" * 16,
                bytes.fromhex("00000023 01030000 0000000000000100 0005") + b"bench\x00\x04ping\x00\x00" + b"x" * 8),
    # Framed strict binary: CALL "ping" seqid 1 with empty args; REPLY "ping" with an empty (void) result.
    "thrift": (_thrift, {"transport": "framed", "protocol": "binary"},
               bytes.fromhex("00000011 80010001 00000004 70696e67 00000100 00"),
               bytes.fromhex("00000011 80010002 00000004 70696e67 00000100 00")),
    # Two-way Hessian2 request: 2.0.2, bench.EchoService, 0.0.0, ping(Ljava/lang/String;) with a
    # 16-char argument and path/interface attachments; OK response: RESPONSE_VALUE, an 8-char string.
    "dubbo": (_dubbo, {}, _dubbo_request("ping", _DUBBO_ATTACHMENTS),
              bytes.fromhex("dabb0214 0000000000000100 0000000a") + b"\x91\x08" + b"x" * 8),
    # Requests that alternate method and a trace attachment: the codec's per-connection memos of the
    # last request head and attachment map never hit (a mixed workload's cost).
    "dubbo-mix": (_dubbo, {},
                  (_dubbo_request("ping", {**_DUBBO_ATTACHMENTS, "x-trace": "00000001"}),
                   _dubbo_request("echo", {**_DUBBO_ATTACHMENTS, "x-trace": "00000002"})),
                  bytes.fromhex("dabb0214 0000000000000100 0000000a") + b"\x91\x08" + b"x" * 8),
    # redis-benchmark style GET and a bulk-string reply.
    "redis": (_redis, {}, b"*2\r\n$3\r\nGET\r\n$7\r\nkey:001\r\n", b"$8\r\nxxxxxxxx\r\n"),
}


def _best(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Best CPU µs per call over ``repeat`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def measure(name: str, n: int, repeat: int) -> dict[str, float]:
    """µs per operation for one codec: decode req/resp, encode req/resp."""
    load, options, reqs, resp = CASES[name]
    if isinstance(reqs, bytes):
        reqs = (reqs,)
    req = reqs[0]
    cls = load()
    dreq = cls(options, Direction.REQUEST, 4 << 20)
    dresp = cls(options, Direction.RESPONSE, 4 << 20)
    md, rmd = Metadata(), Metadata()
    assert dreq.decode(bytearray(req), md) is DONE, f"{name}: request frame does not decode"
    assert dresp.decode(bytearray(resp), rmd) is DONE, f"{name}: response frame does not decode"
    out = bytearray()
    mutation = Mutation()
    multiplexing = dreq.multiplexing

    def encode(codec: Codec, metadata: Metadata, request_id: int) -> None:
        out.clear()
        if multiplexing:
            metadata["request_id"] = request_id
        codec.encode(metadata, mutation, out)

    if len(reqs) == 1:
        def decode_req() -> object:
            return dreq.decode(bytearray(req), Metadata())
    else:
        turn = itertools.cycle(reqs).__next__

        def decode_req() -> object:
            return dreq.decode(bytearray(turn()), Metadata())

    return {
        "decode req": _best(decode_req, n, repeat),
        "decode resp": _best(lambda: dresp.decode(bytearray(resp), Metadata()), n, repeat),
        # A request is encoded upstream by the upstream side's codec, a response downstream by the
        # downstream side's; both with a rewritten request id.
        "encode req": _best(lambda: encode(dresp, md, 5), n, repeat),
        "encode resp": _best(lambda: encode(dreq, rmd, 7), n, repeat),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("codecs", nargs="?", default=",".join(CASES),
                        help=f"comma-separated, or all, from {', '.join(CASES)} (default: all)")
    parser.add_argument("n", nargs="?", type=int, default=50000, help="operations per run (default 50000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per operation; the best is kept (default 5)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.codecs.split(",") if name.strip()]
    if names == ["all"]:
        names = list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown codec(s): {', '.join(unknown)}")
    print(f"CPU µs per operation, best of {args.repeat} x {args.n}")
    print(f"{'codec':<8} {'decode req':>10} {'decode resp':>11} {'encode req':>10} {'encode resp':>11} {'sum':>7}")
    for name in names:
        res = measure(name, args.n, args.repeat)
        print(f"{name:<8} {res['decode req']:>10.2f} {res['decode resp']:>11.2f} {res['encode req']:>10.2f} "
              f"{res['encode resp']:>11.2f} {sum(res.values()):>7.2f}")


if __name__ == "__main__":
    main()
