"""The ``wasm`` filter: run a Proxy-Wasm module (ABI 0.2.1) on every request of a listener.

Config (a filter entry; paths are relative to the config file's folder)::

    - name: wasm
      module: filters/wasm/add_header.wasm   # required
      root_id: add_header                    # what plugin_root_id returns (SDKs pick their root context by it)
      plugin_name: add-header                # for logs, stats (wasm.<plugin_name>.*); default root_id or file name
      config: {header: x-mesh}               # plugin configuration: a string as is, anything else as JSON
      fail_open: false                       # true: a failing module lets requests through instead of failing them
      vm_config:
        vm_id: ""                            # what plugin_vm_id returns
        configuration: ...                   # VM configuration (proxy_on_vm_start), string or JSON
        timeout: 100ms                       # CPU-time bound of one entry into the module (epoch interruption)
        fuel: 0                              # instructions bound of one entry (0: off)
        memory_limit: 64MiB                  # linear memory cap of the instance
        max_rebuilds_per_minute: 30          # crash-loop guard
        host_shim: true                      # header writes and returned values through the WebAssembly shim
                                             # (shim.py); false: every host call goes to Python (to compare)

A module that is not usable (unreadable, not WebAssembly, no
``proxy_abi_version_0_2_x`` export, an import no host provides, a start-up or
``proxy_on_configure`` failure) is refused when the config loads.

At run time a trap (loop stopped by the bound, memory cap, ``unreachable``, bad
pointer, a failing host call) fails only the request that hit it: the client
gets an error reply, a log line names the module, ``wasm.<plugin>.traps`` is
counted, and the next request runs on a rebuilt instance.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import gevent

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.message import ErrorType, ProxyError
from metaproxy.settings import Section
from metaproxy.stats import StatsStore
from metaproxy.wasm.metrics import MetricRegistry
from metaproxy.wasm.native import WasmTrap
from metaproxy.wasm.sentinel import StreamSentinel
from metaproxy.wasm.vm import FORKS, VmSpec, WasmModuleError, WasmVm

log = logging.getLogger("metaproxy.wasm")

_SIZE = re.compile(r"^\s*(\d+)\s*(k|ki|kib|kb|m|mi|mib|mb|g|gi|gib|gb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: Any) -> int:
    """``67108864``, ``64MiB``, ``64Mi``, ``512k`` -> bytes (binary units). Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.match(str(value)) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"expected a size like 64MiB or a number of bytes, got {value!r}")
    unit = (m.group(2) or "")[:1].lower()
    return int(m.group(1)) * _SIZE_UNITS.get(unit, 1)


def config_bytes(value: Any) -> bytes:
    """Configuration as the module reads it: a string as is, anything else as compact JSON."""
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=False).encode("utf-8")


def parse_options(options: Mapping[str, Any], env: FilterEnv) -> tuple[VmSpec, bool, int]:
    """Filter options -> (VmSpec, fail_open, max_rebuilds_per_minute). Raises ValueError("key: problem")."""
    problems: list[str] = []
    top = Section(dict(options), "", problems)
    module = top.take("module", str)
    root_id = top.take("root_id", str, "")
    plugin_name = top.take("plugin_name", str, "")
    config = top.raw("config")
    fail_open = top.take("fail_open", bool, False)
    vm_id, vm_configuration, timeout, fuel, memory_limit, max_rebuilds = "", None, 0.1, 0, 64 << 20, 30
    host_shim = True
    vm = top.section("vm_config")
    if vm is not None:
        vm_id = vm.take("vm_id", str, "")
        vm_configuration = vm.raw("configuration")
        timeout = vm.take("timeout", "duration", 0.1)
        fuel = vm.take("fuel", int, 0)
        memory_limit = vm.take("memory_limit", (int, str), 64 << 20, check=parse_size)
        max_rebuilds = vm.take("max_rebuilds_per_minute", int, 30)
        host_shim = vm.take("host_shim", bool, True)
        if timeout is not None and timeout <= 0:
            vm.problem("must be more than 0", "timeout")
        if fuel is not None and fuel < 0:
            vm.problem("must not be negative", "fuel")
        vm.finish()
    top.finish(allowed_extra=("name",))
    if problems:
        raise ValueError("; ".join(problems))
    path = module if os.path.isabs(module) else os.path.join(env.base_dir or ".", module)
    stem = os.path.splitext(os.path.basename(module))[0]
    spec = VmSpec(
        module_path=os.path.normpath(path),
        root_id=root_id,
        plugin_name=plugin_name or root_id or stem,
        vm_id=vm_id,
        plugin_config=config_bytes(config),
        vm_config=config_bytes(vm_configuration),
        timeout=timeout,
        start_timeout=max(2.0, timeout),
        fuel=fuel,
        memory_limit=memory_limit,
        host_shim=bool(host_shim),
    )
    return spec, fail_open, max_rebuilds


class WasmFilter(Filter):
    """Host of one Proxy-Wasm plugin: one instance per worker process, reused by every request."""

    name = "wasm"
    blocking = False  # a module runs to the end in one ctypes call; no host call waits

    def __init__(self, options: Mapping[str, Any], env: FilterEnv) -> None:
        super().__init__(options, env)
        self.spec, self.fail_open, self.max_rebuilds = parse_options(options, env)
        store = env.services.get("stats")
        if not isinstance(store, StatsStore):
            store = StatsStore()
        scope = f"wasm.{self.spec.plugin_name}"
        self.metrics = MetricRegistry(store, scope)
        self.traps = store.counter(scope, "traps")
        self.rebuilds = store.counter(scope, "rebuilds")
        self.unavailable = store.counter(scope, "unavailable")
        self.renewals = store.counter(scope, "renewals")
        try:
            self._vm = WasmVm(self.spec, self.metrics, log)
        except WasmModuleError as exc:
            raise ValueError(f"module: {exc}") from None
        self._key = f"wasm:{id(self)}"
        self._rebuild_times: collections.deque[float] = collections.deque()
        self._tick_ms = 0
        self._ticker: Any = None
        self._closed = False
        self._sync_tick()

    # -- the VM of this process ----------------------------------------------------------------------
    def _ready_vm(self) -> WasmVm | ProxyError:
        """This worker's VM, rebuilt if a trap broke it (within the crash-loop budget), or the error to reply."""
        vm = self._vm
        if vm.forks != FORKS[0]:  # forked worker: never share an instance (or an engine) across processes
            self._vm = vm = WasmVm(self.spec, self.metrics, log)
        if vm.finished_elsewhere and vm.broken is None:
            vm.finish_pending()  # before this request: if that traps, this request still gets a fresh VM
        if vm.renew and vm.broken is None:
            self._renew(vm)
        if vm.broken is None:
            return vm
        now = time.monotonic()
        times = self._rebuild_times
        while times and now - times[0] > 60.0:
            times.popleft()
        if len(times) >= self.max_rebuilds:
            self.unavailable.inc()
            return ProxyError(ErrorType.UNSPECIFIED,
                              f"wasm filter {self.spec.plugin_name} unavailable: its module keeps failing")
        times.append(now)
        self.rebuilds.inc()
        try:
            vm.rebuild()
        except WasmModuleError as exc:
            log.error("wasm filter %s: rebuilding the VM failed: %s", self.spec.plugin_name, exc)
            self.unavailable.inc()
            return ProxyError(ErrorType.UNSPECIFIED, f"wasm filter {self.spec.plugin_name} unavailable")
        log.info("wasm filter %s: VM rebuilt (generation %d)", self.spec.plugin_name, vm.generation)
        self._sync_tick()
        return vm

    def _renew(self, vm: WasmVm) -> None:
        """Rebuild an instance whose memory nears memory_limit, between requests, so that no request fails.

        Why: a module whose linear memory only grows (WebAssembly memory never
        shrinks; some SDK runtimes leak a little per request) would otherwise trap
        on the request that reaches the cap. Done when no request is in flight on
        the instance (their later callbacks would be skipped, as after a trap), or
        regardless once 7/8 of the room is used. Not a failure: the crash-loop
        budget is not charged.
        """
        if vm.host.streams and not vm.renew_now:
            return  # wait for a moment without requests in flight
        size = vm.host.memory.size() if vm.host.memory is not None else 0
        try:
            vm.rebuild()
        except WasmModuleError as exc:
            log.error("wasm filter %s: renewing the VM failed: %s", self.spec.plugin_name, exc)
            return  # vm.broken is set: the usual rebuild path (and its budget) takes over
        self.renewals.inc()
        log.info("wasm filter %s: VM renewed before its memory reached memory_limit (%d of %d bytes; generation %d)",
                 self.spec.plugin_name, size, self.spec.memory_limit, vm.generation)
        self._sync_tick()

    def _failed(self, vm: WasmVm, trap: WasmTrap, ctx: RequestContext | None) -> ProxyError | None:
        self.traps.inc()
        request_id = ctx.metadata.get_str("request_id", "-") if ctx is not None else "-"
        log.error("wasm module %s (filter %s) trapped on request %s: %s: %s; the VM will be rebuilt",
                  vm.spec.module_path, self.spec.plugin_name, request_id, trap.kind, trap.message)
        if self.fail_open:
            return None
        return ProxyError(ErrorType.UNSPECIFIED, f"wasm filter {self.spec.plugin_name} failed: {trap.kind}")

    # -- hooks ---------------------------------------------------------------------------------------------
    def on_request(self, ctx: RequestContext) -> ProxyError | None:
        vm = self._vm
        if vm.broken is not None or vm.finished_elsewhere or vm.forks != FORKS[0] or vm.renew:
            ready = self._ready_vm()
            if isinstance(ready, ProxyError):
                return None if self.fail_open else ready
            vm = ready
        try:
            stream, reply = vm.request_headers(ctx)
        except WasmTrap as trap:
            return self._failed(vm, trap, ctx)
        if not stream.finished:
            ctx.scratch[self._key] = StreamSentinel((stream, vm))
        if vm.host.tick_period_ms != self._tick_ms:
            self._sync_tick()
        return reply

    def on_response(self, ctx: RequestContext) -> None:
        sentinel = ctx.scratch.get(self._key)
        if sentinel is None:
            return
        stream, vm = sentinel
        try:
            vm.response_headers(stream, ctx)
        except WasmTrap as trap:
            self._failed(vm, trap, ctx)

    # -- ticks -----------------------------------------------------------------------------------------------
    def _sync_tick(self) -> None:
        """Follow proxy_set_tick_period_milliseconds: a greenlet calls proxy_on_tick at that period."""
        vm = self._vm
        period = vm.host.tick_period_ms if vm.f_tick is not None else 0
        self._tick_ms = vm.host.tick_period_ms
        if period and self._ticker is None:
            self._ticker = gevent.spawn(self._tick_loop)
        elif not period and self._ticker is not None:
            self._ticker.kill(block=False)
            self._ticker = None

    def _tick_loop(self) -> None:
        while True:
            vm = self._vm
            period = vm.host.tick_period_ms
            if not period or vm.f_tick is None:
                self._ticker = None
                return
            gevent.sleep(period / 1000.0)
            if self._closed:
                return
            vm = self._vm
            if vm.broken is not None or vm.forks != FORKS[0]:
                continue
            try:
                vm.tick()
            except WasmTrap as trap:
                self._failed(vm, trap, None)

    def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.kill(block=False)
            self._ticker = None
