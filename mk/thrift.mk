# Thrift codec: the tests generate Apache Python code from
# tests/e2e/thrift_support/echo.thrift with the Debian `thrift` compiler.
# `make deps-thrift` installs it only when it is missing; `make test-thrift`
# runs the Thrift codec and end-to-end tests alone.

.PHONY: deps-thrift test-thrift

deps-thrift:
	@command -v thrift >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq thrift-compiler; }

test-thrift: deps-thrift
	$(PY) -m pytest tests/codecs/test_thrift_conformance.py tests/codecs/test_thrift_codec.py tests/e2e/test_thrift_proxy.py
