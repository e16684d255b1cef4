"""The WebAssembly shim (metaproxy/wasm/shim.py): recorded header writes and staged answers behave exactly
like the plain Python host functions."""

from __future__ import annotations

import logging
import struct

import pytest

from metaproxy.stats import StatsStore
from metaproxy.wasm import abi
from metaproxy.wasm.filter import parse_options
from metaproxy.wasm.host import Stream
from metaproxy.wasm.metrics import MetricRegistry
from metaproxy.wasm.vm import VmSpec, WasmVm
from tests.wasm.conftest import env, request, respond, sample, wat_prelude

REQ, RESP = abi.MAP_REQUEST_HEADERS, abi.MAP_RESPONSE_HEADERS
P5 = "(param i32 i32 i32 i32 i32) (result i32)"
#: A module that forwards to the routed host functions, and runs short sequences in one guest call.
DRIVER = f"""
(module
  (import "env" "proxy_get_header_map_value" (func $get {P5}))
  (import "env" "proxy_add_header_map_value" (func $add {P5}))
  (import "env" "proxy_replace_header_map_value" (func $replace {P5}))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
{wat_prelude(pages=8, heap_start=200000)}
  (func (export "get") {P5} (call $get (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "add") {P5} (call $add (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "replace") {P5}
    (call $replace (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "pairs") (param i32 i32 i32) (result i32) (call $pairs (local.get 0) (local.get 1) (local.get 2)))
  (func (export "prop") (param i32 i32 i32 i32) (result i32)
    (call $prop (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  ;; add(key, value) then get(key): a read in the same call sees the write
  (func (export "add_then_get") (param $kp i32) (param $ks i32) (param $vp i32) (param $vs i32) (param $pp i32)
    (param $sp i32) (result i32)
    (drop (call $add (i32.const 0) (local.get $kp) (local.get $ks) (local.get $vp) (local.get $vs)))
    (call $get (i32.const 0) (local.get $kp) (local.get $ks) (local.get $pp) (local.get $sp)))
  ;; replace key=value on the current context, switch to context $other, replace key=key there
  (func (export "write_switch_write") (param $kp i32) (param $ks i32) (param $vp i32) (param $vs i32)
    (param $other i32) (result i32)
    (drop (call $replace (i32.const 0) (local.get $kp) (local.get $ks) (local.get $vp) (local.get $vs)))
    (drop (call $effective (local.get $other)))
    (call $replace (i32.const 0) (local.get $kp) (local.get $ks) (local.get $kp) (local.get $ks)))
)
"""


class Driver:
    """Calls the driver module's exports the way a request phase does (current stream, writes applied after)."""

    def __init__(self, path: str, shim: bool) -> None:
        spec = VmSpec(path, root_id="shim", plugin_name="shim", host_shim=shim)
        self.vm = WasmVm(spec, MetricRegistry(StatsStore(), "wasm.shim"), logging.getLogger("metaproxy.wasm"))
        self.host = self.vm.host
        self.exports = self.vm.instance.exports(self.vm.store)
        self.next = 1024

    def put(self, data: bytes | str) -> tuple[int, int]:
        data = data.encode() if isinstance(data, str) else data
        ptr, self.next = self.next, self.next + len(data) + 8
        self.host.sync_memory()
        assert self.host.memory.write(ptr, data)
        return ptr, len(data)

    def out(self) -> tuple[int, int]:
        ptr, self.next = self.next, self.next + 8
        self.host.sync_memory()
        self.host.memory.write(ptr, b"\xee" * 8)
        return ptr, ptr + 4

    def returned(self, out: tuple[int, int]) -> bytes:
        self.host.sync_memory()
        ptr, size = struct.unpack("<II", self.host.memory.read(out[0], 8))
        return self.host.memory.read(ptr, size)

    def on(self, stream: Stream | None) -> Driver:
        if stream is not None:
            self.host.streams[stream.context_id] = stream
        self.host.set_current(stream)
        return self

    def call(self, name: str, *args: int) -> int:
        rc = self.exports[name](self.vm.store, *args)
        if self.host.words[0]:  # what the VM does when a guest call returns
            self.host.apply_writes()
        return rc

    def get(self, map_type: int, key: bytes | str, *, out: tuple[int, int] | None = None) -> tuple[int, bytes | None]:
        out = out or self.out()
        rc = self.call("get", map_type, *self.put(key), *out)
        return rc, self.returned(out) if rc == abi.OK else None


@pytest.fixture
def drivers(wat_module):
    path = wat_module(DRIVER.strip()[len("(module"):-1], prelude=False)
    return Driver(path, shim=True), Driver(path, shim=False)


def script(d: Driver) -> list:
    """Every kind of call the shim answers, and the edge cases it hands to Python; the observable results."""
    seen: list = []
    ctx = request("sayHello", **{"x-user": "alice"})
    d.on(Stream(2, ctx, d.vm.generation))
    seen.append(d.call("replace", REQ, *d.put("x-user"), *d.put("bob")))
    seen.append(d.call("add", REQ, *d.put("x-new"), *d.put("1")))
    seen.append(d.call("add", REQ, *d.put("x-new"), *d.put("2")))  # folded: "1,2"
    seen.append(d.call("add", REQ, *d.put("x-bin"), *d.put(b"\xff\xfe ok")))  # decoded with replacement
    seen.append(d.call("add", abi.MAP_REQUEST_TRAILERS, *d.put("k"), *d.put("v")))  # NOT_FOUND
    seen.append(d.call("replace", 99, *d.put("k"), *d.put("v")))  # BAD_ARGUMENT
    seen.append(d.call("replace", REQ, *d.put("k"), 0xFFFFFF00, 64))  # INVALID_MEMORY_ACCESS
    seen.append(d.call("replace", REQ, *d.put("x-big"), *d.put("b" * 70000)))  # larger than the log
    seen.append(d.call("replace", REQ, *d.put("x-nul"), *d.put(b"a\0b")))  # a NUL: not recorded, to Python
    seen.append(d.call("add", RESP, *d.put("x-early-add"), *d.put("1")))  # response map, before the response
    seen.append(d.call("replace", RESP, *d.put("x-early"), *d.put("r")))  # no response yet: the mutation only
    seen += [d.get(REQ, "x-user"), d.get(REQ, "x-new"), d.get(REQ, "method"), d.get(REQ, "absent"),
             d.get(REQ, "x-bin"), d.get(abi.MAP_REQUEST_TRAILERS, "k"), d.get(REQ, "method", out=(0xFFFFFF00, 8))]
    out = d.out()
    seen.append(d.call("pairs", REQ, *out))
    seen.append(list(abi.deserialize_pairs(d.returned(out))))
    out = d.out()
    seen.append(d.call("prop", *d.put("metaprotocol.x-new"), *out))
    seen.append(d.returned(out))
    out = d.out()
    seen.append(d.call("add_then_get", *d.put("x-seq"), *d.put("s"), *out))
    seen.append(d.returned(out))
    respond(ctx, status="ok")
    seen.append(d.call("replace", RESP, *d.put("status"), *d.put("rewritten")))
    seen.append(d.get(RESP, "status"))
    seen.append((dict(ctx.mutation), dict(ctx.response_mutation)))
    d.on(None)  # the root context: no header maps
    seen.append(d.call("replace", REQ, *d.put("x-root"), *d.put("1")))
    seen.append(d.get(REQ, "method"))
    return seen


def test_the_shim_answers_exactly_what_the_python_host_functions_answer(drivers):
    fast, plain = drivers
    assert fast.host.shim is not None and plain.host.shim is None
    assert script(fast) == script(plain)


def test_header_writes_are_recorded_in_webassembly_and_applied_in_order(drivers):
    fast, _ = drivers
    ctx = request()
    fast.on(Stream(2, ctx, fast.vm.generation))
    assert fast.exports["add"](fast.vm.store, REQ, *fast.put("x-a"), *fast.put("1")) == abi.OK
    assert fast.exports["replace"](fast.vm.store, REQ, *fast.put("x-a"), *fast.put("2")) == abi.OK
    assert fast.exports["add"](fast.vm.store, REQ, *fast.put("x-a"), *fast.put("3")) == abi.OK
    assert fast.host.words[0] > 0 and not ctx.mutation  # recorded, not applied: no call into Python
    fast.host.apply_writes()
    assert ctx.mutation == {"x-a": "2,3"} and fast.host.words[0] == 0


def test_a_read_in_the_same_call_sees_the_recorded_write(drivers):
    for d in drivers:
        ctx = request()
        d.on(Stream(2, ctx, d.vm.generation))
        out = d.out()
        assert d.call("add_then_get", *d.put("x-seq"), *d.put("v1"), *out) == abi.OK
        assert d.returned(out) == b"v1"


def test_switching_the_effective_context_applies_pending_writes_to_the_earlier_request(drivers):
    for d in drivers:
        first, second = request(), request()
        d.host.streams[3] = Stream(3, second, d.vm.generation)
        d.on(Stream(2, first, d.vm.generation))
        assert d.call("write_switch_write", *d.put("x-k"), *d.put("v"), 3) == abi.OK
        assert first.mutation == {"x-k": "v"}
        assert second.mutation == {"x-k": "x-k"}
        d.on(None)


def test_no_writes_are_recorded_outside_a_request(drivers):
    fast, _ = drivers
    fast.on(None)
    assert fast.exports["replace"](fast.vm.store, REQ, *fast.put("x"), *fast.put("1")) == abi.NOT_FOUND
    assert fast.host.words[0] == 0


def test_the_assemblyscript_sample_gives_the_same_requests_with_and_without_the_shim():
    results = []
    for shim in (True, False):
        spec = VmSpec(sample("as_filter"), root_id="as_filter", plugin_name="as", plugin_config=b"cfg",
                      host_shim=shim)
        vm = WasmVm(spec, MetricRegistry(StatsStore(), "wasm.as"), logging.getLogger("metaproxy.wasm"))
        assert (vm.host.shim is not None) is shim
        seen = []
        for i in range(3):
            ctx = request("sayHello", request_id=i)
            stream, reply = vm.request_headers(ctx)
            vm.response_headers(stream, respond(ctx))
            seen.append((reply, dict(ctx.mutation), dict(ctx.response_mutation)))
        denied = request(**{"x-as-deny": "yes"})
        _, reply = vm.request_headers(denied)
        seen.append((reply.kind, str(reply), dict(denied.mutation)))
        results.append(seen)
    assert results[0] == results[1]
    assert results[0][0][1] == {"x-wasm-as": "cfg", "x-wasm-as-method": "sayHello"}
    assert results[0][0][2] == {"x-wasm-as-response": "sayHello"}


def test_a_module_without_an_allocator_still_has_its_writes_recorded(wat_module):
    body = (f'(import "env" "proxy_replace_header_map_value" (func $r {P5})) (memory (export "memory") 1) '
            '(func (export "proxy_abi_version_0_2_1")) '
            f'(func (export "w") {P5} (call $r (local.get 0) (local.get 1) (local.get 2) (local.get 3) '
            "(local.get 4)))")
    d = Driver(wat_module(body, prelude=False), shim=True)
    assert d.vm._shim is not None and d.vm._shim.names == ["proxy_replace_header_map_value"]
    ctx = request()
    d.on(Stream(2, ctx, d.vm.generation))
    assert d.call("w", REQ, *d.put("x-a"), *d.put("1")) == abi.OK
    assert ctx.mutation == {"x-a": "1"}


def test_the_shim_can_be_turned_off_in_the_filter_config():
    spec, _, _ = parse_options({"module": sample("add_header")}, env())
    assert spec.host_shim is True
    spec, _, _ = parse_options({"module": sample("add_header"), "vm_config": {"host_shim": False}}, env())
    assert spec.host_shim is False
    with pytest.raises(ValueError, match="host_shim"):
        parse_options({"module": sample("add_header"), "vm_config": {"host_shim": "maybe"}}, env())


def enter(d: Driver, ctx, phase: int = 0) -> Stream:
    """What the VM does at a phase entry: the request current, the read cache filled."""
    stream = Stream(2, ctx, d.vm.generation)
    d.on(stream)
    d.host.phase = phase
    if d.host.cache_keys[phase]:
        d.host.fill_cache(ctx, phase)
    return stream


def cached_reads(d: Driver) -> list:
    """Reads of keys read before, across requests and phases; the observable results."""
    seen: list = []
    for method, extra in (("first", {}), ("second", {"x-opt": ""}), ("third", {"x-opt": "set"})):
        ctx = request(method, **extra)
        enter(d, ctx, 0)
        seen += [d.get(REQ, "method"), d.get(REQ, "x-opt"), d.get(REQ, "request_id"), d.get(RESP, "x-r")]
        out = d.out()
        seen.append((d.call("add_then_get", *d.put("method"), *d.put("mine"), *out), d.returned(out)))
        seen.append(d.get(REQ, "method"))  # after the write was applied
        respond(ctx, **{"x-r": method})
        enter(d, ctx, 1)
        seen += [d.get(RESP, "x-r"), d.get(REQ, "method"), d.get(REQ, "x-opt", out=(0xFFFFFF00, 8))]
        seen.append((dict(ctx.mutation), dict(ctx.response_mutation)))
        d.on(None)
    return seen


def test_reads_of_keys_read_before_are_answered_like_the_python_host_function(drivers):
    fast, plain = drivers
    assert cached_reads(fast) == cached_reads(plain)
    assert {key for _, key in fast.host.cache_keys[0]} == {"method", "x-opt", "request_id", "x-r"}
    assert fast.host.cache_keys[0][3] == (RESP, "x-r")


def test_a_cached_read_does_not_call_python(drivers):
    fast, _ = drivers
    enter(fast, request("one"), 0)
    assert fast.get(REQ, "method") == (abi.OK, b"one")  # Python answers, and learns the key
    ctx = request("two", **{"x-nul": "a\0b"})
    enter(fast, ctx, 0)
    assert fast.host.words[1] > 1  # the read cache is filled
    ctx.metadata["method"] = "changed behind the host's back"  # only Python would see this
    assert fast.get(REQ, "method") == (abi.OK, b"two")
    fast.host.words[1] = 1  # no cache: Python answers
    assert fast.get(REQ, "method") == (abi.OK, b"changed behind the host's back")
    fast.get(REQ, "x-nul")  # learned; its value holds a NUL, so no cache is written for it
    enter(fast, ctx, 0)
    assert fast.host.words[1] == 1 and fast.get(REQ, "x-nul") == (abi.OK, b"a\0b")
