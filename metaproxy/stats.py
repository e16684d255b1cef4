"""Counters, gauges and histograms that cost one attribute increment on the hot path.

Stat objects are created when a listener or cluster is built, kept as
attributes of small per-scope classes (:class:`ListenerStats`,
:class:`ClusterStats`), and only incremented per request: no lock (gevent has
one thread), no string formatting, no dict lookups by name. Exposition
(Envoy text, Prometheus) walks the :class:`StatsStore` when asked.
"""

from __future__ import annotations

from collections.abc import Iterator

#: Latency bucket bounds in milliseconds (Envoy's default histogram buckets).
DEFAULT_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Gauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount

    def set(self, value: int) -> None:
        self.value = value


_SEARCH_KEYS: dict[tuple[float, ...], tuple[float, ...]] = {}


def _search_keys(bounds: tuple[float | int, ...]) -> tuple[float, ...]:
    """The bounds as floats, one shared tuple per distinct bounds (so histograms can tell they match)."""
    bounds = tuple(bounds)
    keys = _SEARCH_KEYS.get(bounds)
    if keys is None:
        keys = _SEARCH_KEYS[bounds] = tuple(float(b) for b in bounds)
    return keys


class _Bucket:
    """One bucket's count: a native int field, so counting allocates nothing (a list of ints would
    box a new int object on every increment past 256)."""

    __slots__ = ("n",)

    def __init__(self, n: int = 0) -> None:
        self.n = n


class Histogram:
    """Bucket counts (not cumulative) plus sum and count; quantiles estimated on read.

    ``observe`` counts the value at once: a scan of the bounds from the lowest (latencies
    fall in the first few buckets), which compiled (mypyc) is a loop over C doubles. Values
    at or under a bound count in its bucket (Prometheus ``le``); above the last, in the
    overflow bucket. ``bounds`` keeps the values as given, so the exposition prints ``10``,
    not ``10.0``; the scan uses a float copy (``keys``, shared by histograms with the same
    bounds, so one scan can serve two: :meth:`ListenerStats.request_done`).
    """

    __slots__ = ("_bounds", "keys", "_buckets", "sum", "count")

    def __init__(self, bounds: tuple[float | int, ...] = DEFAULT_BUCKETS_MS) -> None:
        self.sum = 0.0
        self.count = 0
        self._bounds: tuple[float | int, ...] = tuple(bounds)
        self.keys: tuple[float, ...] = _search_keys(bounds)
        self._buckets: list[_Bucket] = [_Bucket() for _ in range(len(bounds) + 1)]

    # ``float | int``, not ``float``: compiled, a float-typed value is a C double and 10 would print 10.0.
    @property
    def bounds(self) -> tuple[float | int, ...]:
        return self._bounds

    @bounds.setter
    def bounds(self, bounds: tuple[float | int, ...]) -> None:
        """New bounds (from config or another worker's snapshot): the counts start again."""
        self._bounds = tuple(bounds)
        self.keys = _search_keys(bounds)
        self._buckets = [_Bucket() for _ in range(len(bounds) + 1)]
        self.sum = 0.0
        self.count = 0

    @property
    def counts(self) -> list[int]:
        """Per bucket (the last is above every bound), a copy."""
        return [bucket.n for bucket in self._buckets]

    def bucket(self, value: float) -> int:
        """The index of the bucket ``value`` counts in."""
        keys = self.keys
        index = 0
        n = len(keys)
        while index < n and value > keys[index]:
            index += 1
        return index

    def observe(self, value: float) -> None:
        self.count_in(self.bucket(value), value)

    def count_in(self, index: int, value: float) -> None:
        """Count ``value`` in bucket ``index`` (of these bounds: see :meth:`bucket`)."""
        self._buckets[index].n += 1
        self.sum += value
        self.count += 1

    def merge(self, counts: list[int], total: float, count: int) -> None:
        """Add another histogram's figures (same bounds), e.g. a worker's snapshot."""
        if len(counts) != len(self._buckets):
            raise ValueError(f"{len(counts)} bucket counts for {len(self._buckets)} buckets")
        for bucket, n in zip(self._buckets, counts, strict=True):
            bucket.n += n
        self.sum += total
        self.count += count

    def quantile(self, q: float) -> float | int:
        """The upper bound of the bucket holding quantile ``q`` (0 when empty)."""
        count = self.count
        if not count:
            return 0.0
        target = q * count
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= target:
                return self.bounds[index] if index < len(self.bounds) else float("inf")
        return float("inf")


Stat = Counter | Gauge | Histogram


class StatsStore:
    """Every stat of one process, by (scope, name). Scopes look like ``metaprotocol.LISTENER``."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], Stat] = {}

    def _get(self, scope: str, name: str, kind: type) -> Stat:
        key = (scope, name)
        stat = self._stats.get(key)
        if stat is None:
            stat = kind()
            self._stats[key] = stat
        elif not isinstance(stat, kind):
            raise TypeError(f"{scope}.{name} is a {type(stat).__name__}, not a {kind.__name__}")
        return stat

    def counter(self, scope: str, name: str) -> Counter:
        return self._get(scope, name, Counter)  # type: ignore[return-value]

    def gauge(self, scope: str, name: str) -> Gauge:
        return self._get(scope, name, Gauge)  # type: ignore[return-value]

    def histogram(self, scope: str, name: str) -> Histogram:
        return self._get(scope, name, Histogram)  # type: ignore[return-value]

    def items(self) -> Iterator[tuple[str, str, Stat]]:
        for (scope, name), stat in sorted(self._stats.items(), key=lambda kv: kv[0]):
            yield scope, name, stat

    def value(self, scope: str, name: str) -> float:
        stat = self._stats.get((scope, name))
        if stat is None:
            return 0
        return stat.count if isinstance(stat, Histogram) else stat.value

    def text(self) -> str:
        """Envoy's ``/stats`` text form: ``scope.name: value``, histograms as P50/P99."""
        lines = []
        for scope, name, stat in self.items():
            if isinstance(stat, Histogram):
                lines.append(f"{scope}.{name}: count={stat.count} sum={stat.sum:.3f} "
                             f"P50={stat.quantile(0.5)} P99={stat.quantile(0.99)}")
            else:
                lines.append(f"{scope}.{name}: {stat.value}")
        return "\n".join(lines) + "\n"


class ListenerStats:
    """Per-listener stats, named as MetaProtocol/Envoy name them (docs/stats.md)."""

    def __init__(self, store: StatsStore, listener: str, max_methods: int = 64) -> None:
        scope = f"metaprotocol.{listener}"
        self.store = store
        self.scope = scope
        c, g = store.counter, store.gauge
        self.request = c(scope, "request")
        self.request_decoding_success = c(scope, "request_decoding_success")
        self.request_decoding_error = c(scope, "request_decoding_error")
        self.request_oneway = c(scope, "request_oneway")
        self.request_heartbeat = c(scope, "request_heartbeat")
        self.request_active = g(scope, "request_active")
        self.response_success = c(scope, "response_success")
        self.response_error = c(scope, "response_error")
        self.response_decoding_error = c(scope, "response_decoding_error")
        self.cx_active = g(scope, "cx_active")
        self.cx_total = c(scope, "cx_total")
        self.cx_overflow = c(scope, "cx_overflow")
        self.cx_idle_timeout = c(scope, "cx_idle_timeout")
        self.cx_read_timeout = c(scope, "cx_read_timeout")
        self.cx_read_paused = c(scope, "cx_read_paused")
        self.cx_tls_handshake_error = c(scope, "cx_tls_handshake_error")
        self.cx_destroy_local_with_active_rq = c(scope, "cx_destroy_local_with_active_rq")
        self.cx_destroy_remote_with_active_rq = c(scope, "cx_destroy_remote_with_active_rq")
        self.mutation_dropped = c(scope, "mutation_dropped")
        self.no_route = c(scope, "no_route")
        self.request_time_ms = store.histogram(scope, "request_time_ms")
        self.local_response_error = {}
        from metaproxy.message import ErrorType  # local: keep stats.py free of framework imports at load

        for kind in ErrorType:
            self.local_response_error[kind] = c(scope, f"local_response_error.{kind.value}")
        #: ``method(name) -> (request counter, latency histogram)`` and ``route_request(route) -> counter``
        #: are bound ``__getitem__`` of the tables below: a known name costs one C-level dict lookup
        #: (no Python frame), a new one goes through ``__missing__``.
        self._methods = _MethodTable(store, scope, max_methods)
        self._routes = _RouteTable(store, scope)
        self.method = self._methods.__getitem__
        self.route_request = self._routes.__getitem__

    def request_done(self, method: str, elapsed_ms: float) -> None:
        """A finished request's latency and method stats in one call (what ``request_time_ms.observe``,
        ``method()``, ``counter.inc()`` and ``histogram.observe`` do in four); the bucket is searched
        once when the method's histogram has the listener's bounds."""
        counter, histogram = self._methods[method]
        counter.value += 1
        listener = self.request_time_ms
        index = listener.bucket(elapsed_ms)
        listener.count_in(index, elapsed_ms)
        if histogram.keys is listener.keys:
            histogram.count_in(index, elapsed_ms)
        else:
            histogram.observe(elapsed_ms)


class _MethodTable(dict[str, tuple[Counter, Histogram]]):
    """Method name -> (counter, histogram); bounded: past ``limit`` names the rest share ``_other``."""

    def __init__(self, store: StatsStore, scope: str, limit: int) -> None:
        super().__init__()
        self.store, self.scope, self.limit = store, scope, limit

    def __missing__(self, name: str) -> tuple[Counter, Histogram]:
        if len(self) >= self.limit:
            other = self.get("_other")
            if other is not None:
                return other  # not stored under ``name``: the table stays bounded
            name = "_other"
        scope = f"{self.scope}.method.{name}"
        found = self[name] = (self.store.counter(scope, "request"), self.store.histogram(scope, "request_time_ms"))
        return found


class _RouteTable(dict[str, Counter]):
    """Route name -> request counter (routes come from config: their number is bounded by it)."""

    def __init__(self, store: StatsStore, scope: str) -> None:
        super().__init__()
        self.store, self.scope = store, scope

    def __missing__(self, route: str) -> Counter:
        counter = self[route] = self.store.counter(f"{self.scope}.route.{route}", "request")
        return counter


class ClusterStats:
    def __init__(self, store: StatsStore, cluster: str) -> None:
        scope = f"cluster.{cluster}"
        c, g = store.counter, store.gauge
        self.upstream_rq = c(scope, "upstream_rq")
        self.upstream_rq_success = c(scope, "upstream_rq_success")
        self.upstream_rq_error = c(scope, "upstream_rq_error")
        self.upstream_rq_active = g(scope, "upstream_rq_active")
        self.upstream_rq_timeout = c(scope, "upstream_rq_timeout")
        self.upstream_rq_per_try_timeout = c(scope, "upstream_rq_per_try_timeout")
        self.upstream_rq_retry = c(scope, "upstream_rq_retry")
        self.upstream_rq_retry_success = c(scope, "upstream_rq_retry_success")
        self.upstream_rq_retry_overflow = c(scope, "upstream_rq_retry_overflow")
        self.upstream_rq_pending_overflow = c(scope, "upstream_rq_pending_overflow")
        self.upstream_rq_time_ms = store.histogram(scope, "upstream_rq_time_ms")
        self.upstream_cx_total = c(scope, "upstream_cx_total")
        self.upstream_cx_active = g(scope, "upstream_cx_active")
        self.upstream_cx_connect_fail = c(scope, "upstream_cx_connect_fail")
        self.upstream_cx_connect_timeout = c(scope, "upstream_cx_connect_timeout")
        self.upstream_cx_destroy_with_active_rq = c(scope, "upstream_cx_destroy_with_active_rq")
        self.upstream_cx_overflow = c(scope, "upstream_cx_overflow")
        self.upstream_cx_idle_timeout = c(scope, "upstream_cx_idle_timeout")
        self.upstream_rq_decoding_error = c(scope, "upstream_rq_decoding_error")
        self.upstream_rq_unknown_id = c(scope, "upstream_rq_unknown_id")
        self.membership_healthy = g(scope, "membership_healthy")
        self.membership_total = g(scope, "membership_total")
        self.outlier_detection_ejections = c(scope, "outlier_detection.ejections_total")
        self.health_check_failure = c(scope, "health_check.failure")
        self.health_check_success = c(scope, "health_check.success")
        self.mutation_dropped = c(scope, "mutation_dropped")
        self.mirror_requests = c(scope, "mirror_rq")
        self.mirror_dropped = c(scope, "mirror_rq_dropped")
