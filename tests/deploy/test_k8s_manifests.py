"""conf/k8s/: every manifest parses, and the sidecar, ports, probes and mounts agree with the image and configs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from metaproxy.config import parse_config
from metaproxy.controlplane.loader import Loader

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "conf" / "k8s"
PORT_NAME = re.compile(r"^tcp-metaprotocol-([a-z0-9]+)-[a-z0-9-]+$")


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file"] = path.name
                docs.append(doc)
    return docs


def _find(kind: str, name: str) -> dict[str, Any]:
    for doc in _docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in conf/k8s")


def _containerfile() -> dict[str, Any]:
    """ENTRYPOINT (a JSON list), USER uid and EXPOSEd ports of the Containerfile."""
    text = (ROOT / "Containerfile").read_text()
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    expose = [int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()]
    return {"entrypoint": entry, "uid": int(user.group(1)), "gid": int(user.group(2)), "expose": expose}


def _image_name() -> str:
    text = (ROOT / "conf" / "image" / "build.sh").read_text()
    name = re.search(r"name=\$\{IMAGE_NAME:-(\S+?)\}", text).group(1)
    tag = re.search(r"tag=\$\{IMAGE_TAG:-(\S+?)\}", text).group(1)
    return f"localhost/{name}:{tag}"


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def _sidecar_config() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(parsed ProxyConfig, sidecar container, demo Deployment) with the config read from its ConfigMap."""
    deployment = _find("Deployment", "demo")
    sidecar = _container(deployment, "metaproxy")
    config_path = _containerfile()["entrypoint"][-1]
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == config_path)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = _find("ConfigMap", volume["configMap"]["name"])
    assert cm["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    text = cm["data"][mount["subPath"]]
    return parse_config(yaml.safe_load(text), "conf/k8s/demo.yaml:demo-metaproxy"), sidecar, deployment


def test_every_manifest_parses_and_names_its_kind():
    docs = _docs()
    assert {d["__file"] for d in docs} == {"namespace.yaml", "demo.yaml", "control-plane.yaml"}
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc["__file"]
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] in namespaces, (doc["kind"], doc["metadata"]["name"])


def test_the_sidecar_runs_the_image_as_built_with_its_config_mounted_where_the_entrypoint_reads_it():
    image = _containerfile()
    config, sidecar, deployment = _sidecar_config()
    assert image["entrypoint"][:3] == ["metaproxy", "run", "-c"]
    assert sidecar["image"] == _image_name()
    assert "command" not in sidecar and not sidecar.get("args"), "the sidecar must use the image's entrypoint"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == image["uid"] and pod["securityContext"]["runAsNonRoot"]
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    # relative filter paths resolve against the config's folder, where the image puts filters/
    for lc in config.listeners:
        for fc in lc.filters:
            for key in ("script", "module"):
                if key in fc.options:
                    assert (ROOT / fc.options[key]).is_file(), f"{fc.options[key]} is not shipped in the image"


def test_sidecar_ports_are_named_as_aeraki_expects_and_match_the_listeners():
    config, sidecar, deployment = _sidecar_config()
    by_port = {lc.address[1]: lc for lc in config.listeners}
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    protocols = set()
    for name, number in ports.items():
        if name.startswith("tcp-"):
            m = PORT_NAME.match(name)
            assert m, f"{name}: not tcp-metaprotocol-<protocol>-<name>"
            assert number in by_port, f"{name}: no listener on {number}"
            assert by_port[number].protocol.codec == m.group(1), f"{name}: listener speaks {by_port[number].protocol}"
            protocols.add(m.group(1))
    assert {"thrift", "dubbo"} <= protocols
    assert ports["http-admin"] == config.admin_address[1]
    service = _find("Service", "demo")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for sp in service["spec"]["ports"]:
        assert PORT_NAME.match(sp["name"]) and sp["targetPort"] in ports
        # traffic that reaches the Service port is served by a listener on all interfaces
        assert by_port[ports[sp["targetPort"]]].address[0] == "0.0.0.0"


def test_probes_and_prestop_drain_use_the_admin_server_and_fit_the_grace_period():
    config, sidecar, deployment = _sidecar_config()
    admin_port = config.admin_address[1]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": admin_port}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": admin_port}
    pre_stop = " ".join(sidecar["lifecycle"]["preStop"]["exec"]["command"])
    assert f"127.0.0.1:{admin_port}/drain" in pre_stop and "POST" in pre_stop
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.drain_timeout
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_control_plane_serves_what_the_sidecar_subscribes_to(tmp_path):
    config, _, _ = _sidecar_config()
    cp = _find("Deployment", "metaproxy-control-plane")
    container = _container(cp, "control-plane")
    assert container["image"] == _image_name()
    cmd = container["command"]
    assert cmd[:2] == ["metaproxy", "control-plane"]
    config_dir = cmd[cmd.index("--config-dir") + 1]
    listen_port = int(cmd[cmd.index("--listen") + 1].rpartition(":")[2])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == config_dir)
    volume = next(v for v in cp["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    routes_cm = _find("ConfigMap", volume["configMap"]["name"])
    service = _find("Service", "metaproxy-control-plane")
    svc_port = service["spec"]["ports"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[svc_port["targetPort"]] == listen_port
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{svc_port['port']}"

    # the ConfigMap carries conf/routes as they are in the repository
    repo_routes = {p.name: list(yaml.safe_load_all(p.read_text())) for p in (ROOT / "conf" / "routes").glob("*.yaml")}
    assert {k: list(yaml.safe_load_all(v)) for k, v in routes_cm["data"].items()} == repo_routes

    for name, text in routes_cm["data"].items():
        (tmp_path / name).write_text(text)
    build = Loader([str(tmp_path)]).load()
    assert not build.problems, build.problems
    cluster_names = {c.name for c in config.clusters}
    rds_listeners = [lc for lc in config.listeners if lc.rds is not None]
    assert rds_listeners
    for lc in rds_listeners:
        assert lc.rds.server == host
        served = build.resources.get(lc.rds.route_config_name)
        assert served is not None, f"{lc.name}: the control plane serves no {lc.rds.route_config_name}"
        for vhost in served.virtual_hosts:
            for route in vhost.routes:
                wanted = {route.route.cluster} | {w.name for w in route.route.weighted_clusters.clusters} \
                    | {m.cluster for m in route.route.request_mirror_policies}
                missing = {c for c in wanted if c} - cluster_names
                assert not missing, f"{lc.name}: route {route.name} names clusters the sidecar lacks: {missing}"


@pytest.mark.parametrize("path", ["conf/image/metaproxy.yaml"])
def test_the_config_baked_into_the_image_is_valid_and_its_ports_are_exposed(path):
    config = parse_config(yaml.safe_load((ROOT / path).read_text()), path)
    exposed = _containerfile()["expose"]
    assert config.admin_address[1] in exposed
    for lc in config.listeners:
        assert lc.address[0] == "0.0.0.0" and lc.address[1] in exposed


def test_prestop_command_is_valid_python():
    _, sidecar, _ = _sidecar_config()
    command = sidecar["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    compile(command[2], "preStop", "exec")
    assert shlex.join(command)
