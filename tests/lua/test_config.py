"""Option validation: every mistake is refused at load with the key that is wrong."""

from __future__ import annotations

import pytest

from metaproxy.chain import FilterEnv, load_filter_class
from metaproxy.lua import LuaFilter
from metaproxy.lua.filter import parse_size


def test_the_lua_name_finds_the_filter():
    assert load_filter_class("lua") is LuaFilter and LuaFilter.name == "lua"


@pytest.mark.parametrize("options, message", [
    ({}, "give exactly one of script, source or directory"),
    ({"script": "a.lua", "source": "x = 1"}, "(got script, source)"),
    ({"script": "missing.lua"}, "script: no such file"),
    ({"directory": "nowhere"}, "directory: no such directory"),
    ({"source": "function on_request(h"}, "source: "),
    ({"source": "on_request = 5"}, "on_request is not a function"),
    ({"source": "x = 1", "step_limit": 0}, "step_limit: must be greater than 0"),
    ({"source": "x = 1", "step_limit": "many"}, "step_limit: expected int"),
    ({"source": "x = 1", "max_memory": "lots"}, "max_memory: expected a size"),
    ({"source": "x = 1", "max_memory": 1000}, "max_memory: must be at least 256KB"),
    ({"source": "x = 1", "reload_interval": "soon"}, "reload_interval: expected a duration"),
    ({"source": "x = 1", "engine": "lua99"}, "engine: unknown engine 'lua99'"),
    ({"source": "x = 1", "scirpt": "a.lua"}, "scirpt: unknown key 'scirpt'"),
])
def test_bad_options_are_refused_with_the_key(tmp_path, options, message):
    with pytest.raises(ValueError) as info:
        LuaFilter(options, FilterEnv(base_dir=str(tmp_path)))
    assert message in str(info.value)


def test_a_directory_with_a_broken_file_is_refused_at_start(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ok.lua").write_text("function on_request(h) end")
    (tmp_path / "d" / "bad.lua").write_text("function on_request(h")
    with pytest.raises(ValueError, match=r"directory: .*bad\.lua"):
        LuaFilter({"directory": "d"}, FilterEnv(base_dir=str(tmp_path)))


def test_paths_are_relative_to_the_config_folder(tmp_path):
    (tmp_path / "s.lua").write_text("function on_request(h) end")
    f = LuaFilter({"script": "s.lua", "reload_interval": 0}, FilterEnv(base_dir=str(tmp_path)))
    assert f.script_names == ["s.lua"]


@pytest.mark.parametrize("text, size", [(300000, 300000), ("16MB", 16 << 20), ("512 KiB", 512 << 10),
                                        ("1gb", 1 << 30)])
def test_sizes(text, size):
    assert parse_size(text) == size
