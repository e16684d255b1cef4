"""The fast path into and out of wasmtime: raw ctypes calls, no per-call type lookups.

Why this exists: wasmtime-py's friendly ``Func.__call__`` and ``Linker.define_func``
look the function type up, build ``Val`` objects and ``Caller`` wrappers on
every call; measured, a filter making a few host calls cost ~50 µs per request
that way. Here both directions use wasmtime's *unchecked* C entry points:

* guest calls (:class:`GuestFunction`): a closure per export writes the i32
  parameters into a reused ``wasmtime_val_raw_t`` array through a memoryview
  and runs ``wasmtime_func_call_unchecked`` with prebuilt ctypes arguments;
  signatures were checked once at load (vm.py), which is what makes
  "unchecked" safe;
* host calls (:func:`define_host_function`): one ctypes callback per import,
  generated per arity, reading its arguments with one memoryview item access each.

Guest memory is read and written only through :class:`GuestMemory`, which checks
every pointer against the memory size: a bad pointer from a module is an
INVALID_MEMORY_ACCESS status, never a read outside the sandbox.
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
_set_epoch_deadline = _proto("wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)


def _raw(name: str, restype: Any) -> Any:
    """A prototype without argtypes, for hot calls whose arguments are all prebuilt ctypes objects.

    Converting Python ints through argtypes costs more than the C call itself
    (~1.2 µs of ~1.7 µs for a guest call); prebuilt c_void_p/c_size_t objects are
    passed as they are. Every argument must be a ctypes instance: a bare int
    would be passed as a 32-bit C int.
    """
    fn = _dll[name]
    fn.restype = restype
    return fn


_call_raw = _raw("wasmtime_func_call_unchecked", c_void_p)
_memory_data_raw = _raw("wasmtime_memory_data", c_void_p)
_memory_data_size_raw = _raw("wasmtime_memory_data_size", c_size_t)
_set_epoch_deadline_raw = _raw("wasmtime_context_set_epoch_deadline", None)
_set_fuel = _proto("wasmtime_context_set_fuel", c_void_p, c_void_p, c_uint64)
_trap_new = _proto("wasmtime_trap_new", c_void_p, ctypes.c_char_p, c_size_t)
_increment_epoch = _proto("wasmtime_engine_increment_epoch", None, c_void_p)



class WasmTrap(Exception):
    """A guest call ended in a trap: ``kind`` is interrupt | memory | trap | host | exit."""

    kind: str
    message: str

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
#: How a host function writes its (first) result. i32 results are written unsigned, so host
#: functions return non-negative ints (statuses, or masked values).
_RESULT = {"i": struct.Struct("<I"), "I": struct.Struct("<q"), "f": struct.Struct("<f"), "F": struct.Struct("<d")}


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
    err = wasmtime.WasmtimeError._from_ptr(ctypes.cast(error or 0, ctypes.POINTER(ffi.wasmtime_error_t)))
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

    Calling it returns the first result (an int) or None. The call itself is a
    closure made once (:func:`_make_call`) and stored as ``call``; instances
    are called through ``call`` on the hot path, since a Python ``__call__``
    costs an extra dispatch. Arguments and results share one preallocated raw
    array, as the unchecked API wants.
    """

    __slots__ = ("name", "call", "_keep")

    def __init__(self, ctx: int, func: wasmtime.Func, signature: str, failures: HostFailures, name: str) -> None:
        self.name = name
        self._keep = func
        self.call = _make_call(ctx, func._func, signature, failures)

    def __call__(self, *params: int) -> int | None:
        return self.call(*params)


def _make_call(ctx: int, func: Any, signature: str, failures: HostFailures) -> Callable[..., int | None]:
    """A closure calling ``func`` with everything prebuilt: the raw array, the ctypes arguments, the trap cell.

    Why a closure per arity: every name it uses is a cell variable (no attribute
    lookups), i32 arguments are stored with one memoryview item assignment each
    (a slot is 16 bytes, so slot k's i32 is u32 item 4k), and the trap cell is
    read through a memoryview instead of ``c_void_p.value``. The five C arguments
    are prebuilt ctypes argument objects (``byref``/``from_param``), which ctypes passes
    as they are; ``c_void_p`` instances would each cost a type-descriptor lookup
    per call (measured: 4.0k instead of 5.6k instructions per call). ``func`` is
    the ``wasmtime_func_t`` structure (the caller keeps it alive).
    """
    params, results = split_signature(signature)
    n = max(len(params), len(results), 1)
    args = (ffi.wasmtime_val_raw_t * n)()
    trap_cell = (ctypes.c_uint64 * 1)()
    trap_view = memoryview(trap_cell).cast("B").cast("Q")
    u32 = memoryview(args).cast("B").cast("I")
    raw_view = memoryview(args).cast("B")
    at_ctx = ctypes.c_char.from_address(ctx)  # byref() of an object at the context's address passes that address
    call_args = (ctypes.byref(at_ctx), ctypes.byref(func), ctypes.byref(args), c_size_t.from_param(n),
                 ctypes.byref(trap_cell))
    call_raw = _call_raw
    has_result = results[:1] == "i"

    def failed(error: int | None) -> WasmTrap:
        trap, trap_view[0] = trap_view[0], 0  # wasmtime writes it only on a trap: reset here
        pending, failures.pending = failures.pending, None
        return _trap_from(error, trap or None, pending)

    if params in ("", "i", "ii", "iii") and (has_result or not results):
        return _FIXED_CALLS[len(params)](u32, call_raw, call_args, trap_view, failed, has_result)

    packer = _struct_for(params) if params else None
    reader = _struct_for(results[:1]) if results else None

    def call_any(*values: int) -> int | None:
        if packer is not None:
            packer.pack_into(raw_view, 0, *values)
        error = call_raw(*call_args)
        if error is not None or trap_view[0]:
            raise failed(error)
        return reader.unpack_from(raw_view)[0] if reader is not None else None

    return call_any


# The closures for 0-3 i32 parameters, one factory each (a compiled module cannot redefine a nested function).
def _call0(u32: Any, call_raw: Any, call_args: Any, trap_view: Any, failed: Callable[[int | None], WasmTrap],
           has_result: bool) -> Callable[..., int | None]:
    def call() -> int | None:
        error = call_raw(*call_args)
        if error is not None or trap_view[0]:
            raise failed(error)
        return u32[0] if has_result else None
    return call


def _call1(u32: Any, call_raw: Any, call_args: Any, trap_view: Any, failed: Callable[[int | None], WasmTrap],
           has_result: bool) -> Callable[..., int | None]:
    def call(a: int) -> int | None:
        u32[0] = a
        error = call_raw(*call_args)
        if error is not None or trap_view[0]:
            raise failed(error)
        return u32[0] if has_result else None
    return call


def _call2(u32: Any, call_raw: Any, call_args: Any, trap_view: Any, failed: Callable[[int | None], WasmTrap],
           has_result: bool) -> Callable[..., int | None]:
    def call(a: int, b: int) -> int | None:
        u32[0] = a
        u32[4] = b
        error = call_raw(*call_args)
        if error is not None or trap_view[0]:
            raise failed(error)
        return u32[0] if has_result else None
    return call


def _call3(u32: Any, call_raw: Any, call_args: Any, trap_view: Any, failed: Callable[[int | None], WasmTrap],
           has_result: bool) -> Callable[..., int | None]:
    def call(a: int, b: int, c: int) -> int | None:
        u32[0] = a
        u32[4] = b
        u32[8] = c
        error = call_raw(*call_args)
        if error is not None or trap_view[0]:
            raise failed(error)
        return u32[0] if has_result else None
    return call


_FIXED_CALLS = (_call0, _call1, _call2, _call3)


class GuestMemory:
    """Bounds-checked access to the guest's linear memory (its ``memory`` export).

    The host address and size of the memory are cached. The engine is built with
    ``memory_may_move = False`` (engine.py), so the base address never changes
    and a memory only grows: a pointer inside the cached size is inside the
    memory, and the size is re-read only when an access seems to fall outside
    it (:meth:`reaches`). No C call per host call for that.
    """

    __slots__ = ("_keep", "_args", "limit", "view")

    def __init__(self, ctx: int, memory: wasmtime.Memory) -> None:
        self._keep = memory
        self._args = (c_void_p(ctx), c_void_p(ctypes.addressof(memory._memory)))
        self.limit = -1
        self.view = memoryview(b"")
        self.sync()

    def sync(self) -> None:
        """Re-read the memory's size (and, when it changed, make a view over all of it)."""
        size = _memory_data_size_raw(*self._args)
        if size != self.limit:
            base = _memory_data_raw(*self._args) or 0
            # A memoryview over the whole memory: slicing it is C-speed, unlike ctypes.string_at.
            self.view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B") if size else memoryview(b"")
            self.limit = size

    def reaches(self, end: int) -> bool:
        """Whether ``[0, end)`` is inside the memory; re-reads its size when the cached one is too small.

        Callers check ``end <= self.limit`` first (the common case, no call).
        """
        if end <= self.limit:
            return True
        self.sync()
        return end <= self.limit

    def size(self) -> int:
        self.sync()
        return self.limit

    def read(self, ptr: int, size: int) -> bytes | None:
        end = ptr + size
        if end > self.limit and not self.reaches(end):
            return None
        return self.view[ptr:end].tobytes()

    def read_str(self, ptr: int, size: int) -> str | None:
        """UTF-8 text at ``ptr`` (copy then decode: measured cheaper than decoding the memoryview slice)."""
        end = ptr + size
        if end > self.limit and not self.reaches(end):
            return None
        return self.view[ptr:end].tobytes().decode("utf-8", "replace")

    def write(self, ptr: int, data: bytes) -> bool:
        end = ptr + len(data)
        if end > self.limit and not self.reaches(end):
            return False
        self.view[ptr:end] = data
        return True

    def write_u32(self, ptr: int, value: int) -> bool:
        if ptr + 4 > self.limit and not self.reaches(ptr + 4):
            return False
        _U32.pack_into(self.view, ptr, value & 0xFFFFFFFF)
        return True

    def write_u32_pair(self, ptr_a: int, a: int, ptr_b: int, b: int) -> bool:
        end = max(ptr_a, ptr_b) + 4
        if end > self.limit and not self.reaches(end):
            return False
        view = self.view
        _U32.pack_into(view, ptr_a, a & 0xFFFFFFFF)
        _U32.pack_into(view, ptr_b, b & 0xFFFFFFFF)
        return True

    def write_u64(self, ptr: int, value: int) -> bool:
        if ptr + 8 > self.limit and not self.reaches(ptr + 8):
            return False
        _U64.pack_into(self.view, ptr, value & 0xFFFFFFFFFFFFFFFF)
        return True


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def set_epoch_deadline(ctx: int, ticks: int) -> None:
    _set_epoch_deadline(ctx, ticks)


class DeadlineSetter:
    """``set_epoch_deadline`` for one store with prebuilt arguments (called once per request or so)."""

    __slots__ = ("_ctx", "_ticks")

    def __init__(self, ctx: int) -> None:
        self._ctx = c_void_p(ctx)
        self._ticks: dict[int, c_uint64] = {}

    def __call__(self, ticks: int) -> None:
        arg = self._ticks.get(ticks)
        if arg is None:
            arg = self._ticks[ticks] = c_uint64(ticks)
        _set_epoch_deadline_raw(self._ctx, arg)


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
    writer = _RESULT[results[0]] if results else None
    slot_bytes = _VAL_RAW_SIZE * max(len(params), len(results), 1)
    message = f"host function {module}.{name} failed".encode()
    # wasmtime passes the arguments in a raw array on its stack; the same call path reuses the same
    # address, so a memoryview per address (few) avoids a ctypes conversion per call.
    views: dict[int, memoryview] = {}
    view_type = ctypes.c_ubyte * slot_bytes

    def view_at(raw: int) -> memoryview:
        if len(views) > 64:
            views.clear()
        view = memoryview(view_type.from_address(raw)).cast("B")
        if fast:
            view = view.cast("I")
        views[raw] = view
        return view

    def trap(exc: BaseException) -> int:
        failures.pending = exc
        return _trap_new(message, len(message)) or 0

    fast = set(params) <= {"i"} and results in ("i", "") and len(params) <= _MAX_FAST_ARITY
    if fast:
        callback = _FAST_CALLBACKS[len(params), bool(results)](impl, views, view_at, trap)
    else:
        def callback(_env: Any, _caller: Any, raw: int, _n: int) -> int:  # (NULL void* arrive as None)
            try:
                view = views.get(raw) or view_at(raw)
                rc = impl(*reader.unpack_from(view)) if reader is not None else impl()
                if writer is not None:
                    writer.pack_into(view, 0, rc or 0)
                return 0
            except BaseException as exc:  # noqa: BLE001 - every failure must become a trap, not a crash
                return trap(exc)

    keep = HOST_CALLBACK(callback)
    functype = make_functype(signature)
    mod, nm = module.encode(), name.encode()
    error = _define_unchecked(address(linker.ptr()), mod, len(mod), nm, len(nm), address(functype.ptr()),
                              keep, None, None)
    if error:
        raise _trap_from(error, None, None)
    return (keep, functype)


_MAX_FAST_ARITY = 10


def _fast_callback_factory(arity: int, has_result: bool) -> Callable[..., Callable[..., int]]:
    """Source-generated host callback for ``arity`` i32 parameters (and an i32 result or none).

    Why generated: the arguments are read with one memoryview item access each
    (slot k's i32 is u32 item 4k) and passed positionally, and the result written
    the same way; against ``struct.unpack`` plus ``impl(*args)`` this saves a
    tuple and a star-call on every host call, the hottest path of the host.
    Any Python exception becomes a trap (``trap`` parks it for the caller).
    """
    args = ", ".join(f"u[{4 * k}]" for k in range(arity))
    call = f"u[0] = impl({args}) or 0" if has_result else f"impl({args})"
    source = (
        "def factory(impl, views, view_at, trap):\n"
        "    def callback(_env, _caller, raw, _n):\n"
        "        try:\n"
        "            u = views.get(raw) or view_at(raw)\n"
        f"            {call}\n"
        "            return 0\n"
        "        except BaseException as exc:\n"
        "            return trap(exc)\n"
        "    return callback\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<wasm host callback {arity}>", "exec"), namespace)  # noqa: S102 - fixed template
    return namespace["factory"]


_FAST_CALLBACKS = {(arity, has_result): _fast_callback_factory(arity, has_result)
                   for arity in range(_MAX_FAST_ARITY + 1) for has_result in (False, True)}


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
