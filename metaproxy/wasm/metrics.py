"""Proxy-Wasm metrics (proxy_define_metric & co.) as metaproxy stats.

A module's counters, gauges and histograms live in the process StatsStore under
the scope ``wasm.<plugin name>``, so ``/stats`` shows them next to ours. Ids are
kept per filter, not per instance: a VM rebuilt after a trap defines the same
names again and gets the same ids and the same running values.
"""

from __future__ import annotations

from typing import Any

from metaproxy.stats import Counter, Gauge, Histogram, StatsStore
from metaproxy.wasm import abi


class MetricRegistry:
    """Metric ids <-> stats objects for one plugin."""

    def __init__(self, store: StatsStore, scope: str) -> None:
        self.store = store
        self.scope = scope
        self._ids: dict[tuple[int, str], int] = {}
        self._stats: list[tuple[int, Any]] = []

    def define(self, metric_type: int, name: str) -> int:
        key = (metric_type, name)
        found = self._ids.get(key)
        if found is not None:
            return found
        if metric_type == abi.METRIC_COUNTER:
            stat: Any = self.store.counter(self.scope, name)
        elif metric_type == abi.METRIC_GAUGE:
            stat = self.store.gauge(self.scope, name)
        else:
            stat = self.store.histogram(self.scope, name)
        self._stats.append((metric_type, stat))
        metric_id = len(self._stats)  # ids start at 1: some SDKs treat 0 as "undefined"
        self._ids[key] = metric_id
        return metric_id

    def _find(self, metric_id: int) -> tuple[int, Any] | None:
        if 1 <= metric_id <= len(self._stats):
            return self._stats[metric_id - 1]
        return None

    def increment(self, metric_id: int, delta: int) -> int:
        found = self._find(metric_id)
        if found is None:
            return abi.NOT_FOUND
        metric_type, stat = found
        if metric_type == abi.METRIC_COUNTER:
            if delta < 0:
                return abi.BAD_ARGUMENT
            stat.inc(delta)
        elif metric_type == abi.METRIC_GAUGE:
            stat.inc(delta)
        else:
            return abi.BAD_ARGUMENT  # a histogram records values, it is not incremented
        return abi.OK

    def record(self, metric_id: int, value: int) -> int:
        found = self._find(metric_id)
        if found is None:
            return abi.NOT_FOUND
        metric_type, stat = found
        if isinstance(stat, Histogram):
            stat.observe(value)
        elif isinstance(stat, (Counter, Gauge)):
            stat.value = value
        return abi.OK

    def get(self, metric_id: int) -> int | None:
        found = self._find(metric_id)
        if found is None:
            return None
        stat = found[1]
        return stat.count if isinstance(stat, Histogram) else int(stat.value)
