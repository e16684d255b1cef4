"""MetaRouter and ApplicationProtocol documents: read and validated with key-path errors.

The documents are the YAML an Aeraki user writes (Kubernetes style: camelCase
keys such as ``mirrorPercentage``); the snake_case spelling of the proto
(``mirror_percentage``) is accepted too. Every problem names the file, the
document and the key path, e.g.
``a.yaml#1 (MetaRouter demo): spec.routes[0].match.attributes.method: give exactly one of exact, prefix, regex``.

Beyond Aeraki, a route may carry ``timeout``, ``retryPolicy`` and
``hashPolicy``, and ``spec.port`` names the service port when no destination
says it (Aeraki takes it from the Kubernetes Service, which we do not have).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from metaproxy.router import RETRY_ON
from metaproxy.settings import Section

API_VERSION = "metaprotocol.aeraki.io/v1alpha1"
KINDS = ("MetaRouter", "ApplicationProtocol")


@dataclass(frozen=True)
class StringMatch:
    kind: str  # exact | prefix | regex | present
    value: str = ""


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True)
class WeightedDestination:
    destination: Destination
    weight: int


@dataclass(frozen=True)
class RetryPolicy:
    retry_on: tuple[str, ...]
    num_retries: int
    per_try_timeout: float | None


@dataclass(frozen=True)
class MetaRoute:
    name: str
    match: tuple[tuple[str, StringMatch], ...]
    route: tuple[WeightedDestination, ...]
    mirror: Destination | None = None
    mirror_percentage: float | None = None
    request_mutation: tuple[tuple[str, str], ...] = ()
    response_mutation: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    hash_policy: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenBucket:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float


@dataclass(frozen=True)
class RateLimitCondition:
    match: tuple[tuple[str, StringMatch], ...]
    token_bucket: TokenBucket


@dataclass(frozen=True)
class LocalRateLimit:
    """Kept in the model and shown in the admin view; not yet translated to a filter config."""

    token_bucket: TokenBucket | None
    conditions: tuple[RateLimitCondition, ...]


@dataclass(frozen=True)
class MetaRouter:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    routes: tuple[MetaRoute, ...]
    port: int | None = None
    local_rate_limit: LocalRateLimit | None = None
    global_rate_limit: dict[str, Any] | None = None
    source: str = ""


@dataclass(frozen=True)
class ApplicationProtocol:
    name: str
    protocol: str
    codec: str
    source: str = ""


@dataclass
class Documents:
    """Everything read from one file: the good documents and every problem found."""

    routers: list[MetaRouter] = field(default_factory=list)
    protocols: list[ApplicationProtocol] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _key(sec: Section, name: str) -> str:
    """The spelling of ``name`` the document uses (camelCase or snake_case); both is a problem."""
    camel = _camel(name)
    if camel != name and sec.has(camel):
        if sec.has(name):
            sec.problem(f"give {camel!r} or {name!r}, not both", camel)
        return camel
    return name


def _take(sec: Section, name: str, kind: Any, default: Any = None) -> Any:
    return sec.take(_key(sec, name), kind, default)


def _section(sec: Section, name: str, required: bool = False) -> Section | None:
    return sec.section(_key(sec, name), required)


def _sections(sec: Section, name: str, required: bool = False) -> list[Section]:
    return list(sec.sections(_key(sec, name), required))


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"expected a port number 1-65535, got {value!r}")
    return value


def read_attributes(sec: Section) -> tuple[tuple[str, StringMatch], ...]:
    """``match.attributes``: key -> {exact|prefix|regex}; an empty value checks presence."""
    out = []
    attrs = sec.raw("attributes")
    if attrs is None:
        return ()
    if not isinstance(attrs, dict):
        sec.problem(f"expected a mapping, got {type(attrs).__name__}", "attributes")
        return ()
    for key, value in attrs.items():
        path = f"attributes.{key}"
        if not isinstance(key, str) or not key:
            sec.problem("attribute names must be non-empty strings", path)
            continue
        if value is None or value == {}:
            out.append((key, StringMatch("present")))
            continue
        item = Section(value, sec.key_path(path), sec.problems, sec.prefix)
        kinds = [k for k in ("exact", "prefix", "regex") if item.has(k)]
        for k in ("exact", "prefix", "regex"):
            item.take(k, (str, int, float), None)
        item.finish()
        if len(kinds) != 1:
            item.problem(f"give exactly one of exact, prefix, regex (got {len(kinds)})")
            continue
        text = str(value[kinds[0]])
        if kinds[0] == "regex":
            try:
                re.compile(text)
            except re.error as exc:
                item.problem(f"invalid regex {text!r}: {exc}", "regex")
                continue
        out.append((key, StringMatch(kinds[0], text)))
    return tuple(out)


def _destination(sec: Section) -> Destination | None:
    host = sec.take("host", str)
    subset = sec.take("subset", str, "")
    port = None
    psec = sec.section("port")
    if psec is not None:
        port = psec.take("number", int, None, check=_port)
        psec.finish()
    sec.finish()
    if not host:
        if host == "":
            sec.problem("must not be empty", "host")
        return None
    if "|" in host or "|" in subset:
        sec.problem("host and subset must not contain '|' (it separates cluster name parts)")
        return None
    return Destination(host, subset, port)


def _retry(sec: Section) -> RetryPolicy:
    key = _key(sec, "retry_on")
    raw = sec.raw(key, [])
    items = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        sec.problem("expected a list or a comma-separated string", key)
        items = []
    retry_on = []
    for item in items:
        norm = str(item).replace("-", "_")
        if norm not in RETRY_ON:
            sec.problem(f"{item!r} is not one of {', '.join(RETRY_ON)}", key)
        else:
            retry_on.append(norm)
    num = _take(sec, "num_retries", int, 1)
    if num is not None and num < 0:
        sec.problem("must be >= 0", _key(sec, "num_retries"))
    per_try = _take(sec, "per_try_timeout", "duration", None)
    sec.finish()
    return RetryPolicy(tuple(retry_on), num or 0, per_try)


def _key_values(sec: Section, name: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in _sections(sec, name):
        k = item.take("key", str)
        v = item.take("value", (str, int, float, bool))
        item.finish()
        if k is not None and v is not None:
            out.append((k, str(v).lower() if isinstance(v, bool) else str(v)))
    return tuple(out)


def _route_destinations(sec: Section) -> tuple[WeightedDestination, ...]:
    items = []
    dsecs = _sections(sec, "route", required=True)
    for dsec in dsecs:
        dest_sec = dsec.section("destination", required=True)
        weight = dsec.take("weight", int, None)
        dsec.finish()
        dest = _destination(dest_sec) if dest_sec is not None else None
        if weight is not None and weight < 0:
            dsec.problem("must be >= 0", "weight")
            continue
        if dest is not None:
            items.append(WeightedDestination(dest, weight if weight is not None else (100 if len(dsecs) == 1 else 0)))
    if sec.has("route") and not dsecs and isinstance(sec.data.get("route"), list):
        sec.problem("needs at least one destination", "route")
    if len(items) > 1 and len(items) == len(dsecs) and sum(i.weight for i in items) != 100:
        sec.problem(f"weights must add up to 100 (they add up to {sum(i.weight for i in items)})", "route")
    if len(items) == 1 and items[0].weight == 0:
        sec.problem("the only destination must not have weight 0", "route")
    return tuple(items)


def read_meta_route(sec: Section, index: int) -> MetaRoute | None:
    name = sec.take("name", str, f"route-{index}")
    match: tuple[tuple[str, StringMatch], ...] = ()
    msec = sec.section("match")
    if msec is not None:
        match = read_attributes(msec)
        msec.finish()
    route = _route_destinations(sec)
    mirror = None
    mirror_sec = sec.section("mirror")
    if mirror_sec is not None:
        mirror = _destination(mirror_sec)
    pct = None
    psec = _section(sec, "mirror_percentage")
    if psec is not None:
        pct = psec.take("value", (int, float), None)
        psec.finish()
        if pct is not None and not 0 <= pct <= 100:
            psec.problem("must be between 0 and 100", "value")
        if mirror_sec is None:
            sec.problem("mirrorPercentage needs mirror", _key(sec, "mirror_percentage"))
    req = _key_values(sec, "request_mutation")
    resp = _key_values(sec, "response_mutation")
    timeout = sec.take("timeout", "duration", None)
    retry = None
    rsec = _section(sec, "retry_policy")
    if rsec is not None:
        retry = _retry(rsec)
    hash_key = _key(sec, "hash_policy")
    hash_policy = sec.take(hash_key, list, [])
    for i, h in enumerate(hash_policy or []):
        if not isinstance(h, str) or not h:
            sec.problem(f"item {i} must be a metadata key (a non-empty string)", hash_key)
    sec.finish()
    return MetaRoute(
        name=name or f"route-{index}", match=match, route=route, mirror=mirror,
        mirror_percentage=pct, request_mutation=req, response_mutation=resp,
        timeout=timeout, retry_policy=retry, hash_policy=tuple(str(h) for h in hash_policy or ()),
    )


#: Routes already read, by their document text: one edited route of 1,000 is read alone.
_ROUTE_CACHE: dict[str, MetaRoute] = {}
_ROUTE_CACHE_MAX = 200_000


class RouteMemo:
    """The routes read from one file last time, by the identity of their YAML mapping.

    After an edit that splice.py could re-parse in place, every route but the
    edited one is the very same dict as before, so finding it here costs a
    dict lookup instead of a JSON dump of the route (the global cache's key).
    The memo keeps a reference to each mapping, so an ``id`` is never reused
    while it is in the memo; :meth:`begin`/:meth:`end` around a read keep only
    the routes of the latest version.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[Any, int | None, MetaRoute]] = {}
        self._next: dict[int, tuple[Any, int | None, MetaRoute]] = {}
        self.hits = 0

    def begin(self) -> None:
        self._next = {}
        self.hits = 0

    def end(self) -> None:
        self._last, self._next = self._next, {}

    def get(self, data: Any, index: int) -> MetaRoute | None:
        entry = self._last.get(id(data))
        if entry is None or entry[0] is not data or entry[1] not in (None, index):
            return None
        self._next[id(data)] = entry
        self.hits += 1
        return entry[2]

    def get_all(self, items: list[Any]) -> list[MetaRoute | None]:
        """:meth:`get` for each item of a list, in one loop (10,000 routes: a few ms)."""
        last, nxt = self._last, self._next
        out: list[MetaRoute | None] = []
        hits = 0
        for index, data in enumerate(items):
            ident = id(data)
            entry = last.get(ident)
            if entry is not None and entry[0] is data and (entry[1] is None or entry[1] == index):
                nxt[ident] = entry
                out.append(entry[2])
                hits += 1
            else:
                out.append(None)
        self.hits += hits
        return out

    def put(self, data: Any, index: int, route: MetaRoute) -> None:
        self._next[id(data)] = (data, None if "name" in data else index, route)


def _cached_route(sec: Section, index: int, memo: RouteMemo | None = None) -> MetaRoute | None:
    """``read_meta_route`` with a cache of the routes that had no problems."""
    try:
        key = json.dumps(sec.data, sort_keys=True)
    except (TypeError, ValueError):
        return read_meta_route(sec, index)
    if "name" not in sec.data:  # its default name depends on its position
        key += f"#{index}"
    route = _ROUTE_CACHE.get(key)
    if route is None:
        before = len(sec.problems)
        route = read_meta_route(sec, index)
        if route is None or len(sec.problems) != before:
            return route
        if len(_ROUTE_CACHE) >= _ROUTE_CACHE_MAX:
            _ROUTE_CACHE.clear()
        _ROUTE_CACHE[key] = route
    if memo is not None:
        memo.put(sec.data, index, route)
    return route


def _read_routes(spec: Section, memo: RouteMemo | None) -> list[MetaRoute]:
    """``spec.routes``: each route from the memo when its mapping is unchanged, else read and validated."""
    items = spec.raw("routes")
    if items is None:
        spec.problem("required key is missing", "routes")
        return []
    if not isinstance(items, list):
        spec.problem(f"expected a list, got {type(items).__name__}", "routes")
        return []
    base = spec.key_path("routes")
    routes = []
    seen: set[str] = set()
    known = memo.get_all(items) if memo is not None else [None] * len(items)
    for i, (item, route) in enumerate(zip(items, known, strict=True)):
        if route is None:
            route = _cached_route(Section(item, f"{base}[{i}]", spec.problems, spec.prefix), i, memo)
            if route is None:
                continue
        if route.name in seen:
            spec.problems.append(f"{spec.prefix}{base}[{i}].name: duplicate route name {route.name!r}")
        seen.add(route.name)
        routes.append(route)
    return routes


def _token_bucket(sec: Section) -> TokenBucket | None:
    max_tokens = _take(sec, "max_tokens", int, None)
    per_fill = _take(sec, "tokens_per_fill", int, 1)
    interval = _take(sec, "fill_interval", "duration", None)
    sec.finish()
    if max_tokens is None or max_tokens <= 0:
        sec.problem("must be a number greater than 0", _key(sec, "max_tokens"))
        return None
    if per_fill is None or per_fill <= 0:
        sec.problem("must be greater than 0", _key(sec, "tokens_per_fill"))
        return None
    if not interval:
        sec.problem("required, and greater than 0", _key(sec, "fill_interval"))
        return None
    return TokenBucket(max_tokens, per_fill, interval)


def _local_rate_limit(sec: Section) -> LocalRateLimit:
    bucket = None
    bsec = _section(sec, "token_bucket")
    if bsec is not None:
        bucket = _token_bucket(bsec)
    conditions = []
    for csec in _sections(sec, "conditions"):
        msec = csec.section("match", required=True)
        match = read_attributes(msec) if msec is not None else ()
        if msec is not None:
            msec.finish()
        cb = _section(csec, "token_bucket", required=True)
        cbucket = _token_bucket(cb) if cb is not None else None
        csec.finish()
        if cbucket is not None:
            conditions.append(RateLimitCondition(match, cbucket))
    sec.finish()
    if not sec.has(_key(sec, "token_bucket")) and not sec.has("conditions"):
        sec.problem("give tokenBucket or conditions (or both)")
    return LocalRateLimit(bucket, tuple(conditions))


def read_meta_router(spec: Section, name: str, namespace: str, source: str,
                     memo: RouteMemo | None = None) -> MetaRouter | None:
    hosts = spec.take("hosts", list)
    if hosts is not None:
        if not hosts:
            spec.problem("needs at least one host", "hosts")
        for i, h in enumerate(hosts):
            if not isinstance(h, str) or not h or "|" in h:
                spec.problem(f"item {i} must be a host name without '|'", "hosts")
    port = spec.take("port", int, None, check=_port)
    spec.raw("gateways")
    spec.raw(_key(spec, "export_to"))
    routes = _read_routes(spec, memo)
    lrl = None
    lsec = _section(spec, "local_rate_limit")
    if lsec is not None:
        lrl = _local_rate_limit(lsec)
    grl = _take(spec, "global_rate_limit", dict, None)
    spec.finish()
    return MetaRouter(name, namespace, tuple(hosts or ()), tuple(routes), port, lrl, grl, source)


def read_application_protocol(spec: Section, name: str, source: str) -> ApplicationProtocol | None:
    protocol = spec.take("protocol", str)
    codec = spec.take("codec", str)
    spec.finish()
    if not protocol or not codec:
        return None
    return ApplicationProtocol(name, protocol, codec, source)


def read_documents(docs: list[Any], source: str, memo: RouteMemo | None = None) -> Documents:
    """Validate the YAML documents of one file; a document with problems is left out.

    ``memo`` (one per file) lets routes whose mapping is the same object as
    last time skip validation.
    """
    result = Documents()
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        problems: list[str] = []
        label = f"{source}#{index}"
        if isinstance(doc, dict):
            meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            label += f" ({doc.get('kind', '?')} {meta.get('name', '?')})"
        top = Section(doc, "", problems, prefix=f"{label}: ")
        api = top.take("apiVersion", str, API_VERSION)
        if api is not None and api != API_VERSION:
            top.problem(f"expected {API_VERSION!r}", "apiVersion")
        kind = top.one_of(top.take("kind", str), KINDS, "kind")
        msec = top.section("metadata", required=True)
        name, namespace = "", ""
        if msec is not None:
            name = msec.take("name", str) or ""
            namespace = msec.take("namespace", str, "")
            msec.raw("labels")
            msec.raw("annotations")
            msec.finish()
        spec = top.section("spec", required=True)
        top.raw("status")
        top.finish()
        item: Any = None
        if spec is not None and kind == "MetaRouter":
            item = read_meta_router(spec, name, namespace, source, memo)
        elif spec is not None and kind == "ApplicationProtocol":
            item = read_application_protocol(spec, name, source)
        if problems:
            result.problems.extend(problems)
        elif isinstance(item, MetaRouter):
            result.routers.append(item)
        elif isinstance(item, ApplicationProtocol):
            result.protocols.append(item)
    return result
