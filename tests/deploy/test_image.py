"""The container image: `make image` builds it, podman loads and runs it, real tinyrpc and Thrift traffic passes,
SIGTERM drains.

Cold, this builds a Debian root filesystem and pip-installs the dependencies
(a few minutes on 2 cores); warm, only the project's layer is rebuilt. The run
uses podman the way this machine supports it (vfs storage, runc, cgroupfs,
host network) with the upstream on the host's loopback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from metaproxy.message import ResponseStatus
from metaproxy.testing.harness import free_port, wait_for_port
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient, TinyRpcServer
from tests.e2e.thrift_support.peers import EchoClient, EchoServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "image"
IMAGE = "localhost/metaproxy:latest"
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def image_tar() -> Path:
    for tool in ("podman", "debootstrap"):
        assert shutil.which(tool), f"{tool} is missing: run `make deps-image`"
    _run([str(ROOT / "conf" / "image" / "build.sh"), str(OUT), sys.executable], timeout=900)
    tar = OUT / "metaproxy.tar"
    assert tar.stat().st_size > 10_000_000
    return tar


def _config(tmp: Path, upstream: TinyRpcServer, thrift: EchoServer) -> tuple[Path, int, int, int]:
    port, admin, thrift_port = free_port(), free_port(), free_port()
    config = {
        "admin": {"address": f"127.0.0.1:{admin}"},
        "workers": 2,
        "drain_timeout": "10s",
        "listeners": [{
            "name": "in",
            "address": f"127.0.0.1:{port}",
            "protocol": {"codec": "tinyrpc"},
            # a sample filter shipped in the image, by a path relative to /etc/metaproxy
            "filters": [{"name": "lua", "script": "filters/lua/add_header.lua"}, {"name": "router"}],
            "route_config": {"name": "r", "routes": [{"name": "all", "route": {"cluster": "host"}}]},
        }, {
            "name": "thrift-in",
            "address": f"127.0.0.1:{thrift_port}",
            "protocol": {"codec": "thrift", "options": {"transport": "framed", "protocol": "binary"}},
            "route_config": {"name": "t", "routes": [{"name": "all", "route": {"cluster": "host-thrift"}}]},
        }],
        "clusters": [{"name": "host", "endpoints": [upstream.address]},
                     {"name": "host-thrift", "endpoints": [thrift.address]}],
    }
    path = tmp / "metaproxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o644)
    return path, port, admin, thrift_port


@pytest.mark.timeout(1200)
def test_the_image_loads_serves_real_traffic_as_non_root_and_drains_on_sigterm(image_tar, tmp_path):
    out = _run([*PODMAN, "load", "-i", str(image_tar)], timeout=300)
    assert "metaproxy" in out.stdout + out.stderr
    upstream = TinyRpcServer(0, "host-v1").start()
    thrift = EchoServer("host-thrift", "apache", "framed", "binary").start()
    name = f"metaproxy-smoke-{uuid.uuid4().hex[:8]}"
    config, port, admin, thrift_port = _config(tmp_path, upstream, thrift)
    log = open(tmp_path / "container.log", "wb")
    proc = subprocess.Popen([*PODMAN, "run", "--name", name, "--ulimit", "nofile=4096:4096",
                             "--ulimit", "nproc=4096:4096", "--network", "host",
                             "-v", f"{config}:/etc/metaproxy/metaproxy.yaml:ro", IMAGE],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port("127.0.0.1", port, 120, proc)
            wait_for_port("127.0.0.1", admin, 60, proc)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'container.log').read_text(errors='replace')}") from None

        with TinyRpcClient("127.0.0.1", port) as client:
            md, body = client.call("sayHello", headers={"x-user": "test-1"})
        assert md["response_status"] is ResponseStatus.SUCCESS and body == b"host-v1:sayHello:"
        assert md["x-forwarded-user"] == "test-1"  # the image's sample Lua filter ran
        wait_for_port("127.0.0.1", thrift_port, 30, proc)
        with EchoClient("apache", thrift_port) as client:  # real Apache Thrift client and server
            assert client.echo.whoami() == "host-thrift"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"LIVE\n"
        ids = _run([*PODMAN, "exec", name, "id"], timeout=60).stdout.strip()
        assert ids.startswith("uid=10001(metaproxy) gid=10001(metaproxy)"), ids

        # SIGTERM with a request in flight: it is answered, then the container exits 0
        replies: list[bytes] = []

        def slow() -> None:
            with TinyRpcClient("127.0.0.1", port, timeout=30) as c:
                replies.append(c.call("sleep", body=b"1.5")[1])

        t = threading.Thread(target=slow)
        t.start()
        deadline_ok = _wait_upstream(upstream, "sleep")
        assert deadline_ok, "the slow request never reached the upstream"
        _run([*PODMAN, "kill", "--signal", "TERM", name], timeout=60)
        t.join(30)
        assert replies == [b"host-v1:sleep:1.5"]
        assert proc.wait(60) == 0, (tmp_path / "container.log").read_text(errors="replace")
        with pytest.raises(OSError):
            TinyRpcClient("127.0.0.1", port, timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, timeout=120)
        upstream.stop()
        thrift.stop()
        log.close()


def _wait_upstream(upstream: TinyRpcServer, method: str, timeout: float = 20) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(md["method"] == method for md in list(upstream.received.requests)):
            return True
        time.sleep(0.02)
    return False
