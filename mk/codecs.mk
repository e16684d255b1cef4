# Codec micro-benchmark: CPU µs per decode/encode of one request and one response, per codec
# (tinyrpc, thrift, dubbo, redis), with the benchmark peers' frames. Part of `make bench`; it
# measures the codecs alone, in a few seconds, with no network. CODEC_BENCH_ARGS narrows it,
# e.g. `make bench-codecs CODEC_BENCH_ARGS="thrift,dubbo 20000 --repeat 7"`.

CODEC_BENCH_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)
CODEC_BENCH_ARGS ?=

.PHONY: bench-codecs

bench-codecs: venv
	$(CODEC_BENCH_PYTHON) bench/codec_bench.py $(CODEC_BENCH_ARGS)
