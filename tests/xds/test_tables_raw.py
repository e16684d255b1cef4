"""The proxy's table builder reading routes from the received bytes agrees with reading the parsed message."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from metaproxy.xds.tables import RouteTableBuilder, route_slices


def _route(name: str, cluster: str, method: str | None = None) -> rc.Route:
    match = rc.RouteMatch(headers=[rc.HeaderMatcher(name="method", exact_match=method)] if method else [])
    return rc.Route(name=name, match=match, route=rc.RouteAction(cluster=cluster))


def _config(routes_a: list[rc.Route], routes_b: list[rc.Route]) -> RouteConfiguration:
    return RouteConfiguration(name="demo_9191", virtual_hosts=[
        rc.VirtualHost(name="a", domains=["*"], routes=routes_a),
        rc.VirtualHost(name="b", domains=["x", "y"], routes=routes_b)])


def _summary(table):
    return [(r.name, tuple(c.name for c in r.clusters)) for r in table.routes], table.source


def test_route_slices_find_every_route_of_every_virtual_host():
    config = _config([_route("r1", "c1", "m1"), _route("", "c2")], [_route("r3", "c3")])
    slices = route_slices(config.SerializeToString())
    assert [(v, rc.Route.FromString(data).name) for v, data in slices] == [(0, "r1"), (0, ""), (1, "r3")]
    assert route_slices(b"\x12\x05\x1a\x09") is None  # truncated: the caller falls back to the message


def test_raw_and_message_builds_agree_and_unnamed_routes_follow_their_position():
    first = _config([_route("", "c0"), _route("r1", "c1", "m1")], [_route("r3", "c3")])
    raw_builder, msg_builder = RouteTableBuilder(), RouteTableBuilder()
    assert _summary(raw_builder.build(first, raw=first.SerializeToString())) == _summary(msg_builder.build(first))
    # a route inserted first: the unnamed route moves to position 1 and must be named route-1 now
    second = _config([_route("new", "cn"), _route("", "c0"), _route("r1", "c1", "m1")], [_route("r3", "c3")])
    raw_table = raw_builder.build(second, raw=second.SerializeToString())
    assert _summary(raw_table) == _summary(msg_builder.build(second))
    assert [r.name for r in raw_table.routes] == ["new", "route-1", "r1", "r3"]
