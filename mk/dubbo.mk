# Dubbo test peers: `make deps-dubbo` installs dubbo2.js and hessian.js (pinned in
# tests/js/package.json and package-lock.json) into tests/js/node_modules, used by
# tests/codecs/test_dubbo*.py (hessian.js cross-checks) and tests/e2e/test_dubbo_*.py
# (dubbo2.js client). Idempotent: `npm ci` runs only when the lock file is newer
# than the installed tree. dubbo-ssl-python comes from the venv's test extras.

DUBBO_JS_DIR := tests/js

.PHONY: deps-dubbo test-dubbo

deps-dubbo: $(DUBBO_JS_DIR)/node_modules/.package-lock.json

$(DUBBO_JS_DIR)/node_modules/.package-lock.json: $(DUBBO_JS_DIR)/package.json $(DUBBO_JS_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(DUBBO_JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test-dubbo: deps-dubbo
	.venv/bin/python -m pytest -q tests/codecs/test_dubbo.py tests/codecs/test_dubbo_hessian2.py tests/e2e/test_dubbo_proxy.py
