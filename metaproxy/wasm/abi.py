"""Facts of the Proxy-Wasm ABI 0.2.1 (and the WASI preview1 calls SDKs import): codes and signatures.

Nothing here runs WebAssembly: this module is the table the host is built from,
so the rest of the package never spells a status code or a signature twice.
Signatures are strings of value types, ``i`` for i32 and ``I`` for i64:
``"iii:i"`` takes three i32 and returns one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

# -- proxy_status_t -----------------------------------------------------------------------------
OK = 0
NOT_FOUND = 1
BAD_ARGUMENT = 2
SERIALIZATION_FAILURE = 3
PARSE_FAILURE = 4
INVALID_MEMORY_ACCESS = 6
EMPTY = 7
CAS_MISMATCH = 8
INTERNAL_FAILURE = 10
UNIMPLEMENTED = 12

# -- proxy_log_level_t --------------------------------------------------------------------------
LOG_TRACE, LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CRITICAL = range(6)

# -- proxy_action_t -----------------------------------------------------------------------------
ACTION_CONTINUE = 0
ACTION_PAUSE = 1

# -- proxy_map_type_t ---------------------------------------------------------------------------
MAP_REQUEST_HEADERS = 0
MAP_REQUEST_TRAILERS = 1
MAP_RESPONSE_HEADERS = 2
MAP_RESPONSE_TRAILERS = 3
MAP_MAX = 7

# -- proxy_buffer_type_t ------------------------------------------------------------------------
BUFFER_VM_CONFIGURATION = 6
BUFFER_PLUGIN_CONFIGURATION = 7
BUFFER_MAX = 8

# -- proxy_stream_type_t ------------------------------------------------------------------------
STREAM_REQUEST, STREAM_RESPONSE, STREAM_DOWNSTREAM, STREAM_UPSTREAM = range(4)

# -- proxy_metric_type_t ------------------------------------------------------------------------
METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM = range(3)

# -- wasi_errno_t -------------------------------------------------------------------------------
WASI_SUCCESS = 0
WASI_BADF = 8
WASI_FAULT = 21
WASI_INVAL = 28
WASI_NOTSUP = 58

#: Exports that advertise the ABI; a module must have one of them.
ABI_VERSION_EXPORTS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0")

#: Every host function of ABI 0.2.1 in module ``env``, plus the older names SDKs still import.
ENV_FUNCTIONS: dict[str, str] = {
    "proxy_log": "iii:i",
    "proxy_get_log_level": "i:i",
    "proxy_get_current_time_nanoseconds": "i:i",
    "proxy_set_tick_period_milliseconds": "i:i",
    "proxy_done": ":i",
    "proxy_set_effective_context": "i:i",
    "proxy_set_buffer_bytes": "iiiii:i",
    "proxy_get_buffer_bytes": "iiiii:i",
    "proxy_get_buffer_status": "iii:i",
    "proxy_get_header_map_size": "ii:i",
    "proxy_get_header_map_pairs": "iii:i",
    "proxy_set_header_map_pairs": "iii:i",
    "proxy_get_header_map_value": "iiiii:i",
    "proxy_add_header_map_value": "iiiii:i",
    "proxy_replace_header_map_value": "iiiii:i",
    "proxy_remove_header_map_value": "iii:i",
    "proxy_continue_stream": "i:i",
    "proxy_close_stream": "i:i",
    "proxy_get_status": "iii:i",
    "proxy_send_local_response": "iiiiiiii:i",
    "proxy_http_call": "iiiiiiiiii:i",
    "proxy_grpc_call": "iiiiiiiiiiii:i",
    "proxy_grpc_stream": "iiiiiiiii:i",
    "proxy_grpc_send": "iiii:i",
    "proxy_grpc_cancel": "i:i",
    "proxy_grpc_close": "i:i",
    "proxy_set_shared_data": "iiiii:i",
    "proxy_get_shared_data": "iiiii:i",
    "proxy_register_shared_queue": "iii:i",
    "proxy_resolve_shared_queue": "iiiii:i",
    "proxy_enqueue_shared_queue": "iii:i",
    "proxy_dequeue_shared_queue": "iii:i",
    "proxy_define_metric": "iiii:i",
    "proxy_record_metric": "iI:i",
    "proxy_increment_metric": "iI:i",
    "proxy_get_metric": "ii:i",
    "proxy_get_property": "iiii:i",
    "proxy_set_property": "iiii:i",
    "proxy_call_foreign_function": "iiiiii:i",
    # Names from ABI 0.1.0 / 0.2.0 that SDKs (AssemblyScript, C++) still import.
    "proxy_clear_route_cache": ":i",
    "proxy_continue_request": ":i",
    "proxy_continue_response": ":i",
    "proxy_get_configuration": "ii:i",
}

#: WASI preview1: every function, so modules built for wasm32-wasi instantiate. Only clocks,
#: randomness, fd_write to stdout/stderr (into our log) and empty args/environ do anything.
WASI_FUNCTIONS: dict[str, str] = {
    "args_get": "ii:i",
    "args_sizes_get": "ii:i",
    "environ_get": "ii:i",
    "environ_sizes_get": "ii:i",
    "clock_res_get": "ii:i",
    "clock_time_get": "iIi:i",
    "fd_advise": "iIIi:i",
    "fd_allocate": "iII:i",
    "fd_close": "i:i",
    "fd_datasync": "i:i",
    "fd_fdstat_get": "ii:i",
    "fd_fdstat_set_flags": "ii:i",
    "fd_fdstat_set_rights": "iII:i",
    "fd_filestat_get": "ii:i",
    "fd_filestat_set_size": "iI:i",
    "fd_filestat_set_times": "iIIi:i",
    "fd_pread": "iiiIi:i",
    "fd_prestat_get": "ii:i",
    "fd_prestat_dir_name": "iii:i",
    "fd_pwrite": "iiiIi:i",
    "fd_read": "iiii:i",
    "fd_readdir": "iiiIi:i",
    "fd_renumber": "ii:i",
    "fd_seek": "iIii:i",
    "fd_sync": "i:i",
    "fd_tell": "ii:i",
    "fd_write": "iiii:i",
    "path_create_directory": "iii:i",
    "path_filestat_get": "iiiii:i",
    "path_filestat_set_times": "iiiiIIi:i",
    "path_link": "iiiiiii:i",
    "path_open": "iiiiiIIii:i",
    "path_readlink": "iiiiii:i",
    "path_remove_directory": "iii:i",
    "path_rename": "iiiiii:i",
    "path_symlink": "iiiii:i",
    "path_unlink_file": "iii:i",
    "poll_oneoff": "iiii:i",
    "proc_exit": "i:",
    "proc_raise": "i:i",
    "sched_yield": ":i",
    "random_get": "ii:i",
    "sock_accept": "iii:i",
    "sock_recv": "iiiiii:i",
    "sock_send": "iiiii:i",
    "sock_shutdown": "ii:i",
}

#: WASI module names: preview1 and the older name some toolchains (AssemblyScript 0.14) still emit.
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")

#: Callbacks the host calls, with the signature it calls them with (checked at load).
CALLBACKS: dict[str, str] = {
    "_initialize": ":",
    "_start": ":",
    "main": "ii:i",
    "proxy_on_memory_allocate": "i:i",
    "malloc": "i:i",
    "proxy_on_vm_start": "ii:i",
    "proxy_on_configure": "ii:i",
    "proxy_on_context_create": "ii:",
    "proxy_on_request_headers": "iii:i",
    "proxy_on_response_headers": "iii:i",
    "proxy_on_done": "i:i",
    "proxy_on_log": "i:",
    "proxy_on_delete": "i:",
    "proxy_on_tick": "i:",
}


def split_signature(signature: str) -> tuple[str, str]:
    """``"iI:i"`` -> (``"iI"``, ``"i"``)."""
    params, _, results = signature.partition(":")
    return params, results


# -- map serialization --------------------------------------------------------------------------
_U32 = struct.Struct("<I")


def serialize_pairs(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Header pairs -> the ABI's map encoding.

    u32 count, then count x (u32 key length, u32 value length), then each key and
    value as bytes followed by a NUL. Lengths do not count the NUL.
    """
    encoded = [(k.encode("utf-8"), v.encode("utf-8")) for k, v in pairs]
    sizes = []
    data = []
    for key, value in encoded:
        sizes.append(len(key))
        sizes.append(len(value))
        data.append(key)
        data.append(value)
    head = struct.pack(f"<{1 + len(sizes)}I", len(encoded), *sizes)
    return head + b"\0".join(data) + b"\0" if data else head


def deserialize_pairs(blob: bytes) -> Iterator[tuple[str, str]]:
    """The ABI's map encoding -> pairs. Raises ValueError when the sizes do not add up.

    An empty blob, or a single NUL byte, is the empty map.
    """
    if len(blob) <= 1:
        return
    if len(blob) < 4:
        raise ValueError("serialized map shorter than its count")
    (count,) = _U32.unpack_from(blob, 0)
    head_end = 4 + 8 * count
    if head_end > len(blob):
        raise ValueError(f"serialized map announces {count} pairs but is {len(blob)} bytes")
    sizes = struct.unpack_from(f"<{2 * count}I", blob, 4)
    pos = head_end
    for index in range(count):
        key_size, value_size = sizes[2 * index], sizes[2 * index + 1]
        key_end = pos + key_size
        value_start = key_end + 1
        value_end = value_start + value_size
        if value_end + 1 > len(blob):
            raise ValueError("serialized map pair runs past its end")
        yield (blob[pos:key_end].decode("utf-8", "replace"),
               blob[value_start:value_end].decode("utf-8", "replace"))
        pos = value_end + 1
