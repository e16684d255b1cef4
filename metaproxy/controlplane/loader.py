"""Files -> validated documents -> route configurations, keeping the last good of each.

A file that fails to parse or validate keeps its previous documents in
force (its problems are logged and shown on the admin view), so one bad edit
never withdraws routes that proxies are using. Each translated route is also
checked by the proxy's own route parser, so what the control plane serves is
what a metaproxy will accept (unless ``validate=False``, a testing aid that
lets a bad update through to exercise NACK handling).

A reload does only the work the change needs (docs/control-plane.md,
"Performance"): a file whose (inode, size, mtime, ctime) is unchanged and
that the watcher did not name is not read; a file read again with the same
text is not parsed; a changed file is re-parsed only in the sequence item
the edit touched when splice.py can do that safely; routes whose YAML
mapping is the same object skip validation (model.RouteMemo); routes whose
MetaRoute is the same object skip translation and checking; and a
configuration with a few new routes is patched from the previous one.
:attr:`Loader.counters` counts each kind of work, for tests and /healthz.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import yaml
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from metaproxy.controlplane.model import (
    ApplicationProtocol,
    Documents,
    MetaRoute,
    MetaRouter,
    RouteMemo,
    read_documents,
)
from metaproxy.controlplane.splice import Parsed, parse, splice
from metaproxy.controlplane.translate import (
    TranslationError,
    assemble,
    cached_translation,
    route_config_name,
    service_port,
)
from metaproxy.settings import ConfigError
from metaproxy.xds.convert import UnsupportedRoute
from metaproxy.xds.tables import RouteTableBuilder, check_route, paused_gc

log = logging.getLogger("metaproxy.controlplane")

_AERAKI_CODEC_PREFIX = "aeraki.meta_protocol.codec."
#: A file modified this recently (seconds) before it was read may be written again within the same
#: timestamp tick without its stat changing: it is read again at the next load (only read: same text, no parse).
_RACY_WINDOW = 0.1


@dataclass
class Build:
    """The result of one load: what to serve, and every problem seen."""

    resources: dict[str, RouteConfiguration] = field(default_factory=dict)
    routers: list[MetaRouter] = field(default_factory=list)
    protocols: list[ApplicationProtocol] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class Counters:
    """How much work the loads did, cumulatively (tests assert on these; /healthz shows them)."""

    loads: int = 0
    stats: int = 0          # files stat()ed
    reads: int = 0          # files read
    full_parses: int = 0    # files parsed whole
    splices: int = 0        # files re-parsed in one sequence item only
    validations: int = 0    # files validated (routes inside may come from the memo)
    routes_validated: int = 0
    routes_translated: int = 0
    configs_built: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _FileState:
    signature: tuple[int, int, int, int] = (-1, -1, -1, -1)
    racy: bool = True
    text: str | None = None
    parsed: Parsed | None = None        # the last text that parsed (splicing starts from it)
    documents: Documents = field(default_factory=Documents)  # what the file contributes (its last good)
    problems: list[str] = field(default_factory=list)        # problems of its current version
    good: bool = False                  # documents come from a version without problems
    memo: RouteMemo = field(default_factory=RouteMemo)


@dataclass
class _Translated:
    """One route configuration as last built, and the translation of each route by MetaRoute identity."""

    router: MetaRouter | None = None
    config: RouteConfiguration | None = None
    routes: list[rc.Route] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    memo: dict[int, tuple[MetaRoute, rc.Route, list[str]]] = field(default_factory=dict)


def codec_name(codec: str) -> str:
    """An ApplicationProtocol codec as metaproxy names it (Aeraki's ``aeraki.meta_protocol.codec.X`` -> X)."""
    return codec[len(_AERAKI_CODEC_PREFIX):] if codec.startswith(_AERAKI_CODEC_PREFIX) else codec


def read_file(path: Path) -> Documents:
    """One YAML file (several documents allowed) -> its validated documents (no caching)."""
    try:
        docs = parse(path.read_text()).docs
    except OSError as exc:
        return Documents(problems=[f"{path}: cannot read: {exc}"])
    except yaml.YAMLError as exc:
        return Documents(problems=[f"{path}: not valid YAML: {exc}"])
    return read_documents(docs, str(path))


def check_route_config(config: RouteConfiguration, builder: RouteTableBuilder | None = None) -> list[str]:
    """Problems the proxy would NACK this configuration for (empty if it would ACK)."""
    try:
        (builder or RouteTableBuilder()).build(config)
    except UnsupportedRoute as exc:
        return [f"{config.name}: {exc}"]
    except ConfigError as exc:
        return list(exc.problems)
    return []


class Loader:
    """Reads the route files; remembers per file and per resource what it read, built and last had good."""

    def __init__(self, paths: list[str], validate: bool = True) -> None:
        self.paths = paths
        self.validate = validate
        self.counters = Counters()
        self._files: dict[str, _FileState] = {}
        self._translated: dict[str, _Translated] = {}
        self._good_resources: dict[str, RouteConfiguration] = {}
        self._codecs = {ep.name for ep in entry_points(group="metaproxy.codecs")}

    def load(self, changed: Iterable[str] | None = None) -> Build:
        """Bring every file up to date; ``changed`` names files to read even if their stat looks the same.

        Problems are in the result, never raised.
        """
        with paused_gc():
            return self._load(set(changed or ()))

    def _load(self, changed: set[str]) -> Build:
        from metaproxy.controlplane.watcher import route_files

        self.counters.loads += 1
        build = Build()
        files = route_files(self.paths)
        build.files = [str(p) for p in files]
        states: dict[str, _FileState] = {}
        for path in files:
            key = str(path)
            state = states[key] = self._refresh(path, self._files.get(key) or _FileState(), key in changed)
            build.problems.extend(state.problems)
            build.routers.extend(state.documents.routers)
            build.protocols.extend(state.documents.protocols)
        self._files = states  # files gone from the folder are forgotten
        self._check_protocols(build)
        self._translate(build)
        return build

    # -- one file ----------------------------------------------------------------
    def _refresh(self, path: Path, state: _FileState, force: bool) -> _FileState:
        key = str(path)
        self.counters.stats += 1
        try:
            st = path.stat()
            signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if signature == state.signature and not force and not state.racy:
                return state
            read_at = time.time_ns()
            text = path.read_text()
        except OSError as exc:
            return self._failed(state, key, [f"{key}: cannot read: {exc}"])
        self.counters.reads += 1
        state.signature = signature
        state.racy = read_at - st.st_mtime_ns < _RACY_WINDOW * 1e9
        if text == state.text:
            return state
        state.text = text
        try:
            parsed = splice(state.parsed, text) if state.parsed is not None else None
            if parsed is not None:
                self.counters.splices += 1
            else:
                parsed = parse(text)
                self.counters.full_parses += 1
        except yaml.YAMLError as exc:
            return self._failed(state, key, [f"{key}: not valid YAML: {exc}"])
        state.parsed = parsed
        self.counters.validations += 1
        state.memo.begin()
        docs = read_documents(parsed.docs, key, state.memo)
        state.memo.end()
        self.counters.routes_validated += sum(len(r.routes) for r in docs.routers) - state.memo.hits
        if docs.problems:
            return self._failed(state, key, docs.problems)
        state.documents, state.problems, state.good = docs, [], True
        return state

    @staticmethod
    def _failed(state: _FileState, key: str, problems: list[str]) -> _FileState:
        """Keep the last good documents of the file (if any) and report why."""
        state.problems = list(problems)
        if state.good:
            state.problems.append(f"{key}: keeping its last good version")
        return state

    # -- the whole set -----------------------------------------------------------
    def _check_protocols(self, build: Build) -> None:
        names: dict[str, ApplicationProtocol] = {}
        for proto in build.protocols:
            codec = codec_name(proto.codec)
            if ":" not in codec and codec not in self._codecs:
                known = ", ".join(sorted(self._codecs))
                build.problems.append(f"{proto.source} (ApplicationProtocol {proto.name}): spec.codec: "
                                      f"no codec named {codec!r} (known: {known}, or module:Class)")
            if proto.protocol in names and names[proto.protocol].codec != proto.codec:
                build.problems.append(f"{proto.source} (ApplicationProtocol {proto.name}): protocol "
                                      f"{proto.protocol!r} is already mapped to {names[proto.protocol].codec!r}")
            names.setdefault(proto.protocol, proto)

    def _translate(self, build: Build) -> None:
        owners: dict[str, MetaRouter] = {}
        failed: set[str] = set()
        for router in build.routers:
            label = f"{router.source} (MetaRouter {router.name})"
            try:
                port = service_port(router)
            except TranslationError as exc:
                build.problems.append(f"{label}: {exc}")
                continue
            name = route_config_name(router.hosts[0], port)
            if name in owners:
                other = owners[name]
                build.problems.append(f"{label}: route configuration {name!r} is already defined by "
                                      f"MetaRouter {other.name!r} in {other.source}; ignoring this one")
                continue
            owners[name] = router
            entry = self._translated.setdefault(name, _Translated())
            if entry.router is not router:
                self._build_one(entry, router, name, port)
            if entry.problems:
                build.problems.extend(f"{label}: {p}" for p in entry.problems)
                failed.add(name)
                continue
            build.resources[name] = entry.config  # type: ignore[assignment]
        for name in failed:
            if name in self._good_resources:
                build.resources[name] = self._good_resources[name]
        self._good_resources = dict(build.resources)
        for name in list(self._translated):
            if name not in owners:
                del self._translated[name]

    def _build_one(self, entry: _Translated, router: MetaRouter, name: str, port: int) -> None:
        """Translate and check the routes that are new since the last build of ``name``; assemble the config."""
        old = entry.router.routes if entry.router is not None else ()
        if (entry.config is not None and not entry.problems and len(old) == len(router.routes)
                and entry.router.hosts[0] == router.hosts[0]):
            changed = [i for i, (a, b) in enumerate(zip(old, router.routes, strict=True)) if a is not b]
            if len(changed) * 4 < len(old):  # a few routes changed: start from the last build
                memo = dict(entry.memo)
                routes = list(entry.routes)
                problems: list[str] = []
                for i in changed:
                    memo.pop(id(old[i]), None)
                    hit = self._one(entry.memo, router.routes[i], name, port, i)
                    memo[id(router.routes[i])] = hit
                    routes[i] = hit[1]
                    problems.extend(hit[2])
                self._finish(entry, router, port, memo, routes, problems)
                return
        memo = {}
        routes = []
        problems = []
        for index, route in enumerate(router.routes):
            hit = self._one(entry.memo, route, name, port, index)
            memo[id(route)] = hit
            routes.append(hit[1])
            problems.extend(hit[2])
        self._finish(entry, router, port, memo, routes, problems)

    def _one(self, memo: dict[int, tuple[MetaRoute, rc.Route, list[str]]], route: MetaRoute, name: str,
             port: int, index: int) -> tuple[MetaRoute, rc.Route, list[str]]:
        """One route's translation and the proxy's verdict on it, from ``memo`` when it is the same object."""
        hit = memo.get(id(route))
        where = f"virtual_hosts[0].routes[{index}]"
        if hit is None or hit[0] is not route:
            proto = cached_translation(route, port)
            self.counters.routes_translated += 1
            return route, proto, (check_route(proto, name, index, where) if self.validate else [])
        if hit[2]:  # problems mention the position: check again where it is now
            return route, hit[1], check_route(hit[1], name, index, where)
        return hit

    def _finish(self, entry: _Translated, router: MetaRouter, port: int,
                memo: dict[int, tuple[MetaRoute, rc.Route, list[str]]], routes: list[rc.Route],
                problems: list[str]) -> None:
        entry.memo = memo
        entry.router = router
        entry.problems = problems
        if problems:
            return
        previous = (entry.config, entry.routes) if entry.config is not None else None
        entry.config = assemble(router.hosts[0], port, routes, previous)
        entry.routes = routes
        self.counters.configs_built += 1
