"""Shared fixtures: tinyrpc upstream servers and a metaproxy process factory."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metaproxy import compiled
from metaproxy.testing.harness import ProxyProcess
from metaproxy_codecs.tinyrpc.sample import TinyRpcServer


def pytest_report_header(config: pytest.Config) -> str:
    state = compiled.STATE
    return f"metaproxy hot path: {state['mode']}" + (f" ({state['reason']})" if state["reason"] else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the hot path compiled, leave out the tests marked ``interpreted``: they swap a module's
    functions to watch which path its code takes, and compiled code calls its own functions directly.
    ``make test`` runs them in its second, interpreted pass (METAPROXY_COMPILED=0)."""
    if compiled.STATE["mode"] != "compiled":
        return
    left_out = [item for item in items if item.get_closest_marker("interpreted")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("interpreted")]


@pytest.fixture
def tinyrpc_server() -> Iterator[Callable[[str], TinyRpcServer]]:
    """Factory of started TinyRpcServer upstreams on free ports, stopped after the test."""
    servers: list[TinyRpcServer] = []

    def make(name: str = "server") -> TinyRpcServer:
        server = TinyRpcServer(0, name).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def proxy(tmp_path) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: ``proxy(config_dict)`` starts ``metaproxy run`` and stops it after the test."""
    procs: list[ProxyProcess] = []
    counter = itertools.count()

    def start(config: dict[str, Any], **kwargs: Any) -> ProxyProcess:
        p = ProxyProcess(config, tmp_path / f"proxy{next(counter)}", **kwargs).start()
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def tinyrpc_listener(routes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A tinyrpc listener config on a free port with a static route table."""
    listener = {
        "name": "in",
        "address": "127.0.0.1:0",
        "protocol": {"codec": "tinyrpc"},
        "route_config": {"name": "routes", "routes": routes},
    }
    listener.update(extra)
    return listener
