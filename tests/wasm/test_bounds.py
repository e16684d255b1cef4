"""A module that loops, eats memory, traps or dereferences a bad pointer fails only its own request."""

from __future__ import annotations

import logging
import time

from metaproxy.message import ErrorType
from tests.wasm.conftest import make_filter, request, respond, sample


def misbehave(**options):
    return make_filter(sample("misbehave"), **options)


def count(f) -> str:
    ctx = request("count")
    assert f.on_request(ctx) is None
    return ctx.mutation["x-count"]


def test_infinite_loop_is_stopped_by_the_epoch_deadline(caplog):
    f = misbehave(vm_config={"timeout": "50ms"})
    assert count(f) == "1"
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="metaproxy.wasm"):
        reply = f.on_request(request("loop", request_id=77))
    elapsed = time.monotonic() - start
    assert reply.kind is ErrorType.UNSPECIFIED and "interrupt" in reply.message
    assert elapsed < 2.0
    message = caplog.records[-1].getMessage()
    assert "misbehave.wasm" in message and "request 77" in message and "interrupt" in message
    assert count(f) == "1"  # a fresh instance served the next request
    assert f._vm.generation == 1 and f.traps.value == 1 and f.rebuilds.value == 1


def test_fuel_bounds_a_loop_too():
    f = misbehave(vm_config={"fuel": 200_000, "timeout": "10s"})
    start = time.monotonic()
    reply = f.on_request(request("loop"))
    assert reply is not None and "interrupt" in reply.message
    assert time.monotonic() - start < 5.0
    assert count(f) == "1"


def test_memory_bomb_hits_the_store_limit():
    f = misbehave(vm_config={"memory_limit": "4MiB"})
    assert count(f) == "1"
    reply = f.on_request(request("bomb"))
    assert reply is not None and "memory_limit" in reply.message
    assert count(f) == "1"
    assert f._vm.host.memory.size() < 4 << 20  # the rebuilt instance starts small again


def test_unreachable_and_bad_pointer_traps_fail_only_their_request():
    f = misbehave()
    assert count(f) == "1"
    assert count(f) == "2"
    assert "trap" in f.on_request(request("trap")).message
    assert count(f) == "1"
    assert "memory" in f.on_request(request("badptr")).message
    ctx = request("badhost")
    assert f.on_request(ctx) is None  # a bad pointer handed to the host is a status, not a trap
    assert ctx.mutation["x-badhost-status"] == "6"
    assert count(f) == "2"


def test_requests_in_flight_on_the_old_instance_are_dropped_quietly():
    f = make_filter(sample("add_header"))
    ctx = request()
    f.on_request(ctx)
    f._vm.broken = "test"  # as after a trap
    f._vm.rebuild()
    f.on_response(respond(ctx))  # belongs to generation 0: skipped
    assert ctx.response_mutation == {}
    ctx2 = request()
    f.on_request(ctx2)
    f.on_response(respond(ctx2))
    assert ctx2.response_mutation == {"x-wasm-c-response": "ping"}


def test_crash_loop_guard_stops_rebuilding():
    f = misbehave(vm_config={"max_rebuilds_per_minute": 2})
    for _ in range(3):
        assert f.on_request(request("trap")) is not None
    reply = f.on_request(request("count"))
    assert reply is not None and "unavailable" in reply.message
    assert f.unavailable.value == 1 and f.rebuilds.value == 2


def test_fail_open_lets_requests_through():
    f = misbehave(fail_open=True)
    assert f.on_request(request("trap")) is None
    assert count(f) == "1"
