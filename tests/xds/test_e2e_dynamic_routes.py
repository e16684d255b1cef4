"""What a user sees: MetaRouter files -> control plane -> metaproxy -> tinyrpc traffic.

Routes change under live traffic on long-lived connections with nothing
dropped; a control plane that dies and comes back changes nothing in force
until it has something new to say.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from metaproxy.controlplane.app import ControlPlane
from metaproxy.message import MessageType
from metaproxy.testing.harness import free_port
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.xds.helpers import ControlPlaneProcess, meta_router, wait_until, write_docs

pytestmark = pytest.mark.slow
NAME = "demo_9191"


def _proxy_config(v1, v2, cp_port: int) -> dict:
    return {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [{"name": "in", "address": "127.0.0.1:0", "protocol": {"codec": "tinyrpc"},
                       "rds": {"route_config_name": NAME, "server": f"127.0.0.1:{cp_port}",
                               "initial_fetch_timeout": "5s"}}],
        "clusters": [{"name": "outbound|9191|v1|demo", "endpoints": [v1.address]},
                     {"name": "outbound|9191|v2|demo", "endpoints": [v2.address]}],
    }


def _dump(p) -> dict:
    host, port = p.admin_address
    with urllib.request.urlopen(f"http://{host}:{port}/config_dump", timeout=5) as r:
        return json.loads(r.read())["listeners"][0]


def _version(p) -> str:
    rc_ = _dump(p)["route_config"]
    return rc_["version"] if rc_ else ""


def _served_by(client: TinyRpcClient) -> str:
    md, body = client.call("ping")
    if md.get("message_type") != MessageType.RESPONSE:
        raise AssertionError(f"not a response: {dict(md)} {body!r}")
    return body.split(b":", 1)[0].decode()


class Traffic:
    """Steady requests on ``n`` long-lived connections until stopped; counts who served what."""

    def __init__(self, address: tuple[str, int], n: int = 4) -> None:
        self.clients = [TinyRpcClient(*address, timeout=5) for _ in range(n)]
        self.served: Counter = Counter()
        self.failures: list[str] = []
        self.closed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.clients]

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def _run(self, client: TinyRpcClient) -> None:
        deadline = time.monotonic() + 60  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                who = _served_by(client)
            except (ConnectionError, OSError) as exc:
                with self._lock:
                    self.closed += 1
                    self.failures.append(repr(exc))
                return
            except AssertionError as exc:
                with self._lock:
                    self.failures.append(str(exc))
                continue
            with self._lock:
                self.served[who] += 1

    def count(self, who: str) -> int:
        with self._lock:
            return self.served[who]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for c in self.clients:
            c.close()


@pytest.fixture
def upstreams(tinyrpc_server):
    return tinyrpc_server("v1"), tinyrpc_server("v2")


@pytest.fixture
def cp_process(tmp_path):
    routes = tmp_path / "routes"
    routes.mkdir()
    write_docs(routes / "demo.yaml", meta_router(split=(20, 80)))
    procs: list[ControlPlaneProcess] = []

    def start(port: int | None = None, admin_port: int | None = None) -> ControlPlaneProcess:
        cp = ControlPlaneProcess(routes, tmp_path / "control-plane.log", port or free_port(),
                                 admin_port or free_port()).start()
        procs.append(cp)
        return cp

    yield routes, start
    for cp in procs:
        cp.stop()


def test_a_20_80_split_becomes_100_0_within_a_second_of_the_file_edit(upstreams, cp_process, proxy):
    routes, start_cp = cp_process
    cp = start_cp()
    p = proxy(_proxy_config(*upstreams, cp.port))
    wait_until(lambda: _version(p), timeout=10)
    with TinyRpcClient(*p.address()) as client:
        before = Counter(_served_by(client) for _ in range(300))
        assert 0.1 <= before["v1"] / 300 <= 0.32, before
        edited = time.monotonic()
        write_docs(routes / "demo.yaml", meta_router(split=(100, 0)))
        streak, streak_began = 0, 0.0
        deadline = edited + 10
        while streak < 40 and time.monotonic() < deadline:
            now = time.monotonic()
            if _served_by(client) == "v1":
                streak, streak_began = streak + 1, streak_began if streak else now
            else:
                streak = 0
        assert streak >= 40, "the new split was never applied"
        assert streak_began - edited < 1.0, f"applied after {streak_began - edited:.3f}s"
    rds = _dump(p)["rds"]
    assert rds["updates"] == 2 and rds["rejects"] == 0
    assert any(s["acked_version"] == _version(p) for s in cp.get("/acks")["streams"])


def test_50_route_changes_under_steady_traffic_drop_nothing(upstreams, cp_process, proxy):
    routes, start_cp = cp_process
    cp = start_cp()
    p = proxy(_proxy_config(*upstreams, cp.port))
    wait_until(lambda: _version(p), timeout=10)
    traffic = Traffic(p.address(), n=4).start()
    try:
        wait_until(lambda: sum(traffic.served.values()) > 20, timeout=10)
        for i in range(50):
            previous = _version(p)
            split = (100, 0) if i % 2 == 0 else (0, 100)
            write_docs(routes / "demo.yaml", meta_router(split=split))
            wait_until(lambda previous=previous: _version(p) != previous, timeout=5)
            seen = traffic.count("v1" if split[0] else "v2")
            wait_until(lambda split=split, seen=seen: traffic.count("v1" if split[0] else "v2") > seen, timeout=5)
    finally:
        traffic.stop()
    assert traffic.failures == [] and traffic.closed == 0
    assert traffic.count("v1") > 50 and traffic.count("v2") > 50
    rds = _dump(p)["rds"]
    assert rds["updates"] == 51 and rds["rejects"] == 0 and rds["reconnects"] == 0


def test_control_plane_killed_and_restarted_mid_traffic(upstreams, cp_process, proxy):
    routes, start_cp = cp_process
    write_docs(routes / "demo.yaml", meta_router(split=(100, 0)))
    cp = start_cp()
    p = proxy(_proxy_config(*upstreams, cp.port))
    wait_until(lambda: _version(p), timeout=10)
    traffic = Traffic(p.address(), n=2).start()
    try:
        wait_until(lambda: traffic.count("v1") > 20, timeout=10)
        cp.kill()
        wait_until(lambda: not _dump(p)["rds"]["connected"], timeout=10)
        served = traffic.count("v1")
        wait_until(lambda: traffic.count("v1") > served + 50, timeout=10)  # still served, last good routes
        write_docs(routes / "demo.yaml", meta_router(split=(0, 100)))
        start_cp(cp.port, cp.admin_port)
        wait_until(lambda: traffic.count("v2") > 20, timeout=15)
    finally:
        traffic.stop()
    assert traffic.failures == [] and traffic.closed == 0
    rds = _dump(p)["rds"]
    assert rds["connected"] and rds["reconnects"] >= 1 and rds["updates"] == 2


def test_a_bad_update_is_nacked_and_the_proxy_keeps_serving_the_old_routes(upstreams, tmp_path, proxy):
    routes = tmp_path / "routes"
    routes.mkdir()
    write_docs(routes / "demo.yaml", meta_router(split=(100, 0)))
    cp = ControlPlane([str(routes)], listen="127.0.0.1:0", admin=None, poll=0.01, debounce=0.02).start()
    try:
        p = proxy(_proxy_config(*upstreams, cp.port))
        wait_until(lambda: _version(p), timeout=10)
        good = _version(p)
        bad = RouteConfiguration(name=NAME, virtual_hosts=[rc.VirtualHost(name="v", routes=[
            rc.Route(name="twice", route=rc.RouteAction(cluster="outbound|9191|v2|demo")),
            rc.Route(name="twice", route=rc.RouteAction(cluster="outbound|9191|v2|demo"))])])
        cp.store.put(bad)
        nack = wait_until(lambda: [s["last_nack"] for s in cp.registry.view()["streams"] if s["last_nack"]])[0]
        assert "duplicate route name 'twice'" in nack["reason"] and nack["kept_version"] == good
        with TinyRpcClient(*p.address()) as client:
            assert {_served_by(client) for _ in range(20)} == {"v1"}
        assert _version(p) == good and "duplicate route name" in _dump(p)["rds"]["last_error"]
        write_docs(routes / "demo.yaml", meta_router(split=(0, 100)))
        wait_until(lambda: _version(p) not in ("", good), timeout=5)
        with TinyRpcClient(*p.address()) as client:
            assert {_served_by(client) for _ in range(20)} == {"v2"}
    finally:
        cp.stop(grace=0)
