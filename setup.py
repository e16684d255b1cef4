"""metaproxy: a layer-7 proxy framework for RPC protocols (Dubbo, Thrift, Redis, private ones)."""

import hashlib
from pathlib import Path

from setuptools import Extension, find_packages, setup

# The access log extension carries the hash of the source it was built from: metaproxy/accesslog.py
# uses it only while that matches metaproxy/_accesslog.c (an edited source is never shadowed by an old build).
_ACCESSLOG_C = Path(__file__).resolve().parent / "metaproxy" / "_accesslog.c"
_ACCESSLOG_SHA256 = hashlib.sha256(_ACCESSLOG_C.read_bytes()).hexdigest() if _ACCESSLOG_C.exists() else ""

codec_packages = ["metaproxy_codecs"] + [
    "metaproxy_codecs." + name for name in find_packages("codecs")
]

setup(
    name="metaproxy",
    version="0.1.0",
    description="Layer-7 proxy framework for RPC protocols, on gevent",
    python_requires=">=3.11",
    packages=find_packages(include=["metaproxy", "metaproxy.*"]) + codec_packages,
    package_dir={"metaproxy_codecs": "codecs"},
    # The access log's capture and render in C (docs/observability.md, "Cost"). Optional: without a
    # compiler the install still succeeds and metaproxy/accesslog.py runs its Python path.
    ext_modules=[Extension("metaproxy._accesslog", ["metaproxy/_accesslog.c"], libraries=["m"],
                           define_macros=[("METAPROXY_SOURCE_SHA256", f'"{_ACCESSLOG_SHA256}"')],
                           extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"], optional=True)],
    # _compiled/: the hot path as `make compiled` built it (metaproxy/compiled.py uses it only while it
    # matches the sources), so the image's wheel carries it.
    package_data={"metaproxy": ["py.typed", "_compiled/*.so", "_compiled/manifest.json"], "metaproxy_codecs": ["*/*.thrift", "*/templates/*"]},
    install_requires=[
        "gevent>=24",
        "PyYAML>=6",
        "lupa>=2.0",
        "wasmtime>=20",
        "grpcio>=1.60",
        "xds-protos>=1.60",
        "protobuf>=4",
        "mypy_extensions>=1.0",  # mypyc_attr marks on classes of the compiled hot path (metaproxy/compiled.py)
        "prometheus-client>=0.19",
        "opentelemetry-api>=1.20",
        "opentelemetry-sdk>=1.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "hypothesis>=6",
            "thrift>=0.16",
            "thriftpy2>=0.4.17",
            "dubbo-ssl-python>=0.9",
            "redis>=5",
            "cryptography>=41",
            "ruff>=0.4",
        ],
    },
    entry_points={
        "console_scripts": ["metaproxy = metaproxy.cli:main"],
        "metaproxy.codecs": [
            "tinyrpc = metaproxy_codecs.tinyrpc:TinyRpcCodec",
            "thrift = metaproxy_codecs.thrift:ThriftCodec",
            "dubbo = metaproxy_codecs.dubbo:DubboCodec",
            "redis = metaproxy_codecs.redis:RedisCodec",
        ],
        "metaproxy.filters": [
            "router = metaproxy.filters.router:RouterFilter",
            "lua = metaproxy.lua.filter:LuaFilter",
            "wasm = metaproxy.wasm.filter:WasmFilter",
            "local_ratelimit = metaproxy.filters.local_ratelimit:LocalRateLimitFilter",
            "ratelimit = metaproxy.filters.ratelimit:RateLimitFilter",
            "fault = metaproxy.filters.fault:FaultFilter",
            "rbac = metaproxy.filters.rbac:RbacFilter",
        ],
    },
)
