# Reliability: fuzzing (tests/fuzz), hostile peers, TLS, sandboxes (tests/reliability), soak (bench/soak.py).
# `make deps-fuzz` installs atheris (libFuzzer for Python) and cryptography (test certificates), idempotently.
# `make fuzz` runs each codec's atheris target for FUZZ_SECONDS (default 60) on the committed corpus in
#   tests/fuzz/corpus/<codec>; new interesting inputs go to build/fuzz/<codec> (not committed), crashes to
#   build/fuzz/<codec>/crash-*: copy a crash into tests/fuzz/corpus/<codec>/ so test_corpus.py replays it.
# `make test-reliability` runs tests/fuzz and tests/reliability (the 2-minute soak included).
# `make soak` runs bench/soak.py for SOAK_SECONDS (default 1800) and prints its report.

FUZZ_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)
FUZZ_SECONDS ?= 60
FUZZ_CODECS ?= tinyrpc thrift dubbo redis
SOAK_SECONDS ?= 1800
SOAK_ARGS ?=

.PHONY: deps-fuzz fuzz test-reliability soak

deps-fuzz:
	@$(FUZZ_PYTHON) -c "import atheris" 2>/dev/null || $(FUZZ_PYTHON) -m pip install --quiet atheris
	@$(FUZZ_PYTHON) -c "import cryptography" 2>/dev/null || $(FUZZ_PYTHON) -m pip install --quiet cryptography

fuzz: deps-fuzz
	@status=0; for c in $(FUZZ_CODECS); do \
		mkdir -p build/fuzz/$$c; \
		echo "== fuzz $$c for $(FUZZ_SECONDS)s (log: build/fuzz/$$c.log)"; \
		$(FUZZ_PYTHON) -m tests.fuzz.atheris_targets.fuzz_$$c -max_total_time=$(FUZZ_SECONDS) \
			-rss_limit_mb=2048 -timeout=10 -artifact_prefix=build/fuzz/$$c/ -print_final_stats=1 \
			build/fuzz/$$c tests/fuzz/corpus/$$c > build/fuzz/$$c.log 2>&1; rc=$$?; \
		grep -E "^Done|^stat::|crash-|Error|Exception" build/fuzz/$$c.log | tail -n 12; \
		test $$rc -eq 0 || { echo "!! $$c: fuzzer exited $$rc (crash input under build/fuzz/$$c/)"; status=1; }; \
	done; exit $$status

test-reliability: deps-fuzz
	$(FUZZ_PYTHON) -m pytest -q tests/fuzz tests/reliability --timeout 300

soak: deps-fuzz
	$(FUZZ_PYTHON) bench/soak.py --seconds $(SOAK_SECONDS) $(SOAK_ARGS)
