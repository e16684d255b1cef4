"""The host's fast paths keep Proxy-Wasm semantics: batched callbacks, skipped exports, growing memory, forks."""

from __future__ import annotations

import struct

from metaproxy.wasm import abi
from metaproxy.wasm.vm import FORKS
from tests.wasm.conftest import make_filter, request, respond

# Every callback appends (context id * 10 + code) to an i32 array at 1024: create 1, request 2, response 3,
# done 4, log 5, delete 6. Context 2's on_done says "not yet" once; context 3's request then calls
# proxy_done on its behalf (through proxy_set_effective_context), as a module waiting for something would.
TRACE_IMPORTS = """
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
"""
TRACE = """
  (global $n (export "n") (mut i32) (i32.const 0))
  (global $done_rc (export "done_rc") (mut i32) (i32.const -1))
  (func $event (param $id i32) (param $code i32)
    (i32.store (i32.add (i32.const 1024) (i32.shl (global.get $n) (i32.const 2)))
               (i32.add (i32.mul (local.get $id) (i32.const 10)) (local.get $code)))
    (global.set $n (i32.add (global.get $n) (i32.const 1))))
  (func (export "proxy_on_context_create") (param $id i32) (param i32) (call $event (local.get $id) (i32.const 1)))
  (func (export "proxy_on_request_headers") (param $id i32) (param i32 i32) (result i32)
    (call $event (local.get $id) (i32.const 2))
    (if (i32.eq (local.get $id) (i32.const 3))
      (then (drop (call $effective (i32.const 2)))
            (global.set $done_rc (call $done))
            (drop (call $effective (i32.const 3)))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $id i32) (param i32 i32) (result i32)
    (call $event (local.get $id) (i32.const 3)) (i32.const 0))
  (func (export "proxy_on_done") (param $id i32) (result i32)
    (call $event (local.get $id) (i32.const 4))
    (i32.ne (local.get $id) (i32.const 2)))
  (func (export "proxy_on_log") (param $id i32) (call $event (local.get $id) (i32.const 5)))
  (func (export "proxy_on_delete") (param $id i32) (call $event (local.get $id) (i32.const 6)))
"""


def trace_of(f) -> list[int]:
    vm = f._vm
    n = vm.instance.exports(vm.store)["n"].value(vm.store)
    return list(struct.unpack(f"<{n}I", vm.host.memory.read(1024, 4 * n)))


def test_batched_callbacks_run_in_envoys_order_and_proxy_done_finishes_a_waiting_stream(wat_module):
    f = make_filter(wat_module(TRACE, imports=TRACE_IMPORTS))
    assert trace_of(f) == [11]                       # the root context, at start
    first = request()
    assert f.on_request(first) is None
    f.on_response(respond(first))                    # context 2: its on_done says "not yet"
    assert trace_of(f)[1:] == [21, 22, 23, 24]
    assert 2 in f._vm.host.streams                   # still addressable until proxy_done
    second = request()
    assert f.on_request(second) is None              # context 3 calls proxy_done for context 2
    f.on_response(respond(second))
    assert trace_of(f)[5:] == [31, 32, 33, 34, 35, 36, 25, 26]
    vm = f._vm
    assert vm.instance.exports(vm.store)["done_rc"].value(vm.store) == abi.OK
    assert f._vm.host.streams == {} and not f._vm.host.awaiting_done


def test_a_request_dropped_without_response_is_finished_in_one_batch(wat_module):
    f = make_filter(wat_module(TRACE.replace("(i32.ne (local.get $id) (i32.const 2))", "(i32.const 1)"),
                               imports=TRACE_IMPORTS))
    ctx = request()
    assert f.on_request(ctx) is None
    del ctx                                          # no response: finished on the next entry
    assert f.on_request(request()) is None
    assert trace_of(f)[1:] == [21, 22, 24, 25, 26, 31, 32]


RESPONSE_ONLY = """
  (global $responses (export "responses") (mut i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (global.set $responses (i32.add (global.get $responses) (i32.const 1))) (i32.const 0))
"""

DELETE_ONLY = """
  (global $deletes (export "deletes") (mut i32) (i32.const 0))
  (func (export "proxy_on_delete") (param i32)
    (global.set $deletes (i32.add (global.get $deletes) (i32.const 1))))
"""


def global_of(f, name: str) -> int:
    vm = f._vm
    return vm.instance.exports(vm.store)[name].value(vm.store)


def test_a_module_without_request_callbacks_still_gets_its_response_callback(wat_module):
    f = make_filter(wat_module(RESPONSE_ONLY))
    assert not f._vm.has_request and f._vm.tracks_streams
    ctx = request()
    assert f.on_request(ctx) is None
    f.on_response(respond(ctx))
    assert global_of(f, "responses") == 1
    assert f._vm.host.streams == {}


def test_a_module_with_only_on_delete_gets_it_once_per_request(wat_module):
    f = make_filter(wat_module(DELETE_ONLY))
    answered = request()
    assert f.on_request(answered) is None
    f.on_response(respond(answered))
    dropped = request()
    assert f.on_request(dropped) is None
    del dropped
    assert f.on_request(request()) is None           # finishes the dropped one first
    assert global_of(f, "deletes") == 2


# on_request_headers grows memory by one page (64 KiB), writes a key and a value in the new page, then
# passes those pointers to the host: the host's cached size is stale and must be renewed, not refused.
GROW_IMPORTS = """
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
"""
GROW = """
  (global $rc (export "rc") (mut i32) (i32.const -1))
  (global $get_rc (export "get_rc") (mut i32) (i32.const -1))
  (data (i32.const 512) "x-grownmethodx-copy")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $page i32)
    (local.set $page (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))
    (memory.copy (local.get $page) (i32.const 512) (i32.const 7))
    (i64.store (i32.add (local.get $page) (i32.const 16)) (i64.const 0x0073656c62617267))  ;; "grables\\0"
    (global.set $rc (call $replace (i32.const 0) (local.get $page) (i32.const 7)
                                   (i32.add (local.get $page) (i32.const 16)) (i32.const 7)))
    ;; get "method": the allocator below grows memory again; the host writes the value into the new page
    (global.set $get_rc (call $get (i32.const 0) (i32.const 519) (i32.const 6) (i32.const 600) (i32.const 604)))
    (drop (call $replace (i32.const 0) (i32.const 525) (i32.const 6)
                         (i32.load (i32.const 600)) (i32.load (i32.const 604))))
    (i32.const 0))
"""
GROWING_ALLOCATOR = """
  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))
"""


def test_memory_grown_during_a_callback_is_read_and_written_at_the_right_place(wat_module):
    f = make_filter(wat_module(GROWING_ALLOCATOR + GROW, prelude=False, imports=GROW_IMPORTS))
    for method in ("first", "second"):           # twice: the second runs with a cache renewed mid-request
        ctx = request(method=method)
        assert f.on_request(ctx) is None
        assert global_of(f, "rc") == abi.OK and global_of(f, "get_rc") == abi.OK
        assert ctx.mutation["x-grown"] == "grables"  # key and value read from the page grown just before
        assert ctx.mutation["x-copy"] == method        # the value the host wrote into the allocator's new page
    assert f._vm.host.memory.size() == 6 * 65536
    assert f._vm.generation == 0


def test_a_pointer_past_the_grown_memory_is_still_refused(wat_module):
    body = GROW.replace("(local.get $page) (i32.const 7)\n", "(i32.const 0x7fff0000) (i32.const 7)\n", 1)
    f = make_filter(wat_module(GROWING_ALLOCATOR + body, prelude=False, imports=GROW_IMPORTS))
    ctx = request()
    assert f.on_request(ctx) is None
    assert global_of(f, "rc") == abi.INVALID_MEMORY_ACCESS


def test_a_vm_made_before_a_fork_is_replaced_in_the_child(wat_module):
    f = make_filter(wat_module(RESPONSE_ONLY))
    parent_vm = f._vm
    FORKS[0] += 1                                    # what os.register_at_fork does in a forked child
    try:
        ctx = request()
        assert f.on_request(ctx) is None
        assert f._vm is not parent_vm and f._vm.forks == FORKS[0]
        f.on_response(respond(ctx))
        assert global_of(f, "responses") == 1        # on the child's own instance
    finally:
        FORKS[0] -= 1


def test_the_hosts_header_write_stores_what_mutation_setitem_stores():
    from metaproxy.message import Mutation
    from metaproxy.wasm.host import _store

    for key, value in (("x-mesh", "v1"), ("Mixed-Case", "Ünïcode ✓"), ("", ""), ("k", "a,b")):
        through_class, through_host = Mutation(), Mutation()
        through_class[key] = value
        _store(through_host, key, value)
        assert dict(through_host) == dict(through_class)
        assert [type(x) for x in through_host.items()] == [type(x) for x in through_class.items()]
