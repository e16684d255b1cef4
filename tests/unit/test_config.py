"""Config loading: typed values, and every problem reported with its file and key path."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from metaproxy.config import ConfigError, load_config, parse_config
from metaproxy.settings import parse_address, parse_duration

BROKEN = """\
listeners:
  - name: in
    address: 127.0.0.1:notaport
    protocol: {codec: tinyrpc}
    idle_timeout: forever
    route_config:
      name: r
      routes:
        - name: a
          match: {metdata: []}
          route: {cluster: c}
        - name: b
          match: {metadata: [{name: method, regex: "("}]}
          route: {weighted_clusters: [{name: c, weight: -1}]}
        - name: a
          route: {cluster: c, retry_policy: {retry_on: [sometimes]}}
  - name: in
    address: 127.0.0.1:1
    protocol: {codec: no-such-codec}
    rds: {route_config_name: x, server: 127.0.0.1:15010}
clusters:
  - {name: c, endpoints: [127.0.0.1:1], lb_policy: fastest}
workers: many
"""


def test_validate_prints_the_key_path_of_every_problem(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = subprocess.run([sys.executable, "-m", "metaproxy.cli", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    out = result.stderr
    expected = [
        "listeners[0].address: port in '127.0.0.1:notaport' is not a number",
        "listeners[0].idle_timeout: expected a duration",
        "listeners[0].route_config.routes[0].match: unknown key 'metdata'",
        "listeners[0].route_config.routes[1].match.metadata[0].regex: invalid regex '('",
        "listeners[0].route_config.routes[1].route.weighted_clusters[0].weight: weight must be >= 0",
        "listeners[0].route_config.routes[2].name: duplicate route name 'a'",
        "listeners[0].route_config.routes[2].route.retry_policy.retry_on: 'sometimes' is not one of",
        "listeners[1].protocol.codec: no metaproxy.codecs entry point named 'no-such-codec'",
        "listeners[1].name: duplicate listener name 'in'",
        "clusters[0].lb_policy: 'fastest' is not one of",
        "workers: expected a number >= 1 or 'auto'",
    ]
    for line in expected:
        assert f"{path}: {line}" in out, f"missing {line!r} in:\n{out}"


def test_validate_accepts_the_default_config():
    result = subprocess.run([sys.executable, "-m", "metaproxy.cli", "validate", "-c", "conf/metaproxy.yaml"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_validate_reports_a_filter_option_problem(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(textwrap.dedent("""\
        listeners:
          - name: in
            address: 127.0.0.1:0
            protocol: {codec: tinyrpc}
            filters: [{name: router, colour: blue}]
            route_config: {name: r, routes: [{route: {cluster: c}}]}
        clusters: [{name: c, endpoints: [127.0.0.1:1]}]
        """))
    result = subprocess.run([sys.executable, "-m", "metaproxy.cli", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "listeners[0].filters[0].colour: unknown option of the router filter" in result.stderr


def test_typed_values():
    cfg = parse_config({
        "listeners": [{"name": "in", "address": "127.0.0.1:9090", "protocol": {"codec": "tinyrpc"},
                       "idle_timeout": "250ms",
                       "route_config": {"name": "r", "routes": [{"route": {"cluster": "c"}}]}}],
        "clusters": [{"name": "c", "endpoints": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 3}],
                      "connect_timeout": "2s"}],
    })
    lc = cfg.listeners[0]
    assert lc.address == ("127.0.0.1", 9090)
    assert lc.idle_timeout == pytest.approx(0.25)
    assert lc.filters[-1].name == "router"
    assert cfg.clusters[0].connect_timeout == 2.0
    assert [e.weight for e in cfg.clusters[0].endpoints] == [1, 3]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


@pytest.mark.parametrize("text,seconds", [("250ms", 0.25), ("2s", 2.0), ("1.5", 1.5), ("1m", 60.0), (3, 3.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "-1s", True, "2 parsecs"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_addresses():
    assert parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_address("127.0.0.1:70000")
