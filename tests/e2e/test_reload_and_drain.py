"""SIGHUP reloads the config under load without failing a request; SIGTERM drains in-flight requests."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import yaml

from metaproxy.testing.harness import free_port, wait_for_port
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient
from tests.conftest import tinyrpc_listener

pytestmark = pytest.mark.slow


class Load:
    """Client threads calling in a loop on long-lived connections until stopped; every failure is kept."""

    def __init__(self, address, method: str = "echo", clients: int = 4) -> None:
        self.address = address
        self.method = method
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        try:
            with TinyRpcClient(*self.address) as client:
                while not self._stop.is_set():
                    md, body = client.call(self.method)
                    if md["message_type"].value != "response":
                        self.failures.append(f"{md['message_type']}: {body!r}")
                    else:
                        self.ok += 1
                        self.bodies.append(body)
        except Exception as exc:  # collected and asserted on
            self.failures.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        target = self.ok + count
        while self.ok < target and time.monotonic() < deadline and not self.failures:
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)


def _config(v1, v2_address, extra_listener=None, cluster_endpoint=None):
    cfg = {
        "drain_timeout": "5s",
        "listeners": [tinyrpc_listener([{"name": "all", "route": {"cluster": "c"}}])],
        "clusters": [{"name": "c", "endpoints": [cluster_endpoint or v1.address]}],
    }
    if extra_listener:
        cfg["listeners"].append(extra_listener)
    return cfg


def test_sighup_adds_a_listener_and_changes_a_cluster_with_zero_failed_requests(tinyrpc_server, proxy):
    v1, v2 = tinyrpc_server("v1"), tinyrpc_server("v2")
    p = proxy(_config(v1, v2.address))
    with Load(p.address()) as load:
        load.wait_for(200)
        new_port = free_port()
        config = yaml.safe_load(p.config_path.read_text())
        config["clusters"][0]["endpoints"] = [v2.address]
        config["listeners"].append({"name": "extra", "address": f"127.0.0.1:{new_port}",
                                    "protocol": {"codec": "tinyrpc"},
                                    "route_config": {"name": "x", "routes": [{"route": {"cluster": "c"}}]}})
        p.config_path.write_text(yaml.safe_dump(config))
        p.send_signal(signal.SIGHUP)
        wait_for_port("127.0.0.1", new_port, 10)
        deadline = time.monotonic() + 30  # polled: the bound only matters on a loaded machine
        while not any(b.startswith(b"v2:") for b in load.bodies[-50:]) and time.monotonic() < deadline:
            time.sleep(0.02)
        load.wait_for(200)
    assert not load.failures, load.failures[:5]
    assert any(b.startswith(b"v2:") for b in load.bodies[-50:]), "the changed cluster never served"
    with TinyRpcClient("127.0.0.1", new_port) as client:
        assert client.call("echo")[1].startswith(b"v2:")


def test_a_bad_file_on_sighup_is_rejected_and_the_old_config_keeps_running(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(_config(v1, v1.address))
    good = p.config_path.read_text()
    p.config_path.write_text(good.replace("clusters:", "clusterz:"))
    p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30  # polled: the bound only matters on a loaded machine
    while "reload of" not in p.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "rejected, the running config stays" in p.log()
    assert "unknown key 'clusterz'" in p.log()
    with TinyRpcClient(*p.address()) as client:
        assert client.call("echo")[1].startswith(b"v1:")


def test_sigterm_drains_in_flight_requests_and_exits_0(tinyrpc_server, proxy):
    v1 = tinyrpc_server("v1")
    p = proxy(_config(v1, v1.address))
    results: list[bytes] = []

    def slow_call() -> None:
        with TinyRpcClient(*p.address()) as client:
            results.append(client.call("sleep", body=b"0.5")[1])

    threads = [threading.Thread(target=slow_call) for _ in range(10)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # polled: the bound only matters on a loaded machine
    while sum(1 for r in v1.received.requests if r["method"] == "sleep") < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(20)
    assert p.proc.wait(20) == 0
    assert results == [b"v1:sleep:0.5"] * 10
