"""Envoy RouteConfiguration (as Aeraki serves it) -> metaproxy's route-config dict.

The result goes through :func:`metaproxy.router.parse_route_config`, so a
route that comes over xDS is validated by exactly the code that validates a
static route. This module only maps fields; anything it cannot map faithfully
(a redirect, a range match, an unknown hash policy) is an :class:`UnsupportedRoute`
error, which the RDS client turns into a NACK with the reason.
"""

from __future__ import annotations

import re
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.duration_pb2 import Duration

_DENOMINATORS = {
    FractionalPercent.HUNDRED: 100,
    FractionalPercent.TEN_THOUSAND: 10_000,
    FractionalPercent.MILLION: 1_000_000,
}


class UnsupportedRoute(ValueError):
    """A field of the RouteConfiguration that metaproxy cannot honour."""


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _string_matcher(name: str, sm: Any, where: str) -> dict[str, Any]:
    kind = sm.WhichOneof("match_pattern")
    if kind is None:
        raise UnsupportedRoute(f"{where}: string_match has no pattern")
    if kind == "custom":
        raise UnsupportedRoute(f"{where}: custom string matchers are not supported")
    if kind == "safe_regex":
        pattern = sm.safe_regex.regex
    elif sm.ignore_case or kind == "contains":
        text = re.escape(getattr(sm, kind))
        body = {"exact": text, "prefix": text + ".*", "suffix": ".*" + text, "contains": ".*" + text + ".*"}[kind]
        pattern = ("(?i)" if sm.ignore_case else "") + body
    else:
        return {"name": name, kind: getattr(sm, kind)}
    if sm.ignore_case and kind == "safe_regex":
        pattern = "(?i)" + pattern
    return {"name": name, "regex": pattern}


def header_to_matcher(header: rc.HeaderMatcher, where: str) -> dict[str, Any]:
    """One HeaderMatcher (old ``*_match`` fields or the newer ``string_match``) -> a metadata matcher."""
    kind = header.WhichOneof("header_match_specifier")
    name = header.name
    if kind is None:
        # Envoy: no specifier means "present".
        out: dict[str, Any] = {"name": name, "present": True}
    elif kind == "exact_match":
        out = {"name": name, "exact": header.exact_match}
    elif kind == "prefix_match":
        out = {"name": name, "prefix": header.prefix_match}
    elif kind == "suffix_match":
        out = {"name": name, "suffix": header.suffix_match}
    elif kind == "contains_match":
        out = {"name": name, "regex": ".*" + re.escape(header.contains_match) + ".*"}
    elif kind == "safe_regex_match":
        out = {"name": name, "regex": header.safe_regex_match.regex}
    elif kind == "present_match":
        out = {"name": name, "present": header.present_match}
    elif kind == "string_match":
        out = _string_matcher(name, header.string_match, where)
    else:
        raise UnsupportedRoute(f"{where}: header matcher {kind} is not supported")
    if header.invert_match:
        out["invert"] = True
    return out


def _percentage(fraction: FractionalPercent) -> float:
    denominator = _DENOMINATORS.get(fraction.denominator, 100)
    return min(100.0, fraction.numerator * 100.0 / denominator)


def _action(action: rc.RouteAction, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    specifier = action.WhichOneof("cluster_specifier")
    if specifier == "cluster":
        out["cluster"] = action.cluster
    elif specifier == "weighted_clusters":
        out["weighted_clusters"] = [
            {"name": wc.name, "weight": wc.weight.value if wc.HasField("weight") else 0}
            for wc in action.weighted_clusters.clusters
        ]
    else:
        raise UnsupportedRoute(f"{where}: route needs cluster or weighted_clusters (got {specifier})")
    if action.HasField("timeout"):
        out["timeout"] = _seconds(action.timeout)
    if action.HasField("retry_policy"):
        rp = action.retry_policy
        policy: dict[str, Any] = {
            "retry_on": [item.strip().replace("-", "_") for item in rp.retry_on.split(",") if item.strip()],
            "num_retries": rp.num_retries.value if rp.HasField("num_retries") else 1,
        }
        if rp.HasField("per_try_timeout"):
            policy["per_try_timeout"] = _seconds(rp.per_try_timeout)
        out["retry_policy"] = policy
    hashes = []
    for hp in action.hash_policy:
        if hp.WhichOneof("policy_specifier") != "header":
            raise UnsupportedRoute(f"{where}: only header hash policies are supported")
        hashes.append(hp.header.header_name)
    if hashes:
        out["hash_policy"] = hashes
    mirrors = []
    for mp in action.request_mirror_policies:
        pct = 100.0
        if mp.HasField("runtime_fraction"):
            pct = _percentage(mp.runtime_fraction.default_value)
        mirrors.append({"cluster": mp.cluster, "percentage": pct})
    if mirrors:
        out["request_mirror_policies"] = mirrors
    return out


def _mutation(options: Any) -> list[dict[str, str]]:
    return [{"key": o.header.key, "value": o.header.value or o.header.raw_value.decode("utf-8", "replace")}
            for o in options]


def route_to_dict(route: rc.Route, where: str) -> dict[str, Any]:
    """One Envoy Route -> one metaproxy route dict."""
    if route.WhichOneof("action") != "route":
        raise UnsupportedRoute(f"{where}: only forwarding routes are supported (got {route.WhichOneof('action')})")
    out: dict[str, Any] = {"name": route.name} if route.name else {}
    matchers = [header_to_matcher(h, f"{where}.match.headers[{i}]") for i, h in enumerate(route.match.headers)]
    out["match"] = {"metadata": matchers}
    action = _action(route.route, f"{where}.route")
    if route.request_headers_to_add:
        action["request_mutation"] = _mutation(route.request_headers_to_add)
    if route.response_headers_to_add:
        action["response_mutation"] = _mutation(route.response_headers_to_add)
    out["route"] = action
    return out


def route_config_to_dict(config: RouteConfiguration) -> dict[str, Any]:
    """The whole RouteConfiguration -> the dict that ``parse_route_config`` reads.

    Aeraki sends one virtual host; if there are several their routes are
    taken in order, as one list.
    """
    routes = []
    for v, vhost in enumerate(config.virtual_hosts):
        for r, route in enumerate(vhost.routes):
            routes.append(route_to_dict(route, f"virtual_hosts[{v}].routes[{r}]"))
    return {"name": config.name, "routes": routes}
