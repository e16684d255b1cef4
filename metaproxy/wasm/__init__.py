"""WASM filters: a Proxy-Wasm ABI 0.2.1 host on wasmtime (filter name ``wasm``).

Modules: ``abi`` (codes, signatures, map encoding), ``native`` (the fast ctypes
call paths and bounds-checked guest memory), ``engine`` (engine and epoch
ticker), ``host`` (what each host function does against Metadata/Mutation),
``properties``, ``metrics``, ``dispatch`` (per-stream callbacks batched in
WebAssembly), ``vm`` (one instance: start, calls, rebuild) and
``filter`` (the ``wasm`` filter). docs/wasm.md is the plugin author's guide.
"""
