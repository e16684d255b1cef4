"""The control plane's loading, last-good keeping, conflicts, debounced watching and command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

from metaproxy.controlplane import main
from metaproxy.controlplane.app import ControlPlane
from tests.xds.helpers import meta_router, wait_until, write_docs

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_examples_validate_and_translate(capsys):
    assert main(["--check", "--config-dir", str(ROOT / "conf" / "routes")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"demo_9191", "thrift-sample-server.meta-thrift.svc.cluster.local_9090"}
    split = out["demo_9191"]["routes"][1]["route"]["weighted_clusters"]
    assert split == [{"name": "outbound|9191|v1|demo", "weight": 20}, {"name": "outbound|9191|v2|demo", "weight": 80}]


def test_check_reports_problems_with_their_path_and_fails(tmp_path, capsys):
    doc = meta_router()
    doc["spec"]["routes"][0]["match"] = {"attributes": {"method": {"regex": "("}}}
    write_docs(tmp_path / "bad.yaml", doc)
    assert main(["--check", "-f", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad.yaml'}#0 (MetaRouter demo): spec.routes[0].match.attributes.method.regex: " \
           "invalid regex '('" in err


def test_no_input_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "--config-dir" in capsys.readouterr().err


def test_a_broken_file_keeps_its_last_good_routes(tmp_path):
    write_docs(tmp_path / "demo.yaml", meta_router(split=(20, 80)))
    cp = ControlPlane([str(tmp_path)], watch=False)
    cp.reload()
    good = cp.store.snapshot()["demo_9191"].version
    (tmp_path / "demo.yaml").write_text("spec: [unclosed\n")
    build = cp.reload()
    assert any("not valid YAML" in p for p in build.problems)
    assert any("keeping its last good version" in p for p in build.problems)
    assert cp.store.snapshot()["demo_9191"].version == good
    write_docs(tmp_path / "demo.yaml", meta_router(split=(50, 50)))
    assert cp.reload().problems == []
    assert cp.store.snapshot()["demo_9191"].version != good
    (tmp_path / "demo.yaml").unlink()
    cp.reload()
    assert "demo_9191" not in cp.store.snapshot()


def test_conflicts_and_unknown_codecs_are_reported(tmp_path):
    write_docs(tmp_path / "a.yaml", meta_router(name="first"))
    write_docs(tmp_path / "b.yaml", meta_router(name="second", split=(1, 99)),
               {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "ApplicationProtocol",
                "metadata": {"name": "p"}, "spec": {"protocol": "p", "codec": "aeraki.meta_protocol.codec.nope"}})
    cp = ControlPlane([str(tmp_path)], watch=False)
    build = cp.reload()
    assert any("route configuration 'demo_9191' is already defined by MetaRouter 'first'" in p for p in build.problems)
    assert any("spec.codec: no codec named 'nope'" in p for p in build.problems)
    cfg = cp.store.snapshot()["demo_9191"].config
    assert cfg.virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].weight.value == 20


def test_a_burst_of_writes_is_one_reload(tmp_path):
    write_docs(tmp_path / "demo.yaml", meta_router())
    cp = ControlPlane([str(tmp_path)], listen="127.0.0.1:0", admin=None, poll=0.01, debounce=0.3).start()
    try:
        assert cp.loads == 1
        for weight in (10, 20, 30, 40, 50):
            write_docs(tmp_path / "demo.yaml", meta_router(split=(weight, 100 - weight)))
            time.sleep(0.02)  # an editor or a tool writing several times in a row
        wait_until(lambda: cp.loads >= 2, timeout=5)
        cfg = cp.store.snapshot()["demo_9191"].config
        assert cfg.virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].weight.value == 50
        time.sleep(0.4)  # bounded check that no second reload follows
        assert cp.loads == 2
    finally:
        cp.stop(grace=0)
