"""The sandbox: a script reaches its own environment and the handle, nothing of the host."""

from __future__ import annotations

import pytest

from metaproxy.lua.runtime import ScriptRuntime, load_engine

FORBIDDEN = ["os", "io", "debug", "package", "require", "dofile", "loadfile", "loadstring", "python",
             "collectgarbage", "getfenv", "setfenv", "module", "newproxy", "gcinfo", "coroutine", "jit"]


@pytest.fixture
def runtime(engine):
    rt = ScriptRuntime(load_engine(engine), "probe", step_limit=100_000, max_memory=4 * 1024 * 1024)
    rt.compile("function on_request(h) end")
    return rt


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_global_is_nil(runtime, name):
    assert runtime.probe(f"return type({name})") == "nil"
    assert runtime.probe(f"return type(_G.{name})") == "nil"


def test_string_dump_is_gone_and_string_metatable_is_locked(runtime):
    assert runtime.probe("return type(string.dump)") == "nil"
    assert runtime.probe("return getmetatable('')") is False
    # The real string library behind ("x"):method() has no dump either.
    assert runtime.probe("return type(('x').dump)") == "nil"


def test_load_accepts_text_only_and_binds_the_sandbox(runtime):
    assert runtime.probe("return load('return 1 + 1')()") == 2
    assert runtime.probe("local f, err = load('\\27LuaQ\\0'); return tostring(f) .. ' ' .. tostring(err)") \
        .startswith("nil ")
    assert runtime.probe("return load(function() return 'x' end)") is None
    assert runtime.probe("return load('return type(os)')()") == "nil"


def test_library_tables_are_copies_per_script(runtime):
    runtime.probe("string.upper = nil; math.pi = 3")
    assert runtime.probe("return string.upper('a') .. tostring(math.pi > 3.14)") == "Atrue"


def test_handle_is_read_only_and_closed(runtime):
    assert runtime.probe("local ok = pcall(function() handle.x = 1 end); return ok") is False
    assert runtime.probe("return getmetatable(handle)") is False


def _walk_source() -> str:
    # Visit every value reachable from the handle and the environment; for each
    # function or userdata try the Python attributes an escape would need.
    return """
local seen, hits = {}, {}
local attrs = {"__class__", "__globals__", "__dict__", "__init__", "__builtins__", "__subclasses__", "f_globals"}
local function probe(v, path)
  for _, a in ipairs(attrs) do
    local ok, got = pcall(function() return v[a] end)
    if ok and got ~= nil then hits[#hits + 1] = path .. "." .. a end
  end
end
local function walk(v, path, depth)
  if depth > 4 or seen[v] then return end
  local t = type(v)
  if t == "table" then
    seen[v] = true
    for k, x in pairs(v) do walk(x, path .. "." .. tostring(k), depth + 1) end
  elseif t == "function" or t == "userdata" then
    seen[v] = true
    probe(v, path)
  end
end
walk(handle, "handle", 0)
walk(handle:metadata(), "metadata", 0)
walk(handle:mutation(), "mutation", 0)
walk(_G, "_G", 0)
return tostring(#hits) .. ":" .. table.concat(hits, ",")
"""


def test_no_python_internals_reachable_from_anything_a_script_can_touch(runtime):
    assert runtime.probe(_walk_source()) == "0:"


def test_python_exception_objects_deny_attribute_access(runtime):
    # If a Python callback raised, Lua would hold the exception object: its traceback must stay closed.
    def boom() -> None:
        raise KeyError("boom")

    probe = runtime.lua.execute("""return function(f)
      local ok, e = pcall(f)
      local ok2, err = pcall(function() return e.__traceback__ end)
      return ok, type(e), ok2, tostring(err) end""")
    ok, kind, ok2, err = probe(boom)
    assert (ok, kind, ok2) == (False, "userdata", False) and "not accessible" in err


def test_attribute_filter_denies_a_python_object_handed_to_lua(runtime):
    # Defence in depth: even if a Python object reached a script, its attributes would not.
    class Secret:
        value = 1

    probe = runtime.lua.execute("return function(o) return pcall(function() return o.value end) end")
    ok, err = probe(Secret())
    assert ok is False and "not accessible" in str(err)
