"""What both ends of route discovery agree on: the type URL, versions, packing.

The control plane and the proxy's RDS client import this one module so the
type URL and the version scheme cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.any_pb2 import Any as AnyProto

ROUTE_TYPE_URL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#: gRPC status code INVALID_ARGUMENT, used in a NACK's error_detail.
INVALID_ARGUMENT = 3


def resource_version(config: RouteConfiguration) -> str:
    """A version derived from the content, so an unchanged resource keeps its version.

    Content versions survive a control-plane restart: a proxy that reconnects
    with the version it has is not sent the same routes again.
    """
    data = config.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:16]


def set_version(items: Iterable[tuple[str, str]]) -> str:
    """The state-of-the-world version of a set of (name, resource version) pairs."""
    digest = hashlib.sha256()
    for name, version in sorted(items):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(version.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def pack(config: RouteConfiguration) -> AnyProto:
    """A RouteConfiguration as a google.protobuf.Any with the route type URL."""
    any_msg = AnyProto()
    any_msg.Pack(config, type_url_prefix="type.googleapis.com/")
    return any_msg


def unpack(any_msg: AnyProto) -> RouteConfiguration:
    """The RouteConfiguration inside ``any_msg``; ValueError if it is something else."""
    if any_msg.type_url != ROUTE_TYPE_URL:
        raise ValueError(f"resource type {any_msg.type_url!r} is not {ROUTE_TYPE_URL}")
    config = RouteConfiguration()
    if not any_msg.Unpack(config):
        raise ValueError("resource does not decode as a RouteConfiguration")
    return config
