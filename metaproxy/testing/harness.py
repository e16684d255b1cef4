"""Start a real metaproxy process for end-to-end tests, on 127.0.0.1 and free ports.

Tests give a config dict whose listener (and admin) addresses may use port 0;
the harness picks free ports, writes the YAML, starts ``metaproxy run`` as a
subprocess, and polls until every listener accepts connections. Nothing here
sleeps for readiness.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Poll until ``host:port`` accepts a connection; raise TimeoutError (or if ``proc`` died)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} was ready")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not ready after {timeout}s") from None
            time.sleep(0.02)


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; return it, or fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _assign_port(address: str, taken: set[int]) -> str:
    """``address`` with port 0 replaced by a free port not already in ``taken`` (which it joins).

    Two calls of free_port() can return the same port (nothing holds it in between): a config
    that got one port twice made a listener (SO_REUSEPORT) and the admin server collide.
    """
    host, _, port = address.rpartition(":")
    if port != "0":
        return address
    number = free_port()
    while number in taken:
        number = free_port()
    taken.add(number)
    return f"{host}:{number}"


class ProxyProcess:
    """One ``metaproxy run`` subprocess. Use as a context manager."""

    def __init__(self, config: dict[str, Any], workdir: str | os.PathLike[str],
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.config = copy.deepcopy(config)
        self.workdir = Path(workdir)
        self.extra_args = extra_args or []
        self.env = env
        taken: set[int] = set()
        for listener in self.config.get("listeners", []):
            listener["address"] = _assign_port(listener.get("address", "127.0.0.1:0"), taken)
        admin = self.config.get("admin")
        if admin is not None:
            admin["address"] = _assign_port(admin.get("address", "127.0.0.1:0"), taken)
        self.config_path = self.workdir / "metaproxy.yaml"
        self.log_path = self.workdir / "metaproxy.log"
        self.proc: subprocess.Popen | None = None

    # -- addresses -------------------------------------------------------------
    def address(self, listener: str | None = None) -> tuple[str, int]:
        """(host, port) of a listener by name (the first one when no name is given)."""
        for item in self.config["listeners"]:
            if listener is None or item.get("name") == listener:
                host, _, port = item["address"].rpartition(":")
                return host, int(port)
        raise KeyError(listener)

    @property
    def admin_address(self) -> tuple[str, int]:
        host, _, port = self.config["admin"]["address"].rpartition(":")
        return host, int(port)

    # -- lifecycle -------------------------------------------------------------
    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        self.write_config()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.env:
            env.update(self.env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metaproxy.cli", "run", "-c", str(self.config_path), *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(self.workdir),
        )
        try:
            for listener in self.config.get("listeners", []):
                host, _, port = listener["address"].rpartition(":")
                wait_for_port(host, int(port), timeout, self.proc)
            if "admin" in self.config:
                wait_for_port(*self.admin_address, timeout, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"metaproxy did not start; its log:\n{self.log()}") from None
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ProxyProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
