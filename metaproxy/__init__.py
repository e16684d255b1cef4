"""metaproxy: a layer-7 proxy framework for RPC protocols, on gevent."""

__version__ = "0.1.0"
