"""Step and memory bounds: a runaway script fails its own request, is logged and counted, and nothing else."""

from __future__ import annotations

import logging
import time

import pytest

from metaproxy.message import ErrorType
from tests.lua.conftest import ctx_for

LOOPS = {
    "plain": "while true do end",
    "numeric_for": "local x = 0 for i = 1, 1e12 do x = x + i end",
    "swallowed_by_pcall": "while true do pcall(function() while true do end end) end",
    "swallowed_by_xpcall": "while true do xpcall(function() while true do end end, function(e) return e end) end",
    "loop_in_handler": "xpcall(function() error('x') end, function() while true do end end)",
    "recursion_in_pcall": "local function f() return pcall(f) end while true do f() end",
    "string_work": "local s = '' while true do s = string.upper(string.sub(s .. 'a', -10)) end",
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_step_limit_stops_runaway_loops(make_filter, engine, caplog, loop):
    f = make_filter(engine=engine, step_limit=200_000, source=f"""
function on_request(h)
  if h:metadata():get("method") == "spin" then
    {LOOPS[loop]}
  end
  h:mutation():set("ok", "1")
end""")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, "metaproxy.lua"):
        err = f.on_request(ctx_for(method="spin", request_id=9))
    assert time.monotonic() - started < 2.0
    assert err is not None and err.kind is ErrorType.UNSPECIFIED
    assert f.error_counts == {"inline": 1}
    assert "inline" in caplog.text and ("step limit" in caplog.text or "stack overflow" in caplog.text)
    # The next request, and one that does not spin, are untouched.
    ctx = ctx_for(method="ping")
    assert f.on_request(ctx) is None and ctx.mutation == {"ok": "1"}


def test_step_limit_error_names_script_and_line(make_filter, engine, caplog, tmp_path):
    (tmp_path / "spin.lua").write_text("function on_request(h)\n  local i = 0\n  while true do i = i + 1 end\nend\n")
    f = make_filter(engine=engine, script="spin.lua", step_limit=50_000)
    with caplog.at_level(logging.ERROR, "metaproxy.lua"):
        f.on_request(ctx_for(method="x"))
    assert "step limit of 50000 exceeded at spin.lua:3" in caplog.text
    assert f.error_counts == {"spin.lua": 1}


def test_a_loop_at_load_time_refuses_the_script(make_filter, engine):
    with pytest.raises(ValueError, match="source: .*step limit"):
        make_filter(engine=engine, step_limit=10_000, source="while true do end")


MEMORY_HOGS = {
    "one_big_string": "local s = string.rep('x', 64 * 1024 * 1024)",
    "many_tables": "local t = {} for i = 1, 1e7 do t[i] = {i, i} end",
    "swallowed": "local t = {} while true do pcall(function() for i = 1, 1e6 do t[#t + 1] = tostring(i) end end) end",
}


@pytest.mark.parametrize("hog", sorted(MEMORY_HOGS))
def test_memory_limit_fails_the_request_and_the_state_recovers(make_filter, engine, caplog, hog):
    f = make_filter(engine=engine, step_limit=10**9, max_memory="2MB", source=f"""
local calls = 0
function on_request(h)
  calls = calls + 1
  if h:metadata():get("method") == "hog" then
    {MEMORY_HOGS[hog]}
  end
  h:mutation():set("calls", calls)
end""")
    with caplog.at_level(logging.ERROR, "metaproxy.lua"):
        err = f.on_request(ctx_for(method="hog"))
    assert err is not None and err.kind is ErrorType.UNSPECIFIED
    assert "memory limit exceeded" in caplog.text
    assert f.error_counts == {"inline": 1}
    runtime = f.runtime("inline")
    assert runtime.memory_used() < 1024 * 1024
    for _ in range(3):
        ctx = ctx_for(method="ping")
        assert f.on_request(ctx) is None
    assert int(ctx.mutation["calls"]) >= 3


def test_a_leaking_script_is_restarted_after_it_fills_its_state(make_filter, engine, caplog):
    f = make_filter(engine=engine, step_limit=10**9, max_memory="1MB", source="""
leak = {}
function on_request(h)
  for i = 1, 2000 do leak[#leak + 1] = "entry" .. #leak end
  h:mutation():set("n", #leak)
end""")
    results = []
    with caplog.at_level(logging.WARNING, "metaproxy.lua"):
        for _ in range(200):
            ctx = ctx_for(method="ping")
            results.append(f.on_request(ctx) is None)
            if results[-1] is False:
                break
    assert results[-1] is False, "the leak never hit the limit"
    ctx = ctx_for(method="ping")
    assert f.on_request(ctx) is None and ctx.mutation["n"] == "2000"  # a fresh state, globals reset
    assert "rebuilding it" in caplog.text


def test_one_script_hitting_a_bound_does_not_touch_another_scripts_state(make_filter, engine, tmp_path):
    (tmp_path / "a_count.lua").write_text(
        "n = 0\nfunction on_request(h) n = n + 1; h:mutation():set('n', n) end\n")
    (tmp_path / "b_hog.lua").write_text(
        "function on_request(h)\n if h:metadata():get('method') == 'hog' then\n"
        "  local s = string.rep('y', 32 * 1024 * 1024)\n end\nend\n")
    f = make_filter(engine=engine, directory=".", max_memory="2MB", reload_interval=0)
    assert f.script_names == ["./a_count.lua", "./b_hog.lua"]
    for method in ("ping", "hog", "ping"):
        ctx = ctx_for(method=method)
        err = f.on_request(ctx)
        assert (err is None) == (method == "ping")
    assert ctx.mutation["n"] == "3"
    assert f.error_counts == {"./b_hog.lua": 1}


def test_errors_are_counted_on_the_stats_service_when_present(make_filter, engine):
    from metaproxy.stats import StatsStore

    store = StatsStore()
    f = make_filter(engine=engine, services={"stats": store}, source="function on_request(h) error('no') end")
    for _ in range(3):
        f.on_request(ctx_for(method="x"))
    assert store.value("lua.in", "inline.errors") == 3
    assert f.error_counts == {"inline": 3}


def test_a_stats_service_with_a_one_argument_counter_works_too(make_filter, engine):
    class Counter:
        value = 0

        def inc(self) -> None:
            self.value += 1

    class Stats:
        def __init__(self) -> None:
            self.counters: dict[str, Counter] = {}

        def counter(self, name: str) -> Counter:
            return self.counters.setdefault(name, Counter())

    stats = Stats()
    f = make_filter(engine=engine, services={"stats": stats}, source="function on_request(h) error('no') end")
    f.on_request(ctx_for(method="x"))
    assert stats.counters["lua.in.inline.errors"].value == 1
