"""One instance of a Proxy-Wasm module: load, link, start, the per-request calls, rebuild.

:class:`WasmVm` owns a wasmtime Store with one instance of the module and the
:class:`~metaproxy.wasm.host.AbiHost` serving it. It is built once per worker
process and reused by every request (instantiating per request would cost
milliseconds). Every top-level guest call is bounded: an epoch deadline (CPU
time, see engine.py) and, when configured, fuel; the Store caps linear memory.

A trap leaves the guest's state half-updated (an SDK's context map, its
allocator), so after any trap the VM is marked broken and :meth:`WasmVm.rebuild`
makes a fresh Store and instance from the already compiled module. Streams of
the old instance are dropped: their later callbacks are skipped.

Lifecycle per request, as Envoy drives it: ``proxy_on_context_create`` and
``proxy_on_request_headers`` in ``on_request``; ``proxy_on_response_headers``
when the response comes; then ``proxy_on_done``, ``proxy_on_log``,
``proxy_on_delete``. A request that ends without a response (local reply, a
oneway call, an upstream failure) is finished when metaproxy drops its
RequestContext: a small sentinel in ``ctx.scratch`` queues it, and the next
call into the VM finishes it. The callbacks of one phase run in one entry into
WebAssembly (dispatch.py), and callbacks a module does not export are skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from time import monotonic
from typing import Any

import wasmtime

from metaproxy.chain import RequestContext
from metaproxy.message import ErrorType, ProxyError
from metaproxy.wasm import abi
from metaproxy.wasm.dispatch import compile_dispatcher, instantiate_dispatcher
from metaproxy.wasm.engine import get_engine, ticks_for
from metaproxy.wasm.host import AbiHost, Identity, Stream, unimplemented, wasi_bad_fd, wasi_unsupported
from metaproxy.wasm.metrics import MetricRegistry
from metaproxy.wasm.native import (
    DeadlineSetter,
    GuestFunction,
    GuestMemory,
    HostFailures,
    WasmTrap,
    define_host_function,
    set_fuel,
    signature_of,
    store_context,
)
from metaproxy.wasm.shim import ShimBuffer, ShimModules, install, instantiate_router, routed_names

ROOT_CONTEXT_ID = 1

#: [number of forks this process descends from]: bumped in the child, so a VM made before a fork is
#: recognised as not ours. A list cell, read on every request: cheaper than ``os.getpid()`` (a system call).
FORKS = [0]


def _count_fork() -> None:
    FORKS[0] += 1


os.register_at_fork(after_in_child=_count_fork)

#: proxy_log in WebAssembly: messages below the log level return at once, without leaving wasm.
#: SDKs log at debug level on every context they create; through ctypes each such call cost ~1.5 µs.
_LOG_SHIM_WAT = """
(module
  (import "metaproxy_host" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (global $threshold (export "threshold") (mut i32) (i32.const 2))
  (func (export "proxy_log") (param i32 i32 i32) (result i32)
    (if (result i32) (i32.lt_u (local.get 0) (global.get $threshold))
      (then (i32.const 0))
      (else (call $log (local.get 0) (local.get 1) (local.get 2))))))
"""


@dataclass(frozen=True)
class VmSpec:
    """Everything needed to (re)build the VM; validated by the filter's config reader."""

    module_path: str
    root_id: str
    plugin_name: str
    vm_id: str = ""
    plugin_config: bytes = b""
    vm_config: bytes = b""
    timeout: float = 0.1
    start_timeout: float = 2.0
    fuel: int = 0
    memory_limit: int = 64 * 1024 * 1024
    #: Answer header writes and returned values through the WebAssembly shim (shim.py); off only to compare.
    host_shim: bool = True


class WasmModuleError(ValueError):
    """The module cannot be used: not WebAssembly, not Proxy-Wasm, an import we cannot give, a failed start."""


def load_module(engine: wasmtime.Engine, path: str) -> wasmtime.Module:
    """Compile ``path`` and check it is a Proxy-Wasm module whose callbacks have the ABI's signatures."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise WasmModuleError(f"cannot read wasm module {path}: {exc.strerror or exc}") from None
    try:
        module = wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise WasmModuleError(f"{path} is not a valid WebAssembly module: {str(exc).splitlines()[0]}") from None
    exports = {e.name: e.type for e in module.exports}
    if not any(name in exports for name in abi.ABI_VERSION_EXPORTS):
        raise WasmModuleError(
            f"{path} is not a Proxy-Wasm module: it exports none of {', '.join(abi.ABI_VERSION_EXPORTS)} "
            "(build it with a Proxy-Wasm SDK for ABI 0.2.x)")
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise WasmModuleError(f"{path} does not export its linear memory as 'memory'")
    for name, expected in abi.CALLBACKS.items():
        ty = exports.get(name)
        if ty is None:
            continue
        got = signature_of(ty) if isinstance(ty, wasmtime.FuncType) else None
        if got != expected:
            raise WasmModuleError(f"{path}: export {name} has type {got or type(ty).__name__}, "
                                  f"the ABI says {expected}")
    return module


class WasmVm:
    """A started instance of one module for one filter, reused across requests."""

    def __init__(self, spec: VmSpec, metrics: MetricRegistry, logger: logging.Logger) -> None:
        self.spec = spec
        self.logger = logger
        self.pid = os.getpid()
        self.forks = FORKS[0]
        self.engine = get_engine(spec.fuel > 0)
        self.module = load_module(self.engine, spec.module_path)
        name = os.path.basename(spec.module_path)
        self.identity = Identity(spec.plugin_name, spec.root_id, spec.vm_id, name)
        self.host = AbiHost(self.identity, spec.plugin_config, spec.vm_config, metrics, logger)
        self.failures = HostFailures()
        self.linker = wasmtime.Linker(self.engine)
        self.linker.allow_shadowing = True  # store-bound definitions (the log shim) are replaced on rebuild
        self._keep: list[Any] = []
        self._log_shim: wasmtime.Module | None = None
        self._log_threshold: Any = None
        self._log_threshold_value = -1
        self._link()
        exported = {e.name for e in self.module.exports}
        self._dispatcher, self._dispatched = compile_dispatcher(self.engine, exported)
        #: Which phases have callbacks at all (a phase without any is not entered).
        self.has_request = bool(exported & {"proxy_on_context_create", "proxy_on_request_headers"})
        self.has_finish = bool(exported & {"proxy_on_done", "proxy_on_log", "proxy_on_delete"})
        #: Streams must outlive on_request when the module has callbacks after it.
        self.tracks_streams = self.has_finish or "proxy_on_response_headers" in exported
        self.generation = 0
        self.broken: str | None = None
        #: Streams whose request ended without on_response; finished on the next entry into the VM.
        self.finished_elsewhere: list[Stream] = []
        self._next_stream_id = ROOT_CONTEXT_ID
        self._armed_until = 0.0
        self._fuel = spec.fuel
        #: Set (by the periodic check in _arm) when the linear memory has used most of what memory_limit
        #: left it at start: the filter then rebuilds the instance between requests (filter.py), before a
        #: module whose memory only grows reaches the cap and fails a request. ``renew_now``: most of it.
        self.renew = False
        self.renew_now = False
        self._renew_soft = self._renew_hard = 0
        self._start()

    # -- building ------------------------------------------------------------------------------------
    def _link(self) -> None:
        """Define exactly the imports the module asks for, checking each one's type against the ABI."""
        path = self.spec.module_path
        imported = {item.name or "": signature_of(item.type) or "" for item in self.module.imports
                    if item.module == "env" and isinstance(item.type, wasmtime.FuncType)}
        exports = {e.name: e.type for e in self.module.exports}
        self._allocator = next((name for name in ("proxy_on_memory_allocate", "malloc")
                                if isinstance(exports.get(name), wasmtime.FuncType)), None)
        routed = routed_names(imported, self._allocator is not None) if self.spec.host_shim else []
        self._shim = ShimModules(self.engine, routed) if routed else None
        for item in self.module.imports:
            ty = item.type
            item_module, item_name = item.module, item.name or ""
            where = f"{item_module}.{item_name}"
            if not isinstance(ty, wasmtime.FuncType):
                raise WasmModuleError(f"{path} imports {where} ({type(ty).__name__}); only functions are provided")
            got = signature_of(ty)
            if item_module == "env":
                expected = abi.ENV_FUNCTIONS.get(item_name)
                impl = getattr(self.host, item_name, None) or unimplemented
            elif item_module in abi.WASI_MODULES:
                expected = abi.WASI_FUNCTIONS.get(item_name)
                impl = getattr(self.host, "wasi_" + item_name, None) or (
                    wasi_bad_fd if item_name.startswith(("fd_", "path_")) else wasi_unsupported)
            else:
                raise WasmModuleError(f"{path} imports {where}, which a Proxy-Wasm host does not provide")
            if expected is None:
                if got is None:
                    raise WasmModuleError(f"{path} imports unknown function {where} with unsupported types")
                self.logger.warning("wasm module %s imports unknown %s: it will get UNIMPLEMENTED", path, where)
                expected, impl = got, unimplemented
            elif got != expected:
                raise WasmModuleError(f"{path} imports {where} with type {got}, the ABI says {expected}")
            module_name = item_module
            if item_module == "env" and item_name == "proxy_log" and expected == abi.ENV_FUNCTIONS["proxy_log"]:
                module_name = "metaproxy_host"  # reached through the shim, defined per store in _start
                self._log_shim = wasmtime.Module(self.engine, bytes(wasmtime.wat2wasm(_LOG_SHIM_WAT)))
            if item_module == "env" and item_name in routed:
                module_name = "metaproxy_host"  # reached through the router, defined per store in _start
            self._keep.append(define_host_function(self.linker, module_name, item_name, expected, impl,
                                                   self.failures))

    def _start(self) -> None:
        """New Store and instance, then the module's start-up callbacks. Raises WasmModuleError."""
        spec = self.spec
        self.host.attach_shim(None)  # its view is into the old store's memory
        self.store = store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=spec.memory_limit)
        self.ctx = ctx = store_context(store)
        self._deadline = DeadlineSetter(ctx)
        self._arm(spec.start_timeout)
        try:
            if self._log_shim is not None:
                log_shim = self.linker.instantiate(store, self._log_shim).exports(store)
                self.linker.define(store, "env", "proxy_log", log_shim["proxy_log"])
                self._log_threshold, self._log_threshold_value = log_shim["threshold"], -1
                self._sync_log_threshold()
            router = instantiate_router(self.linker, store, self._shim) if self._shim is not None else None
            instance = self.linker.instantiate(store, self.module)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            pending, self.failures.pending = self.failures.pending, None
            detail = str(pending) if pending is not None else str(exc).splitlines()[0]
            raise WasmModuleError(f"{spec.module_path}: instantiation failed: {detail}") from None
        self.instance = instance
        exports = instance.exports(store)
        shim: ShimBuffer | None = None
        if self._shim is not None:
            try:
                shim = install(self.linker, store, self._shim, router, exports, self._allocator)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise WasmModuleError(f"{spec.module_path}: host shim: {str(exc).splitlines()[0]}") from None
        funcs: dict[str, GuestFunction] = {}
        for name, signature in abi.CALLBACKS.items():
            func = exports.get(name)
            if isinstance(func, wasmtime.Func):
                funcs[name] = GuestFunction(ctx, func, signature, self.failures, name)
        self.funcs = funcs
        self.f_context_create = funcs.get("proxy_on_context_create")
        self.f_request_headers = funcs.get("proxy_on_request_headers")
        self.f_response_headers = funcs.get("proxy_on_response_headers")
        self.f_done = funcs.get("proxy_on_done")
        self.f_log = funcs.get("proxy_on_log")
        self.f_delete = funcs.get("proxy_on_delete")
        self.f_tick = funcs.get("proxy_on_tick")
        try:
            dispatcher = instantiate_dispatcher(store, self._dispatcher, self._dispatched, exports)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise WasmModuleError(f"{spec.module_path}: instantiation failed: {str(exc).splitlines()[0]}") from None
        # The GuestFunctions hold the Func objects whose addresses their calls use: keep them.
        self._dispatch = {name: GuestFunction(ctx, dispatcher[name], signature, self.failures, name)  # type: ignore[arg-type]
                          for name, signature in (("request", "iii:i"), ("response", "ii:i"), ("finish", "i:i"))}
        self.d_request = self._dispatch["request"].call
        self.d_response = self._dispatch["response"].call
        self.d_finish = self._dispatch["finish"].call
        host = self.host
        host.attach(GuestMemory(ctx, exports["memory"]),  # type: ignore[arg-type]
                    funcs.get("proxy_on_memory_allocate") or funcs.get("malloc"))
        host.attach_shim(shim)
        host.streams.clear()
        host.current = None
        host.awaiting_done.clear()
        host.done_requested.clear()
        host.tick_period_ms = 0
        try:
            self._startup_calls(funcs)
        except WasmTrap as trap:
            raise WasmModuleError(f"{spec.module_path}: start-up failed: {trap.kind}: {trap.message}") from None
        finally:
            if host.logs:
                host.flush_logs()
        started = host.memory.size()  # type: ignore[union-attr]
        room = spec.memory_limit - started
        self._renew_soft = started + room * 3 // 4 if room > 0 else 0
        self._renew_hard = started + room * 7 // 8 if room > 0 else 0
        self.renew = self.renew_now = False

    def _startup_calls(self, funcs: dict[str, GuestFunction]) -> None:
        spec = self.spec
        if "_initialize" in funcs:
            funcs["_initialize"]()
            if "main" in funcs:
                funcs["main"](0, 0)
        elif "_start" in funcs:
            funcs["_start"]()
        # The root context exists before on_vm_start (as Envoy does it: SDKs look it up there).
        if self.f_context_create is not None:
            self.f_context_create(ROOT_CONTEXT_ID, 0)
        start = funcs.get("proxy_on_vm_start")
        if start is not None and not start(ROOT_CONTEXT_ID, len(spec.vm_config)):
            raise WasmModuleError(f"{spec.module_path}: proxy_on_vm_start refused the VM configuration")
        configure = funcs.get("proxy_on_configure")
        if configure is not None and not configure(ROOT_CONTEXT_ID, len(spec.plugin_config)):
            raise WasmModuleError(f"{spec.module_path}: proxy_on_configure refused the plugin configuration")

    def rebuild(self) -> None:
        """Replace a broken instance with a fresh one (same compiled module). Raises WasmModuleError."""
        self.generation += 1
        self.finished_elsewhere.clear()
        self.broken = None
        try:
            self._start()
        except WasmModuleError as exc:
            self.broken = str(exc)
            raise

    # -- bounded calls -----------------------------------------------------------------------------------
    def _arm(self, seconds: float | None = None) -> None:
        """Bound the next top-level guest call: epoch deadline, and fuel when configured.

        Setting the deadline is a C call, so it is not repeated for every call:
        it is set to ``timeout * 1.25`` and renewed once more than ``timeout / 4``
        has passed. A call therefore always gets at least ``timeout``, and is
        stopped after at most ``1.25 * timeout`` plus one epoch tick. Hot paths
        check ``self._fuel or monotonic() >= self._armed_until`` before calling this.
        """
        if seconds is not None:
            self._deadline(ticks_for(seconds))
            self._armed_until = 0.0
        else:
            now = monotonic()
            if now >= self._armed_until:
                timeout = self.spec.timeout
                self._deadline(ticks_for(timeout * 1.25))
                self._armed_until = now + timeout * 0.25
                if self._log_threshold is not None:
                    self._sync_log_threshold()
                if self._renew_soft:
                    self._check_memory()
        if self._fuel:
            set_fuel(self.ctx, self._fuel)

    def _check_memory(self) -> None:
        """Flag the instance for renewal when its memory has used 3/4 of the room memory_limit left it at start
        (7/8: renew even with requests in flight). Runs with the deadline renewal, every ``timeout / 4``."""
        size = self.host.memory.size() if self.host.memory is not None else 0
        if size >= self._renew_soft:
            self.renew = True
            self.renew_now = size >= self._renew_hard

    def _sync_log_threshold(self) -> None:
        """Tell the log shim the current level (the logger's level may change at run time)."""
        value = self.host.log_threshold()
        if value != self._log_threshold_value:
            self._log_threshold.set_value(self.store, value)
            self._log_threshold_value = value

    def _trapped(self, trap: WasmTrap) -> None:
        memory = self.host.memory
        if trap.kind == "trap" and memory is not None and memory.size() > self.spec.memory_limit // 2:
            # Most likely the module gave up after the Store refused to grow its memory (wasmtime does
            # not say so: memory.grow just returns -1): name it, with the numbers.
            trap.kind = "memory_limit"
            trap.message = trap.message + f" (linear memory {memory.size()} of {self.spec.memory_limit} bytes)"
        self.broken = f"{trap.kind}: {trap.message}"
        self.host.streams.clear()
        self.host.current = None
        words = self.host.words
        words[0] = words[1] = 0  # writes recorded by the failed call are dropped

    # -- per request ---------------------------------------------------------------------------------------
    def request_headers(self, rctx: RequestContext) -> tuple[Stream, ProxyError | None]:
        """Run the request callbacks; return the stream and the local reply, if the module made one.

        One entry into WebAssembly (the dispatcher's ``request``) runs
        ``proxy_on_context_create`` and ``proxy_on_request_headers``.
        Raises WasmTrap (the VM is then broken) when the module traps.
        """
        if self.finished_elsewhere:
            self.finish_pending()
            if self.broken:
                raise WasmTrap("trap", f"the instance broke finishing an earlier request: {self.broken}")
        host = self.host
        context_id = self._next_stream_id = self._next_stream_id + 1
        stream = Stream(context_id, rctx, self.generation)
        host.streams[context_id] = stream
        action = abi.ACTION_CONTINUE
        if self.has_request:
            host.enter_phase(stream, rctx, 0)
            if self._fuel or monotonic() >= self._armed_until:
                self._arm()
            try:
                action = self.d_request(context_id, ROOT_CONTEXT_ID, len(rctx.metadata)) or 0
            except WasmTrap as trap:
                self._trapped(trap)
                raise
            finally:
                host.leave_phase(stream)
        else:
            stream.ctx = None
        reply = stream.local_reply
        if reply is None:
            if action == abi.ACTION_PAUSE and not stream.continued:
                reply = ProxyError(ErrorType.UNSPECIFIED,
                                   f"wasm filter {self.identity.plugin_name} paused the request; "
                                   "asynchronous continuation is not supported")
            elif self.tracks_streams:
                return stream, None
        self.finish(stream)
        return stream, reply

    def response_headers(self, stream: Stream, rctx: RequestContext) -> None:
        """``proxy_on_response_headers``, then finish the stream: one entry (the dispatcher's ``response``)."""
        if stream.finished or stream.generation != self.generation or self.broken:
            return
        stream.finished = True
        host = self.host
        stream.ctx = rctx
        host.enter_phase(stream, rctx, 1)
        if self._fuel or monotonic() >= self._armed_until:
            self._arm()
        try:
            metadata = rctx.response_metadata
            done = self.d_response(stream.context_id, len(metadata) if metadata is not None else 0)
        except WasmTrap as trap:
            self._trapped(trap)
            raise
        finally:
            host.leave_phase(stream)
        if stream.local_reply is not None:
            self.logger.warning("wasm[%s] sent a local response while processing a response: ignored",
                                self.identity.plugin_name)
        if done:  # what _finished does, written out on the path every answered request takes
            host.streams.pop(stream.context_id, None)
            if host.done_requested:
                self._drain_done_requested()
        else:
            host.awaiting_done.add(stream.context_id)

    def finish(self, stream: Stream) -> None:
        """proxy_on_done, then proxy_on_log and proxy_on_delete (unless on_done asks to wait)."""
        if stream.finished:
            return
        stream.finished = True
        host = self.host
        if stream.generation != self.generation or self.broken or not self.has_finish:
            host.streams.pop(stream.context_id, None)
            return
        host.current = stream
        if self._fuel or monotonic() >= self._armed_until:
            self._arm()
        try:
            done = self.d_finish(stream.context_id)
        except WasmTrap as trap:
            self._trapped(trap)
            raise
        finally:
            host.set_current(None)
            if host.logs:
                host.flush_logs()
        self._finished(stream.context_id, done)

    def _finished(self, context_id: int, done: int | None) -> None:
        """After the finishing callbacks: forget the stream, or keep it until it calls proxy_done."""
        host = self.host
        if done:
            host.streams.pop(context_id, None)
            if host.done_requested:
                self._drain_done_requested()
        else:
            host.awaiting_done.add(context_id)  # still addressable until proxy_done

    def _drain_done_requested(self) -> None:
        """proxy_on_log and proxy_on_delete for the contexts that called proxy_done."""
        host = self.host
        try:
            while host.done_requested:
                requested, host.done_requested = host.done_requested, []
                for context_id in requested:
                    host.current = host.streams.pop(context_id, None)
                    if self.f_log is not None:
                        self.f_log(context_id)
                    if self.f_delete is not None:
                        self.f_delete(context_id)
        except WasmTrap as trap:
            self._trapped(trap)
            raise
        finally:
            host.current = None
            if host.logs:
                host.flush_logs()

    def finish_pending(self) -> None:
        """Finish streams whose requests ended without a response (queued by their sentinels)."""
        pending, self.finished_elsewhere = self.finished_elsewhere, []
        for stream in pending:
            try:
                self.finish(stream)
            except WasmTrap as trap:
                self.logger.error("wasm module %s trapped finishing a request: %s", self.identity.module_name,
                                  self.broken or trap.message)
                return

    def tick(self) -> None:
        """proxy_on_tick on the root context (from the filter's timer greenlet)."""
        if self.f_tick is None or self.broken:
            return
        host = self.host
        host.current = None
        self._arm()
        try:
            self.f_tick(ROOT_CONTEXT_ID)
        except WasmTrap as trap:
            self._trapped(trap)
            raise
        finally:
            if host.logs:
                host.flush_logs()
        if host.done_requested:
            self._drain_done_requested()  # handles its own traps
