# Traffic management (issue 8): the tests run a real redis-server behind the
# test rate limit service (tests/traffic/rls_server.py).
# `make deps-traffic` installs it only when it is missing; `make test-traffic`
# runs the traffic tests alone. Python packages (redis, grpcio, xds-protos)
# come from setup.py's install_requires and [test] extra.

TRAFFIC_PYTHON ?= .venv/bin/python

.PHONY: deps-traffic test-traffic

deps-traffic:
	@command -v redis-server >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; }

test-traffic: deps-traffic
	$(TRAFFIC_PYTHON) -m pytest tests/traffic --timeout 120
