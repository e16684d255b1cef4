"""Stats objects: histogram buckets, bounded per-method stats, per-route counters (in process)."""

from __future__ import annotations

import pytest

from metaproxy.stats import DEFAULT_BUCKETS_MS, Histogram, ListenerStats, StatsStore


def test_histogram_buckets_are_upper_bound_inclusive_for_floats_and_ints():
    hist = Histogram((1, 5, 10))
    for value in (0.2, 1, 1.0, 1.0001, 5, 9.99, 10.0, 10.5, 1000):
        hist.observe(value)
    assert hist.counts == [3, 2, 2, 2]
    assert (hist.count, hist.sum) == (9, 0.2 + 1 + 1.0 + 1.0001 + 5 + 9.99 + 10.0 + 10.5 + 1000)


def test_histogram_keeps_its_bounds_as_given_and_searches_new_ones():
    store = StatsStore()
    hist = store.histogram("s", "t")
    assert hist.bounds == DEFAULT_BUCKETS_MS
    hist.observe(7.0)
    assert store.text() == "s.t: count=1 sum=7.000 P50=10 P99=10\n"  # int bounds print as ints
    hist.bounds = (100.0, 200.0)  # as merging worker snapshots does: the counts start again
    assert hist.counts == [0, 0, 0]
    hist.observe(150.0)
    assert hist.counts == [0, 1, 0]


def test_method_stats_are_bounded_and_reused():
    store = StatsStore()
    ls = ListenerStats(store, "in", max_methods=2)
    def same(a: tuple, b: tuple) -> bool:  # the same counter and histogram (compiled, the pair is a new tuple)
        return a[0] is b[0] and a[1] is b[1]

    first = ls.method("a")
    assert same(ls.method("a"), first)
    ls.method("b")
    other = ls.method("c")
    assert same(ls.method("d"), other)
    assert other[0] is store.counter("metaprotocol.in.method._other", "request")
    assert first[1] is store.histogram("metaprotocol.in.method.a", "request_time_ms")
    assert sorted(scope for scope, name, _ in store.items() if ".method." in scope and name == "request") == [
        "metaprotocol.in.method._other", "metaprotocol.in.method.a", "metaprotocol.in.method.b"]


def test_route_counters_are_made_once_per_route():
    store = StatsStore()
    ls = ListenerStats(store, "in")
    ls.route_request("canary").inc()
    ls.route_request("canary").inc()
    ls.route_request("default").inc()
    assert store.value("metaprotocol.in.route.canary", "request") == 2
    assert store.value("metaprotocol.in.route.default", "request") == 1


def test_request_done_equals_the_four_separate_operations():
    fused, separate = StatsStore(), StatsStore()
    a, b = ListenerStats(fused, "in"), ListenerStats(separate, "in")
    for method, ms in (("x", 0.3), ("y", 7.0), ("x", 1.0), ("x", 70000.0)):
        a.request_done(method, ms)
        b.request_time_ms.observe(ms)
        counter, hist = b.method(method)
        counter.inc()
        hist.observe(ms)
    assert fused.text() == separate.text()
    assert a.method("x")[1].counts == b.method("x")[1].counts
    a.method("y")[1].bounds = (1, 2)  # a histogram whose bounds differ is searched on its own
    a.request_done("y", 1.5)
    assert a.method("y")[1].counts == [0, 1, 0]
    assert (a.request_time_ms.count, a.request_time_ms.counts[a.request_time_ms.bounds.index(5)]) == (5, 1)


def test_observe_counts_every_value_in_its_le_bucket():
    import random
    from bisect import bisect_left

    rng = random.Random(7)
    bounds = DEFAULT_BUCKETS_MS
    values = [rng.choice([*bounds, 0.0, 0.25, 99999.0, -1.0]) if rng.random() < 0.3 else rng.uniform(0, 70000)
              for _ in range(5000)]
    hist = Histogram(bounds)
    expected = [0] * (len(bounds) + 1)
    for value in values:
        hist.observe(value)
        expected[bisect_left([float(b) for b in bounds], value)] += 1  # a value equal to a bound is in its bucket
    assert hist.counts == expected and hist.count == len(values)
    assert abs(hist.sum - sum(values)) < 1e-6 * sum(values)


def test_request_done_counts_the_listener_and_the_method():
    ls = ListenerStats(StatsStore(), "in")
    for n in range(100):
        ls.request_done("m" if n % 2 else "n", 3.0)
    assert ls.method("m")[1].counts[2] == 50 and ls.method("m")[0].value == 50
    assert ls.request_time_ms.count == 100 and ls.request_time_ms.sum == 300.0
    hist = ls.method("m")[1]
    hist.bounds = (1, 2)  # new bounds: the counts start again, one bucket more than bounds
    assert hist.counts == [0, 0, 0] and hist.bounds == (1, 2) and (hist.count, hist.sum) == (0, 0.0)
    ls.request_done("m", 1.5)  # its bounds differ from the listener's: searched on its own
    assert hist.counts == [0, 1, 0] and ls.method("m")[0].value == 51
    assert ls.request_time_ms.counts[ls.request_time_ms.bounds.index(5)] == 101


def test_merge_adds_another_histograms_figures():
    a, b = Histogram((1, 2)), Histogram((1, 2))
    for v in (0.5, 1.5, 9.0):
        a.observe(v)
    b.observe(1.0)
    b.merge(a.counts, a.sum, a.count)
    assert (b.counts, b.sum, b.count) == ([2, 1, 1], 12.0, 4)
    with pytest.raises(ValueError, match="bucket counts"):
        b.merge([1], 1.0, 1)
