"""Hot reload: changed, added and removed files are picked up within 1 s; broken ones keep the old version."""

from __future__ import annotations

import logging
import time

import gevent
import pytest

from tests.lua.conftest import ctx_for, write_atomic


def tagger(tag: str) -> str:
    return f'function on_request(h) h:mutation():set("x-version", "{tag}") end\n'


def version_of(f) -> str | None:
    ctx = ctx_for(method="ping")
    assert f.on_request(ctx) is None
    return ctx.mutation.get("x-version")


def wait_for(predicate, timeout: float = 1.0) -> float:
    """Poll (cooperatively) until predicate() holds; return how long it took, fail after timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not true within {timeout}s")
        gevent.sleep(0.01)
    return time.monotonic() - started


def test_a_changed_script_is_picked_up_within_one_second(make_filter, engine, tmp_path):
    path = tmp_path / "v.lua"
    path.write_text(tagger("v1"))
    f = make_filter(engine=engine, script="v.lua")
    assert version_of(f) == "v1"
    write_atomic(path, tagger("v2"))
    assert wait_for(lambda: version_of(f) == "v2") < 1.0
    assert f.reloads == 1


def test_an_in_place_edit_is_picked_up_too(make_filter, engine, tmp_path):
    path = tmp_path / "v.lua"
    path.write_text(tagger("v1"))
    f = make_filter(engine=engine, script="v.lua", reload_interval="50ms")
    with open(path, "w") as fh:  # same inode, editor-style save
        fh.write(tagger("v2-longer"))
    wait_for(lambda: version_of(f) == "v2-longer")


def test_a_broken_change_keeps_the_previous_version_and_says_why(make_filter, engine, tmp_path, caplog):
    path = tmp_path / "v.lua"
    path.write_text(tagger("v1"))
    f = make_filter(engine=engine, script="v.lua", reload_interval=0)
    write_atomic(path, "function on_request(h)\n  this is not lua\nend\n")
    with caplog.at_level(logging.ERROR, "metaproxy.lua"):
        assert f.refresh() is False
    assert "v.lua failed to load, keeping the previous version" in caplog.text
    assert "v.lua:2" in caplog.text
    assert version_of(f) == "v1" and f.reload_errors == 1
    assert f.refresh() is False and f.reload_errors == 1  # not retried until the file changes again
    write_atomic(path, "while true do end")  # compiles, but its top level never finishes
    with caplog.at_level(logging.ERROR, "metaproxy.lua"):
        f.refresh()
    assert "step limit" in caplog.text and version_of(f) == "v1"
    write_atomic(path, tagger("v3"))
    assert f.refresh() is True and version_of(f) == "v3"


def test_directory_files_added_removed_and_run_in_name_order(make_filter, engine, tmp_path):
    d = tmp_path / "scripts"
    d.mkdir()
    (d / "20_b.lua").write_text(
        'function on_request(h) h:mutation():set("order", (h:mutation():get("order") or "") .. "b") end\n')
    (d / "notes.txt").write_text("not a script")
    f = make_filter(engine=engine, directory="scripts", reload_interval="100ms")
    assert f.script_names == ["scripts/20_b.lua"]
    write_atomic(d / "10_a.lua",
                 'function on_request(h) h:mutation():set("order", (h:mutation():get("order") or "") .. "a") end\n')

    def order() -> str | None:
        ctx = ctx_for(method="ping")
        f.on_request(ctx)
        return ctx.mutation.get("order")

    wait_for(lambda: order() == "ab")
    (d / "20_b.lua").unlink()
    wait_for(lambda: order() == "a")
    assert f.script_names == ["scripts/10_a.lua"]


def test_an_added_file_that_does_not_compile_is_not_added(make_filter, engine, tmp_path, caplog):
    d = tmp_path / "d"
    d.mkdir()
    f = make_filter(engine=engine, directory="d", reload_interval=0)
    assert f.script_names == []
    (d / "bad.lua").write_text("function on_request(h")
    with caplog.at_level(logging.ERROR, "metaproxy.lua"):
        f.refresh()
    assert f.script_names == [] and "d/bad.lua failed to load, not added" in caplog.text


def test_removing_the_only_script_keeps_it_running(make_filter, engine, tmp_path, caplog):
    path = tmp_path / "v.lua"
    path.write_text(tagger("v1"))
    f = make_filter(engine=engine, script="v.lua", reload_interval=0)
    path.unlink()
    with caplog.at_level(logging.WARNING, "metaproxy.lua"):
        f.refresh()
    assert "keeping the version in memory" in caplog.text and version_of(f) == "v1"
    path.write_text(tagger("v2"))
    f.refresh()
    assert version_of(f) == "v2"


def test_reload_under_load_loses_no_request(make_filter, engine, tmp_path):
    path = tmp_path / "v.lua"
    path.write_text(tagger("v0"))
    f = make_filter(engine=engine, script="v.lua", reload_interval="20ms")
    seen: list[str | None] = []
    errors: list[object] = []
    stop = False

    def client() -> None:
        while not stop:
            ctx = ctx_for(method="ping")
            err = f.on_request(ctx)
            if err is not None:
                errors.append(err)
            seen.append(ctx.mutation.get("x-version"))
            gevent.sleep(0)

    clients = [gevent.spawn(client) for _ in range(20)]
    for n in range(1, 6):
        write_atomic(path, tagger(f"v{n}"))
        wait_for(lambda n=n: seen and seen[-1] == f"v{n}")
    stop = True
    gevent.joinall(clients, timeout=5, raise_error=True)
    assert errors == [] and None not in seen
    assert set(seen) >= {"v0", "v5"} and f.error_counts == {}


def test_close_stops_the_watcher(make_filter, engine, tmp_path):
    path = tmp_path / "v.lua"
    path.write_text(tagger("v1"))
    f = make_filter(engine=engine, script="v.lua", reload_interval="10ms")
    f.close()
    write_atomic(path, tagger("v2"))
    gevent.sleep(0.1)
    assert version_of(f) == "v1"


def test_inline_source_is_not_watched(make_filter, engine):
    f = make_filter(engine=engine, source=tagger("inline"))
    assert f.refresh() is False and version_of(f) == "inline"
