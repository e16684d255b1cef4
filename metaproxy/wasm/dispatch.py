"""Per-stream callbacks batched inside WebAssembly: one entry from Python per request phase.

Why: each call from Python into wasmtime costs about a microsecond of ctypes
and interpreter work, and Proxy-Wasm calls up to six callbacks per request
(``proxy_on_context_create``, ``proxy_on_request_headers``,
``proxy_on_response_headers``, ``proxy_on_done``, ``proxy_on_log``,
``proxy_on_delete``). A call from one WebAssembly function to another in the
same Store costs nanoseconds. So a small dispatcher module, generated for the
exports the guest actually has, is instantiated next to it with the guest's
callbacks as its imports, and the host calls the dispatcher once per phase:

* ``request(id, root, n)``: ``proxy_on_context_create(id, root)`` then
  ``proxy_on_request_headers(id, n, 1)``; returns the action (0 without that export);
* ``response(id, n)``: ``proxy_on_response_headers(id, n, 1)`` then ``finish(id)``;
* ``finish(id)``: ``proxy_on_done(id)``; when it returns false, 0 (the stream waits
  for ``proxy_done``); otherwise ``proxy_on_log(id)``, ``proxy_on_delete(id)`` and 1.

The callbacks run in exactly the order, with exactly the arguments, the host
would have used calling them one by one; a trap in any of them ends the whole
call (as it ended the request before). Nothing the host does between two of
these callbacks depends on the previous one's effects, so batching does not
change what a module can observe.
"""

from __future__ import annotations

import wasmtime

#: Guest exports the dispatcher may call, with their WebAssembly types.
_IMPORTS = {
    "proxy_on_context_create": "(param i32 i32)",
    "proxy_on_request_headers": "(param i32 i32 i32) (result i32)",
    "proxy_on_response_headers": "(param i32 i32 i32) (result i32)",
    "proxy_on_done": "(param i32) (result i32)",
    "proxy_on_log": "(param i32)",
    "proxy_on_delete": "(param i32)",
}


def dispatcher_wat(exported: set[str]) -> str:
    """The dispatcher's text for a guest exporting the callbacks in ``exported`` (others are skipped)."""
    has = {name: name in exported for name in _IMPORTS}
    imports = "".join(f'  (import "guest" "{name}" (func ${name} {ty}))\n'
                      for name, ty in _IMPORTS.items() if has[name])
    finish = []
    if has["proxy_on_done"]:
        finish.append("(if (i32.eqz (call $proxy_on_done (local.get $id))) (then (return (i32.const 0))))")
    if has["proxy_on_log"]:
        finish.append("(call $proxy_on_log (local.get $id))")
    if has["proxy_on_delete"]:
        finish.append("(call $proxy_on_delete (local.get $id))")
    request = []
    if has["proxy_on_context_create"]:
        request.append("(call $proxy_on_context_create (local.get $id) (local.get $root))")
    if has["proxy_on_request_headers"]:
        request.append("(return (call $proxy_on_request_headers (local.get $id) (local.get $n) (i32.const 1)))")
    response = []
    if has["proxy_on_response_headers"]:
        response.append("(drop (call $proxy_on_response_headers (local.get $id) (local.get $n) (i32.const 1)))")
    return (
        "(module\n" + imports
        + '  (func $finish (export "finish") (param $id i32) (result i32)\n    '
        + "\n    ".join(finish + ["(i32.const 1)"]) + ")\n"
        + '  (func (export "request") (param $id i32) (param $root i32) (param $n i32) (result i32)\n    '
        + "\n    ".join(request + ["(i32.const 0)"]) + ")\n"
        + '  (func (export "response") (param $id i32) (param $n i32) (result i32)\n    '
        + "\n    ".join(response + ["(call $finish (local.get $id))"]) + "))\n"
    )


def compile_dispatcher(engine: wasmtime.Engine, exported: set[str]) -> tuple[wasmtime.Module, list[str]]:
    """The compiled dispatcher for these exports, and the guest exports it imports, in import order."""
    names = [name for name in _IMPORTS if name in exported]
    return wasmtime.Module(engine, wasmtime.wat2wasm(dispatcher_wat(exported))), names


def instantiate_dispatcher(store: wasmtime.Store, module: wasmtime.Module, names: list[str],
                           guest_exports: wasmtime.InstanceExports) -> wasmtime.InstanceExports:
    """An instance of the dispatcher in ``store``, calling the guest instance's exports."""
    funcs = [guest_exports[name] for name in names]
    return wasmtime.Instance(store, module, funcs).exports(store)  # type: ignore[arg-type]
