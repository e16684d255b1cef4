"""A Python filter that says its hooks may wait (the default): its listener serves requests on greenlets."""

from __future__ import annotations

from metaproxy.chain import Filter, RequestContext


class MayWait(Filter):
    """Marks each request it sees, and leaves ``blocking`` at its default (True)."""

    name = "may_wait"

    def on_request(self, ctx: RequestContext) -> None:
        ctx.mutation["x-seen-by"] = "may_wait"


class WaitsButSaysItDoesNot(Filter):
    """Says ``blocking = False`` and then sleeps: gevent refuses to block the loop, the request fails."""

    name = "waits_but_says_it_does_not"
    blocking = False

    def on_request(self, ctx: RequestContext) -> None:
        if ctx.metadata.get("method") == "nap":
            import gevent

            gevent.sleep(0.01)
