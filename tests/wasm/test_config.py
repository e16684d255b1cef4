"""What the config loader refuses, with errors that say why; and the ABI tables."""

from __future__ import annotations

import pytest

from metaproxy.wasm import abi
from metaproxy.wasm.filter import WasmFilter, config_bytes, parse_size
from tests.wasm.conftest import REPO, env, make_filter, sample


def refused(**options) -> str:
    with pytest.raises(ValueError) as info:
        WasmFilter(options, env())
    return str(info.value)


def test_module_without_the_abi_version_export_is_refused_at_load(wat_module):
    path = wat_module('(memory (export "memory") 1) (func (export "proxy_on_request_headers") '
                      '(param i32 i32 i32) (result i32) (i32.const 0))', prelude=False)
    message = refused(module=path)
    assert message.startswith("module: ") and "is not a Proxy-Wasm module" in message
    assert "proxy_abi_version_0_2_1" in message


def test_abi_0_2_0_is_accepted(wat_module):
    path = wat_module('(memory (export "memory") 1) (func (export "proxy_abi_version_0_2_0"))', prelude=False)
    assert make_filter(path)._vm.broken is None


def test_unusable_modules_are_refused(tmp_path, wat_module):
    assert "cannot read wasm module" in refused(module=str(tmp_path / "missing.wasm"))
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"not wasm at all")
    assert "is not a valid WebAssembly module" in refused(module=str(junk))
    foreign = wat_module("", imports='(import "somewhere" "thing" (func (param i32)))')
    assert "imports somewhere.thing, which a Proxy-Wasm host does not provide" in refused(module=foreign)
    mistyped = wat_module("", imports='(import "env" "proxy_log" (func (param i32) (result i32)))')
    assert "imports env.proxy_log with type i:i, the ABI says iii:i" in refused(module=mistyped)
    bad_export = wat_module('(func (export "proxy_on_request_headers") (param i32) (result i32) (i32.const 0))')
    assert "export proxy_on_request_headers has type i:i" in refused(module=bad_export)
    start_trap = wat_module('(func (export "_start") unreachable)')
    assert "start-up failed: trap" in refused(module=start_trap)


def test_option_problems_name_their_keys():
    assert "module: required key is missing" in refused()
    assert "unknown key 'modul'" in refused(module=sample("add_header"), modul="x")
    message = refused(module=sample("add_header"), vm_config={"timeout": "soon", "memory_limit": "lots",
                                                               "colour": 1})
    assert "vm_config.timeout" in message and "vm_config.memory_limit" in message
    assert "vm_config: unknown key 'colour'" in message


def test_module_path_is_relative_to_the_config_folder():
    f = WasmFilter({"module": "filters/wasm/add_header.wasm"}, env(base_dir=REPO))
    assert f.spec.module_path == str(REPO / "filters" / "wasm" / "add_header.wasm")
    assert f.spec.plugin_name == "add_header"


def test_config_encoding_and_sizes():
    assert config_bytes(None) == b""
    assert config_bytes("as is") == b"as is"
    assert config_bytes({"a": [1, "x"]}) == b'{"a":[1,"x"]}'
    assert parse_size("64MiB") == 64 << 20 and parse_size("512k") == 512 << 10 and parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("-3")


#: Every host function of the 0.2.1 specification (module env).
SPEC_0_2_1 = """proxy_log proxy_get_log_level proxy_get_current_time_nanoseconds proxy_set_tick_period_milliseconds
proxy_done proxy_set_effective_context proxy_set_buffer_bytes proxy_get_buffer_bytes proxy_get_buffer_status
proxy_get_header_map_size proxy_get_header_map_pairs proxy_set_header_map_pairs proxy_get_header_map_value
proxy_add_header_map_value proxy_replace_header_map_value proxy_remove_header_map_value proxy_continue_stream
proxy_close_stream proxy_get_status proxy_send_local_response proxy_http_call proxy_grpc_call proxy_grpc_stream
proxy_grpc_send proxy_grpc_cancel proxy_grpc_close proxy_set_shared_data proxy_get_shared_data
proxy_register_shared_queue proxy_resolve_shared_queue proxy_enqueue_shared_queue proxy_dequeue_shared_queue
proxy_define_metric proxy_record_metric proxy_increment_metric proxy_get_metric proxy_get_property
proxy_set_property proxy_call_foreign_function""".split()


def test_every_spec_function_is_defined():
    assert set(SPEC_0_2_1) <= set(abi.ENV_FUNCTIONS)
    for name in ("fd_write", "clock_time_get", "random_get", "environ_get", "environ_sizes_get", "args_get",
                 "args_sizes_get", "proc_exit"):
        assert name in abi.WASI_FUNCTIONS


def test_a_module_importing_every_function_instantiates(wat_module):
    imports = []
    for module, table in (("env", abi.ENV_FUNCTIONS), ("wasi_snapshot_preview1", abi.WASI_FUNCTIONS)):
        for name, signature in table.items():
            params, results = abi.split_signature(signature)
            p = " ".join("i32" if t == "i" else "i64" for t in params)
            r = " ".join("i32" if t == "i" else "i64" for t in results)
            imports.append(f'(import "{module}" "{name}" (func (param {p}) (result {r})))')
    f = make_filter(wat_module("", imports="\n".join(imports)))
    assert f._vm.broken is None


def test_map_serialization_round_trip():
    pairs = [("a", "1"), ("bb", "22"), ("empty", ""), ("utf8", "é")]
    blob = abi.serialize_pairs(pairs)
    assert blob[:4] == b"\x04\x00\x00\x00"
    assert list(abi.deserialize_pairs(blob)) == pairs
    assert abi.serialize_pairs([]) == b"\x00\x00\x00\x00"
    assert list(abi.deserialize_pairs(b"")) == [] and list(abi.deserialize_pairs(b"\x00")) == []
    with pytest.raises(ValueError):
        list(abi.deserialize_pairs(b"\x02\x00\x00\x00\x01\x00\x00\x00"))
