"""metaproxy: a layer-7 proxy framework for RPC protocols, on gevent."""

from metaproxy import compiled as _compiled

__version__ = "0.1.0"

# The hot path's mypyc-compiled modules, when built and matching their sources (metaproxy/compiled.py).
_compiled.install()
