"""An instance whose memory only grows is renewed between requests before it reaches memory_limit (filter.py):
no request fails, unlike the trap the cap would otherwise cause."""

from __future__ import annotations

from metaproxy.stats import StatsStore
from metaproxy.wasm.filter import WasmFilter
from tests.wasm.conftest import env, request, respond

#: Grows its memory by one 64 KiB page on every request (as a leaking SDK runtime does, faster); traps when the
#: Store refuses to grow it. Exports proxy_on_response_headers, so a request without a response stays in flight.
GROWER = """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (unreachable)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
"""


def grower(wat_module) -> tuple[WasmFilter, StatsStore]:
    stats = StatsStore()
    f = WasmFilter({"module": wat_module(GROWER), "plugin_name": "grower",
                    "vm_config": {"memory_limit": "2MiB"}}, env(stats=stats))
    return f, stats


def run(f: WasmFilter, ctx) -> object:
    f._vm._armed_until = 0.0  # the memory check runs with the deadline renewal (every timeout/4): now
    reply = f.on_request(ctx)
    if reply is None:
        f.on_response(respond(ctx))
    return reply


def test_a_growing_instance_is_renewed_before_the_cap_and_no_request_fails(wat_module):
    f, stats = grower(wat_module)
    replies = [run(f, request(request_id=i)) for i in range(100)]  # 32 pages fit: the cap is hit ~3 times
    assert replies == [None] * 100
    assert stats.counter("wasm.grower", "renewals").value >= 3
    assert stats.counter("wasm.grower", "traps").value == 0
    assert f._vm.generation >= 3


def test_without_the_check_the_cap_fails_a_request(wat_module):
    f, stats = grower(wat_module)
    replies = [f.on_request(request(request_id=i)) for i in range(40)]  # the check never runs in time
    assert any(r is not None and "memory_limit" in r.message for r in replies)
    assert stats.counter("wasm.grower", "renewals").value == 0


def test_renewal_waits_for_requests_in_flight_until_most_of_the_room_is_used(wat_module):
    f, stats = grower(wat_module)
    in_flight = request(request_id=999)
    assert f.on_request(in_flight) is None  # never answered: its stream stays in flight
    vm = f._vm
    replies = []
    for i in range(60):
        replies.append(run(f, request(request_id=i)))
        if stats.counter("wasm.grower", "renewals").value:
            break
    assert replies == [None] * len(replies)
    assert stats.counter("wasm.grower", "renewals").value == 1
    # renewed only past 7/8 of the room, not at 3/4: the request in flight delayed it
    assert vm.generation == 1 and len(replies) >= 26
    f.on_response(respond(in_flight))  # its stream belongs to the old instance: skipped, no error
