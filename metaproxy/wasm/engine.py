"""One wasmtime Engine per process (and per fuel setting), with its epoch ticker.

Epoch interruption bounds every guest call by CPU time: the store's deadline
is "N ticks from now", and a ticker advances the engine's epoch once per
``TICK_SECONDS`` of process CPU time. The ticker must be a real OS thread: the guest runs inside a
ctypes call that holds the process's only gevent hub, so a greenlet (or a
gevent-patched ``threading.Timer``) would never get to tick while a module
loops. Under ``gevent.monkey.patch_all`` the original ``threading.Thread`` and
``time.sleep`` are used. The thread only calls ``wasmtime_engine_increment_epoch``,
which is safe from any thread.

Engines are per process id: after a fork the child builds its own (and its own
ticker, since threads do not survive fork).
"""

from __future__ import annotations

import _thread
import os
import threading
import time
from typing import Any

import wasmtime

from metaproxy.wasm.native import increment_epoch

TICK_SECONDS = 0.01

_engines: dict[tuple[int, bool], wasmtime.Engine] = {}
_lock = threading.Lock()


def _original_threading() -> tuple[Any, Any]:
    """(start_new_thread, sleep) that are real OS ones even under gevent monkey-patching.

    The low-level ``_thread.start_new_thread`` is used, not ``threading.Thread``:
    the original Thread class still waits for its start on patched primitives,
    which blocks the hub before it runs.
    """
    start, sleep = _thread.start_new_thread, time.sleep
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return start, sleep
    if monkey.is_module_patched("_thread") or monkey.is_module_patched("threading"):
        start = monkey.get_original("_thread", "start_new_thread")
    if monkey.is_module_patched("time"):
        sleep = monkey.get_original("time", "sleep")
    return start, sleep


def _tick_forever(engine: wasmtime.Engine, sleep: Any) -> None:
    """Advance the epoch by the process's CPU time, one tick per TICK_SECONDS of it.

    CPU time, not wall time: a worker that the OS does not run (an overloaded
    machine, a CPU quota throttling the container) must not see its callbacks
    interrupted for time they did not use; a module spinning in a loop burns CPU
    and is stopped on schedule. Other threads' CPU only makes the bound stricter.
    """
    cpu = time.process_time
    last = cpu()
    carry = 0.0
    while True:
        sleep(TICK_SECONDS)
        now = cpu()
        carry += now - last
        last = now
        while carry >= TICK_SECONDS:
            increment_epoch(engine)
            carry -= TICK_SECONDS


def get_engine(fuel: bool) -> wasmtime.Engine:
    """The process's engine for modules bounded by epochs (and by fuel when ``fuel``)."""
    key = (os.getpid(), fuel)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = True
            config.consume_fuel = fuel
            # A linear memory's base address then never changes (it grows in place inside its
            # reservation): the host caches the base and re-reads only the size (native.GuestMemory).
            config.memory_may_move = False
            engine = wasmtime.Engine(config)
            start_thread, sleep = _original_threading()
            start_thread(_tick_forever, (engine, sleep))
            _engines[key] = engine
    return engine


def ticks_for(seconds: float) -> int:
    """Epoch deadline for a call bounded by ``seconds`` (one more tick: the current one is partly gone)."""
    return max(1, int(seconds / TICK_SECONDS + 0.999)) + 1
