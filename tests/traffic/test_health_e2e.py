"""Outlier detection and active health checks through `metaproxy run`: bad endpoints leave, good ones return."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metaproxy.testing.harness import free_port, wait_for_port
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener
from tests.traffic.conftest import is_error, wait_until

pytestmark = pytest.mark.slow

RETRY = {"retry_on": ["reset", "connect_failure"], "num_retries": 1}


def _listener():
    return tinyrpc_listener([{"name": "all", "route": {"cluster": "c", "timeout": "3s", "retry_policy": RETRY}}])


class ServerProcess:
    """A tinyrpc sample server in its own process, so that killing it closes every connection."""

    def __init__(self, port: int, name: str) -> None:
        self.port, self.name = port, name
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "metaproxy_codecs.tinyrpc.sample", "server",
                                      "--port", str(self.port), "--name", self.name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, 10, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def server_process():
    procs: list[ServerProcess] = []

    def make(name: str, port: int | None = None) -> ServerProcess:
        proc = ServerProcess(port or free_port(), name).start()
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.kill()


def test_outlier_detection_ejects_an_endpoint_that_keeps_resetting(tinyrpc_server, bad_server, proxy):
    bad, good = bad_server("reset"), tinyrpc_server("good")
    p = proxy({
        "listeners": [_listener()],
        "clusters": [{"name": "c", "endpoints": [bad.address, good.address],
                      "outlier_detection": {"consecutive_gateway_failures": 2, "base_ejection_time": "60s",
                                            "max_ejection_percent": 50, "interval": "1s"}}],
    })
    with TinyRpcClient(*p.address()) as client:
        bodies = [client.call("sayHello")[1] for _ in range(30)]
    assert bodies == [b"good:sayHello:"] * 30  # retries hid every reset from the client
    assert bad.connections == 2  # two gateway failures in a row, then never chosen again
    assert "ejected " + bad.address in p.log()


def test_max_ejection_percent_keeps_serving_from_a_failing_cluster(bad_server, proxy):
    a, b = bad_server("reset"), bad_server("reset")
    p = proxy({
        "listeners": [_listener()],
        "clusters": [{"name": "c", "endpoints": [a.address, b.address],
                      "outlier_detection": {"consecutive_gateway_failures": 1, "base_ejection_time": "60s",
                                            "max_ejection_percent": 50}}],
    })
    with TinyRpcClient(*p.address()) as client:
        replies = [client.call("sayHello")[0] for _ in range(4)]
    assert all(is_error(r) for r in replies)  # an honest error, not no_healthy_upstream from ejecting everyone
    assert not any(is_error(r, "no_healthy_upstream") for r in replies)
    assert a.connections + b.connections >= 5


@pytest.mark.parametrize("kind", ["tcp", "heartbeat"])
def test_killed_endpoint_is_ejected_then_restored_by_health_checks(server_process, tinyrpc_server, proxy, kind):
    a, b = server_process("a"), tinyrpc_server("b")
    p = proxy({
        "listeners": [_listener()],
        "clusters": [{"name": "c", "endpoints": [a.address, b.address], "connections_per_endpoint": 1,
                      "health_check": {"kind": kind, "interval": "200ms", "timeout": "300ms",
                                       "unhealthy_threshold": 1, "healthy_threshold": 1},
                      "outlier_detection": {"consecutive_gateway_failures": 1, "base_ejection_time": "60s",
                                            "max_ejection_percent": 50}}],
    })
    with TinyRpcClient(*p.address()) as client:
        served = {client.call("sayHello")[1] for _ in range(6)}
        assert served == {b"a:sayHello:", b"b:sayHello:"}

        a.kill()
        after_kill = [client.call("sayHello")[1] for _ in range(20)]
        assert after_kill == [b"b:sayHello:"] * 20  # retried, then out of rotation
        assert wait_until(lambda: f"ejected {a.address}" in p.log(), timeout=5)  # by outlier detection
        assert wait_until(lambda: f"{a.address} is unhealthy" in p.log(), timeout=5)  # and seen down by a check

        server_process("a", a.port)  # the same address comes back
        back = wait_until(lambda: client.call("sayHello")[1] == b"a:sayHello:", timeout=10, interval=0.05)
        assert back, "the restarted endpoint never returned to rotation:\n" + p.log()
    log = p.log()
    assert f"{a.address} is healthy" in log
    if kind == "heartbeat":
        assert any(md["message_type"].value == "heartbeat" for md in b.received.requests)
