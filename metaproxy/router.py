"""Route tables: metadata matchers, route selection, weighted clusters.

A route configuration keeps the field names of Aeraki's MetaProtocol routes
(see DESIGN.md). It is parsed once into immutable objects with compiled
matchers; the hot path only calls :meth:`RouteTable.match`. Static config and
the xDS client both produce a :class:`RouteTable` through
:func:`parse_route_config`, and a :class:`RouteHolder` swaps tables atomically.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metaproxy.message import Metadata, as_str
from metaproxy.settings import ConfigError, Section

RETRY_ON = ("connect_failure", "reset", "timeout", "unavailable", "error")


@dataclass(frozen=True)
class Matcher:
    """One condition on one metadata key; all of a route's matchers must hold."""

    name: str
    kind: str  # exact | prefix | suffix | regex | present
    value: Any
    invert: bool = False
    test: Callable[[str], bool] = field(compare=False, repr=False, default=lambda v: True)

    def matches(self, metadata: Metadata) -> bool:
        raw = metadata.get(self.name)
        if raw is None:
            found = False
        elif self.kind == "present":
            found = True
        else:
            found = self.test(raw if type(raw) is str else as_str(raw))
        if self.kind == "present" and self.value is False:
            found = not found
        return found != self.invert


@dataclass(frozen=True)
class RetryPolicy:
    retry_on: tuple[str, ...] = ()
    num_retries: int = 0
    per_try_timeout: float | None = None


@dataclass(frozen=True)
class MirrorPolicy:
    cluster: str
    percentage: float = 100.0


@dataclass(frozen=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass
class Route:
    name: str
    matchers: tuple[Matcher, ...]
    clusters: tuple[WeightedCluster, ...]
    timeout: float | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    hash_policy: tuple[str, ...] = ()
    mirrors: tuple[MirrorPolicy, ...] = ()
    request_mutation: tuple[tuple[str, str], ...] = ()
    response_mutation: tuple[tuple[str, str], ...] = ()
    _cumulative: list[int] = field(default_factory=list, repr=False)
    _total: int = 0

    def __post_init__(self) -> None:
        total = 0
        self._cumulative = []
        for wc in self.clusters:
            total += wc.weight
            self._cumulative.append(total)
        self._total = total

    def matches(self, metadata: Metadata) -> bool:
        for m in self.matchers:
            if not m.matches(metadata):
                return False
        return True

    def pick_cluster(self, rand: Callable[[], float] = random.random) -> str:
        """The cluster for one request: weighted at random when there are several."""
        clusters = self.clusters
        if len(clusters) == 1:
            return clusters[0].name
        point = rand() * self._total
        return clusters[bisect.bisect_right(self._cumulative, point)].name

    def cluster_names(self) -> list[str]:
        return [wc.name for wc in self.clusters] + [m.cluster for m in self.mirrors]


@dataclass
class RouteTable:
    """An immutable, ordered list of routes: the first that matches wins."""

    name: str
    routes: tuple[Route, ...]
    version: str = ""
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    def match(self, metadata: Metadata) -> Route | None:
        for route in self.routes:
            if route.matches(metadata):
                return route
        return None


class RouteHolder:
    """The route table in force for one listener, replaced atomically.

    A request reads ``current`` once when it starts and keeps that table, so
    an update never changes the routes of a request in flight.
    """

    def __init__(self, table: RouteTable | None = None) -> None:
        self.current = table
        self.updates = 0
        self._listeners: list[Callable[[RouteTable], None]] = []

    def set(self, table: RouteTable) -> None:
        self.current = table
        self.updates += 1
        for callback in list(self._listeners):
            callback(table)

    def subscribe(self, callback: Callable[[RouteTable], None]) -> None:
        self._listeners.append(callback)


# -- parsing ----------------------------------------------------------------

_MATCH_KINDS = ("exact", "prefix", "suffix", "regex", "safe_regex", "present")


def _compile_matcher(sec: Section) -> Matcher | None:
    name = sec.take("name", str)
    kinds = [k for k in _MATCH_KINDS if sec.has(k)]
    invert = sec.take("invert", bool, False)
    for k in _MATCH_KINDS:
        sec.raw(k)
    sec.finish()
    if len(kinds) != 1:
        sec.problem(f"exactly one of {', '.join(_MATCH_KINDS)} is required (got {len(kinds)})")
        return None
    kind = kinds[0]
    value = sec.data[kind]
    if kind == "present":
        if not isinstance(value, bool):
            sec.problem("expected true or false", kind)
            return None
        return Matcher(name or "", "present", value, invert)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        sec.problem(f"expected a string, got {type(value).__name__}", kind)
        return None
    text = str(value)
    if kind in ("regex", "safe_regex"):
        try:
            pattern = re.compile(text)
        except re.error as exc:
            sec.problem(f"invalid regex {text!r}: {exc}", kind)
            return None
        return Matcher(name or "", "regex", text, invert, _regex_test(pattern))
    return Matcher(name or "", kind, text, invert, _TESTS[kind](text))


def _regex_test(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda v: pattern.fullmatch(v) is not None


def _exact_test(text: str) -> Callable[[str], bool]:
    return lambda v: v == text


def _prefix_test(text: str) -> Callable[[str], bool]:
    return lambda v: v.startswith(text)


def _suffix_test(text: str) -> Callable[[str], bool]:
    return lambda v: v.endswith(text)


#: The test each string matcher kind compiles to (made once, at config load).
_TESTS: dict[str, Callable[[str], Callable[[str], bool]]] = {
    "exact": _exact_test,
    "prefix": _prefix_test,
    "suffix": _suffix_test,
}


def _key_values(sec: Section, key: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in sec.sections(key):
        k = item.take("key", str)
        v = item.take("value", (str, int, float, bool))
        item.finish()
        if k is not None and v is not None:
            pairs.append((k, as_str(v)))
    return tuple(pairs)


def parse_matchers(sec: Section, key: str = "metadata") -> tuple[Matcher, ...]:
    """The ``metadata`` matcher list under ``sec`` (shared by routes and filters)."""
    out = []
    for item in sec.sections(key):
        m = _compile_matcher(item)
        if m is not None:
            out.append(m)
    return tuple(out)


def _parse_route(sec: Section, index: int) -> Route | None:
    name = sec.take("name", str, f"route-{index}")
    match = sec.section("match")
    matchers: tuple[Matcher, ...] = ()
    if match is not None:
        matchers = parse_matchers(match)
        match.finish()
    action = sec.section("route", required=True)
    sec.finish()
    if action is None:
        return None
    clusters: list[WeightedCluster] = []
    cluster = action.take("cluster", str, None)
    if cluster is not None:
        clusters.append(WeightedCluster(cluster, 1))
    for wc in action.sections("weighted_clusters"):
        wname = wc.take("name", str)
        weight = wc.take("weight", int, 1)
        wc.finish()
        if weight is not None and weight < 0:
            wc.problem("weight must be >= 0", "weight")
        elif wname is not None and weight is not None:
            clusters.append(WeightedCluster(wname, weight))
    if action.has("cluster") and action.has("weighted_clusters"):
        action.problem("give either cluster or weighted_clusters, not both")
    elif not clusters:
        action.problem("one of cluster or weighted_clusters is required")
    elif sum(c.weight for c in clusters) <= 0:
        action.problem("weighted_clusters weights must add up to more than 0", "weighted_clusters")
    timeout = action.take("timeout", "duration", None)
    retry = RetryPolicy()
    rp = action.section("retry_policy")
    if rp is not None:
        retry_on = rp.take("retry_on", list, [])
        for item in retry_on or []:
            if item not in RETRY_ON:
                rp.problem(f"{item!r} is not one of {', '.join(RETRY_ON)}", "retry_on")
        num = rp.take("num_retries", int, 1)
        if num is not None and num < 0:
            rp.problem("must be >= 0", "num_retries")
        per_try = rp.take("per_try_timeout", "duration", None)
        rp.finish()
        retry = RetryPolicy(tuple(retry_on or ()), num or 0, per_try)
    hash_policy = action.take("hash_policy", list, [])
    mirrors = []
    for mp in action.sections("request_mirror_policies"):
        mc = mp.take("cluster", str)
        pct = mp.take("percentage", (int, float), 100.0)
        mp.finish()
        if pct is not None and not 0 <= pct <= 100:
            mp.problem("must be between 0 and 100", "percentage")
        elif mc is not None:
            mirrors.append(MirrorPolicy(mc, float(pct)))
    req_mut = _key_values(action, "request_mutation")
    resp_mut = _key_values(action, "response_mutation")
    action.finish()
    if not clusters:
        return None
    return Route(
        name=name,
        matchers=matchers,
        clusters=tuple(clusters),
        timeout=timeout,
        retry_policy=retry,
        hash_policy=tuple(str(h) for h in hash_policy or ()),
        mirrors=tuple(mirrors),
        request_mutation=req_mut,
        response_mutation=resp_mut,
    )


def read_route_config(sec: Section, version: str = "") -> RouteTable | None:
    """Parse one route configuration; problems go to ``sec.problems``."""
    name = sec.take("name", str, "")
    routes = []
    seen: set[str] = set()
    for index, rsec in enumerate(sec.sections("routes", required=True)):
        route = _parse_route(rsec, index)
        if route is None:
            continue
        if route.name in seen:
            rsec.problem(f"duplicate route name {route.name!r}", "name")
        seen.add(route.name)
        routes.append(route)
    sec.finish()
    return RouteTable(name=name or "", routes=tuple(routes), version=version, source=sec.data)


def parse_route_config(data: Any, path: str = "route_config", version: str = "") -> RouteTable:
    """Parse a route configuration dict; raise ConfigError listing every problem."""
    problems: list[str] = []
    table = read_route_config(Section(data, path, problems), version)
    if problems or table is None:
        raise ConfigError(problems)
    return table
