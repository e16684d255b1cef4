"""Counters, gauges and histograms that cost one attribute increment on the hot path.

Stat objects are created when a listener or cluster is built, kept as
attributes of small per-scope classes (:class:`ListenerStats`,
:class:`ClusterStats`), and only incremented per request: no lock (gevent has
one thread), no string formatting, no dict lookups by name. Exposition
(Envoy text, Prometheus) walks the :class:`StatsStore` when asked.
"""

from __future__ import annotations

from bisect import bisect_left
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


def _search_keys(bounds: tuple[float, ...]) -> tuple[float, ...]:
    """The bounds as floats, one shared tuple per distinct bounds (so histograms can tell they match)."""
    bounds = tuple(bounds)
    keys = _SEARCH_KEYS.get(bounds)
    if keys is None:
        keys = _SEARCH_KEYS[bounds] = tuple(float(b) for b in bounds)
    return keys


class Histogram:
    """Cumulative-free bucket counts plus sum and count; quantiles estimated on read.

    ``observe`` searches a float copy of the bounds (``_keys``): comparing a
    float latency with int bounds such as ``1`` or ``100`` costs about twice a
    float-float comparison, and three histograms are observed per request.
    ``bounds`` keeps the values as given, so the exposition prints ``10``, not ``10.0``.
    """

    __slots__ = ("_bounds", "_keys", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BUCKETS_MS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    @bounds.setter
    def bounds(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._keys = _search_keys(bounds)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._keys, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (0 when empty)."""
        if not self.count:
            return 0.0
        target = q * self.count
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
        ``method()``, ``counter.inc()`` and ``histogram.observe`` do in four).

        The listener and method histograms share their bounds, so the bucket is searched once.
        """
        listener = self.request_time_ms
        counter, histogram = self.method(method)
        index = bisect_left(listener._keys, elapsed_ms)
        listener.counts[index] += 1
        listener.sum += elapsed_ms
        listener.count += 1
        counter.value += 1
        if histogram._keys is not listener._keys:  # bounds changed on one of them: search its own
            index = bisect_left(histogram._keys, elapsed_ms)
        histogram.counts[index] += 1
        histogram.sum += elapsed_ms
        histogram.count += 1


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
