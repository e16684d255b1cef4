"""The fast path into and out of wasmtime: raw ctypes calls, no per-call type lookups.

Why this exists: wasmtime-py's friendly ``Func.__call__`` and ``Linker.define_func``
look the function type up, build ``Val`` objects and ``Caller`` wrappers on
every call; measured, a filter making a few host calls cost ~50 µs per request
that way. Here both directions use wasmtime's *unchecked* C entry points:

* guest calls (:class:`GuestFunction`): parameters are packed with a
  precompiled ``struct`` into a reused ``wasmtime_val_raw_t`` array and
  ``wasmtime_func_call_unchecked`` runs it; signatures were checked once at
  load (vm.py), which is what makes "unchecked" safe;
* host calls (:func:`define_host_function`): one ctypes callback per import,
  its arguments unpacked with one ``struct.unpack`` from the raw array.

Guest memory is read and written only through :class:`GuestMemory`, which checks
every pointer against the current memory size: a bad pointer from a module is
an INVALID_MEMORY_ACCESS status, never a read outside the sandbox.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from ctypes import c_size_t, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from metaproxy.wasm.abi import split_signature

_dll = ffi.dll
_VAL_RAW_SIZE = ctypes.sizeof(ffi.wasmtime_val_raw_t)  # 16


def _proto(name: str, restype: Any, *argtypes: Any) -> Any:
    """A private prototype of a wasmtime C function (``dll[name]`` is a fresh object: wasmtime-py's stays as is)."""
    fn = _dll[name]
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


HOST_CALLBACK = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_size_t)

_define_unchecked = _proto(
    "wasmtime_linker_define_func_unchecked", c_void_p,
    c_void_p, ctypes.c_char_p, c_size_t, ctypes.c_char_p, c_size_t, c_void_p, HOST_CALLBACK, c_void_p, c_void_p)
_call_unchecked = _proto(
    "wasmtime_func_call_unchecked", c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, ctypes.POINTER(c_void_p))
_memory_data = _proto("wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
_memory_data_size = _proto("wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
_set_epoch_deadline = _proto("wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)
_set_fuel = _proto("wasmtime_context_set_fuel", c_void_p, c_void_p, c_uint64)
_trap_new = _proto("wasmtime_trap_new", c_void_p, ctypes.c_char_p, c_size_t)
_increment_epoch = _proto("wasmtime_engine_increment_epoch", None, c_void_p)

_string_at = ctypes.string_at
_memmove = ctypes.memmove


class WasmTrap(Exception):
    """A guest call ended in a trap: ``kind`` is interrupt | memory | trap | host | exit."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def address(obj: Any) -> int:
    """The integer address of a ctypes pointer or object, for c_void_p arguments."""
    if isinstance(obj, ctypes._Pointer):
        return ctypes.cast(obj, c_void_p).value or 0
    return ctypes.addressof(obj)


def store_context(store: wasmtime.Store) -> int:
    return address(store._context())


def increment_epoch(engine: wasmtime.Engine) -> None:
    """Advance the engine's epoch (safe from any OS thread; this is what the ticker does)."""
    _increment_epoch(address(engine.ptr()))


def _struct_for(types: str) -> struct.Struct:
    """A Struct reading/writing values laid out as consecutive 16-byte wasmtime_val_raw_t slots."""
    return struct.Struct("<" + "".join(_SLOT[t] for t in types))


#: How one value type sits in a 16-byte raw slot (i32 read unsigned: pointers and sizes are u32).
_SLOT = {"i": "I12x", "I": "q8x", "f": "f12x", "F": "d8x"}
#: How a host function writes its (first) result; i32 results are masked so negatives fit.
_RESULT = {"i": lambda v: _U32.pack(v & 0xFFFFFFFF), "I": lambda v: struct.pack("<q", v),
           "f": lambda v: struct.pack("<f", v), "F": lambda v: struct.pack("<d", v)}


def _trap_from(error: int | None, trap: int | None, pending: BaseException | None) -> WasmTrap:
    """Turn wasmtime's error/trap pointers (which we now own) into a WasmTrap."""
    if pending is not None:
        kind = "exit" if isinstance(pending, GuestExit) else "host"
        return WasmTrap(kind, str(pending))
    if trap:
        obj = wasmtime.Trap._from_ptr(ctypes.cast(trap, ctypes.POINTER(ffi.wasm_trap_t)))
        code = obj.trap_code
        message = obj.message
        if code == wasmtime.TrapCode.INTERRUPT or code == wasmtime.TrapCode.OUT_OF_FUEL:
            kind = "interrupt"
        elif code == wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS or code == wasmtime.TrapCode.HEAP_MISALIGNED:
            kind = "memory"
        else:
            kind = "trap"
        return WasmTrap(kind, trap_reason(message) or str(code))
    err = wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))
    return WasmTrap("trap", trap_reason(str(err)))


def trap_reason(message: str) -> str:
    """The "Caused by" part of a wasmtime trap message, on one line (the backtrace is noise in a log)."""
    head, sep, causes = message.partition("Caused by:")
    if not sep:
        return message.strip().splitlines()[0] if message.strip() else ""
    parts = []
    for line in causes.strip().splitlines():
        line = line.strip()
        if line[:1].isdigit() and ": " in line:
            line = line.split(": ", 1)[1]
        parts.append(line)
    return "; ".join(parts)


class GuestExit(Exception):
    """Raised by a host function (proc_exit) to stop the guest: the call fails like a trap."""


class HostFailures:
    """Where host callbacks park the Python exception that became a trap, for the caller to report."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: BaseException | None = None


class GuestFunction:
    """One exported function, called through ``wasmtime_func_call_unchecked``.

    ``__call__`` returns the first result (an int) or None. Arguments and
    results share one preallocated raw array, as the unchecked API wants.
    """

    __slots__ = ("name", "_ctx", "_func", "_keep", "_args", "_args_addr", "_n", "_params", "_results",
                 "_nparams", "_trap", "_trap_ref", "_failures")

    def __init__(self, ctx: int, func: wasmtime.Func, signature: str, failures: HostFailures, name: str) -> None:
        params, results = split_signature(signature)
        self.name = name
        self._ctx = ctx
        self._keep = func
        self._func = ctypes.addressof(func._func)
        self._n = max(len(params), len(results), 1)
        self._args = (ffi.wasmtime_val_raw_t * self._n)()
        self._args_addr = ctypes.addressof(self._args)
        self._nparams = len(params)
        self._params = _struct_for(params) if params else None
        self._results = _struct_for(results[:1]) if results else None
        self._trap = c_void_p()
        self._trap_ref = ctypes.byref(self._trap)
        self._failures = failures

    def __call__(self, *params: int) -> int | None:
        if self._params is not None:
            self._params.pack_into(self._args, 0, *params)
        self._trap.value = None
        error = _call_unchecked(self._ctx, self._func, self._args_addr, self._n, self._trap_ref)
        if error or self._trap.value:
            pending, self._failures.pending = self._failures.pending, None
            raise _trap_from(error, self._trap.value, pending)
        if self._results is not None:
            return self._results.unpack_from(self._args, 0)[0]
        return None


class GuestMemory:
    """Bounds-checked access to the guest's linear memory (memory ``memory`` export)."""

    __slots__ = ("_ctx", "_mem", "_keep")

    def __init__(self, ctx: int, memory: wasmtime.Memory) -> None:
        self._ctx = ctx
        self._keep = memory
        self._mem = ctypes.addressof(memory._memory)

    def size(self) -> int:
        return _memory_data_size(self._ctx, self._mem)

    def _base(self, ptr: int, size: int) -> int:
        """Host address of guest ``ptr`` when ``[ptr, ptr+size)`` is inside memory, else 0."""
        if ptr < 0 or size < 0 or ptr + size > _memory_data_size(self._ctx, self._mem):
            return 0
        return _memory_data(self._ctx, self._mem) + ptr

    def read(self, ptr: int, size: int) -> bytes | None:
        if size == 0:
            return b""
        base = self._base(ptr, size)
        return _string_at(base, size) if base else None

    def write(self, ptr: int, data: bytes) -> bool:
        base = self._base(ptr, len(data))
        if not base:
            return not data
        _memmove(base, data, len(data))
        return True

    def write_u32(self, ptr: int, value: int) -> bool:
        return self.write(ptr, _U32.pack(value & 0xFFFFFFFF))

    def write_u32_pair(self, ptr_a: int, a: int, ptr_b: int, b: int) -> bool:
        return self.write(ptr_a, _U32.pack(a & 0xFFFFFFFF)) and self.write(ptr_b, _U32.pack(b & 0xFFFFFFFF))

    def write_u64(self, ptr: int, value: int) -> bool:
        return self.write(ptr, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def set_epoch_deadline(ctx: int, ticks: int) -> None:
    _set_epoch_deadline(ctx, ticks)


def set_fuel(ctx: int, fuel: int) -> None:
    error = _set_fuel(ctx, fuel)
    if error:
        raise _trap_from(error, None, None)


def define_host_function(linker: wasmtime.Linker, module: str, name: str, signature: str,
                         impl: Callable[..., int | None], failures: HostFailures) -> Any:
    """Define ``module.name`` in ``linker`` as ``impl`` (called with the ints of the signature).

    ``impl`` returns the i32 result (or None for a function without result). A
    Python exception inside it becomes a trap of the guest call, and the
    exception itself is parked in ``failures`` so the caller can say what broke.
    Returns the ctypes callback: the caller must keep it alive as long as the linker.
    """
    params, results = split_signature(signature)
    reader = _struct_for(params) if params else None
    pack_result = _RESULT[results[0]] if results else None
    message = f"host function {module}.{name} failed".encode()

    def callback(_env: int, _caller: int, raw: int, _n: int) -> int:
        try:
            if reader is not None:
                rc = impl(*reader.unpack(_string_at(raw, reader.size)))
            else:
                rc = impl()
            if pack_result is not None:
                data = pack_result(rc or 0)
                _memmove(raw, data, len(data))
            return 0
        except BaseException as exc:  # noqa: BLE001 - every failure must become a trap, not a crash
            failures.pending = exc
            return _trap_new(message, len(message)) or 0

    keep = HOST_CALLBACK(callback)
    functype = make_functype(signature)
    mod, nm = module.encode(), name.encode()
    error = _define_unchecked(address(linker.ptr()), mod, len(mod), nm, len(nm), address(functype.ptr()),
                              keep, None, None)
    if error:
        raise _trap_from(error, None, None)
    return (keep, functype)


_VALTYPES = {"i": wasmtime.ValType.i32, "I": wasmtime.ValType.i64, "f": wasmtime.ValType.f32,
             "F": wasmtime.ValType.f64}


def make_functype(signature: str) -> wasmtime.FuncType:
    params, results = split_signature(signature)
    return wasmtime.FuncType([_VALTYPES[t]() for t in params], [_VALTYPES[t]() for t in results])


def signature_of(functype: wasmtime.FuncType) -> str | None:
    """A FuncType as our signature string, or None when it uses types we do not speak (refs, v128)."""
    names = {str(wasmtime.ValType.i32()): "i", str(wasmtime.ValType.i64()): "I",
             str(wasmtime.ValType.f32()): "f", str(wasmtime.ValType.f64()): "F"}
    try:
        params = "".join(names[str(t)] for t in functype.params)
        results = "".join(names[str(t)] for t in functype.results)
    except KeyError:
        return None
    return f"{params}:{results}"
