"""RdsSubscription against the real control plane over real gRPC (threads, in-process)."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher

from metaproxy.controlplane.app import ControlPlane
from metaproxy.router import RouteHolder
from metaproxy.testing.harness import free_port
from metaproxy.xds import RdsSubscription
from tests.xds.helpers import meta_router, wait_until, write_docs

NAME = "demo_9191"


def _clusters(holder: RouteHolder) -> list[tuple[str, int]]:
    route = holder.current.routes[-1]
    return [(c.name, c.weight) for c in route.clusters]


@pytest.fixture
def subscribe(control_plane):
    subs: list[RdsSubscription] = []

    def make(holder: RouteHolder, name: str = NAME, port: int | None = None, **kw) -> RdsSubscription:
        kw.setdefault("backoff_base", 0.05)
        kw.setdefault("backoff_max", 0.2)
        sub = RdsSubscription(holder, f"127.0.0.1:{port or control_plane.port}", name, 5.0, **kw).start()
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.stop()


@pytest.mark.parametrize("use_ads", [False, True])
def test_the_holder_gets_the_table_and_follows_file_edits(control_plane, routes_dir, subscribe, use_ads):
    holder = RouteHolder()
    sub = subscribe(holder, use_ads=use_ads)
    assert sub.wait_ready(5)
    assert _clusters(holder) == [("outbound|9191|v1|demo", 20), ("outbound|9191|v2|demo", 80)]
    assert holder.current.version == sub.version == sub.table_version
    write_docs(routes_dir / "demo.yaml", meta_router(split=(100, 0)))
    wait_until(lambda: _clusters(holder) == [("outbound|9191|v1|demo", 100), ("outbound|9191|v2|demo", 0)])
    assert sub.updates == 2 and sub.rejects == 0
    acked = wait_until(lambda: [s for s in control_plane.registry.view()["streams"]
                                if s["acked_version"] == holder.current.version])
    assert acked[0]["node"] == sub.node_id


def _bad(kind: str) -> RouteConfiguration:
    if kind == "regex":
        routes = [rc.Route(name="bad", match=rc.RouteMatch(headers=[
            rc.HeaderMatcher(name="method", safe_regex_match=RegexMatcher(regex="(unclosed"))]),
            route=rc.RouteAction(cluster="c"))]
    else:
        routes = [rc.Route(name="twice", route=rc.RouteAction(cluster="c")),
                  rc.Route(name="twice", route=rc.RouteAction(cluster="d"))]
    return RouteConfiguration(name=NAME, virtual_hosts=[rc.VirtualHost(name="v", routes=routes)])


@pytest.mark.parametrize("kind, reason", [("regex", "invalid regex"), ("duplicate", "duplicate route name 'twice'")])
def test_a_bad_update_is_nacked_with_the_reason_and_the_old_table_kept(control_plane, routes_dir, subscribe,
                                                                       kind, reason):
    holder = RouteHolder()
    sub = subscribe(holder)
    assert sub.wait_ready(5)
    good = holder.current
    control_plane.store.put(_bad(kind))  # what a careless control plane might send
    nack = wait_until(lambda: [s["last_nack"] for s in control_plane.registry.view()["streams"] if s["last_nack"]])
    assert reason in nack[0]["reason"]
    assert nack[0]["kept_version"] == good.version and nack[0]["version"] != good.version
    assert sub.rejects == 1 and reason in sub.last_error
    assert holder.current is good
    # A later good update is applied and ACKed.
    write_docs(routes_dir / "demo.yaml", meta_router(split=(60, 40)))
    wait_until(lambda: holder.current is not good and _clusters(holder)[0][1] == 60)
    wait_until(lambda: [s for s in control_plane.registry.view()["streams"]
                        if s["acked_version"] == holder.current.version])


def test_control_plane_restart_reconnects_and_keeps_the_last_good_table(routes_dir, subscribe):
    port = free_port()
    cp = ControlPlane([str(routes_dir)], listen=f"127.0.0.1:{port}", admin=None, poll=0.01, debounce=0.02).start()
    holder = RouteHolder()
    sub = subscribe(holder, port=port)
    try:
        assert sub.wait_ready(5)
        before = holder.current
        cp.stop(grace=0)
        wait_until(lambda: not sub.connected and sub.reconnects >= 1)
        assert holder.current is before  # still serving the last good routes
        write_docs(routes_dir / "demo.yaml", meta_router(split=(5, 95)))
        cp = ControlPlane([str(routes_dir)], listen=f"127.0.0.1:{port}", admin=None, poll=0.01, debounce=0.02)
        cp.start()
        wait_until(lambda: _clusters(holder)[0][1] == 5, timeout=10)
        assert sub.connected
    finally:
        cp.stop(grace=0)


def test_wait_ready_is_bounded_when_nothing_is_served(subscribe):
    holder = RouteHolder()
    sub = subscribe(holder, name="nothing_1")
    assert sub.wait_ready(0.3) is False
    assert holder.current is None


def test_after_a_broken_stream_the_known_version_is_not_sent_again(control_plane, subscribe):
    holder = RouteHolder()
    sub = subscribe(holder)
    assert sub.wait_ready(5)
    table = holder.current
    first_stream = control_plane.registry.view()["streams"][0]["stream"]
    sub._call.cancel()  # the stream breaks (as on a network blip)
    wait_until(lambda: sub.reconnects >= 1)
    # The new stream carries the version the proxy has, so the server sends nothing on it.
    fresh = wait_until(lambda: [s for s in control_plane.registry.view()["streams"]
                                if s["node"] == sub.node_id and s["stream"] != first_stream])
    assert fresh[0]["responses"] == 0
    assert holder.current is table and sub.updates == 1
