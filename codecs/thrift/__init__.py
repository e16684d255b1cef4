"""Thrift: binary and compact protocols over framed, unframed (buffered) and THeader transports.

See docs/thrift.md for what is read, what is forwarded untouched, and how
``transport: auto`` decides.
"""

from metaproxy_codecs.thrift.codec import ThriftCodec

__all__ = ["ThriftCodec"]
