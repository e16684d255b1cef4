"""atheris glue: instrument the codecs, then fuzz tests/fuzz/target.py's property for one codec.

A crash is saved as ``crash-*`` under the artifact prefix; copy it into
tests/fuzz/corpus/<codec>/ so tests/fuzz/test_corpus.py replays it forever.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import metaproxy_codecs.dubbo  # noqa: F401 - imported here to be instrumented
    import metaproxy_codecs.redis  # noqa: F401
    import metaproxy_codecs.thrift  # noqa: F401
    import metaproxy_codecs.tinyrpc  # noqa: F401

from tests.fuzz.target import one_input  # noqa: E402 - after instrumentation


def main(codec: str) -> None:
    atheris.Setup(sys.argv, lambda data: one_input(codec, data))
    atheris.Fuzz()
