"""Counters, gauges and histograms that cost one attribute increment on the hot path.

Stat objects are created when a listener or cluster is built, kept as
attributes of small per-scope classes (:class:`ListenerStats`,
:class:`ClusterStats`), and only incremented per request: no lock (gevent has
one thread), no string formatting, no dict lookups by name. Exposition
(Envoy text, Prometheus) walks the :class:`StatsStore` when asked.
"""

from __future__ import annotations

from bisect import bisect_right
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


#: Values a histogram holds unfolded at most (then ``observe`` folds them into the buckets).
FOLD_AT = 2048


class Histogram:
    """Bucket counts (not cumulative) plus sum and count; quantiles estimated on read.

    Observing a value appends it to ``pending``: one C-level call on the hot
    path, where searching the bucket and updating three fields cost a Python
    call and a dozen bytecodes per histogram, and a request observes three.
    :meth:`fold` sorts the pending values and counts each bucket with one
    binary search per bound; every read of ``counts``, ``sum`` or ``count``
    folds first, so readers never see stale figures. A hot path that appends
    to ``pending`` itself must fold at ``FOLD_AT`` values (see
    :meth:`ListenerStats.request_done`), which bounds the memory.
    ``bounds`` keeps the values as given, so the exposition prints ``10``,
    not ``10.0``; the search uses a float copy (``_keys``).
    """

    __slots__ = ("_bounds", "_keys", "_counts", "_sum", "_count", "pending")

    def __init__(self, bounds: tuple[float | int, ...] = DEFAULT_BUCKETS_MS) -> None:
        self.pending: list[float] = []
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._count = 0

    # ``float | int``, not ``float``: compiled, a float-typed value is a C double and 10 would print 10.0.
    @property
    def bounds(self) -> tuple[float | int, ...]:
        return self._bounds

    @bounds.setter
    def bounds(self, bounds: tuple[float | int, ...]) -> None:
        if self.pending:
            self.fold()  # values observed under the old bounds count in the old buckets
        self._bounds = bounds
        self._keys = _search_keys(bounds)

    def observe(self, value: float) -> None:
        pending = self.pending
        pending.append(value)
        if len(pending) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Count the pending values into the buckets."""
        pending = self.pending
        if not pending:
            return
        self.pending = []
        pending.sort()
        counts = self._counts
        total = len(pending)
        below = 0  # pending values at or under the previous bound
        for index, key in enumerate(self._keys):
            upto = bisect_right(pending, key)
            counts[index] += upto - below
            below = upto
            if below == total:
                break
        else:
            counts[-1] += total - below
        self._sum += sum(pending)
        self._count += total

    @property
    def counts(self) -> list[int]:
        if self.pending:
            self.fold()
        return self._counts

    @counts.setter
    def counts(self, counts: list[int]) -> None:
        self.fold()
        self._counts = counts

    @property
    def sum(self) -> float:
        if self.pending:
            self.fold()
        return self._sum

    @sum.setter
    def sum(self, value: float) -> None:
        self.fold()
        self._sum = value

    @property
    def count(self) -> int:
        if self.pending:
            self.fold()
        return self._count

    @count.setter
    def count(self, value: int) -> None:
        self.fold()
        self._count = value

    def quantile(self, q: float) -> float | int:
        """The upper bound of the bucket holding quantile ``q`` (0 when empty)."""
        count = self.count
        if not count:
            return 0.0
        target = q * count
        seen = 0
        for index, n in enumerate(self._counts):
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

        The method histograms are folded with the listener's: a method's pending values are
        never more than the listener's, so they stay bounded too.
        """
        counter, histogram = self.method(method)
        counter.value += 1
        histogram.pending.append(elapsed_ms)
        pending = self.request_time_ms.pending
        pending.append(elapsed_ms)
        if len(pending) >= FOLD_AT:
            self.request_time_ms.fold()
            for _, method_histogram in self._methods.values():
                method_histogram.fold()


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
