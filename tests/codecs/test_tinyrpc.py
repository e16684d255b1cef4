"""tinyrpc passes the conformance kit, and its header mutations behave."""

from metaproxy.message import MessageType, Metadata
from metaproxy.testing.conformance import CodecConformance
from metaproxy_codecs.tinyrpc import TinyRpcCodec


def _frame(**fields) -> bytes:
    body = fields.pop("body", b"")
    out = bytearray()
    TinyRpcCodec()._encode_fresh(Metadata(fields), {}, out, body=body)
    return bytes(out)


class TestTinyRpcConformance(CodecConformance):
    codec_class = TinyRpcCodec
    requests = [
        _frame(request_id=1, message_type=MessageType.REQUEST, service="demo", method="sayHello",
               body=b"hello"),
        _frame(request_id=2**40, message_type=MessageType.REQUEST, service="svc", method="m",
               **{"x-user": "test-1", "version": "v2"}),
        _frame(request_id=3, message_type=MessageType.ONEWAY, service="s", method="fire"),
    ]
    responses = [
        _frame(request_id=1, message_type=MessageType.RESPONSE, service="demo", method="sayHello",
               body=b"world"),
    ]


def test_heartbeat_is_answered_but_a_heartbeat_reply_is_not():
    from metaproxy.codec import Direction

    ping = bytearray()
    TinyRpcCodec().make_heartbeat(5, ping)
    md = Metadata()
    TinyRpcCodec().decode(ping, md)
    pong = bytearray()
    TinyRpcCodec().heartbeat_reply(md, pong)
    reply = Metadata()
    TinyRpcCodec(direction=Direction.RESPONSE).decode(bytearray(pong), reply)
    assert reply["message_type"] is MessageType.HEARTBEAT and reply["request_id"] == 5
    out = bytearray()
    TinyRpcCodec().heartbeat_reply(reply, out)
    assert out == bytearray()
