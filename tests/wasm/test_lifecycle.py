"""Context lifecycle as Envoy drives it, ticks, unimplemented and unknown imports, WASI linking."""

from __future__ import annotations

import time

import gevent

from metaproxy.message import ErrorType
from metaproxy.wasm import abi
from tests.wasm.conftest import make_filter, request, respond

LIFECYCLE_IMPORTS = """
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick_period (param i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_future_function" (func $future (param i32) (result i32)))
"""

LIFECYCLE = """
  (global $created (export "created") (mut i32) (i32.const 0))
  (global $responses (export "responses") (mut i32) (i32.const 0))
  (global $dones (export "dones") (mut i32) (i32.const 0))
  (global $logs (export "logs") (mut i32) (i32.const 0))
  (global $deletes (export "deletes") (mut i32) (i32.const 0))
  (global $ticks (export "ticks") (mut i32) (i32.const 0))
  (global $http_rc (export "http_rc") (mut i32) (i32.const -1))
  (global $future_rc (export "future_rc") (mut i32) (i32.const -1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick_period (i32.const 20))) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32)
    (global.set $created (i32.add (global.get $created) (i32.const 1))))
  (func (export "proxy_on_request_headers") (param $id i32) (param i32 i32) (result i32)
    (global.set $http_rc (call $http (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                                     (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (global.set $future_rc (call $future (i32.const 1)))
    ;; every third context id is refused locally with 429, every fifth pauses without a reply
    (if (i32.eqz (i32.rem_u (local.get $id) (i32.const 3)))
      (then (drop (call $local (i32.const 429) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                               (i32.const 0) (i32.const 0) (i32.const -1)))
            (return (i32.const 1))))
    (if (i32.eqz (i32.rem_u (local.get $id) (i32.const 5))) (then (return (i32.const 1))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (global.set $responses (i32.add (global.get $responses) (i32.const 1))) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32)
    (global.set $dones (i32.add (global.get $dones) (i32.const 1))) (i32.const 1))
  (func (export "proxy_on_log") (param i32)
    (global.set $logs (i32.add (global.get $logs) (i32.const 1))))
  (func (export "proxy_on_delete") (param i32)
    (global.set $deletes (i32.add (global.get $deletes) (i32.const 1))))
  (func (export "proxy_on_tick") (param i32)
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1))))
"""


def globals_of(f) -> dict[str, int]:
    vm = f._vm
    exports = vm.instance.exports(vm.store)
    names = ("created", "responses", "dones", "logs", "deletes", "ticks", "http_rc", "future_rc")
    return {name: exports[name].value(vm.store) for name in names}


def test_lifecycle_of_answered_refused_paused_and_dropped_requests(wat_module):
    f = make_filter(wat_module(LIFECYCLE, imports=LIFECYCLE_IMPORTS))
    assert globals_of(f)["created"] == 1  # the root context
    ctx = request()                                  # context 2: answered
    assert f.on_request(ctx) is None
    f.on_response(respond(ctx))
    g = globals_of(f)
    assert (g["created"], g["responses"], g["dones"], g["logs"], g["deletes"]) == (2, 1, 1, 1, 1)
    reply = f.on_request(request())                  # context 3: local reply, finished at once
    assert reply.kind is ErrorType.OVER_LIMIT
    assert globals_of(f)["deletes"] == 2
    ctx = request()                                  # context 4: continues, then dropped without response
    assert f.on_request(ctx) is None
    del ctx
    reply = f.on_request(request())                  # context 5: pauses; the dropped one is finished first
    assert reply.kind is ErrorType.UNSPECIFIED and "paused" in reply.message
    g = globals_of(f)
    assert (g["created"], g["responses"], g["dones"], g["deletes"]) == (5, 1, 4, 4)
    assert g["http_rc"] == abi.UNIMPLEMENTED and g["future_rc"] == abi.UNIMPLEMENTED
    assert f._vm.host.streams == {}


def test_tick_period_set_by_the_module_drives_proxy_on_tick(wat_module):
    f = make_filter(wat_module(LIFECYCLE, imports=LIFECYCLE_IMPORTS))
    try:
        deadline = time.monotonic() + 5
        while globals_of(f)["ticks"] < 3 and time.monotonic() < deadline:
            gevent.sleep(0.02)  # the timer is a greenlet: it runs while this one sleeps
        assert globals_of(f)["ticks"] >= 3
    finally:
        f.close()
    ticks = globals_of(f)["ticks"]
    gevent.sleep(0.1)
    assert globals_of(f)["ticks"] == ticks  # close() stops the timer


WASI_IMPORTS = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_unstable" "proc_exit" (func $exit (param i32)))
"""

WASI = """
  (global $prestat_rc (export "prestat_rc") (mut i32) (i32.const -1))
  (global $open_rc (export "open_rc") (mut i32) (i32.const -1))
  (data (i32.const 256) "wasi says hi\\n")
  (func (export "_start")
    (i32.store (i32.const 512) (i32.const 256))
    (i32.store (i32.const 516) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 520)))
    (global.set $prestat_rc (call $prestat (i32.const 3) (i32.const 600)))
    (global.set $open_rc (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                              (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 600))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $exit (i32.const 3)) (i32.const 0))
"""


def test_wasi_imports_link_under_both_names_and_proc_exit_fails_the_request(wat_module, caplog):
    with caplog.at_level("INFO", logger="metaproxy.wasm"):
        f = make_filter(wat_module(WASI, imports=WASI_IMPORTS))
    assert any(r.getMessage().endswith("wasi says hi") for r in caplog.records)
    exports = f._vm.instance.exports(f._vm.store)
    assert exports["prestat_rc"].value(f._vm.store) == abi.WASI_BADF  # no preopened directories
    assert exports["open_rc"].value(f._vm.store) == abi.WASI_BADF     # no filesystem at all
    reply = f.on_request(request())
    assert reply is not None and "exit" in reply.message


FINISH_TRAPS = """
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_done") (param $id i32) (result i32)
    (if (i32.eq (local.get $id) (i32.const 2)) (then unreachable))
    (i32.const 1))
"""


def test_a_trap_while_finishing_a_dropped_request_does_not_fail_the_next_one(wat_module, caplog):
    f = make_filter(wat_module(FINISH_TRAPS))
    ctx = request()                  # context 2: its proxy_on_done traps
    assert f.on_request(ctx) is None
    del ctx                          # dropped without a response: finished on the next entry
    with caplog.at_level("ERROR", logger="metaproxy.wasm"):
        assert f.on_request(request()) is None  # runs on a rebuilt instance
    assert "trapped finishing a request" in caplog.text
    assert f._vm.generation == 1


LOG_IMPORTS = '(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))'
LOGGER = """
  (global $rc (export "rc") (mut i32) (i32.const -1))
  (data (i32.const 300) "debug line")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 1) (i32.const 300) (i32.const 10)))
    (global.set $rc (call $log (i32.const 9) (i32.const 300) (i32.const 10)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) unreachable)
"""


def test_proxy_log_below_the_level_stays_in_wasm_and_survives_rebuilds(wat_module, caplog):
    path = wat_module(LOGGER, imports=LOG_IMPORTS)
    with caplog.at_level("INFO", logger="metaproxy.wasm"):
        quiet = make_filter(path)
        quiet.on_request(request())
    assert "debug line" not in caplog.text
    with caplog.at_level("DEBUG", logger="metaproxy.wasm"):
        chatty = make_filter(path)
        ctx = request()
        chatty.on_request(ctx)
        assert "wasm[m0] debug line" in caplog.text
        chatty.on_response(respond(ctx))  # traps: the next request runs on a rebuilt instance
        caplog.clear()
        chatty.on_request(request())
        assert "wasm[m0] debug line" in caplog.text and chatty._vm.generation == 1
    vm = chatty._vm
    assert vm.instance.exports(vm.store)["rc"].value(vm.store) == abi.BAD_ARGUMENT  # level 9 reaches the host
