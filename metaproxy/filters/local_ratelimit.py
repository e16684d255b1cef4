"""Local rate limit: token buckets in this worker process, MetaProtocol's config shape.

::

    - name: local_ratelimit
      token_bucket: {max_tokens: 100, tokens_per_fill: 100, fill_interval: 1s}   # default bucket
      conditions:                                                                # first match wins
        - match: {metadata: [{name: method, exact: sayHello}]}
          token_bucket: {max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s}

A request takes one token from the bucket of the first condition it matches,
else from the default bucket; with no default bucket an unmatched request is
not limited. An empty bucket answers with an ``over_limit`` error. Buckets
start full and are refilled in whole steps of ``tokens_per_fill`` every
``fill_interval`` (as Envoy does), so a burst gets exactly ``max_tokens``.

The buckets live in one worker process: with ``workers: N`` the proxy as a
whole admits up to N times the configured rate. Use the ``ratelimit`` filter
(a shared rate limit service) for a global limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.filters.options import positive as _positive
from metaproxy.filters.options import read_options
from metaproxy.message import ErrorType, ProxyError
from metaproxy.router import Matcher, parse_matchers
from metaproxy.settings import Section

RATE_LIMITED_FLAG = "RL"


class TokenBucket:
    """Envoy's discrete token bucket: ``tokens_per_fill`` added every whole ``fill_interval``."""

    __slots__ = ("max_tokens", "tokens_per_fill", "fill_interval", "tokens", "_last_fill", "_clock")

    def __init__(self, max_tokens: int, tokens_per_fill: int, fill_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill
        self.fill_interval = fill_interval
        self.tokens = max_tokens
        self._clock = clock
        self._last_fill = clock()

    def try_take(self) -> bool:
        """Take one token if there is one (refilling first for the intervals that passed)."""
        if self.tokens < self.max_tokens:
            now = self._clock()
            fills = int((now - self._last_fill) / self.fill_interval)
            if fills > 0:
                self.tokens = min(self.max_tokens, self.tokens + fills * self.tokens_per_fill)
                self._last_fill += fills * self.fill_interval
        else:
            self._last_fill = self._clock()  # a full bucket does not bank fills
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False


def _read_bucket(sec: Section | None, clock: Callable[[], float]) -> TokenBucket | None:
    if sec is None:
        return None
    max_tokens = sec.take("max_tokens", int, check=_positive)
    per_fill = sec.take("tokens_per_fill", int, max_tokens or 1, _positive)
    interval = sec.take("fill_interval", "duration", check=_positive)
    sec.finish()
    if max_tokens is None or per_fill is None or interval is None:
        return None
    return TokenBucket(max_tokens, per_fill, interval, clock)


class LocalRateLimitFilter(Filter):
    name = "local_ratelimit"
    blocking = False  # a token bucket: take a token or refuse, never wait for one

    def __init__(self, options: Mapping[str, Any], env: FilterEnv,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(options, env)
        self._clock = clock
        self.default: TokenBucket | None = None
        self.conditions: list[tuple[tuple[Matcher, ...], TokenBucket]] = []
        read_options(options, self._read)
        stats = env.services.get("stats")
        scope = f"metaprotocol.{env.listener}.local_ratelimit"
        self._ok = stats.counter(scope, "ok") if stats is not None else None
        self._limited = stats.counter(scope, "rate_limited") if stats is not None else None

    def _read(self, sec: Section) -> None:
        sec.take("stat_prefix", str, "")  # accepted for MetaProtocol configs; stats use the listener scope
        self.default = _read_bucket(sec.section("token_bucket"), self._clock)
        for cond in sec.sections("conditions"):
            match = cond.section("match", required=True)
            matchers: tuple[Matcher, ...] = ()
            if match is not None:
                matchers = parse_matchers(match)
                match.finish()
            bucket = _read_bucket(cond.section("token_bucket", required=True), self._clock)
            cond.finish()
            if bucket is not None:
                self.conditions.append((matchers, bucket))
        if self.default is None and not sec.has("conditions"):
            sec.problem("give token_bucket, conditions or both")

    def bucket_for(self, ctx: RequestContext) -> TokenBucket | None:
        md = ctx.metadata
        for matchers, bucket in self.conditions:
            if all(m.matches(md) for m in matchers):
                return bucket
        return self.default

    def on_request(self, ctx: RequestContext) -> ProxyError | None:
        bucket = self.bucket_for(ctx)
        if bucket is None:
            return None
        if bucket.try_take():
            if self._ok is not None:
                self._ok.inc()
            return None
        if self._limited is not None:
            self._limited.inc()
        return ProxyError(ErrorType.OVER_LIMIT, "local rate limit exceeded", RATE_LIMITED_FLAG)
