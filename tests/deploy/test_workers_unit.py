"""The supervisor's pure parts: worker count, restart backoff, summing workers' stats."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from metaproxy.workers import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    WorkerProcess,
    merge_prometheus,
    merge_stats_json,
    stats_text,
    worker_count,
)


def test_worker_count_auto_is_one_per_core():
    assert worker_count("auto") == (os.cpu_count() or 1)
    assert worker_count(3) == 3


def test_quick_deaths_double_the_backoff_up_to_the_cap_and_a_long_life_resets_it(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("metaproxy.workers.time.monotonic", lambda: clock[0])
    w = WorkerProcess(0, "x.yaml")
    w.started_at = 100.0
    delays = [w.next_backoff() for _ in range(10)]
    assert delays[:3] == [BACKOFF_FIRST, BACKOFF_FIRST * 2, BACKOFF_FIRST * 4]
    assert delays[-1] == BACKOFF_MAX
    clock[0] += 60  # this one lived a minute
    assert w.next_backoff() == BACKOFF_FIRST


def test_stats_json_sums_values_and_histograms_and_keeps_the_worst_quantile():
    a = {"stats": [{"name": "l.request", "value": 3},
                   {"name": "l.time", "count": 2, "sum": 4.0, "P50": 1, "P99": 5}]}
    b = {"stats": [{"name": "l.request", "value": 4}, {"name": "l.only_b", "value": 1},
                   {"name": "l.time", "count": 1, "sum": 9.0, "P50": 10, "P99": 10}]}
    merged = merge_stats_json([a, b])
    assert merged["stats"] == [{"name": "l.only_b", "value": 1}, {"name": "l.request", "value": 7},
                               {"name": "l.time", "count": 3, "sum": 13.0, "P50": 10, "P99": 10}]
    assert stats_text(merged) == "l.only_b: 1\nl.request: 7\nl.time: count=3 sum=13.000 P50=10 P99=10\n"


WORKER = """# HELP metaprotocol_request metaproxy stat
# TYPE metaprotocol_request counter
metaprotocol_request_total{listener="in"} %d
# HELP rt latency
# TYPE rt histogram
rt_bucket{le="1.0",listener="in"} %d
rt_bucket{le="+Inf",listener="in"} %d
rt_count{listener="in"} %d
rt_sum{listener="in"} 2.5
"""


def test_prometheus_expositions_are_summed_sample_by_sample():
    text = merge_prometheus([WORKER % (3, 1, 3, 3), WORKER % (5, 2, 5, 5)],
                            [("metaproxy_workers_live", "gauge", "alive", 2)]).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("metaprotocol_request_total", (("listener", "in"),))] == 8
    assert samples[("rt_bucket", (("le", "1.0"), ("listener", "in")))] == 3
    assert samples[("rt_bucket", (("le", "+Inf"), ("listener", "in")))] == 8
    assert samples[("rt_sum", (("listener", "in"),))] == 5.0
    assert samples[("metaproxy_workers_live", ())] == 2
    assert "# TYPE rt histogram" in text
