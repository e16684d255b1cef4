"""Fault injection: delay or fail a share of requests, to test how clients cope.

MetaProtocol has no fault injection; this follows Envoy's HTTP fault filter::

    - name: fault
      delay: {fixed_delay: 100ms, percentage: 50}
      abort: {error: over_limit, percentage: 10, message: "injected"}
      match: {metadata: [{name: method, exact: sayHello}]}

A delay is served first (it blocks only the request's greenlet), then the
abort is decided. An abort is a ProxyError, so the client gets the
protocol's own error (a Thrift TApplicationException, a Dubbo error status).
Without ``match`` every request is a candidate.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import gevent

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.filters.options import percentage, read_options
from metaproxy.message import ErrorType, ProxyError
from metaproxy.router import Matcher, parse_matchers
from metaproxy.settings import Section

#: Response flags an access log shows for injected faults (Envoy's).
DELAY_FLAG = "DI"
ABORT_FLAG = "FI"


class FaultFilter(Filter):
    name = "fault"

    def __init__(self, options: Mapping[str, Any], env: FilterEnv, rand: Callable[[], float] = random.random) -> None:
        super().__init__(options, env)
        self.delay: float | None = None
        self.delay_percentage = 100.0
        self.abort: ErrorType | None = None
        self.abort_percentage = 100.0
        self.abort_message = ""
        self.matchers: tuple[Matcher, ...] = ()
        read_options(options, self._read)
        self.blocking = self.delay is not None  # only a delay waits
        self._rand = rand
        stats = env.services.get("stats")
        scope = f"metaprotocol.{env.listener}.fault"
        self._delays = stats.counter(scope, "delays_injected") if stats is not None else None
        self._aborts = stats.counter(scope, "aborts_injected") if stats is not None else None

    def _read(self, sec: Section) -> None:
        delay = sec.section("delay")
        if delay is not None:
            self.delay = delay.take("fixed_delay", "duration")
            self.delay_percentage = delay.take("percentage", (int, float), 100.0, percentage)
            delay.finish()
        abort = sec.section("abort")
        if abort is not None:
            self.abort = abort.take("error", str, check=ErrorType.parse)
            self.abort_percentage = abort.take("percentage", (int, float), 100.0, percentage)
            self.abort_message = abort.take("message", str, "")
            abort.finish()
        match = sec.section("match")
        if match is not None:
            self.matchers = parse_matchers(match)
            match.finish()
        if delay is None and abort is None:
            sec.problem("give delay, abort or both")

    def _chosen(self, pct: float) -> bool:
        return pct >= 100 or (pct > 0 and self._rand() * 100 < pct)

    def on_request(self, ctx: RequestContext) -> ProxyError | None:
        md = ctx.metadata
        for matcher in self.matchers:
            if not matcher.matches(md):
                return None
        if self.delay is not None and self._chosen(self.delay_percentage):
            if self._delays is not None:
                self._delays.inc()
            ctx.response_flags = DELAY_FLAG
            gevent.sleep(self.delay)
        if self.abort is not None and self._chosen(self.abort_percentage):
            if self._aborts is not None:
                self._aborts.inc()
            return ProxyError(self.abort, self.abort_message or f"fault filter abort: {self.abort.value}",
                              ABORT_FLAG)
        return None
