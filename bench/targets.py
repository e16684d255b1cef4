"""What the load generator talks to: the server directly, HAProxy in front of it, or metaproxy.

A target starts (at most) one proxy in front of an already running upstream
and says which port the client should use and which process to charge CPU
time to. The direct target is the baseline: no proxy, no CPU to charge.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from procs import Service, free_port, start_haproxy, start_listening, start_metaproxy
from scenarios import Scenario


class Target:
    name = ""

    def start(self, scenario: Scenario, upstream: Service, workdir: Path) -> Service | None:
        """Start the proxy (None: the client talks to the upstream itself)."""
        raise NotImplementedError


class Direct(Target):
    name = "direct"

    def start(self, scenario: Scenario, upstream: Service, workdir: Path) -> Service | None:
        return None


class HAProxy(Target):
    """HAProxy in ``mode tcp`` with one thread, the same one core a single metaproxy process gets."""

    name = "haproxy"

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def start(self, scenario: Scenario, upstream: Service, workdir: Path) -> Service | None:
        return start_haproxy(workdir, upstream.port, self.threads)


class HAProxy2(HAProxy):
    """HAProxy with two threads: the pair of ``metaproxy-2w``, both free to use both cores."""

    name = "haproxy-2t"

    def __init__(self) -> None:
        super().__init__(threads=2)


class MetaProxy(Target):
    name = "metaproxy"
    workers = 1
    #: The hot path as ``make compiled`` built it (metaproxy/compiled.py); False: interpreted.
    compiled = True

    def __init__(self, launcher: Sequence[str] | None = None) -> None:
        self.launcher = launcher

    def start(self, scenario: Scenario, upstream: Service, workdir: Path) -> Service | None:
        return start_metaproxy(workdir, scenario.listener_protocol(), upstream.port, self.launcher, self.workers,
                               self.compiled)


class MetaProxyInterpreted(MetaProxy):
    """One process with the hot path interpreted (``METAPROXY_COMPILED=0``): what compiling it gains."""

    name = "metaproxy-py"
    compiled = False


class MetaProxy2(MetaProxy):
    """``workers: 2``: two processes sharing the port (SO_REUSEPORT), as a sidecar on two cores runs."""

    name = "metaproxy-2w"
    workers = 2


class GeventRelay(Target):
    """bench/gevent_relay.py: the cost of gevent and the kernel alone, the floor for any gevent proxy."""

    name = "gevent-relay"
    script = "gevent_relay.py"

    def start(self, scenario: Scenario, upstream: Service, workdir: Path) -> Service | None:
        port = free_port()
        script = Path(__file__).resolve().parent / self.script
        return start_listening(self.name, [sys.executable, str(script), str(port), str(upstream.port)], port,
                               workdir / f"{self.name}.log")


class CallbackRelay(GeventRelay):
    """bench/callback_relay.py: the same relay in the loop's I/O callbacks, the floor for metaproxy's evented path."""

    name = "callback-relay"
    script = "callback_relay.py"


TARGETS: dict[str, type[Target]] = {t.name: t for t in (Direct, HAProxy, MetaProxy, GeventRelay, CallbackRelay,
                                                        HAProxy2, MetaProxy2, MetaProxyInterpreted)}
