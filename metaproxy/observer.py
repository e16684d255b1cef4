"""Hooks for what watches requests without changing them: access logs, tracing.

Observers are not filters: they see every request, including the ones a
filter or the router answered locally, and they cannot stop one. The server
calls ``request_start`` and ``request_end``; the router calls the
``upstream_*`` pair around each try (so a tracer can make a client span per
try and inject its context into ``ctx.mutation``).
"""

from __future__ import annotations

from typing import Any

from metaproxy.chain import RequestContext
from metaproxy.message import Metadata, ProxyError


class RequestObserver:
    """Base class: override the hooks you need; the server skips the ones left as they are."""

    #: Whether the observer reads a response's Metadata beyond ``response_status``. When no
    #: observer nor filter of a listener does, upstream responses are only framed and passed
    #: back (``Codec.decode_passthrough``): say False if you only look at the status.
    reads_response_metadata: bool = True

    def request_start(self, ctx: RequestContext) -> None:
        pass

    def upstream_start(self, ctx: RequestContext, cluster: str, host: str) -> Any:
        """Return a token handed back to ``upstream_end`` (e.g. a span)."""
        return None

    def upstream_end(self, ctx: RequestContext, token: Any, error: ProxyError | None,
                     response: Metadata | None = None) -> None:
        pass

    def request_end(self, ctx: RequestContext) -> None:
        pass

    def close(self) -> None:
        pass


def overriding(observers: list[RequestObserver], *hooks: str) -> list[RequestObserver]:
    """The observers for which any of ``hooks`` does something (the hot path calls only those).

    Name both hooks of a pair (``upstream_start``, ``upstream_end``) when one hands the other a token.
    """
    bases = [(hook, getattr(RequestObserver, hook)) for hook in hooks]
    return [obs for obs in observers if any(getattr(type(obs), hook, base) is not base for hook, base in bases)]
