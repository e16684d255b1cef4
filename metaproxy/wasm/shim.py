"""Host functions answered in WebAssembly, calling Python only when they must.

Why: every call from a module into Python costs ~0.6 µs of ctypes crossing
plus a Python frame, and a returned value costs one more entry from Python
into the module (its allocator). Header writes need no answer from Python, and
a returned value can be copied into the module by WebAssembly. So, for the
host functions in :data:`ROUTED` that a module imports:

* ``proxy_add_header_map_value`` / ``proxy_replace_header_map_value`` on the
  request or response headers, while a request is current, are *recorded* in a
  log inside the shim's own memory (key and value copied from the module) and
  answered OK at once. Python applies the log, in order, before any host
  function that reads a header map or changes the effective context, and when
  the guest call returns (:meth:`ShimBuffer.drain`). Anything else (no request
  current, another map, a pointer out of bounds, a full log) goes to the Python
  function, which applies the log first: what a module can observe is unchanged.
* ``proxy_get_header_map_value``, ``proxy_get_header_map_pairs`` and
  ``proxy_get_property`` call Python, which, instead of calling the module's
  allocator itself, may leave the bytes in the shim's staging area and answer
  :data:`STAGED`; the shim then calls the module's allocator (a WebAssembly
  call, nanoseconds), copies the bytes and writes pointer and size, as the
  Python path does (same status codes on a failed allocation or bad pointer).

Modules cannot import from a module instantiated after them, and the fast
functions need the module's memory and allocator, so there are two small
modules: a *router* instantiated before the module, whose exports the module
imports and which calls through a table that first holds the plain Python
functions; and the *fast* module, instantiated after the module, whose
functions then replace the table entries (:func:`install`).
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import wasmtime

from metaproxy.wasm import abi

#: The host functions that may be routed through the shim, with their signatures.
WRITES = ("proxy_add_header_map_value", "proxy_replace_header_map_value")
STAGED_GETS = ("proxy_get_header_map_value", "proxy_get_header_map_pairs", "proxy_get_property")
ROUTED = WRITES + STAGED_GETS
#: Status a Python host function returns to the fast shim: "the answer is in the staging area".
STAGED = 0xFFFFFF00
#: Shim memory layout (two 64 KiB pages, fixed): words, then the write log, then the staging area.
USED_WORD, ACTIVE_WORD, STAGED_SIZE_WORD = 0, 1, 2  # u32 indices
LOG_START, LOG_END = 64, 65536
STAGE_START, STAGE_END = 65536, 131072
STAGE_MAX = STAGE_END - STAGE_START
#: A log record: op (1 = add, 0 = replace), map type, key size, value size; then key and value, padded to 4.
RECORD = struct.Struct("<IIII")

_WAT_SIG = {"iiiii:i": "(param i32 i32 i32 i32 i32) (result i32)", "iiii:i": "(param i32 i32 i32 i32) (result i32)",
            "iii:i": "(param i32 i32 i32) (result i32)"}


def routed_names(imported: dict[str, str], has_allocator: bool) -> list[str]:
    """Which of the module's ``env`` imports (name -> signature) go through the shim."""
    names = [name for name in WRITES if imported.get(name) == abi.ENV_FUNCTIONS[name]]
    if has_allocator:
        names += [name for name in STAGED_GETS if imported.get(name) == abi.ENV_FUNCTIONS[name]]
    return names


def router_wat(names: list[str]) -> str:
    """Exports ``names``, each calling table entry i (first: the Python function imported from metaproxy_host)."""
    types = "".join(f"  (type $t{i} (func {_WAT_SIG[abi.ENV_FUNCTIONS[n]]}))\n" for i, n in enumerate(names))
    imports = "".join(f'  (import "metaproxy_host" "{n}" (func $py{i} (type $t{i})))\n' for i, n in enumerate(names))
    funcs = []
    for i, name in enumerate(names):
        arity = len(abi.ENV_FUNCTIONS[name].split(":")[0])
        args = " ".join(f"(local.get {k})" for k in range(arity))
        funcs.append(f'  (func (export "{name}") (type $t{i}) (call_indirect (type $t{i}) {args} (i32.const {i})))\n')
    refs = " ".join(f"$py{i}" for i in range(len(names)))
    return ("(module\n" + types + imports + f'  (table (export "table") {len(names)} funcref)\n'
            + f"  (elem (i32.const 0) func {refs})\n" + "".join(funcs) + ")\n")


_FAST_HEAD = """
  (memory $own (export "buffer") 2 2)
  (func $in_guest (param $ptr i32) (param $size i32) (result i32)
    (i64.le_u (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $size)))
              (i64.mul (i64.extend_i32_u (memory.size $g)) (i64.const 65536))))
"""

_FAST_WRITE = """
  (func $record (param $op i32) (param $m i32) (param $kp i32) (param $ks i32) (param $vp i32) (param $vs i32)
    (result i32)
    (local $w i32) (local $at i32)
    (if (i32.eqz (i32.load $own offset=4 (i32.const 0))) (then (return (i32.const 0))))
    (if (i32.and (i32.ne (local.get $m) (i32.const 0)) (i32.ne (local.get $m) (i32.const 2)))
      (then (return (i32.const 0))))
    (if (i32.eqz (call $in_guest (local.get $kp) (local.get $ks))) (then (return (i32.const 0))))
    (if (i32.eqz (call $in_guest (local.get $vp) (local.get $vs))) (then (return (i32.const 0))))
    (local.set $w (i32.load $own (i32.const 0)))
    (if (i64.gt_u (i64.add (i64.add (i64.extend_i32_u (local.get $w)) (i64.const LOG_START_PLUS_19))
                           (i64.add (i64.extend_i32_u (local.get $ks)) (i64.extend_i32_u (local.get $vs))))
                  (i64.const LOG_END))
      (then (return (i32.const 0))))
    (local.set $at (i32.add (local.get $w) (i32.const LOG_START)))
    (i32.store $own (local.get $at) (local.get $op))
    (i32.store $own offset=4 (local.get $at) (local.get $m))
    (i32.store $own offset=8 (local.get $at) (local.get $ks))
    (i32.store $own offset=12 (local.get $at) (local.get $vs))
    (memory.copy $own $g (i32.add (local.get $at) (i32.const 16)) (local.get $kp) (local.get $ks))
    (memory.copy $own $g (i32.add (i32.add (local.get $at) (i32.const 16)) (local.get $ks)) (local.get $vp)
                 (local.get $vs))
    (i32.store $own (i32.const 0)
      (i32.add (local.get $w)
        (i32.add (i32.const 16) (i32.and (i32.add (i32.add (local.get $ks) (local.get $vs)) (i32.const 3))
                                         (i32.const -4)))))
    (i32.const 1))
"""

_FAST_GIVE = """
  (func $give (param $rc i32) (param $pp i32) (param $sp i32) (result i32)
    (local $n i32) (local $p i32)
    (if (i32.ne (local.get $rc) (i32.const STAGED)) (then (return (local.get $rc))))
    (local.set $n (i32.load $own offset=8 (i32.const 0)))
    (local.set $p (call $alloc (local.get $n)))
    (if (i32.eqz (local.get $p)) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (if (i32.eqz (call $in_guest (local.get $p) (local.get $n))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (if (i32.eqz (call $in_guest (local.get $pp) (i32.const 4))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (if (i32.eqz (call $in_guest (local.get $sp) (i32.const 4))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (memory.copy $g $own (local.get $p) (i32.const STAGE_START) (local.get $n))
    (i32.store $g (local.get $pp) (local.get $p))
    (i32.store $g (local.get $sp) (local.get $n))
    (i32.const 0))
"""


def fast_wat(names: list[str]) -> str:
    """The fast functions for ``names`` (imports: the module's memory and allocator, the Python functions)."""
    staged = [n for n in names if n in STAGED_GETS]
    parts = ["(module\n", '  (import "guest" "memory" (memory $g 0))\n']
    if staged:
        parts.append('  (import "guest" "alloc" (func $alloc (param i32) (result i32)))\n')
    for i, name in enumerate(names):
        parts.append(f'  (import "metaproxy_host" "{name}" (func $py{i} {_WAT_SIG[abi.ENV_FUNCTIONS[name]]}))\n')
    parts.append(_FAST_HEAD)
    if any(n in WRITES for n in names):
        parts.append(_FAST_WRITE.replace("LOG_START_PLUS_19", str(LOG_START + 19))
                     .replace("LOG_START", str(LOG_START)).replace("LOG_END", str(LOG_END)))
    if staged:
        parts.append(_FAST_GIVE.replace("STAGE_START", str(STAGE_START)).replace("STAGED", str(STAGED - 2**32))
                     .replace("INVALID_MEMORY_ACCESS", str(abi.INVALID_MEMORY_ACCESS)))
    for i, name in enumerate(names):
        sig = _WAT_SIG[abi.ENV_FUNCTIONS[name]]
        arity = len(abi.ENV_FUNCTIONS[name].split(":")[0])
        args = " ".join(f"(local.get {k})" for k in range(arity))
        if name in WRITES:
            op = 1 if name == "proxy_add_header_map_value" else 0
            body = (f"(if (call $record (i32.const {op}) {args}) (then (return (i32.const 0))))\n"
                    f"    (call $py{i} {args})")
        else:  # the last two arguments are the (pointer, size) out-pointers
            body = f"(call $give (call $py{i} {args}) (local.get {arity - 2}) (local.get {arity - 1}))"
        parts.append(f'  (func (export "{name}") {sig}\n    {body})\n')
    parts.append(")\n")
    return "".join(parts)


class ShimModules:
    """The compiled router and fast modules for one module's routed imports (compiled once per VM)."""

    def __init__(self, engine: wasmtime.Engine, names: list[str]) -> None:
        self.names = names
        self.router = wasmtime.Module(engine, wasmtime.wat2wasm(router_wat(names)))
        self.fast = wasmtime.Module(engine, wasmtime.wat2wasm(fast_wat(names)))


class ShimBuffer:
    """Python's view of one fast shim instance's memory: the write log, the flags, the staging area."""

    __slots__ = ("view", "words", "_keep")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._keep = memory
        size = memory.data_len(store)
        base = ctypes.addressof(memory.data_ptr(store).contents)
        self.view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B")
        self.words = self.view[:LOG_START].cast("I")


def instantiate_router(linker: wasmtime.Linker, store: wasmtime.Store, shim: ShimModules) -> Any:
    """The router instance for this store, its exports defined in ``linker`` as the ``env`` functions."""
    exports = linker.instantiate(store, shim.router).exports(store)
    for name in shim.names:
        linker.define(store, "env", name, exports[name])
    return exports


def install(linker: wasmtime.Linker, store: wasmtime.Store, shim: ShimModules, router: Any,
            guest_exports: Any, allocator: str | None) -> ShimBuffer:
    """Instantiate the fast module against the started guest and switch the router's table to it."""
    linker.define(store, "guest", "memory", guest_exports["memory"])
    if allocator is not None:
        linker.define(store, "guest", "alloc", guest_exports[allocator])
    fast = linker.instantiate(store, shim.fast).exports(store)
    buffer = ShimBuffer(store, fast["buffer"])
    table = router["table"]
    for index, name in enumerate(shim.names):
        table.set(store, index, fast[name])
    return buffer
