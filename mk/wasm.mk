# WASM filter samples (filters/wasm/): `make wasm` rebuilds every committed .wasm from source.
# Tests never need this toolchain: the built .wasm files are committed.
#   C samples:            clang --target=wasm32 (Debian clang + lld), freestanding, no libc.
#   AssemblyScript sample: @solo-io/proxy-runtime + assemblyscript from the npm registry, built with asc -O3
#                          (optimized for speed, asserts kept: the "build" script of as/package.json),
#                          pinned in filters/wasm/as/package.json and package-lock.json.

WASM_DIR := filters/wasm
WASM_C_SOURCES := $(wildcard $(WASM_DIR)/c/*.c)
WASM_C_TARGETS := $(patsubst $(WASM_DIR)/c/%.c,$(WASM_DIR)/%.wasm,$(WASM_C_SOURCES))
WASM_AS_TARGET := $(WASM_DIR)/as_filter.wasm
WASM_AS_SOURCES := $(wildcard $(WASM_DIR)/as/assembly/*.ts) $(WASM_DIR)/as/package.json $(WASM_DIR)/as/package-lock.json
WASM_CLANG ?= clang
WASM_CFLAGS := --target=wasm32 -nostdlib -fno-builtin -O2 -Wall -Werror \
	-Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all -Wl,-z,stack-size=65536

.PHONY: wasm wasm-c wasm-as deps-wasm deps-wasm-c deps-wasm-as

wasm: wasm-c wasm-as

wasm-c: deps-wasm-c $(WASM_C_TARGETS)

$(WASM_DIR)/%.wasm: $(WASM_DIR)/c/%.c $(WASM_DIR)/c/proxy_wasm.h
	$(WASM_CLANG) $(WASM_CFLAGS) -o $@ $<

wasm-as: deps-wasm-as $(WASM_AS_TARGET)

$(WASM_AS_TARGET): $(WASM_AS_SOURCES)
	cd $(WASM_DIR)/as && npm run build

# deps-wasm installs the toolchains only when a build is actually needed (a .wasm missing or older than its
# sources), so `make test` on a fresh machine (which depends on deps-wasm) costs nothing: tests use the committed
# .wasm files.
_wasm_stale = for t in $(WASM_C_TARGETS); do s=$(WASM_DIR)/c/$$(basename $$t .wasm).c; \
	{ [ ! -e $$t ] || [ $$s -nt $$t ] || [ $(WASM_DIR)/c/proxy_wasm.h -nt $$t ]; } && echo c; done; \
	for s in $(WASM_AS_SOURCES); do { [ ! -e $(WASM_AS_TARGET) ] || [ $$s -nt $(WASM_AS_TARGET) ]; } && echo as; done; true

_wasm_install_c = command -v $(WASM_CLANG) >/dev/null && command -v wasm-ld >/dev/null || \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang lld; }
_wasm_install_as = { command -v npm >/dev/null || { apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }; } && \
	{ [ -x $(WASM_DIR)/as/node_modules/.bin/asc ] || (cd $(WASM_DIR)/as && npm ci --no-audit --no-fund); }

deps-wasm:
	@stale="$$($(_wasm_stale))"; \
	case "$$stale" in *c*) $(_wasm_install_c);; esac; \
	case "$$stale" in *as*) $(_wasm_install_as);; esac

deps-wasm-c:
	@$(_wasm_install_c)

deps-wasm-as:
	@$(_wasm_install_as)

# `make test-wasm` runs the WASM filter tests (unit and end to end; no toolchain needed).
# `make bench-wasm` prints the CPU per request the C and AssemblyScript samples add, against no filter.
WASM_PYTHON ?= .venv/bin/python
.PHONY: test-wasm bench-wasm

test-wasm:
	$(WASM_PYTHON) -m pytest -q tests/wasm --timeout 120

bench-wasm:
	$(WASM_PYTHON) bench/wasm_bench.py
