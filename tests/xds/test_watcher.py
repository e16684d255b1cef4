"""The route-file watchers: inotify sees create/modify/rename/delete at once; polling still works as a fallback."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import pytest

from metaproxy.controlplane import inotify, watcher
from metaproxy.controlplane.app import ControlPlane
from metaproxy.controlplane.watcher import InotifyWatcher, PollWatcher, make_watcher
from tests.xds.helpers import meta_router, wait_until, write_docs

pytestmark = pytest.mark.skipif(not inotify.available(), reason="inotify is Linux-only")  # always true here


class Calls:
    """Records each on_change call; ``next()`` waits (bounded) for the next one."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def __call__(self, changed: set[str]) -> None:
        self.q.put((time.monotonic(), set(changed)))

    def next(self, timeout: float = 5.0) -> tuple[float, set[str]]:
        return self.q.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def watched(tmp_path):
    made = []

    def start(paths=None, **kwargs):
        calls = Calls()
        w = InotifyWatcher([str(p) for p in (paths or [tmp_path])], calls, **kwargs)
        w.start()
        made.append(w)
        return w, calls

    yield start
    for w in made:
        w.stop()


def test_inotify_sees_create_modify_rename_and_delete(tmp_path, watched):
    w, calls = watched(debounce=0.01, removal_grace=0.05)
    a = tmp_path / "a.yaml"
    began = time.monotonic()
    a.write_text("x: 1\n")
    at, changed = calls.next()
    assert changed == {str(a)}
    assert at - began < 1.0
    with open(a, "a") as f:
        f.write("y: 2\n")
    assert calls.next()[1] == {str(a)}
    staged = tmp_path / ".a.yaml.tmp"  # hidden: never a route file itself
    staged.write_text("x: 3\n")
    staged.replace(a)
    assert calls.next()[1] == {str(a)}
    a.rename(tmp_path / "b.yaml")
    assert calls.next()[1] == {str(a), str(tmp_path / "b.yaml")}
    (tmp_path / "b.yaml").unlink()
    assert calls.next()[1] == {str(tmp_path / "b.yaml")}
    (tmp_path / "notes.txt").write_text("not a route file")
    assert calls.none_within(0.2)
    assert w.changes == 5


def test_an_editors_save_is_one_change_and_never_a_removal(tmp_path, watched):
    a = tmp_path / "a.yaml"
    a.write_text("v: 1\n")
    w, calls = watched(debounce=0.01, removal_grace=0.5)
    # rename the old file away, pause (a busy machine), write the new one, remove the backup
    a.rename(tmp_path / "a.yaml~")
    time.sleep(0.05)  # part of the scenario: longer than the debounce, shorter than the removal grace
    a.write_text("v: 2\n")
    (tmp_path / "a.yaml~").unlink()
    _, changed = calls.next()
    assert changed == {str(a)}
    assert a.exists()
    assert calls.none_within(0.3)


def test_a_file_being_written_is_waited_for_until_closed(tmp_path, watched):
    w, calls = watched(debounce=0.01)
    a = tmp_path / "a.yaml"
    with open(a, "w") as f:
        f.write("x: 1\n")
        f.flush()
        time.sleep(0.1)  # part of the scenario: a slow writer, much longer than the debounce
        assert calls.none_within(0.01)
        f.write("y: 2\n")
    _, changed = calls.next()
    assert changed == {str(a)}
    assert calls.none_within(0.2)


def test_a_burst_is_one_change(tmp_path, watched):
    w, calls = watched(debounce=0.2)
    for i in range(5):
        write_docs(tmp_path / f"f{i}.yaml", {"i": i})
    _, changed = calls.next()
    assert changed == {str(tmp_path / f"f{i}.yaml") for i in range(5)}
    assert calls.none_within(0.3)


def test_new_subfolders_are_watched_and_hidden_ones_are_not(tmp_path, watched):
    w, calls = watched(debounce=0.01)
    sub = tmp_path / "team" / "svc"
    sub.mkdir(parents=True)
    calls.next()  # the folder itself arriving is a change (files may come with it)
    (sub / "r.yaml").write_text("x: 1\n")
    assert str(sub / "r.yaml") in calls.next()[1]
    hidden = tmp_path / ".git"
    hidden.mkdir()
    calls.next()  # a hidden folder appearing is looked at once (it could be a ConfigMap's data folder)
    (hidden / "config.yaml").write_text("x: 1\n")
    assert calls.none_within(0.2)


def test_a_single_file_is_watched_through_its_folder(tmp_path, watched):
    a, other = tmp_path / "a.yaml", tmp_path / "other.yaml"
    a.write_text("x: 1\n")
    w, calls = watched(paths=[a], debounce=0.01)
    other.write_text("x: 1\n")
    assert calls.none_within(0.2)
    tmp = tmp_path / "a.yaml.new"
    tmp.write_text("x: 2\n")
    tmp.replace(a)
    assert calls.next()[1] == {str(a)}


def test_a_kubernetes_configmap_swap_is_seen(tmp_path, watched):
    """A ConfigMap volume: visible files are symlinks through ``..data``, which is swapped atomically."""
    v1 = tmp_path / "..2024_01"
    v1.mkdir()
    (v1 / "routes.yaml").write_text("x: 1\n")
    os.symlink("..2024_01", tmp_path / "..data")
    os.symlink("..data/routes.yaml", tmp_path / "routes.yaml")
    w, calls = watched(debounce=0.01)
    v2 = tmp_path / "..2024_02"
    v2.mkdir()
    (v2 / "routes.yaml").write_text("x: 2\n")
    os.symlink("..2024_02", tmp_path / "..data_tmp")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    deadline = time.monotonic() + 5
    while True:  # the swap may arrive as one burst or two
        _, changed = calls.next(max(0.01, deadline - time.monotonic()))
        if str(tmp_path / "routes.yaml") in changed:
            break


def test_poll_watcher_still_works(tmp_path):
    calls = Calls()
    a = tmp_path / "a.yaml"
    a.write_text("x: 1\n")
    w = PollWatcher([str(tmp_path)], calls, poll=0.01, debounce=0.02)
    w.start()
    try:
        write_docs(a, {"x": 2})
        assert calls.next()[1] == {str(a)}
        (tmp_path / "b.yaml").write_text("x: 1\n")
        assert calls.next()[1] == {str(tmp_path / "b.yaml")}
        a.unlink()
        assert calls.next()[1] == {str(a)}
    finally:
        w.stop()


def test_auto_falls_back_to_polling_without_inotify(tmp_path, monkeypatch):
    def no_inotify(*args, **kwargs):
        raise OSError(38, "inotify is not available on this system")

    monkeypatch.setattr(watcher.inotify, "Inotify", no_inotify)
    w = make_watcher([str(tmp_path)], lambda changed: None, "auto")
    assert isinstance(w, PollWatcher)
    with pytest.raises(OSError):
        make_watcher([str(tmp_path)], lambda changed: None, "inotify")
    assert isinstance(make_watcher([str(tmp_path)], lambda changed: None, "poll"), PollWatcher)
    assert isinstance(make_watcher([str(tmp_path)], lambda changed: None, "auto"), PollWatcher)
    with pytest.raises(ValueError):
        make_watcher([str(tmp_path)], lambda changed: None, "fanotify")


@pytest.mark.parametrize("kind", ["inotify", "poll"])
def test_control_plane_follows_a_rename_with_either_watcher(tmp_path: Path, kind):
    write_docs(tmp_path / "demo.yaml", meta_router(split=(20, 80)))
    cp = ControlPlane([str(tmp_path)], listen="127.0.0.1:0", admin=None, watcher=kind, poll=0.01,
                      debounce=0.01).start()
    try:
        assert cp.views()["/healthz"]()["watcher"] == kind
        generation = cp.store.generation
        write_docs(tmp_path / "demo.yaml", meta_router(split=(50, 50)))
        wait_until(lambda: cp.store.generation > generation, timeout=5)
        cfg = cp.store.snapshot()["demo_9191"].config
        assert cfg.virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].weight.value == 50
        assert cp.loader.counters.full_parses + cp.loader.counters.splices == 2
    finally:
        cp.stop(grace=0)
