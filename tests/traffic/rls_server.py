"""A small Envoy rate limit service (envoy.service.ratelimit.v3) backed by a real Redis.

It plays the part Lyft's ratelimit service plays in a mesh, so the proxy's
``ratelimit`` filter is tested against the real protocol and a real shared
counter store. Fixed windows, like Lyft's: each (domain, descriptor, window)
has a Redis counter, ``INCRBY`` + ``EXPIRE`` in one transaction.

A rule names the descriptor entries it applies to; an entry with value None
matches any value and gives each value its own counter (Lyft's "key without
value")::

    Rule("test", (("user", None),), requests_per_unit=3, unit="minute")

Run it alone: ``python -m tests.traffic.rls_server --port 8081 --redis-port 6379``
(with one demo rule: 3 requests per minute per ``user``).
"""

from __future__ import annotations

import argparse
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import redis
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_PB_UNITS = {"second": rls_pb2.RateLimitResponse.RateLimit.SECOND,
             "minute": rls_pb2.RateLimitResponse.RateLimit.MINUTE,
             "hour": rls_pb2.RateLimitResponse.RateLimit.HOUR,
             "day": rls_pb2.RateLimitResponse.RateLimit.DAY}


@dataclass(frozen=True)
class Rule:
    domain: str
    entries: tuple[tuple[str, str | None], ...]
    requests_per_unit: int
    unit: str = "minute"

    def matches(self, domain: str, entries: list[tuple[str, str]]) -> bool:
        if domain != self.domain or len(entries) != len(self.entries):
            return False
        return all(k == rk and (rv is None or v == rv) for (k, v), (rk, rv) in zip(entries, self.entries, strict=True))


class RedisRateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, client: redis.Redis, rules: list[Rule], clock=time.time) -> None:
        self.redis = client
        self.rules = list(rules)
        self.clock = clock
        self.calls = 0

    def ShouldRateLimit(self, request, context):  # noqa: N802 (gRPC method name)
        self.calls += 1
        hits = request.hits_addend or 1
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        for descriptor in request.descriptors:
            entries = [(e.key, e.value) for e in descriptor.entries]
            status = response.statuses.add(code=rls_pb2.RateLimitResponse.OK)
            rule = next((r for r in self.rules if r.matches(request.domain, entries)), None)
            if rule is None:
                continue
            seconds = UNITS[rule.unit]
            window = int(self.clock()) // seconds
            key = "ratelimit:" + request.domain + ":" + ":".join(f"{k}_{v}" for k, v in entries) + f":{window}"
            pipe = self.redis.pipeline(transaction=True)
            pipe.incrby(key, hits)
            pipe.expire(key, seconds)
            count, _ = pipe.execute()
            status.current_limit.requests_per_unit = rule.requests_per_unit
            status.current_limit.unit = _PB_UNITS[rule.unit]
            status.limit_remaining = max(0, rule.requests_per_unit - count)
            if count > rule.requests_per_unit:
                status.code = rls_pb2.RateLimitResponse.OVER_LIMIT
                response.overall_code = rls_pb2.RateLimitResponse.OVER_LIMIT
        response.response_headers_to_add.add(key="x-ratelimit-checked", value="redis")
        return response


def serve(port: int, client: redis.Redis, rules: list[Rule]) -> tuple[grpc.Server, int, RedisRateLimitService]:
    """Start the service on 127.0.0.1:``port`` (0: a free one); returns (server, bound port, servicer)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = RedisRateLimitService(client, rules)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound, servicer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--redis-port", type=int, default=6379)
    args = parser.parse_args()
    client = redis.Redis(host="127.0.0.1", port=args.redis_port)
    server, port, _ = serve(args.port, client, [Rule("demo", (("user", None),), 3, "minute")])
    print(f"rate limit service on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
