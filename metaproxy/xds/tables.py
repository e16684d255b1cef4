"""RouteConfiguration -> RouteTable, one route at a time, reusing routes that did not change.

Every route still goes through the proxy's own parser
(:func:`metaproxy.router.parse_route_config`), so dynamic routes are validated
exactly like static ones; but a route whose bytes are the same as in the
previous configuration is not converted and parsed again. A change to one
route of 1,000 then costs one route's work, not 1,000 (see bench/xds_bench.py).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from metaproxy.router import Route, RouteTable, parse_route_config
from metaproxy.settings import ConfigError
from metaproxy.xds.convert import UnsupportedRoute, route_to_dict

#: (route dict, parsed route, its position if it has no name of its own: its default name depends on it)
_Entry = tuple[dict[str, Any], Route, "int | None"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a large configuration is built.

    Building 10,000 routes makes hundreds of thousands of objects, and the
    collector's full passes over them made the build four times slower
    (superlinear in the route count). Nothing built here is cyclic garbage.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_route(route: Any, config_name: str, index: int, where: str) -> list[str]:
    """Problems the proxy would reject this one route for (UnsupportedRoute included); empty if none.

    The control plane checks each route it translates with this, once per
    distinct route, instead of building whole tables on every reload.
    """
    problems: list[str] = []
    try:
        RouteTableBuilder._parse_one(route, config_name, index, where, problems)
    except UnsupportedRoute as exc:
        return [f"{config_name}: {exc}"]
    return problems


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _skip(data: bytes, i: int, wire: int) -> int:
    if wire == 0:
        return _varint(data, i)[1]
    if wire == 1:
        return i + 8
    if wire == 5:
        return i + 4
    if wire == 2:
        n, i = _varint(data, i)
        return i + n
    raise ValueError(f"wire type {wire} is not expected here")


def route_slices(data: bytes) -> list[tuple[int, bytes]] | None:
    """(virtual host index, serialized Route) of each route in a serialized RouteConfiguration.

    Walks the wire format (RouteConfiguration field 2 = virtual_hosts,
    VirtualHost field 3 = routes) instead of iterating the parsed message and
    serializing each route again for its cache key, which was most of a
    10,000-route build. None if the bytes are not laid out as expected
    (the caller then uses the parsed message).
    """
    out: list[tuple[int, bytes]] = []
    try:
        i, end, vh = 0, len(data), 0
        while i < end:
            tag, i = _varint(data, i)
            if tag != 0x12:  # not field 2 (virtual_hosts) as a length-delimited field
                i = _skip(data, i, tag & 7)
                continue
            n, i = _varint(data, i)
            vend = i + n
            if vend > end:
                return None
            j = i
            while j < vend:
                if data[j] == 0x1A:  # field 3 (routes), length-delimited: a one-byte tag
                    b = data[j + 1]
                    if b < 0x80:
                        n, j = b, j + 2
                    else:
                        n, j = _varint(data, j + 1)
                    out.append((vh, data[j:j + n]))
                    j += n
                else:
                    tag, j = _varint(data, j)
                    j = _skip(data, j, tag & 7)
            if j != vend:
                return None
            i, vh = vend, vh + 1
        if i != end:
            return None
    except (IndexError, ValueError):
        return None
    return out


class RouteTableBuilder:
    """Builds tables for one route configuration name; remembers the routes of the last good build."""

    def __init__(self) -> None:
        self._cache: dict[bytes, _Entry] = {}

    def build(self, config: RouteConfiguration, version: str = "", raw: bytes | None = None) -> RouteTable:
        """The table for ``config``; raises UnsupportedRoute or ConfigError listing every problem.

        ``raw``, the bytes ``config`` was parsed from, lets the routes be
        compared with the last build's without serializing each again.
        """
        with paused_gc():
            return self._build(config, version, raw)

    def _items(self, config: RouteConfiguration, raw: bytes | None) -> Iterator[tuple[int, int, bytes, Any]]:
        """(vhost index, index in it, cache key, Route or None when only the bytes are at hand) of each route."""
        slices = route_slices(raw) if raw is not None else None
        if slices is not None:
            r, last = -1, -1
            for v, data in slices:
                r = r + 1 if v == last else 0
                last = v
                yield v, r, data, None
            return
        for v, vhost in enumerate(config.virtual_hosts):
            for r, route in enumerate(vhost.routes):
                yield v, r, route.SerializeToString(), route  # a key: it need not be canonical

    def _build(self, config: RouteConfiguration, version: str, raw: bytes | None) -> RouteTable:
        name = config.name
        problems: list[str] = []
        cache: dict[bytes, _Entry] = {}
        old = self._cache
        routes: list[Route] = []
        sources: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index, (v, r, key, route) in enumerate(self._items(config, raw)):
            entry = cache.get(key) or old.get(key)
            if entry is not None and entry[2] is not None and entry[2] != index:
                entry = None  # an unnamed route: its default name is its position, which moved
            if entry is None:
                if route is None:
                    route = rc.Route.FromString(key)
                entry = self._parse_one(route, name, index, f"virtual_hosts[{v}].routes[{r}]", problems)
            if entry is not None:
                cache[key] = entry
                parsed = entry[1]
                if parsed.name in seen:
                    problems.append(f"{name}.routes[{index}].name: duplicate route name {parsed.name!r}")
                seen.add(parsed.name)
                routes.append(parsed)
                sources.append(entry[0])
        if problems:
            raise ConfigError(problems)
        self._cache = cache
        return RouteTable(name=name, routes=tuple(routes), version=version,
                          source={"name": name, "routes": sources})

    @staticmethod
    def _parse_one(route: Any, name: str, index: int, where: str, problems: list[str]) -> _Entry | None:
        source = route_to_dict(route, where)
        unnamed_at = None if "name" in source else index
        source.setdefault("name", f"route-{index}")
        try:
            table = parse_route_config({"name": name, "routes": [source]}, path=name)
        except ConfigError as exc:
            one = f"{name}.routes[0]"
            problems.extend(p.replace(one, f"{name}.routes[{index}]", 1) for p in exc.problems)
            return None
        return source, table.routes[0], unnamed_at
