"""MetaRouter -> Envoy RouteConfiguration, the way Aeraki translates it.

One RouteConfiguration per MetaRouter, named ``HOST_PORT`` (Aeraki's name for
a service port's routes), with one virtual host. Each MetaRoute becomes a
Route whose ``match.headers`` are the attribute matchers (newer
``string_match`` form; ``present_match`` for a bare attribute), whose action
names ``outbound|PORT|SUBSET|HOST`` clusters (weighted when there are
several destinations), and whose request/response headers to add carry the
mutations. ``timeout``, ``retry_policy`` and ``hash_policy`` are our
extensions beyond Aeraki.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption, RuntimeFractionalPercent
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import UInt32Value

from metaproxy.controlplane.model import Destination, MetaRoute, MetaRouter, StringMatch


class TranslationError(ValueError):
    """A MetaRouter that cannot be turned into a route configuration (e.g. no port known)."""


def cluster_name(dest: Destination, default_port: int) -> str:
    """Istio's ``outbound|PORT|SUBSET|HOST``."""
    return f"outbound|{dest.port or default_port}|{dest.subset}|{dest.host}"


def route_config_name(host: str, port: int) -> str:
    """Aeraki's route configuration name for a service port: ``HOST_PORT``."""
    return f"{host}_{port}"


def service_port(router: MetaRouter) -> int:
    """The port whose routes these are: ``spec.port``, else the port the destinations on the host agree on."""
    if router.port:
        return router.port
    host = router.hosts[0]
    ports = {d.destination.port for r in router.routes for d in r.route if d.destination.host == host}
    ports.discard(None)
    if not ports:
        ports = {d.destination.port for r in router.routes for d in r.route}
        ports.discard(None)
    if len(ports) != 1:
        found = ", ".join(str(p) for p in sorted(ports)) or "none"
        raise TranslationError(
            f"MetaRouter {router.name!r}: cannot tell the service port of {host!r} "
            f"(destination ports: {found}); set spec.port")
    return ports.pop()  # type: ignore[return-value]


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _header(name: str, match: StringMatch) -> rc.HeaderMatcher:
    if match.kind == "present":
        return rc.HeaderMatcher(name=name, present_match=True)
    if match.kind == "regex":
        sm = StringMatcher(safe_regex=RegexMatcher(regex=match.value))
    else:
        sm = StringMatcher(**{match.kind: match.value})
    return rc.HeaderMatcher(name=name, string_match=sm)


def _mutations(pairs: tuple[tuple[str, str], ...]) -> list[HeaderValueOption]:
    return [HeaderValueOption(header=HeaderValue(key=k, value=v)) for k, v in pairs]


def translate_route(route: MetaRoute, port: int) -> rc.Route:
    """One MetaRoute -> one Envoy Route."""
    action = rc.RouteAction()
    if len(route.route) == 1:
        action.cluster = cluster_name(route.route[0].destination, port)
    else:
        for wd in route.route:
            action.weighted_clusters.clusters.append(rc.WeightedCluster.ClusterWeight(
                name=cluster_name(wd.destination, port), weight=UInt32Value(value=wd.weight)))
    if route.mirror is not None:
        pct = 100.0 if route.mirror_percentage is None else route.mirror_percentage
        fraction = FractionalPercent(numerator=int(round(pct * 10_000)), denominator=FractionalPercent.MILLION)
        action.request_mirror_policies.append(rc.RouteAction.RequestMirrorPolicy(
            cluster=cluster_name(route.mirror, port),
            runtime_fraction=RuntimeFractionalPercent(default_value=fraction)))
    for key in route.hash_policy:
        action.hash_policy.append(rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=key)))
    if route.timeout is not None:
        action.timeout.CopyFrom(_duration(route.timeout))
    if route.retry_policy is not None:
        rp = route.retry_policy
        policy = rc.RetryPolicy(retry_on=",".join(rp.retry_on), num_retries=UInt32Value(value=rp.num_retries))
        if rp.per_try_timeout is not None:
            policy.per_try_timeout.CopyFrom(_duration(rp.per_try_timeout))
        action.retry_policy.CopyFrom(policy)
    return rc.Route(
        name=route.name,
        match=rc.RouteMatch(headers=[_header(k, m) for k, m in route.match]),
        route=action,
        request_headers_to_add=_mutations(route.request_mutation),
        response_headers_to_add=_mutations(route.response_mutation),
    )


#: Translated routes by (route, port); protos in it are never mutated, only copied into configs.
_CACHE: dict[tuple[MetaRoute, int], rc.Route] = {}
_CACHE_MAX = 200_000


def cached_translation(route: MetaRoute, port: int) -> rc.Route:
    """``translate_route`` through a cache by value; the returned message must not be mutated."""
    key = (route, port)
    out = _CACHE.get(key)
    if out is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        out = _CACHE[key] = translate_route(route, port)
    return out


def translate(router: MetaRouter) -> RouteConfiguration:
    """A MetaRouter -> its RouteConfiguration (raises TranslationError)."""
    port = service_port(router)
    host = router.hosts[0]
    return assemble(host, port, [cached_translation(r, port) for r in router.routes])


def assemble(host: str, port: int, routes: list[rc.Route],
             previous: tuple[RouteConfiguration, list[rc.Route]] | None = None) -> RouteConfiguration:
    """The RouteConfiguration of ``host``:``port`` holding ``routes`` (which are copied in).

    ``previous`` is the configuration built last time for the same name and
    the route objects it was built from: when the new list differs from that
    one in a few positions only (compared by identity, so unchanged routes
    cost nothing), the old configuration is copied whole in C and only those
    positions are replaced. Copying 10,000 route messages one by one into a
    new configuration took 5 times longer.
    """
    name = route_config_name(host, port)
    if previous is not None:
        old_config, old_routes = previous
        if (old_config.name == name and len(old_routes) == len(routes) and len(old_config.virtual_hosts) == 1
                and old_config.virtual_hosts[0].name == f"{host}:{port}"):
            changed = [i for i, (a, b) in enumerate(zip(old_routes, routes, strict=True)) if a is not b]
            if len(changed) * 4 < len(routes):
                config = RouteConfiguration()
                config.CopyFrom(old_config)
                target = config.virtual_hosts[0].routes
                for i in changed:
                    target[i].CopyFrom(routes[i])
                return config
    vhost = rc.VirtualHost(name=f"{host}:{port}", domains=["*"], routes=routes)
    return RouteConfiguration(name=name, virtual_hosts=[vhost])
