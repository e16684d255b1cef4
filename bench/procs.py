"""Start, stop and measure the processes a benchmark runs.

Everything listens on 127.0.0.1. Readiness is polled (a "READY <port>" line
from our C tools, a port that accepts connections for the proxies), never
slept for. CPU time is read from /proc so that a proxy's cost per request can
be compared whatever its throughput was.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Poll until 127.0.0.1:port accepts a connection; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before port {port} was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not ready after {timeout}s") from None
            time.sleep(0.02)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    return text.rpartition(")")[2].split()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and every live process under it (worker processes count).

    The split matters: system time is the kernel's socket work, which any
    proxy pays; user time is the proxy's own code.
    """
    user = system = 0
    for member in _descendants(pid):
        fields = _stat_fields(member)
        if fields:
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
    return user / _CLK_TCK, system / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident memory (KiB) of ``pid`` and every live process under it."""
    total = 0
    for member in _descendants(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


class Service:
    """A process we started and must stop, with the port it serves on."""

    def __init__(self, name: str, proc: subprocess.Popen, port: int, log_path: Path | None = None) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has died (a crashed proxy must not look slow)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_with_ready_line(name: str, cmd: Sequence[str], log_path: Path, timeout: float = 10.0) -> Service:
    """Start a tool that prints ``READY <port>`` on stdout once it listens; stderr goes to ``log_path``."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = proc.stdout.readline().decode(errors="replace")
                if line.startswith("READY "):
                    return Service(name, proc, int(line.split()[1]), log_path)
                if not line:
                    break
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"{name} did not report READY: {log_path.read_text(errors='replace')}")


def start_listening(name: str, cmd: Sequence[str], port: int, log_path: Path, cwd: Path | None = None,
                    env: dict[str, str] | None = None, timeout: float = 20.0) -> Service:
    """Start a process and poll until ``127.0.0.1:port`` accepts connections."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **(env or {})})
    service = Service(name, proc, port, log_path)
    try:
        wait_for_port(port, proc, timeout)
    except (RuntimeError, TimeoutError) as exc:
        service.stop(signal.SIGKILL)
        raise RuntimeError(f"{name} did not start ({exc}); its log:\n{service.log_tail()}") from None
    return service


def haproxy_config(listen_port: int, upstream_port: int, threads: int = 1) -> str:
    """An L4 (mode tcp) pass-through: the yardstick a layer-7 proxy is compared with."""
    return f"""\
global
    nbthread {threads}
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend bench_in
    bind 127.0.0.1:{listen_port}
    default_backend bench_upstream

backend bench_upstream
    server upstream 127.0.0.1:{upstream_port}
"""


def start_haproxy(workdir: Path, upstream_port: int, threads: int = 1) -> Service:
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, upstream_port, threads))
    return start_listening("haproxy", ["haproxy", "-db", "-f", str(cfg)], port, workdir / "haproxy.log")


def metaproxy_config(listener_protocol: dict[str, Any], upstream_port: int, port: int,
                     workers: int = 1) -> dict[str, Any]:
    """One listener, filters [router], one catch-all route to one cluster: the minimum layer-7 path."""
    return {
        "workers": workers,
        "listeners": [{
            "name": "bench_in",
            "address": f"127.0.0.1:{port}",
            "protocol": listener_protocol,
            "filters": [{"name": "router"}],
            "route_config": {"name": "bench", "routes": [{"name": "all", "route": {"cluster": "bench_upstream"}}]},
        }],
        "clusters": [{
            "name": "bench_upstream",
            "endpoints": [f"127.0.0.1:{upstream_port}"],
            "lb_policy": "round_robin",
            "connect_timeout": "1s",
        }],
    }


def start_metaproxy(workdir: Path, listener_protocol: dict[str, Any], upstream_port: int,
                    launcher: Sequence[str] | None = None, workers: int = 1, compiled: bool = True) -> Service:
    """Run ``python -m metaproxy.cli run -c <generated yaml>`` (or the same under ``launcher``).

    With ``workers`` > 1 the supervisor's port answers before every worker has
    bound it; the measurement's warm-up covers that. ``compiled``: the hot path
    as mypyc compiled it (``METAPROXY_COMPILED=require``: a stale build fails the
    start rather than being measured as interpreted), else interpreted (``=0``).
    """
    port = free_port()
    workdir = workdir.resolve()
    cfg = workdir / "metaproxy.yaml"
    cfg.write_text(yaml.safe_dump(metaproxy_config(listener_protocol, upstream_port, port, workers), sort_keys=False))
    prefix = list(launcher) if launcher else [sys.executable, "-m", "metaproxy.cli"]
    return start_listening("metaproxy", [*prefix, "run", "-c", str(cfg)], port, workdir / "metaproxy.log",
                           cwd=workdir,
                           env={"PYTHONUNBUFFERED": "1", "METAPROXY_COMPILED": "require" if compiled else "0"})
