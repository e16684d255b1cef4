"""The soak, short: bench/soak.py for SOAK_SECONDS (default 120) with route reloads (SIGHUP) and Lua reloads.

Pass: no error, RSS growth under 10%, descriptors flat, every SIGHUP applied. ``make soak`` runs 30 minutes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from soak import run_soak  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 180)
def test_soak(tmp_path) -> None:
    report = run_soak(SECONDS, str(tmp_path), clients=3, route_every=max(2.0, SECONDS / 12),
                      lua_every=max(3.0, SECONDS / 8), interval=max(5.0, SECONDS / 12))
    print(report.text())
    assert report.errors == 0, report.text()
    assert report.route_reloads >= 2 and report.reloads_applied == report.route_reloads, report.text()
    assert report.filter_versions_seen >= 2, report.text()  # Lua hot reload reached the traffic
    assert set(report.served_by) == {"v1", "v2"}, report.text()
    assert report.rss_growth < 0.10, report.text()
    assert abs(report.fds_end - report.fds_start) <= 4, report.text()
    assert report.passed()
