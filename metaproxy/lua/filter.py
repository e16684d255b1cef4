"""The ``lua`` filter: operators' drop-in scripts, run sandboxed and bounded, reloaded live.

Config (the keys besides ``name`` of a filter entry)::

    {name: lua, script: filters/lua/deny_method.lua, config: {methods: [drop]}}
    {name: lua, source: "function on_request(h) h:mutation():set('x-a', 'b') end"}
    {name: lua, directory: filters/lua/}          # every *.lua, in name order
    # optional: step_limit: 1000000, max_memory: 16MB, reload_interval: 250ms, engine: auto

Each script gets its own runtime (see runtime.py for why). Requests run the
scripts in name order, responses in reverse, like the filter chain itself. A
script that errors, loops or runs out of memory fails the request it was
running with an ``unspecified`` local reply; the error is logged with the
script name and line and counted in ``error_counts``. Files are polled every
``reload_interval``: a changed or added file is compiled in the background and
swapped in only if it compiles; a removed file leaves a directory.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import gevent

from metaproxy.chain import Filter, FilterEnv, RequestContext
from metaproxy.lua.runtime import RunResult, ScriptError, ScriptRuntime, load_engine
from metaproxy.lua.sources import Signature, SourceSpec, read_source, scan
from metaproxy.message import ErrorType, Metadata, ProxyError
from metaproxy.settings import Section

__all__ = ["LuaFilter"]

log = logging.getLogger("metaproxy.lua")

DEFAULT_STEP_LIMIT = 1_000_000
DEFAULT_MAX_MEMORY = 16 * 1024 * 1024
DEFAULT_RELOAD_INTERVAL = 0.25
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2,
               "gb": 1024**3, "gib": 1024**3}
_EMPTY = Metadata()
_OPTION_KEYS = ("script", "source", "directory", "config", "step_limit", "max_memory", "reload_interval", "engine")


def parse_size(value: Any) -> int:
    """``16MB``, ``512KiB``, ``1048576`` -> bytes (units are powers of 1024). Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower() if m.group(2) else None]
    else:
        raise ValueError(f"expected a size like 16MB or a number of bytes, got {value!r}")
    if size < 256 * 1024:
        raise ValueError(f"must be at least 256KB (a Lua state needs that much to start), got {size}")
    return size


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


class _StatsCounter:
    """A counter on the optional ``stats`` service, or nothing when there is none."""

    __slots__ = ("_counter",)

    def __init__(self, stats: Any, scope: str, name: str) -> None:
        self._counter = None
        make = getattr(stats, "counter", None)
        if make is None:
            return
        try:
            self._counter = make(scope, name)
        except TypeError:
            try:
                self._counter = make(f"{scope}.{name}")
            except Exception:  # a stats service we do not understand: count locally only
                self._counter = None
        except Exception:
            self._counter = None

    def inc(self) -> None:
        if self._counter is not None:
            self._counter.inc()


class LuaFilter(Filter):
    """Runs Lua scripts on requests and responses (see the module docstring and docs/lua.md)."""

    name = "lua"
    blocking = False  # scripts run to the end without a switch (see metaproxy/lua/runtime.py)

    def __init__(self, options: Mapping[str, Any], env: FilterEnv) -> None:
        super().__init__(options, env)
        problems: list[str] = []
        sec = Section(dict(options or {}), "", problems)
        script = sec.take("script", str, None)
        source = sec.take("source", str, None)
        directory = sec.take("directory", str, None)
        self.config = sec.raw("config")
        self.step_limit = sec.take("step_limit", int, DEFAULT_STEP_LIMIT, _positive)
        self.max_memory = sec.take("max_memory", (int, str), DEFAULT_MAX_MEMORY, parse_size)
        self.reload_interval = sec.take("reload_interval", "duration", DEFAULT_RELOAD_INTERVAL)
        engine_name = sec.take("engine", str, "auto")
        for key in sec.data:
            if key not in _OPTION_KEYS:
                problems.append(f"{key}: unknown key {key!r} (known: {', '.join(_OPTION_KEYS)})")
        given = [k for k, v in (("script", script), ("source", source), ("directory", directory)) if v is not None]
        if len(given) != 1:
            problems.append("give exactly one of script, source or directory"
                            + (f" (got {', '.join(given)})" if given else ""))
        engine = None
        if engine_name is not None:
            try:
                engine = load_engine(engine_name)
            except ValueError as exc:
                problems.append(f"engine: {exc}")
        if problems:
            raise ValueError("; ".join(problems))

        base = env.base_dir or "."
        if script is not None:
            self.spec = SourceSpec(script=os.path.join(base, script), label=script)
            if not os.path.isfile(self.spec.script):  # type: ignore[arg-type]
                raise ValueError(f"script: no such file {self.spec.script!r}")
        elif directory is not None:
            self.spec = SourceSpec(directory=os.path.join(base, directory), label=directory)
            if not os.path.isdir(self.spec.directory):  # type: ignore[arg-type]
                raise ValueError(f"directory: no such directory {self.spec.directory!r}")
        else:
            self.spec = SourceSpec(source=source, label="inline")

        self.engine = engine
        stats = env.services.get("stats") if env.services else None
        self._stats = stats
        self._stats_scope = f"lua.{env.listener}" if env.listener else "lua"
        #: Script name -> requests it failed (error, step or memory limit). Read by stats and tests.
        self.error_counts: dict[str, int] = {}
        self._error_stats: dict[str, _StatsCounter] = {}
        self.reloads = 0
        self.reload_errors = 0
        self._runtimes: dict[str, ScriptRuntime] = {}
        self._signatures: dict[str, Signature] = {}
        self._request_scripts: tuple[ScriptRuntime, ...] = ()
        self._response_scripts: tuple[ScriptRuntime, ...] = ()
        self._scratch_key = f"lua:{id(self)}"
        self._load_initial()
        self._poller: gevent.Greenlet | None = None
        if self.spec.watched and self.reload_interval > 0:
            self._poller = gevent.spawn(self._poll)

    # -- loading ----------------------------------------------------------------
    def _new_runtime(self, name: str) -> ScriptRuntime:
        return ScriptRuntime(self.engine, name, self.step_limit, self.max_memory, self.config)

    def _load_initial(self) -> None:
        if self.spec.source is not None:
            runtime = self._new_runtime("inline")
            try:
                runtime.compile(self.spec.source)
            except ScriptError as exc:
                raise ValueError(f"source: {exc}") from None
            self._runtimes["inline"] = runtime
        else:
            key = "script" if self.spec.script is not None else "directory"
            for name, (path, sig) in scan(self.spec).items():
                runtime = self._new_runtime(name)
                try:
                    runtime.compile(read_source(path))
                except (OSError, UnicodeDecodeError, ScriptError) as exc:
                    raise ValueError(f"{key}: {exc}") from None
                self._runtimes[name] = runtime
                self._signatures[name] = sig
            if not self._runtimes:
                log.warning("lua: %s has no *.lua file yet; watching it", self.spec.label)
        self._publish()

    def _publish(self) -> None:
        """Swap in the hook lists (one tuple assignment each: requests see old or new, never half)."""
        ordered = [self._runtimes[name] for name in sorted(self._runtimes)]
        self._request_scripts = tuple(r for r in ordered if r.has_request)
        self._response_scripts = tuple(r for r in reversed(ordered) if r.has_response)

    def refresh(self) -> bool:
        """Pick up changed, added and removed files now; True if anything changed."""
        if not self.spec.watched:
            return False
        found = scan(self.spec)
        changed = False
        for name, (path, sig) in found.items():
            if self._signatures.get(name) == sig:
                continue
            self._signatures[name] = sig  # a broken version is not retried until it changes again
            runtime = self._runtimes.get(name)
            fresh = runtime is None
            if fresh:
                runtime = self._new_runtime(name)
            try:
                runtime.compile(read_source(path))
            except (OSError, UnicodeDecodeError, ScriptError) as exc:
                self.reload_errors += 1
                log.error("lua: %s failed to load, %s: %s", name,
                          "not added" if fresh else "keeping the previous version", exc)
                continue
            self._runtimes[name] = runtime
            self.reloads += 1
            changed = True
            log.info("lua: %s %s", name, "added" if fresh else "reloaded")
        for name in [n for n in self._runtimes if n not in found]:
            if self.spec.script is not None:
                if self._signatures.pop(name, None) is not None:
                    log.warning("lua: %s was removed; keeping the version in memory", name)
                continue
            del self._runtimes[name]
            self._signatures.pop(name, None)
            self.reloads += 1
            changed = True
            log.info("lua: %s removed", name)
        if changed:
            self._publish()
        return changed

    def _poll(self) -> None:
        while True:
            gevent.sleep(self.reload_interval)
            try:
                self.refresh()
            except Exception:  # never let the watcher die: the next poll may succeed
                log.exception("lua: reloading %s failed", self.spec.label)

    # -- the data path --------------------------------------------------------------
    def on_request(self, ctx: RequestContext) -> ProxyError | None:
        for runtime in self._request_scripts:
            result = runtime.run(1, ctx, ctx.metadata, ctx.mutation, None)
            if result is not None:
                error = self._outcome(runtime, result, ctx)
                if error is not None:
                    return error
        return None

    def on_response(self, ctx: RequestContext) -> None:
        scripts = self._response_scripts
        if not scripts:
            return None
        md = ctx.response_metadata if ctx.response_metadata is not None else _EMPTY
        saved = ctx.scratch.get(self._scratch_key)
        for runtime in scripts:
            scratch = saved.get(runtime.name) if saved else None
            result = runtime.run(2, ctx, md, ctx.response_mutation, scratch)
            if result is not None:
                error = self._outcome(runtime, result, ctx)
                if error is not None:
                    ctx.error = error
                    raise error
        return None

    def _outcome(self, runtime: ScriptRuntime, result: tuple, ctx: RequestContext) -> ProxyError | None:
        code, text, message, scratch = result
        if code == RunResult.OK:
            if scratch is not None:
                saved = ctx.scratch.get(self._scratch_key)
                if saved is None:
                    saved = ctx.scratch[self._scratch_key] = {}
                saved[runtime.name] = scratch
            return None
        if code == RunResult.REPLY:
            return ProxyError(ErrorType.parse(text), message or "")
        self._count_error(runtime.name)
        log.error("lua: %s failed on request %s: %s", runtime.name, ctx.metadata.get("request_id"), text)
        return ProxyError(ErrorType.UNSPECIFIED, f"lua script {runtime.name} failed")

    def _count_error(self, name: str) -> None:
        self.error_counts[name] = self.error_counts.get(name, 0) + 1
        counter = self._error_stats.get(name)
        if counter is None:
            counter = self._error_stats[name] = _StatsCounter(self._stats, self._stats_scope, f"{name}.errors")
        counter.inc()

    # -- introspection and lifecycle ------------------------------------------------
    @property
    def script_names(self) -> list[str]:
        return sorted(self._runtimes)

    def runtime(self, name: str) -> ScriptRuntime:
        return self._runtimes[name]

    def close(self) -> None:
        if self._poller is not None:
            self._poller.kill(block=False)
            self._poller = None
