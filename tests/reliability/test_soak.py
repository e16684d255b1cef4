"""The soak, short: bench/soak.py for SOAK_SECONDS (default 120): tinyrpc, Thrift (framed and THeader) and Dubbo
through one proxy process, with route reloads (SIGHUP) and Lua reloads (a rewritten file in a watched directory).

Pass: no error, RSS growth under 10%, descriptors flat, every SIGHUP applied, both upstreams of every protocol
served, the Lua stamp seen changing on every protocol that carries headers. ``make soak`` runs 30 minutes.
Clients pause 5 ms between calls so the test's CPU stays moderate inside `make test`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from soak import PROTOCOLS, run_soak  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
CLIENTS = {"tiny": 1, "thrift": 2, "thrift-header": 1, "dubbo": 1}  # thrift: one Apache, one thriftpy2 client


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 180)
def test_soak(tmp_path) -> None:
    report = run_soak(SECONDS, str(tmp_path), clients=CLIENTS, route_every=max(2.0, SECONDS / 12),
                      lua_every=max(3.0, SECONDS / 8), interval=max(5.0, SECONDS / 12), think=0.005)
    print(report.text())
    assert report.errors == 0, report.text()
    assert report.route_reloads >= 2 and report.reloads_applied == report.route_reloads, report.text()
    for name in PROTOCOLS:
        tally = report.per_protocol[name]
        assert tally["requests"] > 0, report.text()
        assert set(tally["served_by"]) == {f"{name}-a", f"{name}-b"}, report.text()  # both sides of the split
    assert report.filter_versions_seen >= 2, report.text()  # Lua hot reload reached tinyrpc, THeader and Dubbo
    assert report.rss_growth < 0.10, report.text()
    assert abs(report.fds_end - report.fds_start) <= 4, report.text()
    assert report.passed()
