"""A real redis-server (Debian package, installed by the Makefile) per test that asks for one."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from metaproxy.testing.harness import free_port, wait_for_port


@pytest.fixture
def redis_server(tmp_path) -> Iterator[Callable[[], int]]:
    """Factory: start a redis-server on a free 127.0.0.1 port, return the port."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: `make deps-apt` installs it"
    procs = []

    def start() -> int:
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_for_port("127.0.0.1", port, 10, proc)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
