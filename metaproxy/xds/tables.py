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

from envoy.config.route.v3.route_pb2 import RouteConfiguration

from metaproxy.router import Route, RouteTable, parse_route_config
from metaproxy.settings import ConfigError
from metaproxy.xds.convert import UnsupportedRoute, route_to_dict

_Entry = tuple[dict[str, Any], Route]


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


class RouteTableBuilder:
    """Builds tables for one route configuration name; remembers the routes of the last good build."""

    def __init__(self) -> None:
        self._cache: dict[bytes, _Entry] = {}

    def build(self, config: RouteConfiguration, version: str = "") -> RouteTable:
        """The table for ``config``; raises UnsupportedRoute or ConfigError listing every problem."""
        with paused_gc():
            return self._build(config, version)

    def _build(self, config: RouteConfiguration, version: str) -> RouteTable:
        name = config.name
        problems: list[str] = []
        cache: dict[bytes, _Entry] = {}
        routes: list[Route] = []
        sources: list[dict[str, Any]] = []
        seen: set[str] = set()
        index = 0
        for v, vhost in enumerate(config.virtual_hosts):
            for r, route in enumerate(vhost.routes):
                key = route.SerializeToString(deterministic=True)
                if not route.name:  # its default name depends on its position
                    key += b"#%d" % index
                entry = cache.get(key) or self._cache.get(key)
                if entry is None:
                    entry = self._parse_one(route, name, index, f"virtual_hosts[{v}].routes[{r}]", problems)
                if entry is not None:
                    cache[key] = entry
                    source, parsed = entry
                    if parsed.name in seen:
                        problems.append(f"{name}.routes[{index}].name: duplicate route name {parsed.name!r}")
                    seen.add(parsed.name)
                    routes.append(parsed)
                    sources.append(source)
                index += 1
        if problems:
            raise ConfigError(problems)
        self._cache = cache
        return RouteTable(name=name, routes=tuple(routes), version=version,
                          source={"name": name, "routes": sources})

    @staticmethod
    def _parse_one(route: Any, name: str, index: int, where: str, problems: list[str]) -> _Entry | None:
        source = route_to_dict(route, where)
        source.setdefault("name", f"route-{index}")
        try:
            table = parse_route_config({"name": name, "routes": [source]}, path=name)
        except ConfigError as exc:
            one = f"{name}.routes[0]"
            problems.extend(p.replace(one, f"{name}.routes[{index}]", 1) for p in exc.problems)
            return None
        return source, table.routes[0]
