"""Redis RESP2/RESP3 codec: the protocol authors' kit proof (see docs/writing-a-codec.md)."""

from metaproxy_codecs.redis.codec import PUBSUB, RedisCodec

__all__ = ["PUBSUB", "RedisCodec"]
