"""The loader does only the work a change needs, and its result equals a load from scratch."""

from __future__ import annotations

import os
import time
from pathlib import Path

from metaproxy.controlplane.app import ControlPlane
from metaproxy.controlplane.loader import Loader
from tests.xds.helpers import meta_router, write_docs


def _routes(n: int, last: str = "v1") -> list[dict]:
    routes = [{"name": f"r{i}", "match": {"attributes": {"method": {"exact": f"m{i}"}}},
               "route": [{"destination": {"host": "svc", "subset": "v1"}}]} for i in range(n)]
    routes.append({"name": "last", "route": [{"destination": {"host": "svc", "subset": last}}]})
    return routes


def _router(host: str, n: int = 5, last: str = "v1") -> dict:
    doc = meta_router(host=host, split=None, name=host)
    doc["spec"]["routes"] = _routes(n, last)
    return doc


def _age(*paths: Path) -> None:
    """Make files look written long ago, so the loader trusts their stat (no 'racy' re-read)."""
    old = time.time() - 60
    for p in paths:
        os.utime(p, (old, old))


def _write(path: Path, doc: dict) -> None:
    write_docs(path, doc)
    _age(path)


def _bytes(build) -> dict[str, bytes]:
    return {n: c.SerializeToString(deterministic=True) for n, c in build.resources.items()}


def test_only_the_changed_file_is_read_and_parsed(tmp_path):
    for name in ("a", "b", "c"):
        _write(tmp_path / f"{name}.yaml", _router(name))
    loader = Loader([str(tmp_path)])
    loader.load()
    before = loader.counters.as_dict()
    assert before["reads"] == 3 and before["full_parses"] == 3

    loader.load()  # nothing changed: stat only
    same = loader.counters.as_dict()
    assert same["reads"] == before["reads"] and same["full_parses"] == before["full_parses"]
    assert same["stats"] == before["stats"] + 3

    _write(tmp_path / "b.yaml", _router("b", last="v2"))
    build = loader.load()
    after = loader.counters.as_dict()
    assert after["reads"] == before["reads"] + 1
    assert after["full_parses"] + after["splices"] == before["full_parses"] + 1
    assert after["validations"] == before["validations"] + 1
    assert after["configs_built"] == before["configs_built"] + 1  # a and c are not rebuilt
    assert build.resources["b_9191"].virtual_hosts[0].routes[-1].route.cluster == "outbound|9191|v2|svc"
    assert _bytes(build) == _bytes(Loader([str(tmp_path)]).load())


def test_a_file_named_by_the_watcher_is_read_even_if_its_stat_looks_the_same(tmp_path):
    """A write within one timestamp tick can leave (inode, size, mtime, ctime) as they were: inotify's word wins."""
    path = tmp_path / "a.yaml"
    _write(path, _router("a"))
    loader = Loader([str(tmp_path)])
    loader.load()
    loader.load()
    assert loader.counters.reads == 1  # an old file with the same stat is not read
    loader.load(changed={str(path)})
    assert loader.counters.reads == 2
    assert loader.counters.full_parses == 1  # read, found the same text, not parsed


def test_a_rewrite_with_the_same_text_is_not_parsed(tmp_path):
    path = tmp_path / "a.yaml"
    _write(path, _router("a"))
    loader = Loader([str(tmp_path)])
    loader.load()
    path.write_text(path.read_text())  # new mtime, same text
    loader.load()
    assert loader.counters.reads == 2
    assert loader.counters.full_parses == 1 and loader.counters.splices == 0


def test_one_edited_route_of_many_is_reparsed_validated_and_translated_alone(tmp_path):
    path = tmp_path / "big.yaml"
    _write(path, _router("big", n=300))
    loader = Loader([str(tmp_path)])
    first = loader.load()
    c0 = loader.counters.as_dict()
    _write(path, _router("big", n=300, last="v2"))
    build = loader.load()
    c1 = loader.counters.as_dict()
    assert c1["splices"] == c0["splices"] + 1 and c1["full_parses"] == c0["full_parses"]
    assert c1["routes_validated"] == c0["routes_validated"] + 1
    assert c1["routes_translated"] == c0["routes_translated"] + 1
    assert build.problems == []
    fresh = Loader([str(tmp_path)]).load()
    assert _bytes(build) == _bytes(fresh)
    assert _bytes(build) != _bytes(first)


def test_a_bad_edit_is_reported_with_file_and_key_path_and_keeps_the_last_good(tmp_path):
    path = tmp_path / "big.yaml"
    _write(path, _router("big", n=50))
    cp = ControlPlane([str(tmp_path)], watch=False)
    cp.reload()
    good = cp.store.snapshot()["big_9191"].version
    bad = _router("big", n=50)
    bad["spec"]["routes"][7]["match"]["attributes"]["method"] = {"regex": "("}
    _write(path, bad)
    build = cp.reload()
    assert cp.loader.counters.splices == 1
    assert any(p.startswith(f"{path}#0 (MetaRouter big): spec.routes[7].match.attributes.method.regex: "
                            "invalid regex '('") for p in build.problems), build.problems
    assert any("keeping its last good version" in p for p in build.problems)
    assert cp.store.snapshot()["big_9191"].version == good
    # still reported on the next load while the file is unchanged
    assert any("invalid regex" in p for p in cp.reload().problems)
    _write(path, _router("big", n=50, last="v2"))
    assert cp.reload().problems == []
    assert cp.store.snapshot()["big_9191"].version != good


def test_a_route_the_proxy_would_reject_is_reported_after_a_splice(tmp_path):
    path = tmp_path / "big.yaml"
    _write(path, _router("big", n=20))
    loader = Loader([str(tmp_path)])
    loader.load()
    bad = _router("big", n=20)
    bad["spec"]["routes"][3]["name"] = "r4"  # a duplicate name
    _write(path, bad)
    build = loader.load()
    assert any("spec.routes[4].name: duplicate route name 'r4'" in p for p in build.problems), build.problems


def test_deleted_and_renamed_files(tmp_path):
    _write(tmp_path / "a.yaml", _router("a"))
    _write(tmp_path / "b.yaml", _router("b"))
    loader = Loader([str(tmp_path)])
    assert set(loader.load().resources) == {"a_9191", "b_9191"}
    (tmp_path / "b.yaml").unlink()
    build = loader.load()
    assert set(build.resources) == {"a_9191"} and build.problems == []
    (tmp_path / "a.yaml").rename(tmp_path / "renamed.yaml")
    build = loader.load()
    assert set(build.resources) == {"a_9191"} and build.problems == []
    assert build.files == [str(tmp_path / "renamed.yaml")]
    (tmp_path / "renamed.yaml").rename(tmp_path / ".hidden.yaml")
    assert loader.load().resources == {}
    # the same resource moving from one file to another in one step is not a conflict
    _write(tmp_path / "x.yaml", _router("x"))
    loader.load()
    (tmp_path / "x.yaml").rename(tmp_path / "y.yaml")
    build = loader.load()
    assert set(build.resources) == {"x_9191"} and build.problems == []


def test_unchanged_resources_keep_their_store_entry(tmp_path):
    _write(tmp_path / "a.yaml", _router("a"))
    _write(tmp_path / "b.yaml", _router("b"))
    cp = ControlPlane([str(tmp_path)], watch=False)
    cp.reload()
    a_before = cp.store.snapshot()["a_9191"]
    _write(tmp_path / "b.yaml", _router("b", last="v2"))
    cp.reload()
    assert cp.store.snapshot()["a_9191"] is a_before  # not re-serialized, same version and packed bytes
    b = cp.store.snapshot()["b_9191"]
    assert b.packed.value == b.config.SerializeToString(deterministic=True)
