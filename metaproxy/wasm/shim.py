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
  current, another map, a pointer out of bounds, a full log, a NUL) goes to the Python
  function, which applies the log first: what a module can observe is unchanged.
  The log holds, per write, a code letter, the key and the value, each followed
  by a NUL, so Python decodes every pending write with one ``decode`` and one
  ``split`` (a key or value holding a NUL goes to Python instead).
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
from typing import Any

import wasmtime

from metaproxy.wasm import abi

#: The host functions that may be routed through the shim, with their signatures.
WRITES = ("proxy_add_header_map_value", "proxy_replace_header_map_value")
STAGED_GETS = ("proxy_get_header_map_value", "proxy_get_header_map_pairs", "proxy_get_property")
ROUTED = WRITES + STAGED_GETS
#: The get the fast module may answer by itself, from the read cache Python fills at phase entry.
CACHED_GET = "proxy_get_header_map_value"
#: Status a Python host function returns to the fast shim: "the answer is in the staging area".
STAGED = 0xFFFFFF00
#: Shim memory layout (three 64 KiB pages, fixed): words, the write log; the staging area; the read cache
#: (a table of keys per phase, then their values).
#: [0] bytes in the write log (0: no write pending); [1] 0: no request current, 1: a request is current (its
#: writes may be recorded), more: also its read cache is filled: 1 | table << 1 (1 request phase, 2 response
#: phase) | number of cached keys << 8; [2] size of a staged answer; [3] bit i: cached key i has no value.
USED_WORD, STATE_WORD, STAGED_SIZE_WORD, MISSING_WORD = 0, 1, 2, 3  # u32 indices
WORDS_END = 64
#: The write log: per write a code letter, its key, its value, each followed by a NUL (a key or value holding a
#: NUL goes to Python). Code letter: "a" + (1 for an add, else a replace) + (2 for the response map), so
#: "a" replace on the request map, "b" add on it, "c" replace on the response map, "d" add on it.
TEXT_START, TEXT_END = 64, 65536
CODE_LETTER = ord("a")
STAGE_START, STAGE_END = 65536, 131072
STAGE_MAX = STAGE_END - STAGE_START
#: Read cache: per phase, a table of the keys the module read in that phase before, entries of (map type u32,
#: key size u32, key bytes padded to 4), written once per key; the values of the first N keys, each followed
#: by a NUL, written at each entry of the phase (host.AbiHost.fill_cache).
CACHE_TABLES = (131072, 135168)  # request phase, response phase
CACHE_TABLE_SIZE = 4096
CACHE_KEYS_MAX, CACHE_KEY_MAX = 16, 240
CACHE_VALUES_START, CACHE_VALUES_END = 139264, 196608

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
  (memory $own (export "buffer") 3 3)
  (func $in_guest (param $ptr i32) (param $size i32) (result i32)
    (i64.le_u (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $size)))
              (i64.mul (i64.extend_i32_u (memory.size $g)) (i64.const 65536))))
"""

_FAST_WRITE = """
  ;; whether guest [$p, $p + $n) holds a NUL byte (its text could not be told from the separators)
  (func $has_nul (param $p i32) (param $n i32) (result i32)
    (block $none
      (loop $next
        (br_if $none (i32.eqz (local.get $n)))
        (if (i32.eqz (i32.load8_u $g (local.get $p))) (then (return (i32.const 1))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func $record (param $op i32) (param $m i32) (param $kp i32) (param $ks i32) (param $vp i32) (param $vs i32)
    (result i32)
    (local $used i32) (local $at i32)
    (if (i32.eqz (i32.load $own offset=4 (i32.const 0))) (then (return (i32.const 0))))
    (if (i32.and (i32.ne (local.get $m) (i32.const 0)) (i32.ne (local.get $m) (i32.const 2)))
      (then (return (i32.const 0))))
    (if (i32.eqz (call $in_guest (local.get $kp) (local.get $ks))) (then (return (i32.const 0))))
    (if (i32.eqz (call $in_guest (local.get $vp) (local.get $vs))) (then (return (i32.const 0))))
    (local.set $used (i32.load $own (i32.const 0)))
    (if (i64.gt_u (i64.add (i64.add (i64.extend_i32_u (local.get $used)) (i64.const TEXT_START_PLUS_4))
                           (i64.add (i64.extend_i32_u (local.get $ks)) (i64.extend_i32_u (local.get $vs))))
                  (i64.const TEXT_END))
      (then (return (i32.const 0))))
    (if (call $has_nul (local.get $kp) (local.get $ks)) (then (return (i32.const 0))))
    (if (call $has_nul (local.get $vp) (local.get $vs)) (then (return (i32.const 0))))
    (local.set $at (i32.add (local.get $used) (i32.const TEXT_START)))
    (i32.store8 $own (local.get $at) (i32.add (i32.const CODE_LETTER) (i32.or (local.get $op) (local.get $m))))
    (i32.store8 $own offset=1 (local.get $at) (i32.const 0))
    (local.set $at (i32.add (local.get $at) (i32.const 2)))
    (memory.copy $own $g (local.get $at) (local.get $kp) (local.get $ks))
    (local.set $at (i32.add (local.get $at) (local.get $ks)))
    (i32.store8 $own (local.get $at) (i32.const 0))
    (local.set $at (i32.add (local.get $at) (i32.const 1)))
    (memory.copy $own $g (local.get $at) (local.get $vp) (local.get $vs))
    (local.set $at (i32.add (local.get $at) (local.get $vs)))
    (i32.store8 $own (local.get $at) (i32.const 0))
    (i32.store $own (i32.const 0) (i32.sub (i32.add (local.get $at) (i32.const 1)) (i32.const TEXT_START)))
    (i32.const 1))
"""

_FAST_GIVE = """
  (func $give (param $rc i32) (param $pp i32) (param $sp i32) (result i32)
    (if (i32.ne (local.get $rc) (i32.const STAGED)) (then (return (local.get $rc))))
    (call $give_from (i32.const STAGE_START) (i32.load $own offset=8 (i32.const 0)) (local.get $pp) (local.get $sp)))
  ;; copy own [$src, $src + $n) into memory the module allocates, write pointer and size (as _return_bytes)
  (func $give_from (param $src i32) (param $n i32) (param $pp i32) (param $sp i32) (result i32)
    (local $p i32)
    (if (i32.eqz (local.get $n)) (then
      (if (i32.eqz (call $in_guest (local.get $pp) (i32.const 4))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
      (if (i32.eqz (call $in_guest (local.get $sp) (i32.const 4))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
      (i32.store $g (local.get $pp) (i32.const 0))
      (i32.store $g (local.get $sp) (i32.const 0))
      (return (i32.const 0))))
    (local.set $p (call $alloc (local.get $n)))
    (if (i32.eqz (local.get $p)) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (if (i32.eqz (call $in_guest (local.get $p) (local.get $n))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (if (i32.eqz (call $in_guest (local.get $pp) (i32.const 4))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (if (i32.eqz (call $in_guest (local.get $sp) (i32.const 4))) (then (return (i32.const INVALID_MEMORY_ACCESS))))
    (memory.copy $g $own (local.get $p) (local.get $src) (local.get $n))
    (i32.store $g (local.get $pp) (local.get $p))
    (i32.store $g (local.get $sp) (local.get $n))
    (i32.const 0))
"""

#: proxy_get_header_map_value from the read cache; -1: not cached (or a write of the key is pending): ask Python.
_FAST_CACHE = """
  ;; whether own [$a, $a + $n) and guest [$b, $b + $n) hold the same bytes
  (func $same (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u $own (local.get $a)) (i32.load8_u $g (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  ;; the NUL that ends the text at own $p
  (func $token_end (param $p i32) (result i32)
    (block $found
      (loop $next
        (br_if $found (i32.eqz (i32.load8_u $own (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))
  ;; whether the write log holds a write of this key on map $m (not applied yet: the cached value is stale)
  (func $logged (param $m i32) (param $kp i32) (param $ks i32) (result i32)
    (local $pos i32) (local $end i32) (local $key_end i32)
    (local.set $pos (i32.const TEXT_START))
    (local.set $end (i32.add (i32.const TEXT_START) (i32.load $own (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $pos) (local.get $end)))
        (local.set $key_end (call $token_end (i32.add (local.get $pos) (i32.const 2))))
        (if (i32.and (i32.eq (i32.and (i32.sub (i32.load8_u $own (local.get $pos)) (i32.const CODE_LETTER))
                                      (i32.const 2))
                             (local.get $m))
                     (i32.eq (i32.sub (local.get $key_end) (i32.add (local.get $pos) (i32.const 2))) (local.get $ks)))
          (then (if (call $same (i32.add (local.get $pos) (i32.const 2)) (local.get $kp) (local.get $ks))
                  (then (return (i32.const 1))))))
        (local.set $pos (i32.add (call $token_end (i32.add (local.get $key_end) (i32.const 1))) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func $cached_get (param $m i32) (param $kp i32) (param $ks i32) (param $pp i32) (param $sp i32) (result i32)
    (local $w i32) (local $n i32) (local $i i32) (local $at i32) (local $size i32) (local $v i32)
    (local.set $w (i32.load $own offset=4 (i32.const 0)))
    (local.set $n (i32.shr_u (local.get $w) (i32.const 8)))
    (if (i32.eqz (local.get $n)) (then (return (i32.const -1))))
    (if (i32.eqz (call $in_guest (local.get $kp) (local.get $ks))) (then (return (i32.const -1))))
    (local.set $at (select (i32.const TABLE_REQUEST) (i32.const TABLE_RESPONSE)
                           (i32.eq (i32.and (local.get $w) (i32.const 255)) (i32.const 3))))
    (block $hit
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $n)) (then (return (i32.const -1))))
        (local.set $size (i32.load $own offset=4 (local.get $at)))
        (if (i32.and (i32.eq (i32.load $own (local.get $at)) (local.get $m)) (i32.eq (local.get $size) (local.get $ks)))
          (then (br_if $hit (call $same (i32.add (local.get $at) (i32.const 8)) (local.get $kp) (local.get $ks)))))
        (local.set $at (i32.add (local.get $at)
          (i32.add (i32.const 8) (i32.and (i32.add (local.get $size) (i32.const 3)) (i32.const -4)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (call $logged (local.get $m) (local.get $kp) (local.get $ks)) (then (return (i32.const -1))))
    (if (i32.and (i32.load $own offset=12 (i32.const 0)) (i32.shl (i32.const 1) (local.get $i)))
      (then (return (i32.const NOT_FOUND))))
    (local.set $v (i32.const VALUES_START))
    (block $there
      (loop $skip
        (br_if $there (i32.eqz (local.get $i)))
        (local.set $v (i32.add (call $token_end (local.get $v)) (i32.const 1)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br $skip)))
    (call $give_from (local.get $v) (i32.sub (call $token_end (local.get $v)) (local.get $v))
                     (local.get $pp) (local.get $sp)))
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
        parts.append(_FAST_WRITE.replace("TEXT_START_PLUS_4", str(TEXT_START + 4))
                     .replace("TEXT_START", str(TEXT_START)).replace("TEXT_END", str(TEXT_END))
                     .replace("CODE_LETTER", str(CODE_LETTER)))
    if staged:
        parts.append(_FAST_GIVE.replace("STAGE_START", str(STAGE_START)).replace("STAGED", str(STAGED - 2**32))
                     .replace("INVALID_MEMORY_ACCESS", str(abi.INVALID_MEMORY_ACCESS)))
    if CACHED_GET in staged:
        parts.append(_FAST_CACHE.replace("TEXT_START", str(TEXT_START)).replace("CODE_LETTER", str(CODE_LETTER))
                     .replace("TABLE_REQUEST", str(CACHE_TABLES[0])).replace("TABLE_RESPONSE", str(CACHE_TABLES[1]))
                     .replace("VALUES_START", str(CACHE_VALUES_START)).replace("NOT_FOUND", str(abi.NOT_FOUND)))
    for i, name in enumerate(names):
        sig = _WAT_SIG[abi.ENV_FUNCTIONS[name]]
        arity = len(abi.ENV_FUNCTIONS[name].split(":")[0])
        args = " ".join(f"(local.get {k})" for k in range(arity))
        if name in WRITES:
            op = 1 if name == "proxy_add_header_map_value" else 0
            body = (f"(if (call $record (i32.const {op}) {args}) (then (return (i32.const 0))))\n"
                    f"    (call $py{i} {args})")
        elif name == CACHED_GET:  # from the read cache when the key is in it, else as the other gets
            body = (f"(local.set {arity} (call $cached_get {args}))\n"
                    f"    (if (i32.ne (local.get {arity}) (i32.const -1)) (then (return (local.get {arity}))))\n"
                    f"    (call $give (call $py{i} {args}) (local.get {arity - 2}) (local.get {arity - 1}))")
            sig += " (local i32)"
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
        self.words = self.view[:WORDS_END].cast("I")


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
