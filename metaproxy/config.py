"""The proxy's YAML configuration, read once into typed objects.

Every problem names the file and the key path
(``conf/x.yaml: listeners[0].route_config.routes[2].match: unknown key 'metdata'``);
all problems are collected so ``metaproxy validate`` can print them together.
The hot path never looks at raw config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from metaproxy.codec import DEFAULT_MAX_MESSAGE_BYTES, Codec, load_codec_class
from metaproxy.router import RouteTable, read_route_config
from metaproxy.settings import ConfigError, Section, parse_address

__all__ = ["ConfigError", "ProxyConfig", "load_config", "parse_config"]

LB_POLICIES = ("round_robin", "random", "least_request", "ring_hash", "maglev")


@dataclass
class ProtocolConfig:
    name: str
    codec: str
    options: dict[str, Any]
    codec_class: type[Codec]


@dataclass
class FilterConfig:
    name: str
    options: dict[str, Any]
    path: str


@dataclass
class RdsConfig:
    route_config_name: str
    server: str
    initial_fetch_timeout: float = 5.0


@dataclass
class TlsConfig:
    cert_file: str
    key_file: str
    ca_file: str | None = None
    require_client_certificate: bool = False
    sni: str | None = None


@dataclass
class ListenerConfig:
    name: str
    address: tuple[str, int]
    protocol: ProtocolConfig
    filters: list[FilterConfig]
    route_config: RouteTable | None = None
    rds: RdsConfig | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    idle_timeout: float = 300.0
    request_read_timeout: float = 10.0
    max_connections: int = 10000
    max_requests_per_connection: int = 1024
    max_buffered_bytes: int = 8 * 1024 * 1024
    backlog: int = 1024
    tls: TlsConfig | None = None


@dataclass
class EndpointConfig:
    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class CircuitBreakers:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass
class HealthCheckConfig:
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    kind: str = "tcp"  # tcp | heartbeat


@dataclass
class OutlierDetectionConfig:
    consecutive_errors: int = 5
    consecutive_gateway_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    interval: float = 10.0


@dataclass
class ClusterConfig:
    name: str
    endpoints: list[EndpointConfig]
    lb_policy: str = "round_robin"
    connect_timeout: float = 1.0
    connections_per_endpoint: int = 2
    idle_timeout: float = 60.0
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    retry_budget_percent: float = 20.0
    tls: TlsConfig | None = None


@dataclass
class AccessLogConfig:
    path: str = "stdout"
    format: str = "json"
    filter: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProxyConfig:
    listeners: list[ListenerConfig]
    clusters: list[ClusterConfig]
    admin_address: tuple[str, int] | None = None
    workers: int | str = 1
    drain_timeout: float = 15.0
    max_buffered_bytes_total: int = 256 * 1024 * 1024
    access_log: list[AccessLogConfig] = field(default_factory=list)
    tracing: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    base_dir: str = "."
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


# -- readers -------------------------------------------------------------------

def _read_tls(sec: Section | None, server_side: bool) -> TlsConfig | None:
    if sec is None:
        return None
    if server_side:  # a listener must present a certificate; an upstream client may not
        cert, key = sec.take("cert_file", str), sec.take("key_file", str)
    else:
        cert, key = sec.take("cert_file", str, None), sec.take("key_file", str, None)
    tls = TlsConfig(
        cert_file=cert or "",
        key_file=key or "",
        ca_file=sec.take("ca_file", str, None),
        require_client_certificate=sec.take("require_client_certificate", bool, False),
        sni=sec.take("sni", str, None),
    )
    sec.finish()
    return tls


def _read_protocol(sec: Section | None) -> ProtocolConfig | None:
    if sec is None:
        return None
    codec = sec.take("codec", str)
    name = sec.take("name", str, codec or "")
    options = sec.take("options", dict, {})
    sec.finish()
    if codec is None:
        return None
    try:
        cls = load_codec_class(codec)
    except LookupError as exc:
        sec.problem(str(exc), "codec")
        return None
    for problem in cls.check_options(options or {}):
        sec.problem(problem, "options")
    return ProtocolConfig(name=name, codec=codec, options=options or {}, codec_class=cls)


def _positive(value: Any) -> Any:
    if value is not None and value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _read_listener(sec: Section) -> ListenerConfig | None:
    name = sec.take("name", str)
    address = sec.take("address", "address")
    protocol = _read_protocol(sec.section("protocol", required=True))
    filters: list[FilterConfig] = []
    for fsec in sec.sections("filters"):
        fname = fsec.take("name", str)
        options = {k: v for k, v in fsec.data.items() if k != "name"}
        for k in options:
            fsec.raw(k)
        if fname is not None:
            filters.append(FilterConfig(fname, options, fsec.path))
    if not filters or filters[-1].name != "router":
        if any(f.name == "router" for f in filters):
            sec.problem("the router filter must be the last filter", "filters")
        filters.append(FilterConfig("router", {}, sec.key_path("filters") + "[router]"))
    route_config = None
    rsec = sec.section("route_config")
    if rsec is not None:
        route_config = read_route_config(rsec, version="static")
    rds = None
    dsec = sec.section("rds")
    if dsec is not None:
        rname = dsec.take("route_config_name", str)
        server = dsec.take("server", str)
        if server is not None:
            try:
                parse_address(server)
            except ValueError as exc:
                dsec.problem(str(exc), "server")
        timeout = dsec.take("initial_fetch_timeout", "duration", 5.0)
        dsec.finish()
        rds = RdsConfig(rname or "", server or "", timeout)
    if route_config is None and rds is None:
        sec.problem("one of route_config or rds is required")
    if route_config is not None and rds is not None:
        sec.problem("give either route_config or rds, not both")
    cfg = ListenerConfig(
        name=name or "",
        address=address or ("127.0.0.1", 0),
        protocol=protocol,  # type: ignore[arg-type]
        filters=filters,
        route_config=route_config,
        rds=rds,
        max_message_bytes=sec.take("max_message_bytes", int, DEFAULT_MAX_MESSAGE_BYTES, _positive),
        idle_timeout=sec.take("idle_timeout", "duration", 300.0, _positive),
        request_read_timeout=sec.take("request_read_timeout", "duration", 10.0, _positive),
        max_connections=sec.take("max_connections", int, 10000, _positive),
        max_requests_per_connection=sec.take("max_requests_per_connection", int, 1024, _positive),
        max_buffered_bytes=sec.take("max_buffered_bytes", int, 8 * 1024 * 1024, _positive),
        backlog=sec.take("backlog", int, 1024, _positive),
        tls=_read_tls(sec.section("tls"), server_side=True),
    )
    sec.finish()
    if protocol is None or name is None:
        return None
    return cfg


def _read_endpoint(value: Any, sec: Section, index: int) -> EndpointConfig | None:
    where = f"endpoints[{index}]"
    weight = 1
    if isinstance(value, dict):
        esec = Section(value, sec.key_path(where), sec.problems, sec.prefix)
        address = esec.take("address", "address")
        weight = esec.take("weight", int, 1, _positive) or 1
        esec.finish()
    else:
        try:
            address = parse_address(value)
        except ValueError as exc:
            sec.problem(str(exc), where)
            return None
    if address is None:
        return None
    return EndpointConfig(address[0], address[1], weight)


def _read_cluster(sec: Section) -> ClusterConfig | None:
    name = sec.take("name", str)
    endpoints = []
    for index, value in enumerate(sec.take("endpoints", list, [])):
        ep = _read_endpoint(value, sec, index)
        if ep is not None:
            endpoints.append(ep)
    lb = sec.one_of(sec.take("lb_policy", str, "round_robin"), LB_POLICIES, "lb_policy")
    cb = CircuitBreakers()
    cbs = sec.section("circuit_breakers")
    if cbs is not None:
        cb = CircuitBreakers(
            max_connections=cbs.take("max_connections", int, 1024, _positive),
            max_pending_requests=cbs.take("max_pending_requests", int, 1024, _positive),
            max_requests=cbs.take("max_requests", int, 1024, _positive),
            max_retries=cbs.take("max_retries", int, 3),
        )
        cbs.finish()
    hc = None
    hcs = sec.section("health_check")
    if hcs is not None:
        hc = HealthCheckConfig(
            interval=hcs.take("interval", "duration", 5.0),
            timeout=hcs.take("timeout", "duration", 1.0),
            unhealthy_threshold=hcs.take("unhealthy_threshold", int, 2, _positive),
            healthy_threshold=hcs.take("healthy_threshold", int, 1, _positive),
            kind=hcs.one_of(hcs.take("kind", str, "tcp"), ("tcp", "heartbeat"), "kind") or "tcp",
        )
        hcs.finish()
    od = None
    ods = sec.section("outlier_detection")
    if ods is not None:
        od = OutlierDetectionConfig(
            consecutive_errors=ods.take("consecutive_errors", int, 5, _positive),
            consecutive_gateway_failures=ods.take("consecutive_gateway_failures", int, 5, _positive),
            base_ejection_time=ods.take("base_ejection_time", "duration", 30.0),
            max_ejection_percent=ods.take("max_ejection_percent", int, 10),
            interval=ods.take("interval", "duration", 10.0),
        )
        ods.finish()
    cfg = ClusterConfig(
        name=name or "",
        endpoints=endpoints,
        lb_policy=lb or "round_robin",
        connect_timeout=sec.take("connect_timeout", "duration", 1.0),
        connections_per_endpoint=sec.take("connections_per_endpoint", int, 2, _positive),
        idle_timeout=sec.take("idle_timeout", "duration", 60.0, _positive),
        circuit_breakers=cb,
        health_check=hc,
        outlier_detection=od,
        retry_budget_percent=sec.take("retry_budget_percent", (int, float), 20.0),
        tls=_read_tls(sec.section("tls"), server_side=False),
    )
    sec.finish()
    return cfg if name is not None else None


def _read_access_logs(top: Section) -> list[AccessLogConfig]:
    value = top.data.get("access_log")
    if value is None:
        top.raw("access_log")
        return []
    if isinstance(value, dict):
        top.data = {**top.data, "access_log": [value]}
    out = []
    for asec in top.sections("access_log"):
        out.append(AccessLogConfig(
            path=asec.take("path", str, "stdout"),
            format=asec.take("format", str, "json"),
            filter=asec.take("filter", dict, {}),
        ))
        asec.finish()
    return out


def read_config(data: Any, source: str = "<config>") -> tuple[ProxyConfig, list[str]]:
    """Read a config document; return the config and every problem found."""
    problems: list[str] = []
    top = Section(data, "", problems, prefix=f"{source}: ")
    listeners = [lc for s in top.sections("listeners", required=True) if (lc := _read_listener(s))]
    clusters = [cc for s in top.sections("clusters") if (cc := _read_cluster(s))]
    admin = None
    asec = top.section("admin")
    if asec is not None:
        admin = asec.take("address", "address", ("127.0.0.1", 15000))
        asec.finish()
    workers = top.raw("workers", 1)
    if not (workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1)):
        top.problem("expected a number >= 1 or 'auto'", "workers")
        workers = 1
    cfg = ProxyConfig(
        listeners=listeners,
        clusters=clusters,
        admin_address=admin,
        workers=workers,
        drain_timeout=top.take("drain_timeout", "duration", 15.0),
        max_buffered_bytes_total=top.take("max_buffered_bytes_total", int, 256 * 1024 * 1024, _positive),
        access_log=_read_access_logs(top),
        tracing=top.take("tracing", dict, {}),
        source=source,
        base_dir=os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else os.getcwd(),
        raw=data if isinstance(data, dict) else {},
    )
    top.finish()
    _cross_check(cfg, top)
    return cfg, problems


def _cross_check(cfg: ProxyConfig, top: Section) -> None:
    """Problems that span sections: duplicate names.

    A route naming an unknown cluster is not a load error: routes may arrive
    from a control plane before clusters do, so it is a runtime
    ``cluster_not_found`` reply and a warning at start (see server.py).
    """
    for key in ("listeners", "clusters"):
        seen: set[str] = set()
        items = top.data.get(key)
        for index, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str):
                if name in seen:
                    top.problem(f"duplicate {key[:-1]} name {name!r}", f"{key}[{index}].name")
                seen.add(name)


def parse_config(data: Any, source: str = "<config>") -> ProxyConfig:
    cfg, problems = read_config(data, source)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str) -> ProxyConfig:
    """Read and validate a YAML file; raise ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data, path)
