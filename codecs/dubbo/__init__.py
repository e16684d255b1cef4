"""Dubbo2 over Hessian2: routing on interface, method, version and attachments (docs/dubbo.md)."""

from metaproxy_codecs.dubbo.codec import DubboCodec

__all__ = ["DubboCodec"]
