"""CPU cost per request of the access log and the stats, in process, without the rest of the proxy.

    .venv/bin/python bench/observability_micro.py [--requests 20000] [--repeats 7] [--profile json]

The proxy-level benchmark (bench/observability_bench.py) measures the whole
proxy and is noisy on a shared machine; this one isolates what metaproxy's
observability code adds to one request, so a change to it can be judged in
nanoseconds:

    stats          the stat operations server.py and the router do for one
                   successful request (counters, gauges, three histograms,
                   method and route lookups)
    json/text      an access logger fed finished-request contexts: the
                   request-path call (``request_end``) alone, and the whole cost
                   (``request_end`` + rendering + writing the batch to a file)

CPU time (``time.process_time``, every thread of this process) of
``--requests`` requests, best of ``--repeats`` runs, per request. ``--profile``
prints a cProfile of one variant instead.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from metaproxy import accesslog
from metaproxy.accesslog import make_access_loggers
from metaproxy.chain import RequestContext
from metaproxy.config import AccessLogConfig
from metaproxy.message import MessageType, Metadata, ResponseStatus
from metaproxy.stats import ClusterStats, ListenerStats, StatsStore

TEXT_FORMAT = ("%START_TIME% %DURATION%ms %REQUEST_ID% %SERVICE%/%METHOD% %ROUTE_NAME% %UPSTREAM_HOST% "
               "%RESPONSE_STATUS% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT%")


class _Route:
    name = "catch-all"


def finished_requests(count: int) -> list[RequestContext]:
    """Contexts as a tinyrpc request answered by the upstream leaves them (distinct ids and times)."""
    contexts = []
    start = time.monotonic()
    for i in range(count):
        md = Metadata(request_id=i + 1, message_type=MessageType.REQUEST, service="demo.Greeter",
                      method="sayHello", header_size=40, body_size=24)
        md.frame = b"x" * 64
        ctx = RequestContext(md, "tinyrpc-in", "tinyrpc")
        ctx.start_time = start + i * 0.0001
        ctx.downstream_id = i + 1  # as DownstreamConnection.begin sets it
        ctx.downstream_address = "127.0.0.1:40312"
        ctx.route = _Route()
        ctx.cluster_name, ctx.upstream_host, ctx.attempts, ctx.bytes_sent = "upstream", "127.0.0.1:9191", 1, 64
        ctx.response_metadata = Metadata(request_id=i + 1, message_type=MessageType.RESPONSE,
                                         response_status=ResponseStatus.SUCCESS)
        contexts.append(ctx)
    return contexts


def stats_request(ls: ListenerStats, cs: ClusterStats) -> Callable[[], None]:
    """The stat operations of one successful request, as server.py and filters/router.py do them."""
    def one() -> None:
        ls.request.inc()
        ls.request_active.inc()
        ls.request_decoding_success.inc()
        ls.route_request("catch-all").inc()
        cs.upstream_rq_active.inc()
        cs.upstream_rq.inc()
        cs.upstream_rq_success.inc()
        cs.upstream_rq_time_ms.observe(0.52)
        cs.upstream_rq_active.dec()
        ls.response_success.inc()
        ls.request_active.dec()
        ls.request_time_ms.observe(0.71)
        counter, histogram = ls.method("sayHello")
        counter.inc()
        histogram.observe(0.71)
    return one


def stats_request_inline(ls: ListenerStats, cs: ClusterStats) -> Callable[[], None]:
    """The same, as server.py and the router could do it: counters incremented in place, and
    ``request_done`` for the listener and method latency (docs/observability.md, "Cost")."""
    def one() -> None:
        ls.request.value += 1
        ls.request_active.value += 1
        ls.request_decoding_success.value += 1
        ls.route_request("catch-all").value += 1
        cs.upstream_rq_active.value += 1
        cs.upstream_rq.value += 1
        cs.upstream_rq_success.value += 1
        cs.upstream_rq_time_ms.observe(0.52)
        cs.upstream_rq_active.value -= 1
        ls.response_success.value += 1
        ls.request_active.value -= 1
        ls.request_done("sayHello", 0.71)
    return one


def time_stats(requests: int, repeats: int, make: Callable[..., Callable[[], None]] = stats_request) -> float:
    store = StatsStore()
    one = make(ListenerStats(store, "bench"), ClusterStats(store, "upstream"))

    def empty() -> None:
        pass

    best = {}
    for fn in (one, empty) * repeats:
        start = time.process_time()
        for _ in range(requests):
            fn()
        elapsed = time.process_time() - start
        best[fn] = min(best.get(fn, elapsed), elapsed)
    return max(0.0, best[one] - best[empty]) / requests * 1e9


def time_logger(fmt: str, contexts: list[RequestContext], requests: int, repeats: int,
                path: str) -> tuple[float, float]:
    """(request_end only, request_end + render + write) in ns per request; best of ``repeats``.

    Requests cycle through ``contexts``; every ``WAKE_LINES`` requests what is
    pending is written (the full measure) or discarded (the request-path
    measure), as the flusher would take it, so the pending list stays as short
    as in the proxy (a long one makes the garbage collector's work grow).
    """
    every = accesslog.WAKE_LINES
    capture = total = float("inf")
    for _ in range(repeats):
        for full in (False, True):
            [logger] = make_access_loggers([AccessLogConfig(path=path, format=fmt)])
            end = logger.request_end
            pending = logger._pending  # type: ignore[attr-defined]
            count = len(contexts)
            start = time.process_time()
            for i in range(requests):
                end(contexts[i % count])
                if i % every == every - 1:
                    if full:
                        logger.flush()  # type: ignore[attr-defined]
                    else:
                        del logger._pending[:]  # type: ignore[attr-defined]
            if full:
                logger.flush()  # type: ignore[attr-defined]
            else:
                del pending[:]
            elapsed = time.process_time() - start
            logger.close()
            if full:
                total = min(total, elapsed)
            else:
                capture = min(capture, elapsed)
            os.truncate(path, 0)
    return capture / requests * 1e9, total / requests * 1e9


def profile(fmt: str, contexts: list[RequestContext], requests: int, path: str) -> None:
    [logger] = make_access_loggers([AccessLogConfig(path=path, format=fmt)])
    prof = cProfile.Profile()
    prof.enable()
    for i in range(requests):
        logger.request_end(contexts[i % len(contexts)])
        if i % 1024 == 1023:
            logger.flush()  # type: ignore[attr-defined]
    logger.flush()  # type: ignore[attr-defined]
    prof.disable()
    logger.close()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--profile", choices=("json", "text"))
    args = p.parse_args(argv)
    contexts = finished_requests(1000)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "access.log")
        if args.profile:
            profile("json" if args.profile == "json" else TEXT_FORMAT, contexts, args.requests, path)
            return 0
        stats_ns = time_stats(args.requests * 5, args.repeats)
        print(f"observability micro-benchmark: {args.requests} requests, best of {args.repeats}, "
              f"CPU ns per request (load average {os.getloadavg()[0]:.2f})")
        print(f"  stats, one successful request             {stats_ns:8.0f}")
        if hasattr(ListenerStats, "request_done"):
            inline_ns = time_stats(args.requests * 5, args.repeats, stats_request_inline)
            print(f"  stats, the same with in-place increments  {inline_ns:8.0f}")
        for label, fmt in (("json", "json"), ("text", TEXT_FORMAT)):
            capture, total = time_logger(fmt, contexts, args.requests, args.repeats, path)
            print(f"  access log {label:4}: request_end only          {capture:8.0f}")
            print(f"  access log {label:4}: request_end+render+write  {total:8.0f}   "
                  f"with stats: {total + stats_ns:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
