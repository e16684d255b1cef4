# Benchmarks: `make bench` builds the C load generator and upstream server (tinyrpc, Thrift, Dubbo) into
# build/bench/ and runs bench/run.py (direct vs HAProxy vs metaproxy, BENCH_ROUNDS interleaved rounds).
# `make bench-profile` runs one metaproxy measurement under a profiler; `make bench-smoke` a very short run.
# `make deps-bench` installs what the benchmarks need, only when it is missing.

BENCH_BUILD ?= build/bench
BENCH_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)
BENCH_CC ?= gcc
BENCH_CFLAGS ?= -O2 -Wall -Wextra -std=c11
BENCH_ARGS ?=
# Every target measured this many times, taking turns; the tables show medians (bench/run.py --rounds).
BENCH_ROUNDS ?= 3

BENCH_BINARIES := $(BENCH_BUILD)/rpc_load $(BENCH_BUILD)/rpc_server

.PHONY: bench bench-protocols bench-tools bench-profile bench-smoke bench-icount deps-bench

$(BENCH_BUILD)/%: bench/%.c bench/rpcproto.h
	@mkdir -p $(BENCH_BUILD)
	$(BENCH_CC) $(BENCH_CFLAGS) -o $@ $< -lm

bench-tools: $(BENCH_BINARIES)

# The whole report: protocols side by side (direct / HAProxy / metaproxy), then the added cost of
# filters (Lua, WASM), of observability, and route-update latency. Each part prints its own table.
bench: compiled bench-protocols bench-codecs bench-lua bench-wasm bench-observability bench-xds

bench-protocols: venv deps-bench bench-tools compiled
	$(BENCH_PYTHON) bench/run.py --build $(BENCH_BUILD) --rounds $(BENCH_ROUNDS) $(BENCH_ARGS)

# Instructions per proxied request under valgrind (load-independent; ~1 min per scenario).
bench-icount: venv deps-bench bench-tools compiled
	@for s in tinyrpc thrift dubbo; do $(BENCH_PYTHON) bench/icount.py --scenario $$s || exit 1; done

bench-profile: venv deps-bench bench-tools
	$(BENCH_PYTHON) bench/run.py --build $(BENCH_BUILD) --profile $(BENCH_ARGS)

# Every scenario through every path for a fraction of a second: proves the harness works (~30 s).
bench-smoke: venv deps-bench bench-tools
	$(BENCH_PYTHON) bench/run.py --build $(BENCH_BUILD) --seconds 0.3 --warmup 0.1 --idle 20

# apt only when a tool is missing, so a second run is instant and offline.
deps-bench:
	@command -v haproxy >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
	@command -v redis-benchmark >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools; }
	@command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	@command -v $(BENCH_CC) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev; }
	@test -x $(BENCH_PYTHON) || { echo "deps-bench: $(BENCH_PYTHON) missing (make the virtualenv first)"; exit 1; }
	@test -x $(dir $(BENCH_PYTHON))py-spy \
		|| $(BENCH_PYTHON) -m pip install --quiet py-spy || echo "deps-bench: py-spy not installed; --profile uses cProfile"
