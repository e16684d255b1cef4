"""Fixtures: an in-process control plane on free ports, over a temporary routes folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from metaproxy.controlplane.app import ControlPlane
from tests.xds.helpers import meta_router, write_docs


@pytest.fixture
def routes_dir(tmp_path: Path) -> Path:
    d = tmp_path / "routes"
    d.mkdir()
    write_docs(d / "demo.yaml", meta_router())
    return d


@pytest.fixture
def control_plane(routes_dir: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane([str(routes_dir)], listen="127.0.0.1:0", admin="127.0.0.1:0", debounce=0.02, poll=0.01)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop(grace=0)


@pytest.fixture
def channel(control_plane: ControlPlane) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{control_plane.port}")
    try:
        yield ch
    finally:
        ch.close()
