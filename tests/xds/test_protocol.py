"""The control plane speaks xDS correctly: checked with a raw client over real gRPC.

State of the world: versions, nonces, ACK/NACK, only-on-change, only the
requested names, stale nonces ignored. Delta: subscribe/unsubscribe,
removed_resources, initial_resource_versions. Also ADS and FetchRoutes.
"""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from envoy.service.route.v3 import rds_pb2_grpc

from metaproxy.xds.resources import ROUTE_TYPE_URL, unpack
from tests.xds.helpers import RawStream, meta_router, wait_until, write_docs

NAME = "demo_9191"
OTHER = "other_7000"


def _names(resp) -> list[str]:
    return [unpack(r).name for r in resp.resources]


def _acks(cp) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{cp.admin_port}/acks", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def stream(channel):
    s = RawStream(channel)
    yield s
    s.close()


def test_first_response_has_version_nonce_and_only_the_requested_resource(control_plane, routes_dir, stream):
    write_docs(routes_dir / "other.yaml", meta_router(host="other", port=7000, name="other"))
    wait_until(lambda: OTHER in control_plane.store.snapshot())
    stream.request([NAME])
    resp = stream.next()
    assert resp.type_url == ROUTE_TYPE_URL
    assert resp.version_info and resp.nonce
    assert _names(resp) == [NAME]


def test_ack_is_recorded_and_nothing_is_resent_until_a_change(control_plane, routes_dir, stream):
    stream.request([NAME])
    first = stream.next()
    stream.request([NAME], version=first.version_info, nonce=first.nonce)
    stream.expect_nothing()
    view = wait_until(lambda: [s for s in _acks(control_plane)["streams"] if s["acked_version"]])
    assert view[0]["acked_version"] == first.version_info
    assert view[0]["node"] == "test-node"
    # Touching a file without changing what it means sends nothing either.
    write_docs(routes_dir / "demo.yaml", meta_router())
    wait_until(lambda: control_plane.loads >= 2)
    stream.expect_nothing()
    # A real change is pushed with a new version and a new nonce.
    write_docs(routes_dir / "demo.yaml", meta_router(split=(0, 100)))
    second = stream.next()
    assert second.version_info != first.version_info
    assert second.nonce != first.nonce
    assert _names(second) == [NAME]
    cfg = unpack(second.resources[0])
    weights = [c.weight.value for c in cfg.virtual_hosts[0].routes[0].route.weighted_clusters.clusters]
    assert weights == [0, 100]


def test_a_change_to_an_unrequested_resource_is_not_sent(control_plane, routes_dir, stream):
    stream.request([NAME])
    first = stream.next()
    stream.request([NAME], version=first.version_info, nonce=first.nonce)
    write_docs(routes_dir / "other.yaml", meta_router(host="other", port=7000, name="other"))
    wait_until(lambda: OTHER in control_plane.store.snapshot())
    stream.expect_nothing()


def test_nack_is_logged_the_stream_kept_and_the_version_not_resent(control_plane, routes_dir, stream, caplog):
    stream.request([NAME])
    first = stream.next()
    with caplog.at_level(logging.WARNING, logger="metaproxy.controlplane.xds"):
        stream.request([NAME], version="", nonce=first.nonce, error="route 'split': cluster not known")
        stream.expect_nothing()
        rec = wait_until(lambda: [s for s in _acks(control_plane)["streams"] if s["nacks"]])[0]
    assert any("NACK from test-node" in r.getMessage() and "cluster not known" in r.getMessage()
               for r in caplog.records)
    assert rec["last_nack"]["reason"] == "route 'split': cluster not known"
    assert rec["last_nack"]["version"] == first.version_info
    # Still the same stream: a later change arrives on it and can be ACKed.
    write_docs(routes_dir / "demo.yaml", meta_router(split=(50, 50)))
    second = stream.next()
    stream.request([NAME], version=second.version_info, nonce=second.nonce)
    wait_until(lambda: [s for s in _acks(control_plane)["streams"] if s["acked_version"] == second.version_info])
    assert stream.error is None


def test_a_request_with_a_stale_nonce_is_ignored(control_plane, routes_dir, stream):
    stream.request([NAME])
    first = stream.next()
    write_docs(routes_dir / "demo.yaml", meta_router(split=(10, 90)))
    second = stream.next()
    # Asking for another name with the old nonce: stale, ignored entirely.
    write_docs(routes_dir / "other.yaml", meta_router(host="other", port=7000, name="other"))
    wait_until(lambda: OTHER in control_plane.store.snapshot())
    stream.request([NAME, OTHER], version=first.version_info, nonce=first.nonce)
    stream.expect_nothing()
    rec = wait_until(lambda: [s for s in _acks(control_plane)["streams"] if s["stale_ignored"]])[0]
    assert rec["acked_version"] == ""
    # The same request with the current nonce is honoured: both names are sent.
    stream.request([NAME, OTHER], version=second.version_info, nonce=second.nonce)
    third = stream.next()
    assert sorted(_names(third)) == sorted([NAME, OTHER])


def test_a_reconnecting_client_with_the_current_version_gets_nothing(control_plane, channel, stream):
    stream.request([NAME])
    first = stream.next()
    again = RawStream(channel)
    try:
        again.request([NAME], version=first.version_info)
        again.expect_nothing()
        again.request([NAME], version="an-old-version")
    finally:
        again.close()
    fresh = RawStream(channel)
    try:
        fresh.request([NAME], version="an-old-version")
        assert fresh.next().version_info == first.version_info
    finally:
        fresh.close()


def test_a_resource_that_appears_later_is_pushed(control_plane, routes_dir, stream):
    stream.request([OTHER])
    stream.expect_nothing(0.2)
    write_docs(routes_dir / "other.yaml", meta_router(host="other", port=7000, name="other"))
    assert _names(stream.next()) == [OTHER]


def test_delta_subscribe_unsubscribe_and_removed_resources(control_plane, routes_dir, channel):
    write_docs(routes_dir / "other.yaml", meta_router(host="other", port=7000, name="other"))
    wait_until(lambda: OTHER in control_plane.store.snapshot())
    d = RawStream(channel, "delta")
    try:
        d.delta(subscribe=[NAME])
        r1 = d.next()
        assert [r.name for r in r1.resources] == [NAME] and r1.nonce and r1.resources[0].version
        assert unpack(r1.resources[0].resource).name == NAME
        d.delta(nonce=r1.nonce)  # ACK
        d.delta(subscribe=[OTHER], nonce=r1.nonce)
        r2 = d.next()
        assert [r.name for r in r2.resources] == [OTHER]  # only the new one
        d.delta(nonce=r2.nonce)
        # A change to NAME only sends NAME.
        write_docs(routes_dir / "demo.yaml", meta_router(split=(30, 70)))
        r3 = d.next()
        assert [r.name for r in r3.resources] == [NAME]
        assert r3.resources[0].version != r1.resources[0].version
        d.delta(nonce=r3.nonce)
        # Unsubscribed: changes to OTHER are no longer sent.
        d.delta(unsubscribe=[OTHER], nonce=r3.nonce)
        write_docs(routes_dir / "other.yaml", meta_router(host="other", port=7000, name="other", split=(1, 99)))
        wait_until(lambda: control_plane.loads >= 4)
        d.expect_nothing()
        # Deleting NAME's file: the client is told it was removed.
        (routes_dir / "demo.yaml").unlink()
        r4 = d.next()
        assert list(r4.removed_resources) == [NAME] and not r4.resources
        d.delta(nonce=r4.nonce)
        view = wait_until(lambda: [s for s in _acks(control_plane)["streams"]
                                   if s["kind"] == "delta" and s["acks"] >= 4])
        assert view[0]["resource_names"] == [NAME]
    finally:
        d.close()


def test_delta_initial_resource_versions_on_reconnect(control_plane, routes_dir, channel):
    write_docs(routes_dir / "other.yaml", meta_router(host="other", port=7000, name="other"))
    wait_until(lambda: OTHER in control_plane.store.snapshot())
    snap = control_plane.store.snapshot()
    d = RawStream(channel, "delta")
    try:
        # The client has NAME at the current version, OTHER at an old one, and a resource that is gone.
        d.delta(subscribe=[NAME, OTHER, "gone_1"],
                initial={NAME: snap[NAME].version, OTHER: "old", "gone_1": "v0"})
        resp = d.next()
        assert [r.name for r in resp.resources] == [OTHER]
        assert list(resp.removed_resources) == ["gone_1"]
        d.delta(nonce=resp.nonce, error="cannot apply other_7000")
        d.expect_nothing()
        rec = wait_until(lambda: [s for s in _acks(control_plane)["streams"] if s["nacks"]])[0]
        assert rec["last_nack"]["reason"] == "cannot apply other_7000"
    finally:
        d.close()


def test_ads_serves_routes_and_ignores_other_types(control_plane, channel):
    import queue
    out: queue.Queue = queue.Queue()
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(iter(out.get, None))
    try:
        out.put(DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
                                 node=Node(id="ads-node")))
        out.put(DiscoveryRequest(type_url=ROUTE_TYPE_URL, resource_names=[NAME]))
        resp = next(call)
        assert resp.type_url == ROUTE_TYPE_URL and _names(resp) == [NAME]
    finally:
        out.put(None)
        call.cancel()


def test_fetch_routes(control_plane, channel):
    stub = rds_pb2_grpc.RouteDiscoveryServiceStub(channel)
    resp = stub.FetchRoutes(DiscoveryRequest(resource_names=[NAME], type_url=ROUTE_TYPE_URL), timeout=5)
    assert _names(resp) == [NAME] and resp.version_info
    assert stub.FetchRoutes(DiscoveryRequest(resource_names=["nope"]), timeout=5).resources == []


def test_healthz_and_config_views(control_plane):
    with urllib.request.urlopen(f"http://127.0.0.1:{control_plane.admin_port}/healthz", timeout=5) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["resources"] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{control_plane.admin_port}/config", timeout=5) as r:
        config = json.loads(r.read())
    assert config["resources"][NAME]["route_config"]["routes"][0]["name"] == "split"
