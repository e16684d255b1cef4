"""The Redis codec passes the conformance kit with RESP2 and RESP3 bytes made by redis-py."""

from __future__ import annotations

import pytest
from redis.connection import Encoder, PythonRespSerializer

from metaproxy.codec import CodecError, DecodeStatus, Direction
from metaproxy.message import MessageType, Metadata, ResponseStatus
from metaproxy.testing.conformance import CodecConformance
from metaproxy_codecs.redis import RedisCodec

_serializer = PythonRespSerializer(1 << 20, Encoder("utf-8", "strict", False).encode)


def command(*args: object) -> bytes:
    """A request exactly as redis-py writes it."""
    return b"".join(_serializer.pack(*args))


class TestRedisConformance(CodecConformance):
    codec_class = RedisCodec
    carries_mutation = False
    requests = [
        command("SET", "user:1", "alice"),
        command("GET", "user:1"),
        command("HSET", "h", "f", "v" * 300),
        command("PING"),
        b"PING\r\n",  # inline command, as telnet users type it
    ]
    responses = [
        b"+OK\r\n",
        b"$5\r\nalice\r\n",
        b"$-1\r\n",
        b":42\r\n",
        b"-ERR unknown command\r\n",
        b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n:2\r\n$-1\r\n",
        # RESP3: map, set, double, boolean, null, big number, verbatim, attribute
        b"%2\r\n+k1\r\n:1\r\n+k2\r\n,3.14\r\n",
        b"~2\r\n#t\r\n_\r\n",
        b"(12345678901234567890\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"|1\r\n+ttl\r\n:3600\r\n$2\r\nok\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
    ]


def test_command_and_first_key_are_metadata():
    md = Metadata()
    buf = bytearray(command("set", "user:7", "x"))
    assert RedisCodec().decode(buf, md) is DecodeStatus.DONE
    assert md["command"] == "SET" and md["key"] == "user:7" and md["method"] == "SET"
    md = Metadata()
    RedisCodec().decode(bytearray(command("PING")), md)
    assert "key" not in md


def test_subscribe_is_marked_as_a_stream_so_the_proxy_refuses_it():
    md = Metadata()
    RedisCodec().decode(bytearray(command("SUBSCRIBE", "news")), md)
    assert md["message_type"] is MessageType.STREAM_INIT


def test_errors_and_pushes_in_responses():
    md = Metadata()
    RedisCodec(direction=Direction.RESPONSE).decode(bytearray(b"-ERR x\r\n"), md)
    assert md["response_status"] is ResponseStatus.ERROR
    md = Metadata()
    RedisCodec(direction=Direction.RESPONSE).decode(bytearray(b">2\r\n+message\r\n+hi\r\n"), md)
    assert md["message_type"] is MessageType.STREAM_DATA


@pytest.mark.parametrize("bad", [b"*1\r\n?\r\n", b"$abc\r\n", b"*1\r\n$3\r\nabcXY"])
def test_bad_bytes_raise_codec_error(bad):
    with pytest.raises(CodecError):
        RedisCodec(direction=Direction.RESPONSE).decode(bytearray(bad), Metadata())


def test_deep_nesting_is_refused():
    with pytest.raises(CodecError, match="nesting"):
        RedisCodec(direction=Direction.RESPONSE).decode(bytearray(b"*1\r\n" * 100 + b":1\r\n"), Metadata())
