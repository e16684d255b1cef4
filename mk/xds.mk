# Dynamic routes (control plane + RDS client). Nothing to install beyond
# setup.py's packages (grpcio, xds-protos, PyYAML); the file watcher uses Linux
# inotify through ctypes (falling back to polling elsewhere), so there is no deps-xds.
#   make test-xds    the control plane / xDS / RDS tests, end-to-end included
#   make bench-xds   file change -> new routes serving, at 10, 1,000, 10,000 routes
#                    (XDS_BENCH_ARGS="--repeat 7 --watcher poll" to compare with polling)

XDS_PY ?= $(if $(PY),$(PY),.venv/bin/python)
XDS_BENCH_ARGS ?=

.PHONY: test-xds bench-xds

test-xds: venv
	$(XDS_PY) -m pytest -q tests/xds --timeout 120

bench-xds: venv
	$(XDS_PY) bench/xds_bench.py $(XDS_BENCH_ARGS)
