"""``proxy_get_property`` paths -> values, from the request and the plugin's identity.

SDKs send a path as its segments joined by NUL (``request\\0id``), some as a
dotted string: both are accepted. Every value is returned as UTF-8 text, the
same string form Lua and WASM filters see for Metadata. Supported paths:

* ``plugin_name``, ``plugin_root_id``, ``plugin_vm_id``
* ``listener_name`` (also ``listener.name``, ``xds.listener_name``)
* ``route_name`` (``xds.route_name``), ``cluster_name`` (``xds.cluster_name``)
* ``request.id``, ``request.protocol``, ``source.address``, ``upstream.address``
* ``metaprotocol.<key>``: the request header-map value of ``<key>`` (Metadata with the
  Mutation applied), e.g. ``metaprotocol.method``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Properties that do not depend on the request.
_PLUGIN = {"plugin_name": "plugin_name", "plugin_root_id": "root_id", "plugin_vm_id": "vm_id"}


def _request_id(ctx: Any) -> str | None:
    return ctx.metadata.get_str("request_id")


_REQUEST: dict[str, Callable[[Any], str | None]] = {
    "listener_name": lambda ctx: ctx.listener or None,
    "listener.name": lambda ctx: ctx.listener or None,
    "xds.listener_name": lambda ctx: ctx.listener or None,
    "route_name": lambda ctx: ctx.route_name or None,
    "xds.route_name": lambda ctx: ctx.route_name or None,
    "cluster_name": lambda ctx: ctx.cluster_name or None,
    "xds.cluster_name": lambda ctx: ctx.cluster_name or None,
    "request.id": _request_id,
    "request.protocol": lambda ctx: ctx.protocol or None,
    "source.address": lambda ctx: ctx.downstream_address or None,
    "upstream.address": lambda ctx: ctx.upstream_host or None,
}


def normalize(raw: bytes) -> str:
    """``b"request\\0id\\0"`` or ``b"request.id"`` -> ``"request.id"``."""
    return raw.decode("utf-8", "replace").strip("\0").replace("\0", ".")


def resolve(path: str, identity: Any, ctx: Any, header_value: Callable[[str], str | None]) -> bytes | None:
    """The property's bytes, or None when it is unknown or has no value here.

    ``identity`` has ``plugin_name``, ``root_id`` and ``vm_id``; ``ctx`` is the
    request's RequestContext or None (root context: no request properties);
    ``header_value`` reads the request header map of that request.
    """
    attr = _PLUGIN.get(path)
    if attr is not None:
        return str(getattr(identity, attr)).encode()
    if ctx is None:
        return None
    getter = _REQUEST.get(path)
    if getter is not None:
        value = getter(ctx)
    elif path.startswith("metaprotocol."):
        value = header_value(path[len("metaprotocol."):])
    else:
        return None
    return None if value is None else value.encode("utf-8")
