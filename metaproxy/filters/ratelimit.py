"""Global rate limit: ask an Envoy rate limit service (RLS) whether a request may pass.

::

    - name: ratelimit
      server: 127.0.0.1:8081               # a gRPC envoy.service.ratelimit.v3.RateLimitService
      domain: thrift-sample
      descriptors:                         # each one is sent when all its metadata keys are present
        - entries: [{key: method, metadata: method}]
        - entries: [{key: user, metadata: x-user}, {key: tier, value: free}]
      timeout: 100ms
      failure_mode_deny: false             # service down or slow: let requests through (default)

This is the protocol Envoy speaks (``ShouldRateLimit`` with the stubs of the
``xds-protos`` package), so any RLS implementation works — Lyft's ratelimit
with Redis, or the small one in tests/traffic/rls_server.py. An entry is
``{key, metadata}`` (value read from request Metadata) or ``{key, value}``
(a constant). A descriptor whose metadata key is missing is left out, as
Envoy leaves out a rate limit action that cannot produce a value; a request
with no descriptors is not sent to the service.

``OVER_LIMIT`` from the service is an ``over_limit`` error reply. When the
service fails or exceeds ``timeout`` the request passes, unless
``failure_mode_deny`` is true (then it gets an ``unspecified`` error). Headers
the service asks to add (``request_headers_to_add``,
``response_headers_to_add``) go into the request and response Mutations.
The gRPC call blocks only its request's greenlet (grpcio under gevent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.filters.options import positive, read_options
from metaproxy.message import ErrorType, ProxyError
from metaproxy.settings import Section, parse_address

log = logging.getLogger("metaproxy.ratelimit")

RATE_LIMITED_FLAG = "RL"
SERVICE_ERROR_FLAG = "RLSE"
DEFAULT_TIMEOUT = 0.1
_SCRATCH_KEY = "ratelimit.response_headers"

#: One descriptor: (entry key, metadata key or None, constant value or None) per entry.
Descriptor = tuple[tuple[str, str | None, str | None], ...]


def _read_descriptor(sec: Section) -> Descriptor | None:
    entries = []
    for esec in sec.sections("entries", required=True):
        key = esec.take("key", str)
        md_key = esec.take("metadata", str, None)
        value = esec.take("value", (str, int, float), None)
        esec.finish()
        if (md_key is None) == (value is None):
            esec.problem("give exactly one of metadata or value")
            continue
        if key is not None:
            entries.append((key, md_key, None if value is None else str(value)))
    sec.finish()
    return tuple(entries) if entries else None


class RateLimitFilter(Filter):
    name = "ratelimit"

    def __init__(self, options: Mapping[str, Any], env: FilterEnv) -> None:
        super().__init__(options, env)
        self.server = ""
        self.domain = ""
        self.descriptors: list[Descriptor] = []
        self.timeout = DEFAULT_TIMEOUT
        self.failure_mode_deny = False
        read_options(options, self._read)
        stats = env.services.get("stats")
        scope = f"metaprotocol.{env.listener}.ratelimit"
        names = ("ok", "over_limit", "error", "failure_mode_allowed")
        self._stats = {n: stats.counter(scope, n) for n in names} if stats is not None else {}
        self._channel: Any = None
        self._stub: Any = None
        # Imported here so a proxy without this filter never loads grpc and the protobufs.
        from envoy.service.ratelimit.v3 import rls_pb2

        self._pb = rls_pb2

    def _read(self, sec: Section) -> None:
        server = sec.take("server", str)
        if server is not None:
            try:
                parse_address(server)
                self.server = server
            except ValueError as exc:
                sec.problem(str(exc), "server")
        self.domain = sec.take("domain", str) or ""
        for dsec in sec.sections("descriptors", required=True):
            descriptor = _read_descriptor(dsec)
            if descriptor is not None:
                self.descriptors.append(descriptor)
        self.timeout = sec.take("timeout", "duration", DEFAULT_TIMEOUT, positive)
        self.failure_mode_deny = sec.take("failure_mode_deny", bool, False)

    # -- request path ---------------------------------------------------------------
    def build_request(self, ctx: RequestContext) -> Any | None:
        """The RateLimitRequest for one request, or None when no descriptor applies."""
        md = ctx.metadata
        pb = self._pb
        request = pb.RateLimitRequest(domain=self.domain, hits_addend=1)
        for descriptor in self.descriptors:
            values = []
            for key, md_key, constant in descriptor:
                value = constant if md_key is None else md.get_str(md_key)
                if value is None:
                    break
                values.append((key, value))
            else:
                d = request.descriptors.add()
                for key, value in values:
                    d.entries.add(key=key, value=value)
        return request if request.descriptors else None

    def _call(self, request: Any) -> Any:
        if self._stub is None:
            import grpc
            from envoy.service.ratelimit.v3 import rls_pb2_grpc

            self._channel = grpc.insecure_channel(self.server)
            self._stub = rls_pb2_grpc.RateLimitServiceStub(self._channel)
        return self._stub.ShouldRateLimit(request, timeout=self.timeout)

    def _count(self, name: str) -> None:
        if self._stats:
            self._stats[name].inc()

    def on_request(self, ctx: RequestContext) -> ProxyError | None:
        request = self.build_request(ctx)
        if request is None:
            return None
        try:
            response = self._call(request)
        except Exception as exc:  # grpc.RpcError, or a channel that cannot be made
            self._count("error")
            details = exc.details() if hasattr(exc, "details") else exc
            log.warning("rate limit service %s failed: %s", self.server, details)
            if self.failure_mode_deny:
                return ProxyError(ErrorType.UNSPECIFIED, "rate limit service unavailable", SERVICE_ERROR_FLAG)
            self._count("failure_mode_allowed")
            return None
        for header in response.request_headers_to_add:
            ctx.mutation[header.key] = header.value
        if response.response_headers_to_add:
            ctx.scratch[_SCRATCH_KEY] = [(h.key, h.value) for h in response.response_headers_to_add]
        if response.overall_code == self._pb.RateLimitResponse.OVER_LIMIT:
            self._count("over_limit")
            return ProxyError(ErrorType.OVER_LIMIT, "rate limit exceeded", RATE_LIMITED_FLAG)
        self._count("ok")
        return None

    def on_response(self, ctx: RequestContext) -> None:
        for key, value in ctx.scratch.get(_SCRATCH_KEY, ()):
            ctx.response_mutation[key] = value

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None
