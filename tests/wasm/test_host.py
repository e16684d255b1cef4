"""Host functions against real guest memory: header maps = Metadata + Mutation, properties, buffers, logs."""

from __future__ import annotations

import logging
import struct

import pytest

from metaproxy.message import ErrorType, Metadata
from metaproxy.stats import StatsStore
from metaproxy.wasm import abi
from metaproxy.wasm.host import Stream
from metaproxy.wasm.metrics import MetricRegistry
from metaproxy.wasm.vm import VmSpec, WasmVm
from tests.wasm.conftest import request

MINIMAL = "(func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32) (i32.const 0))"


class Probe:
    """Drive one host function at a time, with arguments placed in the guest's memory."""

    def __init__(self, vm: WasmVm) -> None:
        self.vm = vm
        self.host = vm.host
        self.next = 1024

    def mem(self):
        self.host.sync_memory()
        return self.host.memory

    def put(self, data: bytes | str) -> tuple[int, int]:
        data = data.encode() if isinstance(data, str) else data
        ptr = self.next
        self.next += len(data) + 8
        assert self.mem().write(ptr, data)
        return ptr, len(data)

    def out(self) -> tuple[int, int]:
        """Two u32 out-parameters (pointer, size) prefilled with a marker."""
        ptr = self.next
        self.next += 8
        self.mem().write(ptr, b"\xee" * 8)
        return ptr, ptr + 4

    def u32(self, ptr: int) -> int:
        return struct.unpack("<I", self.mem().read(ptr, 4))[0]

    def returned(self, out: tuple[int, int]) -> bytes:
        return self.mem().read(self.u32(out[0]), self.u32(out[1]))

    def on(self, ctx) -> Probe:
        self.host.current = Stream(99, ctx, self.vm.generation)
        return self

    def call(self, name: str, *args: int) -> int:
        self.host.sync_memory()
        return getattr(self.host, name)(*args)

    def get(self, map_type: int, key: str) -> tuple[int, bytes | None]:
        out = self.out()
        rc = self.call("proxy_get_header_map_value", map_type, *self.put(key), *out)
        return rc, self.returned(out) if rc == abi.OK else None

    def write(self, name: str, map_type: int, key: str, value: str) -> int:
        return self.call(name, map_type, *self.put(key), *self.put(value))

    def pairs(self, map_type: int) -> list[tuple[str, str]]:
        out = self.out()
        assert self.call("proxy_get_header_map_pairs", map_type, *out) == abi.OK
        return list(abi.deserialize_pairs(self.returned(out)))


@pytest.fixture
def probe(wat_module) -> Probe:
    spec = VmSpec(wat_module(MINIMAL), root_id="probe-root", plugin_name="probe", vm_id="vm-1",
                  plugin_config=b'{"a":1}', vm_config=b"vmconf")
    return Probe(WasmVm(spec, MetricRegistry(StatsStore(), "wasm.probe"), logging.getLogger("metaproxy.wasm")))


REQ, RESP = abi.MAP_REQUEST_HEADERS, abi.MAP_RESPONSE_HEADERS


def test_request_map_reads_metadata_as_strings_in_order(probe):
    ctx = request("sayHello", request_id=5, **{"x-n": 3, "x-flag": False})
    assert probe.on(ctx).pairs(REQ) == [("request_id", "5"), ("message_type", "request"), ("service", "demo"),
                                         ("method", "sayHello"), ("x-n", "3"), ("x-flag", "false")]
    assert probe.get(REQ, "x-n") == (abi.OK, b"3")
    assert probe.get(REQ, "missing") == (abi.NOT_FOUND, None)
    size_ptr = probe.out()[0]
    assert probe.call("proxy_get_header_map_size", REQ, size_ptr) == abi.OK
    assert probe.u32(size_ptr) == len(abi.serialize_pairs(probe.pairs(REQ)))


def test_writes_go_to_the_mutation_and_are_visible_to_later_reads(probe):
    ctx = request(**{"x-user": "alice"})
    probe.on(ctx)
    assert probe.write("proxy_replace_header_map_value", REQ, "x-user", "bob") == abi.OK
    assert probe.write("proxy_add_header_map_value", REQ, "x-new", "1") == abi.OK
    assert probe.write("proxy_add_header_map_value", REQ, "x-new", "2") == abi.OK  # one value per key: folded
    assert ctx.mutation == {"x-user": "bob", "x-new": "1,2"}
    assert ctx.metadata["x-user"] == "alice"  # what the decoder read is never rewritten
    assert probe.get(REQ, "x-user") == (abi.OK, b"bob")
    assert probe.pairs(REQ)[-2:] == [("x-user", "bob"), ("x-new", "1,2")]


def test_remove_drops_what_filters_added_but_not_what_was_decoded(probe):
    ctx = request(**{"x-user": "alice"})
    ctx.mutation["x-extra"] = "1"
    probe.on(ctx)
    assert probe.call("proxy_remove_header_map_value", REQ, *probe.put("x-extra")) == abi.OK
    assert probe.call("proxy_remove_header_map_value", REQ, *probe.put("absent")) == abi.OK
    assert "x-extra" not in ctx.mutation
    assert probe.get(REQ, "x-extra")[0] == abi.NOT_FOUND
    assert probe.call("proxy_remove_header_map_value", REQ, *probe.put("x-user")) == abi.OK
    assert probe.get(REQ, "x-user") == (abi.OK, b"alice")


def test_set_pairs_writes_only_what_changed(probe):
    ctx = request(**{"x-user": "alice", "x-keep": "k"})
    ctx.mutation["x-old"] = "gone"
    probe.on(ctx)
    wanted = [(k, v) for k, v in probe.pairs(REQ) if k != "x-old"] + [("x-user", "carol"), ("x-add", "a")]
    assert probe.call("proxy_set_header_map_pairs", REQ, *probe.put(abi.serialize_pairs(wanted))) == abi.OK
    assert ctx.mutation == {"x-user": "carol", "x-add": "a"}
    assert probe.call("proxy_set_header_map_pairs", REQ, *probe.put(b"\x05\x00\x00\x00")) == abi.BAD_ARGUMENT


def test_response_map_is_response_metadata_and_mutation(probe):
    ctx = request()
    probe.on(ctx)
    assert probe.pairs(RESP) == []  # no response yet: an empty map
    assert probe.write("proxy_replace_header_map_value", RESP, "x-early", "1") == abi.OK
    ctx.response_metadata = Metadata(request_id=7, status="ok")
    assert probe.write("proxy_replace_header_map_value", RESP, "status", "rewritten") == abi.OK
    assert probe.pairs(RESP) == [("request_id", "7"), ("status", "rewritten"), ("x-early", "1")]
    assert ctx.response_mutation == {"x-early": "1", "status": "rewritten"}
    assert ctx.response_metadata["status"] == "ok"


def test_maps_that_are_not_available(probe):
    out = probe.out()
    assert probe.call("proxy_get_header_map_pairs", REQ, *out) == abi.NOT_FOUND  # root context: no request
    probe.on(request())
    assert probe.call("proxy_get_header_map_pairs", abi.MAP_REQUEST_TRAILERS, *out) == abi.NOT_FOUND
    assert probe.call("proxy_get_header_map_pairs", 99, *out) == abi.BAD_ARGUMENT


def test_bad_pointers_are_invalid_memory_access_not_crashes(probe):
    probe.on(request())
    far = 0xFFFFFF00
    assert probe.call("proxy_get_header_map_value", REQ, far, 16, *probe.out()) == abi.INVALID_MEMORY_ACCESS
    assert probe.call("proxy_get_header_map_value", REQ, *probe.put("method"), far, far) \
        == abi.INVALID_MEMORY_ACCESS
    assert probe.call("proxy_replace_header_map_value", REQ, *probe.put("k"), far, 1 << 20) \
        == abi.INVALID_MEMORY_ACCESS
    assert probe.call("proxy_log", abi.LOG_CRITICAL, far, 10) == abi.INVALID_MEMORY_ACCESS
    assert probe.call("proxy_get_current_time_nanoseconds", far) == abi.INVALID_MEMORY_ACCESS


def test_properties(probe):
    ctx = request("sayHello", request_id=31)
    ctx.route = type("R", (), {"name": "canary"})()
    ctx.cluster_name = "outbound|9090|v2|svc"
    ctx.mutation["x-user"] = "bob"

    def prop(path: bytes) -> tuple[int, bytes | None]:
        out = probe.out()
        rc = probe.call("proxy_get_property", *probe.put(path), *out)
        return rc, probe.returned(out) if rc == abi.OK else None

    assert prop(b"plugin_root_id") == (abi.OK, b"probe-root")  # root context too: SDKs ask at start-up
    assert prop(b"request.id") == (abi.NOT_FOUND, None)
    probe.on(ctx)
    assert prop(b"plugin_name") == (abi.OK, b"probe")
    assert prop(b"plugin_vm_id") == (abi.OK, b"vm-1")
    assert prop(b"request\0id") == (abi.OK, b"31")
    assert prop(b"request.id") == (abi.OK, b"31")
    assert prop(b"metaprotocol.method") == (abi.OK, b"sayHello")
    assert prop(b"metaprotocol\0x-user") == (abi.OK, b"bob")
    assert prop(b"route_name") == (abi.OK, b"canary")
    assert prop(b"cluster_name") == (abi.OK, b"outbound|9090|v2|svc")
    assert prop(b"listener_name") == (abi.OK, b"in")
    assert prop(b"request.protocol") == (abi.OK, b"tinyrpc")
    assert prop(b"no.such.thing") == (abi.NOT_FOUND, None)


def test_configuration_buffers(probe):
    out = probe.out()
    assert probe.call("proxy_get_buffer_bytes", abi.BUFFER_PLUGIN_CONFIGURATION, 0, 100, *out) == abi.OK
    assert probe.returned(out) == b'{"a":1}'
    assert probe.call("proxy_get_buffer_bytes", abi.BUFFER_PLUGIN_CONFIGURATION, 2, 3, *out) == abi.OK
    assert probe.returned(out) == b"a\":"
    assert probe.call("proxy_get_buffer_bytes", abi.BUFFER_VM_CONFIGURATION, 0, 6, *out) == abi.OK
    assert probe.returned(out) == b"vmconf"
    assert probe.call("proxy_get_buffer_bytes", abi.BUFFER_PLUGIN_CONFIGURATION, 99, 1, *out) == abi.BAD_ARGUMENT
    assert probe.call("proxy_get_buffer_bytes", 0, 0, 10, *out) == abi.NOT_FOUND  # no bodies here
    assert probe.call("proxy_get_buffer_bytes", 42, 0, 10, *out) == abi.BAD_ARGUMENT
    empty = probe.out()
    assert probe.call("proxy_get_buffer_bytes", abi.BUFFER_PLUGIN_CONFIGURATION, 7, 10, *empty) == abi.OK
    assert probe.mem().read(empty[0], 8) == b"\xee" * 8  # nothing to copy: nothing written, as in Envoy
    assert probe.call("proxy_get_buffer_status", abi.BUFFER_VM_CONFIGURATION, *out) == abi.OK
    assert probe.u32(out[0]) == 6


@pytest.mark.parametrize("status,grpc,kind", [
    (403, -1, ErrorType.PERMISSION_DENIED), (401, -1, ErrorType.PERMISSION_DENIED),
    (429, -1, ErrorType.OVER_LIMIT), (404, -1, ErrorType.ROUTE_NOT_FOUND), (504, -1, ErrorType.TIMEOUT),
    (503, -1, ErrorType.NO_HEALTHY_UPSTREAM), (502, -1, ErrorType.BAD_RESPONSE), (500, -1, ErrorType.UNSPECIFIED),
    (200, 8, ErrorType.OVER_LIMIT), (200, 7, ErrorType.PERMISSION_DENIED), (400, 2, ErrorType.UNSPECIFIED),
])
def test_local_response_kind(probe, status, grpc, kind):
    probe.on(request())
    args = (*probe.put("details here"), *probe.put("body"), 0, 0, grpc & 0xFFFFFFFF)
    assert probe.call("proxy_send_local_response", status, *args) == abi.OK
    reply = probe.host.current.local_reply
    assert reply.kind is kind and reply.message == "details here"


def test_local_response_message_falls_back_to_body(probe):
    probe.on(request())
    assert probe.call("proxy_send_local_response", 403, 0, 0, *probe.put("body text"), 0, 0, 0xFFFFFFFF) == abi.OK
    assert probe.host.current.local_reply.message == "body text"


def test_log_levels_follow_the_python_logger(probe, caplog):
    ptr, size = probe.put("hello from wasm")
    with caplog.at_level(logging.WARNING, logger="metaproxy.wasm"):
        probe.host._threshold_until = 0
        assert probe.call("proxy_log", abi.LOG_INFO, ptr, size) == abi.OK
        assert probe.call("proxy_log", abi.LOG_ERROR, ptr, size) == abi.OK
        assert probe.call("proxy_log", 9, ptr, size) == abi.BAD_ARGUMENT
        level_ptr = probe.out()[0]
        assert probe.call("proxy_get_log_level", level_ptr) == abi.OK
        assert probe.u32(level_ptr) == abi.LOG_WARN
        assert caplog.records == []  # nothing is logged while the guest runs...
        probe.host.flush_logs()      # ...only when its call returned
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.ERROR, "wasm[probe] hello from wasm")]


def test_metrics(probe):
    store = probe.host.metrics.store
    ids = []
    for metric_type, name in ((abi.METRIC_COUNTER, "hits"), (abi.METRIC_GAUGE, "level"),
                              (abi.METRIC_HISTOGRAM, "size")):
        id_ptr = probe.out()[0]
        assert probe.call("proxy_define_metric", metric_type, *probe.put(name), id_ptr) == abi.OK
        ids.append(probe.u32(id_ptr))
    hits, level, size = ids
    assert probe.call("proxy_increment_metric", hits, 2) == abi.OK
    assert probe.call("proxy_increment_metric", hits, -1) == abi.BAD_ARGUMENT
    assert probe.call("proxy_increment_metric", level, -3) == abi.OK
    assert probe.call("proxy_record_metric", size, 12) == abi.OK
    assert probe.call("proxy_increment_metric", 999, 1) == abi.NOT_FOUND
    value_ptr = probe.out()[0]
    assert probe.call("proxy_get_metric", hits, value_ptr) == abi.OK and probe.u32(value_ptr) == 2
    assert store.value("wasm.probe", "hits") == 2 and store.value("wasm.probe", "level") == -3
    assert store.histogram("wasm.probe", "size").sum == 12
    id_ptr = probe.out()[0]
    probe.call("proxy_define_metric", abi.METRIC_COUNTER, *probe.put("hits"), id_ptr)
    assert probe.u32(id_ptr) == hits  # same name, same id: survives VM rebuilds
    assert probe.call("proxy_define_metric", 7, *probe.put("x"), id_ptr) == abi.BAD_ARGUMENT


def test_contexts_and_streams(probe):
    assert probe.call("proxy_set_effective_context", 12345) == abi.BAD_ARGUMENT
    assert probe.call("proxy_set_effective_context", 1) == abi.OK  # the root context
    assert probe.call("proxy_done") == abi.NOT_FOUND
    probe.on(request())
    assert probe.call("proxy_continue_stream", abi.STREAM_REQUEST) == abi.OK
    assert probe.call("proxy_continue_stream", abi.STREAM_DOWNSTREAM) == abi.UNIMPLEMENTED
    assert probe.call("proxy_continue_stream", 17) == abi.BAD_ARGUMENT
    assert probe.call("proxy_close_stream", abi.STREAM_REQUEST) == abi.OK
    assert probe.host.current.local_reply.kind is ErrorType.UNSPECIFIED


def test_wasi_calls(probe, caplog):
    host = probe.host
    text = b"line one\npartial"
    data_ptr, size = probe.put(text)
    iov = probe.put(struct.pack("<II", data_ptr, size))[0]
    written = probe.out()[0]
    with caplog.at_level(logging.INFO, logger="metaproxy.wasm"):
        assert probe.call("wasi_fd_write", 1, iov, 1, written) == abi.WASI_SUCCESS
        assert probe.call("wasi_fd_write", 5, iov, 1, written) == abi.WASI_BADF
        host.flush_logs()
    assert probe.u32(written) == size
    assert [r.getMessage() for r in caplog.records] == ["wasm[probe] line one"]
    clock = probe.out()[0]
    assert probe.call("wasi_clock_time_get", 1, 0, clock) == abi.WASI_SUCCESS
    assert probe.call("wasi_clock_time_get", 2, 0, clock) == abi.WASI_NOTSUP
    rand = probe.put(b"\0" * 32)[0]
    assert probe.call("wasi_random_get", rand, 32) == abi.WASI_SUCCESS
    assert probe.mem().read(rand, 32) != b"\0" * 32
    assert probe.call("wasi_random_get", rand, 1 << 20) == abi.WASI_INVAL
    sizes = probe.out()
    assert probe.call("wasi_environ_sizes_get", *sizes) == abi.WASI_SUCCESS
    assert probe.u32(sizes[0]) == 0 and probe.u32(sizes[1]) == 0
