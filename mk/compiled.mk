# The hot path compiled with mypyc (metaproxy/tools/compile_hotpath.py, metaproxy/compiled.py,
# docs/performance.md "The hot path compiled").
#   make compiled    builds metaproxy/_compiled/ when a hot-path source changed since the last build
#                    (~35 s on 2 cores; a no-op otherwise). mypy (mypyc) is installed into the venv
#                    only for this. `make run`, `make test`, `make bench` and `make image` do it first.
# The sources stay the truth: an edited source makes the whole build stale and metaproxy runs
# interpreted until the next `make compiled` (METAPROXY_COMPILED=0 forces that, =require refuses it).

MYPY_VERSION := 2.4.1
COMPILE_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)

.PHONY: compiled deps-compile compiled-clean

deps-compile: venv
	@$(COMPILE_PYTHON) -c "import mypy.version, sys; sys.exit(mypy.version.__version__ != '$(MYPY_VERSION)')" 2>/dev/null \
		|| $(COMPILE_PYTHON) -m pip install --quiet "mypy==$(MYPY_VERSION)"

compiled: deps-compile
	$(COMPILE_PYTHON) -m metaproxy.tools.compile_hotpath --if-stale

compiled-clean:
	rm -rf metaproxy/_compiled metaproxy/_compiled.tmp build/mypyc
