"""``metaproxy decode``: run a codec over captured bytes and show what it reads.

The debugging tool a protocol author and an operator share: give it one
direction of a connection (raw bytes, or hex with ``--hex``) and it prints
each message's byte range and Metadata, then the first error with its offset.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from metaproxy.codec import CodecError, DecodeStatus, Direction, load_codec_class
from metaproxy.message import Metadata


def _read_input(path: str, as_hex: bool) -> bytes:
    data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    if as_hex:
        text = "".join(data.decode("ascii", "replace").split())
        return bytes.fromhex(text)
    return data


def _options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option {pair!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def decode_all(codec: Any, data: bytes) -> tuple[list[tuple[int, int, Metadata]], str | None]:
    """Every message in ``data`` as (start, end, metadata), and the error that stopped decoding."""
    buffer = bytearray(data)
    messages = []
    offset = 0
    while buffer:
        md = Metadata()
        before = len(buffer)
        try:
            status = codec.decode(buffer, md)
        except CodecError as exc:
            where = offset + (exc.offset or 0)
            return messages, f"error at byte {where} (message starting at {offset}): {exc}"
        except Exception as exc:  # a codec bug, reported as such
            return messages, f"codec bug at byte {offset}: {type(exc).__name__}: {exc} (codecs must raise CodecError)"
        if status is not DecodeStatus.DONE:
            return messages, f"incomplete message: {before} bytes left at offset {offset}"
        used = before - len(buffer)
        messages.append((offset, offset + used, md))
        offset += used
    return messages, None


def _row(md: Metadata) -> dict[str, str]:
    return {key: value for key, value in md.str_items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metaproxy decode", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="captured bytes, or - for standard input")
    parser.add_argument("--codec", required=True, help="codec name or module.path:Class")
    parser.add_argument("--option", action="append", default=[], help="codec option KEY=VALUE (repeatable)")
    parser.add_argument("--direction", choices=["request", "response"], default="request")
    parser.add_argument("--hex", action="store_true", help="the input is hex text (whitespace ignored)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    args = parser.parse_args(argv)
    try:
        cls = load_codec_class(args.codec)
    except LookupError as exc:
        print(f"metaproxy decode: {exc}", file=sys.stderr)
        return 2
    options = _options(args.option)
    problems = cls.check_options(options)
    if problems:
        for problem in problems:
            print(f"--option {problem}", file=sys.stderr)
        return 2
    try:
        data = _read_input(args.file, args.hex)
    except (OSError, ValueError) as exc:
        print(f"metaproxy decode: cannot read input: {exc}", file=sys.stderr)
        return 2
    codec = cls(options, Direction(args.direction), max_message_bytes=max(len(data), 1) + 1)
    messages, error = decode_all(codec, data)
    for index, (start, end, md) in enumerate(messages):
        row = _row(md)
        if args.json:
            print(json.dumps({"index": index, "start": start, "end": end, "metadata": row}))
            continue
        print(f"message {index}: bytes {start}-{end} ({end - start} bytes)")
        width = max((len(k) for k in row), default=0)
        for key, value in row.items():
            print(f"  {key:<{width}}  {value}")
    if error:
        if args.json:
            print(json.dumps({"error": error}))
        else:
            print(error)
        return 1
    if not args.json:
        print(f"{len(messages)} message(s), {len(data)} bytes, no error")
    return 0
