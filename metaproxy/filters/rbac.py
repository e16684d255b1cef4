"""RBAC: allow or deny requests by who sent them (the peer's identity) and what they ask (metadata).

::

    - name: rbac
      policies:                              # in order; the first policy that matches decides
        - name: no-test-users
          action: deny
          match: {metadata: [{name: x-user, prefix: test-}]}
        - name: mesh-clients
          action: allow
          principals:                        # any one of them (none: any peer)
            - {name: peer_identity, prefix: "spiffe://cluster.local/ns/prod/"}
            - {name: downstream_address, prefix: "127.0.0.1:"}
      default_action: deny                   # when no policy matches (allow by default)
      shadow: false                          # true: decide, count and log, but never deny

A policy matches when every ``match.metadata`` matcher holds and any one
``principal`` does. Principals are matchers (exact, prefix, suffix, regex,
present, invert) over the connection: ``peer_identity`` (the client
certificate's SPIFFE URI or CN, empty without mTLS) and ``downstream_address``
(``ip:port``). A denial is a ``permission_denied`` error reply. Shadow mode
lets an operator try a policy on live traffic first: stats ``shadow_denied``
and ``shadow_allowed`` and a log line say what enforcing would do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.filters.options import read_options
from metaproxy.message import ErrorType, Metadata, ProxyError
from metaproxy.router import Matcher, parse_matchers
from metaproxy.settings import Section

log = logging.getLogger("metaproxy.rbac")

ACTIONS = ("allow", "deny")
PRINCIPAL_KEYS = ("peer_identity", "downstream_address")
DENIED_FLAG = "UAEX"


@dataclass(frozen=True)
class Policy:
    name: str
    action: str
    matchers: tuple[Matcher, ...]
    principals: tuple[Matcher, ...]

    def matches(self, metadata: Metadata, peer: Metadata) -> bool:
        for m in self.matchers:
            if not m.matches(metadata):
                return False
        if not self.principals:
            return True
        return any(p.matches(peer) for p in self.principals)


class RbacFilter(Filter):
    name = "rbac"
    blocking = False  # a match on metadata and the peer identity

    def __init__(self, options: Mapping[str, Any], env: FilterEnv) -> None:
        super().__init__(options, env)
        self.policies: list[Policy] = []
        self.default_action = "allow"
        self.shadow = False
        read_options(options, self._read)
        stats = env.services.get("stats")
        scope = f"metaprotocol.{env.listener}.rbac"
        names = ("allowed", "denied", "shadow_allowed", "shadow_denied")
        self._stats = {n: stats.counter(scope, n) for n in names} if stats is not None else {}

    def _read(self, sec: Section) -> None:
        seen: set[str] = set()
        for index, psec in enumerate(sec.sections("policies")):
            name = psec.take("name", str, f"policy-{index}")
            action = psec.one_of(psec.take("action", str, "allow"), ACTIONS, "action")
            matchers: tuple[Matcher, ...] = ()
            match = psec.section("match")
            if match is not None:
                matchers = parse_matchers(match)
                match.finish()
            principals = parse_matchers(psec, "principals")
            for i, p in enumerate(principals):
                if p.name not in PRINCIPAL_KEYS:
                    psec.problem(f"name {p.name!r} is not one of {', '.join(PRINCIPAL_KEYS)}", f"principals[{i}]")
            psec.finish()
            if name in seen:
                psec.problem(f"duplicate policy name {name!r}", "name")
            seen.add(name)
            if action is not None:
                self.policies.append(Policy(name, action, matchers, principals))
        self.default_action = sec.one_of(sec.take("default_action", str, "allow"), ACTIONS, "default_action") \
            or "allow"
        self.shadow = sec.take("shadow", bool, False)

    def decide(self, ctx: RequestContext) -> tuple[str, str]:
        """(action, policy name) for one request; the policy name is "" for the default action."""
        peer = Metadata(peer_identity=ctx.peer_identity, downstream_address=ctx.downstream_address)
        for policy in self.policies:
            if policy.matches(ctx.metadata, peer):
                return policy.action, policy.name
        return self.default_action, ""

    def on_request(self, ctx: RequestContext) -> ProxyError | None:
        action, policy = self.decide(ctx)
        if self.shadow:
            key = "shadow_denied" if action == "deny" else "shadow_allowed"
            if key in self._stats:
                self._stats[key].inc()
            if action == "deny":
                log.info("rbac shadow: would deny %s %s from %s (policy %s)", ctx.metadata.get("service", ""),
                         ctx.metadata.get("method", ""), ctx.peer_identity or ctx.downstream_address,
                         policy or "default")
            return None
        if action == "deny":
            if self._stats:
                self._stats["denied"].inc()
            reason = f"policy {policy!r}" if policy else "default action"
            return ProxyError(ErrorType.PERMISSION_DENIED, f"rbac: denied by {reason}", DENIED_FLAG)
        if self._stats:
            self._stats["allowed"].inc()
        return None
