"""The filter contract: Filter, the per-request context, and the chain that runs them.

A filter is a small hook-shaped class (mitmproxy's addon shape): it implements
``on_request(ctx)`` and/or ``on_response(ctx)``. Returning ``None`` continues;
returning or raising a :class:`ProxyError` stops the chain and the client gets
the codec's error reply. Filters may block (gevent): only their request waits.

One Filter instance serves every request of its listener; per-request state
belongs in ``ctx.scratch``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from metaproxy.codec import _load
from metaproxy.message import ErrorType, Metadata, Mutation, ProxyError

__all__ = ["Filter", "FilterEnv", "FilterChain", "RequestContext", "load_filter_class"]

log = logging.getLogger("metaproxy.server")


@dataclass
class FilterEnv:
    """What a filter may know about where it runs, handed to it at construction.

    ``services`` carries framework objects by name (``clusters``, ``stats``,
    ``routes``...) without chain.py having to import their modules.
    """

    listener: str = ""
    protocol: str = ""
    base_dir: str = "."
    path: str = ""  # config key path of this filter, for error messages
    services: dict[str, Any] = field(default_factory=dict)


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (metaproxy/compiled.py), yet every filter subclasses it
class Filter:
    """Base class of every L7 filter (Python, and the hosts of Lua and WASM ones)."""

    #: Name used in config (``filters: [{name: NAME, ...}]``).
    name: ClassVar[str] = ""
    #: Whether a hook may wait (sleep, network I/O, a lock). A listener whose filters all say
    #: False serves its requests in the event loop's I/O callbacks, with no greenlet switch:
    #: ~20% fewer instructions per request (docs/python-filters.md). A hook of a filter that
    #: says False and waits anyway fails its request (gevent refuses to block the hub).
    #: Instances may override it (a fault filter blocks only when it has a delay).
    blocking: bool = True

    def __init__(self, options: Mapping[str, Any], env: FilterEnv) -> None:
        """Validate ``options`` here; raise ValueError("key: problem") to refuse them."""
        self.options = options
        self.env = env

    def on_request(self, ctx: RequestContext) -> ProxyError | None:
        return None

    def on_response(self, ctx: RequestContext) -> None:
        return None

    def close(self) -> None:
        """Release what the filter holds (threads, watchers) when its listener goes away."""


class RequestContext:
    """Everything about one request on its way through the proxy.

    Made once per request on the hot path, so the constructor sets only what
    differs per request; every other field starts as its class-level default
    and becomes an instance attribute when a layer sets it.
    """

    #: The route table this request started with (a reload never changes it mid-flight).
    routes: Any = None
    route: Any = None
    response_metadata: Metadata | None = None
    downstream_address: str = ""
    peer_identity: str = ""
    cluster_name: str = ""
    upstream_host: str = ""
    error: ProxyError | None = None
    response_flags: str = ""
    attempts: int = 0
    bytes_sent: int = 0
    #: ``time.monotonic()`` when the reply was made (set before the end observers run; 0 until then).
    end_time: float = 0.0
    trace: Any = None
    #: Upstream connections this request's downstream connection holds
    #: (ordered protocols keep one per endpoint: pipelining, MULTI/EXEC).
    leases: dict[Any, Any] | None = None
    #: For a request of a client's pipeline (ordered protocols): (SendOrder, place in the batch).
    order: Any = None
    #: The request id the client sent (the reply carries it back, whatever the layers did).
    downstream_id: Any = None
    #: Set by a connection that serves requests in the hub's callbacks: the router must not block
    #: then, it queues the request, sets ``suspended`` and later calls ``resume(ctx, error)``.
    resume: Callable[[RequestContext, ProxyError | None], None] | None = None
    suspended: bool = False

    def __init__(self, metadata: Metadata, listener: str = "", protocol: str = "") -> None:
        self.metadata = metadata
        self.mutation = Mutation()
        self.response_mutation = Mutation()
        self.listener = listener
        self.protocol = protocol
        #: Per-request table shared by a filter's request and response hooks.
        self.scratch: dict[str, Any] = {}
        self.start_time = time.monotonic()
        self.bytes_received = len(metadata.frame)

    @property
    def route_name(self) -> str:
        return getattr(self.route, "name", "") or ""

    def local_reply(self, kind: ErrorType, message: str = "") -> ProxyError:
        """Make the error a filter returns to answer the client itself."""
        return ProxyError(kind, message)


class FilterChain:
    """Filters in config order: requests run forward, responses in reverse.

    ``run_request`` returns the ProxyError that stopped the chain, or None.
    ``on_response`` hooks run only when an upstream response arrived (so every
    filter's ``on_request`` ran: the router is last).
    """

    __slots__ = ("filters", "_request_hooks", "response_hooks", "blocking")

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters = list(filters)
        # Skip the base-class no-ops on the hot path.
        self._request_hooks: list[Callable[[RequestContext], Any]] = [
            f.on_request for f in self.filters if type(f).on_request is not Filter.on_request
        ]
        #: The filters' on_response hooks in the order they run (empty: nothing to call).
        self.response_hooks: list[Callable[[RequestContext], Any]] = [
            f.on_response for f in reversed(self.filters) if type(f).on_response is not Filter.on_response
        ]
        #: True if any filter's hooks may wait: then every request gets a greenlet of its own.
        # getattr, not ``f.blocking``: compiled, that reads Filter's own slot and misses a Python
        # subclass's class-level ``blocking = False`` (metaproxy/compiled.py). Read once per chain.
        self.blocking = any(getattr(f, "blocking", True) for f in self.filters)

    def run_request(self, ctx: RequestContext) -> ProxyError | None:
        try:
            for hook in self._request_hooks:
                result = hook(ctx)
                if result is not None:
                    ctx.error = result
                    return result
        except ProxyError as err:
            ctx.error = err
            return err
        except Exception as exc:  # a filter bug must fail its request only
            log.error("listener %s: request failed", ctx.listener, exc_info=exc)
            error = ctx.error = ProxyError.internal(exc)
            return error
        return None

    def run_response(self, ctx: RequestContext) -> None:
        for hook in self.response_hooks:
            hook(ctx)

    def close(self) -> None:
        for f in self.filters:
            f.close()


_BUILTIN_FILTERS = {
    "router": "metaproxy.filters.router:RouterFilter",
    "lua": "metaproxy.lua.filter:LuaFilter",
    "wasm": "metaproxy.wasm.filter:WasmFilter",
    "local_ratelimit": "metaproxy.filters.local_ratelimit:LocalRateLimitFilter",
    "ratelimit": "metaproxy.filters.ratelimit:RateLimitFilter",
    "fault": "metaproxy.filters.fault:FaultFilter",
    "rbac": "metaproxy.filters.rbac:RbacFilter",
}


def load_filter_class(spec: str) -> type[Filter]:
    """Find a filter by entry-point name (group ``metaproxy.filters``) or ``module:Class``."""
    return _load(spec, "metaproxy.filters", _BUILTIN_FILTERS, Filter)  # type: ignore[return-value]
