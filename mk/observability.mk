# Observability (admin, stats, access logs, tracing): docs/observability.md.
# `make bench-observability` measures the cost of access logs and tracing against both off
# (uses the C load generator and server built by bench.mk); `make bench-observability-micro`: the access log
# and the stats alone, in process, in CPU ns per request.
# `make deps-observability` checks the Python packages it needs (all in setup.py install_requires) and
# builds the access log's C extension (metaproxy/_accesslog.c, an ext_module of setup.py: `pip install -e .`
# builds it too; this rebuilds it when the C source changes, which the install stamp does not see).

OBS_PYTHON ?= .venv/bin/python
# Pinned (proxy on CPU 0, load on CPU 1), five interleaved rounds: the ratios of docs/observability.md.
OBS_BENCH_ARGS ?= $(if $(shell test $$(nproc) -ge 2 && echo y),--pin) --rounds 5

.PHONY: bench-observability bench-observability-micro deps-observability test-observability accesslog-ext

ACCESSLOG_EXT_STAMP := build/accesslog-ext.stamp

$(ACCESSLOG_EXT_STAMP): metaproxy/_accesslog.c setup.py
	$(OBS_PYTHON) setup.py -q build_ext --inplace
	@mkdir -p $(dir $@) && touch $@

accesslog-ext: $(ACCESSLOG_EXT_STAMP)

deps-observability: accesslog-ext
	@$(OBS_PYTHON) -c "import prometheus_client, opentelemetry.sdk.trace, gevent.pywsgi" 2>/dev/null \
		|| $(OBS_PYTHON) -m pip install --quiet "prometheus-client>=0.19" "opentelemetry-api>=1.20" "opentelemetry-sdk>=1.20"

bench-observability: deps-observability deps-bench bench-tools
	$(OBS_PYTHON) bench/observability_bench.py --build $(BENCH_BUILD) $(OBS_BENCH_ARGS)

# CPU per request of the access log and the stats alone, in process (no load generator needed).
bench-observability-micro: deps-observability
	$(OBS_PYTHON) bench/observability_micro.py

test-observability: deps-observability
	$(OBS_PYTHON) -m pytest -q tests/observability --timeout 120
	METAPROXY_ACCESSLOG_NATIVE=0 $(OBS_PYTHON) -m pytest -q tests/observability --timeout 120
