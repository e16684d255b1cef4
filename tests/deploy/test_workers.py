"""``workers: N``: processes share each listener port, a dead worker is replaced, SIGTERM under load loses nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from typing import Any

import pytest
import yaml

from metaproxy.message import MessageType, ResponseStatus
from metaproxy.testing.harness import ProxyProcess, free_port
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient, TinyRpcServer
from tests.conftest import tinyrpc_listener

pytestmark = pytest.mark.slow


def _config(upstream: TinyRpcServer, workers: int | str = 2, drain: str = "5s") -> dict[str, Any]:
    return {
        "workers": workers,
        "drain_timeout": drain,
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [tinyrpc_listener([{"name": "all", "route": {"cluster": "c"}}])],
        "clusters": [{"name": "c", "endpoints": [upstream.address]}],
    }


def _get(address: tuple[str, int] | str, path: str, method: str = "GET") -> tuple[int, bytes]:
    base = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    req = urllib.request.Request(f"http://{base}{path}", method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _workers(p: ProxyProcess) -> list[dict[str, Any]]:
    status, body = _get(p.admin_address, "/workers")
    assert status == 200, body
    return json.loads(body)["workers"]


def _worker_requests(worker: dict[str, Any]) -> int:
    status, body = _get(worker["admin"], "/stats?format=json&filter=^metaprotocol\\.in\\.request$")
    assert status == 200, body
    return sum(s["value"] for s in json.loads(body)["stats"])


def _call_fresh(address: tuple[str, int], token: str) -> bytes:
    """One request on its own connection (so SO_REUSEPORT picks a worker for each)."""
    client = TinyRpcClient(*address, timeout=5)
    try:
        md, body = client.call("echo", body=token.encode())
    finally:
        client.close()
    assert md["message_type"] is MessageType.RESPONSE and md["response_status"] is ResponseStatus.SUCCESS, md
    return body


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_two_workers_share_the_port_and_both_serve(tinyrpc_server, proxy):
    upstream = tinyrpc_server("v1")
    p = proxy(_config(upstream))
    _wait(lambda: all(w["ready"] for w in _workers(p)), 20, "both workers ready")
    workers = _workers(p)
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    for w in workers:  # real child processes of the supervisor
        with open(f"/proc/{w['pid']}/stat") as fh:
            assert int(fh.read().rsplit(")", 1)[1].split()[1]) == p.proc.pid

    for i in range(60):
        assert _call_fresh(p.address(), f"t{i}") == f"v1:echo:t{i}".encode()

    per_worker = [_worker_requests(w) for w in workers]
    assert sum(per_worker) == 60 and all(n > 0 for n in per_worker), per_worker
    # the supervisor's admin sums the workers
    status, body = _get(p.admin_address, "/stats")
    assert status == 200 and "metaprotocol.in.request: 60\n" in body.decode(), body
    assert "server.workers_live: 2\n" in body.decode()
    status, body = _get(p.admin_address, "/stats/prometheus")
    assert status == 200 and 'metaprotocol_request_total{listener="in"} 60.0' in body.decode()
    status, body = _get(p.admin_address, "/config_dump")
    dump = json.loads(body)
    assert status == 200 and dump["routes_consistent"] is True
    assert [lst["name"] for lst in dump["listeners"]] == ["in"]
    assert {w["pid"] for w in dump["workers"]} == {w["pid"] for w in workers}
    assert _get(p.admin_address, "/ready") == (200, b"LIVE\n")
    assert p.stop() == 0


def test_a_killed_worker_is_replaced_and_traffic_keeps_flowing(tinyrpc_server, proxy):
    upstream = tinyrpc_server("v1")
    p = proxy(_config(upstream))
    _wait(lambda: all(w["ready"] for w in _workers(p)), 20, "both workers ready")
    victim = _workers(p)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    _wait(lambda: _gone_or_zombie(victim["pid"]), 10, "the killed worker to die")

    # the survivor takes the new connections while the supervisor restarts the other. A connection
    # caught by the kill itself may be reset by the kernel (seen about once in ten loaded runs, not
    # explained yet): a client retries once, and every call must then succeed.
    resets = 0
    for i in range(30):
        try:
            body = _call_fresh(p.address(), f"a{i}")
        except ConnectionResetError:
            resets += 1
            body = _call_fresh(p.address(), f"a{i}")
        assert body == f"v1:echo:a{i}".encode()
    assert resets <= 1, f"{resets} connections reset while one worker was down"

    def replaced() -> bool:
        w = _workers(p)[0]
        return w["pid"] != victim["pid"] and w["alive"] and w["ready"] and w["restarts"] == 1

    _wait(replaced, 20, "the supervisor to restart worker 0")
    new = _workers(p)[0]
    assert new["last_exit"] == -signal.SIGKILL

    # both serve again: keep making fresh connections until the new worker has taken some
    sent = 0
    while _worker_requests(new) == 0:
        assert sent < 200, "the restarted worker never got a connection"
        assert _call_fresh(p.address(), f"b{sent}") == f"v1:echo:b{sent}".encode()
        sent += 1
    status, body = _get(p.admin_address, "/stats?filter=worker_restarts")
    assert status == 200 and "server.worker_restarts: 1\n" in body.decode()
    assert p.stop() == 0


class Load:
    """Client threads on long-lived connections; each request carries a unique token in its body.

    A connection the proxy closes while draining is retried on a new one until
    connections are refused: a request that never reached the upstream is not
    lost. What counts as lost is checked against what the upstream received.
    """

    def __init__(self, address: tuple[str, int], clients: int = 6) -> None:
        self.address = address
        self.replies: dict[str, bytes] = {}
        self.bad: list[str] = []
        self.closed = 0
        self.refused = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        seq = 0
        while not self._stop.is_set():
            try:
                client = TinyRpcClient(*self.address, timeout=10)
            except OSError:
                self.refused.set()
                return
            try:
                while not self._stop.is_set():
                    seq += 1
                    token = f"c{index}-{seq}"
                    method = "sleep" if seq % 4 == 0 else "echo"  # some requests are slow: in flight at SIGTERM
                    body = b"0.2" if method == "sleep" else token.encode()
                    md, reply = client.call(method, headers={"x-token": token}, body=body)
                    with self._lock:
                        if md["response_status"] is not ResponseStatus.SUCCESS:
                            self.bad.append(f"{token}: {md['response_status']} {reply!r}")
                        self.replies[token] = reply
            except (ConnectionError, OSError):
                with self._lock:
                    self.closed += 1
            finally:
                client.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)


def test_sigterm_under_load_drains_every_worker_and_loses_no_request(tinyrpc_server, proxy):
    upstream = tinyrpc_server("v1")
    p = proxy(_config(upstream, drain="5s"))
    _wait(lambda: all(w["ready"] for w in _workers(p)), 20, "both workers ready")
    with Load(p.address()) as load:
        _wait(lambda: len(load.replies) >= 200, 30, "200 replies under load")
        p.send_signal(signal.SIGTERM)
        assert p.proc.wait(20) == 0, p.log()
        _wait(load.refused.is_set, 10, "connections refused after the supervisor exited")

    seen = {md.get("x-token") for md in list(upstream.received.requests)}
    lost = sorted(t for t in seen if t and t not in load.replies)
    assert not lost, f"the upstream got these but the client had no reply: {lost[:10]}"
    assert not load.bad, load.bad[:10]
    slow_ok = [t for t, r in load.replies.items() if r == b"v1:sleep:0.2"]
    assert len(load.replies) >= 200 and slow_ok
    assert "drain timeout" not in p.log()


def test_post_drain_on_the_supervisor_drains_every_worker(tinyrpc_server, proxy):
    upstream = tinyrpc_server("v1")
    p = proxy(_config(upstream))
    _wait(lambda: all(w["ready"] for w in _workers(p)), 20, "both workers ready")
    assert _call_fresh(p.address(), "before") == b"v1:echo:before"
    status, body = _get(p.admin_address, "/drain?wait=true&timeout=2s", "POST")
    result = json.loads(body)
    assert status == 200 and result["draining"] is True
    assert [w["finished"] for w in result["workers"]] == [True, True], result
    assert _get(p.admin_address, "/ready") == (503, b"DRAINING\n")
    with pytest.raises(OSError):
        _call_fresh(p.address(), "after")
    assert p.stop(timeout=20) == 0, p.log()


def test_a_worker_that_cannot_start_fails_the_run(tinyrpc_server, tmp_path):
    upstream = tinyrpc_server("v1")
    config = _config(upstream)
    config["listeners"][0]["filters"] = [{"name": "lua", "script": "missing.lua"}, {"name": "router"}]
    p = ProxyProcess(config, tmp_path)
    p.write_config()
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "metaproxy.cli", "run", "-c", str(p.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "did not start" in out.stderr


def test_sighup_reaches_every_worker_new_listener_and_changed_cluster_on_both(tinyrpc_server, proxy):
    v1, v2 = tinyrpc_server("v1"), tinyrpc_server("v2")
    p = proxy(_config(v1))
    _wait(lambda: all(w["ready"] for w in _workers(p)), 20, "both workers ready")
    pids = {w["pid"] for w in _workers(p)}
    new_port = free_port()
    config = yaml.safe_load(p.config_path.read_text())
    config["clusters"][0]["endpoints"] = [v2.address]
    config["listeners"].append({"name": "extra", "address": f"127.0.0.1:{new_port}", "protocol": {"codec": "tinyrpc"},
                                "route_config": {"name": "x", "routes": [{"name": "all", "route": {"cluster": "c"}}]}})
    p.config_path.write_text(yaml.safe_dump(config))
    p.send_signal(signal.SIGHUP)

    def both_reloaded() -> bool:
        dump = json.loads(_get(p.admin_address, "/config_dump")[1])
        return all(w["route_versions"] and "extra" in w["route_versions"] for w in dump["workers"])

    _wait(both_reloaded, 20, "both workers to have the new listener")
    assert {w["pid"] for w in _workers(p)} == pids, "a reload must not restart a worker"
    for i in range(40):
        assert _call_fresh(("127.0.0.1", new_port), f"n{i}") == f"v2:echo:n{i}".encode()
        assert _call_fresh(p.address(), f"o{i}") == f"v2:echo:o{i}".encode()
    for w in _workers(p):
        status, body = _get(w["admin"], "/stats?format=json&filter=^metaprotocol\\.extra\\.request$")
        assert status == 200 and sum(s["value"] for s in json.loads(body)["stats"]) > 0, w
    assert p.stop() == 0
