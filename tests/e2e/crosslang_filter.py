"""A Python filter that writes every request metadata pair it sees into one mutation key (see the test)."""

from __future__ import annotations

from metaproxy.chain import Filter, RequestContext


class DumpFilter(Filter):
    name = "dump"

    def on_request(self, ctx: RequestContext) -> None:
        lines = sorted(f"{k}={v}" for k, v in ctx.metadata.str_items())
        ctx.mutation["x-py-dump"] = "\n".join(lines)
