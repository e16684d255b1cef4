"""The benchmark harness still runs: every scenario through every path for a fraction of a second.

Speed is not asserted here (that is bench/'s job, on a quiet machine); this
keeps `make bench` from rotting: the C tools build, HAProxy and metaproxy
start, every protocol's load completes with no error reply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _bench_rows(tmp_path, *args: str, timeout: float) -> list[dict]:
    """Build the C tools, run bench/run.py for 0.3 s per row with ``args``, return its rows."""
    build = subprocess.run(["make", "--no-print-directory", "bench-tools"], cwd=ROOT, capture_output=True,
                           text=True, timeout=180)
    assert build.returncode == 0, build.stderr
    out = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, "bench/run.py", "--build", "build/bench", "--seconds", "0.3",
                          "--warmup", "0.1", "--idle", "0", "--connections", "1,8", "--json", str(out), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    return data["rows"] if isinstance(data, dict) else data


@pytest.mark.timeout(300)
def test_every_scenario_runs_through_every_path(tmp_path):
    rows = _bench_rows(tmp_path, timeout=240)
    seen = {(row["scenario"], row["target"]) for row in rows}
    for scenario in ("tinyrpc", "thrift", "dubbo", "redis-get", "redis-set"):
        for target in ("direct", "haproxy", "metaproxy", "haproxy-2t", "metaproxy-2w"):
            assert (scenario, target) in seen, f"no {target} row for {scenario}"
    assert all(row["rps"] > 0 for row in rows)


@pytest.mark.timeout(300)
def test_the_relay_floors_carry_traffic(tmp_path):
    """bench/gevent_relay.py and bench/callback_relay.py, the floors docs/performance.md compares with."""
    rows = _bench_rows(tmp_path, "--scenarios", "tinyrpc,dubbo", "--targets", "gevent-relay,callback-relay",
                       timeout=100)
    assert {(row["scenario"], row["target"]) for row in rows} == {
        (s, t) for s in ("tinyrpc", "dubbo") for t in ("gevent-relay", "callback-relay")}
    assert all(row["rps"] > 0 for row in rows)


@pytest.mark.timeout(300)
def test_pinned_rounds_pair_each_proxy_with_haproxy(tmp_path):
    """``--pin --rounds 2``: the one-core proxies on a core of their own, every round measured."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("the benchmark's --pin needs two CPUs; this machine gives the tests one")
    rows = _bench_rows(tmp_path, "--scenarios", "tinyrpc", "--targets", "haproxy,metaproxy", "--pin",
                       "--rounds", "2", timeout=120)
    assert sorted((row["target"], row["connections"], row["round"]) for row in rows) == sorted(
        (t, c, n) for t in ("haproxy", "metaproxy") for c in (1, 8) for n in (1, 2))
    assert all(row["rps"] > 0 and row["cpu_us_per_request"] > 0 for row in rows)
