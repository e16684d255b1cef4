"""Files -> validated documents -> route configurations, keeping the last good of each.

A file that fails to parse or validate keeps its previous documents in
force (its problems are logged and shown on the admin view), so one bad edit
never withdraws routes that proxies are using. Each translated configuration
is also checked by the proxy's own route parser, so what the control plane
serves is what a metaproxy will accept (unless ``validate=False``, a testing
aid that lets a bad update through to exercise NACK handling).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import yaml
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from metaproxy.controlplane.model import ApplicationProtocol, Documents, MetaRouter, read_documents
from metaproxy.controlplane.translate import TranslationError, translate
from metaproxy.controlplane.yamlfast import load_all
from metaproxy.settings import ConfigError
from metaproxy.xds.convert import UnsupportedRoute
from metaproxy.xds.tables import RouteTableBuilder, paused_gc

log = logging.getLogger("metaproxy.controlplane")

_AERAKI_CODEC_PREFIX = "aeraki.meta_protocol.codec."


@dataclass
class Build:
    """The result of one load: what to serve, and every problem seen."""

    resources: dict[str, RouteConfiguration] = field(default_factory=dict)
    routers: list[MetaRouter] = field(default_factory=list)
    protocols: list[ApplicationProtocol] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def codec_name(codec: str) -> str:
    """An ApplicationProtocol codec as metaproxy names it (Aeraki's ``aeraki.meta_protocol.codec.X`` -> X)."""
    return codec[len(_AERAKI_CODEC_PREFIX):] if codec.startswith(_AERAKI_CODEC_PREFIX) else codec


def read_file(path: Path) -> Documents:
    """One YAML file (several documents allowed) -> its validated documents."""
    try:
        docs = load_all(path.read_text())
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
    """Reads the route files; remembers the last good documents per file and resource per name."""

    def __init__(self, paths: list[str], validate: bool = True) -> None:
        self.paths = paths
        self.validate = validate
        self._good_docs: dict[str, Documents] = {}
        self._good_resources: dict[str, RouteConfiguration] = {}
        self._builders: dict[str, RouteTableBuilder] = {}
        self._codecs = {ep.name for ep in entry_points(group="metaproxy.codecs")}

    def load(self) -> Build:
        """Read every file; problems are in the result, never raised."""
        with paused_gc():
            return self._load()

    def _load(self) -> Build:
        from metaproxy.controlplane.watcher import route_files

        build = Build()
        files = route_files(self.paths)
        build.files = [str(p) for p in files]
        seen_files = set()
        for path in files:
            key = str(path)
            seen_files.add(key)
            docs = read_file(path)
            if docs.problems:
                build.problems.extend(docs.problems)
                if key in self._good_docs:
                    build.problems.append(f"{key}: keeping its last good version")
                docs = self._good_docs.get(key, Documents())
            else:
                self._good_docs[key] = docs
            build.routers.extend(docs.routers)
            build.protocols.extend(docs.protocols)
        for key in list(self._good_docs):
            if key not in seen_files:
                del self._good_docs[key]
        self._check_protocols(build)
        self._translate(build)
        return build

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
                config = translate(router)
            except TranslationError as exc:
                build.problems.append(f"{label}: {exc}")
                continue
            if config.name in owners:
                other = owners[config.name]
                build.problems.append(f"{label}: route configuration {config.name!r} is already defined by "
                                      f"MetaRouter {other.name!r} in {other.source}; ignoring this one")
                continue
            owners[config.name] = router
            builder = self._builders.setdefault(config.name, RouteTableBuilder())
            problems = check_route_config(config, builder) if self.validate else []
            if problems:
                build.problems.extend(f"{label}: {p}" for p in problems)
                failed.add(config.name)
                continue
            build.resources[config.name] = config
        for name in failed:
            if name in self._good_resources:
                build.resources[name] = self._good_resources[name]
        self._good_resources = dict(build.resources)
        for name in list(self._builders):
            if name not in build.resources:
                del self._builders[name]
