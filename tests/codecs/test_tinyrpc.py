"""tinyrpc passes the conformance kit, and its header mutations behave."""

from metaproxy.message import Metadata, MessageType
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
