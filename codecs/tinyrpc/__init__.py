"""tinyrpc: the tutorial protocol (see docs/writing-a-codec.md)."""

from metaproxy_codecs.tinyrpc.codec import TinyRpcCodec

__all__ = ["TinyRpcCodec"]
