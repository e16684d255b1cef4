# Lua filters (metaproxy/lua, filters/lua, tests/lua, bench/lua_bench.py).
# `make deps-lua` makes sure lupa with LuaJIT 2.1 is in the virtualenv (idempotent: pip
# runs only when the import fails). `make test-lua` runs the Lua tests (unit and end to end);
# `make bench-lua` prints the CPU per request a trivial Lua filter and the canary sample add.

LUA_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)
LUA_BENCH_ARGS ?=

.PHONY: deps-lua test-lua bench-lua

deps-lua:
	@$(LUA_PYTHON) -c "import lupa.luajit21" 2>/dev/null \
		|| $(LUA_PYTHON) -m pip install --quiet "lupa>=2.0"

test-lua: deps-lua
	$(LUA_PYTHON) -m pytest -q tests/lua --timeout 120

bench-lua: deps-lua
	$(LUA_PYTHON) bench/lua_bench.py $(LUA_BENCH_ARGS)
